"""The chat's browser side: the page (plain HTML + JS, no build step) and IRC over WebSocket at ws/."""

from __future__ import annotations

from importlib import resources
from typing import Any

from socketkit.chat.server import ChatService
from socketkit.web.lifespan import answer_lifespan

_FILES = {
    "/": ("chat.html", b"text/html; charset=utf-8"),
    "/chat.js": ("chat.js", b"text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", b"text/css; charset=utf-8"),
}
_CSP = (b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
        b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class ChatWebApp:
    """ASGI app: GET / (page), /chat.js, /chat.css, and the WebSocket at /ws."""

    def __init__(self, service: ChatService) -> None:
        self.service = service
        self._cache: dict[str, bytes] = {}

    def _file(self, name: str) -> bytes:
        data = self._cache.get(name)
        if data is None:
            data = self._cache[name] = resources.files("socketkit.chat").joinpath("static", name).read_bytes()
        return data

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        path = scope.get("path", "/")
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):] or "/"
        if scope["type"] == "websocket":
            if path == "/ws":
                await self.service.handle_websocket(scope, receive, send)
            else:
                await send({"type": "websocket.close", "code": 1008})
            return
        entry = _FILES.get(path)
        if entry is None or scope["method"] not in ("GET", "HEAD"):
            body, status, ctype = b"not found\n", 404, b"text/plain; charset=utf-8"
        else:
            body, status, ctype = self._file(entry[0]), 200, entry[1]
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", ctype), (b"content-length", b"%d" % len(body)), (b"content-security-policy", _CSP),
            (b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-cache")]})
        await send({"type": "http.response.body", "body": body if scope["method"] != "HEAD" else b""})
