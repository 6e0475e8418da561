"""Regression tests for bugs a review found (each with the failure it used to show)."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import socketkit
import socketkit.web
from socketkit.net.limits import Limits

WAIT = 10.0


async def _wait(predicate, timeout: float = WAIT) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_client_that_never_reads_frees_its_slot_and_socket():
    """Used to: handler blocked in send forever, the connection slot taken for good, the transport
    kept (with megabytes queued) even after aclose()."""
    ended = asyncio.Event()

    async def flood(stream):
        try:
            while True:
                await stream.send(b"x" * 65536)
        finally:
            ended.set()

    limits = Limits(idle_timeout=0.3, drain_timeout=0.3, max_connections=2)
    server = await socketkit.start_server("tcp://127.0.0.1:0", flood, limits=limits)
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.connect(("127.0.0.1", server.endpoints[0].port))
    try:
        await _wait(lambda: server.stats.accepted == 1)
        transport = server.streams[0]._transport
        await asyncio.wait_for(ended.wait(), WAIT)  # the idle sweep closed it; the blocked send ended
        await _wait(lambda: server.stats.open == 0)
        await _wait(lambda: transport.is_closing() and transport.get_write_buffer_size() == 0
                    or transport.get_extra_info("socket") is None or _gone(transport))
    finally:
        client.close()
        await server.aclose(drain=0)


def _gone(transport) -> bool:
    sock = transport.get_extra_info("socket")
    try:
        return sock is None or sock.fileno() < 0
    except OSError:
        return True


async def test_pipelined_request_during_a_streaming_response_is_not_a_disconnect():
    """Used to: the next request, read while waiting for a disconnect, was reported as
    http.disconnect; a Starlette-style streaming app stopped and the response was cut."""
    seen: list[tuple[str, str]] = []

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()

        async def body():
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for i in range(3):
                await send({"type": "http.response.body", "body": b"chunk%d\n" % i, "more_body": True})
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b""})

        async def listen():
            seen.append((scope["path"], (await receive())["type"]))

        async with asyncio.TaskGroup() as tg:
            tasks = {tg.create_task(body()), tg.create_task(listen())}
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()

    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"], lifespan="off")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.server.endpoints[0].port)
        writer.write(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        await reader.readuntil(b"chunk0\n")
        writer.write(b"GET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        async with asyncio.timeout(WAIT):
            while data.count(b"0\r\n\r\n") < 2:
                data += await reader.read(65536)
        assert data.count(b"chunk2\n") == 2  # both responses whole
        writer.close()
    finally:
        await web.aclose(drain=0)


async def test_a_file_that_shrinks_during_sendfile_cuts_the_connection(tmp_path):
    """Used to: the short count was ignored, the connection stayed keep-alive and the client read the
    next response as the rest of the first body."""
    path = tmp_path / "f.bin"
    path.write_bytes(b"A" * 1000)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await receive()
        if scope["path"] == "/file":
            with open(path, "rb") as f:
                await send({"type": "http.response.start", "status": 200,
                            "headers": [(b"content-length", b"1000")]})
                os.truncate(path, 500)  # as a deploy or a log rotation would
                await send({"type": "http.response.zerocopysend", "file": f, "offset": 0, "count": 1000})
        else:
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"SECOND"})

    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"], lifespan="off")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.server.endpoints[0].port)
        writer.write(b"GET /file HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        async with asyncio.timeout(WAIT):
            try:
                while chunk := await reader.read(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        assert b"SECOND" not in data  # never served as part of the first body
        writer.close()
    finally:
        await web.aclose(drain=0)


async def test_cancellation_after_an_inline_step_cancels_what_the_handler_awaits():
    """Used to: a timeout expiring right after an inline step was thrown into the handler while the
    gather() it awaited kept running its children (plain asyncio cancels them)."""
    result: dict[str, str] = {}

    async def child():
        try:
            await asyncio.sleep(1.0)
            result["child"] = "completed"
        except asyncio.CancelledError:
            result["child"] = "cancelled"
            raise

    async def handler(stream):
        try:
            async with asyncio.timeout(0.2):
                await stream.receive()
                await asyncio.gather(child())
        except TimeoutError:
            result["handler"] = "timeout"

    server = await socketkit.start_server("tcp://127.0.0.1:0", handler)
    client = socket.socket()
    client.connect(("127.0.0.1", server.endpoints[0].port))
    try:
        await _wait(lambda: server.stats.accepted == 1)
        loop = asyncio.get_running_loop()
        # the request arrives, and the loop stalls past the handler's deadline in the same turn
        loop.call_soon(lambda: (client.sendall(b"go"), time.sleep(0.3)))
        await _wait(lambda: "handler" in result)
        await asyncio.sleep(0)
        assert result.get("child") != "completed"
    finally:
        client.close()
        await server.aclose(drain=0)


async def test_an_invalid_header_from_the_app_gives_a_500():
    """Used to: head_sent was set before the head was built, so the refusal became a reset."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-a", b"bad\r\nvalue")]})
        await send({"type": "http.response.body", "body": b"hi"})

    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"], lifespan="off")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.server.endpoints[0].port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        async with asyncio.timeout(WAIT):
            head = await reader.readuntil(b"\r\n")
        assert head.startswith(b"HTTP/1.1 500 ")
        writer.close()
    finally:
        await web.aclose(drain=0)


async def test_a_live_unix_socket_is_not_taken_over(tmp_path):
    """Used to: starting a second server on the same path unlinked the first one's live socket."""
    from socketkit.errors import ListenError

    path = tmp_path / "s.sock"

    async def echo(stream):
        async for chunk in stream:
            await stream.send(chunk)

    first = await socketkit.start_server(f"unix://{path}", echo)
    try:
        try:
            second = await socketkit.start_server(f"unix://{path}", echo)
        except ListenError as e:
            assert "in use" in str(e)
        else:
            await second.aclose(drain=0)
            raise AssertionError("a second server took over a live socket")
        async with await socketkit.connect(f"unix://{path}") as c:  # the first still answers
            await c.send(b"hi")
            assert await c.receive(timeout=WAIT) == b"hi"
    finally:
        await first.aclose(drain=0)
    # and a stale file (nobody listening) is still cleaned up
    server = await socketkit.start_server(f"unix://{path}", echo)
    await server.aclose(drain=0)


async def test_tls_handshake_timeout_is_a_deadline_error():
    """Used to: surfaced as PeerResetError on 3.11 (asyncio reports it as ConnectionAbortedError)."""
    from socketkit.errors import DeadlineError

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # accepts at the kernel level, never speaks TLS
    try:
        start = time.monotonic()
        try:
            await socketkit.connect(f"tls://127.0.0.1:{silent.getsockname()[1]}?verify=false",
                                    limits=Limits(handshake_timeout=0.3), timeout=WAIT)
        except DeadlineError:
            pass
        else:
            raise AssertionError("connected to a server that never answered the handshake")
        assert time.monotonic() - start < WAIT / 2
    finally:
        silent.close()


async def test_empty_lines_do_not_keep_a_web_connection_alive():
    """Used to: a CRLF now and then between requests moved bytes, so the idle sweep never fired."""

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    web = await socketkit.web.start(app, ["tcp://127.0.0.1:0"], lifespan="off")
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", web.server.endpoints[0].port)
        writer.write(b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")  # one leading empty line is fine
        async with asyncio.timeout(WAIT):
            assert (await reader.readuntil(b"ok")).startswith(b"HTTP/1.1 200 ")
        closed = False
        for _ in range(20):
            writer.write(b"\r\n")
            await writer.drain()
            try:
                if await asyncio.wait_for(reader.read(100), 0.1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            except ConnectionError:
                closed = True
                break
        assert closed, "a connection fed only empty lines stayed open"
        writer.close()
    finally:
        await web.aclose(drain=0)


async def test_bytes_arriving_after_a_cancel_are_not_stepped_into_the_handler():
    """A parked handler's Task cancelled, then bytes in the same loop iteration: as with a plain Task
    (whose read future Task.cancel() cancels), the handler sees the cancellation, not the bytes."""
    from socketkit.net.driver import Driver
    from socketkit.net.stream import Stream

    class Transport(asyncio.Transport):
        def __init__(self) -> None:
            super().__init__()
            self.out: list[bytes] = []

        def write(self, data) -> None:
            self.out.append(bytes(data))

        def get_extra_info(self, name, default=None):
            return default

        def set_write_buffer_limits(self, high=None, low=None) -> None:
            pass

        def is_closing(self) -> bool:
            return False

    stream = Stream()
    transport = Transport()
    stream.protocol.connection_made(transport)
    seen: list[object] = []

    async def echo(s: Stream) -> None:
        try:
            async for chunk in s:
                seen.append(chunk)
                await s.send(chunk)
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise

    driver = Driver(echo(stream))
    stream._driver = driver
    task = asyncio.ensure_future(driver.run())
    await _wait(lambda: driver.parked)
    done = asyncio.get_running_loop().create_future()

    def poke() -> None:  # from a loop callback, as data_received really runs: no task is current
        stream.protocol.data_received(b"a")  # stepped inline
        task.cancel()
        stream.protocol.data_received(b"b")  # must wait: the Task is being cancelled
        done.set_result(None)

    asyncio.get_running_loop().call_soon(poke)
    await done
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert seen == [b"a", "cancelled"] and transport.out == [b"a"]
