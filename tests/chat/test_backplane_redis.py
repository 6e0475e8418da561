"""The backplane's ways to reach Redis (redis-py's asyncio client with hiredis): URLs, an ACL user with
a password, TLS (rediss://) and Redis Sentinel (redis+sentinel://, or sentinels given apart), each with
a real redis-server (and a sentinel) started by the test, and two chat nodes talking through it."""

from __future__ import annotations

import contextlib
import logging
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import wait_for
from test_backplane import REDIS, WAIT, Client, first_across, join, nodes, redis_call, redis_dir, reserve_port

from socketkit.chat.redis_link import BackplaneError, parse_url
from socketkit.chat.server import ChatConfig, ChatService

needs_redis = pytest.mark.skipif(REDIS is None, reason="redis-server is not installed (Debian: redis-server)")
# Fast heartbeats and reconnects; a TTL a loaded machine cannot outlast by accident (see Redis.url).
FAST = "heartbeat=0.3&ttl=5&backoff_max=0.4"


# -- URLs --------------------------------------------------------------------------------------------------
def test_urls() -> None:
    t = parse_url("redis://127.0.0.1:6380/2?heartbeat=1")
    assert (t.host, t.port, t.db, t.tls, t.username, t.password) == ("127.0.0.1", 6380, 2, False, None, None)
    assert t.query["heartbeat"] == "1" and t.endpoint == "redis://127.0.0.1:6380"
    t = parse_url("rediss://chat:s%40cret@redis.example/0?ca=/etc/ca.pem&cert=c.pem&key=k.pem")
    assert (t.tls, t.port, t.username, t.password, t.ca, t.cert, t.key, t.verify) == (
        True, 6379, "chat", "s@cret", "/etc/ca.pem", "c.pem", "k.pem", True)
    assert "s@cret" not in t.endpoint and "cret" not in repr(t.endpoint)
    t = parse_url("redis://:onlypass@[::1]:7000")
    assert (t.host, t.port, t.username, t.password) == ("::1", 7000, None, "onlypass")
    assert t.endpoint == "redis://[::1]:7000"
    t = parse_url("redis+sentinel://u:p@10.0.0.1:26379,10.0.0.2/mymaster/3?sentinel_password=sp")
    assert t.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379)]
    assert (t.master, t.db, t.username, t.password, t.sentinel_password) == ("mymaster", 3, "u", "p", "sp")
    t = parse_url("redis://u:p@mymaster/1", sentinels=["127.0.0.1:26380", "[::1]:26381"])
    assert t.sentinels == [("127.0.0.1", 26380), ("::1", 26381)] and t.master == "mymaster" and t.db == 1
    for bad, why in [("http://x", "expected redis://"), ("redis://h:99999", "port"), ("redis://h/x", "database"),
                     ("redis://h?ca=x.pem", "TLS options"), ("redis+sentinel://h:1", "name the master"),
                     ("redis+sentinel://h:x/m", "bad port")]:
        with pytest.raises(BackplaneError, match=why):
            parse_url(bad)


# -- servers started by the tests ----------------------------------------------------------------------------
@contextlib.contextmanager
def redis_server(*args: str, port: int | None = None, check: Any = None, tls: bool = False) -> Iterator[int]:
    """A redis-server with `args` on `port` (its TLS port with `tls`); yields the port once `check(port)`
    (default: PING) answers."""
    hold = None
    if port is None:
        port, hold = reserve_port()  # held while the server runs (see reserve_port)
    where = ("--port", "0", "--tls-port", str(port)) if tls else ("--port", str(port))
    proc = subprocess.Popen([REDIS, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1",
                             "--protected-mode", "no", "--dir", (scratch := redis_dir()), *where, *args], cwd=scratch,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                if (check or (lambda p: redis_call(p, "PING") == b"PONG"))(port):
                    break
            except (OSError, Exception):  # noqa: BLE001 - not up yet
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server {' '.join(args)} did not come up (exit {proc.poll()})")
            time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(5)
        shutil.rmtree(scratch, ignore_errors=True)
        if hold is not None:
            hold.close()


async def chat_between(url: str, **options: Any) -> None:
    """Two nodes on `url`; a user on each, one channel; a message crosses both ways."""
    async with nodes(SimpleNamespace(url=url), **options) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        try:
            await join(alice, "#x")
            await wait_for(lambda: b.core.lookup_channel("#x"), what="node B learning of #x")
            await join(bob, "#x")
            await alice.expect("JOIN", lambda m: m.source.startswith("bob!"))
            await alice.send("PRIVMSG #x :over the backplane")
            assert (await bob.expect("PRIVMSG")).params == ["#x", "over the backplane"]
            await bob.send("PRIVMSG #x :and back")
            assert (await alice.expect("PRIVMSG")).params == ["#x", "and back"]
        finally:
            await alice.close()
            await bob.close()


# -- ACL user and password ----------------------------------------------------------------------------------
@needs_redis
async def test_acl_user_with_a_password(caplog: pytest.LogCaptureFixture) -> None:
    # Each word of an ACL rule is an argument of its own on redis-server's command line.
    acl = ("--user", "default", "off", "--user", "chat", "on", ">s3cret", "~socketkit:*", "&socketkit:*", "+@all")

    def up(p: int) -> bool:
        try:
            redis_call(p, "PING")
        except Exception as e:  # noqa: BLE001 - the default user is off: NOAUTH proves it is up
            return "NOAUTH" in str(e) or "AUTH" in str(e)
        return True

    with redis_server(*acl, check=up) as port:
        await chat_between(f"redis://chat:s3cret@127.0.0.1:{port}?{FAST}")
        # A wrong password is refused, and said so; the node keeps serving its own users.
        caplog.set_level(logging.WARNING, "socketkit.chat.backplane")
        svc = ChatService(ChatConfig(backplane=f"redis://chat:wrong@127.0.0.1:{port}?{FAST}", sasl=False))
        await svc.start(["tcp://127.0.0.1:0"])
        try:
            assert not svc.backplane.connected.is_set()
            assert "cannot reach redis" in caplog.text and "wrong" not in caplog.text
        finally:
            await svc.aclose(drain=0)


# -- TLS ------------------------------------------------------------------------------------------------------
@needs_redis
async def test_rediss_with_a_ca(tmp_path: Path) -> None:
    from socketkit.net import certs

    ca, _ = certs.ensure_ca(tmp_path / "ca")
    cert, key = certs.issue(["127.0.0.1", "localhost"], dir=tmp_path / "ca")
    tls = ("--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
           "--tls-auth-clients", "no")

    def up(p: int) -> bool:
        import redis as redis_py

        client = redis_py.Redis(port=p, ssl=True, ssl_ca_certs=str(ca), socket_timeout=1)
        try:
            return client.ping()
        finally:
            client.close()

    try:
        with redis_server(*tls, tls=True, check=up) as port:
            await chat_between(f"rediss://127.0.0.1:{port}?ca={ca}&{FAST}")
            # The server's certificate is checked: without our CA the node does not connect.
            other_ca, _ = certs.ensure_ca(tmp_path / "other")
            svc = ChatService(ChatConfig(backplane=f"rediss://127.0.0.1:{port}?ca={other_ca}&{FAST}", sasl=False))
            await svc.start(["tcp://127.0.0.1:0"])
            try:
                assert not svc.backplane.connected.is_set()
            finally:
                await svc.aclose(drain=0)
    except subprocess.SubprocessError:
        pytest.skip("this redis-server has no TLS")


# -- Sentinel -------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def sentinel(master_port: int, tmp_path: Path) -> Iterator[int]:
    port, hold = reserve_port()
    conf = tmp_path / f"sentinel-{port}.conf"  # a sentinel rewrites its config: a file of its own
    conf.write_text(f"port {port}\nbind 127.0.0.1\nprotected-mode no\ndir {tmp_path}\n"
                    f"sentinel monitor mymaster 127.0.0.1 {master_port} 1\n"
                    "sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 3000\n")
    proc = subprocess.Popen([REDIS, str(conf), "--sentinel"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + WAIT
        while True:
            try:
                got = redis_call(port, "SENTINEL", "get-master-addr-by-name", "mymaster")
                if got and int(got[1]) == master_port:
                    break
            except Exception:  # noqa: BLE001 - not up yet
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("redis sentinel did not come up")
            time.sleep(0.02)
        yield port
    finally:
        proc.kill()
        proc.wait(5)
        hold.close()


@needs_redis
async def test_sentinel_finds_the_master_and_follows_a_failover(tmp_path: Path) -> None:
    # (no diskless-sync delay: by default a master waits 5 s for more replicas before the first sync)
    with redis_server("--repl-diskless-sync-delay", "0") as master, \
            redis_server("--replicaof", "127.0.0.1", str(master)) as replica:
        await wait_for(lambda: b"master_link_status:up" in redis_call(replica, "INFO", "replication"),
                       timeout=15, what="the replica in sync")
        with sentinel(master, tmp_path) as sport:
            await wait_for(lambda: redis_call(sport, "SENTINEL", "replicas", "mymaster"),
                           what="the sentinel knowing the replica")
            await _sentinel_scenario(master, replica, sport)


def _failover(sport: int) -> bool:
    """SENTINEL FAILOVER; False while the sentinel has not yet seen the replica well enough to promote
    it (NOGOODSLAVE: it asks its replicas for INFO on its own schedule)."""
    try:
        return redis_call(sport, "SENTINEL", "FAILOVER", "mymaster") == b"OK"
    except Exception as e:  # noqa: BLE001 - redis-py's ResponseError
        if "NOGOODSLAVE" in str(e) or "INPROG" in str(e):
            return False
        raise


async def _sentinel_scenario(master: int, replica: int, sport: int) -> None:
    await chat_between(f"redis+sentinel://127.0.0.1:{sport}/mymaster?{FAST}")
    # The sentinels given apart (--backplane-sentinel): the URL's host names the master.
    async with nodes(SimpleNamespace(url=f"redis://mymaster?{FAST}"),
                     backplane_options={"sentinels": [f"127.0.0.1:{sport}"]}) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await join(alice, "#f")
        await wait_for(lambda: b.core.lookup_channel("#f"), what="B learning of #f")
        await join(bob, "#f")
        # A failover: the replica becomes the master; both nodes follow what the sentinel says.
        await wait_for(lambda: _failover(sport), timeout=15, what="the sentinel starting a failover")
        await wait_for(lambda: int(redis_call(sport, "SENTINEL", "get-master-addr-by-name", "mymaster")[1])
                       == replica, timeout=10, what="the sentinel naming the new master")
        got = await first_across(alice, bob, "#f", "after the failover", tries=100, what="after the failover")
        assert got.params[1].startswith("after the failover")
        assert b"role:master" in redis_call(replica, "INFO", "replication")
        await alice.close()
        await bob.close()


# -- several processes on one machine -----------------------------------------------------------------------
@needs_redis
def test_workers_share_the_port_and_the_channels(tmp_path: Path) -> None:
    """`socketkit chat --workers 2 --backplane URL`: two processes accept on one port (SO_REUSEPORT), each a
    node of the network; clients land on either and still share a channel."""
    import signal
    import socket

    from helpers import Spawned, cli_env, listening_url

    from socketkit.net.endpoint import parse

    with redis_server() as rport:
        env = cli_env(SOCKETKIT_DATA=str(tmp_path / "data"))
        with Spawned("chat", "--listen", "tcp://127.0.0.1:0", "--data", str(tmp_path / "chat"), "--workers", "2",
                     "--backplane", f"redis://127.0.0.1:{rport}?{FAST}", env=env) as proc:
            port = parse(listening_url(proc)).port
            wait_for_nodes = time.monotonic() + WAIT
            while len(redis_call(rport, "SMEMBERS", "socketkit:chat:socketkit:nodes")) < 2:
                assert time.monotonic() < wait_for_nodes, "two nodes in redis"
                time.sleep(0.02)

            def read_until(s: socket.socket, needle: bytes) -> bytes:
                """Read until `needle`; each read bounded by the socket's timeout, a close is a failure."""
                buf = b""
                while needle not in buf:
                    chunk = s.recv(65536)
                    assert chunk, f"closed before {needle!r}; got {buf[-2000:]!r}"
                    buf += chunk
                return buf

            socks = []
            try:
                for i in range(8):
                    s = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                    s.sendall(f"NICK w{i}\r\nUSER w{i} 0 * :w\r\nJOIN #w\r\n".encode())
                    socks.append(s)
                for s in socks:
                    read_until(s, b" 366 ")
                # everyone sees everyone in #w, whichever process holds them
                deadline = time.monotonic() + WAIT
                while True:
                    socks[0].sendall(b"NAMES #w\r\n")
                    names = read_until(socks[0], b" 366 ")
                    if all(f"w{i}".encode() in names for i in range(8)):
                        break
                    assert time.monotonic() < deadline, names
                    time.sleep(0.05)
                socks[0].sendall(b"PRIVMSG #w :to every worker\r\n")
                for s in socks[1:]:
                    read_until(s, b"to every worker")
            finally:
                for s in socks:
                    s.close()
                proc.signal(signal.SIGTERM)
                code, _, err = proc.wait(timeout=10)
            assert code == 0, err.decode(errors="replace")
