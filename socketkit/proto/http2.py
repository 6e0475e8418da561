"""Sans-I/O HTTP/2 server connection (RFC 9113) on python-hyper's `h2`, with the limits nginx keeps.

    conn = ServerConnection(H2Limits())
    out = conn.start()                       # our SETTINGS: send first
    for event in conn.receive(data, now):    # h2's events, plus Refused(reason) when the peer is cut off
        ...
    conn.h2.send_headers(...); conn.h2.send_data(...); out = conn.data_to_send()

h2 does the framing, HPACK, stream states and flow-control accounting; this module adds what h2 leaves to
its user: our SETTINGS (concurrent streams, header list size, HPACK table size, windows), and rate limits
for the cheap frames a peer can make a server work for without asking for anything (the known HTTP/2
denial-of-service attacks, answered as nginx answers them: GOAWAY with ENHANCE_YOUR_CALM, then close):

- rapid reset (CVE-2023-44487): streams opened and reset by the client before their response ended;
- SETTINGS floods (CVE-2019-9515), PING floods (CVE-2019-9512), PRIORITY floods (CVE-2019-9513),
  empty-frame floods (CVE-2019-9518: zero-length DATA without END_STREAM);
- CONTINUATION floods (CVE-2024-27316 and kin): h2 holds at most 64 CONTINUATION frames of one header
  block and this module's header list limit bounds what they decode to; a header block that never ends is
  the I/O layer's request timeout;
- HPACK bombs: the decoded header list is bounded (`max_header_list_size`, enforced by hpack) and so is
  the table the peer may make us keep (`header_table_size`).

Each limit is a token bucket: `burst` frames at once, refilled at `rate` per second (`now` is passed in:
no clocks here). A stream past `max_concurrent_streams` is refused alone (RST_STREAM REFUSED_STREAM), as
nginx does; h2 would end the whole connection. The common body-less request skips h2's per-stream work
(http2_fast.py), and h2's HPACK and header checks are remembered per distinct head (http2_hpack.py).
"""

from __future__ import annotations

import collections
import dataclasses
import re

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from socketkit.proto.http2_fast import FastLane
from socketkit.proto.http2_hpack import _checked_request, _Decoder, _Encoder

__all__ = ["PREFACE", "H2Limits", "Refused", "ServerConnection"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


@dataclasses.dataclass(frozen=True)
class H2Limits:
    max_concurrent_streams: int = 128  # nginx: http2_max_concurrent_streams 128
    max_header_list_size: int = 64 * 1024  # decoded request header list (name + value + 32 per field)
    header_table_size: int = 4096  # the HPACK table the peer may make us keep
    initial_window_size: int = 256 * 1024  # per stream: request body bytes the peer may send ahead
    connection_window_size: int = 1024 * 1024  # all streams together
    max_frame_size: int = 16384
    # (burst, refill per second) of each kind of frame that asks the server for work without a request
    resets: tuple[int, float] = (256, 64.0)
    settings: tuple[int, float] = (32, 2.0)
    pings: tuple[int, float] = (32, 2.0)
    priorities: tuple[int, float] = (1024, 128.0)
    empty_frames: tuple[int, float] = (64, 8.0)


@dataclasses.dataclass(slots=True)
class Refused:
    """The peer broke a limit or the protocol: the GOAWAY is in data_to_send(); send it, then close."""

    reason: str
    error_code: int = ErrorCodes.ENHANCE_YOUR_CALM


class _Bucket:
    __slots__ = ("burst", "rate", "tokens", "at")

    def __init__(self, burst: int, rate: float, now: float) -> None:
        self.burst, self.rate, self.tokens, self.at = burst, rate, float(burst), now

    def take(self, now: float) -> bool:
        tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if tokens < 1:
            self.tokens = tokens
            return False
        self.tokens = tokens - 1
        return True


class ServerConnection:
    """One HTTP/2 connection, server side: `h2` for the protocol, buckets for the floods."""

    def __init__(self, limits: H2Limits | None = None, now: float = 0.0) -> None:
        self.limits = limits = limits or H2Limits()
        # Outbound heads are lowercased, stripped of hop-by-hop fields and checked by the web layer, once per
        # distinct head (http2_heads below); h2 would do it again for every response.
        config = h2.config.H2Configuration(client_side=False, header_encoding=None,
                                           validate_inbound_headers=True, normalize_inbound_headers=True,
                                           validate_outbound_headers=False, normalize_outbound_headers=False)
        self.h2 = h2.connection.H2Connection(config=config)
        self.h2.encoder = _Encoder(self.h2.encoder)  # type: ignore[assignment]
        self.h2.decoder = _Decoder(self.h2.decoder)  # type: ignore[assignment]
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: limits.max_header_list_size,
            h2.settings.SettingCodes.HEADER_TABLE_SIZE: limits.header_table_size,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: limits.initial_window_size,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: limits.max_frame_size,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
        })
        # Enforced from the first frame on, not only once the peer has acknowledged our SETTINGS.
        self.h2.decoder.max_header_list_size = limits.max_header_list_size
        self.h2.decoder.max_allowed_table_size = limits.header_table_size
        self.h2.max_inbound_frame_size = limits.max_frame_size
        self.fast = FastLane(self.h2, lambda headers: _checked_request(config, headers))
        self._resets = _Bucket(*limits.resets, now)
        self._settings = _Bucket(*limits.settings, now)
        self._pings = _Bucket(*limits.pings, now)
        self._priorities = _Bucket(*limits.priorities, now)
        self._empty = _Bucket(*limits.empty_frames, now)
        self.open: set[int] = set()  # streams whose response has not ended (a reset of one is "rapid")
        self.refused: Refused | None = None

    def start(self) -> bytes:
        self.h2.initiate_connection()
        # A stream past max_concurrent_streams is refused here, one at a time (RST_STREAM REFUSED_STREAM,
        # as nginx does); h2 would end the whole connection instead. So h2's own bound, never sent to the
        # peer, is set higher: only a peer that opens twice our limit in one read meets it.
        settings = getattr(self.h2.local_settings, "_settings", None)
        if isinstance(settings, dict):
            settings[h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS] = collections.deque(
                [2 * self.limits.max_concurrent_streams])
        extra = self.limits.connection_window_size - 65535
        if extra > 0:
            self.h2.increment_flow_control_window(extra)
        return self.h2.data_to_send()

    @property
    def header_block_pending(self) -> bool:
        """A HEADERS frame is waiting for its CONTINUATION frames (the I/O layer bounds that in time)."""
        return bool(getattr(self.h2.incoming_buffer, "_headers_buffer", None))

    def receive(self, data: bytes, now: float) -> list[object]:
        if self.refused is not None:
            return []
        try:
            events = self.fast.receive(data)
        except h2.exceptions.ProtocolError as e:
            # h2 queued a GOAWAY with the fitting code already (PROTOCOL_ERROR, COMPRESSION_ERROR, ...).
            code = getattr(e, "error_code", ErrorCodes.PROTOCOL_ERROR)
            return [self._refuse(f"protocol error: {e}", code, goaway=False)]
        refused = None
        for event in events:
            kind = type(event)
            if kind is h2.events.RequestReceived:
                if len(self.open) >= self.limits.max_concurrent_streams:
                    self.reset_stream(event.stream_id, ErrorCodes.REFUSED_STREAM)
                    refused = refused or set()
                    refused.add(event.stream_id)
                    continue
                self.open.add(event.stream_id)
            elif kind is h2.events.StreamReset:
                if not event.remote_reset:
                    self.open.discard(event.stream_id)
                elif event.stream_id in self.open:
                    self.open.discard(event.stream_id)
                    if not self._resets.take(now):
                        return [*events, self._refuse("too many streams reset by the client (rapid reset)")]
            elif kind is h2.events.RemoteSettingsChanged:
                if not self._settings.take(now):
                    return [self._refuse("too many SETTINGS frames")]
            elif kind is h2.events.PingReceived:
                if not self._pings.take(now):
                    return [self._refuse("too many PING frames")]
            elif kind is h2.events.PriorityUpdated:
                if not self._priorities.take(now):
                    return [self._refuse("too many PRIORITY frames")]
            elif kind is h2.events.DataReceived:
                if not event.flow_controlled_length and event.stream_ended is None and \
                        not self._empty.take(now):
                    return [self._refuse("too many empty DATA frames")]
        if refused:
            events = [e for e in events if getattr(e, "stream_id", None) not in refused]
        return events

    def _refuse(self, reason: str, code: int = ErrorCodes.ENHANCE_YOUR_CALM, goaway: bool = True) -> Refused:
        self.refused = Refused(reason, code)
        if goaway:
            try:
                self.h2.close_connection(error_code=code)
            except h2.exceptions.ProtocolError:
                pass
        return self.refused

    def ended(self, stream_id: int) -> None:
        """Our response on `stream_id` is complete (or we reset it): a later reset of it is not rapid."""
        self.open.discard(stream_id)

    # -- sending: what the I/O layer calls (h2's methods of the same names) ---------------------------
    # (a stream the fast lane took is answered by it; any other by h2)
    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end_stream: bool = False) -> None:
        if stream_id in self.fast.streams:
            self.fast.send_headers(stream_id, headers, end_stream)
        else:
            self.h2.send_headers(stream_id, headers, end_stream=end_stream)

    def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        if stream_id in self.fast.streams:
            self.fast.send_data(stream_id, data, end_stream)
        else:
            self.h2.send_data(stream_id, data, end_stream=end_stream)

    def send_whole(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Send `data` as one DATA frame if it fits in the frame size and both windows now; else False."""
        fast = self.fast
        if stream_id in fast.streams:
            return fast.send_whole(stream_id, data, end_stream)
        h2conn = self.h2
        if len(data) > h2conn.max_outbound_frame_size or len(data) > h2conn.local_flow_control_window(stream_id):
            return False
        h2conn.send_data(stream_id, data, end_stream=end_stream)
        return True

    def reset_stream(self, stream_id: int, error_code: int = 0) -> None:
        if stream_id in self.fast.streams:
            self.fast.reset_stream(stream_id, error_code)
        else:
            self.h2.reset_stream(stream_id, error_code)

    def acknowledge_received_data(self, size: int, stream_id: int) -> None:
        if stream_id not in self.fast.streams:  # (the fast lane's requests have no body)
            self.h2.acknowledge_received_data(size, stream_id)

    def local_flow_control_window(self, stream_id: int) -> int:
        if stream_id in self.fast.streams:
            return self.fast.window(stream_id)
        return self.h2.local_flow_control_window(stream_id)

    @property
    def max_outbound_frame_size(self) -> int:
        return self.h2.max_outbound_frame_size

    def close_connection(self, error_code: int = 0) -> None:
        self.h2.close_connection(error_code=error_code)

    def data_to_send(self) -> bytes:
        return self.h2.data_to_send()


_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+").fullmatch
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]").search
_HEADS: dict[tuple[object, ...], list[tuple[bytes, bytes]]] = {}


class LocalProtocolError(ValueError):
    """A response head that cannot be sent (a bad name or value)."""


def response_head(status: int, headers: object) -> list[tuple[bytes, bytes]]:
    """`:status` and the app's header fields as h2 should send them: names lowercased, hop-by-hop fields
    (meaningless in HTTP/2) dropped, values stripped; a name that is not a token or a value with control
    characters is refused. Remembered per distinct head (bounded), as the HTTP/1.1 writer does."""
    try:
        key: tuple[object, ...] | None = (status, *headers)  # type: ignore[misc]
        found = _HEADS.get(key)
    except TypeError:  # unhashable (lists as pairs): just do the work
        key = found = None
    if found is not None:
        return list(found)
    if not 100 <= status <= 999:
        raise LocalProtocolError(f"invalid status code {status!r}")
    fields = [(b":status", b"%d" % status)]
    for name, value in headers:  # type: ignore[attr-defined]
        name = bytes(name).lower()
        value = bytes(value).strip(b" \t")
        if name in _HOP:
            continue
        if not _TOKEN(name):
            raise LocalProtocolError(f"invalid header name {name!r}")
        if _BAD_VALUE(value):
            raise LocalProtocolError(f"invalid value for header {name!r}")
        fields.append((name, value))
    if key is not None:
        if len(_HEADS) >= 512:
            _HEADS.clear()
        _HEADS[key] = fields
    return list(fields)
