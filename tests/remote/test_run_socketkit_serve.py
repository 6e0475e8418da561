"""remote run and remote copy against socketkit's own SSH server (`socketkit remote serve`, started in this
process with start_remote), side by side with a Debian sshd: the fan-out does not care which one answers."""

from __future__ import annotations

import asyncio
import contextlib
import io
import threading

import pytest
from fanout_support import Sshd, keygen, pub_line, require_sshd

from socketkit.net.loop import new_event_loop
from socketkit.remote.fanout import EXIT_OK, copy, run, run_command

server = pytest.importorskip("socketkit.remote.server", reason="socketkit remote serve not built yet")
if not hasattr(server, "start_remote"):  # pragma: no cover
    pytest.skip("socketkit remote serve not built yet", allow_module_level=True)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@contextlib.asynccontextmanager
async def serving(tmp_path, n: int):
    """n socketkit servers on 127.0.0.1 ports and one sshd, one user key; (targets, options)."""
    require_sshd()
    key = keygen(tmp_path / "id_ed25519")
    authorized = tmp_path / "authorized_keys"
    authorized.write_text((tmp_path / "id_ed25519.pub").read_text())
    remotes, lines = [], []
    sshd = Sshd(tmp_path / "sshd", authorized).start()
    try:
        for i in range(n):
            hk = keygen(tmp_path / f"hk{i}")
            r = await server.start_remote(server.RemoteConfig(
                listen=["tcp://127.0.0.1:0"], authorized_keys=authorized, host_key=hk,
                audit_log=tmp_path / f"audit{i}.log"))
            remotes.append(r)
            port = r.endpoints[0].port
            lines.append(f"[127.0.0.1]:{port} {pub_line(hk)}")
        kh = tmp_path / "known_hosts"
        kh.write_text("\n".join(lines + [sshd.known_hosts_line()]) + "\n")
        cfg = tmp_path / "ssh_config"
        cfg.write_text("")
        targets = [f"127.0.0.1:{r.endpoints[0].port}" for r in remotes] + [sshd.target]
        yield targets, dict(identity=[key], known_hosts=kh, ssh_config=cfg, agent=False)
    finally:
        for r in remotes:
            await r.aclose()
        sshd.stop()


async def test_run_on_socketkit_servers_and_sshd(tmp_path):
    async with serving(tmp_path, 2) as (targets, opts):
        out, err = io.StringIO(), io.StringIO()
        result = await run(targets, 'echo "port ${SSH_CONNECTION##* }"; echo warn >&2; exit 4', out=out, err=err,
                           **opts)
        for t in targets:
            h = result[t]
            assert h.status == "exit" and h.exit_status == 4, h.error
            assert f"{t} | port {t.rsplit(':', 1)[1]}" in out.getvalue().splitlines()
            assert f"{t} ! warn" in err.getvalue().splitlines()
        result = await run(targets, "true", json=True, out=io.StringIO(), **opts)
        assert result.ok


async def test_copy_to_socketkit_servers(tmp_path):
    src = tmp_path / "payload.bin"
    src.write_bytes(bytes(range(256)) * 4096)
    dest = tmp_path / "dest"
    async with serving(tmp_path, 2) as (targets, opts):
        for i, t in enumerate(targets[:2]):  # each server its own directory (they share this machine's disk)
            result = await copy([src], f"{t}:{dest}{i}/", err=io.StringIO(), **opts)
            assert result.ok, result.hosts[0].error
            assert (tmp_path / f"dest{i}" / "payload.bin").read_bytes() == src.read_bytes()


def test_run_command_against_socketkit_server(tmp_path):
    # the server in a loop of its own thread: run_command runs its own loop, as the CLI does
    ready = threading.Event()
    state = {}

    def serve():
        loop = new_event_loop()

        async def main():
            async with serving(tmp_path, 1) as (targets, opts):
                state.update(targets=targets, opts=opts, stop=asyncio.Event(), loop=asyncio.get_running_loop())
                ready.set()
                await state["stop"].wait()

        try:
            loop.run_until_complete(main())
        except BaseException as e:  # pragma: no cover - shown by the assertion below
            state["error"] = e
            ready.set()
        finally:
            loop.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(20), "the servers did not start"
        assert "error" not in state, state.get("error")
        code = run_command(state["targets"], "true", out=io.StringIO(), err=io.StringIO(), **state["opts"])
        assert code == EXIT_OK
    finally:
        if "loop" in state:
            state["loop"].call_soon_threadsafe(state["stop"].set)
        thread.join(20)
