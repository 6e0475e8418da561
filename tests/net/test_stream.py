"""Stream over real sockets: receiving, lines, half-close, deadlines, closing, resets, addresses, backpressure."""

from __future__ import annotations

import asyncio
import select
import socket
import struct
import time
import uuid

import pytest
from helpers import (
    WAIT,
    echo,
    linux_only,
    needs_ipv6,
    raises_within,
    running_server,
    shrink_buffers,
    url,
    wait_for,
    wait_stable,
)

from socketkit import connect
from socketkit.errors import (
    ClosedError,
    DeadlineError,
    IncompleteReadError,
    LimitError,
    LineTooLongError,
    PeerResetError,
    SocketkitError,
)
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream

# asyncio's selector transport and uvloop both hand data_received at most 256 KiB at a time.
CHUNK = 256 * 1024


def sender(*parts: bytes, close: bool = True):
    """A handler that sends `parts` (waiting for one byte from the client between parts), then closes."""

    async def handle(stream: Stream) -> None:
        for i, part in enumerate(parts):
            if i:
                await stream.receive_exactly(1)
            await stream.send(part)
        if close:
            await stream.aclose()
        else:
            await stream.receive()

    return handle


# -- receiving ----------------------------------------------------------------------------------------
async def test_receive_returns_what_is_there_and_empty_at_eof():
    async with running_server(sender(b"hello")) as server:
        async with await connect(url(server)) as s:
            data = b""
            while len(data) < 5:
                chunk = await s.receive(timeout=WAIT)
                assert chunk
                data += chunk
            assert data == b"hello"
            assert await s.receive(timeout=WAIT) == b""
            assert await s.receive(timeout=WAIT) == b""  # EOF stays EOF
            assert s.at_eof


async def test_receive_respects_max_bytes():
    async with running_server(sender(b"abcdefgh")) as server:
        async with await connect(url(server)) as s:
            await wait_for(lambda: s.bytes_in == 8)
            assert await s.receive(3) == b"abc"
            assert await s.receive(3) == b"def"
            assert await s.receive(3) == b"gh"


async def test_receive_exactly_across_packets():
    async with running_server(sender(b"12", b"345", b"6789")) as server:
        async with await connect(url(server)) as s:
            task = asyncio.ensure_future(s.receive_exactly(9, timeout=WAIT))
            for expected in (2, 5):
                await wait_for(lambda e=expected: s.bytes_in >= e)
                assert not task.done()
                await s.send(b".")
            assert await task == b"123456789"


async def test_receive_until_delimiter_split_across_packets():
    async with running_server(sender(b"first\r", b"\nsecond\r\n")) as server:
        async with await connect(url(server)) as s:
            task = asyncio.ensure_future(s.receive_until(b"\r\n", timeout=WAIT))
            await wait_for(lambda: s.bytes_in == 6)   # b"first\r" is buffered, the '\n' not yet sent
            assert not task.done()
            await s.send(b".")
            assert await task == b"first\r\n"
            assert await s.receive_until(b"\r\n", timeout=WAIT) == b"second\r\n"


async def test_receive_until_line_too_long():
    async with running_server(sender(b"x" * 100 + b"\n", close=False)) as server:
        async with await connect(url(server)) as s:
            with pytest.raises(LineTooLongError) as info:
                await s.receive_until(b"\n", max_size=50, timeout=WAIT)
            err = info.value
            assert isinstance(err, LimitError)
            assert err.limit == "max_line" and err.value == 50


async def test_receive_until_delimiter_just_past_max_size_is_too_long():
    async with running_server(sender(b"abcd\n", close=False)) as server:
        async with await connect(url(server)) as s:
            await wait_for(lambda: s.bytes_in == 5)
            with pytest.raises(LineTooLongError):
                await s.receive_until(b"\n", max_size=4, timeout=WAIT)
            assert await s.receive_until(b"\n", max_size=5, timeout=WAIT) == b"abcd\n"


async def test_receive_until_default_max_is_limits_max_line():
    async with running_server(sender(b"y" * 40 + b"\n", close=False)) as server:
        async with await connect(url(server), limits=Limits(max_line=16)) as s:
            with pytest.raises(LineTooLongError) as info:
                await s.receive_until(timeout=WAIT)
            assert info.value.value == 16


async def test_incomplete_read_carries_partial_at_eof():
    async with running_server(sender(b"line\npartial")) as server:
        async with await connect(url(server)) as s:
            assert await s.receive_until(b"\n", timeout=WAIT) == b"line\n"
            with pytest.raises(IncompleteReadError) as info:
                await s.receive_until(b"\n", timeout=WAIT)
            assert info.value.partial == b"partial"
            assert isinstance(info.value, EOFError)


async def test_receive_exactly_incomplete_at_eof():
    async with running_server(sender(b"abc")) as server:
        async with await connect(url(server)) as s:
            with pytest.raises(IncompleteReadError) as info:
                await s.receive_exactly(10, timeout=WAIT)
            assert info.value.partial == b"abc"
            assert "3 of 10" in str(info.value)


async def test_lines_and_async_iteration():
    async with running_server(sender(b"a\nbb\n", b"ccc\nlast")) as server:
        async with await connect(url(server)) as s:
            got = []
            async for line in s.lines():
                got.append(line)
                if line == b"bb\n":
                    await s.send(b".")
            assert got == [b"a\n", b"bb\n", b"ccc\n", b"last"]

    payload = bytes(range(256)) * 1000
    async with running_server(sender(payload)) as server:
        async with await connect(url(server)) as s:
            chunks = [chunk async for chunk in s]
            assert b"".join(chunks) == payload and all(chunks)


async def test_unreceive_puts_bytes_back_in_front():
    async with running_server(sender(b"hello world\n", close=False)) as server:
        async with await connect(url(server)) as s:
            head = await s.receive_exactly(5, timeout=WAIT)
            s.unreceive(head)
            assert await s.receive_until(b"\n", timeout=WAIT) == b"hello world\n"


# -- half-close -----------------------------------------------------------------------------------------
async def test_send_eof_half_close_server_keeps_sending():
    async def handler(stream: Stream) -> None:
        received = b"".join([chunk async for chunk in stream])   # until the client's EOF
        for _ in range(50):  # keep sending after the client's EOF
            await stream.send(b"r" * 10_000)
        await stream.send(b"got %d\n" % len(received))

    async with running_server(handler) as server:
        async with await connect(url(server)) as s:
            await s.send(b"q" * 123_456)
            await s.send_eof()
            await s.send_eof()  # idempotent
            with pytest.raises(ClosedError):
                await s.send(b"more")
            data = b""
            while chunk := await s.receive(timeout=WAIT):
                data += chunk
            assert data == b"r" * 500_000 + b"got 123456\n"


# -- deadlines ------------------------------------------------------------------------------------------
async def test_receive_timeout_raises_deadline_error_and_stream_stays_usable():
    go = asyncio.Event()

    async def handler(stream: Stream) -> None:
        await go.wait()
        await stream.send(b"late\n")
        await stream.receive()

    async with running_server(handler) as server:
        async with await connect(url(server)) as s:
            took, err = await raises_within(DeadlineError, s.receive(timeout=0.2))
            assert isinstance(err, TimeoutError) and isinstance(err, SocketkitError)
            assert err.seconds == 0.2
            # Upper bounds: the timeout fired (maybe late on a loaded machine), it did not hang.
            assert 0.15 <= took < 8
            took, _ = await raises_within(DeadlineError, s.receive_until(b"\n", timeout=0.1))
            assert took < 8
            took, _ = await raises_within(DeadlineError, s.receive_exactly(3, timeout=0.1))
            assert took < 8
            go.set()
            assert await s.receive_until(b"\n", timeout=WAIT) == b"late\n"


async def test_deadline_block_bounds_several_calls_in_total():
    async def handler(stream: Stream) -> None:
        await stream.send(b"one\n")
        await stream.receive()   # then silence

    async with running_server(handler) as server:
        async with await connect(url(server)) as s:
            start = time.monotonic()
            with pytest.raises(DeadlineError) as info:
                with s.deadline(0.3):
                    assert await s.receive_until(b"\n") == b"one\n"
                    await s.receive_until(b"\n")  # never comes
            took = time.monotonic() - start
            assert isinstance(info.value, TimeoutError)
            assert 0.25 <= took < 8   # fired, maybe late on a loaded machine; not never
            # Outside the block there is no deadline left over: a per-call timeout still works.
            with pytest.raises(DeadlineError):
                await s.receive(timeout=0.05)


async def test_nested_deadline_shorter_wins():
    async with running_server(sender(b"", close=False)) as server:
        async with await connect(url(server)) as s:
            start = time.monotonic()
            # The outer deadline is far past the bound, so a loaded machine's lateness cannot pass for it.
            with pytest.raises(DeadlineError), s.deadline(20), s.deadline(0.1):
                await s.receive()
            assert time.monotonic() - start < 8


async def test_send_timeout_against_a_peer_that_does_not_read():
    release = asyncio.Event()

    async def handler(stream: Stream) -> None:
        shrink_buffers(stream, rcv=16 * 1024)
        await release.wait()

    async with running_server(handler) as server:
        async with await connect(url(server), limits=Limits(write_buffer=64 * 1024)) as s:
            shrink_buffers(s, snd=16 * 1024)
            with pytest.raises(DeadlineError) as info:
                for _ in range(10_000):   # ~640 MB at most: far past every buffer on the way
                    await s.send(b"z" * 65536, timeout=0.3)
            assert "send" in str(info.value)
            release.set()


# -- closing --------------------------------------------------------------------------------------------
async def test_close_and_aclose_are_idempotent_and_use_after_close_is_closed_error():
    async with running_server(echo) as server:
        s = await connect(url(server))
        await s.send(b"x")
        s.close()
        s.close()
        await s.aclose()
        await s.aclose()
        assert s.closed
        with pytest.raises(ClosedError):
            await s.send(b"after")
        with pytest.raises(ClosedError):
            await s.receive()
        with pytest.raises(ClosedError):
            s.send_nowait(b"after")
        s.abort()  # also harmless now
        await wait_for(lambda: server.stats.open == 0)


async def test_aclose_flushes_what_was_sent():
    got = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        got.set_result(b"".join([c async for c in stream]))

    async with running_server(handler) as server:
        s = await connect(url(server))
        await s.send(b"p" * 1_000_000)
        await s.aclose()
        assert len(await asyncio.wait_for(got, WAIT)) == 1_000_000


async def test_peer_reset_mid_stream_is_one_peer_reset_error():
    outcome = asyncio.get_running_loop().create_future()
    waiting = asyncio.Event()

    async def handler(stream: Stream) -> None:
        errors = []
        assert await stream.receive_exactly(5) == b"hello"
        waiting.set()
        for _ in range(3):
            try:
                await stream.receive()
            except Exception as e:   # noqa: BLE001 - we record exactly what the handler sees
                errors.append(e)
        outcome.set_result(errors)

    async with running_server(handler) as server:
        raw = socket.create_connection(("127.0.0.1", server.endpoints[0].port))
        try:
            raw.sendall(b"hello")
            await wait_for(waiting.is_set)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        finally:
            raw.close()   # with SO_LINGER 0: the server gets a RST
        errors = await asyncio.wait_for(outcome, WAIT)
        assert [type(e) for e in errors] == [PeerResetError] * 3
        assert isinstance(errors[0], ConnectionResetError)
        await wait_for(lambda: server.stats.open == 0)
        assert server.stats.errors == 0   # a reset is the peer's doing, not a handler failure


async def test_abort_resets_the_peer():
    outcome = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        await stream.receive_exactly(1)
        try:
            await stream.receive()
        except PeerResetError as e:
            outcome.set_result(e)
        else:
            outcome.set_result(None)

    async with running_server(handler) as server:
        s = await connect(url(server))
        await s.send(b"!")
        await wait_for(lambda: server.stats.bytes_in == 1)
        s.abort()
        assert isinstance(await asyncio.wait_for(outcome, WAIT), PeerResetError)


# -- addresses and families -----------------------------------------------------------------------------
async def test_local_and_peer_addresses():
    seen = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        seen.set_result((stream.local, stream.peer))
        await stream.receive()

    async with running_server(handler) as server:
        async with await connect(url(server)) as s:
            server_local, server_peer = await asyncio.wait_for(seen, WAIT)
            assert s.peer == server_local == ("127.0.0.1", server.endpoints[0].port)
            assert s.local == server_peer
            assert s.tls is None


async def _roundtrip(endpoint: str) -> Stream:
    s = await connect(endpoint)
    await s.send(b"ping\n")
    assert await s.receive_until(b"\n", timeout=WAIT) == b"ping\n"
    return s


async def test_ipv4_roundtrip():
    async with running_server(echo, "tcp://127.0.0.1:0") as server:
        async with await _roundtrip(url(server)) as s:
            assert s.local[0] == "127.0.0.1"


@needs_ipv6
async def test_ipv6_roundtrip():
    async with running_server(echo, "tcp://[::1]:0") as server:
        ep = server.endpoints[0]
        assert ep.host == "::1" and ep.port
        assert url(server) == f"tcp://[::1]:{ep.port}"
        async with await _roundtrip(url(server)) as s:
            assert s.peer[:2] == ("::1", ep.port)


async def test_unix_path_roundtrip(tmp_path):
    path = tmp_path / "s.sock"
    async with running_server(echo, f"unix://{path}"):
        assert path.exists()
        async with await _roundtrip(f"unix://{path}") as s:
            assert s.peer == str(path)
            assert s.endpoint.is_unix
    assert not path.exists()   # the server removes its socket file


@linux_only
async def test_unix_abstract_roundtrip():
    name = f"@socketkit-test-{uuid.uuid4().hex}"
    async with running_server(echo, f"unix://{name}") as server:
        assert server.endpoints[0].path == name
        async with await _roundtrip(f"unix://{name}") as s:
            assert s.peer in (b"\0" + name[1:].encode(), "\0" + name[1:])


# -- backpressure -----------------------------------------------------------------------------------------
async def test_slow_reader_blocks_the_sender_and_bounds_its_memory():
    """The server writes as fast as it can to a client that does not read: `send` blocks, the write
    buffer stays at write_buffer + one chunk, and the total sent stops growing."""
    limits = Limits(write_buffer=64 * 1024)
    piece = 64 * 1024
    state = {"sent": 0, "max_buffer": 0, "stream": None}
    stop = asyncio.Event()

    async def handler(stream: Stream) -> None:
        state["stream"] = stream
        shrink_buffers(stream, snd=32 * 1024)
        block = b"b" * piece
        while not stop.is_set():
            await stream.send(block)
            state["sent"] += piece
            state["max_buffer"] = max(state["max_buffer"], stream.write_buffer_size)

    async with running_server(handler, limits=limits) as server:
        async with await connect(url(server)) as s:
            shrink_buffers(s, rcv=32 * 1024)
            # First the send blocks for real; only then is a quiet spell the stall (a loaded machine can stop
            # this whole process for longer than wait_stable's quiet time before the buffers are full).
            await wait_for(lambda: state["stream"] is not None and state["stream"].writing_paused,
                           what="the server's send to block")
            stalled_at = await wait_stable(lambda: state["sent"], what="the sender to stall")
            sstream = state["stream"]
            await wait_for(lambda: sstream.writing_paused, what="the send to stay blocked")   # inside send()
            assert state["max_buffer"] <= limits.write_buffer + piece
            assert sstream.write_buffer_size <= limits.write_buffer + piece
            assert stalled_at < 16 * 1024 * 1024   # a few socket buffers, not "everything"
            # Reading releases the sender.
            got = 0
            while got < stalled_at + 4 * piece:
                got += len(await s.receive(timeout=WAIT))
            await wait_for(lambda: state["sent"] > stalled_at)
            stop.set()
            while data := await s.receive(timeout=WAIT):   # the handler ends, the server closes
                got += len(data)
            assert got == state["sent"]


async def test_fast_sender_to_a_server_that_does_not_read_is_held_back():
    limits = Limits(read_buffer=64 * 1024)
    COUNT = 200   # 12.5 MiB: more than the kernel buffers on the way can hold
    release = asyncio.Event()
    result = asyncio.get_running_loop().create_future()
    streams: list[Stream] = []

    async def handler(stream: Stream) -> None:
        shrink_buffers(stream, rcv=32 * 1024)
        streams.append(stream)
        await release.wait()
        total = 0
        while data := await stream.receive():
            total += len(data)
        result.set_result(total)

    async with running_server(handler, limits=limits) as server:
        s = await connect(url(server), limits=Limits(write_buffer=64 * 1024))
        sent = 0

        async def blast() -> None:
            nonlocal sent
            block = b"f" * 65536
            for _ in range(COUNT):
                await s.send(block)
                sent += len(block)
            await s.send_eof()

        task = asyncio.ensure_future(blast())
        try:
            await wait_for(lambda: streams)
            stalled_at = await wait_stable(lambda: sent, what="the client's sends to stall")
            server_stream = streams[0]
            assert not task.done()
            # Nothing was read by the handler: everything the server took from the socket is buffered.
            assert server_stream.bytes_in <= limits.read_buffer + CHUNK
            assert stalled_at < COUNT * 65536
            release.set()
            await asyncio.wait_for(task, WAIT)
            assert await asyncio.wait_for(result, WAIT) == COUNT * 65536
        finally:
            task.cancel()
            await s.aclose()


async def test_long_line_reads_past_the_read_buffer():
    """A line longer than read_buffer but within max_size must still arrive (reading resumes)."""
    line = b"L" * (300 * 1024) + b"\n"
    async with running_server(sender(line, close=False), limits=Limits(read_buffer=64 * 1024)) as server:
        async with await connect(url(server), limits=Limits(read_buffer=64 * 1024)) as s:
            assert await s.receive_until(b"\n", max_size=len(line), timeout=WAIT) == line


async def test_sending_to_a_peer_that_reset_raises_instead_of_spinning():
    """A handler that writes in a loop to a client that reset must get PeerResetError at once.

    asyncio's transport, once a write failed, drops later writes silently (it schedules
    connection_lost for the next loop iteration), and `send` only waits when writing is paused; so a
    handler that sends in a loop never yields and the whole event loop spins. The loop below is bounded
    so a failure shows as an assertion instead of a hung test run."""
    outcome = asyncio.get_running_loop().create_future()
    go = asyncio.Event()
    streams: list[Stream] = []

    async def handler(stream: Stream) -> None:
        streams.append(stream)
        await go.wait()   # wakes without the reader having seen the RST
        sends = 0
        try:
            while sends < 100_000:   # 100 MB of 1 KiB writes if nothing stops us
                sends += 1
                await stream.send(b"s" * 1024)
        except Exception as e:   # noqa: BLE001
            outcome.set_result((sends, e))
        else:
            outcome.set_result((sends, None))

    async with running_server(handler) as server:
        raw = socket.create_connection(("127.0.0.1", server.endpoints[0].port))
        await wait_for(lambda: streams)
        fd = streams[0].extra("socket").fileno()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
        # Block (bounded, without yielding to the loop) until the kernel has delivered the RST.
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLERR | select.POLLHUP)
        assert poller.poll(int(WAIT * 1000))
        go.set()
        sends, err = await asyncio.wait_for(outcome, WAIT)
        assert isinstance(err, PeerResetError), (sends, err)
        assert sends < 100


async def test_send_eof_on_a_reset_connection_is_a_socketkit_error():
    """The peer reset while we were not reading (our buffer full, reading paused): the half-close finds the
    socket gone (ENOTCONN) and says so as a PeerResetError, not a raw OSError."""
    from socketkit.errors import PeerResetError, SocketkitError

    gone = asyncio.Event()

    async def blast_then_reset(s):
        s.send_nowait(b"x" * (4 << 20))
        await asyncio.sleep(0.2)  # the client's read buffer fills and it stops reading
        s.abort()
        gone.set()

    async with running_server(blast_then_reset) as server:
        client = await connect(server.endpoints[0], limits=Limits(read_buffer=64 * 1024))
        try:
            await asyncio.wait_for(gone.wait(), WAIT)
            await asyncio.sleep(0.1)
            try:
                await client.send_eof()
            except SocketkitError as e:
                assert isinstance(e, PeerResetError) or "gone" in str(e) or "reset" in str(e).lower(), e
        finally:
            client.abort()


async def test_send_eof_when_the_kernel_says_enotconn_is_a_peer_reset():
    """The race the test above cannot always win (the reset lands between our checks and shutdown()):
    write_eof() raising ENOTCONN is faked here, as a fault that cannot be timed for real."""
    import errno

    from socketkit.errors import PeerResetError

    async with running_server(echo) as server:
        client = await connect(server.endpoints[0])
        try:
            real = client._transport

            class Refusing:  # uvloop's transport is a C type: wrap it rather than patch it
                def __getattr__(self, name):
                    return getattr(real, name)

                def write_eof(self):
                    raise OSError(errno.ENOTCONN, "Transport endpoint is not connected")

            client._transport = Refusing()
            with pytest.raises(PeerResetError, match="gone"):
                await client.send_eof()
            client._transport = real
        finally:
            client.abort()
