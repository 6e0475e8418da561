"""Byte pumps between streams: the heart of `socketkit relay` (a socat-like forwarder).

Each direction is one task that receives and sends; `send` waits while the far side reads slowly, so a
fast producer is held back by a slow consumer (backpressure both ways) and memory stays bounded.
"""

from __future__ import annotations

import asyncio
import logging

from socketkit.errors import ClosedError, PeerResetError, SocketkitError, TLSError
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream

log = logging.getLogger("socketkit.relay")


async def pump(src: Stream, dst: Stream, chunk: int = 65536) -> int:
    """Copy src to dst until src ends; then half-close dst (or close it when it cannot half-close).

    A reset, a TLS failure or a close on either side ends this direction and closes dst (which ends the
    other direction too): for a relay that is how a conversation ends, not a bug to log with a traceback.
    """
    moved = 0
    broken = False
    try:
        while data := await src.receive(chunk):
            await dst.send(data)
            moved += len(data)
    except (PeerResetError, ClosedError, TLSError):
        broken = True
    finally:
        try:
            if broken or dst._is_tls or src._error is not None:
                dst.close()
            else:
                await dst.send_eof()
        except SocketkitError:
            dst.close()
    return moved


async def splice(a: Stream, b: Stream) -> tuple[int, int]:
    """Pump both ways until both directions have ended (or one side fails)."""
    try:
        async with asyncio.TaskGroup() as tg:
            ab = tg.create_task(pump(a, b))
            ba = tg.create_task(pump(b, a))
        return ab.result(), ba.result()
    finally:
        a.close()
        b.close()


def relay_handler(target: str | Endpoint, *, limits: Limits | None = None, connect_timeout: float = 10.0):
    """A server handler that forwards every connection to `target`."""
    ep = parse(target)

    async def handle(client: Stream) -> None:
        try:
            upstream = await connect(ep, timeout=connect_timeout, limits=limits)
        except SocketkitError as e:
            log.warning("relay to %s failed for %s: %s", ep, client.peer, e)
            return
        await splice(client, upstream)

    return handle
