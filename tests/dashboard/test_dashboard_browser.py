"""The dashboard in a real browser (headless Chromium over CDP) while load goes into the services: cards,
charts, connections and events update; screenshots are saved as test artifacts (build/test-artifacts/); the
page's memory stays level over a long run (no growing arrays)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest
from cdp import Chromium, chromium_path
from test_dashboard import base, port_of, running_up, send_mail

from socketkit.dashboard.events import EVENTS
from socketkit.dashboard.series import FINE_POINTS

ARTIFACTS = Path(os.environ.get("SOCKETKIT_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" / "test-artifacts"))
pytestmark = pytest.mark.slow


async def test_the_page_shows_services_charts_sockets_and_events_live(tmp_path):
    chromium_path()
    async with running_up(tmp_path, interval=0.5) as ctx, Chromium(tmp_path / "profile") as browser:
        await browser.goto(base(ctx) + "/")
        await browser.wait_for("document.body.dataset.ready === '1'", what="the page ready")
        assert await browser.evaluate("document.querySelectorAll('#services .card').length") == 5
        assert await browser.wait_for("document.querySelectorAll('#charts .chart canvas').length >= 6",
                                      what="six charts drawn")
        # load: mail (events and messages/s), echo (a connection with bytes), live over the event stream
        for i in range(2):
            await asyncio.to_thread(send_mail, port_of(ctx, "mail"), f"browser check {i}")
        echo = socket.create_connection(("127.0.0.1", port_of(ctx, "echo")))
        # (from a thread: a blocking send on the loop's thread would wait for room only the echo service,
        # on this loop, can make)
        await asyncio.to_thread(echo.sendall, b"y" * 100_000)
        try:
            await browser.wait_for("[...document.querySelectorAll('#events li')].some(li => "
                                   "li.textContent.includes('mail received') && li.textContent.includes('browser check 1'))",
                                   what="the mail events in the list")
            await browser.wait_for("state.data.units && state.data.units.data[state.data.units.names.indexOf('mail') + 1]"
                                   ".some(v => v > 0)", what="a messages/s point for mail on the chart")
            await browser.evaluate("(() => { const s = document.querySelector('#socket-service'); s.value = 'echo';"
                                   " s.dispatchEvent(new Event('change')); return true })()")
            # The table keeps showing the first service's connections (the browser's own, to web) until the
            # answer for echo arrives: find the row of this very connection, by its peer address.
            peer = f"127.0.0.1:{echo.getsockname()[1]}"
            mine = ("[...document.querySelectorAll('#connections tbody tr[data-id]')]"
                    f".find(r => r.cells[0].textContent === {json.dumps(peer)})")
            row = await browser.wait_for(f"(() => {{ const r = {mine}; return r && r.textContent }})()",
                                         what="echo's connection in the table")
            assert f"127.0.0.1:{port_of(ctx, 'echo')}" in row and "tcp" in row
            await browser.screenshot(ARTIFACTS / "dashboard.png")
            # closing it from the page ends it for the client
            await browser.evaluate(f"{mine}.querySelector('button.close').click()")
            echo.settimeout(10)
            drained = b""
            while chunk := await asyncio.to_thread(echo.recv, 1 << 20):
                drained += chunk
        finally:
            echo.close()
        assert (ARTIFACTS / "dashboard.png").stat().st_size > 10_000


async def test_the_page_keeps_a_level_memory_over_a_long_run(tmp_path):
    """The server's 15 minutes are full before the page opens (900 samples taken at once), then it ticks ten
    times a second: the charts stay at 900 points and the heap stays level; the event list stays at 200 rows
    whatever arrives."""
    chromium_path()
    async with running_up(tmp_path, interval=0.1) as ctx, Chromium(tmp_path / "profile") as browser:
        for _ in range(FINE_POINTS):
            ctx.dashboard.sample()
        await browser.goto(base(ctx) + "/")
        await browser.wait_for("document.body.dataset.ready === '1'", what="the page ready")
        await browser.wait_for("state.data.open && state.data.open.data[0].length >= 900",
                               what="the charts full (900 points)")
        async def events_shown(mark: str) -> None:
            """400 events, then one marking their end: the list has them all once the mark is on top."""
            for i in range(400):
                EVENTS.emit("test event", service="web", n=i)
            EVENTS.emit(mark, service="web")
            await browser.wait_for(f"(document.querySelector('#events li') || {{}}).dataset?.kind === '{mark}'",
                                   what=f"the event list up to '{mark}'")

        await events_shown("heap mark 1")
        assert await browser.evaluate("document.querySelectorAll('#events li').length") == 200
        first = await browser.heap()
        await asyncio.sleep(8)  # 80 more ticks: 80 more points per series, the oldest dropped
        await events_shown("heap mark 2")
        second = await browser.heap()
        assert await browser.evaluate("document.querySelectorAll('#events li').length") == 200
        assert await browser.evaluate("Math.max(...Object.values(state.data).map(d => d.data[0].length))") <= 900
        assert second - first < 2_000_000, (first, second)


async def test_the_readme_screenshot_every_service_under_load(tmp_path, monkeypatch):
    """The picture in the README (docs/dashboard.png is a copy of build/test-artifacts/dashboard-readme.png):
    `up` with web, echo, mail, chat, peer and remote, while mail arrives, four IRC users talk, echo and web
    traffic flows, a file crosses the peer relay (the real CLI on both ends) and ssh runs a command."""
    import shutil
    import subprocess
    import sys

    from socketkit import up

    chromium_path()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("SOCKETKIT_DATA", str(tmp_path / "data"))
    ssh, keygen = shutil.which("ssh"), shutil.which("ssh-keygen")
    services = {"web", "echo", "mail", "chat", "peer"}
    if ssh and keygen:
        subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "id")], check=True, timeout=30)
        (home / ".ssh" / "authorized_keys").write_text((tmp_path / "id.pub").read_text())
        services.add("remote")
    ctx = up.UpContext(dashboard_interval=0.25, overrides={name: ["tcp://127.0.0.1:0"] for name in
                                                           ("web", "echo", "mail", "chat", "peer", "peer-transit",
                                                            "remote")})
    await up.start_all(ctx, services)
    stop = asyncio.Event()
    irc: list[socket.socket] = []
    try:
        def ports(name: str) -> list[int]:
            running = next(r for r in ctx.running if r.name == name)
            return [int(e.rsplit(":", 1)[1]) for e in running.endpoints]

        async def mail() -> None:
            for i in range(200):
                if stop.is_set():
                    return
                await asyncio.to_thread(send_mail, ports("mail")[0], ["weekly report", "build passed ✓",
                                                                       "lunch?", "deploy notes"][i % 4])
                await asyncio.sleep(0.4)

        async def chat() -> None:
            for nick, channels in (("alice", "#ops,#dev"), ("bob", "#ops"), ("carol", "#dev"), ("deploybot", "#ops,#dev")):
                s = socket.create_connection(("127.0.0.1", ports("chat")[0]))
                s.setblocking(False)
                s.sendall(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\nJOIN {channels}\r\n".encode())
                irc.append(s)
            for i in range(400):
                if stop.is_set():
                    return
                s = irc[i % len(irc)]
                s.sendall(f"PRIVMSG #ops :status {i}\r\n".encode())
                for c in irc:
                    try:
                        while c.recv(65536):
                            pass
                    except BlockingIOError:
                        pass
                await asyncio.sleep(0.15)

        async def echo_and_web() -> None:
            echo = socket.create_connection(("127.0.0.1", ports("echo")[0]))
            echo.setblocking(False)
            try:
                for i in range(400):
                    if stop.is_set():
                        return
                    try:
                        echo.send(b"e" * (20_000 + 7_000 * (i % 9)))
                        while echo.recv(1 << 20):
                            pass
                    except (BlockingIOError, InterruptedError):
                        pass
                    await asyncio.to_thread(_get, base(ctx) + "/api/status")
                    await asyncio.sleep(0.1)
            finally:
                echo.close()

        async def transfer() -> None:
            mailbox, transit = ports("peer")
            payload = tmp_path / "holiday-photos.tar"
            payload.write_bytes(os.urandom(8 << 20))
            flags = ["--mailbox", f"ws://127.0.0.1:{mailbox}/v1", "--transit-relay", f"tcp://127.0.0.1:{transit}",
                     "--no-listen"]
            (tmp_path / "received").mkdir()
            sender = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "socketkit", "peer", "send", *flags, "--code", "7-guitarist-revenge",
                str(payload), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            receiver = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "socketkit", "peer", "receive", *flags, "--yes", "--out",
                str(tmp_path / "received"), "7-guitarist-revenge", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                assert await asyncio.wait_for(receiver.wait(), 60) == 0
                assert await asyncio.wait_for(sender.wait(), 60) == 0
            finally:
                for p in (sender, receiver):
                    if p.returncode is None:
                        p.kill()
                        await p.wait()

        async def remote() -> None:
            if "remote" not in services:
                return
            for command in ("uptime", "df -h /"):
                p = await asyncio.create_subprocess_exec(
                    ssh, "-F", "/dev/null", "-i", str(tmp_path / "id"), "-o", "IdentitiesOnly=yes", "-o",
                    "BatchMode=yes", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                    "-p", str(ports("remote")[0]), "127.0.0.1", command,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                assert await asyncio.wait_for(p.wait(), 30) == 0

        load = [asyncio.create_task(t()) for t in (mail, chat, echo_and_web)]
        async with Chromium(tmp_path / "profile") as browser:
            await browser.send("Emulation.setDeviceMetricsOverride", width=1385, height=1600, deviceScaleFactor=1,
                               mobile=False)
            await browser.goto(base(ctx) + "/")
            await browser.wait_for("document.body.dataset.ready === '1'", what="the page ready")
            await asyncio.sleep(3)
            # (side by side: the whole test has 30 s, and a loaded machine starts Python and ssh slowly)
            await asyncio.gather(transfer(), remote())
            await asyncio.sleep(4)
            await browser.evaluate("(() => { const s = document.querySelector('#socket-service'); s.value = 'chat';"
                                   " s.dispatchEvent(new Event('change')); return true })()")
            await browser.wait_for("[...document.querySelectorAll('#connections tbody tr[data-id]')]"
                                   ".filter(r => r.textContent.includes('nick: ')).length === 4",
                                   what="the four IRC users in the sockets table")
            await browser.wait_for("[...document.querySelectorAll('#events li')].some(li => "
                                   "li.textContent.includes('transfer relayed'))", what="the relayed transfer event")
            await asyncio.sleep(1)
            await browser.screenshot(ARTIFACTS / "dashboard-readme.png")
        stop.set()
        await asyncio.gather(*load)
    finally:
        stop.set()
        for s in irc:
            s.close()
        await up.stop_all(ctx, drain=0)
    assert (ARTIFACTS / "dashboard-readme.png").stat().st_size > 50_000


def _get(url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as r:
        r.read()
