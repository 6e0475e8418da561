"""Maildir storage that never loses an acknowledged message and never shows a torn one.

The Maildir protocol (cr.yp.to/proto/maildir.html), made durable:

1. write the message to `tmp/<unique>` (O_EXCL: never reuse a name), `fsync` the file;
2. rename it to `new/<unique>` (atomic; names are unique, so nothing is ever replaced -- the original
   Maildir text links and unlinks, which costs one more inode operation for the same guarantee here);
3. `fsync` the `new/` directory, so the new name itself survives a power cut;

and only then return. A file appears in `new/` only through step 2, which happens after its bytes are on
disk: a crash at any moment leaves either nothing or the complete message in `new/`. The SMTP server
answers 250 only after `deliver` returned, so every acknowledged message is in `new/`.

Step 3 is a group commit: one `fsync` of `new/` makes durable every rename into it made before it began, so
concurrent deliveries share it. A delivery that has renamed waits for the next `fsync` of `new/` that
*starts* after its rename (one runs at a time; the first waiter to find none running runs it for all), and
returns only when that one succeeded; when it fails, every delivery it was meant to cover fails too and
takes its file out of `new/` again. Step 1 can be grouped the same way on Linux >= 5.8, opt-in with
SOCKETKIT_MAIL_SYNCFS=1: a delivery alone fsyncs its own file; several written files waiting together
share one `syncfs` of the file system (which also flushes other programs' data; it did not raise
bench/mail.py's throughput here, hence off by default).

`tmp/` is not fsynced: its entries are garbage by definition after a crash. Leftovers are removed by
the Maildir rule (older than 36 hours) each time a `Maildir` is opened, which is safe while other
processes deliver to the same directory; `recover()` removes them all, for when no other process can be
in the middle of a delivery (an operator's clean-up, a single-process server's own start).

Message ids are the file names in `new/` (in `cur/`, the part before the ":2,flags" suffix).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import functools
import itertools
import logging
import os
import secrets
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger("socketkit.mail")

TMP_MAX_AGE = 36 * 3600  # seconds: the Maildir convention for abandoned tmp/ files
_counter = itertools.count()
_counter_lock = threading.Lock()


def _safe_hostname() -> str:
    # The Maildir spec: '/' and ':' cannot appear in a name part; encode them as octal escapes.
    name = socket.gethostname() or "localhost"
    return name.replace("/", r"\057").replace(":", r"\072")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _GroupSync:
    """A durability barrier shared by concurrent threads (group commit).

    `sync(alone)` returns once a flush that *began after the call* has succeeded: `flush_all()` covers
    every change any thread made before it began; when the caller is the only thread waiting for that
    flush, its own cheaper `alone()` is enough (it only has to cover the caller). Flushes run one at a
    time; the first waiter that finds none running runs the next one for everybody waiting.

    When the flush meant for a waiter fails, the waiter raises OSError, even if a later flush worked: a
    later success would not prove the earlier changes reached the disk (after a write-back error Linux
    may drop the dirty pages and report the error only once).
    """

    def __init__(self, flush_all: Callable[[], None], what: str) -> None:
        self._flush_all = flush_all
        self._what = what
        self._cond = threading.Condition(threading.Lock())
        self._started = 0  # flushes begun; one at a time, so they also end in this order
        self._finished = 0  # sequence number of the last one that ended
        self._failed = 0  # ... and of the last one that failed
        self._error: BaseException | None = None
        self._running = False
        self._waiting: dict[int, int] = {}  # flush sequence number -> threads waiting for it

    def sync(self, alone: Callable[[], None]) -> None:
        cond = self._cond
        with cond:
            # A flush running now may have begun before the caller's change: only the next one covers it.
            need = self._started + 1
            self._waiting[need] = self._waiting.get(need, 0) + 1
            while self._finished < need:
                if self._running:
                    cond.wait()
                    continue
                self._running = True
                self._started = seq = self._started + 1
                flush = alone if self._waiting.pop(seq, 0) <= 1 else self._flush_all
                error: BaseException | None = None
                cond.release()
                try:
                    flush()
                except BaseException as exc:  # handed to every waiter of this flush, raised below
                    error = exc
                finally:
                    cond.acquire()
                    self._running = False
                    self._finished = seq
                    if error is not None:
                        self._failed, self._error = seq, error
                    cond.notify_all()
            if self._failed >= need:  # conservative: the flush meant for us, or a later one, failed
                error = self._error
                if isinstance(error, OSError):
                    raise OSError(error.errno, f"{error.strerror or error} ({self._what}, shared)") from error
                raise OSError(f"{self._what} failed: {error!r}") from error


def _syncfs_function() -> Callable[[int], None] | None:
    """syncfs(2) where it reports write-back errors (Linux >= 5.8, which added the per-file-system
    error sequence it checks); None elsewhere, and every file is then fsynced on its own.

    Opt-in (SOCKETKIT_MAIL_SYNCFS=1): syncfs flushes the whole file system, so on a host where other
    programs write a lot it can make deliveries wait for their data; on bench/mail.py here it did not
    measurably help. The shared directory fsync is always on."""
    if os.environ.get("SOCKETKIT_MAIL_SYNCFS") != "1" or not sys.platform.startswith("linux"):
        return None
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        func = libc.syncfs
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int]
    func.restype = ctypes.c_int

    def syncfs(fd: int) -> None:
        if func(fd) != 0:  # ctypes drops the GIL around the call
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    return syncfs


_syncfs = _syncfs_function()


_executor: concurrent.futures.ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()
POOL_THREADS = 32  # shared by every store in the process; a store's own `concurrency` bounds its share


def _delivery_executor() -> concurrent.futures.ThreadPoolExecutor:
    # Not the loop's default executor: that one has min(32, cpus + 4) threads (6 on two cores), fewer than
    # the deliveries that can usefully wait on the disk at once, and shared with everything else.
    global _executor
    if _executor is None:
        with _executor_lock:
            if _executor is None:
                _executor = concurrent.futures.ThreadPoolExecutor(POOL_THREADS, thread_name_prefix="maildir")
    return _executor


def _check_id(message_id: str) -> str:
    if not message_id or "/" in message_id or "\0" in message_id or message_id.startswith("."):
        raise KeyError(message_id)
    return message_id


class Maildir:
    """One mailbox: `root/{tmp,new,cur}` (mode 0700), created if missing.

    `on_delivery` callbacks receive the new message's id: from `deliver()` in the calling thread,
    from `deliver_async()` on the event loop (so an inbox in the same process can show it live).
    """

    def __init__(self, root: str | os.PathLike[str], *, clean_tmp: bool = True) -> None:
        self.root = Path(root)
        self.on_delivery: list[Callable[[str], None]] = []
        created = not (self.root / "new").is_dir()
        for sub in ("", "tmp", "new", "cur"):
            (self.root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        if created:
            # The directories themselves must survive a crash before a message is put in them.
            _fsync_dir(self.root)
            _fsync_dir(self.root.parent)
        self._host = _safe_hostname()
        new_dir = self.root / "new"
        self._new_sync = _GroupSync(lambda: _fsync_dir(new_dir), f"fsync of {new_dir}")
        self._data_sync: _GroupSync | None = None
        if _syncfs is not None:
            # syncfs reports a write-back error to each descriptor that was open when it happened:
            # this one is opened before any message is written, so no error can slip past it.
            fs_fd = os.open(self.root / "tmp", os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
            weakref.finalize(self, os.close, fs_fd)
            syncfs = _syncfs
            self._data_sync = _GroupSync(lambda: syncfs(fs_fd), f"syncfs of the file system of {self.root}")
        if clean_tmp:
            self.clean_tmp(TMP_MAX_AGE)

    def __repr__(self) -> str:
        return f"<Maildir {self.root}>"

    # -- delivery ---------------------------------------------------------------------------------
    def _unique(self) -> str:
        now = time.time_ns()
        with _counter_lock:
            n = next(_counter)
        sec, usec = divmod(now // 1000, 1_000_000)
        return f"{sec}.M{usec}P{os.getpid()}Q{n}R{secrets.token_hex(4)}.{self._host}"

    def _store(self, data: bytes) -> str:
        """Steps 1-3 of the protocol; returns the id. Raises OSError with nothing left in new/."""
        tmp_dir, new_dir = self.root / "tmp", self.root / "new"
        for _attempt in range(5):
            name = self._unique()
            tmp = tmp_dir / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            moved = False
            try:
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                    if self._data_sync is None:
                        os.fsync(fd)
                    else:  # alone: fsync this file; with company: one syncfs for all of them
                        self._data_sync.sync(functools.partial(os.fsync, fd))
                finally:
                    os.close(fd)
                new = new_dir / name
                # rename, not link + unlink: as atomic (the name appears with the whole file behind
                # it), one inode operation instead of two. Names are unique (time, pid, counter,
                # random), so nothing in new/ can be replaced.
                os.rename(tmp, new)
                moved = True
                try:
                    self._new_sync.sync(lambda: _fsync_dir(new_dir))
                except BaseException:
                    new.unlink(missing_ok=True)  # not known to be durable: do not claim it
                    raise
                return name
            finally:
                if not moved:
                    tmp.unlink(missing_ok=True)
        raise OSError(f"could not find a free message name in {tmp_dir}")

    def deliver(self, data: bytes) -> str:
        """Store `data` durably in new/ and return its id; OSError if it could not be stored."""
        message_id = self._store(data)
        self._notify(message_id)
        return message_id

    async def deliver_async(self, data: bytes, limiter: asyncio.Semaphore | None = None) -> str:
        """`deliver` in a worker thread (fsync never blocks the event loop); hooks run on the loop.

        The whole write-fsync-rename-fsync runs in one call on the delivery thread pool: one hop per message.
        """
        loop = asyncio.get_running_loop()
        if limiter is None:
            message_id = await loop.run_in_executor(_delivery_executor(), self._store, data)
        else:
            async with limiter:
                message_id = await loop.run_in_executor(_delivery_executor(), self._store, data)
        self._notify(message_id)
        return message_id

    def _notify(self, message_id: str) -> None:
        for hook in list(self.on_delivery):
            try:
                hook(message_id)
            except Exception:  # a broken viewer must not turn a stored message into an error
                log.exception("maildir %s: on_delivery hook failed", self.root)

    # -- reading ----------------------------------------------------------------------------------
    def list(self) -> list[str]:
        """Ids of the messages in new/ and cur/, oldest first (names start with the time)."""
        ids = []
        for sub in ("new", "cur"):
            try:
                names = os.listdir(self.root / sub)
            except FileNotFoundError:
                continue
            ids.extend(n.split(":", 1)[0] for n in names if not n.startswith("."))
        return sorted(ids, key=_sort_key)

    def path(self, message_id: str) -> Path:
        """Where the message is now (new/ or cur/); KeyError if it is not there."""
        _check_id(message_id)
        new = self.root / "new" / message_id
        if new.exists():
            return new
        cur = self.root / "cur"
        try:
            for name in os.listdir(cur):
                if name == message_id or name.startswith(message_id + ":"):
                    return cur / name
        except FileNotFoundError:
            pass
        raise KeyError(message_id)

    def get(self, message_id: str) -> bytes:
        try:
            return self.path(message_id).read_bytes()
        except FileNotFoundError:  # deleted between path() and the read
            raise KeyError(message_id) from None

    def delete(self, message_id: str) -> None:
        try:
            self.path(message_id).unlink()
        except FileNotFoundError:
            raise KeyError(message_id) from None

    def __len__(self) -> int:
        return len(self.list())

    def __contains__(self, message_id: object) -> bool:
        try:
            self.path(str(message_id))
        except KeyError:
            return False
        return True

    # -- tmp/ clean-up ------------------------------------------------------------------------------
    def clean_tmp(self, max_age: float = TMP_MAX_AGE) -> int:
        """Remove tmp/ files older than `max_age` seconds; returns how many went."""
        now = time.time()
        removed = 0
        tmp = self.root / "tmp"
        for entry in os.scandir(tmp):
            try:
                if entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= max_age:
                    os.unlink(entry.path)
                    removed += 1
            except FileNotFoundError:
                pass
        return removed

    def recover(self) -> int:
        """Remove every tmp/ file: leftovers of deliveries a crash interrupted (never acknowledged).

        Only call it when no other process can be delivering into this Maildir right now.
        """
        return self.clean_tmp(max_age=-1)


def _sort_key(message_id: str) -> tuple[int, int, str]:
    sec, _, rest = message_id.partition(".")
    usec = rest[1:].split("P", 1)[0] if rest.startswith("M") else "0"
    return (int(sec) if sec.isdigit() else 0, int(usec) if usec.isdigit() else 0, message_id)


def mailbox_name(address: str) -> str:
    """The directory name for a recipient: 'local@domain' lower-cased, with anything that could climb
    out of the mail directory or confuse a shell (/, NUL, a leading dot, controls) %-escaped."""
    text = address.lower()
    out = []
    for i, ch in enumerate(text):
        if ch.isalnum() or ch in "@+-_=" or (ch == "." and i > 0):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode())
    return "".join(out) or "%00"


class MailStore:
    """Where accepted mail goes: one Maildir per recipient under `root/<local@domain>/`, or everything in
    the one Maildir at `root` (`catch_all`). Delivery runs in threads, at most `concurrency` at a time."""

    def __init__(self, root: str | os.PathLike[str], *, catch_all: bool = False, concurrency: int = 16) -> None:
        self.root = Path(root)
        self.catch_all = catch_all
        self.concurrency = concurrency
        # (mailbox name, message id) for every delivery, on the event loop: the inbox's live feed.
        self.on_delivery: list[Callable[[str, str], None]] = []
        self._boxes: dict[str, Maildir] = {}
        self._limiter: asyncio.Semaphore | None = None
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if catch_all:
            self._boxes[""] = Maildir(self.root)

    def mailbox(self, address: str = "") -> Maildir:
        """The Maildir for a recipient address (the catch-all one in catch-all mode)."""
        key = "" if self.catch_all else mailbox_name(address)
        box = self._boxes.get(key)
        if box is None:
            box = self._boxes[key] = Maildir(self.root / key)
        return box

    def mailboxes(self) -> dict[str, Maildir]:
        """Every mailbox on disk by name ("" for the catch-all)."""
        if self.catch_all:
            return {"": self.mailbox()}
        for entry in sorted(os.listdir(self.root)):
            if entry not in self._boxes and (self.root / entry / "new").is_dir():
                self._boxes[entry] = Maildir(self.root / entry, clean_tmp=False)
        return dict(sorted(self._boxes.items()))

    def recover(self) -> int:
        return sum(box.recover() for box in self.mailboxes().values())

    async def deliver(self, copies: Iterable[tuple[str, bytes]]) -> list[tuple[str, str]]:
        """Store each (recipient, data) copy; all or nothing: if one fails, those already stored are
        removed again and the OSError propagates (the client gets a 4xx and retries the whole message).
        Returns [(mailbox name, message id)]."""
        if self._limiter is None:
            self._limiter = asyncio.Semaphore(self.concurrency)
        done: list[tuple[Maildir, str]] = []
        try:
            for address, data in copies:
                box = self.mailbox(address)
                done.append((box, await box.deliver_async(data, self._limiter)))
        except BaseException:
            for box, message_id in done:
                try:
                    box.delete(message_id)
                except (KeyError, OSError):
                    pass
            raise
        result = [(box.root.name if not self.catch_all else "", mid) for box, mid in done]
        for name, message_id in result:
            for hook in list(self.on_delivery):
                try:
                    hook(name, message_id)
                except Exception:
                    log.exception("mail store: on_delivery hook failed")
        return result
