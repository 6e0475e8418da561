"""Typed errors for every layer of socketkit.

Each error names the problem and, where there is one, the endpoint and the limit that was hit, so the
CLI can print it as one readable line and a program can catch exactly what it cares about.
"""

from __future__ import annotations


class SocketkitError(Exception):
    """Base of every error socketkit raises on purpose."""

    def __init__(self, message: str, *, endpoint: object | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint

    def __str__(self) -> str:
        if self.endpoint is not None:
            return f"{self.endpoint}: {self.message}"
        return self.message


class EndpointError(SocketkitError, ValueError):
    """An endpoint URL could not be parsed; `part` names the piece that is wrong."""

    def __init__(self, text: str, part: str, why: str) -> None:
        super().__init__(f"bad endpoint {text!r}: {part}: {why}")
        self.text = text
        self.part = part
        self.why = why


class ConnectError(SocketkitError, ConnectionError):
    """No connection could be made to any address of the endpoint."""


class ListenError(SocketkitError, OSError):
    """A listener could not be opened (address in use, permission denied, ...)."""


class ClosedError(SocketkitError):
    """The stream was used after it was closed (by us)."""


class PeerResetError(SocketkitError, ConnectionResetError):
    """The peer reset the connection or it broke while we used it."""


class IncompleteReadError(SocketkitError, EOFError):
    """The peer closed before the requested amount of data (or the delimiter) arrived."""

    def __init__(self, message: str, *, partial: bytes = b"", endpoint: object | None = None) -> None:
        super().__init__(message, endpoint=endpoint)
        self.partial = partial


class DeadlineError(SocketkitError, TimeoutError):
    """An operation did not finish before its deadline."""

    def __init__(self, message: str, *, seconds: float | None = None, endpoint: object | None = None):
        super().__init__(message, endpoint=endpoint)
        self.seconds = seconds


class LimitError(SocketkitError):
    """A configured limit was exceeded; `limit` is the Limits field name, `value` its setting."""

    def __init__(self, message: str, *, limit: str, value: object, endpoint: object | None = None):
        super().__init__(f"{message} (limit {limit}={value})", endpoint=endpoint)
        self.limit = limit
        self.value = value


class LineTooLongError(LimitError):
    """`receive_until` found no delimiter within `max_size` bytes."""


class DatagramTooLargeError(LimitError):
    """A datagram larger than the socket or the protocol allows."""


class TLSError(SocketkitError):
    """A TLS handshake or certificate check failed; the message says why."""


class PeerError(SocketkitError):
    """A peer-to-peer exchange (socketkit peer, magic-wormhole's protocol) failed; the message says why."""


class WrongCodeError(PeerError):
    """The two sides used different codes: the key confirmation (the versions phase) failed."""


class PeerProtocolError(PeerError):
    """The mailbox server, the other side or the transit peer broke the protocol (bad JSON, a bad record...)."""


class TransferError(PeerError):
    """The transfer was refused or did not complete (the other side said no, left, or sent the wrong size)."""
