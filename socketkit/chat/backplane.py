"""Several chat nodes as one network, through Redis (`ChatConfig.backplane = "redis://HOST:PORT"`).

What travels where:
- Events: one pub/sub channel per network (`socketkit:chat:NETWORK:events`), JSON, each naming its node
  (a node ignores its own). One channel, not one per IRC channel: QUIT/NICK concern every channel of a
  user, private messages need no subscription bookkeeping, and per-channel SUBSCRIBE churn would race
  with JOINs; the cost is that every node decodes every event, a few microseconds each.
- Nicks: one key per nick (`...:nick:FOLDED` = "NODE UID") claimed with SET NX, its TTL refreshed by the
  heartbeat, so a crashed node's nicks expire. Each node mirrors every remote user in its core, so a
  nick in use elsewhere gets 433 at once; two nodes taking the same nick in the same instant both
  accept it locally, and the one whose SET NX loses drops its user ("Nickname collision").
- Presence: one hash per node (`...:node:ID:users`, field uid -> the user, its channels and away
  message) and one of channels (`...:node:ID:channels`, field folded name -> the shared state of a
  channel it has members in: creation time, topic, modes, key, limit, bans, stamped with the time of
  their last change). A node starting later adopts the newest view, and, as in TS6, the oldest
  incarnation of a channel wins: ops handed out in a younger one (a node cut off from the others) lapse
  (core_remote). MODE, TOPIC, AWAY and INVITE also travel as live events. Both hashes expire
  as a whole with the node's heartbeat, plus the set `...:nodes`. A node starting (or reconnecting)
  writes its hash, announces `sync`, and reads every other node's hash; the others re-read its hash on
  `sync`. A hash per node rather than per channel: one HSET per change, and expiry needs no per-field
  TTL (HEXPIRE is Redis >= 7.4 only).
- Liveness: every node publishes `hb` each heartbeat; a node unheard of for its TTL is split off
  (its users QUIT "*.net *.split"); a node shutting down says `bye`.

The link is redis-py's asyncio client (hiredis parses the replies; RESP3, so Redis >= 7 for HELLO 3 and
SET NX GET), one client per session: commands queued without waiting and pipelined in order, answers
handed to callbacks in that order, and a pub/sub connection for the events. A node subscribes (and waits
for Redis to confirm it) before it reads the others' state, so nothing published after its snapshot is
missed; an event that also made it into the snapshot is applied twice, which changes nothing (every
event carries the user's whole identity, see core_remote). Redis lost: local users keep chatting,
events are dropped (logged), the node reconnects with exponential backoff and resynchronizes. Writes
are bounded (commands pending): past the bound, events are dropped with a log line rather than
queued in memory.

URLs (see redis_link): redis://, rediss:// (TLS: ?ca=&cert=&key=&verify=), redis+sentinel://HOST:PORT/MASTER,
or redis://MASTER with sentinels given apart (`socketkit chat --backplane-sentinel HOST:PORT`); ACL users
and passwords as user:password@. Options in the query: heartbeat=5&ttl=15&backoff_max=10&prefix=...
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import secrets
import time
from typing import Any

from socketkit.chat import core_remote, core_remote_channels
from socketkit.chat.core_state import Event
from socketkit.chat.redis_link import BackplaneError, Error, _Conn, make_client, parse_url
from socketkit.errors import SocketkitError

log = logging.getLogger("socketkit.chat.backplane")

_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Backplane:
    """Shares one ChatService's core with the other nodes on the same Redis."""

    def __init__(self, service: Any, url: str, *, heartbeat: float | None = None, ttl: float | None = None,
                 backoff_max: float | None = None, max_pending: int = 100_000, connect_timeout: float = 5.0,
                 sentinels: list[str] | None = None) -> None:
        self.target = parse_url(url, sentinels)
        q = self.target.query
        self.service = service
        self.core = service.core
        self.url = url
        self.endpoint: str = self.target.endpoint
        self.heartbeat = float(heartbeat or q.get("heartbeat", 5.0))
        self.ttl = float(ttl or q.get("ttl", 3 * self.heartbeat))
        self.backoff_min = 0.1
        self.backoff_max = float(backoff_max or q.get("backoff_max", 10.0))
        self.max_pending = max_pending
        self.connect_timeout = connect_timeout
        self.node = secrets.token_hex(5)
        prefix = q.get("prefix") or f"socketkit:chat:{self.core.network}:"
        self.k_events = prefix + "events"
        self.k_nodes = prefix + "nodes"
        self.prefix = prefix
        self.conn: _Conn | None = None
        self.connected = asyncio.Event()
        self._tried = asyncio.Event()       # the first connection attempt is over, either way
        self.dirty: set[Any] = set()        # local cids whose presence record must be rewritten
        self.dirty_channels: set[str] = set()  # folded channels whose shared state record must be rewritten
        self.claimed: dict[Any, str] = {}   # local cid -> the nick key it holds
        self.seen: dict[str, tuple[float, float]] = {}  # node -> (last heard, its ttl)
        self.dropped = 0
        self._batch: list[tuple[Any, ...]] = []
        self._events: list[dict[str, Any]] = []   # this loop iteration's events, published together
        self._send_scheduled = False
        self._claims: list[tuple[Any, str]] = []
        self._last_drop_log = 0.0
        self._resyncing: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # -- keys ---------------------------------------------------------------------------------------
    def k_users(self, node: str) -> str:
        return f"{self.prefix}node:{node}:users"

    def k_chans(self, node: str) -> str:
        return f"{self.prefix}node:{node}:channels"

    def k_node(self, node: str) -> str:
        return f"{self.prefix}node:{node}"

    def k_nick(self, folded: str) -> str:
        return f"{self.prefix}nick:{folded}"

    def _owner(self, cid: Any) -> str:
        return f"{self.node} {cid}"

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self.core.federated = True
        self._task = asyncio.get_running_loop().create_task(self._run(), name="chat backplane")
        try:
            await asyncio.wait_for(self._tried.wait(), 2 * self.connect_timeout)
        except TimeoutError:
            pass
        if not self.connected.is_set():
            log.warning("backplane: redis at %s not reachable yet; serving local users and retrying",
                        self.endpoint)

    async def aclose(self) -> None:
        self._closing = True
        conn = self.conn
        if conn is not None:
            try:
                self._send_now()
                conn.send_many([("PUBLISH", self.k_events, self._wire({"k": "bye"})),
                                ("DEL", self.k_users(self.node), self.k_chans(self.node), self.k_node(self.node)),
                                ("SREM", self.k_nodes, self.node)])
                await conn.call("PING", timeout=1.0)
            except (SocketkitError, OSError) as e:
                log.info("backplane: goodbye to redis not delivered (%s)", e)
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - closing either way
                pass
        self.core.federated = False

    async def _run(self) -> None:
        from redis.exceptions import RedisError

        delay = self.backoff_min
        failures = 0
        while not self._closing:
            try:
                await self._session()
            except (SocketkitError, OSError, RedisError, TimeoutError) as e:
                if self.connected.is_set():
                    if not self._closing:
                        log.warning("backplane: redis connection lost (%s); local users keep chatting, "
                                    "reconnecting", e or type(e).__name__)
                else:
                    failures += 1
                    (log.warning if failures == 1 else log.debug)(
                        "backplane: cannot reach redis at %s (%s); retrying with backoff", self.endpoint,
                        e or type(e).__name__)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("backplane: session failed; reconnecting")
            finally:
                self._tried.set()
                if self.connected.is_set():
                    delay, failures = self.backoff_min, 0  # it worked for a while: start over
                self.conn = None
                self.connected.clear()
            if self._closing:
                return
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, self.backoff_max)

    async def _session(self) -> None:
        from redis.exceptions import ResponseError

        client = make_client(self.target, timeout=self.connect_timeout)
        sub_client = make_client(self.target, timeout=self.connect_timeout, read_timeout=None)
        pubsub = sub_client.pubsub()
        conn = _Conn(client, pubsub, self._on_push, sub_client)
        tasks: list[asyncio.Task[None]] = []
        try:
            try:
                await asyncio.wait_for(client.ping(), self.connect_timeout)
            except ResponseError as e:
                if "HELLO" in str(e).upper():
                    raise BackplaneError(f"{e} (the backplane needs Redis >= 7 for RESP3)",
                                         endpoint=self.endpoint) from None
                raise BackplaneError(f"redis refused the connection: {e}", endpoint=self.endpoint) from None
            if self.target.sentinels:
                # Right after a failover a sentinel may still name the old master: make sure it is one.
                role = await asyncio.wait_for(client.execute_command("ROLE"), self.connect_timeout)
                if not role or role[0] not in (b"master", "master"):
                    raise BackplaneError("the server Sentinel named is not a master (yet)", endpoint=self.endpoint)
            await self._subscribe(pubsub)
            loop = asyncio.get_running_loop()
            tasks = [loop.create_task(conn.read_loop(), name="chat backplane reader"),
                     loop.create_task(conn.write_loop(), name="chat backplane writer")]
            self.conn = conn  # from here on local events are published (after the state _sync writes)
            await self._sync(conn)
            self.connected.set()
            self._tried.set()
            if self.dropped:
                log.warning("backplane: %d events were not shared while redis was unreachable", self.dropped)
                self.dropped = 0
            log.info("backplane: node %s joined the network at %s (%d remote users)", self.node, self.endpoint,
                     sum(1 for c in self.core.clients.values() if c.remote is not None))
            while True:
                done, _ = await asyncio.wait(tasks, timeout=self.heartbeat, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
                    raise BackplaneError("redis closed the connection", endpoint=self.endpoint)
                self._heartbeat(conn)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                try:
                    await task
                except BaseException:  # noqa: BLE001 - the session is over either way
                    pass
            await conn.close()

    async def _subscribe(self, pubsub: Any) -> None:
        """SUBSCRIBE, and wait until Redis confirms it: only then is a snapshot read after it gap-free."""
        await asyncio.wait_for(pubsub.subscribe(self.k_events), self.connect_timeout)
        deadline = time.monotonic() + self.connect_timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BackplaneError("redis did not confirm the subscription", endpoint=self.endpoint)
            msg = await pubsub.get_message(timeout=min(left, 1.0))
            if msg is not None and msg.get("type") == "subscribe":
                return

    # -- synchronization ------------------------------------------------------------------------------
    async def _sync(self, conn: _Conn) -> None:
        """Write our whole state, then load everyone else's (subscribed already, see module doc)."""
        me = self.node
        cmds: list[tuple[Any, ...]] = [("DEL", self.k_users(me), self.k_chans(me))]
        local = [c for c in self.core.clients.values() if c.remote is None and c.registered and not c.closed]
        for c in local:
            cmds.append(("HSET", self.k_users(me), str(c.cid), json.dumps(core_remote.record(c))))
        for ch in {ch.folded: ch for c in local for ch in c.channels.values()}.values():
            cmds.append(("HSET", self.k_chans(me), ch.folded, json.dumps(core_remote_channels.channel_record(ch))))
        cmds += [("EXPIRE", self.k_users(me), int(self.ttl) + 1), ("EXPIRE", self.k_chans(me), int(self.ttl) + 1),
                 ("SET", self.k_node(me), "1", "EX", int(self.ttl) + 1), ("SADD", self.k_nodes, me)]
        conn.send_many(cmds)
        self.claimed.clear()
        self.dirty.clear()
        self.dirty_channels.clear()
        for c in local:
            self._claim(conn, c.cid, c.folded or "")
        conn.send("PUBLISH", self.k_events, self._wire({"k": "sync"}))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def got_nodes(reply: Any) -> None:
            if isinstance(reply, Error):
                done.done() or done.set_exception(BackplaneError(f"SMEMBERS failed: {reply}"))
                return
            alive = {n.decode() for n in reply} - {me}
            now = time.monotonic()
            # Nodes we knew but Redis does not (it restarted empty): give them one TTL to come back
            # and announce `sync` before their users are split off, instead of a spurious netsplit.
            for node in core_remote.nodes(self.core) | set(self.seen):
                self.seen[node] = (now, self.seen.get(node, (0.0, self.ttl))[1])
            for node in alive:
                self.seen[node] = (now, self.ttl)
                self._load(conn, node)
            conn.send("PING", cb=lambda _: done.done() or done.set_result(None))

        conn.send("SMEMBERS", self.k_nodes, cb=got_nodes)
        try:
            await asyncio.wait_for(done, self.connect_timeout)
        except TimeoutError:
            raise BackplaneError("redis did not answer the sync in time", endpoint=self.endpoint) from None

    def _load(self, conn: _Conn, node: str) -> None:
        """Read `node`'s presence and channel hashes and make our view of it match, at that point of the
        stream. Nothing in them can break the session: bad records are skipped, and a failure here is
        logged, never raised into the connection's reader."""
        channels: list[Any] = []

        def decode(reply: Any) -> list[Any]:
            out = []
            for raw in (reply or {}).values() if isinstance(reply, dict) else ():
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    log.warning("backplane: bad presence record from node %s", node)
            return out

        def got_channels(reply: Any) -> None:
            if not isinstance(reply, Error):
                channels.extend(decode(reply))

        def got_users(reply: Any) -> None:
            if isinstance(reply, Error):
                return
            try:
                self.service.dispatch(core_remote.apply_snapshot(self.core, node, decode(reply), channels))
                # Our own records of these channels may be stale now (we adopted a newer state, or lost
                # to an older incarnation): rewrite them, for nodes that start later.
                fold = self.core.fold
                self.dirty_channels.update(fold(c["ch"]) for c in channels
                                           if isinstance(c, dict) and isinstance(c.get("ch"), str))
                self.after_dispatch([])
            except Exception:  # noqa: BLE001 - see the docstring
                log.exception("backplane: could not apply the state of node %s", node)

        conn.send("HGETALL", self.k_chans(node), cb=got_channels)
        conn.send("HGETALL", self.k_users(node), cb=got_users)

    def _claim(self, conn: _Conn, cid: Any, folded: str) -> None:
        key, owner = self.k_nick(folded), self._owner(cid)

        def claimed(reply: Any) -> None:
            if isinstance(reply, Error):
                return
            c = self.core.clients.get(cid)
            current = c is not None and c.folded == folded and not c.closed
            if reply is None or reply.decode() == owner:
                if current:
                    self.claimed[cid] = key
                else:  # the user moved on (or left) while the claim was in flight
                    conn.send("EVAL", _RELEASE, 1, key, owner)
                return
            if current:
                log.info("backplane: nick %s is held on another node (%s): dropping the local user", folded,
                         reply.decode())
                self.service.dispatch(core_remote.collide(self.core, cid))

        conn.send("SET", key, owner, "NX", "GET", "EX", int(self.ttl) + 1, cb=claimed)

    def _heartbeat(self, conn: _Conn) -> None:
        now = time.monotonic()
        # Our own heartbeat comes back through the subscription: silence means the link is dead.
        if now - conn.last_reply > 2 * self.heartbeat + self.connect_timeout:
            raise BackplaneError("redis stopped answering", endpoint=self.endpoint)
        ttl = int(self.ttl) + 1
        me = self.node
        cmds: list[tuple[Any, ...]] = [("SET", self.k_node(me), "1", "EX", ttl), ("SADD", self.k_nodes, me),
                                       ("EXPIRE", self.k_users(me), ttl), ("EXPIRE", self.k_chans(me), ttl)]
        cmds += [("EXPIRE", key, ttl) for key in self.claimed.values()]
        cmds.append(("PUBLISH", self.k_events, self._wire({"k": "hb", "ttl": self.ttl})))
        conn.send_many(cmds)
        conn.send("PING")
        for node, (heard, ttl_) in list(self.seen.items()):
            if now - heard > ttl_:
                del self.seen[node]
                log.info("backplane: node %s went silent; its users leave", node)
                conn.send("SREM", self.k_nodes, node)
                self.service.dispatch(core_remote.remove_node(self.core, node))

    # -- events in ------------------------------------------------------------------------------------
    def _on_push(self, push: Any) -> None:
        if len(push) < 3 or push[0] != b"message":
            return
        try:
            ev = json.loads(push[2])
            node = ev["n"]
            kind = ev["k"]
        except (ValueError, KeyError, TypeError):
            log.warning("backplane: ignored a malformed event")
            return
        if node == self.node:
            return
        self.seen[node] = (time.monotonic(), float(ev.get("ttl") or self.seen.get(node, (0, self.ttl))[1]))
        if kind == "batch":
            for one in ev.get("e") if isinstance(ev.get("e"), list) else ():
                if isinstance(one, dict) and isinstance(one.get("k"), str) and one["k"] not in ("batch", "hb"):
                    one["n"] = node
                    self._apply(node, one["k"], one)
            return
        if kind == "hb":
            return
        self._apply(node, kind, ev)

    def _apply(self, node: str, kind: str, ev: dict[str, Any]) -> None:
        core = self.core
        try:
            if kind == "bye":
                self.seen.pop(node, None)
                self.service.dispatch(core_remote.remove_node(core, node))
            elif kind == "sync":
                if self.conn is not None:
                    self._load(self.conn, node)
            else:
                if kind not in ("user", "quit") and (node, ev["u"]) not in core.clients:
                    self._resync(node)  # we missed this user's arrival: fetch the node's whole state
                ch = core.lookup_channel(str(ev.get("channel") or "")) if kind in ("join", "mode", "kick") else None
                created = ch.created if ch is not None else None
                # Our users' memberships in the channel, to see which ones the event changed (a remote
                # +o/-v or KICK): their presence records must be rewritten.
                before = {m: modes for m, modes in ch.members.items() if m.remote is None} \
                    if ch is not None and kind != "join" else {}
                self.service.dispatch(core_remote.apply_event(core, self.node, node, ev))
                if kind == "join" and ch is not None and ch.created < created \
                        and any(m.remote is None for m in ch.members):
                    self._resync(node)  # our channel lost to its older incarnation there: adopt its state
                self.dirty.update(m.cid for m, modes in before.items() if ch.members.get(m) != modes)
                if kind in ("mode", "topic", "kick", "join"):  # our record of the channel may be stale now
                    self.dirty_channels.add(core.fold(str(ev.get("channel") or "")))
                    self.after_dispatch([])
        except Exception:  # noqa: BLE001 - one bad event must not cut the connection
            log.exception("backplane: could not apply a %r event from node %s", kind, node)

    def _resync(self, node: str) -> None:
        now = time.monotonic()
        if self.conn is not None and now - self._resyncing.get(node, 0.0) > 1.0:
            self._resyncing[node] = now
            self._load(self.conn, node)

    # -- events out (called by ChatService.dispatch) --------------------------------------------------
    def publish(self, item: Any) -> None:
        if type(item) is not Event:
            return
        data = {"k": item.kind, "u": item.cid, "i": item.ident}
        data.update(item.data)
        kind = item.kind
        cid = item.cid
        if kind in ("user", "nick"):
            old = self.claimed.pop(cid, None)
            if old is not None:
                self._batch.append(("EVAL", _RELEASE, 1, old, self._owner(cid)))
            self._claims.append((cid, self.core.fold(item.ident[0])))
        elif kind == "quit":
            old = self.claimed.pop(cid, None)
            if old is not None:
                self._batch.append(("EVAL", _RELEASE, 1, old, self._owner(cid)))
        if kind != "msg" and kind != "topic":
            self.dirty.add(cid)
        if kind != "msg":
            fold = self.core.fold
            if "channel" in item.data:
                self.dirty_channels.add(fold(str(item.data["channel"])))
            for name in item.data.get("channels") or ():
                self.dirty_channels.add(fold(str(name)))
        self._events.append(data)

    def after_dispatch(self, out: Any) -> None:
        """Something may need writing: done once, at the end of this loop iteration, for everything the
        iteration produced (one PUBLISH carries all its events)."""
        if self._send_scheduled or not (self._batch or self._events or self._claims or self.dirty
                                        or self.dirty_channels):
            return
        self._send_scheduled = True
        asyncio.get_running_loop().call_soon(self._send_now)

    def _send_now(self) -> None:
        self._send_scheduled = False
        events, self._events = self._events, []
        if events:
            # One event alone as it is; several as one "batch" message (the receivers unpack it in order).
            data = events[0] if len(events) == 1 else {"k": "batch", "e": events}
            self._batch.append(("PUBLISH", self.k_events, self._wire(data)))
        batch, claims = self._batch, self._claims
        if not batch and not claims and not self.dirty and not self.dirty_channels:
            return
        conn = self.conn
        if conn is None:
            self.dropped += len(events)
            self._batch, self._claims = [], []
            self.dirty.clear()  # rewritten in full by the next sync
            self.dirty_channels.clear()
            return
        if conn.pending > self.max_pending:
            self.dropped += len(events)
            now = time.monotonic()
            if now - self._last_drop_log > 5.0:
                self._last_drop_log = now
                log.warning("backplane: redis is slow (%d commands pending): %d events dropped",
                            conn.pending, self.dropped)
            self._batch, self._claims = [], []
            return  # `dirty` stays: written with the next batch that fits
        clients = self.core.clients
        me = self.k_users(self.node)
        for cid in self.dirty:
            c = clients.get(cid)
            if c is not None and c.registered and not c.closed and c.remote is None:
                batch.append(("HSET", me, str(cid), json.dumps(core_remote.record(c))))
            else:
                batch.append(("HDEL", me, str(cid)))
        self.dirty.clear()
        channels = self.core.channels
        chans = self.k_chans(self.node)
        for folded in self.dirty_channels:
            # A record per channel we have members in: what a node starting later learns its state from.
            ch = channels.get(folded)
            if ch is not None and any(m.remote is None for m in ch.members):
                batch.append(("HSET", chans, folded, json.dumps(core_remote_channels.channel_record(ch))))
            else:
                batch.append(("HDEL", chans, folded))
        self.dirty_channels.clear()
        self._batch, self._claims = [], []
        try:
            conn.send_many(batch)
            for cid, folded in claims:
                self._claim(conn, cid, folded)
        except SocketkitError as e:  # the connection is going down; the reader notices and reconnects
            log.info("backplane: write to redis failed (%s)", e)

    def _wire(self, data: dict[str, Any]) -> str:
        data["n"] = self.node
        return json.dumps(data, separators=(",", ":"), default=str)
