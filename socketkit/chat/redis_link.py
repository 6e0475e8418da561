"""The backplane's link to Redis, on redis-py's asyncio client (hiredis parses the replies): the URL
(redis://, rediss://, redis+sentinel://), one client per session, and `_Conn`, which keeps what the
backplane needs from it: commands queued without waiting and sent in order, pipelined (a batch per
round trip), each answer handed to its callback in order; pub/sub messages handed to `on_push`.

    redis://[user:password@]host[:port][/db][?options]
    rediss://[user:password@]host[:port][/db][?ca=CA.pem&cert=C.pem&key=K.pem&verify=false&options]
    redis+sentinel://[user:password@]host:port[,host:port...]/MASTER[/db][?sentinel_user=&sentinel_password=]

user and password are an ACL user's (Redis 6+; a password alone is the `default` user's). With
Sentinel, the hosts are the sentinels, MASTER is the name they monitor, and user/password are for the
master; `sentinel_user`/`sentinel_password` are the sentinels' own, if they have any. The backplane's
own options (heartbeat, ttl, backoff_max, prefix) may be given in the query of any of them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from socketkit.errors import SocketkitError

_BATCH = 1000  # commands per pipeline round trip


class BackplaneError(SocketkitError):
    """Redis refused or broke the conversation (wrong URL, old Redis, protocol error)."""


class Error(str):
    """An error reply to one command (passed to its callback, never raised: a batch's error is one
    command's). `code` is its first word, e.g. WRONGTYPE."""

    @property
    def code(self) -> str:
        return self.split(" ", 1)[0]


@dataclass
class Target:
    """Where and how to reach Redis, from a URL (see the module doc)."""

    url: str
    host: str = "127.0.0.1"
    port: int = 6379
    db: int | None = None
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True
    sentinels: list[tuple[str, int]] = field(default_factory=list)
    master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    query: dict[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        """For log lines and errors: never the password."""
        if self.sentinels:
            hosts = ",".join(f"{h}:{p}" for h, p in self.sentinels)
            return f"redis+sentinel://{hosts}/{self.master}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'rediss' if self.tls else 'redis'}://{host}:{self.port}"


def _hostport(text: str, url: str, default: int) -> tuple[str, int]:
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, ""
    try:
        port = int(port_text) if port_text else default
    except ValueError:
        raise BackplaneError(f"backplane {url!r}: bad port in {text!r}") from None
    if not host or not 0 < port < 65536:
        raise BackplaneError(f"backplane {url!r}: bad host or port in {text!r}")
    return host, port


def parse_url(url: str, sentinels: list[str] | None = None) -> Target:
    """A Target from a backplane URL. `sentinels` ("host:port" each, from --backplane-sentinel) turn a
    plain redis:// URL into a Sentinel one whose host part names the master."""
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme not in ("redis", "rediss", "redis+sentinel"):
        raise BackplaneError(f"backplane {url!r}: expected redis://HOST:PORT, rediss:// (TLS) "
                             "or redis+sentinel://SENTINEL:PORT/MASTER")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    target = Target(url=url, tls=scheme == "rediss", query=query,
                    username=unquote(parts.username) if parts.username else None,
                    password=unquote(parts.password) if parts.password is not None else None)
    if target.password is not None and target.username == "":
        target.username = None
    netloc = parts.netloc.rpartition("@")[2]
    path = [p for p in parts.path.split("/") if p]
    if scheme == "redis+sentinel" or sentinels:
        hosts = netloc.split(",") if scheme == "redis+sentinel" else list(sentinels or [])
        target.sentinels = [_hostport(h, url, 26379) for h in hosts if h.strip()]
        if scheme == "redis+sentinel":
            if not path:
                raise BackplaneError(f"backplane {url!r}: name the master, redis+sentinel://HOST:PORT/MASTER")
            target.master, path = unquote(path[0]), path[1:]
        else:
            target.master = parts.hostname
        if not target.sentinels or not target.master:
            raise BackplaneError(f"backplane {url!r}: Sentinel needs at least one sentinel and a master name")
        target.sentinel_username = query.get("sentinel_user") or None
        target.sentinel_password = query.get("sentinel_password")
    else:
        target.host, target.port = _hostport(netloc or "127.0.0.1", url, 6379)
    if path:
        if len(path) > 1 or not path[0].isdigit():
            raise BackplaneError(f"backplane {url!r}: the path is a database number, e.g. redis://host:6379/0")
        target.db = int(path[0])
    target.ca = query.get("ca")
    target.cert = query.get("cert")
    target.key = query.get("key")
    target.verify = query.get("verify", "true").lower() not in ("0", "false", "no")
    if (target.ca or target.cert or target.key or "verify" in query) and not target.tls and not target.sentinels:
        raise BackplaneError(f"backplane {url!r}: ca, cert, key and verify are TLS options: use rediss://")
    return target


def make_client(target: Target, *, timeout: float, read_timeout: float | None = -1.0) -> Any:
    """A redis-py asyncio client for one session: RESP3, no retries of its own (the backplane reconnects
    and resynchronizes), bounded waits. `read_timeout=None` for the subscription's client: it waits for
    messages as long as it takes (the backplane's own heartbeat notices a dead link), and a read costs
    no timer per message."""
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    options: dict[str, Any] = {"protocol": 3, "socket_connect_timeout": timeout,
                               "socket_timeout": timeout if read_timeout == -1.0 else read_timeout,
                               "retry": Retry(NoBackoff(), 0), "username": target.username,
                               "password": target.password, "db": target.db or 0,
                               "health_check_interval": 0}
    if target.tls:
        options.update(ssl=True, ssl_ca_certs=target.ca, ssl_certfile=target.cert, ssl_keyfile=target.key,
                       ssl_cert_reqs="required" if target.verify else "none",
                       ssl_check_hostname=target.verify)
    if target.sentinels:
        from redis.asyncio.sentinel import Sentinel

        sentinel_options: dict[str, Any] = {"socket_connect_timeout": timeout, "socket_timeout": timeout,
                                            "username": target.sentinel_username,
                                            "password": target.sentinel_password}
        sentinel = Sentinel(target.sentinels, sentinel_kwargs=sentinel_options, **options)
        client = sentinel.master_for(target.master, **options)
    else:
        client = Redis(host=target.host, port=target.port, **options)
    # Raw replies, as Redis sends them (SET NX GET: the old value or None; HGETALL: a map of bytes):
    # the backplane reads them itself.
    client.response_callbacks.clear()
    return client


def _reply(value: Any) -> Any:
    if isinstance(value, Exception):
        return Error(str(value) or type(value).__name__)
    return value


class _Conn:
    """One session's commands and subscription. `send` never waits: the writer task sends whatever is
    queued, in order, a pipeline at a time; callbacks see the answers in the order they were sent."""

    def __init__(self, client: Any, pubsub: Any, on_push: Callable[[list[Any]], None], sub_client: Any = None) -> None:
        self.client = client
        self.sub_client = sub_client
        self.pubsub = pubsub
        self.on_push = on_push
        self.queue: deque[tuple[tuple[Any, ...], Callable[[Any], None] | None]] = deque()
        self.inflight = 0
        self.last_reply = time.monotonic()
        self._wake = asyncio.Event()

    @property
    def pending(self) -> int:
        """Commands queued or sent and not answered yet."""
        return len(self.queue) + self.inflight

    def send(self, *args: Any, cb: Callable[[Any], None] | None = None) -> None:
        self.queue.append((args, cb))
        self._wake.set()

    def send_many(self, commands: list[tuple[Any, ...]]) -> None:
        if commands:
            self.queue.extend((c, None) for c in commands)
            self._wake.set()

    async def call(self, *args: Any, timeout: float = 5.0) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.send(*args, cb=lambda v: fut.done() or fut.set_result(v))
        try:
            value = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise BackplaneError(f"redis did not answer {args[0]} within {timeout:g}s") from None
        if isinstance(value, Error):
            raise BackplaneError(f"redis refused {args[0]}: {value}")
        return value

    async def write_loop(self) -> None:
        """Send the queue, a pipeline at a time. A connection failure ends the loop (and the session);
        the commands not answered get a LOST error."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self.queue:
                    n = min(len(self.queue), _BATCH)
                    batch = [self.queue.popleft() for _ in range(n)]
                    self.inflight = n
                    pipe = self.client.pipeline(transaction=False)
                    for args, _ in batch:
                        pipe.execute_command(*args)
                    results = await pipe.execute(raise_on_error=False)
                    self.inflight = 0
                    self.last_reply = time.monotonic()
                    for (_, cb), result in zip(batch, results, strict=False):
                        if cb is not None:
                            cb(_reply(result))
                    if any(isinstance(r, Exception) and str(r).startswith("READONLY") for r in results):
                        # A failover made our server a replica: end the session, ask again where the
                        # master is (Sentinel) and resynchronize there.
                        raise BackplaneError("redis is a read-only replica now (a failover?)")
        finally:
            self.inflight = 0
            lost = Error("LOST connection to redis")
            while self.queue:
                _, cb = self.queue.popleft()
                if cb is not None:
                    cb(lost)

    async def read_loop(self) -> None:
        """Hand every pub/sub message to `on_push` as [b"message", channel, data]."""
        while True:
            msg = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
            if msg is None:
                continue
            self.last_reply = time.monotonic()
            if msg.get("type") == "message":
                self.on_push([b"message", msg.get("channel"), msg.get("data")])

    async def close(self) -> None:
        closers = [self.pubsub.aclose, self.client.aclose]
        if self.sub_client is not None:
            closers.append(self.sub_client.aclose)
        for closer in closers:
            try:
                await asyncio.wait_for(closer(), 2.0)
            except Exception:  # noqa: BLE001 - closing a link that may be broken already
                pass
