"""socketkit.web: an ASGI HTTP/1.1 + WebSocket server and a static-file server.

    socketkit web main:app --listen tcp://0.0.0.0:8000
    socketkit web --static ./public
    socketkit.web.run(app, listen=["tcp://127.0.0.1:8000"])
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.server import Server, start_server
from socketkit.web.config import WEB_LIMITS, WebConfig, load_app
from socketkit.web.http import HTTPHandler
from socketkit.web.lifespan import Lifespan

DEFAULT_LISTEN = "tcp://127.0.0.1:8000"


def __getattr__(name: str) -> Any:
    if name == "StaticFiles":  # imported lazily: most apps never serve files through it
        from socketkit.web.static import StaticFiles

        return StaticFiles
    raise AttributeError(name)


class WebServer:
    """A running web server: its lifespan, its socket-layer Server, its counters."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.lifespan = Lifespan(config.app, config.lifespan)
        self.server: Server | None = None
        self.handler: HTTPHandler | None = None

    async def setup(self):
        """For socketkit.net.runner: start the lifespan, return the handler and the cleanup."""
        await self.lifespan.startup()
        state = self.lifespan.state if self.lifespan.supported else None
        return HTTPHandler(self.config, state), self.lifespan.shutdown

    async def start(self, listen: Sequence[str | Endpoint] = (DEFAULT_LISTEN,), **options: Any) -> Server:
        handler, _ = await self.setup()
        self.handler = handler
        self.server = await start_server(offer_h2(listen, self.config.http2), handler,
                                         limits=self.config.limits, name="web", **options)
        return self.server

    async def aclose(self, drain: float | None = None) -> None:
        if self.server is not None:
            await self.server.aclose(drain)
        await self.lifespan.shutdown()

    @property
    def requests(self) -> int:
        """Requests answered so far (HTTP/1.1, HTTP/2, files the server sent itself)."""
        return self.handler.requests if self.handler is not None else 0

    async def __aenter__(self) -> WebServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def offer_h2(listen: Sequence[str | Endpoint], http2: bool = True) -> list[Endpoint]:
    """The listeners, tls:// ones offering h2 and http/1.1 by ALPN unless their URL says `alpn=` itself."""
    eps = [parse(e) for e in listen]
    if not http2:
        return eps
    return [ep.with_options(alpn="h2,http/1.1") if ep.is_tls and ep.option("alpn") is None else ep for ep in eps]


async def start(app: Any, listen: Sequence[str | Endpoint] = (DEFAULT_LISTEN,), **config: Any) -> WebServer:
    """Start serving `app` in the running event loop; `await server.aclose()` to stop."""
    web = WebServer(WebConfig(app=app, **config))
    await web.start(listen)
    return web


def run(app: Any, listen: Sequence[str | Endpoint] | str = (DEFAULT_LISTEN,), *, workers: int = 1,
        user: str | None = None, loop: str = "auto", limits: Limits | None = None, **config: Any) -> int:
    """Serve `app` (an ASGI app, or "module:attr") until SIGINT/SIGTERM, as `socketkit web` does."""
    from socketkit.net.runner import run_server

    if isinstance(listen, (str, Endpoint)):
        listen = [listen]
    listen = offer_h2(listen, config.get("http2", True))
    limits = limits or WEB_LIMITS

    async def setup():
        target = load_app(app) if isinstance(app, str) else app
        ready = await WebServer(WebConfig(app=target, limits=limits, **config)).setup()
        logging.getLogger("socketkit.web").info(
            "app %s started (lifespan done); HTTP/2 %s", getattr(target, "__qualname__", type(target).__name__),
            "on (h2 by ALPN on tls://, h2c with prior knowledge)" if config.get("http2", True) else "off")
        return ready

    return run_server(listen, setup, workers=workers, user=user, limits=limits, loop=loop, name="web",
                      refuse_message=b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n"
                                     b"connection: close\r\n\r\n")


__all__ = ["DEFAULT_LISTEN", "HTTPHandler", "Lifespan", "WebConfig", "WebServer", "load_app", "run", "start"]
