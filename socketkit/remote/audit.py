"""The remote server's audit log: one JSON object per line, UTC timestamps, appended and written before the
action it describes starts (a command that hangs or kills the server is on record already).

    audit = AuditLog(path)                 # opened once: a server that drops privileges keeps writing
    audit.write("exec", conn="c1f3", command="make test")
    audit.tail(20)                         # the last records, oldest first (dicts), for a status page
    audit.events                           # records written by this process

Nothing secret goes in: key fingerprints and certificate ids, never key material; environment variable
names at most, never their values.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

from socketkit.dashboard.events import emit

log = logging.getLogger("socketkit.remote")

_TAIL_CHUNK = 64 * 1024


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditLog:
    """Append-only JSON-lines writer. Each record is one os.write() on an O_APPEND descriptor: no buffer to
    flush, whole lines even with several writers on the same file."""

    def __init__(self, path: str | os.PathLike[str], service: str = "remote") -> None:
        self.path = Path(path)
        self.service = service
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        self._lock = threading.Lock()
        self.events = 0
        self.failures = 0

    def write(self, event: str, **fields: Any) -> dict[str, Any]:
        record = {"ts": _now(), "event": event}
        record.update((k, v) for k, v in fields.items() if v is not None)
        line = (json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode(
            "utf-8", "backslashreplace")
        with self._lock:
            if self._fd is None:
                return record
            try:
                os.write(self._fd, line)
            except OSError as e:  # a full disk must not take the server down; it is said loudly instead
                self.failures += 1
                log.error("audit log %s: cannot write (%s); record: %s", self.path, e.strerror or e, line[:500])
            else:
                self.events += 1
        # ...and into the dashboard's event stream (a bounded deque; nothing secret is in a record anyway)
        fields_out = {k: v for k, v in record.items() if k not in ("ts", "event", "service")}
        emit(event, service=str(record.get("service") or self.service), **fields_out)
        return record

    def tail(self, n: int = 20) -> list[dict[str, Any]]:
        """The last `n` records in the file (oldest first); lines that are not JSON objects are skipped."""
        if n <= 0:
            return []
        try:
            with open(self.path, "rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                data = b""
                while end > 0 and data.count(b"\n") <= n:
                    start = max(0, end - _TAIL_CHUNK)
                    f.seek(start)
                    data = f.read(end - start) + data
                    end = start
        except OSError:
            return []
        out: list[dict[str, Any]] = []
        for line in data.splitlines()[-(n + 1):]:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
        return out[-n:]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


__all__ = ["AuditLog"]
