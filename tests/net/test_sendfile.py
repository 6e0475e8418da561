"""Stream.sendfile to readers slower than the disk: the bytes arrive whole and in order, every byte goes by
sendfile(2) (on uvloop the stream waits for the full socket to drain, on a duplicate of its descriptor,
instead of copying pieces through Python), and a reader that vanishes or never reads ends the send with a
clear error and leaves no descriptor behind."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket

import pytest
from helpers import WAIT, raises_within, running_server, shrink_buffers

from socketkit.errors import DeadlineError, PeerResetError, SocketkitError
from socketkit.net import sendfile as sendfile_mod
from socketkit.net.stream import Stream

SIZE = 6 * 1024 * 1024


def open_fds() -> int:
    """Sockets this process holds open (the loop may open other descriptors of its own on first use)."""
    count = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{name}").startswith("socket:")
        except OSError:
            pass
    return count


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big.bin"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


def uvloop_running() -> bool:
    return not isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop)


async def test_a_slow_reader_gets_every_byte_by_sendfile_alone(big_file, monkeypatch):
    path, digest = big_file
    copied: list[int] = []
    real_pread = os.pread
    monkeypatch.setattr(sendfile_mod.os, "pread", lambda fd, n, off: copied.append(n) or real_pread(fd, n, off))
    result: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        shrink_buffers(stream, snd=64 * 1024)  # the socket fills at once: the wait is what is tested
        with open(path, "rb") as f:
            result.set_result(await stream.sendfile(f))
        await stream.aclose()

    async with running_server(handler) as server:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(sock, ("127.0.0.1", server.endpoints[0].port))
        h, got, reads = hashlib.sha256(), 0, 0
        try:
            async with asyncio.timeout(WAIT * 4):
                while chunk := await loop.sock_recv(sock, 16 * 1024):
                    h.update(chunk)
                    got += len(chunk)
                    reads += 1
                    if reads % 32 == 0:
                        await asyncio.sleep(0.001)  # slower than the disk: the server's socket stays full
        finally:
            sock.close()
        assert got == SIZE and h.hexdigest() == digest
        assert await asyncio.wait_for(result, WAIT) == SIZE
    if uvloop_running():
        assert copied == [], f"{sum(copied)} bytes went through Python instead of sendfile"


async def test_a_reader_that_leaves_mid_file_ends_the_send_and_leaks_nothing(big_file):
    path, _ = big_file
    outcome: asyncio.Future[BaseException | int] = asyncio.get_running_loop().create_future()
    started = asyncio.Event()

    async def handler(stream: Stream) -> None:
        shrink_buffers(stream, snd=64 * 1024)
        with open(path, "rb") as f:
            started.set()
            try:
                outcome.set_result(await stream.sendfile(f))
            except SocketkitError as e:
                outcome.set_result(e)

    before = open_fds()
    async with running_server(handler) as server:
        sock = socket.create_connection(("127.0.0.1", server.endpoints[0].port))
        sock.setblocking(False)
        await asyncio.wait_for(started.wait(), WAIT)
        await asyncio.sleep(0.05)  # the server is now waiting on a full socket
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset
        got = await asyncio.wait_for(outcome, WAIT)
        assert isinstance(got, PeerResetError), got
    assert open_fds() <= before


async def test_a_reader_that_never_reads_meets_the_deadline(big_file):
    path, _ = big_file
    outcome: asyncio.Future[tuple[float, BaseException]] = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        shrink_buffers(stream, snd=64 * 1024)
        with open(path, "rb") as f, stream.deadline(0.3):
            outcome.set_result(await raises_within(DeadlineError, stream.sendfile(f)))

    before = open_fds()
    async with running_server(handler) as server:
        sock = socket.create_connection(("127.0.0.1", server.endpoints[0].port))
        try:
            took, err = await asyncio.wait_for(outcome, WAIT)
            # The deadline fires, not early; the upper bound only tells "fired late on a loaded machine"
            # from "never fired" (then the wait above runs out).
            assert 0.25 <= took < 8, took
            assert "send" in str(err)
        finally:
            sock.close()
    assert open_fds() <= before
