"""Run a server from a command line or a script: --workers, --user, systemd sockets, start/stop hooks.

Services call `run_server()`; the CLI only turns flags into its arguments.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from socketkit.errors import SocketkitError
from socketkit.net import process
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.server import Server, _remove_stale_socket, serve

# An async factory called inside each worker's event loop: returns the handler and an async cleanup
# (run after the drain), and optionally a third item: an async hook run when the stop signal arrives,
# before the drain.
Setup = Callable[[], Awaitable[tuple[Any, ...]]]


def announce(server: Server, name: str = "listening on") -> None:
    # One write per line: with --workers several processes share stderr, and print() writes the text
    # and its newline separately, so their lines could interleave mid-line.
    for ep in server.endpoints:
        sys.stderr.write(f"{name} {ep}\n")
        sys.stderr.flush()


def run_server(
    endpoints: Sequence[str | Endpoint],
    setup: Setup,
    *,
    workers: int = 1,
    user: str | None = None,
    limits: Limits | None = None,
    loop: str = "auto",
    name: str = "server",
    refuse_message: bytes | None = None,
    ready: Callable[[Server], Any] | None = None,
    starter: Callable[..., Any] | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM; with `workers` > 1, in that many processes sharing the ports.
    `starter`: see `serve()` (a server of callback connections instead of Streams)."""
    from socketkit.net.loop import run

    eps = [parse(e) for e in endpoints]
    inherited = process.systemd_sockets()
    if inherited:
        eps = []  # systemd decided where we listen
    if workers < 1 or workers > 256:
        raise SocketkitError(f"workers must be between 1 and 256, got {workers}")

    def on_ready(server: Server) -> None:
        process.drop_privileges(user)
        (ready or announce)(server)

    async def main(listen: Sequence[Endpoint], sockets: Sequence[socket.socket], reuse_port: bool) -> None:
        handler, cleanup, *more = await setup()
        try:
            await serve(listen, handler, limits=limits, ready=on_ready, name=name, sockets=sockets,
                        reuse_port=reuse_port, refuse_message=refuse_message, on_stop=more[0] if more else None,
                        starter=starter)
        finally:
            if cleanup is not None:
                await cleanup()

    if workers == 1:
        run(main(eps, inherited, False), loop=loop)
        return 0
    eps, holders = process.reserve_ports(eps)
    shared = _bind_unix([e for e in eps if e.is_unix]) + inherited
    tcp = [e for e in eps if not e.is_unix]

    def worker(index: int) -> int:
        run(main(tcp, shared, True), loop=loop)
        return 0

    try:
        return process.run_workers(workers, worker)
    finally:
        for holder in holders:
            holder.close()


def _bind_unix(eps: Sequence[Endpoint]) -> list[socket.socket]:
    """Unix listeners have no SO_REUSEPORT: bind once here and let every worker accept on them."""
    socks = []
    for ep in eps:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not ep.is_abstract:
            _remove_stale_socket(ep.path)  # type: ignore[arg-type]
        s.bind(ep.socket_path)
        s.listen(2048)
        socks.append(s)
    return socks
