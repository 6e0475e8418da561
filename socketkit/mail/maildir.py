"""Maildir storage that never loses an acknowledged message and never shows a torn one.

The Maildir protocol (cr.yp.to/proto/maildir.html), made durable:

1. write the message to `tmp/<unique>` (O_EXCL: never reuse a name) and make its data durable (`fsync`,
   or one `syncfs` for a batch of files);
2. rename it to `new/<unique>` (atomic; names are unique, so nothing is ever replaced -- the original
   Maildir text links and unlinks, which costs one more inode operation for the same guarantee here);
3. `fsync` the `new/` directory, so the new name itself survives a power cut;

and only then return. A file appears in `new/` only through step 2, which happens after its bytes are on
disk: a crash at any moment leaves either nothing or the complete message in `new/`. The SMTP server
answers 250 only after `deliver` returned, so every acknowledged message is in `new/`.

Deliveries are grouped (socketkit.mail.commit): one thread runs these steps for every message queued at
that moment, with one flush of the data and one `fsync` of each `new/` for the whole batch.

`tmp/` is not fsynced: its entries are garbage by definition after a crash. Leftovers are removed by
the Maildir rule (older than 36 hours) each time a `Maildir` is opened, which is safe while other
processes deliver to the same directory; `recover()` removes them all, for when no other process can be
in the middle of a delivery (an operator's clean-up, a single-process server's own start).

Message ids are the file names in `new/` (in `cur/`, the part before the ":2,flags" suffix).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from socketkit.mail import commit
from socketkit.mail.commit import fsync_dir

log = logging.getLogger("socketkit.mail")

TMP_MAX_AGE = 36 * 3600  # seconds: the Maildir convention for abandoned tmp/ files
_counter = itertools.count()
_counter_lock = threading.Lock()


def _safe_hostname() -> str:
    # The Maildir spec: '/' and ':' cannot appear in a name part; encode them as octal escapes.
    name = socket.gethostname() or "localhost"
    return name.replace("/", r"\057").replace(":", r"\072")


_token: tuple[int, str] = (0, "")


def _after_fork_in_child() -> None:
    global _counter_lock
    _counter_lock = threading.Lock()  # a parent thread may have held it at the fork


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _process_token() -> str:
    """8 random hex digits, drawn once per process (again after a fork)."""
    global _token
    pid = os.getpid()
    if _token[0] != pid:
        _token = (pid, secrets.token_hex(4))
    return _token[1]


async def _submit(copies: list[tuple[Maildir, bytes]], limiter: asyncio.Semaphore | None) -> list[str]:
    """Queue one delivery (its copies all or nothing) on the committer; the message ids, in order."""
    if limiter is None:
        return await _queue(copies)
    async with limiter:
        return await _queue(copies)


def _queue(copies: list[tuple[Maildir, bytes]]) -> asyncio.Future[list[str]]:
    job, fut = commit.settler(asyncio.get_running_loop()).job(copies)
    commit.committer().submit(job)
    return fut


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
            fsync_dir(self.root)
            fsync_dir(self.root.parent)
        self._host = _safe_hostname()
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
        # time, pid, a per-process counter and a per-process random part: unique across processes and
        # hosts sharing the directory, without a system call per name.
        return f"{sec}.M{usec}P{os.getpid()}Q{n}R{_process_token()}.{self._host}"

    def _write_tmp(self, data: bytes) -> tuple[str, int]:
        """Step 1: a new file in tmp/ holding `data`; returns (name, open descriptor). OSError leaves
        nothing behind."""
        tmp_dir = self.root / "tmp"
        for _attempt in range(5):
            name = self._unique()
            try:
                fd = os.open(tmp_dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except BaseException:
                os.close(fd)
                (tmp_dir / name).unlink(missing_ok=True)
                raise
            return name, fd
        raise OSError(f"could not find a free message name in {tmp_dir}")

    def deliver(self, data: bytes) -> str:
        """Store `data` durably in new/ and return its id; OSError if it could not be stored. Blocks
        (any thread but an event loop's)."""
        [message_id] = commit.deliver_sync([(self, data)])
        self._notify(message_id)
        return message_id

    async def deliver_async(self, data: bytes, limiter: asyncio.Semaphore | None = None) -> str:
        """`deliver` for coroutines: the disk work runs on the committer thread, hooks on the loop."""
        [message_id] = await _submit([(self, data)], limiter)
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
    the one Maildir at `root` (`catch_all`). At most `concurrency` deliveries are queued for the committer
    thread at a time (socketkit.mail.commit); the others wait their turn on the event loop."""

    def __init__(self, root: str | os.PathLike[str], *, catch_all: bool = False, concurrency: int = 64) -> None:
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
        copies_ = [(self.mailbox(address), data) for address, data in copies]
        ids = await _submit(copies_, self._limiter)
        done = [(box, mid) for (box, _), mid in zip(copies_, ids, strict=True)]
        for box, mid in done:
            box._notify(mid)
        result = [(box.root.name if not self.catch_all else "", mid) for box, mid in done]
        for name, message_id in result:
            for hook in list(self.on_delivery):
                try:
                    hook(name, message_id)
                except Exception:
                    log.exception("mail store: on_delivery hook failed")
        return result
