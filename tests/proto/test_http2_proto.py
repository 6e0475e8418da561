"""proto/http2.py and its fast lane, sans-I/O: an h2 client on one side, our ServerConnection on the other.

The fast lane (http2_fast.py) must be invisible: every sequence of frames gets the same answers with it as
with h2 alone (checked side by side, with hypothesis choosing the sequences), and the frames it handles
itself for its streams follow h2's rules.
"""

from __future__ import annotations

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame as F
import pytest
from h2.errors import ErrorCodes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socketkit.proto.http2 import H2Limits, Refused, ServerConnection, response_head
from socketkit.proto.http2_hpack import _all_indexed

GET = [(b":method", b"GET"), (b":path", b"/x"), (b":scheme", b"http"), (b":authority", b"a")]


class Pair:
    """A client and our server, bytes carried between them by hand; the server answers what it is asked."""

    def __init__(self, fast: bool = True, limits: H2Limits | None = None, client_settings=None) -> None:
        self.server = ServerConnection(limits or H2Limits())
        self.server.fast.passthrough = not fast
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                              header_encoding=None))
        if client_settings:
            self.client.local_settings = h2.settings.Settings(client=True, initial_values=client_settings)
        self.client.initiate_connection()
        self.now = 0.0
        self.server_events: list = []
        self.client_events: list = []
        self.to_client(self.server.start())
        self.to_server(self.client.data_to_send())
        self.to_client(self.server.data_to_send())
        self.to_server(self.client.data_to_send())

    def to_server(self, data: bytes) -> list:
        events = self.server.receive(data, self.now) if data else []
        self.server_events += events
        return events

    def to_client(self, data: bytes) -> list:
        events = self.client.receive_data(data) if data else []
        self.client_events += events
        return events

    def exchange(self) -> None:
        self.to_server(self.client.data_to_send())
        self.to_client(self.server.data_to_send())
        self.to_server(self.client.data_to_send())

    def answer(self, sid: int, body: bytes = b"ok", status: int = 200) -> None:
        self.server.send_headers(sid, response_head(status, [(b"content-length", b"%d" % len(body))]))
        self.server.send_data(sid, body, end_stream=True)
        self.server.ended(sid)
        self.to_client(self.server.data_to_send())

    def get(self, headers=GET) -> tuple[int, list]:
        sid = self.client.get_next_available_stream_id()
        self.client.send_headers(sid, headers, end_stream=True)
        events = self.to_server(self.client.data_to_send())
        return sid, events


def responses(events: list) -> list:
    out = []
    for e in events:
        if isinstance(e, h2.events.ResponseReceived):
            out.append(("head", e.stream_id, dict(e.headers)[b":status"]))
        elif isinstance(e, h2.events.DataReceived):
            out.append(("data", e.stream_id, e.data))
        elif isinstance(e, h2.events.StreamReset):
            out.append(("reset", e.stream_id, e.error_code))
        elif isinstance(e, h2.events.StreamEnded):
            out.append(("end", e.stream_id))
        elif isinstance(e, h2.events.ConnectionTerminated):
            out.append(("goaway", e.error_code))
    return out


def test_the_fast_lane_takes_repeated_simple_requests():
    p = Pair()
    sid, events = p.get()  # the first request: h2 (the connection is not open yet)
    assert [type(e) for e in events] == [h2.events.RequestReceived, h2.events.StreamEnded]
    assert not p.server.fast.active(sid)
    p.answer(sid)
    sid, events = p.get()
    assert p.server.fast.active(sid)
    request = events[0]
    assert type(request) is h2.events.RequestReceived and request.stream_ended is events[1]
    assert request.headers == GET
    p.answer(sid, b"hello")
    assert responses(p.client_events)[-3:] == [("head", sid, b"200"), ("data", sid, b"hello"), ("end", sid)]
    assert not p.server.fast.active(sid) and p.server.h2.highest_inbound_stream_id == sid


def test_fast_streams_honour_flow_control_and_settings_changes():
    p = Pair(client_settings={h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 10})
    p.answer(p.get()[0])
    sid, _ = p.get()
    assert p.server.local_flow_control_window(sid) == 10
    p.server.send_headers(sid, response_head(200, []))
    p.server.send_data(sid, b"0123456789")
    with pytest.raises(h2.exceptions.FlowControlError):
        p.server.send_data(sid, b"x")
    p.to_client(p.server.data_to_send())
    p.client.increment_flow_control_window(5, sid)
    events = p.to_server(p.client.data_to_send())
    assert any(isinstance(e, h2.events.WindowUpdated) and e.stream_id == sid and e.delta == 5 for e in events)
    assert p.server.local_flow_control_window(sid) == 5
    p.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 30})
    p.exchange()
    assert p.server.local_flow_control_window(sid) == 25  # moved by the difference, as RFC 9113 6.9.2 says
    p.server.send_data(sid, b"y" * 25, end_stream=True)
    p.to_client(p.server.data_to_send())
    body = b"".join(e.data for e in p.client_events if isinstance(e, h2.events.DataReceived) and e.stream_id == sid)
    assert body == b"0123456789" + b"y" * 25


def test_a_fast_stream_reset_by_the_client_and_data_after_end_stream():
    p = Pair()
    p.answer(p.get()[0])
    sid, _ = p.get()
    p.client.reset_stream(sid, ErrorCodes.CANCEL)
    events = p.to_server(p.client.data_to_send())
    assert [(type(e), e.remote_reset) for e in events] == [(h2.events.StreamReset, True)]
    assert not p.server.fast.active(sid) and sid not in p.server.open
    # DATA on a stream whose request ended: h2 answers STREAM_CLOSED, and the lane lets the stream go.
    sid, _ = p.get()
    raw = F.DataFrame(sid)
    raw.data = b"late"
    events = p.to_server(raw.serialize())
    assert any(isinstance(e, h2.events.StreamReset) and e.stream_id == sid for e in events)
    p.to_client(p.server.data_to_send())
    assert ("reset", sid, ErrorCodes.STREAM_CLOSED) in responses(p.client_events)
    sid, _ = p.get()  # and the connection goes on
    p.answer(sid)
    assert ("end", sid) in responses(p.client_events)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("bad, code", [
    ([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b"Upper", b"x")], ErrorCodes.PROTOCOL_ERROR),
    ([(b":method", b"GET"), (b":scheme", b"http")], ErrorCodes.PROTOCOL_ERROR),
    ([(b":method", b"GET"), (b":path", b"/"), (b":scheme", b"http"), (b"connection", b"close")],
     ErrorCodes.PROTOCOL_ERROR),
])
def test_bad_request_heads_end_the_connection_in_both_lanes(fast, bad, code):
    p = Pair(fast=fast)
    p.answer(p.get()[0])
    encoder = p.client.encoder
    block = encoder.encode(bad)
    frame = F.HeadersFrame(3, flags=["END_HEADERS", "END_STREAM"])
    frame.data = block
    events = p.to_server(frame.serialize())
    assert len(events) == 1 and type(events[0]) is Refused and events[0].error_code == code
    p.to_client(p.server.data_to_send())
    assert responses(p.client_events)[-1] == ("goaway", code)


# -- the lane is invisible: the same answers with it and without it -----------------------------------

ACTIONS = st.lists(st.sampled_from(["get", "get-other", "answer", "reset", "window", "ping", "data-after-end",
                                    "priority", "settings"]), max_size=25)


def run(actions: list[str], fast: bool) -> list:
    p = Pair(fast=fast, limits=H2Limits(max_concurrent_streams=4))
    pending: list[int] = []
    for action in actions:
        if p.client.state_machine.state.name == "CLOSED":
            break
        gone = {e.stream_id for e in p.server_events if isinstance(e, h2.events.StreamReset)}
        pending = [sid for sid in pending if sid not in gone]
        if action in ("get", "get-other"):
            if p.client.open_outbound_streams >= p.client.remote_settings.max_concurrent_streams:
                continue
            headers = GET if action == "get" else [*GET[:1], (b":path", b"/other"), *GET[2:], (b"x-a", b"1")]
            sid, events = p.get(headers)
            if any(isinstance(e, h2.events.RequestReceived) and e.stream_id == sid for e in events):
                pending.append(sid)
        elif action == "answer" and pending:
            p.answer(pending.pop(0), b"body %d" % len(pending))
        elif action == "reset" and pending:
            sid = pending.pop()
            p.client.reset_stream(sid)
            p.server_events += p.to_server(p.client.data_to_send())
            p.server.ended(sid)
        elif action == "window" and pending and pending[0] in p.client.streams:
            p.client.increment_flow_control_window(7, pending[0])
            p.to_server(p.client.data_to_send())
        elif action == "ping":
            p.client.ping(b"12345678")
            p.to_server(p.client.data_to_send())
        elif action == "data-after-end" and pending:
            frame = F.DataFrame(pending.pop())
            frame.data = b"x"
            p.to_server(frame.serialize())
        elif action == "priority":
            frame = F.PriorityFrame(pending[0] if pending else 99)
            frame.stream_weight = 16
            p.to_server(frame.serialize())
        elif action == "settings":
            p.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 100})
            p.to_server(p.client.data_to_send())
        p.to_client(p.server.data_to_send())
        p.to_server(p.client.data_to_send())
    for sid in pending:
        if p.server.refused is None and p.client.state_machine.state.name != "CLOSED":
            try:
                p.answer(sid)
            except h2.exceptions.ProtocolError:
                pass
    seen = [(type(e).__name__, getattr(e, "stream_id", None)) for e in p.server_events
            if not isinstance(e, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged))]
    return [seen, responses(p.client_events)]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ACTIONS)
def test_the_fast_lane_answers_as_h2_does(actions):
    assert run(actions, fast=True) == run(actions, fast=False)


def test_a_length_without_a_body_reaches_the_web_layer_alike():
    # h2 does not refuse `content-length: 5` on a HEADERS frame that ends the stream; neither does the lane
    # (the web layer answers it 400: tests/web/test_http2.py).
    for fast in (True, False):
        p = Pair(fast=fast)
        p.answer(p.get()[0])
        sid, events = p.get([*GET, (b"content-length", b"5")])
        assert [type(e) for e in events] == [h2.events.RequestReceived, h2.events.StreamEnded]


def test_all_indexed_blocks():
    assert _all_indexed(b"\x82\x84\x86") and _all_indexed(b"\xff\x81\x01") and _all_indexed(b"")
    assert not _all_indexed(b"\x82\x40\x01a\x01b") and not _all_indexed(b"\x3f\xe1\x1f")
    assert not _all_indexed(b"\xff")  # an index that never ends is not a block of indexes
