"""Resume: an interrupted transfer between two socketkit peers continues where it stopped when the same
commands are run again; only the remainder crosses the wire (counted on the transit connection)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path

import pytest
from wormhole_support import finish, socketkit

from socketkit.errors import TransferError
from socketkit.peer.options import PeerOptions
from socketkit.peer.receive import receive
from socketkit.peer.send import send

SIZE = 160 << 20
pytestmark = pytest.mark.slow


def _opts(servers, **kw) -> PeerOptions:
    mailbox, relay = servers
    return PeerOptions(mailbox=mailbox, relay=relay, advertise=["127.0.0.1"], timeout=15, wait=30, quiet=True, **kw)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("resume-src") / "big.bin"
    with open(path, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(SIZE >> 20):
            f.write(hashlib.sha256(i.to_bytes(4, "big")).digest() + block[32:])
    return path


def _flags(servers) -> list[str]:
    mailbox, relay = servers
    return ["--mailbox", mailbox, "--transit-relay", relay, "--advertise", "127.0.0.1", "--timeout", "15",
            "--wait", "30", "--quiet"]


def _interrupt(servers, big: Path, out: Path, code: str, kill: str) -> int:
    """Start both sides as processes; kill `kill` (receiver|sender) once some data has arrived."""
    sender = socketkit("peer", "send", str(big), "--code", code, *_flags(servers), cwd=out)
    receiver = socketkit("peer", "receive", code, "--yes", "--out", str(out), *_flags(servers), cwd=out)
    part = out / "big.bin.part"
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            if part.exists() and part.stat().st_size >= SIZE // 5:
                break
            if receiver.poll() is not None:
                raise AssertionError(f"the receiver ended before it could be killed: {receiver.communicate()}")
            time.sleep(0.002)
        victim = receiver if kill == "receiver" else sender
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
    finally:
        for p in (sender, receiver):
            if p.poll() is None:
                finish(p, 30)
    have = part.stat().st_size
    assert SIZE // 5 <= have < SIZE, have
    return have


@pytest.mark.parametrize("kill", ["receiver", "sender"])
async def test_a_killed_transfer_resumes_with_only_the_rest_on_the_wire(servers, big, tmp_path, kill):
    have = await asyncio.to_thread(_interrupt, servers, big, tmp_path, f"61{len(kill)}-resume-me", kill)
    assert not (tmp_path / "big.bin").exists()
    code = f"62{len(kill)}-resume-again"
    sent, got = await asyncio.gather(
        send([str(big)], code=code, options=_opts(servers)),
        receive(code, out_dir=tmp_path, options=_opts(servers)),
    )
    assert got.resumed_from == sent.resumed_from == have
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()
    assert got.sha256 == sent.sha256 == hashlib.sha256(big.read_bytes()).hexdigest()
    assert not (tmp_path / "big.bin.part").exists()
    # only the remainder travelled: the rest plus record framing (4-byte length + 16-byte tag per MiB)
    rest = SIZE - have
    assert rest <= got.wire_bytes <= rest + 64 * (rest // (1 << 20) + 2) + 4096, (got.wire_bytes, rest)


async def test_a_partial_file_that_differs_is_sent_again_whole(servers, big, tmp_path):
    (tmp_path / "big.bin.part").write_bytes(b"not the same bytes" * 1000)
    code = "63-resume-mismatch"
    sent, got = await asyncio.gather(
        send([str(big)], code=code, options=_opts(servers)),
        receive(code, out_dir=tmp_path, options=_opts(servers)),
    )
    assert got.resumed_from == sent.resumed_from == 0
    assert got.wire_bytes >= SIZE
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()


async def test_plain_wormhole_behaviour_never_resumes(servers, big, tmp_path):
    """--plain (what a wormhole peer is to us): the partial file is ignored and everything travels."""
    part = tmp_path / "big.bin.part"
    part.write_bytes(big.read_bytes()[: 1 << 20])
    code = "64-resume-plain"
    sent, got = await asyncio.gather(
        send([str(big)], code=code, options=_opts(servers, features=())),
        receive(code, out_dir=tmp_path, options=_opts(servers)),
    )
    assert got.resumed_from == 0 and got.records == "secretbox"
    assert (tmp_path / "big.bin").read_bytes() == big.read_bytes()


async def test_a_cut_link_keeps_the_partial_and_says_so(servers, big, tmp_path):
    """The sender vanishes mid-transfer: the receiver reports a short transfer and keeps what arrived."""
    code = "65-cut-link"

    async def doomed_sender():
        task = asyncio.ensure_future(send([str(big)], code=code, options=_opts(servers)))
        part = tmp_path / "big.bin.part"
        for _ in range(3000):
            if part.exists() and part.stat().st_size > (8 << 20):
                break
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with pytest.raises(TransferError, match="run the same command again to resume"):
        await asyncio.gather(receive(code, out_dir=tmp_path, options=_opts(servers)), doomed_sender())
    assert (tmp_path / "big.bin.part").stat().st_size > 0
    assert not (tmp_path / "big.bin").exists()
