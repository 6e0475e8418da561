"""The common HTTP/2 request answered without h2's per-stream machinery: a whole request head with no body
(one HEADERS frame with END_HEADERS and END_STREAM, on a new stream of an open connection).

h2 is correct and thorough, and it costs ~150 us of Python per request on the machines here (stream state
machines, frame objects, event objects, header validation as generators): more than a whole HTTP/1.1
request through socketkit. So, as `http1_fast.py` does for HTTP/1.1, this module takes the common case and
leaves everything else to h2, unchanged:

- Incoming bytes are cut into frames here (h2 is only ever given whole frames, in order, so its own frame
  buffer stays empty). A HEADERS frame as above is taken; every other frame goes to h2 (batched).
- The taken request is decoded with h2's own HPACK decoder (the dynamic table stays the one h2 uses) and
  checked by h2's own header validation pipeline; its errors end the connection as h2 would end it.
  Then h2 is told the stream id is used (`highest_inbound_stream_id`), so any later frame for the stream
  that reaches h2 meets a closed stream, as it would had h2 answered it.
- Until its response ends, the stream's WINDOW_UPDATE and RST_STREAM frames are handled here; DATA or
  HEADERS on it (the client said END_STREAM) go to h2, which answers STREAM_CLOSED, and the stream is
  dropped here. PRIORITY frames always go to h2.
- The response is framed here (HEADERS with h2's HPACK encoder, DATA) into h2's own output buffer, within
  the stream's send window and h2's connection window (which this module debits), so frames leave in the
  order they were made.
"""

from __future__ import annotations

import struct
from typing import Any

import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

_HEADERS, _RST_STREAM, _PRIORITY, _WINDOW_UPDATE = 0x1, 0x3, 0x2, 0x8
_END_STREAM, _END_HEADERS = 0x1, 0x4
_MAX_WINDOW = 2**31 - 1
_PREFACE = 24


class FastLane:
    """Frames in front of one server-side `h2.connection.H2Connection` (see the module docstring)."""

    def __init__(self, conn: h2.connection.H2Connection, check: Any) -> None:
        self.h2 = conn
        self.check = check  # (headers) -> checked headers, h2's inbound pipeline (remembered)
        self.buffer = bytearray()  # the start of a frame not yet whole
        self.preface = _PREFACE  # bytes of the client preface still to pass to h2 untouched
        self.streams: dict[int, int] = {}  # our streams: id -> what we may still send on it
        self.passthrough = False  # after a frame h2 refuses by its header: h2 gets everything
        self.initial_window = conn.remote_settings.initial_window_size  # (kept up to date by _settings)

    def active(self, stream_id: int) -> bool:
        return stream_id in self.streams

    # -- receiving ----------------------------------------------------------------------------------
    def receive(self, data: bytes) -> list[Any]:
        h2conn = self.h2
        if self.passthrough:
            return h2conn.receive_data(data)
        events: list[Any] = []
        if self.preface:
            head = data[:self.preface]
            self.preface -= len(head)
            events += h2conn.receive_data(head)
            data = data[len(head):]
        buf = self.buffer
        buf += data
        n = len(buf)
        start = pos = 0
        limit = h2conn.max_inbound_frame_size
        streams = self.streams
        is_open = self._open()
        h2_ran = bool(events)
        while n - pos >= 9:
            length = (buf[pos] << 16) | (buf[pos + 1] << 8) | buf[pos + 2]
            if length > limit:
                # h2 refuses it from its header (FRAME_SIZE_ERROR): no waiting for a body that may never end
                self.passthrough = True
                if start < n:
                    events += h2conn.receive_data(bytes(buf[start:]))
                del buf[:]
                return events
            end = pos + 9 + length
            if end > n:
                break
            kind = buf[pos + 3]
            sid = _U32(buf, pos + 5)[0] & 0x7FFFFFFF
            if kind == _HEADERS:
                if buf[pos + 4] == _END_STREAM | _END_HEADERS and sid & 1 \
                        and sid > h2conn.highest_inbound_stream_id and is_open:
                    if start < pos:
                        events += h2conn.receive_data(bytes(buf[start:pos]))
                        start = pos
                        h2_ran = True
                        is_open = self._open()  # (h2 may have moved on)
                    if sid > h2conn.highest_inbound_stream_id and is_open:
                        events += self._request(sid, bytes(buf[pos + 9:end]))
                        start = end
                elif sid in streams:
                    self._drop(sid, events)  # h2 will say STREAM_CLOSED (END_STREAM came already)
            elif sid in streams:
                if kind == _WINDOW_UPDATE and length == 4:
                    if start < pos:
                        events += h2conn.receive_data(bytes(buf[start:pos]))
                        h2_ran = True
                        is_open = self._open()
                    start = end
                    self._window_update(sid, int.from_bytes(buf[pos + 9:end], "big") & 0x7FFFFFFF, events)
                elif kind == _RST_STREAM and length == 4:
                    if start < pos:
                        events += h2conn.receive_data(bytes(buf[start:pos]))
                        h2_ran = True
                        is_open = self._open()
                    start = end
                    del streams[sid]
                    events.append(h2.events.StreamReset(
                        stream_id=sid, error_code=_code(int.from_bytes(buf[pos + 9:end], "big")), remote_reset=True))
                elif kind != _PRIORITY:
                    self._drop(sid, events)  # DATA (or junk) after END_STREAM: h2 answers it
            pos = end
        if start < pos:
            events += h2conn.receive_data(bytes(buf[start:pos]))
            h2_ran = True
        del buf[:pos]
        if h2_ran:  # (a SETTINGS frame can only have come through h2)
            self._settings(events)
        return events

    def _open(self) -> bool:
        h2conn = self.h2
        state = h2conn.state_machine.state
        return (state is h2.connection.ConnectionState.SERVER_OPEN
                or state is h2.connection.ConnectionState.CLIENT_OPEN) \
            and not getattr(h2conn.incoming_buffer, "_headers_buffer", None)

    def _request(self, sid: int, block: bytes) -> list[Any]:
        h2conn = self.h2
        decoder = h2conn.decoder
        known = getattr(decoder, "requests", None)  # heads already decoded and checked, while they hold
        headers = known.get(block) if known is not None else None
        if headers is not None:
            headers = list(headers)
        else:
            try:
                headers = h2.connection._decode_headers(decoder, block)
                headers = self.check(headers)
            except h2.exceptions.ProtocolError as e:
                h2conn.highest_inbound_stream_id = sid
                h2conn.close_connection(error_code=getattr(e, "error_code", ErrorCodes.PROTOCOL_ERROR))
                raise
            if known is not None and block in decoder.lists:  # an all-indexed block: same bytes, same head
                known[block] = list(headers)
        h2conn.highest_inbound_stream_id = sid
        self.streams[sid] = self.initial_window
        ended = h2.events.StreamEnded(stream_id=sid)
        return [h2.events.RequestReceived(stream_id=sid, headers=headers, stream_ended=ended), ended]

    def _window_update(self, sid: int, increment: int, events: list[Any]) -> None:
        if not increment:
            self.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
            events.append(_reset_event(sid, ErrorCodes.PROTOCOL_ERROR))
            return
        window = self.streams[sid] + increment
        if window > _MAX_WINDOW:
            self.reset_stream(sid, ErrorCodes.FLOW_CONTROL_ERROR)
            events.append(_reset_event(sid, ErrorCodes.FLOW_CONTROL_ERROR))
            return
        self.streams[sid] = window
        events.append(h2.events.WindowUpdated(stream_id=sid, delta=increment))

    def _drop(self, sid: int, events: list[Any]) -> None:
        del self.streams[sid]
        events.append(_reset_event(sid, ErrorCodes.STREAM_CLOSED))

    def _settings(self, events: list[Any]) -> None:
        """A new SETTINGS_INITIAL_WINDOW_SIZE moves every stream's send window by the difference."""
        for event in events:
            if type(event) is h2.events.RemoteSettingsChanged:
                changed = event.changed_settings.get(h2.settings.SettingCodes.INITIAL_WINDOW_SIZE)
                if changed is not None and changed.original_value is not None:
                    delta = changed.new_value - changed.original_value
                    for sid in self.streams:
                        self.streams[sid] += delta
                self.initial_window = self.h2.remote_settings.initial_window_size

    # -- sending ------------------------------------------------------------------------------------
    def send_headers(self, sid: int, headers: list[tuple[bytes, bytes]], end_stream: bool) -> None:
        h2conn = self.h2
        block = h2conn.encoder.encode(headers)
        size = h2conn.max_outbound_frame_size
        out = h2conn._data_to_send
        if len(block) <= size:
            out += _frame(len(block), _HEADERS, _END_HEADERS | (_END_STREAM if end_stream else 0), sid) + block
        else:
            pieces = [block[i:i + size] for i in range(0, len(block), size)]
            out += _frame(len(pieces[0]), _HEADERS, _END_STREAM if end_stream else 0, sid) + pieces[0]
            for i, piece in enumerate(pieces[1:], 2):
                out += _frame(len(piece), 0x9, _END_HEADERS if i == len(pieces) else 0, sid) + piece
        if end_stream:
            del self.streams[sid]

    def send_data(self, sid: int, data: bytes, end_stream: bool) -> None:
        h2conn = self.h2
        n = len(data)
        if n > self.streams[sid] or n > h2conn.outbound_flow_control_window or n > h2conn.max_outbound_frame_size:
            raise h2.exceptions.FlowControlError(f"cannot send {n} bytes on stream {sid}")
        self.streams[sid] -= n
        h2conn.outbound_flow_control_window -= n
        h2conn._data_to_send += _frame(n, 0x0, _END_STREAM if end_stream else 0, sid) + data
        if end_stream:
            del self.streams[sid]

    def send_whole(self, sid: int, data: bytes, end_stream: bool) -> bool:
        """send_data when all of `data` fits in one frame and both windows now; False (nothing sent) if not."""
        h2conn = self.h2
        n = len(data)
        window = self.streams.get(sid)
        if window is None or n > window or n > h2conn.outbound_flow_control_window \
                or n > h2conn.max_outbound_frame_size:
            return False
        self.streams[sid] = window - n
        h2conn.outbound_flow_control_window -= n
        h2conn._data_to_send += _HEAD(n >> 16, n & 0xFFFF, 0x0, _END_STREAM if end_stream else 0, sid) + data
        if end_stream:
            del self.streams[sid]
        return True

    def window(self, sid: int) -> int:
        return min(self.streams[sid], self.h2.outbound_flow_control_window)

    def reset_stream(self, sid: int, error_code: int) -> None:
        self.streams.pop(sid, None)
        self.h2._data_to_send += _frame(4, _RST_STREAM, 0, sid) + int(error_code).to_bytes(4, "big")


_HEAD = struct.Struct(">BHBBL").pack
_U32 = struct.Struct(">L").unpack_from


def _frame(length: int, kind: int, flags: int, sid: int) -> bytes:
    return _HEAD(length >> 16, length & 0xFFFF, kind, flags, sid)


def _code(value: int) -> Any:
    try:
        return ErrorCodes(value)
    except ValueError:
        return value


def _reset_event(sid: int, code: int) -> h2.events.StreamReset:
    return h2.events.StreamReset(stream_id=sid, error_code=code, remote_reset=False)


__all__ = ["FastLane"]
