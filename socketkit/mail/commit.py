"""Group commit for Maildir delivery: one thread stores every queued message, many at a time.

Storing one message durably costs two waits on the disk (the file's data, then the directory entry in
new/). Paid per message, and from a pool of threads, that is most of a mail server's time: each fsync
is its own journal commit and every thread hand-off is a GIL hand-off. Here a single committer thread
takes whatever deliveries are queued (a *batch*) and runs the Maildir protocol for all of them at once:

1. write each message to `tmp/<unique>` (O_EXCL);
2. make the data durable: one `syncfs` per file system when the batch holds several files there (Linux
   >= 5.8, where syncfs reports write-back errors, and only on file systems known to flush everything
   on syncfs: ext2/3/4, xfs, btrfs, tmpfs; `SOCKETKIT_MAIL_SYNCFS=0` turns it off), else an `fsync`
   per file;
3. rename each file into `new/` (names are unique: nothing is ever replaced), with a descriptor on
   `new/` opened before the first rename into it;
4. `fsync` each `new/` directory the batch touched, once, through that descriptor;

and only then answers the deliveries, all the ones of a batch on the same event loop in one call. While
a batch is on the disk the next one gathers in the queue, so the busier the server, the more messages
share each flush. A message appears in `new/` only in step 3, after its bytes are durable, so a crash
at any moment leaves either nothing or the whole message there.

A delivery (a `Job`) may carry several copies (one per recipient mailbox): they succeed or fail
together. When any step fails for a job, its files are removed again (from tmp/ or new/) and the job
gets the OSError; other jobs of the batch are untouched unless the failure covers them too (a failed
syncfs or directory fsync fails every job that relied on it). A later success never excuses an earlier
failure: the error is given to every job the failed flush was meant to cover.

A delivery whose waiter is cancelled (the client went away, the server stops) may still be stored: it
was never acknowledged, so at worst the sender retries and the mailbox gets the message twice, as SMTP
accepts. Files taken back out of `new/` after a failure are unlinked and `new/` is fsynced again, best
effort: if that fails too, a crash may bring such a copy back (a duplicate, never a torn message).

The thread is started on first use, per process (a forked worker starts its own, with fresh locks), is
restarted if it ever died, and is a daemon: a process that exits mid-batch answered nobody in that
batch, which is the promise. It serves every file system of the process: a hung mount (NFS) stalls all
deliveries, not only its own.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import sys
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from socketkit.mail.maildir import Maildir

log = logging.getLogger("socketkit.mail")

MAX_BATCH_FILES = 128  # files written before one flush: bounds open descriptors and a batch's latency


def _open_dir(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))


def _fsync_dir(fd: int, path: Path) -> None:
    """fsync a directory through a descriptor opened before the changes it must cover (a write-back
    error is reported to descriptors open when it happened)."""
    os.fsync(fd)


def fsync_dir(path: Path) -> None:
    fd = _open_dir(path)
    try:
        _fsync_dir(fd, path)
    finally:
        os.close(fd)


# statfs f_type names (from /proc/self/mountinfo) whose syncfs writes back and flushes every file:
# FUSE may ignore syncfs, and overlayfs keeps write-back errors on the upper file system.
SYNCFS_TYPES = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs"})
_fs_types: dict[int, str] = {}


def _fs_type(dev: int) -> str:
    """The file system type of device `dev` ("" if unknown), from /proc/self/mountinfo, cached."""
    kind = _fs_types.get(dev)
    if kind is None:
        kind = ""
        want = f"{os.major(dev)}:{os.minor(dev)}"
        try:
            with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[2] == want and " - " in line:
                        kind = line.split(" - ", 1)[1].split()[0]
                        break
        except OSError:
            pass
        _fs_types[dev] = kind
    return kind


def _syncfs_function() -> Callable[[int], None] | None:
    """syncfs(2) where it reports write-back errors (Linux >= 5.8, which added the per-file-system error
    sequence it checks); None elsewhere (or with SOCKETKIT_MAIL_SYNCFS=0), and every file is then
    fsynced on its own. syncfs flushes the whole file system, other programs' dirty data included: on a
    host where they write a lot, a batch may wait for their data too (correct, only slower)."""
    if os.environ.get("SOCKETKIT_MAIL_SYNCFS") == "0" or not sys.platform.startswith("linux"):
        return None
    try:
        major, minor = (int(x) for x in os.uname().release.split(".")[:2])
    except ValueError:
        return None
    if (major, minor) < (5, 8):
        return None
    try:
        func = ctypes.CDLL(None, use_errno=True).syncfs
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


class Job:
    """One delivery: copies that are stored together or not at all.

    `settle(ids, error)` is called once, from the committer thread, with the message ids (one per copy,
    in order) or the OSError that stopped it. Files of a copy: [maildir, name, fd or None, state] where
    state is "tmp" or "new"."""

    __slots__ = ("copies", "settle", "files", "error")

    def __init__(self, copies: list[tuple[Maildir, bytes]], settle: Callable[[list[str] | None, OSError | None], Any]):
        self.copies = copies
        self.settle = settle
        self.files: list[list[Any]] = []
        self.error: OSError | None = None

    def fail(self, error: OSError) -> set[Path]:
        """Take every file of this job back out (tmp/ or new/) and remember why; returns the new/
        directories it took files out of (to be fsynced again, best effort: see the module docstring)."""
        if self.error is None:
            self.error = error
        unpublished: set[Path] = set()
        for entry in self.files:
            box, name, fd, state = entry
            if fd is not None:
                entry[2] = None
                try:
                    os.close(fd)
                except OSError:
                    pass
            try:
                os.unlink(box.root / state / name)
            except OSError:
                continue
            if state == "new":
                unpublished.add(box.root / "new")
        self.files.clear()
        return unpublished


def _shared(exc: OSError, what: str) -> Callable[[], OSError]:
    """A maker of OSErrors for every job one failed flush covered (one exception object each)."""
    return lambda: OSError(exc.errno, f"{exc.strerror or exc} ({what}, shared)")


class Committer:
    """The delivery thread of this process; `submit` is thread-safe and never blocks on the disk."""

    def __init__(self) -> None:
        self._reset()
        self.batches = 0  # counters, for tests and curiosity
        self.flushes = 0

    def _reset(self) -> None:
        # Also the fork handler: a child has no committer thread, and a lock the parent's threads held
        # at the fork would stay held forever.
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Job] = collections.deque()
        self._thread: threading.Thread | None = None

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="maildir-commit", daemon=True)
                self._thread.start()
            self._queue.append(job)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken by a batch."""
        with self._cond:
            return len(self._queue)

    def _take(self) -> list[Job]:
        with self._cond:
            while not self._queue:
                self._cond.wait()
            batch: list[Job] = []
            files = 0
            queue = self._queue
            while queue and (not batch or files + len(queue[0].copies) <= MAX_BATCH_FILES):
                job = queue.popleft()
                files += len(job.copies)
                batch.append(job)
            return batch

    def _run(self) -> None:
        while True:
            batch = self._take()
            self._commit(batch)
            self._settle(batch)

    # -- the protocol, for a whole batch ------------------------------------------------------------
    def _fail(self, job: Job, error: OSError) -> None:
        self._unpublished |= job.fail(error)

    def _commit(self, batch: list[Job]) -> None:
        self.batches += 1
        self._unpublished: set[Path] = set()
        try:
            self._commit_steps(batch)
        except BaseException as exc:  # noqa: BLE001 - a bug here must not leave clients waiting forever
            log.exception("maildir committer: batch failed")
            error = exc if isinstance(exc, OSError) else OSError(f"delivery failed: {exc!r}")
            for job in batch:
                self._fail(job, error)
        finally:
            for new_dir in self._unpublished:  # files were taken out of it again: make that stick
                try:
                    fsync_dir(new_dir)
                except OSError:
                    pass

    def _commit_steps(self, batch: list[Job]) -> None:
        # 1. write every copy to tmp/
        for job in batch:
            for box, data in job.copies:
                try:
                    name, fd = box._write_tmp(data)
                except OSError as exc:
                    self._fail(job, exc)
                    break
                job.files.append([box, name, fd, "tmp"])
        # 2. make the data durable. Grouped by the device each file really is on (fstat of its own
        # descriptor: a mailbox path may lead elsewhere than it did when the Maildir was opened).
        devices: dict[int, list[tuple[Job, int]]] = {}
        for job in batch:
            for entry in job.files:
                try:
                    dev = os.fstat(entry[2]).st_dev
                except OSError as exc:
                    self._fail(job, exc)
                    break
                devices.setdefault(dev, []).append((job, entry[2]))
        for dev, files in devices.items():
            live = [(job, fd) for job, fd in files if job.error is None]
            if len(live) > 1 and _syncfs is not None and _fs_type(dev) in SYNCFS_TYPES:
                # The first file of the batch on this device was opened before any of the batch's
                # writes there, so syncfs through it reports a write-back error of any of them.
                self.flushes += 1
                try:
                    _syncfs(live[0][1])
                except OSError as exc:
                    error = _shared(exc, f"syncfs, {len({id(j) for j, _ in live})} deliveries")
                    for job, _fd in live:
                        self._fail(job, error())
                continue
            for job, fd in live:
                if job.error is not None:
                    continue
                self.flushes += 1
                try:
                    os.fsync(fd)
                except OSError as exc:
                    self._fail(job, exc)
        for job in batch:
            for entry in job.files:
                fd, entry[2] = entry[2], None
                try:
                    os.close(fd)
                except OSError as exc:  # NFS and friends may report a write error only here
                    self._fail(job, exc)
                    break
        # 3. publish into new/, each directory opened before the first rename into it
        dirs: dict[Path, tuple[int, list[Job]]] = {}
        try:
            for job in batch:
                if job.error is not None:
                    continue
                for entry in job.files:
                    box, name = entry[0], entry[1]
                    new_dir = box.root / "new"
                    try:
                        if new_dir not in dirs:
                            dirs[new_dir] = (_open_dir(new_dir), [])
                        os.rename(box.root / "tmp" / name, new_dir / name)
                    except OSError as exc:
                        self._fail(job, exc)
                        break
                    entry[3] = "new"
                    dirs[new_dir][1].append(job)
            # 4. make the new names durable, once per directory
            for new_dir, (fd, jobs) in dirs.items():
                self.flushes += 1
                try:
                    _fsync_dir(fd, new_dir)
                except OSError as exc:
                    error = _shared(exc, f"fsync of {new_dir}")
                    for job in jobs:
                        self._fail(job, error())
        finally:
            for fd, _jobs in dirs.values():
                os.close(fd)

    @staticmethod
    def _settle(batch: list[Job]) -> None:
        for job in batch:
            try:
                if job.error is not None:
                    job.settle(None, job.error)
                else:
                    job.settle([entry[1] for entry in job.files], None)
            except BaseException:  # noqa: BLE001 - one broken waiter must not starve the others
                log.exception("maildir committer: could not answer a delivery")


_committer = Committer()


def committer() -> Committer:
    return _committer


class LoopSettler:
    """Answers asyncio futures for jobs from the committer thread: one `call_soon_threadsafe` per batch
    and loop, however many deliveries the batch held."""

    __slots__ = ("loop", "_lock", "_ready", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._ready: list[tuple[asyncio.Future[list[str]], list[str] | None, OSError | None]] = []
        self._scheduled = False

    def job(self, copies: list[tuple[Maildir, bytes]]) -> tuple[Job, asyncio.Future[list[str]]]:
        fut: asyncio.Future[list[str]] = self.loop.create_future()

        def settle(ids: list[str] | None, error: OSError | None) -> None:
            with self._lock:
                self._ready.append((fut, ids, error))
                if self._scheduled:
                    return
                self._scheduled = True
            try:
                self.loop.call_soon_threadsafe(self._deliver)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        return Job(copies, settle), fut

    def _deliver(self) -> None:
        with self._lock:
            ready, self._ready = self._ready, []
            self._scheduled = False
        for fut, ids, error in ready:
            if fut.done():
                continue  # the waiter was cancelled; the message may still be stored (never acknowledged)
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(ids)  # type: ignore[arg-type]


_settlers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopSettler] = weakref.WeakKeyDictionary()
_settlers_lock = threading.Lock()


def settler(loop: asyncio.AbstractEventLoop) -> LoopSettler:
    with _settlers_lock:
        s = _settlers.get(loop)
        if s is None:
            s = _settlers[loop] = LoopSettler(loop)
        return s


def deliver_sync(copies: list[tuple[Maildir, bytes]]) -> list[str]:
    """Store the copies through the committer and wait; for threads without an event loop. (No
    timeout: the committer answers every job, and a job given up on could still be stored.)"""
    done = threading.Event()
    outcome: list[Any] = []

    def settle(ids: list[str] | None, error: OSError | None) -> None:
        outcome.append((ids, error))
        done.set()

    _committer.submit(Job(copies, settle))
    done.wait()
    ids, error = outcome[0]
    if error is not None:
        raise error
    return ids


def _after_fork_in_child() -> None:
    global _settlers_lock
    _committer._reset()
    _settlers_lock = threading.Lock()
    _settlers.clear()  # the parent's loops, and their locks


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
