"""Events of the HTTP/1.1 server connection (`socketkit.proto.http1`), and its error type.

Plain slotted dataclasses: they are built once per request on the hot path, so no freezing (frozen
dataclasses pay for `object.__setattr__` on every field) and no validation beyond what the parser did.
"""

from __future__ import annotations

from dataclasses import dataclass

from socketkit.errors import SocketkitError


@dataclass(slots=True)
class Request:
    """A request head. `headers` keep their order; names are lowercased, values have OWS stripped."""

    method: bytes
    target: bytes  # the request-target exactly as sent
    path: str  # percent-decoded path ("" for CONNECT, "*" for OPTIONS *)
    raw_path: bytes
    query: bytes  # without the "?"
    http_version: str  # "1.0" or "1.1"
    headers: list[tuple[bytes, bytes]]
    keep_alive: bool  # what the client asked for; the response may still close
    expect_continue: bool  # HTTP/1.1 client waits for `continue_response()` before sending the body
    upgrade: bytes | None = None  # lowercased Upgrade value (b"websocket") of a valid upgrade request


@dataclass(slots=True)
class Data:
    """A piece of the request body, in order."""

    chunk: bytes


@dataclass(slots=True)
class EndOfMessage:
    """The request body is complete (trailer fields of chunked bodies are checked, then dropped)."""


@dataclass(slots=True)
class Error:
    """The client broke the protocol or a limit: send `error_response(status, reason)` and close."""

    status: int
    reason: str


@dataclass(slots=True)
class ConnectionClosed:
    """The peer closed its side (EOF). Mid-request it means the request will never be completed."""


Event = Request | Data | EndOfMessage | Error | ConnectionClosed

# Both carry no data, so one instance serves every message and no allocation happens per request.
END = EndOfMessage()
CLOSED = ConnectionClosed()


class LocalProtocolError(SocketkitError):
    """Our side (the application or the server) misused the connection: a response that does not fit
    the request, more body than Content-Length promised, a header that would split the response."""
