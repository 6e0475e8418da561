"""socketkit peer against the real magic-wormhole: its `wormhole` CLI on the other end, its reference
mailbox server and transit relay in the middle, all on loopback. Both directions; text, an empty file, a
multi-megabyte file, a directory tree with non-ASCII names; direct, and forced through the relay."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from wormhole_support import finish, socketkit, tree_digest, wormhole

pytestmark = pytest.mark.slow


def _sk_flags(mailbox: str, relay: str, relayed: bool) -> list[str]:
    flags = ["--mailbox", mailbox, "--transit-relay", relay, "--advertise", "127.0.0.1", "--timeout", "20",
             "--wait", "60"]
    return flags + (["--no-listen"] if relayed else [])


@pytest.fixture
def tree(tmp_path) -> Path:
    root = tmp_path / "src" / "Fotos été"
    (root / "sub dir" / "ünïcödé").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n")
    (root / "sub dir" / "ünïcödé" / "日本語.bin").write_bytes(os.urandom(70_000))
    (root / "sub dir" / "zero").write_bytes(b"")
    return root


def test_text_both_ways(servers, tmp_path):
    mailbox, relay = servers
    sender = wormhole(mailbox, relay, "send", "--code", "21-text-one", "--text", "hello from wormhole ✓", cwd=tmp_path)
    rc, out, err = finish(socketkit("peer", "receive", "21-text-one", *_sk_flags(mailbox, relay, False), cwd=tmp_path))
    assert rc == 0, err
    assert out == "hello from wormhole ✓\n"
    assert finish(sender)[0] == 0

    sender = socketkit("peer", "send", "--text", "hello from socketkit ✓", "--code", "22-text-two",
                       *_sk_flags(mailbox, relay, False), cwd=tmp_path)
    rc, out, err = finish(wormhole(mailbox, relay, "receive", "22-text-two", cwd=tmp_path))
    assert rc == 0, err
    assert out.strip() == "hello from socketkit ✓"
    rc, _, err = finish(sender)
    assert rc == 0 and "text message sent" in err


@pytest.mark.parametrize("relayed", [False, True], ids=["direct", "relayed"])
@pytest.mark.parametrize("size", [0, 3_000_000], ids=["empty", "3MB"])
def test_files_both_ways(servers, tmp_path, relayed, size):
    mailbox, relay = servers
    data = os.urandom(size)
    (tmp_path / "payload.bin").write_bytes(data)
    code = f"3{size % 7}{int(relayed)}-file-one"
    # wormhole sends, socketkit receives
    out_dir = tmp_path / "got-from-wormhole"
    out_dir.mkdir()
    sender = wormhole(mailbox, relay, "send", "--no-listen", "--hide-progress", "--code", code, "payload.bin",
                      cwd=tmp_path)
    rc, out, err = finish(socketkit("peer", "receive", code, "--yes", "--out", str(out_dir),
                                    *_sk_flags(mailbox, relay, relayed), cwd=tmp_path))
    assert rc == 0, err
    assert (out_dir / "payload.bin").read_bytes() == data
    assert ("relay" in err) == relayed, err
    src_rc, _, src_err = finish(sender)
    assert src_rc == 0, src_err
    assert "Transfer complete" in src_err
    # socketkit sends, wormhole receives
    code2 = code.replace("one", "two")
    out_dir2 = tmp_path / "got-from-socketkit"
    out_dir2.mkdir()
    sender = socketkit("peer", "send", "payload.bin", "--code", code2, *_sk_flags(mailbox, relay, relayed), cwd=tmp_path)
    rc, out, err = finish(wormhole(mailbox, relay, "receive", "--no-listen", "--hide-progress", "--accept-file",
                                   code2, cwd=out_dir2))
    assert rc == 0, err
    assert (out_dir2 / "payload.bin").read_bytes() == data
    assert ("relay" in err) == relayed, err
    src_rc, _, src_err = finish(sender)
    assert src_rc == 0, src_err
    assert "sha256" in src_err


def test_directory_tree_both_ways(servers, tmp_path, tree):
    mailbox, relay = servers
    want = tree_digest(tree)
    out1 = tmp_path / "out1"
    out1.mkdir()
    sender = wormhole(mailbox, relay, "send", "--no-listen", "--hide-progress", "--code", "41-dir-one", str(tree),
                      cwd=tmp_path)
    rc, _, err = finish(socketkit("peer", "receive", "41-dir-one", "--yes", "--out", str(out1),
                                  *_sk_flags(mailbox, relay, False), cwd=tmp_path))
    assert rc == 0, err
    assert tree_digest(out1 / tree.name) == want
    assert finish(sender)[0] == 0

    out2 = tmp_path / "out2"
    out2.mkdir()
    sender = socketkit("peer", "send", str(tree), "--code", "42-dir-two", *_sk_flags(mailbox, relay, False),
                       cwd=tmp_path)
    rc, _, err = finish(wormhole(mailbox, relay, "receive", "--no-listen", "--hide-progress", "--accept-file",
                                 "42-dir-two", cwd=out2))
    assert rc == 0, err
    assert tree_digest(out2 / tree.name) == want
    rc, _, err = finish(sender)
    assert rc == 0, err


def test_wrong_code_is_one_line_on_both_sides(servers, tmp_path):
    mailbox, relay = servers
    sender = wormhole(mailbox, relay, "send", "--code", "51-right-code", "--text", "secret", cwd=tmp_path)
    rc, out, err = finish(socketkit("peer", "receive", "51-wrong-code", *_sk_flags(mailbox, relay, False),
                                    cwd=tmp_path))
    assert rc == 1
    assert out == ""
    assert err.strip().count("\n") == 0 and "key confirmation failed" in err, err
    src_rc, _, src_err = finish(sender)
    assert src_rc != 0
    assert "WrongPasswordError" in src_err or "key confirmation" in src_err.lower(), src_err
