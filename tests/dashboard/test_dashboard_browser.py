"""The dashboard in a real browser (headless Chromium over CDP) while load goes into the services: cards,
charts, connections and events update; screenshots are saved as test artifacts (build/test-artifacts/); the
page's memory stays level over a long run (no growing arrays)."""

from __future__ import annotations

import asyncio
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
        echo.sendall(b"y" * 100_000)
        try:
            await browser.wait_for("[...document.querySelectorAll('#events li')].some(li => "
                                   "li.textContent.includes('mail received') && li.textContent.includes('browser check 1'))",
                                   what="the mail events in the list")
            await browser.wait_for("state.data.units && state.data.units.data[state.data.units.names.indexOf('mail') + 1]"
                                   ".some(v => v > 0)", what="a messages/s point for mail on the chart")
            await browser.evaluate("(() => { const s = document.querySelector('#socket-service'); s.value = 'echo';"
                                   " s.dispatchEvent(new Event('change')); return true })()")
            row = await browser.wait_for("(() => { const r = document.querySelector('#connections tbody tr[data-id]');"
                                         " return r && r.textContent })()", what="echo's connection in the table")
            assert "127.0.0.1" in row and "tcp" in row
            await browser.screenshot(ARTIFACTS / "dashboard.png")
            # closing it from the page ends it for the client
            await browser.evaluate("document.querySelector('#connections tbody tr[data-id] button.close').click()")
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
        for i in range(400):
            EVENTS.emit("test event", service="web", n=i)
        await browser.wait_for("document.querySelectorAll('#events li').length >= 200", what="the event list filled")
        first = await browser.heap()
        await asyncio.sleep(8)  # 80 more ticks: 80 more points per series, the oldest dropped
        for i in range(400):
            EVENTS.emit("test event", service="web", n=i)
        await asyncio.sleep(1)
        second = await browser.heap()
        assert await browser.evaluate("document.querySelectorAll('#events li').length") == 200
        assert await browser.evaluate("Math.max(...Object.values(state.data).map(d => d.data[0].length))") <= 900
        assert second - first < 2_000_000, (first, second)
