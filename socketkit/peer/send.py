"""`socketkit peer send`: offer a text, a file or a directory through a wormhole and send it over transit.

The order of messages is wormhole's (proto/wormhole_transfer.py describes them): after the code is
confirmed, our transit hints, then the offer; the receiver's transit hints and answer; then transit, the
data, and the receiver's ack with its sha256, which must equal ours.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from socketkit.errors import PeerError, TransferError
from socketkit.peer.files import Outgoing, offer_for
from socketkit.peer.mailbox import MailboxSession, mood_for
from socketkit.peer.options import PeerOptions, Result
from socketkit.peer.pipeline import Source
from socketkit.peer.progress import Progress
from socketkit.peer.transit import Pipe, Transit, relay_hint
from socketkit.proto import wormhole_transfer as xfer
from socketkit.proto.transit import AesGcmRecords
from socketkit.proto.wormhole import TRANSIT_KEY_PURPOSE
from socketkit.proto.wormhole_transfer import Offer

WORMHOLE_RECORD = 256 << 10


async def send(paths: list[str] | None = None, text: str | None = None, *, code: str | None = None,
               words: int = 2, options: PeerOptions | None = None,
               on_code: Callable[[str], None] | None = None) -> Result:
    """Send `text`, or the file/directory/paths in `paths`. `on_code` is called with the code as soon as
    it is known (print it for the person on the other side)."""
    opts = options or PeerOptions()
    if text is not None:
        outgoing = Outgoing(Offer("text", text=text), None, "text")
    else:
        outgoing = offer_for(list(paths or []))
    session = MailboxSession(opts.mailbox, app_versions=xfer.app_versions(opts.features), timeout=opts.timeout)
    error: BaseException | None = None
    try:
        await session.open(code, allocate=code is None, words=words)
        the_code = await session.code_allocated()
        if on_code is not None:
            on_code(the_code)
        return await _exchange(session, outgoing, the_code, opts)
    except BaseException as e:
        error = e
        raise
    finally:
        if outgoing.file is not None:
            outgoing.file.close()
        await session.close(mood_for(error))


async def _exchange(session: MailboxSession, outgoing: Outgoing, code: str, opts: PeerOptions) -> Result:
    theirs = await session.verified(opts.wait)
    common = set(opts.features) & xfer.their_features(theirs)
    offer = outgoing.offer
    transit: Transit | None = None
    try:
        if offer.kind != "text":
            transit = Transit(session.derive_key(TRANSIT_KEY_PURPOSE), is_sender=True,
                              relays=[relay_hint(opts.relay)] if opts.relay else [], listen=opts.listen,
                              advertise=opts.advertise, timeout=max(opts.timeout, 60.0))
            await transit.listen()
            await session.send_json(transit.message())
        await session.send_json(offer.to_message())
        while True:
            msg = await session.receive_json(opts.wait)
            if "transit" in msg and transit is not None:
                transit.add_hints(*xfer.parse_transit(msg["transit"]))
            answer = xfer.parse_answer(msg, offer.kind)
            if answer is None:
                continue
            if not answer.ok:
                raise TransferError(f"the receiver declined: {answer.error}")
            break
        if offer.kind == "text":
            opts.say("text message sent")
            return Result(code, "text", text=offer.text)
        assert transit is not None and outgoing.file is not None
        pipe = await transit.connect()
        try:
            return await _send_data(pipe, outgoing, answer, common, code, opts)
        finally:
            await pipe.aclose()
    finally:
        if transit is not None:
            await transit.aclose()


async def _send_data(pipe: Pipe, outgoing: Outgoing, answer: xfer.Answer, common: set[str], code: str,
                     opts: PeerOptions) -> Result:
    f = outgoing.file
    assert f is not None
    size = outgoing.offer.size
    hasher = hashlib.sha256()
    offset = 0
    if "resume-v1" in common and 0 < answer.offset <= size:
        # What the receiver kept must be exactly our first bytes; otherwise it all travels again.
        left = answer.offset
        f.seek(0)
        while left:
            chunk = f.read(min(left, 1 << 20))
            if not chunk:
                break
            hasher.update(chunk)
            left -= len(chunk)
        if left == 0 and hasher.hexdigest() == answer.prefix_sha256:
            offset = answer.offset
        else:
            hasher = hashlib.sha256()
    record_size = WORMHOLE_RECORD
    layer = "secretbox"
    if common:
        if "aes256gcm-v1" in common:
            layer = AesGcmRecords.name
            record_size = max(16 << 10, min(opts.record_size, 4 << 20))
        await pipe.send_record(xfer.start_record(offset, layer, record_size))
        pipe.use(layer)
    opts.say(f"Sending {outgoing.label} over {pipe.description}" + (f", resuming at byte {offset:,}" if offset else ""))
    progress = Progress(outgoing.label, size, initial=offset, out=opts.out, quiet=opts.quiet)
    started = time.monotonic()
    f.seek(offset)
    remaining = size - offset
    source = Source(f, hasher, remaining, record_size)
    send_record = pipe.send_record
    try:
        while remaining > 0:
            chunk = await source.next()
            if not chunk:
                raise TransferError(f"{outgoing.label} shrank while it was being sent")
            await send_record(chunk)
            progress.update(len(chunk))
            remaining -= len(chunk)
    finally:
        source.close()
    digest = hasher.hexdigest()
    try:
        ack = await pipe.receive_record(timeout=opts.wait)
    except PeerError:
        raise
    except Exception as e:  # noqa: BLE001 - the connection ended: one line for the person
        raise TransferError(f"the receiver left before acknowledging the transfer ({e})") from None
    theirs = xfer.parse_ack(ack)
    if theirs and theirs != digest:
        raise TransferError(f"the receiver got different bytes: sha256 {theirs}, sent {digest}")
    progress.close("sent", digest)
    return Result(code, outgoing.offer.kind, outgoing.offer.name, size, digest, offset,
                  time.monotonic() - started, pipe.description, layer, wire_bytes=pipe.stream.bytes_out)


__all__ = ["send"]
