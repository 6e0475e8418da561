"""The dashboard of `socketkit up`: charts over time, the sockets themselves, what just happened, and
metrics for monitoring.

    dash = Dashboard(status=lambda: [...], runnings=lambda: ctx.running)
    await dash.start()        # samples every service once a second
    app = DashboardApp(dash)  # the page, /api/*, /metrics (dashboard/app.py)

Everything it keeps is bounded: 15 min at 1 s and 24 h at 1 min per figure (series.py), the last events
(events.py), per-connection idle stamps only for open connections (sockets.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from socketkit.dashboard.events import EVENTS, EventLog
from socketkit.dashboard.series import SeriesStore
from socketkit.dashboard.sockets import SocketWatch, close_connection, service_sockets


class Dashboard:
    def __init__(self, status: Callable[[], list[dict[str, Any]]], runnings: Callable[[], list[Any]], *,
                 events: EventLog = EVENTS, interval: float = 1.0) -> None:
        self.status = status
        self.runnings = runnings
        self.events = events
        self.series = SeriesStore()
        self.watch = SocketWatch()
        self.interval = interval
        self._task: asyncio.Task[None] | None = None
        self._ticks: set[asyncio.Future[bool]] = set()
        self._stopped = False
        self.started = time.time()

    async def start(self) -> None:
        self.sample()
        self._task = asyncio.create_task(self._run(), name="socketkit dashboard")

    async def aclose(self) -> None:
        self._stopped = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for fut in list(self._ticks):  # no more ticks: whoever waits for one (a live stream) goes on now
            if not fut.done():
                fut.set_result(False)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += self.interval
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            self.sample()

    def sample(self) -> None:
        now = time.time()
        readings = {}
        for row in self.status():
            readings[row["name"]] = {
                "open": row.get("open", 0), "accepted": row.get("accepted", 0), "units": row.get("units", 0),
                "bytes_in": row.get("bytes_in", 0), "bytes_out": row.get("bytes_out", 0),
                "problems": row.get("errors", 0) + row.get("refused", 0) + row.get("dropped", 0),
            }
        self.series.sample(now, readings)
        self.watch.sample([s for r in self.runnings() for s in r.servers], asyncio.get_running_loop().time())
        for fut in list(self._ticks):
            if not fut.done():
                fut.set_result(True)

    @property
    def stopped(self) -> bool:
        return self._stopped

    async def next_tick(self, timeout: float) -> bool:
        """Wait (at most `timeout`) for the next sample: True when it came, False on time-out or stop."""
        if self._stopped:
            return False
        fut = asyncio.get_running_loop().create_future()
        self._ticks.add(fut)
        try:
            return await asyncio.wait_for(fut, timeout)  # True: a new sample; False: the dashboard stopped
        except TimeoutError:
            return False
        finally:
            self._ticks.discard(fut)

    def latest(self) -> dict[str, Any]:
        """The newest point of every series (what the page appends each second)."""
        view = self.series.view("15m")
        times = view["times"]
        point: dict[str, Any] = {"time": times[-1] if times else None, "services": {}}
        for name, figures in view["services"].items():  # type: ignore[union-attr]
            point["services"][name] = {k: (v[-1] if v else None) for k, v in figures.items()}
        return point

    def sockets(self, service: str | None = None) -> list[dict[str, Any]]:
        now = asyncio.get_running_loop().time()
        return [service_sockets(r, now, self.watch) for r in self.runnings() if service in (None, r.name)]

    def close(self, service: str, conn_id: int | str) -> bool:
        done = close_connection(self.runnings(), service, conn_id)
        if done:
            self.events.emit("connection closed by the operator", service=service, connection=conn_id)
        return done


__all__ = ["Dashboard"]
