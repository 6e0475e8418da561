"""StaticFiles' cache of open files, their metadata and small files' bytes, the way nginx's open_file_cache
keeps them: what a request for an unchanged file needs is looked up once per file version, not per request.

An entry holds one version of one file as a request path named it: the resolved path, the stat result,
validators, content type, the 200 response's header list prepared once (`PreparedHeaders`: checked and
formatted once, for this server and any other), and either the bytes (files up to `max_file` bytes, all
of them together bounded by `max_bytes`) or the open file for sendfile. Entries are keyed by the decoded
request path and valid only for the exact raw path and mount point that were checked when the entry was
made, so every refusal rule of StaticFiles still runs for any other spelling of the same name.

Changes on disk are noticed without a stat per request: an entry is checked again (the request path
resolved once more, then one stat of the file: device, inode, size, mtime, mode) when it is used and
`valid` seconds have passed since its last check, and dropped when anything differs. Within that window
the old version is served whole and consistently (its own bytes, or its own open file for a file replaced
by rename), as nginx does within open_file_cache_valid. A file changed less than a second ago is never
cached: its Last-Modified is not yet a strong validator, and a second change within the same second would
not show in its mtime.

All of it runs on the event loop's thread; only the first lookup of a file (in StaticFiles) goes to a
worker thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from socketkit.proto.http1_writer import PreparedHeaders

_monotonic = time.monotonic


def stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What says "the same file version": device, inode, size, mtime (ns) and mode."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode)


class Entry:
    """One file version as served for one request path (see the module docstring)."""

    __slots__ = ("path", "raw_path", "root_path", "joined", "real", "name", "st", "key", "file", "body",
                 "validators", "ctype", "headers", "checked", "users", "dead")

    def __init__(self) -> None:
        self.path = ""
        self.raw_path: Any = None
        self.root_path = ""
        self.joined = ""  # the path as joined from the request, resolved again when checked
        self.real = ""
        self.name = ""
        self.st: Any = None
        self.key: tuple[int, ...] = ()
        self.file: Any = None  # open file object (sendfile, pread), None when `body` holds the bytes
        self.body: bytes | None = None
        self.validators: Any = None
        self.ctype = ""
        self.headers: PreparedHeaders | None = None  # the whole-file 200 response's header list
        self.checked = 0.0
        self.users = 0  # requests sending from `file` right now: it is closed only once they are done
        self.dead = False  # dropped from the cache; close `file` when the last user is done

    def release(self) -> None:
        self.users -= 1
        if self.dead and self.users <= 0 and self.file is not None:
            self.file.close()


class FileCache:
    """Entries by request path, bounded in number and in bytes held; the oldest go first."""

    def __init__(self, *, entries: int = 512, max_bytes: int = 32 << 20, max_file: int = 256 << 10,
                 valid: float = 1.0, still_inside: Callable[[str], bool]) -> None:
        self.max_entries = entries
        self.max_bytes = max_bytes
        self.max_file = max_file
        self.valid = valid
        self.still_inside = still_inside  # StaticFiles' rule for a resolved path (symlinks policy)
        self.entries: dict[str, Entry] = {}
        self.bytes = 0
        self.hits = self.misses = self.stale = 0

    @property
    def enabled(self) -> bool:
        return self.max_entries > 0

    def get(self, path: str, raw_path: Any, root_path: str) -> Entry | None:
        """The entry for this exact request, checked against the disk if `valid` seconds have passed."""
        entry = self.entries.get(path)
        if entry is None or entry.raw_path != raw_path or entry.root_path != root_path:
            return None
        now = _monotonic()
        if now - entry.checked >= self.valid:
            if not self._unchanged(entry):
                self.stale += 1
                self.drop(entry)
                return None
            entry.checked = now
        self.hits += 1
        return entry

    def _unchanged(self, entry: Entry) -> bool:
        try:
            real = os.path.realpath(entry.joined)
            if real != entry.real or not self.still_inside(real):
                return False
            st = os.stat(real, follow_symlinks=False)
        except (OSError, ValueError):
            return False
        return stat_key(st) == entry.key

    def add(self, entry: Entry) -> bool:
        """Keep `entry` (made from a fresh lookup); False when it cannot be kept (the caller closes it)."""
        if not self.enabled:
            return False
        size = len(entry.body) if entry.body is not None else 0
        if size > self.max_bytes:
            return False
        old = self.entries.get(entry.path)
        if old is not None:
            self.drop(old)
        while self.entries and (len(self.entries) >= self.max_entries or self.bytes + size > self.max_bytes):
            self.drop(next(iter(self.entries.values())))
        entry.checked = _monotonic()
        self.entries[entry.path] = entry
        self.bytes += size
        return True

    def drop(self, entry: Entry) -> None:
        if self.entries.get(entry.path) is entry:
            del self.entries[entry.path]
            if entry.body is not None:
                self.bytes -= len(entry.body)
        entry.dead = True
        if entry.users <= 0 and entry.file is not None:
            entry.file.close()

    def clear(self) -> None:
        for entry in list(self.entries.values()):
            self.drop(entry)
