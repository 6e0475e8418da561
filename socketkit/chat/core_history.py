"""Message history for replay on JOIN and draft/chathistory: the store protocol and an in-memory store.

Targets are case-folded channel names. A reference `ref` is a msgid (str) or a UNIX time (float).
Every query returns entries oldest first: HistoryEntry or any object with the same attributes (msgid,
time, source, command, text, tags). `tags` holds the client-only tags (+...) and `account` when the
sender was logged in. The chat service provides a SQLite store of the same shape.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["HistoryEntry", "HistoryStore", "MemoryHistory"]


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    msgid: str
    time: float
    source: str        # nick!user@host of the sender
    command: str       # PRIVMSG or NOTICE
    text: str
    tags: dict[str, str] = field(default_factory=dict)  # client-only tags (+...) and account


class HistoryStore(Protocol):
    def append(self, target_folded: str, msgid: str, time: float, source: str, command: str,
               text: str, tags: dict[str, str]) -> None: ...

    def latest(self, target_folded: str, limit: int) -> list[HistoryEntry]: ...

    def before(self, target_folded: str, ref: str | float, limit: int) -> list[HistoryEntry]: ...

    def after(self, target_folded: str, ref: str | float, limit: int) -> list[HistoryEntry]: ...


class MemoryHistory:
    """The last `per_target` entries of each target, at most `max_targets` targets (least recently
    written dropped first). Lookups are linear in `per_target`, which is small on purpose."""

    def __init__(self, per_target: int = 1000, max_targets: int = 10_000) -> None:
        self.per_target = per_target
        self.max_targets = max_targets
        self._logs: dict[str, deque[HistoryEntry]] = {}

    def append(self, target_folded: str, msgid: str, time: float, source: str, command: str,
               text: str, tags: dict[str, str]) -> None:
        log = self._logs.pop(target_folded, None)
        if log is None:
            log = deque(maxlen=self.per_target)
            if len(self._logs) >= self.max_targets:
                del self._logs[next(iter(self._logs))]
        self._logs[target_folded] = log
        log.append(HistoryEntry(msgid, time, source, command, text, dict(tags)))

    def _index(self, log: deque[HistoryEntry], ref: str | float, after: bool) -> int | None:
        """Index of the first entry strictly after (or the end of those strictly before) `ref`."""
        if isinstance(ref, str):
            for i, entry in enumerate(log):
                if entry.msgid == ref:
                    return i + 1 if after else i
            return None
        if after:
            return next((i for i, e in enumerate(log) if e.time > ref), len(log))
        return next((i for i, e in enumerate(log) if e.time >= ref), len(log))

    def latest(self, target_folded: str, limit: int) -> list[HistoryEntry]:
        log = self._logs.get(target_folded)
        if not log or limit <= 0:
            return []
        return list(log)[-limit:]

    def before(self, target_folded: str, ref: str | float, limit: int) -> list[HistoryEntry]:
        log = self._logs.get(target_folded)
        if not log or limit <= 0:
            return []
        end = self._index(log, ref, after=False)
        if end is None:
            return []
        return list(log)[max(0, end - limit):end]

    def after(self, target_folded: str, ref: str | float, limit: int) -> list[HistoryEntry]:
        log = self._logs.get(target_folded)
        if not log or limit <= 0:
            return []
        start = self._index(log, ref, after=True)
        if start is None:
            return []
        return list(log)[start:start + limit]
