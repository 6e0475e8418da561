"""Review of the batched committer (socketkit/mail/commit.py): durability and isolation across file systems."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import threading
from pathlib import Path

import pytest

from socketkit.mail import commit as commit_module
from socketkit.mail.maildir import Maildir

WAIT = 10  # seconds: an upper bound, never a synchronisation sleep

needs_syncfs = pytest.mark.skipif(commit_module._syncfs is None, reason="syncfs grouping is off here")


@pytest.fixture
def other_fs(tmp_path: Path):
    """A directory on a file system other than tmp_path's (/dev/shm), removed afterwards."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    path = Path(tempfile.mkdtemp(prefix="socketkit-review-", dir="/dev/shm"))
    try:
        if os.stat(path).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same file system as tmp_path")
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _job(copies: list[tuple[Maildir, bytes]]):
    done = threading.Event()
    out: dict[str, object] = {}

    def settle(ids, error):
        out["ids"], out["error"] = ids, error
        done.set()

    return commit_module.Job(copies, settle), done, out


@needs_syncfs
def test_a_mailbox_moved_to_another_file_system_is_still_flushed(tmp_path: Path, other_fs: Path,
                                                                  monkeypatch: pytest.MonkeyPatch):
    """A per-recipient mailbox is a symlink; the operator moves it to another disk and re-points the link
    while the server runs. The committer must flush the file system the bytes were written to, not the
    one `Maildir.device` remembered when the mailbox was opened (a 250 for data only in the page cache)."""
    link = tmp_path / "bob@example.org"
    link.symlink_to(other_fs)
    box = Maildir(link)
    # The mailbox has received mail before: the committer knows its (tmpfs) device.
    commit_module.deliver_sync([(box, b"before 1"), (box, b"before 2")])

    moved = tmp_path / "moved"  # on tmp_path's file system
    shutil.copytree(other_fs, moved, symlinks=True)
    link.unlink()
    link.symlink_to(moved)

    flushed: list[int] = []  # devices whose data was flushed (syncfs, or fsync of a regular file)
    real_syncfs, real_fsync = commit_module._syncfs, os.fsync

    def spy_syncfs(fd: int) -> None:
        flushed.append(os.fstat(fd).st_dev)
        real_syncfs(fd)

    def spy_fsync(fd: int) -> None:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            flushed.append(st.st_dev)
        real_fsync(fd)

    monkeypatch.setattr(commit_module, "_syncfs", spy_syncfs)
    monkeypatch.setattr(commit_module.os, "fsync", spy_fsync)
    ids = commit_module.deliver_sync([(box, b"after 1"), (box, b"after 2")])
    monkeypatch.undo()

    written_on = {os.stat(link / "new" / mid).st_dev for mid in ids}
    assert written_on == {os.stat(tmp_path).st_dev}
    assert written_on <= set(flushed), "acknowledged messages whose file system was never flushed"


@needs_syncfs
def test_a_mailbox_that_cannot_be_opened_for_syncfs_does_not_fail_the_others(tmp_path: Path, other_fs: Path,
                                                                            monkeypatch: pytest.MonkeyPatch):
    """The docstring promises that a failure fails only the jobs it covers. A second mailbox on a file
    system the committer has no descriptor for yet, whose tmp/ cannot be opened, must fail its own
    delivery only -- not a healthy mailbox's delivery that happened to share the batch."""
    healthy = Maildir(tmp_path / "alice")
    broken = Maildir(other_fs / "bob")
    committer = commit_module.committer()
    shutil.rmtree(broken.root / "tmp")

    # Hold the committer in a first (one-file) batch until both deliveries are queued behind it.
    real_write = Maildir._write_tmp
    entered, release = threading.Event(), threading.Event()
    first = [True]

    def gated(self: Maildir, data: bytes):
        if first[0]:
            first[0] = False
            entered.set()
            release.wait(WAIT)
        return real_write(self, data)

    monkeypatch.setattr(Maildir, "_write_tmp", gated)
    blocker, blocker_done, _ = _job([(healthy, b"first")])
    committer.submit(blocker)
    assert entered.wait(WAIT)
    good, good_done, good_out = _job([(healthy, b"for alice")])
    bad, bad_done, bad_out = _job([(broken, b"for bob")])
    committer.submit(good)
    committer.submit(bad)
    release.set()
    assert blocker_done.wait(WAIT) and good_done.wait(WAIT) and bad_done.wait(WAIT)

    assert isinstance(bad_out["error"], OSError)
    assert good_out["error"] is None, f"a healthy delivery failed because of another mailbox: {good_out['error']!r}"
    assert healthy.get(good_out["ids"][0]) == b"for alice"  # type: ignore[index]
