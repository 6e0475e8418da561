"""The ASGI apps bench/web.py serves, the same ones for socketkit and for every peer.

`plaintext` is the TechEmpower-style "hello world": it does as little as an ASGI app can, so
what is measured is the server (HTTP parsing, the ASGI bridge, writing), not the app.

`static_files` is a factory (uvicorn --factory) for starlette's StaticFiles over the directory
named by $SOCKETKIT_BENCH_STATIC_DIR: the idiomatic way to serve files from a Python ASGI
stack, the peer for socketkit's --static. Starlette is imported only there, so the plaintext
app loads in any environment.

Both answer the lifespan protocol instead of raising on it: servers differ in how loudly they
complain about an app without lifespan support, and none of that noise should reach a run.
"""

from __future__ import annotations

import os
from typing import Any

BODY = b"Hello, world!"
# Shared, never mutated: the list is built once, as a real app would keep its constant headers.
HEADERS = [(b"content-type", b"text/plain"), (b"content-length", str(len(BODY)).encode())]
STATIC_DIR_ENV = "SOCKETKIT_BENCH_STATIC_DIR"

Scope = dict[str, Any]


async def _lifespan(receive, send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def plaintext(scope: Scope, receive, send) -> None:
    if scope["type"] == "http":
        # Fresh message dicts per request: the ASGI spec lets a server keep or alter what it is
        # given, and a shared dict would make that a bug in the benchmark rather than the server.
        await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)


def static_files():
    """uvicorn bench.apps:static_files --factory, with $SOCKETKIT_BENCH_STATIC_DIR set."""
    from starlette.staticfiles import StaticFiles

    directory = os.environ.get(STATIC_DIR_ENV)
    if not directory:
        raise RuntimeError(f"set {STATIC_DIR_ENV} to the directory to serve")
    return StaticFiles(directory=directory)
