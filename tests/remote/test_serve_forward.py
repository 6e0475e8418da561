"""Port forwarding through `remote serve` with OpenSSH's ssh: -L and -R carry bytes when the server allows
forwarding, are refused (and the refusal audited) when it does not; agent and X11 forwarding never."""

from __future__ import annotations

import asyncio
import os
import re

import pytest
from helpers import wait_for
from sshsupport import require_openssh, run, serving, started

pytestmark = pytest.mark.usefixtures("openssh")


@pytest.fixture
def openssh():
    require_openssh()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    data = await reader.read(100)
    writer.write(b"echo:" + data)
    await writer.drain()
    writer.close()


async def _ask_unix(path: str, timeout: float = 20.0) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:  # ssh makes the local socket once it is logged in
        try:
            r, w = await asyncio.open_unix_connection(path)
            break
        except OSError:
            if loop.time() > deadline:
                raise AssertionError(f"ssh never listened on {path}") from None
            await asyncio.sleep(0.05)
    try:
        w.write(b"ping")
        data = await asyncio.wait_for(r.read(), timeout)
    except ConnectionError:  # refused: ssh may close our end before we have written
        data = b""
    w.close()
    return data


async def _allocated_port(proc, timeout: float = 20.0) -> int:
    async with asyncio.timeout(timeout):
        while True:
            line = (await proc.stderr.readline()).decode()
            assert line, "ssh ended without allocating the remote port"
            m = re.search(r"Allocated port (\d+)", line)
            if m:
                return int(m.group(1))


async def test_local_and_remote_forwarding_when_allowed(tmp_path):
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    eport = echo.sockets[0].getsockname()[1]
    try:
        async with serving(tmp_path, allow_forwarding=True) as s:
            sock = str(tmp_path / "fwd.sock")
            async with started(s.ssh(flags=["-N", "-L", f"{sock}:127.0.0.1:{eport}"],
                                     options=["ExitOnForwardFailure=yes"])):
                assert await _ask_unix(sock) == b"echo:ping"
            rec = await s.wait_record("forward", direction="local")
            assert rec["allowed"] is True and rec["host"] == "127.0.0.1" and rec["port"] == eport

            async with started(s.ssh(flags=["-N", "-R", f"127.0.0.1:0:127.0.0.1:{eport}"],
                                     options=["ExitOnForwardFailure=yes", "LogLevel=INFO"])) as proc:
                port = await _allocated_port(proc)
                r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 20)
                w.write(b"pong")
                assert await asyncio.wait_for(r.read(), 20) == b"echo:pong"
                w.close()
            rec = await s.wait_record("forward", direction="remote")
            assert rec["allowed"] is True and rec["bind"] == "127.0.0.1"
    finally:
        echo.close()


async def test_forwarding_refused_by_default_and_agent_x11_never(tmp_path):
    echo = await asyncio.start_server(_echo, "127.0.0.1", 0)
    eport = echo.sockets[0].getsockname()[1]
    try:
        async with serving(tmp_path) as s:
            sock = str(tmp_path / "fwd.sock")
            async with started(s.ssh(flags=["-N", "-L", f"{sock}:127.0.0.1:{eport}"])):
                assert await _ask_unix(sock) == b""  # ssh listens, the server refuses the channel
            rec = await s.wait_record("forward", direction="local")
            assert rec["allowed"] is False and "disabled" in rec["reason"] and rec["port"] == eport

            res = await run(s.ssh(flags=["-N", "-R", f"127.0.0.1:0:127.0.0.1:{eport}"],
                                  options=["ExitOnForwardFailure=yes"]))
            assert res.rc == 255 and "remote port forwarding failed" in res.errtext
            assert (await s.wait_record("forward", direction="remote"))["allowed"] is False

            agent_sock = str(tmp_path / "agent.sock")
            async with started(["ssh-agent", "-D", "-a", agent_sock]):
                # (ssh asks to forward an agent only when it can reach one)
                await wait_for(lambda: os.path.exists(agent_sock), timeout=15, interval=0.02,
                               what="ssh-agent's socket")
                env = {**os.environ, "DISPLAY": ":97", "XAUTHORITY": str(tmp_path / "Xauthority")}
                res = await run(s.ssh("echo A=$SSH_AUTH_SOCK D=$DISPLAY", flags=["-A", "-X"],
                                      options=[f"IdentityAgent={agent_sock}"]), env=env)
            assert res.rc == 0 and res.text.strip() == "A= D="
            assert (await s.wait_record("forward", direction="agent"))["allowed"] is False
            assert (await s.wait_record("forward", direction="x11"))["allowed"] is False
    finally:
        echo.close()
