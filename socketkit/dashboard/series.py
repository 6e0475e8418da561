"""Time series for the dashboard: every service's figures, sampled once a second, kept for the last 15
minutes at 1 s and the last 24 hours at 1 min, in rings of fixed size (memory never grows with uptime).

A figure is either a gauge (open connections: the value is shown as it is) or a counter (bytes, accepted
connections, requests: the series holds its rate per second, from the difference between two samples).
"""

from __future__ import annotations

import math
from array import array
from dataclasses import dataclass, field

FINE_POINTS = 15 * 60     # 15 minutes at 1 s
COARSE_POINTS = 24 * 60   # 24 hours at 1 min

# (name in the sample, shown as, counter?)  -- what every service has, from the socket layer
FIGURES = (
    ("open", "open connections", False),
    ("accepted", "connections/s", True),
    ("units", "requests or messages/s", True),
    ("bytes_in", "bytes in/s", True),
    ("bytes_out", "bytes out/s", True),
    ("problems", "errors, refusals and drops/s", True),
)


class Ring:
    """A fixed number of float slots; `add` overwrites the oldest. NaN marks a slot never written."""

    __slots__ = ("values", "size", "next")

    def __init__(self, size: int) -> None:
        self.values = array("d", [math.nan]) * size
        self.size = size
        self.next = 0

    def add(self, value: float) -> None:
        self.values[self.next] = value
        self.next = (self.next + 1) % self.size

    def ordered(self) -> list[float | None]:
        v = self.values
        out = list(v[self.next:]) + list(v[:self.next])
        return [None if x != x else round(x, 3) for x in out]  # NaN (never written) -> null in JSON


@dataclass
class ServiceSeries:
    fine: dict[str, Ring] = field(default_factory=lambda: {n: Ring(FINE_POINTS) for n, _, _ in FIGURES})
    coarse: dict[str, Ring] = field(default_factory=lambda: {n: Ring(COARSE_POINTS) for n, _, _ in FIGURES})
    last: dict[str, float] = field(default_factory=dict)       # previous counter readings
    minute: dict[str, float] = field(default_factory=dict)     # sums of this minute's 1 s values
    minute_n: int = 0


class SeriesStore:
    """`sample(now, {service: {figure: value}})` once a second; `view()` for the page."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceSeries] = {}
        self.fine_times = Ring(FINE_POINTS)
        self.coarse_times = Ring(COARSE_POINTS)
        self._minute_start: float | None = None
        self._last_time: float | None = None

    def sample(self, now: float, readings: dict[str, dict[str, float]]) -> None:
        elapsed = (now - self._last_time) if self._last_time is not None else 1.0
        elapsed = max(elapsed, 1e-3)
        self._last_time = now
        self.fine_times.add(now)
        for name, figures in readings.items():
            s = self.services.get(name)
            if s is None:
                s = self.services[name] = ServiceSeries()
                # a service that appears later has no past: its earlier slots stay empty, aligned in time
                for ring in s.fine.values():
                    for _ in range(self._fine_count() - 1):
                        ring.add(math.nan)
            for key, _, counter in FIGURES:
                raw = float(figures.get(key, 0.0))
                if counter:
                    # a service's counters start at zero with it: what it counted before its first
                    # sample (it started since the previous one) belongs to this interval
                    before = s.last.get(key, 0.0)
                    value = max(0.0, (raw - before) / elapsed)
                    s.last[key] = raw
                else:
                    value = raw
                s.fine[key].add(value)
                s.minute[key] = s.minute.get(key, 0.0) + value
            s.minute_n += 1
        if self._minute_start is None:
            self._minute_start = now
        if now - self._minute_start >= 60:
            self.coarse_times.add(now)
            for s in self.services.values():
                for key, _, _ in FIGURES:
                    total = s.minute.get(key, 0.0)
                    s.coarse[key].add(total / s.minute_n if s.minute_n else math.nan)
                s.minute.clear()
                s.minute_n = 0
            self._minute_start = now

    def _fine_count(self) -> int:
        return sum(1 for x in self.fine_times.values if x == x)

    def view(self, span: str = "15m") -> dict[str, object]:
        """{"times": [...], "figures": [[key, label, counter]...], "services": {name: {figure: [values]}}}"""
        fine = span != "24h"
        times = (self.fine_times if fine else self.coarse_times).ordered()
        keep = [i for i, t in enumerate(times) if t is not None]
        out: dict[str, object] = {"span": "15m" if fine else "24h", "times": [times[i] for i in keep],
                                  "figures": [list(f) for f in FIGURES], "services": {}}
        for name, s in self.services.items():
            rings = s.fine if fine else s.coarse
            out["services"][name] = {k: [r[i] for i in keep] for k, ring in rings.items()  # type: ignore[index]
                                     for r in (ring.ordered(),)}
        return out


__all__ = ["COARSE_POINTS", "FIGURES", "FINE_POINTS", "Ring", "SeriesStore"]
