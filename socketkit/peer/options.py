"""Settings shared by `peer send` and `peer receive`, and what they return."""

from __future__ import annotations

import dataclasses
import sys
from typing import TextIO

from socketkit.peer.mailbox import PUBLIC_MAILBOX
from socketkit.peer.transit import PUBLIC_RELAY
from socketkit.proto.wormhole_transfer import FEATURES


@dataclasses.dataclass
class PeerOptions:
    #: the mailbox (rendezvous) server; the public magic-wormhole one by default
    mailbox: str = PUBLIC_MAILBOX
    #: the transit relay offered to the other side (None: offer none; theirs are still used)
    relay: str | None = PUBLIC_RELAY
    #: listen for direct connections (off: only connect out, or through a relay)
    listen: bool = True
    #: the addresses our direct hints name (None: every interface's); e.g. ["127.0.0.1"]
    advertise: list[str] | None = None
    #: seconds for each network step (connecting, a reply from the server, a record)
    timeout: float = 30.0
    #: seconds to wait for the other side to show up, and for its final acknowledgement
    wait: float = 3600.0
    #: socketkit extensions we offer to socketkit peers (empty: behave exactly like wormhole)
    features: tuple[str, ...] = FEATURES
    #: plaintext bytes per record on our fast record layer (wormhole peers get 256 KiB records)
    record_size: int = 1 << 20
    #: no progress output at all
    quiet: bool = False
    #: where messages for the person go
    out: TextIO = dataclasses.field(default_factory=lambda: sys.stderr)

    def say(self, text: str) -> None:
        if not self.quiet:
            print(text, file=self.out, flush=True)


@dataclasses.dataclass
class Result:
    code: str
    kind: str                 # text, file, directory
    name: str = ""
    size: int = 0
    sha256: str = ""
    resumed_from: int = 0     # bytes that did not travel again
    seconds: float = 0.0
    route: str = ""           # how transit connected
    records: str = ""         # the record layer used
    text: str = ""
    path: str = ""            # where it was written (receiver)
    wire_bytes: int = 0       # bytes that crossed the transit connection in our direction of interest


__all__ = ["PeerOptions", "Result"]
