"""The remote service inside `socketkit up`, seen by the dashboard while a stock OpenSSH client uses it: the
session in the sockets view (key, command, bytes on the wire each way), the audit records in the events, the
operator closing the connection."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import httpx
import pytest
from test_dashboard import base, port_of, wait_until

from socketkit import up

SSH = shutil.which("ssh")
SSH_KEYGEN = shutil.which("ssh-keygen")

pytestmark = pytest.mark.skipif(SSH is None or SSH_KEYGEN is None,
                                reason="needs OpenSSH's ssh and ssh-keygen (Debian: openssh-client)")


async def test_an_ssh_session_in_the_sockets_view_and_the_events(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))  # up reads ~/.ssh/authorized_keys
    monkeypatch.setenv("SOCKETKIT_DATA", str(tmp_path / "data"))
    key = tmp_path / "id"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "dash-test", "-f", str(key)], check=True,
                   timeout=30)
    (home / ".ssh" / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
    fingerprint = subprocess.run([SSH_KEYGEN, "-l", "-f", str(key) + ".pub"], capture_output=True, text=True,
                                 check=True, timeout=30).stdout.split()[1]

    ctx = up.UpContext(dashboard_interval=0.2, overrides={"web": ["tcp://127.0.0.1:0"],
                                                          "remote": ["tcp://127.0.0.1:0"]})
    await up.start_all(ctx, {"web", "remote"})
    proc = None
    try:
        port = port_of(ctx, "remote")
        proc = await asyncio.create_subprocess_exec(
            SSH, "-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
            "-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-p", str(port), "127.0.0.1", "cat",
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b"through the dashboard\n")
        await proc.stdin.drain()
        assert await asyncio.wait_for(proc.stdout.readline(), 20) == b"through the dashboard\n"

        async with httpx.AsyncClient(base_url=base(ctx), timeout=10) as web:
            async def session():
                view = (await web.get("/api/sockets", params={"service": "remote"})).json()
                rows = [c for c in view["services"][0]["connections"] if c["info"].get("command") == "cat"]
                return rows[0] if rows else None

            row = await wait_until(session, "the ssh session in the sockets view")
            assert row["info"]["key"] == fingerprint and row["info"]["user"]
            assert row["local"] == f"127.0.0.1:{port}" and row["protocol"].startswith("ssh")
            assert row["bytes_in"] > 1000 and row["bytes_out"] > 1000  # key exchange, auth, the line both ways

            status = {s["name"]: s for s in (await web.get("/api/status")).json()["services"]}
            assert status["remote"]["open"] == 1
            assert status["remote"]["bytes_in"] >= row["bytes_in"] and status["remote"]["bytes_out"] >= row["bytes_out"]

            events = (await web.get("/api/events")).json()["events"]
            remote = [e for e in events if e["service"] == "remote"]
            assert any(e["kind"] == "auth" and e.get("result") == "accepted" and e.get("fingerprint") == fingerprint
                       for e in remote)
            assert any(e["kind"] == "exec" and e.get("command") == "cat" for e in remote)

            assert (await web.post("/api/close", json={"service": "remote", "id": ["x"]})).status_code == 400
            assert (await web.post("/api/close", json={"service": "remote", "id": "0000"})).status_code == 404
            closed = await web.post("/api/close", json={"service": "remote", "id": row["id"]})
            assert closed.json() == {"closed": True}
            code = await asyncio.wait_for(proc.wait(), 20)
            assert code != 0  # the session ended under it, without an exit status

            async def gone():
                return (await web.get("/api/status")).json()["services"][1]["open"] == 0
            await wait_until(gone, "the closed connection leaving the count")
    finally:
        if proc is not None and proc.returncode is None:
            proc.kill()
            await proc.wait()
        await up.stop_all(ctx, drain=0)
