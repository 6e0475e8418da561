"""Putting a directory and an app behind one server: `socketkit web [APP] --static DIR`."""

from __future__ import annotations

from typing import Any


def static_app(directory: str, app: Any = None, *, mount: str = "/", factory: bool = False) -> Any:
    """StaticFiles for `directory`, alone or mounted at `mount` in front of `app`."""
    from socketkit.web.config import load_app
    from socketkit.web.static import StaticFiles

    files = StaticFiles(directory)
    if app is None:
        return files
    inner = load_app(app, factory=factory) if isinstance(app, str) else app
    prefix = "/static" if mount in ("", "/") else "/" + mount.strip("/")

    async def mounted(scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] == "http" and (path == prefix or path.startswith(prefix + "/")):
            # ASGI (and uvicorn >= 0.26): `path` keeps the full path; `root_path` says what is mounted.
            sub = dict(scope)
            sub["root_path"] = scope.get("root_path", "") + prefix
            await files(sub, receive, send)
            return
        await inner(scope, receive, send)

    return mounted
