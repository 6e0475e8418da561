"""One `Limits` type shared by every server socketkit runs.

The defaults protect a server on the open internet: every buffer, line and wait is bounded.
"""

from __future__ import annotations

import dataclasses
import math


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    #: open connections per server; past it new connections are refused politely
    max_connections: int = 10_000
    #: seconds a connection may stay without receiving anything before it is closed (None: forever)
    idle_timeout: float | None = 300.0
    #: seconds a TLS handshake may take
    handshake_timeout: float = 10.0
    #: longest line `receive_until`/line iteration accepts by default
    max_line: int = 64 * 1024
    #: bytes buffered from the peer before we stop reading it (backpressure)
    read_buffer: int = 256 * 1024
    #: bytes queued towards the peer before `send` waits (backpressure)
    write_buffer: int = 256 * 1024
    #: HTTP-ish limits used by services
    max_header_size: int = 64 * 1024
    max_headers: int = 100
    max_body: int = 16 * 1024 * 1024
    #: seconds for one request (headers or command) to arrive once started
    request_timeout: float = 60.0
    #: seconds that open connections get to finish after shutdown begins
    drain_timeout: float = 10.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None and field.name == "idle_timeout":
                continue
            whole = field.type == "int"
            kinds = (int,) if whole else (int, float)
            if isinstance(value, bool) or not isinstance(value, kinds) or not 0 < value < math.inf:
                kind = "whole number" if whole else "number of seconds"
                raise ValueError(f"Limits.{field.name} must be a positive {kind}, got {value!r}")

    def replace(self, **changes: object) -> "Limits":
        return dataclasses.replace(self, **changes)
