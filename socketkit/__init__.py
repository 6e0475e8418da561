"""socketkit: network sockets made real, fast and safe.

The three doors into the socket layer are `serve`/`start_server`, `connect` and `bind`.
"""

from socketkit import errors
from socketkit.net.connect import connect
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.server import Server, Stats, serve, start_server
from socketkit.net.stream import Stream


async def bind(endpoint, **options):
    """A UDP socket bound to `endpoint` (see socketkit.net.datagram)."""
    from socketkit.net.datagram import bind as _bind

    return await _bind(endpoint, **options)


__all__ = [
    "Endpoint", "Limits", "Server", "Stats", "Stream", "bind", "connect", "errors", "parse", "serve",
    "start_server",
]
__version__ = "0.1.0"
