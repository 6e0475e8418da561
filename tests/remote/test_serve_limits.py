"""OpenSSH's limits in `remote serve` (RemoteLimits), each hit logged and audited: unauthenticated
connections per address and in all (MaxStartups), failed attempts (MaxAuthTries), the login grace time
(LoginGraceTime, also for a client that never sends its version line), unused and idle connections, sessions per
connection (MaxSessions), keepalives. Small values, so that every limit is reached in well under a second."""

from __future__ import annotations

import asyncio
import os
import signal

import asyncssh
import pytest
from helpers import wait_for
from sshsupport import current_user, keygen, require_openssh, run, serving, started

from socketkit.remote.server import RemoteLimits

pytestmark = pytest.mark.usefixtures("openssh")


@pytest.fixture
def openssh():
    require_openssh()


async def _raw(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
    """A TCP connection that never speaks SSH; returns it with the first line the server sent (b"": closed)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    return r, w, await asyncio.wait_for(r.readline(), 10)


async def test_unauthenticated_per_address_and_release_after_login(tmp_path):
    limits = RemoteLimits(max_startups=2, login_grace_time=60)
    async with serving(tmp_path, limits=limits) as s:
        # an authenticated connection does not count: two more unauthenticated ones still get in
        async with started(s.ssh("echo in; sleep 30")) as ssh:
            assert await asyncio.wait_for(ssh.stdout.readline(), 20) == b"in\n"
            conns = [await _raw(s.port) for _ in range(2)]
            assert all(line.startswith(b"SSH-2.0-") for _, _, line in conns)
            _, w3, line = await _raw(s.port)
            assert line == b""  # the third from 127.0.0.1 is closed before the server says anything
            rec = await s.wait_record("limit", limit="max_startups")
            assert rec["value"] == 2 and rec["peer"] == "127.0.0.1"
            for _, w, _ in conns:
                w.close()
            w3.close()


async def test_unauthenticated_in_all_and_connections_in_all(tmp_path):
    for limit in ("max_unauthenticated", "max_connections"):
        (tmp_path / limit).mkdir()
        async with serving(tmp_path / limit, limits=RemoteLimits(**{limit: 1})) as s:
            _, w1, line1 = await _raw(s.port)
            _, w2, line2 = await _raw(s.port)
            assert line1.startswith(b"SSH-2.0-") and line2 == b""
            assert (await s.wait_record("limit", limit=limit))["value"] == 1
            w1.close()
            w2.close()


async def test_login_grace_time_silent_and_stalled_clients(tmp_path):
    async with serving(tmp_path, limits=RemoteLimits(login_grace_time=0.4)) as s:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        r1, w1, banner = await _raw(s.port)                  # says nothing at all
        r2, w2 = await asyncio.open_connection("127.0.0.1", s.port)
        w2.write(b"SSH-2.0-stalled\r\n")                      # its version line, then nothing
        assert banner.startswith(b"SSH-2.0-")
        await asyncio.wait_for(r1.read(), 10)                 # (the server's key exchange offer, then EOF)
        await asyncio.wait_for(r2.read(), 10)
        # Only "cut off" rather than "left hanging": which limit did it (0.4 s, not a later fallback) is
        # what the records below say.
        assert loop.time() - t0 < 15
        await wait_for(lambda: len(s.records("disconnect")) == 2, timeout=15, what="two disconnect records")
        assert len(s.records("limit", limit="login_grace_time")) == 2
        assert [r["reason"] for r in s.records("disconnect")] == ["login grace time (0.4 s) exceeded"] * 2
        w1.close()
        w2.close()


async def test_auth_tries(tmp_path):
    async with serving(tmp_path, limits=RemoteLimits(max_auth_tries=3)) as s:
        bad = [keygen(tmp_path / f"bad{i}") for i in range(3)]
        # ssh offers its identities in the order given
        res = await run(s.ssh("echo in", key=None, options=[f"IdentityFile={k}" for k in [*bad[:2], s.key]]))
        assert res.rc == 0 and res.text == "in\n", res.errtext  # two wrong keys, then the right one
        res = await run(s.ssh("echo in", key=None, options=[f"IdentityFile={k}" for k in [*bad, s.key]]))
        assert res.rc == 255 and "Too many authentication failures" in res.errtext, res.errtext
        rec = await s.wait_record("limit", limit="max_auth_tries")
        assert rec["value"] == 3
        assert len(s.records("exec")) == 1


async def test_unused_timeout_a_connection_without_sessions(tmp_path):
    async with serving(tmp_path, limits=RemoteLimits(unused_timeout=0.4)) as s:
        res = await run(s.ssh(flags=["-N"]), timeout=20)  # logged in, asks for nothing
        assert res.rc == 255
        rec = await s.wait_record("limit", limit="unused_timeout")
        assert (await s.wait_record("disconnect", conn=rec["conn"]))["reason"].startswith("unused")


async def test_idle_timeout_no_traffic(tmp_path):
    # (the timeout is well above the 0.25 s between inputs below: a loaded machine that holds this process
    # back for a moment does not make a gap that looks like an idle connection)
    async with serving(tmp_path, limits=RemoteLimits(idle_timeout=3.0)) as s:
        res = await run(s.ssh("sleep 30"), timeout=20)     # a session, but nothing moves
        assert res.rc == 255 and "no traffic for 3 s" in res.errtext, res.errtext
        assert (await s.wait_record("limit", limit="idle_timeout"))["value"] == 3.0
        # traffic keeps a connection: input every 0.25 s for 3.5 s outlives the timeout
        async with started(s.ssh("cat; echo done")) as proc:
            for i in range(14):
                proc.stdin.write(b"%d\n" % i)
                await proc.stdin.drain()
                await asyncio.sleep(0.25)
            proc.stdin.close()
            out = await asyncio.wait_for(proc.stdout.read(), 20)
            assert await proc.wait() == 0 and out.split()[-1] == b"done" and len(out.split()) == 15


async def test_keepalives_drop_a_client_that_stopped_answering(tmp_path):
    # (3 s without an answer drop a client: an ssh that a loaded machine holds back for a moment still answers)
    async with serving(tmp_path, limits=RemoteLimits(keepalive_interval=1.0, keepalive_count_max=2)) as s:
        async with started(s.ssh("echo in; sleep 30")) as proc:
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"in\n"
            await asyncio.sleep(1.5)  # a client that answers keeps its connection
            assert not s.records("disconnect")
            os.kill(proc.pid, signal.SIGSTOP)  # frozen: the TCP connection stays, the answers stop
            try:
                rec = await s.wait_record("limit", limit="keepalive_count_max")
                assert rec["value"] == 2
                assert "keepalive" in (await s.wait_record("disconnect", conn=rec["conn"]))["reason"]
            finally:
                os.kill(proc.pid, signal.SIGCONT)


async def test_max_sessions(tmp_path):
    async with serving(tmp_path, limits=RemoteLimits(max_sessions=2)) as s:
        async with asyncssh.connect("127.0.0.1", s.port, username=current_user(), client_keys=[str(s.key)],
                                    known_hosts=None, agent_path=None, config=None) as conn:
            p1 = await conn.create_process("sleep 30")
            p2 = await conn.create_process("sleep 30")
            with pytest.raises(asyncssh.ChannelOpenError, match="too many sessions"):
                await conn.create_process("sleep 30")
            rec = await s.wait_record("limit", limit="max_sessions")
            assert rec["value"] == 2
            assert len(s.remote.sessions()) == 2
            p1.close()
            await asyncio.wait_for(p1.wait_closed(), 10)
            result = await asyncio.wait_for(conn.run("echo again"), 20)  # a slot is free again
            assert result.stdout == "again\n"
            p2.close()
