"""The mailbox's WebSocket client: socketkit.web.wsclient's, raising the peer errors (one line for the user)."""

from socketkit.errors import PeerError, PeerProtocolError
from socketkit.web.wsclient import WebSocketClient as _Client
from socketkit.web.wsclient import endpoint_of


class WebSocketClient(_Client):
    error = PeerError
    protocol_error = PeerProtocolError


__all__ = ["WebSocketClient", "endpoint_of"]
