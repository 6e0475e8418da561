"""Blocking facade: `with socketkit.sync.connect("tcp://...") as s: s.send(b"..."); s.receive()`."""

from socketkit.net.sync import SyncStream, connect

__all__ = ["SyncStream", "connect"]
