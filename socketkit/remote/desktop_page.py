"""The desktop viewer's files: socketkit's page (index.html, desktop.js, desktop.css) and noVNC's library
(`novnc/core`, `novnc/vendor`, as its npm release ships them), served from memory with a strict CSP.

Only the files in the package are ever served (a fixed table built at start: no path from a request
reaches the file system), GET and HEAD only, and every page says `frame-ancestors 'none'`: a desktop
must not be framed by another site (clickjacking would click on it).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from importlib.resources.abc import Traversable

from socketkit.errors import SocketkitError
from socketkit.net.stream import Stream
from socketkit.proto.http1 import Request, ServerConnection

_TYPES = {".html": b"text/html; charset=utf-8", ".js": b"text/javascript; charset=utf-8",
          ".css": b"text/css; charset=utf-8", ".txt": b"text/plain; charset=utf-8"}
# connect-src 'self' covers ws:/wss: to the same host and port (CSP 3); noVNC draws the remote cursor
# from a data: URL; its inline style changes go through the CSSOM, which style-src does not govern.
_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
_COMMON = [(b"content-security-policy", _CSP), (b"x-content-type-options", b"nosniff"),
           (b"referrer-policy", b"no-referrer"), (b"x-frame-options", b"DENY"),
           (b"cross-origin-opener-policy", b"same-origin")]


class StaticFiles:
    """path -> (body, content type, etag) for every file under remote/static/desktop, loaded once."""

    def __init__(self) -> None:
        self.table: dict[str, tuple[bytes, bytes, bytes]] = {}

    def load(self) -> None:
        if self.table:
            return
        root = resources.files("socketkit.remote").joinpath("static", "desktop")
        self._walk(root, "")
        if "/index.html" not in self.table or "/novnc/core/rfb.js" not in self.table:
            raise SocketkitError("the desktop viewer's files are missing from the socketkit package")
        self.table["/"] = self.table["/index.html"]

    def _walk(self, node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = f"{prefix}/{child.name}"
            if child.is_dir():
                self._walk(child, name)
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            ctype = _TYPES.get(suffix, b"text/plain; charset=utf-8")  # LICENSE, AUTHORS
            body = child.read_bytes()
            etag = b'"%s"' % hashlib.sha256(body).hexdigest()[:20].encode()
            self.table[name] = (body, ctype, etag)

    async def respond(self, stream: Stream, conn: ServerConnection, request: Request) -> bool:
        """Answer one request; False when the connection is to be closed."""
        entry = self.table.get(request.path)
        headers = list(_COMMON)
        if request.method not in (b"GET", b"HEAD"):
            status, body = 405, b"only GET and HEAD here\n"
            headers += [(b"allow", b"GET, HEAD"), (b"content-type", b"text/plain; charset=utf-8")]
        elif entry is None:
            status, body = 404, b"not found\n"
            headers.append((b"content-type", b"text/plain; charset=utf-8"))
        else:
            body, ctype, etag = entry
            headers += [(b"content-type", ctype), (b"etag", etag), (b"cache-control", b"no-cache")]
            status = 200
            if any(n == b"if-none-match" and etag in v for n, v in request.headers):
                status, body = 304, b""
        try:
            await stream.send(conn.response(status, headers, body))
        except SocketkitError:
            return False
        return not stream.closed
