"""Group commit for Maildir delivery: one thread stores every queued message, many at a time.

Storing one message durably costs two waits on the disk (the file's data, then the directory entry in
new/). Paid per message, and from a pool of threads, that is most of a mail server's time: each fsync
is its own journal commit and every thread hand-off is a GIL hand-off. Here a single committer thread
takes whatever deliveries are queued (a *batch*) and runs the Maildir protocol for all of them at once:

1. write each message to `tmp/<unique>` (O_EXCL);
2. make the data durable: one `syncfs` of the file system when the batch holds several files (Linux
   >= 5.8, where syncfs reports write-back errors; `SOCKETKIT_MAIL_SYNCFS=0` turns it off), else an
   `fsync` per file;
3. rename each file into `new/` (names are unique: nothing is ever replaced);
4. `fsync` each `new/` directory the batch touched, once;

and only then answers the deliveries, all the ones of a batch on the same event loop in one call. While
a batch is on the disk the next one gathers in the queue, so the busier the server, the more messages
share each flush. A message appears in `new/` only in step 3, after its bytes are durable, so a crash
at any moment leaves either nothing or the whole message there.

A delivery (a `Job`) may carry several copies (one per recipient mailbox): they succeed or fail
together. When any step fails for a job, its files are removed again (from tmp/ or new/) and the job
gets the OSError; other jobs of the batch are untouched unless the failure covers them too (a failed
syncfs or directory fsync fails every job that relied on it). A later success never excuses an earlier
failure: the error is given to every job the failed flush was meant to cover.

The thread is started on first use, per process (a forked worker starts its own), and is a daemon: a
process that exits mid-batch answered nobody in that batch, which is the promise.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from socketkit.mail.maildir import Maildir

log = logging.getLogger("socketkit.mail")

MAX_BATCH_FILES = 128  # files written before one flush: bounds open descriptors and a batch's latency


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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

    def fail(self, error: OSError) -> None:
        """Take every file of this job back out (tmp/ or new/) and remember why."""
        if self.error is None:
            self.error = error
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
                pass
        self.files.clear()


class Committer:
    """The delivery thread of this process; `submit` is thread-safe and never blocks on the disk."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[Job] = collections.deque()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._fs_fds: dict[int, int] = {}  # st_dev -> a descriptor on that file system, for syncfs
        self.batches = 0  # counters, for tests and curiosity
        self.flushes = 0

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._thread is None or self._pid != os.getpid():
                self._start()
            self._queue.append(job)
            self._cond.notify()

    @property
    def pending(self) -> int:
        """Jobs queued and not yet taken by a batch."""
        with self._cond:
            return len(self._queue)

    def _start(self) -> None:
        # (In a forked child the parent's thread does not exist: start afresh, forget its descriptors.)
        self._pid = os.getpid()
        self._queue = collections.deque()
        self._fs_fds = {}
        self._thread = threading.Thread(target=self._run, name="maildir-commit", daemon=True)
        self._thread.start()

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
            try:
                self._commit(batch)
            except BaseException as exc:  # noqa: BLE001 - a bug here must not leave clients waiting forever
                log.exception("maildir committer: batch failed")
                error = exc if isinstance(exc, OSError) else OSError(f"delivery failed: {exc!r}")
                for job in batch:
                    job.fail(error)
            self._settle(batch)

    # -- the protocol, for a whole batch ------------------------------------------------------------
    def _commit(self, batch: list[Job]) -> None:
        self.batches += 1
        use_syncfs = _syncfs is not None and sum(len(job.copies) for job in batch) > 1
        devices: dict[int, list[Job]] = {}
        # 1. write every copy to tmp/
        for job in batch:
            for box, data in job.copies:
                if use_syncfs:  # the descriptor must predate the writes for syncfs to see their errors
                    self._fs_fd(box)
                    devices.setdefault(box.device, []).append(job)
                try:
                    name, fd = box._write_tmp(data)
                except OSError as exc:
                    job.fail(exc)
                    break
                job.files.append([box, name, fd, "tmp"])
        # 2. make the data durable
        if use_syncfs:
            for device, jobs in devices.items():
                if all(job.error is not None for job in jobs):
                    continue
                self.flushes += 1
                try:
                    _syncfs(self._fs_fds[device])  # type: ignore[misc]
                except OSError as exc:
                    shared = OSError(exc.errno, f"{exc.strerror or exc} (syncfs, shared by {len(jobs)} deliveries)")
                    for job in jobs:
                        job.fail(shared)
        else:
            for job in batch:
                for entry in job.files:
                    self.flushes += 1
                    try:
                        os.fsync(entry[2])
                    except OSError as exc:
                        job.fail(exc)
                        break
        for job in batch:
            for entry in job.files:
                fd, entry[2] = entry[2], None
                try:
                    os.close(fd)
                except OSError as exc:  # NFS and friends may report a write error only here
                    job.fail(exc)
                    break
        # 3. publish into new/
        dirs: dict[Path, list[Job]] = {}
        for job in batch:
            if job.error is not None:
                continue
            for entry in job.files:
                box, name = entry[0], entry[1]
                try:
                    os.rename(box.root / "tmp" / name, box.root / "new" / name)
                except OSError as exc:
                    job.fail(exc)
                    break
                entry[3] = "new"
                dirs.setdefault(box.root / "new", []).append(job)
        # 4. make the new names durable, once per directory
        for new_dir, jobs in dirs.items():
            self.flushes += 1
            try:
                _fsync_dir(new_dir)
            except OSError as exc:
                shared = OSError(exc.errno, f"{exc.strerror or exc} (fsync of {new_dir}, shared)")
                for job in jobs:
                    job.fail(shared)

    def _fs_fd(self, box: Maildir) -> int:
        fd = self._fs_fds.get(box.device)
        if fd is None:
            fd = os.open(box.root / "tmp", os.O_RDONLY | os.O_CLOEXEC | getattr(os, "O_DIRECTORY", 0))
            self._fs_fds[box.device] = fd
        return fd

    @staticmethod
    def _settle(batch: list[Job]) -> None:
        for job in batch:
            try:
                if job.error is not None:
                    job.settle(None, job.error)
                else:
                    job.settle([entry[1] for entry in job.files], None)
            except Exception:  # noqa: BLE001 - one broken waiter must not starve the others
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


_settlers: dict[asyncio.AbstractEventLoop, LoopSettler] = {}


def settler(loop: asyncio.AbstractEventLoop) -> LoopSettler:
    s = _settlers.get(loop)
    if s is None:
        if len(_settlers) > 64:  # loops of finished runs (tests): forget the closed ones
            for old in [k for k in _settlers if k.is_closed()]:
                del _settlers[old]
        s = _settlers[loop] = LoopSettler(loop)
    return s


def deliver_sync(copies: list[tuple[Maildir, bytes]], timeout: float | None = None) -> list[str]:
    """Store the copies through the committer and wait; for threads without an event loop."""
    done = threading.Event()
    outcome: list[Any] = []

    def settle(ids: list[str] | None, error: OSError | None) -> None:
        outcome.append((ids, error))
        done.set()

    _committer.submit(Job(copies, settle))
    if not done.wait(timeout):
        raise OSError("delivery did not finish in time")
    ids, error = outcome[0]
    if error is not None:
        raise error
    return ids
