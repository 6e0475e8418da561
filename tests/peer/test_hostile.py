"""A malicious sender against `socketkit peer receive`: the receiver must give it nothing.

The sender (hostile_support.py) is built from our own MailboxSession and Transit, so every byte it sends is
valid wormhole protocol except the attack: unsafe names, hand-made zips (escaping entries, links, devices,
dangerous modes, duplicates, bombs, zips that lie about themselves), offers past the free space, more or
fewer bytes than offered, forged and oversized records, garbage in its mailbox messages and transit hints.
Each test checks what reached the disk (only inside --out, never over an existing file unless asked, never
more than offered), what the receiver raised (one readable, typed error) and what the sender got back.

The reference mailbox server and transit relay run on loopback (wormhole_support.servers); the free-space
tests mount a real 1 MiB tmpfs when they can (root), and only otherwise fake shutil.disk_usage."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import pytest
from hostile_support import (
    STEP,
    Data,
    Seen,
    dir_offer,
    duel,
    entry,
    file_offer,
    hostile_sender,
    make_zip,
    new_code,
    patch_entries,
    payload,
    sends,
    snapshot,
    start,
)

import socketkit.peer.receive as receive_module
from socketkit.errors import PeerError, PeerProtocolError, TransferError
from socketkit.peer.options import Result
from socketkit.proto import transit as tp
from socketkit.proto import wormhole_transfer as xfer

REFUSED = (TransferError, PeerProtocolError)


@pytest.fixture
def out(tmp_path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d


def one_line(e: BaseException) -> str:
    text = str(e)
    assert text and "\n" not in text and "\r" not in text and "\x1b" not in text, repr(text)
    return text


@pytest.fixture
def extractions(monkeypatch) -> list[str]:
    """Every temporary directory an extraction starts (files.extract makes one before writing anything)."""
    made: list[str] = []
    real = tempfile.mkdtemp

    def spy(*a, **kw):
        path = real(*a, **kw)
        made.append(path)
        return path

    monkeypatch.setattr(tempfile, "mkdtemp", spy)
    return made


def leftovers(out: Path) -> list[str]:
    """Temporary directories of an extraction, anywhere they could be."""
    found = [p.name for p in out.iterdir() if p.name.endswith(".socketkit-tmp")]
    found += [n for n in os.listdir(tempfile.gettempdir()) if n.endswith(".socketkit-tmp")]
    return found


# == 1. offered names ====================================================================================
BAD_NAMES = [
    "../x", "../../escaped-by-name", "/etc/passwd", "{tmp}/escaped-absolute", "a/b", "..", ".", "", "a\\b",
    "..\\escaped", "nul\x00byte", "new\nline", "tab\there", "\x1b[31mred", "bell\x07", "del\x7f",
    "bidi\u202etxt.exe", "lone\ud800surrogate", "escaped\udcffbyte", "zero\u200bwidth", "line\u2028sep",
    "x" * 256, "é" * 128, 5, None, ["a"], {"a": 1},
]


@pytest.mark.parametrize("kind", ["file", "directory"])
@pytest.mark.parametrize("name", BAD_NAMES, ids=[repr(n)[:24] for n in BAD_NAMES])
async def test_unsafe_names_are_refused_and_nothing_is_written(servers, tmp_path, out, name, kind):
    if isinstance(name, str):
        name = name.replace("{tmp}", str(tmp_path))
    before = snapshot(tmp_path)
    passwd = Path("/etc/passwd").read_bytes()
    offer = file_offer(name, 10) if kind == "file" else dir_offer(name, 200, 10, 1)
    outcome, seen = await duel(servers, out, offer=offer, data=sends(b"0123456789"))
    assert isinstance(outcome, REFUSED), outcome
    one_line(outcome)
    assert seen.errors and not seen.answered and not seen.connected, seen
    assert "\n" not in seen.errors[0] and "\x1b" not in seen.errors[0]
    assert snapshot(tmp_path) == before
    assert Path("/etc/passwd").read_bytes() == passwd
    assert not leftovers(out)
    assert not [n for n in os.listdir(tmp_path.parent) if "escaped" in n]  # where "../../x" would land
    assert not [n for n in os.listdir(tempfile.gettempdir()) if "escaped" in n]


@pytest.mark.parametrize("kind", ["file", "directory"])
@pytest.mark.parametrize("length", [247, 251, 255])
async def test_a_name_at_the_length_limit_is_received_whole(servers, out, length, kind):
    """A legal name whose .part (or .zip.part) would pass the 255-byte limit still arrives under its name."""
    name = "n" * length
    if kind == "file":
        body = b"long name\n"
        outcome, seen = await duel(servers, out, offer=file_offer(name, len(body)), data=payload(body))
        assert isinstance(outcome, Result), outcome
        assert (out / name).read_bytes() == body
    else:
        z = make_zip([("inside.txt", b"long name\n")])
        outcome, seen = await duel(servers, out, offer=dir_offer(name, len(z), 10, 1), data=payload(z))
        assert isinstance(outcome, Result), outcome
        assert (out / name / "inside.txt").read_bytes() == b"long name\n"
    assert sorted(p.name for p in out.iterdir()) == [name]


# == 2. directories: hand-made zips ======================================================================
async def zip_duel(servers, out, z: bytes, *, numbytes: int | None = None, numfiles: int | None = None,
                   name: str = "tree", **kw):
    offer = dir_offer(name, len(z), 1000 if numbytes is None else numbytes, 10 if numfiles is None else numfiles)
    return await duel(servers, out, offer=offer, data=payload(z), **kw)


def assert_refused_before_extraction(outcome, seen: Seen, out: Path, extractions: list[str],
                                     why: str = "") -> None:
    assert isinstance(outcome, TransferError), outcome
    assert why in one_line(outcome)
    assert extractions == []  # refused on the zip's directory alone: not one entry was written anywhere
    assert list(out.iterdir()) == [], list(out.iterdir())  # no target, no .zip.part, no temporary directory
    assert not leftovers(out)
    acks = [json.loads(r) for r in seen.records]
    assert acks and acks[-1].get("ack") == "error", seen  # the sender is told why


ESCAPING = ["../evil", "a/../../evil", "a/../b", "/abs/evil", "//abs/evil", "\\evil", "a\\..\\..\\evil",
            "C:evil", "C:\\evil", "c:/evil", "..", "../", "./../evil", ".", "./"]


@pytest.mark.parametrize("bad", ESCAPING)
async def test_zip_entries_that_leave_the_target_are_refused(servers, tmp_path, out, bad, extractions):
    z = make_zip([("first.txt", b"fine"), (entry(bad), b"evil")])
    outcome, seen = await zip_duel(servers, out, z)
    assert_refused_before_extraction(outcome, seen, out, extractions, "unsafe entry name")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert not Path("/abs").exists()


@pytest.mark.parametrize("mode", [stat.S_IFLNK | 0o777, stat.S_IFCHR | 0o666, stat.S_IFBLK | 0o660,
                                  stat.S_IFIFO | 0o644, stat.S_IFSOCK | 0o755],
                         ids=["symlink", "chardev", "blockdev", "fifo", "socket"])
async def test_links_and_device_entries_are_refused(servers, out, mode, extractions):
    z = make_zip([("first.txt", b"fine"), (entry("sub/special", mode), b"/etc/passwd")])
    outcome, seen = await zip_duel(servers, out, z)
    assert_refused_before_extraction(outcome, seen, out, extractions, "link or a device")


async def test_dangerous_modes_are_dropped_on_extraction(servers, out, extractions):
    """setuid/setgid/sticky and world-writable bits never reach the disk: the entries are extracted without them."""
    z = make_zip([
        (entry("suid", stat.S_IFREG | 0o4755), b"#!/bin/sh\n"),
        (entry("sgid", stat.S_IFREG | 0o2755), b"#!/bin/sh\n"),
        (entry("all", stat.S_IFREG | 0o7777), b"x"),
        (entry("ww", stat.S_IFREG | 0o666), b"x"),
        (entry("noperm", stat.S_IFREG | 0o000), b"x"),
        (entry("sticky/", stat.S_IFDIR | 0o1777), b""),
        (entry("gdir/", stat.S_IFDIR | 0o2777), b""),
        (entry("gdir/inner", stat.S_IFREG | 0o6777), b"x"),
    ])
    outcome, seen = await zip_duel(servers, out, z, numfiles=7)
    assert isinstance(outcome, Result), outcome
    assert len(extractions) == 1  # (the spy the refusals rely on does see an extraction)
    tree = out / "tree"
    modes = {p.name: stat.S_IMODE(p.lstat().st_mode) for p in [tree, *tree.rglob("*")]}
    for name, mode in modes.items():
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH), (name, oct(mode))
    assert modes["suid"] == modes["sgid"] == 0o755
    assert modes["all"] == 0o775 and modes["ww"] == 0o664 and modes["noperm"] == 0o644
    assert modes["sticky"] == 0o775 and modes["gdir"] == 0o775 and modes["inner"] == 0o775
    assert (tree / "suid").read_bytes() == b"#!/bin/sh\n"
    assert [p.name for p in out.iterdir()] == ["tree"]


CONFLICTS = {
    "same file twice": [("a", b"1"), ("a", b"2")],
    "same file, two spellings": [("a", b"1"), ("./a", b"2")],
    "same file, double slash": [("d/a", b"1"), ("d//a", b"2")],
    "file then directory": [("x", b"1"), (entry("x/"), b"")],
    "directory then file": [(entry("x/"), b""), ("x", b"1")],
    "file then a file inside it": [("x", b"1"), ("x/y", b"2")],
    "a file inside, then the file": [("x/y", b"2"), ("x", b"1")],
    "deep file then its parent as a file": [("x/y/z", b"2"), ("x/y", b"1")],
}


@pytest.mark.parametrize("entries", list(CONFLICTS.values()), ids=list(CONFLICTS))
async def test_duplicate_and_conflicting_entries_are_refused_before_extraction(servers, out, entries, extractions):
    z = make_zip(entries)
    outcome, seen = await zip_duel(servers, out, z)
    assert_refused_before_extraction(outcome, seen, out, extractions)


async def test_a_directory_entry_twice_is_harmless(servers, out):
    z = make_zip([(entry("d/"), b""), (entry("d/"), b""), ("d/f", b"1")])
    outcome, _ = await zip_duel(servers, out, z)
    assert isinstance(outcome, Result), outcome
    assert (out / "tree" / "d" / "f").read_bytes() == b"1"


async def test_unpacked_size_far_past_the_offer_is_refused_before_extraction(servers, out, extractions):
    bomb = entry("bomb", deflate=True)
    z = make_zip([("first.txt", b"fine"), (bomb, bytes(17 << 20))])  # ~17 KB on the wire
    assert len(z) < 100_000
    outcome, seen = await zip_duel(servers, out, z, numbytes=100)
    assert_refused_before_extraction(outcome, seen, out, extractions, "unpacks to")


async def test_entry_count_far_past_the_offer_is_refused_before_extraction(servers, out, extractions):
    z = make_zip([(f"f{i}", b"") for i in range(2 * 3 + 1024 + 1)])
    outcome, seen = await zip_duel(servers, out, z, numfiles=3, numbytes=0)
    assert_refused_before_extraction(outcome, seen, out, extractions, "entries")


def _deflated(data: bytes) -> bytes:
    return make_zip([("first.txt", b"fine"), (entry("big", deflate=True), data)])


LIARS = {
    # the central directory says 10 bytes; the deflated data is a megabyte (and its crc is the megabyte's)
    "declared size too small": lambda: patch_entries(_deflated(bytes(1 << 20)), file_size=10),
    "wrong crc": lambda: patch_entries(make_zip([("a", b"hello")]), crc=1234),
    "unknown compression method": lambda: patch_entries(make_zip([("a", b"hello")]), method=99),
    "encrypted": lambda: patch_entries(make_zip([("a", b"hello")]), flags=1),
    "corrupt deflate stream": lambda: _deflated(b"z" * 5000).replace(zlib.compress(b"z" * 5000)[2:8], b"\xff" * 6),
    "not a zip": lambda: os.urandom(3000),
    "truncated": lambda: make_zip([("a", b"hello" * 100)])[:-30],
    "empty": lambda: b"",
}


@pytest.mark.parametrize("make", list(LIARS.values()), ids=list(LIARS))
async def test_zips_that_lie_about_themselves_are_refused(servers, out, make):
    """Not a traceback from zipfile or zlib: one TransferError, nothing left behind."""
    z = make()
    outcome, seen = await zip_duel(servers, out, z)
    assert isinstance(outcome, TransferError), repr(outcome)
    one_line(outcome)
    assert list(out.iterdir()) == [] and not leftovers(out)


@pytest.mark.parametrize("bad", ["y" * 300, "/".join(["d" * 200] * 25)], ids=["long component", "long path"])
async def test_entry_names_the_file_system_cannot_hold_are_refused(servers, out, bad):
    z = make_zip([("first.txt", b"fine"), (bad, b"x")])
    outcome, seen = await zip_duel(servers, out, z)
    assert isinstance(outcome, TransferError), repr(outcome)
    one_line(outcome)
    assert list(out.iterdir()) == [] and not leftovers(out)


# == 3. existing files ===================================================================================
async def test_an_existing_file_is_not_overwritten(servers, out):
    (out / "keep.txt").write_bytes(b"original")
    outcome, seen = await duel(servers, out, offer=file_offer("keep.txt", 5), data=payload(b"evil!"))
    assert isinstance(outcome, TransferError) and "overwrite" in str(outcome), outcome
    assert seen.errors and not seen.connected
    assert (out / "keep.txt").read_bytes() == b"original"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


async def test_overwrite_replaces_an_existing_file(servers, out):
    (out / "keep.txt").write_bytes(b"original")
    outcome, _ = await duel(servers, out, overwrite=True, offer=file_offer("keep.txt", 5), data=payload(b"new!!"))
    assert isinstance(outcome, Result), outcome
    assert (out / "keep.txt").read_bytes() == b"new!!"
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


async def test_a_failed_overwrite_keeps_the_original(servers, out):
    """--overwrite replaces the file with what arrived, so a sender that stops halfway destroys nothing."""
    (out / "keep.txt").write_bytes(b"original")
    outcome, _ = await duel(servers, out, overwrite=True, offer=file_offer("keep.txt", 1000),
                            data=sends(b"x" * 10))
    assert isinstance(outcome, TransferError), outcome
    assert (out / "keep.txt").read_bytes() == b"original"


async def test_overwrite_replaces_a_file_with_a_directory_once_it_is_whole(servers, out):
    (out / "tree").write_bytes(b"a file")
    z = make_zip([("inside.txt", b"new")])
    outcome, _ = await zip_duel(servers, out, z, overwrite=True, numfiles=1)
    assert isinstance(outcome, Result), outcome
    assert (out / "tree" / "inside.txt").read_bytes() == b"new"
    bad = make_zip([("inside.txt", b"new")])[:-30]
    (out / "other").write_bytes(b"kept")
    outcome, _ = await zip_duel(servers, out, bad, name="other", overwrite=True)
    assert isinstance(outcome, TransferError), outcome
    assert (out / "other").read_bytes() == b"kept"


async def test_overwrite_replaces_a_symlink_not_what_it_points_to(servers, tmp_path, out):
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside")
    (out / "link").symlink_to(outside)
    outcome, _ = await duel(servers, out, offer=file_offer("link", 4), data=payload(b"evil"))
    assert isinstance(outcome, TransferError), outcome
    assert (out / "link").is_symlink()
    outcome, _ = await duel(servers, out, overwrite=True, offer=file_offer("link", 4), data=payload(b"evil"))
    assert isinstance(outcome, Result), outcome
    assert not (out / "link").is_symlink() and (out / "link").read_bytes() == b"evil"
    assert outside.read_bytes() == b"outside"


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_an_existing_directory_is_never_deleted(servers, out, kind, overwrite):
    (out / "docs").mkdir()
    (out / "docs" / "thesis.tex").write_bytes(b"years of work")
    before = snapshot(out)
    z = make_zip([("new.txt", b"x")])
    offer = file_offer("docs", len(z)) if kind == "file" else dir_offer("docs", len(z), 1, 1)
    outcome, seen = await duel(servers, out, overwrite=overwrite, offer=offer, data=payload(z))
    assert isinstance(outcome, TransferError), outcome
    assert seen.errors and not seen.connected
    assert snapshot(out) == before


async def test_a_symlinked_part_file_is_not_followed(servers, tmp_path, out):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (out / "f.part").symlink_to(victim)
    outcome, seen = await duel(servers, out, offer=file_offer("f", 4), data=payload(b"evil"))
    assert isinstance(outcome, TransferError), outcome
    assert seen.errors and not seen.connected
    assert victim.read_bytes() == b"precious"


# == 4. free space =======================================================================================
@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A real 1 MiB tmpfs (root, where mount works); otherwise a directory whose disk_usage says 1 MiB."""
    d = tmp_path / "small"
    d.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)],
                                                   capture_output=True).returncode == 0
    if not mounted:
        import shutil
        real = shutil.disk_usage

        def fake(path):
            u = real(path)
            return type(u)(1 << 20, 0, 1 << 20) if Path(path).resolve() == d.resolve() else u

        monkeypatch.setattr(shutil, "disk_usage", fake)
    try:
        yield d, mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize("kind", ["file", "directory"])
async def test_an_offer_past_the_free_space_is_refused_before_accepting(servers, small_disk, kind):
    d, _ = small_disk
    offer = file_offer("big.bin", 2 << 20) if kind == "file" else dir_offer("big", 600 << 10, 600 << 10, 3)
    outcome, seen = await duel(servers, d, offer=offer, data=sends(b"x" * 1000))
    assert isinstance(outcome, TransferError) and "not enough free space" in one_line(outcome), outcome
    assert seen.errors and "not enough free space" in seen.errors[0]
    assert not seen.answered and not seen.connected
    assert list(d.iterdir()) == []


async def test_a_directory_that_lies_about_its_size_and_fills_the_disk(servers, small_disk):
    """numbytes says 100, the zip unpacks to 3 MiB (within the 16 MiB tolerance): the real disk fills up."""
    d, mounted = small_disk
    if not mounted:
        pytest.skip("needs a real small file system (root and tmpfs)")
    z = make_zip([(entry(f"f{i}", deflate=True), bytes(1 << 20)) for i in range(3)])
    outcome, seen = await zip_duel(servers, d, z, numbytes=100, numfiles=3)
    assert isinstance(outcome, TransferError), repr(outcome)
    one_line(outcome)
    assert list(d.iterdir()) == [] and not leftovers(d)
    assert os.statvfs(d).f_bfree * os.statvfs(d).f_frsize > 900 << 10  # the space came back


# == 5. sizes and records ================================================================================
FEATURE_SETS = {"socketkit": xfer.FEATURES, "plain wormhole": ()}


@pytest.mark.parametrize("features", list(FEATURE_SETS.values()), ids=list(FEATURE_SETS))
@pytest.mark.parametrize("chunks", [[600, 600], [1001], [1000, 1]],
                         ids=["straddling", "one big", "exact, then more (never read)"])
async def test_more_than_offered_is_refused_and_never_kept(servers, out, features, chunks):
    records = [bytes([65 + i]) * n for i, n in enumerate(chunks)]
    outcome, seen = await duel(servers, out, offer=file_offer("f.bin", 1000), features=features,
                               data=sends(*records, close=False))
    if chunks == [1000, 1]:
        # the offered 1000 bytes arrived whole; what followed was never read
        assert isinstance(outcome, Result), outcome
        assert (out / "f.bin").read_bytes() == records[0]
        return
    assert isinstance(outcome, PeerProtocolError) and "more than the 1,000 bytes" in one_line(outcome), outcome
    assert not (out / "f.bin").exists()
    kept = (out / "f.bin.part").stat().st_size
    assert kept <= 1000 and kept == (600 if chunks == [600, 600] else 0)


@pytest.mark.parametrize("features", list(FEATURE_SETS.values()), ids=list(FEATURE_SETS))
async def test_less_than_offered_is_a_short_transfer_kept_as_part(servers, out, features):
    outcome, seen = await duel(servers, out, offer=file_offer("f.bin", 1000), features=features,
                               data=sends(b"a" * 400, b"b" * 200))
    assert isinstance(outcome, TransferError), outcome
    text = one_line(outcome)
    assert "600 of 1,000 bytes" in text and "f.bin.part" in text
    assert (out / "f.bin.part").read_bytes() == b"a" * 400 + b"b" * 200
    assert not (out / "f.bin").exists()


async def test_a_directory_cut_short_is_not_extracted(servers, out):
    z = make_zip([("a", b"x" * 5000)])
    outcome, _ = await duel(servers, out, offer=dir_offer("tree", len(z), 5000, 1), data=sends(z[:1000]))
    assert isinstance(outcome, TransferError), outcome
    assert sorted(p.name for p in out.iterdir()) == ["tree.zip.part"] and not leftovers(out)


def sealed(tamper) -> Data:
    """One good record of 100 bytes, then a record `tamper(pipe, plaintext)` spoils."""
    async def run(pipe, common):
        await start(pipe, common)
        await pipe.send_record(b"G" * 100)
        await tamper(pipe, b"B" * 100)
    return run


async def _flip(pipe, data):
    frame = bytearray(b"".join(pipe.records.seal(data)))  # seal gives buffers that make up the frame
    frame[-1] ^= 1
    await pipe.stream.send(bytes(frame))


async def _skip(pipe, data):
    pipe.records.sent += 1
    await pipe.send_record(data)


async def _replay(pipe, data):
    pipe.records.sent -= 1
    await pipe.send_record(data)


async def _huge(pipe, data):
    await pipe.send_record(b"H" * (tp.MAX_RECORD + 1))  # sealed properly, only too big


async def _header(pipe, data):
    await pipe.stream.send((tp.MAX_RECORD + 1).to_bytes(4, "big") + b"\0" * 64)


async def _max_header(pipe, data):
    await pipe.stream.send(b"\xff\xff\xff\xff" + b"\0" * 64)


async def _tiny(pipe, data):
    await pipe.stream.send((3).to_bytes(4, "big") + b"abc")


async def _wrong_direction(pipe, data):
    # a record sealed with the receiver's own key (reflected): authentic for nobody here
    mirror = type(pipe.records)(pipe._key, is_sender=False)
    mirror.sent = pipe.records.sent
    for part in mirror.seal(data):
        await pipe.stream.send(part)


FORGERIES = {"tampered": (_flip, "decrypt"), "nonce skipped": (_skip, ""), "replayed": (_replay, ""),
             "oversized sealed record": (_huge, "transit record of"),
             "oversized header": (_header, "transit record of"),
             "4 GiB header": (_max_header, "transit record of"), "shorter than a tag": (_tiny, "shorter"),
             "reflected key": (_wrong_direction, "decrypt")}


@pytest.mark.parametrize("features", list(FEATURE_SETS.values()), ids=list(FEATURE_SETS))
@pytest.mark.parametrize("forgery", list(FORGERIES), ids=list(FORGERIES))
async def test_forged_and_oversized_records_are_refused(servers, out, features, forgery):
    tamper, why = FORGERIES[forgery]
    outcome, seen = await duel(servers, out, offer=file_offer("f.bin", 1000), features=features,
                               data=sealed(tamper))
    assert isinstance(outcome, REFUSED), outcome
    text = one_line(outcome)
    assert why in text
    if features and tamper is _skip:
        assert "decrypt" in text or "order" in text
    assert not (out / "f.bin").exists()
    assert (out / "f.bin.part").read_bytes() == b"G" * 100  # only what was authentic


START = {
    "not json": b"\x00\x01 not json",
    "json list": b"[1, 2]",
    "no socketkit key": b'{"ack": "ok"}',
    "unknown layer": xfer.start_record(0, "rot13", 1 << 20),
    "resume past what we have": xfer.start_record(500, "secretbox", 1 << 20),
    "negative offset": b'{"socketkit": {"offset": -1, "records": "secretbox", "record_size": 1}}',
    "record size absurd": xfer.start_record(0, "secretbox", 1 << 40),
    "deeply nested": b'{"socketkit": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("record", list(START.values()), ids=list(START))
async def test_a_bad_start_record_is_refused(servers, out, record):
    async def run(pipe, common):
        await pipe.send_record(record)
        await pipe.send_record(b"x" * 10)

    outcome, seen = await duel(servers, out, offer=file_offer("f.bin", 10), data=run)
    assert isinstance(outcome, PeerProtocolError), outcome
    one_line(outcome)
    assert not (out / "f.bin").exists()


async def test_a_silent_sender_is_given_up_on(servers, out):
    async def run(pipe, common):
        await start(pipe, common)
        await asyncio.sleep(60)  # (cancelled once the receiver has given up)

    # (the receiver's timeout bounds every network step, the mailbox server's replies too: short, but not so
    # short that a loaded machine makes one of those the step that times out)
    outcome, _ = await duel(servers, out, offer=file_offer("f.bin", 10), data=run, receiver={"timeout": 3.0})
    assert isinstance(outcome, TransferError) and "0 of 10 bytes" in one_line(outcome), outcome


# == 6. the hostile peer's mailbox messages ==============================================================
@pytest.mark.parametrize("body", [b"\xff\xfe not json {", b"[1, 2, 3]", b'"offer"', b"null", b"",
                                  b'{"offer": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"],
                         ids=["binary", "array", "string", "null", "empty", "deeply nested"])
async def test_an_offer_that_is_not_a_json_object(servers, out, body):
    outcome, _ = await duel(servers, out, offer=body, grace=0.2)
    assert isinstance(outcome, PeerError), repr(outcome)
    assert "JSON" in one_line(outcome)
    assert list(out.iterdir()) == []


MALFORMED = [
    {"offer": "file"}, {"offer": None}, {"offer": {}}, {"offer": {"tarball": {}}},
    {"offer": {"file": "f"}}, {"offer": {"file": {"filename": "f"}}},
    file_offer("f", -1), file_offer("f", "10"), file_offer("f", True), file_offer("f", 1.5), file_offer("f", 2 ** 70),
    file_offer("f", None), file_offer("f", [1] * 1000),
    {"offer": {"directory": {"mode": "tar", "dirname": "d", "zipsize": 1, "numbytes": 1, "numfiles": 1}}},
    {"offer": {"directory": {"dirname": "d", "zipsize": 1, "numbytes": 1, "numfiles": 1}}},
    dir_offer("d", 10, -5, 1), dir_offer("d", 10, 5, "many"),
    {"offer": {"message": 5}}, {"offer": {"message": ["a"]}},
]


@pytest.mark.parametrize("offer", MALFORMED, ids=[json.dumps(m)[:40] for m in MALFORMED])
async def test_malformed_offers_are_refused_with_a_reason(servers, out, offer):
    outcome, seen = await duel(servers, out, offer=offer)
    assert isinstance(outcome, REFUSED), repr(outcome)
    assert len(one_line(outcome)) <= 600
    assert seen.errors and not seen.answered and not seen.connected
    assert list(out.iterdir()) == []


async def test_a_file_offer_without_transit_hints_is_refused(servers, out):
    outcome, seen = await duel(servers, out, transit=[], offer=file_offer("f", 3), data=payload(b"abc"))
    assert isinstance(outcome, TransferError) and "transit" in str(outcome), outcome
    assert seen.errors and list(out.iterdir()) == []


async def test_the_senders_error_reaches_the_person_as_one_line(servers, out):
    evil = "bye\n\x1b[2J\x1b[1;1Hsocketkit: all good, transfer complete\r\n" + "x" * 5000
    outcome, _ = await duel(servers, out, offer={"error": evil}, grace=0.2)
    assert isinstance(outcome, TransferError), outcome
    assert len(one_line(outcome)) < 600


@contextlib.asynccontextmanager
async def counting_listener():
    """A loopback port that counts the connections the receiver makes to it (and hangs up on them)."""
    count = [0]

    async def handle(reader, writer):
        count[0] += 1
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], count
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def receiver_transits(monkeypatch) -> list:
    """The Transit objects the receiver makes, to look at the hints it kept."""
    made = []

    class Recording(receive_module.Transit):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(receive_module, "Transit", Recording)
    return made


def _hint(port: int, priority: float | None = None) -> dict:
    h = {"type": "direct-tcp-v1", "hostname": "127.0.0.1", "port": port}
    if priority is not None:
        h["priority"] = priority
    return h


def _transit(hints: list) -> bytes:
    return json.dumps({"transit": {"abilities-v1": xfer.ABILITIES, "hints-v1": hints}},
                      separators=(",", ":")).encode()


async def test_ten_thousand_hints_only_max_hints_are_used(servers, out, receiver_transits):
    async with counting_listener() as (port, count):
        def many(t):
            hints = [t.direct[0].to_json()] + [_hint(port, i) for i in range(1, 100)]
            hints += [{"type": "relay-v1", "hints": [_hint(port, -i) for i in range(40)]}] * 10
            filler = [{"type": "direct-tcp-v1", "hostname": "127.1", "port": 9}, 0]  # valid, and garbage
            hints += [filler[i % 2] for i in range(10_000 - len(hints))]
            body = _transit(hints)
            assert len(hints) == 10_000 and 2 * len(body) + 200 < 1 << 20  # fits the mailbox message limit
            return body

        outcome, _ = await duel(servers, out, transit=[many], offer=file_offer("f", 3), data=payload(b"abc"))
        assert isinstance(outcome, Result), outcome
        assert (out / "f").read_bytes() == b"abc"
        (t,) = receiver_transits
        assert len(t.their_direct) <= xfer.MAX_HINTS and len(t.their_relays) <= xfer.MAX_HINTS
        assert count[0] <= xfer.MAX_HINTS


async def test_many_transit_messages_do_not_add_up_past_max_hints(servers, out, receiver_transits):
    async with counting_listener() as (port, count):
        first = [lambda t: _transit([t.direct[0].to_json()])]
        more = [_transit([_hint(port, m * 100 + i) for i in range(xfer.MAX_HINTS)]) for m in range(40)]
        outcome, _ = await duel(servers, out, transit=first + more, offer=file_offer("f", 3), data=payload(b"abc"))
        assert isinstance(outcome, Result), outcome
        (t,) = receiver_transits
        assert len(t.their_direct) <= xfer.MAX_HINTS, len(t.their_direct)
        assert count[0] <= xfer.MAX_HINTS, count[0]


GARBAGE_HINTS = [
    None, 5, "tcp:127.0.0.1:1", [], {}, {"type": None}, {"type": "tor-tcp-v1", "hostname": "x.onion", "port": 80},
    {"type": "direct-tcp-v1"}, {"type": "direct-tcp-v1", "hostname": 127, "port": 1},
    {"type": "direct-tcp-v1", "hostname": "127.0.0.1", "port": "1"},
    {"type": "direct-tcp-v1", "hostname": "127.0.0.1", "port": 0},
    {"type": "direct-tcp-v1", "hostname": "127.0.0.1", "port": 70000},
    {"type": "direct-tcp-v1", "hostname": "127.0.0.1", "port": True},
    {"type": "direct-tcp-v1", "hostname": "127.0.0.1", "port": -1},
    {"type": "direct-tcp-v1", "hostname": "", "port": 1},
    {"type": "direct-tcp-v1", "hostname": "127.0.0.1 evil", "port": 1},
    {"type": "direct-tcp-v1", "hostname": "a" * 300, "port": 1},
    {"type": "relay-v1"}, {"type": "relay-v1", "hints": "127.0.0.1:1"}, {"type": "relay-v1", "hints": [None, 3]},
    {"type": "relay-v1", "hints": [{"type": "relay-v1", "hints": []}]},
]


async def test_hints_of_garbage_types_are_ignored(servers, out, receiver_transits):
    def garbage(t):
        good = t.direct[0].to_json()
        good["priority"] = float("nan")  # a bad priority is only reset
        return json.dumps({"transit": {"abilities-v1": "all of them", "hints-v1": GARBAGE_HINTS + [good]}}).encode()

    outcome, _ = await duel(servers, out, transit=[garbage], offer=file_offer("f", 3), data=payload(b"abc"))
    assert isinstance(outcome, Result), outcome
    (t,) = receiver_transits
    assert [(h.host, h.port) for h in t.their_direct] == [("127.0.0.1", t.their_direct[0].port)]
    assert t.their_relays == []


@pytest.mark.parametrize("transit", [[], "hints", {"hints-v1": "x"}, {"hints-v1": {"a": 1}}, None],
                         ids=["list", "string", "hints a string", "hints an object", "null"])
async def test_a_transit_message_of_the_wrong_shape_is_one_readable_error(servers, out, transit):
    outcome, _ = await duel(servers, out, transit=[{"transit": transit}], offer=file_offer("f", 3), grace=0.2)
    assert isinstance(outcome, PeerProtocolError), repr(outcome)
    assert "transit" in one_line(outcome)


async def test_a_mailbox_message_past_the_size_limit_is_one_readable_error(servers, out):
    outcome, _ = await duel(servers, out, transit=[b'{"transit": {}, "pad": "' + b"x" * (1 << 20) + b'"}'],
                            offer=file_offer("f", 3), grace=0.2)
    assert isinstance(outcome, PeerProtocolError) and "larger than" in one_line(outcome), repr(outcome)


async def test_junk_messages_before_the_offer_are_ignored(servers, out):
    junk = [{"answer": {"file_ack": "ok"}}, {"hello": 1}, {"transit": {"hints-v1": []}}, lambda t: t.message()]
    outcome, _ = await duel(servers, out, transit=junk, offer=file_offer("f", 3), data=payload(b"abc"))
    assert isinstance(outcome, Result), outcome
    assert (out / "f").read_bytes() == b"abc"


# == the command line ====================================================================================
CLI_CASES = {
    "bad name": (dict(offer=file_offer("../../etc/evil", 3)), []),
    "sender error with escapes": (dict(offer={"error": "x\n\x1b[2Jfake prompt$ "}), []),
    "not json": (dict(offer=b"\xffnope"), ["--quiet"]),
    "not a zip": (dict(offer=dir_offer("tree", 3000, 10, 1), data=payload(b"\x01" * 3000)), ["--quiet"]),
    "forged record": (dict(offer=file_offer("f", 1000), data=sealed(_flip)), ["--quiet"]),
}


@pytest.mark.parametrize("case", list(CLI_CASES), ids=list(CLI_CASES))
async def test_the_cli_prints_one_line_and_exits_1(servers, tmp_path, out, case):
    hostile, extra = CLI_CASES[case]
    mailbox, relay = servers
    code = new_code()
    seen = Seen()
    # (the hostile side waits for a receiver that first has to start a Python: not just one STEP)
    task = asyncio.create_task(hostile_sender(mailbox, code, seen, step=20, **hostile))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socketkit", "peer", "receive", code, "--yes", "--out", str(out), "--mailbox", mailbox,
        "--transit-relay", relay, "--advertise", "127.0.0.1", "--timeout", str(STEP), "--wait", str(STEP), *extra,
        cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 25)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await asyncio.wait([task], timeout=1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    err = stderr.decode()
    lines = err.splitlines()
    assert proc.returncode == 1, err
    assert len(lines) == 1 and lines[0].startswith("socketkit peer: "), err
    assert "\x1b" not in err and "Traceback" not in err
    assert stdout == b""
    assert not [p for p in out.iterdir() if not p.name.endswith(".part")]
