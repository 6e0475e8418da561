"""A small HTTP/2 client for the web tests: h2's client side on asyncio streams, plus raw frames (hyperframe)
for what a well-behaved client never sends. Every wait is bounded."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import hyperframe.frame as F

WAIT = 10.0


class H2Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 conn: h2.connection.H2Connection) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = conn
        self.events: list[Any] = []
        self.closed = False
        self.raw_in = bytearray()
        self.error: Exception | None = None  # what our h2 said about the server's bytes, if it refused them

    @classmethod
    async def open(cls, port: int, *, tls: bool = False, settings: dict[int, int] | None = None,
                   window: int | None = None) -> H2Client:
        ctx = None
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["h2"])
        async with asyncio.timeout(WAIT):
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        if tls:
            assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        if settings:  # in force from the start (h2 would otherwise apply them only once acknowledged)
            conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        conn.initiate_connection()
        if window:
            conn.increment_flow_control_window(window)
        client = cls(reader, writer, conn)
        await client.flush()
        return client

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def raw(self, data: bytes) -> None:
        self.writer.write(data)
        with contextlib.suppress(ConnectionError):
            await self.writer.drain()

    async def request(self, method: str = "GET", path: str = "/", headers: list[tuple[str, str]] = (),
                      body: bytes | None = None, end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        fields = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "test")]
        fields += list(headers)
        self.conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in fields],
                               end_stream=end and not body)
        if body:
            self.conn.send_data(sid, body, end_stream=end)
        await self.flush()
        return sid

    async def pump(self, timeout: float = WAIT) -> list[Any]:
        """Read once (bounded) and return the new events; [] at EOF (self.closed)."""
        async with asyncio.timeout(timeout):
            try:
                data = await self.reader.read(65536)
            except ConnectionResetError:
                data = b""
        if not data:
            self.closed = True
            return []
        self.raw_in += data
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.closed = True
            self.error = e
            events = []
        self.events += events
        await self.flush()
        return events

    async def until(self, pred, timeout: float = WAIT) -> Any:
        """Pump until an event satisfies `pred`; returns it (AssertionError if the connection ends first)."""
        async with asyncio.timeout(timeout):
            for event in self.events:
                if pred(event):
                    return event
            while True:
                events = await self.pump(timeout)
                for event in events:
                    if pred(event):
                        return event
                if self.closed:
                    raise AssertionError(f"connection closed; events: {self.events[-8:]}")

    async def response(self, sid: int, timeout: float = WAIT) -> tuple[dict[bytes, bytes], bytes, dict]:
        """(headers, body, trailers) of stream `sid`, acknowledging body bytes as they come."""
        headers: dict[bytes, bytes] = {}
        trailers: dict[bytes, bytes] = {}
        body = bytearray()
        done = False
        seen = 0
        async with asyncio.timeout(timeout):
            while not done:
                for event in self.events[seen:]:
                    seen += 1
                    if getattr(event, "stream_id", None) != sid:
                        continue
                    if isinstance(event, h2.events.ResponseReceived):
                        headers = dict(event.headers)
                    elif isinstance(event, h2.events.DataReceived):
                        body += event.data
                        self.conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.TrailersReceived):
                        trailers = dict(event.headers)
                    elif isinstance(event, h2.events.StreamEnded):
                        done = True
                    elif isinstance(event, h2.events.StreamReset):
                        raise AssertionError(f"stream {sid} reset: {event.error_code!r}")
                await self.flush()
                if not done:
                    await self.pump(timeout)
                    if self.closed:
                        raise AssertionError(f"connection closed before stream {sid} ended")
        return headers, bytes(body), trailers

    async def get(self, path: str, headers: list[tuple[str, str]] = ()) -> tuple[dict, bytes, dict]:
        return await self.response(await self.request("GET", path, headers))

    async def goaway(self, timeout: float = WAIT) -> Any:
        """Wait for the server's GOAWAY (ConnectionTerminated) and then for the end of the connection."""
        event = await self.until(lambda e: isinstance(e, h2.events.ConnectionTerminated), timeout)
        async with asyncio.timeout(timeout):
            while not self.closed:
                await self.pump(timeout)
        return event

    async def aclose(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(WAIT):
                await self.writer.wait_closed()

    async def __aenter__(self) -> H2Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def frame(kind: type, stream_id: int = 0, flags: tuple[str, ...] = (), **fields: Any) -> bytes:
    f = kind(stream_id)
    for flag in flags:
        f.flags.add(flag)
    for name, value in fields.items():
        setattr(f, name, value)
    return f.serialize()


__all__ = ["F", "H2Client", "frame"]
