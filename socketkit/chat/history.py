"""Channel history in SQLite (WAL), the HistoryStore the chat core writes every channel message to.

Writes are batched off the hot path: `append` only queues a row (no I/O), and a writer
thread commits whatever is queued in one transaction, BATCH_DELAY after the first row arrived (so at
most 20 commits a second, however busy), with one multi-row INSERT per 140 rows (the sqlite3 module
lets go of the GIL around each statement it steps: per-row statements would hand the GIL back and
forth with the event loop's thread for every row). WAL with synchronous=NORMAL: a commit is a write
to the log, not an fsync. A read (replay on JOIN, CHATHISTORY) first commits what is queued, so it
always sees every message appended before it; `close()` commits the rest. A crash of the process
loses at most the last batch (about 50 ms of messages), a power cut what the WAL had not synced.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time as _time
from collections import deque
from itertools import chain
from pathlib import Path

from socketkit.chat.core_history import HistoryEntry

log = logging.getLogger("socketkit.chat")

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
_INSERT_HEAD = "INSERT OR IGNORE INTO messages (target, msgid, time, source, command, text, tags) VALUES "
_ROW = "(?, ?, ?, ?, ?, ?, ?)"
_ROWS_PER_INSERT = 140  # 980 parameters: under SQLite's limit even before 3.32 (999)
BATCH_DELAY = 0.05     # seconds the writer waits after the first queued row, for more to share the commit
_MAX_QUEUED = 100_000  # rows waiting for the writer; past it append() writes a batch itself


class SQLiteHistory:
    """HistoryStore on one SQLite file; keeps at most `per_target` messages per channel."""

    def __init__(self, path: str | os.PathLike[str], per_target: int = 10_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self.per_target = per_target
        self._lock = threading.Lock()          # the connection
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._appends = 0
        # Appended, not yet committed: the loop's thread appends, whoever commits pops (both atomic).
        self._queued: deque[tuple[object, ...]] = deque()
        self._wake = threading.Event()
        self._closed = False
        self._writer = threading.Thread(target=self._write_forever, name="chat history writer", daemon=True)
        self._writer.start()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer.is_alive():
            self._writer.join(10)
        with self._lock:
            self._commit_queued()
            self._db.close()

    def flush(self) -> None:
        """Commit what is queued now (reads do it by themselves)."""
        with self._lock:
            self._commit_queued()

    def append(self, target_folded: str, msgid: str, time: float, source: str, command: str, text: str,
               tags: dict[str, str] | None = None) -> None:
        queued = self._queued
        queued.append((target_folded, msgid, time, source, command, text, json.dumps(tags) if tags else "{}"))
        n = len(queued)
        if n == 1:  # the writer empties the queue before it waits again: only the first row wakes it
            self._wake.set()
        elif n > _MAX_QUEUED:  # the disk cannot keep up: slow the loop down rather than grow
            with self._lock:
                self._commit_queued()

    def _write_forever(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            # A moment for more rows to arrive: at most 1/BATCH_DELAY commits a second, however busy.
            _time.sleep(BATCH_DELAY)
            while self._queued and not self._closed:
                try:
                    with self._lock:
                        self._commit_queued()
                except Exception:  # noqa: BLE001 - a full disk must not end the writer; the rows are lost
                    log.exception("chat history: could not store messages")

    def _commit_queued(self) -> None:
        """Write every queued row in one transaction (the caller holds the lock)."""
        queued = self._queued
        if not queued:
            return
        pop = queued.popleft
        data = [pop() for _ in range(len(queued))]  # rows as they are stored: nothing left to encode
        db = self._db
        db.execute("BEGIN")
        try:
            # One multi-row INSERT per chunk, not executemany: the sqlite3 module lets go of the GIL around
            # every statement it steps, and the event loop's thread would hand it back and forth with this
            # one for every row (a 5 ms switch interval each time the loop is busy).
            for i in range(0, len(data), _ROWS_PER_INSERT):
                chunk = data[i:i + _ROWS_PER_INSERT]
                db.execute(_INSERT_HEAD + ",".join([_ROW] * len(chunk)), list(chain.from_iterable(chunk)))
            before = self._appends
            self._appends += len(data)
            if self._appends // 1000 != before // 1000:  # trim now and then, not on every message
                for target in {row[0] for row in data}:
                    db.execute(
                        "DELETE FROM messages WHERE target = ? AND id <= "
                        "(SELECT id FROM messages WHERE target = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
                        (target, target, self.per_target),
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _rows(self, sql: str, args: tuple[object, ...]) -> list[HistoryEntry]:
        with self._lock:
            self._commit_queued()
            rows = self._db.execute(sql, args).fetchall()
        return [HistoryEntry(msgid=r[0], time=r[1], source=r[2], command=r[3], text=r[4], tags=json.loads(r[5]))
                for r in rows]

    def _ref_id(self, target: str, ref: str | float, after: bool) -> int | None:
        with self._lock:
            self._commit_queued()
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
