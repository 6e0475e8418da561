"""What just happened: a bounded log of events from every service (mail received, a chat channel made, a
peer transfer done, a remote command, a limit hit), each with its time, for the dashboard's event stream.

Services call `emit(kind, service=..., **fields)` on the process-wide log (cheap: a deque append and a
wake-up); nothing is kept past `size` events, and a watcher that falls behind simply misses the oldest.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

MAX_FIELD = 300


class EventLog:
    def __init__(self, size: int = 500) -> None:
        self.size = size
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=size)
        self._seq = 0
        self._waiters: set[asyncio.Future[None]] = set()
        self.counts: collections.Counter[str] = collections.Counter()

    def emit(self, kind: str, *, service: str = "", **fields: Any) -> None:
        self._seq += 1
        event = {"id": self._seq, "time": time.time(), "kind": kind, "service": service}
        for key, value in fields.items():
            if isinstance(value, str) and len(value) > MAX_FIELD:
                value = value[:MAX_FIELD] + "…"
            if key in event:  # a field may never overwrite the log's own (its id orders the stream)
                key = f"{key}_"
            event[key] = value
        self._events.append(event)
        self.counts[kind] += 1
        for w in list(self._waiters):
            if not w.done():
                w.get_loop().call_soon_threadsafe(_wake, w)

    def since(self, last_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        out = [e for e in self._events if e["id"] > last_id]
        return out[-limit:] if limit else out

    @property
    def last_id(self) -> int:
        return self._seq

    async def wait(self, last_id: int, timeout: float) -> list[dict[str, Any]]:
        """Events newer than `last_id`, waiting up to `timeout` for one (then [])."""
        if self._seq > last_id:
            return self.since(last_id)
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return []
        finally:
            self._waiters.discard(fut)
        return self.since(last_id)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


# The process-wide log: services emit here whether or not a dashboard runs (it is only a bounded deque).
EVENTS = EventLog()


def emit(kind: str, *, service: str = "", **fields: Any) -> None:
    EVENTS.emit(kind, service=service, **fields)


__all__ = ["EVENTS", "EventLog", "emit"]
