"""Channel history in SQLite (WAL), the HistoryStore the chat core writes every channel message to.

Appends are committed one by one (WAL with synchronous=NORMAL: a commit is a write to the log, not an
fsync), so a message a client has seen relayed is on disk before the next line is handled and survives a
restart of the server; only a power cut can lose the last moments, as in every WAL database set up so.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path

from socketkit.chat.core_history import HistoryEntry

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,
    msgid TEXT NOT NULL,
    time REAL NOT NULL,
    source TEXT NOT NULL,
    command TEXT NOT NULL,
    text TEXT NOT NULL,
    tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_target ON messages (target, id);
CREATE UNIQUE INDEX IF NOT EXISTS messages_msgid ON messages (msgid);
"""


class SQLiteHistory:
    """HistoryStore on one SQLite file; keeps at most `per_target` messages per channel."""

    def __init__(self, path: str | os.PathLike[str], per_target: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.per_target = per_target
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._appends = 0

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def append(self, target_folded: str, msgid: str, time: float, source: str, command: str, text: str,
               tags: dict[str, str] | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO messages (target, msgid, time, source, command, text, tags)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (target_folded, msgid, time, source, command, text, json.dumps(tags or {})),
            )
            self._appends += 1
            if self._appends % 1000 == 0:  # trim now and then, not on every message
                self._db.execute(
                    "DELETE FROM messages WHERE target = ? AND id <= "
                    "(SELECT id FROM messages WHERE target = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                    (target_folded, target_folded, self.per_target),
                )

    def _rows(self, sql: str, args: tuple[object, ...]) -> list[HistoryEntry]:
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [HistoryEntry(msgid=r[0], time=r[1], source=r[2], command=r[3], text=r[4], tags=json.loads(r[5]))
                for r in rows]

    def _ref_id(self, target: str, ref: str | float, after: bool) -> int | None:
        with self._lock:
            if isinstance(ref, str):
                row = self._db.execute("SELECT id FROM messages WHERE target = ? AND msgid = ?",
                                       (target, ref)).fetchone()
                return None if row is None else row[0]
            if after:
                row = self._db.execute("SELECT MAX(id) FROM messages WHERE target = ? AND time <= ?",
                                       (target, ref)).fetchone()
                return row[0] if row and row[0] is not None else 0
            row = self._db.execute("SELECT MIN(id) FROM messages WHERE target = ? AND time >= ?",
                                   (target, ref)).fetchone()
            return row[0] if row and row[0] is not None else 2**62

    _COLUMNS = "msgid, time, source, command, text, tags"

    def latest(self, target_folded: str, limit: int) -> list[HistoryEntry]:
        rows = self._rows(f"SELECT {self._COLUMNS} FROM messages WHERE target = ? ORDER BY id DESC LIMIT ?",
                          (target_folded, limit))
        return rows[::-1]

    def before(self, target_folded: str, ref: str | float, limit: int) -> list[HistoryEntry]:
        pivot = self._ref_id(target_folded, ref, after=False)
        if pivot is None:
            return []
        rows = self._rows(f"SELECT {self._COLUMNS} FROM messages WHERE target = ? AND id < ? "
                          "ORDER BY id DESC LIMIT ?", (target_folded, pivot, limit))
        return rows[::-1]

    def after(self, target_folded: str, ref: str | float, limit: int) -> list[HistoryEntry]:
        pivot = self._ref_id(target_folded, ref, after=True)
        if pivot is None:
            return []
        return self._rows(f"SELECT {self._COLUMNS} FROM messages WHERE target = ? AND id > ? "
                          "ORDER BY id LIMIT ?", (target_folded, pivot, limit))
