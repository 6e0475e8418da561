"""`remote serve` with the real OpenSSH client: commands, exit statuses, byte-exact streams, the session's
environment, signals, a client that leaves, refusals, the host key, and the audit log written first."""

from __future__ import annotations

import asyncio
import os
import stat

import asyncssh
import pytest
from helpers import wait_for
from sshsupport import (
    current_user,
    fingerprint,
    keygen,
    pub,
    require_openssh,
    run,
    serving,
    ssh_argv,
    started,
    write_known_hosts,
)

from socketkit.remote.server import RemoteConfig, RemoteError, serve_remote, start_remote

pytestmark = pytest.mark.usefixtures("openssh")


@pytest.fixture
def openssh():
    require_openssh()


def _alive_in_group(pgid: int) -> list[int]:
    """Processes of the group that still run (zombies waiting for init to reap them do not count)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(pid))
    return alive


async def _client(served, **kw) -> asyncssh.SSHClientConnection:
    return await asyncssh.connect("127.0.0.1", served.port, username=current_user(), client_keys=[str(served.key)],
                                  known_hosts=None, agent_path=None, config=None, **kw)


async def test_exit_status_environment_and_separate_stderr(tmp_path):
    async with serving(tmp_path) as s:
        res = await run(s.ssh("printf out; printf err >&2; echo; env; echo PWD=$(pwd); exit 3"))
        assert res.rc == 3, res
        assert res.err == b"err"
        env = dict(line.split("=", 1) for line in res.text.splitlines()[1:] if "=" in line)
        assert res.text.startswith("out\n")
        home = s.remote.account.home  # (a scratch home in tests: see tests/conftest.py)
        assert env["PWD"] == home and env["HOME"] == home
        assert env["USER"] == env["LOGNAME"] == current_user()
        assert env["SHELL"] and env["PATH"]
        client_ip, client_port, server_port = env["SSH_CLIENT"].split()
        assert client_ip == "127.0.0.1" and server_port == str(s.port)
        assert env["SSH_CONNECTION"] == f"127.0.0.1 {client_port} 127.0.0.1 {s.port}"
        assert "SSH_TTY" not in env and "TERM" not in env
        assert (await run(s.ssh("true"))).rc == 0
        assert (await run(s.ssh("exit 0"))).rc == 0
        rec = s.records("exec", command="printf out; printf err >&2; echo; env; echo PWD=$(pwd); exit 3")[0]
        assert rec["pty"] is False and rec["user"] == current_user()


async def test_binary_round_trip_every_byte_value(tmp_path):
    data = bytes(range(256)) * 8192 + os.urandom(1 << 20)  # 3 MiB: every byte value, and noise
    async with serving(tmp_path) as s:
        res = await run(s.ssh("cat; printf '\\0\\377end' >&2"), input=data, timeout=60)
        assert res.rc == 0, res.errtext
        assert res.out == data
        assert res.err == b"\0\xffend"


async def test_exit_signal_and_a_signal_from_the_client(tmp_path):
    async with serving(tmp_path) as s:
        res = await run(s.ssh("kill -TERM $$"))
        assert res.rc == 255  # OpenSSH's ssh reports a remote signal as 255
        async with await _client(s) as conn:
            result = await asyncio.wait_for(conn.run("kill -TERM $$"), 20)
            assert result.exit_signal is not None and result.exit_signal[0] == "TERM"
            proc = await conn.create_process("echo ready; sleep 100; echo not reached")
            assert await asyncio.wait_for(proc.stdout.readline(), 20) == "ready\n"
            proc.send_signal("INT")
            result = await asyncio.wait_for(proc.wait(), 20)
            assert "not reached" not in (result.stdout or "")
            assert result.exit_signal is not None and result.exit_signal[0] == "INT"
            assert s.records("signal", signal="INT")


async def test_the_record_comes_first_and_a_client_that_leaves_takes_its_processes(tmp_path):
    async with serving(tmp_path) as s:
        async with started(s.ssh("sleep 301 & echo $$; sleep 300; true")) as proc:
            pgid = int(await asyncio.wait_for(proc.stdout.readline(), 20))
            rec = await s.wait_record("exec", command="sleep 301 & echo $$; sleep 300; true")
            assert rec["user"] == current_user()
            auth = s.records("auth", result="accepted")[-1]
            assert auth["fingerprint"] == fingerprint(pub(s.key))
            assert s.records("connect")[-1]["conn"] == rec["conn"] == auth["conn"]
            sessions = s.remote.sessions()
            assert [x["kind"] for x in sessions] == ["exec"]
            assert sessions[0]["command"].startswith("sleep 301") and sessions[0]["fingerprint"] == auth["fingerprint"]
            os.killpg(proc.pid, 9)  # the client vanishes: no EOF, no close, just a dead TCP connection
            await proc.wait()
        await s.wait_record("disconnect", conn=rec["conn"])
        await wait_for(lambda: not _alive_in_group(pgid), timeout=15, interval=0.02,
                       what=f"process group {pgid} to end after the client left")
        assert s.remote.sessions() == []


async def test_stopping_the_server_ends_sessions_and_their_processes(tmp_path):
    async with serving(tmp_path) as s:
        async with started(s.ssh("echo $$; sleep 300; true")) as proc:
            pgid = int(await asyncio.wait_for(proc.stdout.readline(), 20))
            await asyncio.wait_for(s.remote.aclose(), 20)  # (serving's own aclose afterwards does nothing)
            assert await asyncio.wait_for(proc.wait(), 20) == 255
            assert b"server shutting down" in await proc.stderr.read()
        # The group was signalled and its leader reaped; the rest (the `sleep`) dies when the kernel next runs
        # it, which on a loaded machine may be a moment later.
        await wait_for(lambda: not _alive_in_group(pgid), timeout=15, interval=0.02,
                       what=f"process group {pgid} to end with the server")
        assert s.records("disconnect")[-1]["reason"] == "server shutting down"
        assert s.records()[-1]["event"] == "stop"


async def test_refusals_unknown_key_password_wrong_user(tmp_path):
    async with serving(tmp_path) as s:
        other = keygen(tmp_path / "other")
        res = await run(s.ssh("true", key=other))
        assert res.rc == 255 and "Permission denied (publickey)" in res.errtext
        refused = s.records("auth", result="refused")[-1]
        assert refused["fingerprint"] == fingerprint(pub(other)) and "authorized_keys" in refused["reason"]
        for method in ("password", "keyboard-interactive"):
            res = await run(s.ssh("true", key=None, options=[f"PreferredAuthentications={method}"]))
            assert res.rc == 255 and "Permission denied (publickey)" in res.errtext, res
        res = await run(s.ssh("true", user="nobody"))
        assert res.rc == 255 and "Permission denied (publickey)" in res.errtext
        assert any("'nobody' is not" in r.get("reason", "") for r in s.records("auth", result="refused"))
        with pytest.raises(asyncssh.PermissionDenied):  # another client with a password: no way in either
            await asyncssh.connect("127.0.0.1", s.port, username=current_user(), password="secret",
                                   client_keys=None, known_hosts=None, agent_path=None, config=None,
                                   preferred_auth="password,keyboard-interactive")
        await s.wait_record("disconnect", authenticated=False)
        assert not s.records("exec") and not s.records("auth", result="accepted")


async def test_no_keys_to_accept_is_one_clear_error(tmp_path):
    with pytest.raises(RemoteError, match="no keys to accept: .*missing"):
        await start_remote(RemoteConfig(listen=["tcp://127.0.0.1:0"], authorized_keys=tmp_path / "missing",
                                        host_key=keygen(tmp_path / "hk"), audit_log=tmp_path / "audit.log"))


async def test_host_key_made_on_first_start_and_a_host_certificate(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKETKIT_DATA", str(tmp_path / "data"))
    from socketkit.remote import host_key_path

    async with serving(tmp_path, host_key=None) as s:
        key = host_key_path()
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert s.remote.fingerprint == fingerprint(pub(key))
        kh = write_known_hosts(tmp_path / "kh1", s.port, pub(key).read_text())
        assert (await run(s.ssh("true", known_hosts=kh))).rc == 0
    # signed by a host CA: a client that trusts only the CA (@cert-authority) accepts the server
    from sshsupport import sign_cert

    ca = keygen(tmp_path / "host_ca")
    sign_cert(ca, key, principals=["127.0.0.1"], host=True)
    two = tmp_path / "two"
    two.mkdir()
    async with serving(two, host_key=None) as s:
        assert s.remote.host_cert is True
        kh = write_known_hosts(tmp_path / "kh2", s.port, pub(ca).read_text(), ca=True)
        res = await run(s.ssh("true", known_hosts=kh))
        assert res.rc == 0, res.errtext


async def test_serve_remote_says_how_to_connect(tmp_path, capsys):
    stop = asyncio.Event()
    key = keygen(tmp_path / "id")
    config = RemoteConfig(listen=["tcp://127.0.0.1:0"], authorized_keys=pub(key), host_key=keygen(tmp_path / "hk"),
                          audit_log=tmp_path / "audit.log")
    seen = []

    def ready(remote):
        from socketkit.remote.server import announce

        announce(remote)
        seen.append(remote)
        stop.set()

    await asyncio.wait_for(serve_remote(config, ready=ready, stop=stop), 20)
    err = capsys.readouterr().err
    port = seen[0].endpoints[0].port
    assert f"remote listening on tcp://127.0.0.1:{port}" in err
    assert seen[0].fingerprint in err and seen[0].fingerprint.startswith("SHA256:")
    assert f"ssh -p {port} {current_user()}@127.0.0.1" in err
    assert ssh_argv(port, key)  # the argv helper knows the same names
