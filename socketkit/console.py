"""netcat-style console tools: `socketkit connect` and `socketkit listen` (stdin/stdout <-> socket)."""

from __future__ import annotations

import asyncio
import sys
from typing import BinaryIO

from socketkit.errors import SocketkitError
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint
from socketkit.net.limits import Limits
from socketkit.net.server import serve
from socketkit.net.stream import Stream


async def _stdin_to(stream: Stream, stdin: BinaryIO) -> None:
    loop = asyncio.get_running_loop()
    read = getattr(stdin, "read1", stdin.read)
    while data := await loop.run_in_executor(None, read, 65536):
        await stream.send(data)
    try:
        await stream.send_eof()
    except SocketkitError:
        pass  # TLS has no half-close: keep receiving until the peer closes


async def _to_stdout(stream: Stream, stdout: BinaryIO) -> None:
    async for chunk in stream:
        stdout.write(chunk)
        stdout.flush()


async def run_connect(endpoint: str | Endpoint, *, timeout: float = 10.0,
                      stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """Copy stdin to the socket and the socket to stdout until the peer closes."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    stream = await connect(endpoint, timeout=timeout)
    async with stream:
        sender = asyncio.ensure_future(_stdin_to(stream, stdin))
        try:
            await _to_stdout(stream, stdout)
        finally:
            sender.cancel()


async def echo_handler(stream: Stream) -> None:
    async for chunk in stream:
        await stream.send(chunk)


def print_handler(stdout: BinaryIO | None = None):
    out = stdout or sys.stdout.buffer

    async def handle(stream: Stream) -> None:
        async for chunk in stream:
            out.write(chunk)
            out.flush()

    return handle


async def run_listen(endpoints: list[str], *, echo: bool = False, limits: Limits | None = None,
                     ready=None, **options) -> None:
    handler = echo_handler if echo else print_handler()
    await serve(endpoints, handler, limits=limits, ready=ready, name="listen", **options)
