"""Maildir: the delivery protocol (tmp -> flush -> rename -> fsync dir, in batches), reading, clean-up, routing."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import stat
import sys
import threading
import time
from pathlib import Path

import pytest

from socketkit.mail import commit as commit_module
from socketkit.mail import maildir as maildir_module
from socketkit.mail.maildir import Maildir, MailStore, mailbox_name


def test_creates_private_directories(tmp_path: Path):
    Maildir(tmp_path / "box")
    for sub in ("", "tmp", "new", "cur"):
        path = tmp_path / "box" / sub
        assert path.is_dir()
        assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_deliver_get_list_delete(tmp_path: Path):
    box = Maildir(tmp_path)
    first = box.deliver(b"Subject: one\r\n\r\nbody\r\n")
    second = box.deliver(b"two")
    assert first != second
    assert box.list() == [first, second]
    assert box.get(first) == b"Subject: one\r\n\r\nbody\r\n"
    assert box.path(second) == tmp_path / "new" / second
    assert stat.S_IMODE(box.path(first).stat().st_mode) == 0o600
    assert os.listdir(tmp_path / "tmp") == []  # nothing left behind
    assert first in box and len(box) == 2
    box.delete(first)
    assert box.list() == [second] and first not in box
    with pytest.raises(KeyError):
        box.get(first)
    with pytest.raises(KeyError):
        box.delete(first)


def test_names_follow_the_maildir_convention(tmp_path: Path):
    name = Maildir(tmp_path).deliver(b"x")
    sec, rest = name.split(".", 1)
    assert sec.isdigit() and abs(int(sec) - time.time()) < 60
    assert rest.startswith("M") and f"P{os.getpid()}Q" in rest
    assert "/" not in name and ":" not in name


def test_many_deliveries_are_unique(tmp_path: Path):
    box = Maildir(tmp_path)
    ids = {box.deliver(b"%d" % i) for i in range(300)}
    assert len(ids) == 300 and len(os.listdir(tmp_path / "new")) == 300


def test_ids_cannot_escape_the_directory(tmp_path: Path):
    (tmp_path / "secret").write_bytes(b"no")
    box = Maildir(tmp_path / "box")
    for bad in ("../secret", "", ".hidden", "a/b", "x\0y"):
        with pytest.raises(KeyError):
            box.get(bad)


def test_messages_in_cur_are_found_with_their_flags(tmp_path: Path):
    box = Maildir(tmp_path)
    mid = box.deliver(b"seen")
    os.rename(tmp_path / "new" / mid, tmp_path / "cur" / f"{mid}:2,S")
    assert box.list() == [mid]
    assert box.get(mid) == b"seen"
    assert box.path(mid).name == f"{mid}:2,S"


def test_hooks_are_told_and_a_broken_hook_does_not_fail_delivery(tmp_path: Path):
    box = Maildir(tmp_path)
    seen: list[str] = []

    def broken(_mid: str) -> None:
        raise RuntimeError("viewer bug")

    box.on_delivery += [broken, seen.append]
    mid = box.deliver(b"x")
    assert seen == [mid]


def test_a_failed_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(maildir_module.os, "fsync", no_space)
    with pytest.raises(OSError):
        box.deliver(b"data")
    monkeypatch.undo()
    assert os.listdir(tmp_path / "new") == [] and os.listdir(tmp_path / "tmp") == []


def test_failed_directory_fsync_does_not_claim_the_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)

    def failing(fd: int, path: Path) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(commit_module, "_fsync_dir", failing)
    with pytest.raises(OSError):
        box.deliver(b"data")
    assert os.listdir(tmp_path / "new") == [] and os.listdir(tmp_path / "tmp") == []


def _recording(monkeypatch: pytest.MonkeyPatch, calls: list[str]) -> None:
    real_fsync, real_rename = os.fsync, os.rename

    def fsync_dir(fd: int, path: Path) -> None:
        calls.append(f"fsync {Path(path).name}/")
        real_fsync(fd)

    monkeypatch.setattr(maildir_module.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(maildir_module.os, "rename", lambda a, b: (calls.append("rename"), real_rename(a, b))[1])
    monkeypatch.setattr(commit_module, "_fsync_dir", fsync_dir)


def test_the_protocol_order_is_write_fsync_rename_fsync_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)
    calls: list[str] = []
    _recording(monkeypatch, calls)
    box.deliver(b"x")
    assert calls == ["fsync", "rename", "fsync new/"]
    assert not list((tmp_path / "tmp").iterdir())


def _hold_committer(monkeypatch: pytest.MonkeyPatch, box: Maildir, queued: int) -> threading.Event:
    """The first file written waits until `queued` more deliveries are queued behind it: they then
    form the next batch together. The event returned is set once that first write has begun."""
    real = Maildir._write_tmp
    first = True
    entered = threading.Event()

    def gated(self: Maildir, data: bytes):
        nonlocal first
        if first:
            first = False
            entered.set()
            deadline = time.monotonic() + 10
            while commit_module.committer().pending < queued and time.monotonic() < deadline:
                time.sleep(0.001)
        return real(self, data)

    monkeypatch.setattr(Maildir, "_write_tmp", gated)
    return entered


def _deliver_in_threads(box: Maildir, payloads: list[bytes], entered: threading.Event) -> list[object]:
    outcomes: list[object] = [None] * len(payloads)

    def one(i: int) -> None:
        try:
            outcomes[i] = box.deliver(payloads[i])
        except OSError as exc:
            outcomes[i] = exc

    first = threading.Thread(target=one, args=(0,))
    first.start()
    assert entered.wait(10)
    others = [threading.Thread(target=one, args=(i,)) for i in range(1, len(payloads))]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(timeout=20)
    return outcomes


def test_a_batch_writes_all_flushes_once_then_renames_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)
    calls: list[str] = []
    _recording(monkeypatch, calls)
    monkeypatch.setattr(commit_module, "_syncfs", lambda fd: calls.append("syncfs"))
    entered = _hold_committer(monkeypatch, box, queued=5)
    outcomes = _deliver_in_threads(box, [b"%d" % i for i in range(6)], entered)
    assert all(isinstance(o, str) for o in outcomes)
    # the first delivery alone (fsync), then the five that queued behind it, with one flush for all
    assert calls == ["fsync", "rename", "fsync new/", "syncfs", *["rename"] * 5, "fsync new/"]
    assert sorted(os.listdir(tmp_path / "new")) == sorted(outcomes)  # type: ignore[type-var]


def test_without_syncfs_a_batch_fsyncs_each_file_but_the_directory_once(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)
    calls: list[str] = []
    _recording(monkeypatch, calls)
    monkeypatch.setattr(commit_module, "_syncfs", None)
    entered = _hold_committer(monkeypatch, box, queued=3)
    outcomes = _deliver_in_threads(box, [b"%d" % i for i in range(4)], entered)
    assert all(isinstance(o, str) for o in outcomes)
    assert calls == ["fsync", "rename", "fsync new/", *["fsync"] * 3, *["rename"] * 3, "fsync new/"]


def test_tmp_cleanup_follows_the_36_hour_rule(tmp_path: Path):
    Maildir(tmp_path)
    old, fresh = tmp_path / "tmp" / "old", tmp_path / "tmp" / "fresh"
    old.write_bytes(b"torn")
    fresh.write_bytes(b"in progress elsewhere")
    past = time.time() - 37 * 3600
    os.utime(old, (past, past))
    box = Maildir(tmp_path)  # opening cleans only what is certainly abandoned
    assert not old.exists() and fresh.exists()
    assert box.recover() == 1 and not fresh.exists()


def test_mailbox_names_are_safe():
    assert mailbox_name("Bob@Example.ORG") == "bob@example.org"
    assert mailbox_name("jörg@example.org") == "jörg@example.org"
    for tricky in ("../../etc@x", "a/b@x", ".hidden@x", '"a b"@x', "x\x00y@z"):
        name = mailbox_name(tricky)
        assert "/" not in name and "\0" not in name and not name.startswith(".") and " " not in name
    assert mailbox_name("a/b@x") != mailbox_name("a_b@x")


async def test_store_routes_per_recipient_and_runs_hooks(tmp_path: Path):
    store = MailStore(tmp_path)
    seen: list[tuple[str, str]] = []
    store.on_delivery.append(lambda name, mid: seen.append((name, mid)))
    result = await store.deliver([("bob@example.org", b"1"), ("Carol@Example.org", b"2")])
    assert [name for name, _ in result] == ["bob@example.org", "carol@example.org"]
    assert seen == result
    assert store.mailbox("bob@example.org").get(result[0][1]) == b"1"
    assert sorted(store.mailboxes()) == ["bob@example.org", "carol@example.org"]


async def test_store_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = MailStore(tmp_path)
    real = Maildir._write_tmp

    def fail_for_carol(self: Maildir, data: bytes):
        if self.root.name.startswith("carol"):
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Maildir, "_write_tmp", fail_for_carol)
    with pytest.raises(OSError):
        await store.deliver([("bob@example.org", b"1"), ("carol@example.org", b"2")])
    assert store.mailbox("bob@example.org").list() == []
    assert os.listdir(tmp_path / "bob@example.org" / "tmp") == []


async def test_store_catch_all_and_bounded_concurrency(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    store = MailStore(tmp_path, catch_all=True, concurrency=2)
    peak = 0
    real = Maildir._write_tmp

    def slow(self: Maildir, data: bytes):
        nonlocal peak
        peak = max(peak, commit_module.committer().pending)  # queued while this one is being written
        time.sleep(0.01)
        return real(self, data)

    monkeypatch.setattr(Maildir, "_write_tmp", slow)
    await asyncio.gather(*(store.deliver([(f"u{i}@x.test", b"%d" % i)]) for i in range(8)))
    assert peak <= 1  # at most 2 in flight: the one being written and one queued
    assert len(store.mailbox().list()) == 8 and list(store.mailboxes()) == [""]
    assert sorted(os.listdir(tmp_path)) == ["cur", "new", "tmp"]


def test_concurrent_deliveries_share_fsyncs_and_all_land(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)
    dir_syncs = 0
    real = commit_module._fsync_dir

    def counting(fd: int, path: Path) -> None:
        nonlocal dir_syncs
        dir_syncs += 1
        time.sleep(0.002)  # a slow disk: later deliveries pile up behind this flush and share the next
        real(fd, path)

    monkeypatch.setattr(commit_module, "_fsync_dir", counting)
    payloads = [b"message %d\r\n" % i * (i + 1) for i in range(64)]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(box.deliver, payloads))
    assert len(set(ids)) == 64
    for mid, data in zip(ids, payloads, strict=True):
        assert (tmp_path / "new" / mid).read_bytes() == data
    assert os.listdir(tmp_path / "tmp") == []
    assert dir_syncs < 64  # group commit: one fsync of new/ covered several renames


async def test_async_deliveries_in_flight_together_all_land(tmp_path: Path):
    store = MailStore(tmp_path, catch_all=True)
    payloads = [os.urandom(5000 + i) for i in range(40)]
    results = await asyncio.gather(*(store.deliver([("", data)]) for data in payloads))
    box = store.mailbox()
    for [(_, mid)], data in zip(results, payloads, strict=True):
        assert box.get(mid) == data
    assert len(os.listdir(tmp_path / "new")) == 40


async def test_batches_are_bounded_in_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(commit_module, "MAX_BATCH_FILES", 4)
    store = MailStore(tmp_path, catch_all=True)
    before = commit_module.committer().batches
    await asyncio.gather(*(store.deliver([("", b"%d" % i)]) for i in range(20)))
    assert len(os.listdir(tmp_path / "new")) == 20
    assert commit_module.committer().batches - before >= 5


def test_a_failed_shared_fsync_fails_every_delivery_it_covered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)
    waiting = 7
    calls = 0
    real = commit_module._fsync_dir

    def second_fails(fd: int, path: Path) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(5, "Input/output error")
        return real(fd, path)

    monkeypatch.setattr(commit_module, "_fsync_dir", second_fails)
    entered = _hold_committer(monkeypatch, box, queued=waiting)
    outcomes = _deliver_in_threads(box, [b"%d" % i for i in range(waiting + 1)], entered)
    stored = [o for o in outcomes if isinstance(o, str)]
    failed = [o for o in outcomes if isinstance(o, OSError)]
    assert len(stored) == 1 and len(failed) == waiting
    assert calls == 3  # the first batch, the shared one that failed, and new/ again after the clean-up
    assert all(exc.errno == 5 for exc in failed)
    assert os.listdir(tmp_path / "new") == stored  # no failed delivery left its file behind
    assert os.listdir(tmp_path / "tmp") == []
    assert box.deliver(b"after") in box  # the failure is not sticky


def test_a_failed_syncfs_fails_the_batch_and_a_failed_write_only_its_own(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch):
    box = Maildir(tmp_path)
    syncfs_calls = 0

    def syncfs(fd: int) -> None:
        nonlocal syncfs_calls
        syncfs_calls += 1
        if syncfs_calls == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(commit_module, "_syncfs", syncfs)
    entered = _hold_committer(monkeypatch, box, queued=4)
    outcomes = _deliver_in_threads(box, [b"%d" % i for i in range(5)], entered)
    assert isinstance(outcomes[0], str)  # alone: its own fsync
    assert all(isinstance(o, OSError) and o.errno == 5 for o in outcomes[1:])
    assert os.listdir(tmp_path / "new") == [outcomes[0]] and os.listdir(tmp_path / "tmp") == []

    real = Maildir._write_tmp

    def full_for_two(self: Maildir, data: bytes):
        if data == b"2":
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Maildir, "_write_tmp", full_for_two)
    entered = _hold_committer(monkeypatch, box, queued=3)
    outcomes = _deliver_in_threads(box, [b"%d" % i for i in range(4)], entered)
    assert [type(o) for o in outcomes] == [str, str, OSError, str]
    assert sorted(box.get(o) for o in outcomes if isinstance(o, str)) == [b"0", b"1", b"3"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/mountinfo")
def test_syncfs_is_used_only_where_the_file_system_is_known_to_honour_it(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch):
    kind = commit_module._fs_type(os.stat(tmp_path).st_dev)
    assert kind  # found in /proc/self/mountinfo
    box = Maildir(tmp_path)
    calls: list[str] = []
    _recording(monkeypatch, calls)
    monkeypatch.setattr(commit_module, "_syncfs", lambda fd: calls.append("syncfs"))
    monkeypatch.setattr(commit_module, "SYNCFS_TYPES", frozenset())  # as on FUSE or overlayfs
    entered = _hold_committer(monkeypatch, box, queued=2)
    outcomes = _deliver_in_threads(box, [b"a", b"b", b"c"], entered)
    assert all(isinstance(o, str) for o in outcomes)
    assert "syncfs" not in calls and calls.count("fsync") == 3


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_delivers_with_its_own_committer(tmp_path: Path):
    box = Maildir(tmp_path)
    box.deliver(b"parent")  # the parent's committer thread is running now
    pid = os.fork()
    if pid == 0:  # the child: the parent's thread does not exist here
        code = 1
        try:
            code = 0 if box.get(box.deliver(b"child")) == b"child" else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        assert time.monotonic() < deadline, "the child's delivery hung"
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    assert sorted(box.get(m) for m in box.list()) == [b"child", b"parent"]
