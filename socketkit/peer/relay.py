"""socketkit's own magic-wormhole servers: the mailbox (rendezvous) server and the transit relay.

    relay = await start_relay(RelayConfig())   # ws://127.0.0.1:4000/v1 and tcp://127.0.0.1:4001
    relay.stats(); await relay.aclose()
    await serve_relay(config)                  # until SIGINT/SIGTERM

Any magic-wormhole client works with them (`wormhole --relay-url ws://HOST:4000/v1 --transit-helper
tcp:HOST:4001 send ...`). The mailbox server is an ASGI app on socketkit's web server (relay_mailbox.py,
the protocol in proto/wormhole_server.py); the transit relay a plain TCP server (relay_transit.py,
proto/transit_relay.py). Nameplates, mailboxes and messages live in SQLite (relay_store.py) and survive a
restart. One process only: the state is in memory, so --workers would split it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from socketkit.errors import SocketkitError
from socketkit.net.endpoint import Endpoint
from socketkit.net.limits import Limits
from socketkit.net.loop import stop_on_signals
from socketkit.net.server import Server, start_server
from socketkit.peer.relay_mailbox import MailboxService
from socketkit.peer.relay_store import RelayStore, RelayStoreError
from socketkit.peer.relay_transit import TransitService
from socketkit.proto.transit_relay import TransitLimits, TransitRelay
from socketkit.proto.wormhole_channels import MailboxLimits
from socketkit.proto.wormhole_server import MailboxServer

__all__ = ["MailboxLimits", "Relay", "RelayConfig", "RelayError", "RelayLimits", "TransitLimits",
           "serve_relay", "start_relay"]

DEFAULT_MAILBOX = "tcp://127.0.0.1:4000"
DEFAULT_TRANSIT = "tcp://127.0.0.1:4001"
DB_NAME = "peer-relay.db"


class RelayError(SocketkitError):
    """The relay could not start (its database, its configuration); the message says why."""


@dataclasses.dataclass(frozen=True)
class RelayLimits:
    """Every bound of the two servers, with defaults for a server on the open internet."""

    mailbox: MailboxLimits = dataclasses.field(default_factory=MailboxLimits)
    transit: TransitLimits = dataclasses.field(default_factory=TransitLimits)
    #: WebSocket clients of the mailbox server, in all and from one address
    max_clients: int = 10_000
    clients_per_address: int = 50
    #: bytes of one WebSocket message (a frame or a fragmented message); must exceed mailbox.max_body
    ws_message: int = 2 << 20
    #: bytes of messages queued towards one client that does not read, before it is disconnected
    sendq: int = 16 << 20
    #: seconds between WebSocket pings, and how long a client may stay silent after one
    ws_ping_interval: float = 60.0
    ws_ping_timeout: float = 120.0
    #: open transit connections in all
    max_transit_connections: int = 10_000
    #: bytes buffered per direction of a transit pair on each side (read and write buffer): backpressure
    transit_buffer: int = 256 << 10
    #: seconds a transit pair may move no byte at all before it is closed
    transit_idle: float = 900.0
    #: seconds between expiry sweeps of idle mailboxes (None: a quarter of mailbox.expiry, at most 5 min)
    prune_interval: float | None = None
    #: usage summaries kept in the database (older ones are dropped)
    keep_usage: int = 100_000

    def __post_init__(self) -> None:
        if self.ws_message <= self.mailbox.max_body:
            raise ValueError(f"RelayLimits.ws_message ({self.ws_message}) must exceed mailbox.max_body "
                             f"({self.mailbox.max_body}): a message carries its body and more")


@dataclasses.dataclass
class RelayConfig:
    #: where the mailbox server listens (clients use ws://HOST:PORT/v1); empty: no mailbox server
    mailbox_listen: list[str] = dataclasses.field(default_factory=lambda: [DEFAULT_MAILBOX])
    #: where the transit relay listens (clients use tcp:HOST:PORT); empty: no transit relay
    transit_listen: list[str] = dataclasses.field(default_factory=lambda: [DEFAULT_TRANSIT])
    #: the SQLite file; None: peer-relay.db in the data directory; ":memory:": kept nowhere
    db_path: str | Path | None = None
    limits: RelayLimits = dataclasses.field(default_factory=RelayLimits)
    #: shown by every client on connecting
    motd: str | None = None
    #: clients older than this say so (the welcome's current_cli_version)
    advertise_version: str | None = None
    #: every client fails with this message (a server being retired)
    signal_error: str | None = None
    #: answer `list` with the nameplates in use (clients complete codes with it)
    allow_list: bool = True

    def welcome(self) -> dict[str, str]:
        welcome = {}
        if self.motd is not None:
            welcome["motd"] = self.motd
        if self.advertise_version is not None:
            welcome["current_cli_version"] = self.advertise_version
        if self.signal_error is not None:
            welcome["error"] = self.signal_error
        return welcome


class Relay:
    """A running mailbox server and transit relay (made by `start_relay`)."""

    def __init__(self, config: RelayConfig, store: RelayStore | None) -> None:
        self.config = config
        limits = config.limits
        self.store = store
        self.mailbox = MailboxService(
            MailboxServer(limits.mailbox, welcome=config.welcome(), allow_list=config.allow_list), store,
            sendq=limits.sendq, per_address=limits.clients_per_address)
        self.transit = TransitService(TransitRelay(limits.transit), store)
        self.mailbox_servers: list[Server] = []
        self.transit_servers: list[Server] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False

    async def _start(self) -> None:
        from socketkit.web.config import WebConfig
        from socketkit.web.http import HTTPHandler

        config, limits = self.config, self.config.limits
        if self.store is not None:
            self.mailbox.server.restore(*self.store.load())
        loop = asyncio.get_running_loop()
        if config.mailbox_listen:
            # No idle timeout: a client waiting for its partner is quiet for minutes; pings find dead ones.
            net = Limits(max_connections=limits.max_clients, idle_timeout=None, request_timeout=30.0,
                         max_body=64 * 1024)
            web = WebConfig(app=self.mailbox, limits=net, lifespan="off", ws_max_size=limits.ws_message,
                            ws_ping_interval=limits.ws_ping_interval, ws_ping_timeout=limits.ws_ping_timeout,
                            server_header=False)
            self.mailbox_servers.append(await start_server(
                list(config.mailbox_listen), HTTPHandler(web), limits=net, name="peer mailbox",
                refuse_message=b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"))
            interval = limits.prune_interval or min(300.0, limits.mailbox.expiry / 4)
            self._tasks.append(loop.create_task(self.mailbox.prune_forever(interval, limits.keep_usage),
                                                name="peer mailbox prune"))
        if config.transit_listen:
            buffer = limits.transit_buffer
            net = Limits(max_connections=limits.max_transit_connections, idle_timeout=limits.transit_idle,
                         read_buffer=buffer, write_buffer=buffer)
            self.transit_servers.append(await start_server(
                list(config.transit_listen), self.transit.handle, limits=net, name="peer transit"))
            self._tasks.append(loop.create_task(self.transit.tick_forever(), name="peer transit tick"))

    @property
    def mailbox_url(self) -> str | None:
        """ws://HOST:PORT/v1 of the first TCP or TLS listener of the mailbox server."""
        for server in self.mailbox_servers:
            for ep in server.endpoints:
                if not ep.is_unix:
                    return ("wss" if ep.is_tls else "ws") + _address(ep) + "/v1"
        return None

    @property
    def transit_url(self) -> str | None:
        """tcp://HOST:PORT of the first TCP listener of the transit relay (wormhole: --transit-helper tcp:HOST:PORT)."""
        for server in self.transit_servers:
            for ep in server.endpoints:
                if not ep.is_unix:
                    return "tcp" + _address(ep)
        return None

    def stats(self) -> dict[str, Any]:
        """Live counters for a status page."""
        mailbox, transit = self.mailbox.stats(), self.transit.stats()
        full = sum(server.stats.refused for server in self.mailbox_servers + self.transit_servers)
        return {
            "mailbox_clients": mailbox["websockets"],
            "nameplates": mailbox["nameplates"],
            "mailboxes": mailbox["mailboxes"],
            "messages": mailbox["messages"],
            "transit_handshaking": transit["handshaking"],
            "transit_waiting": transit["waiting"],
            "transit_paired": transit["relaying"],
            "transit_pairs": transit["pairs"],
            "bytes_relayed": transit["bytes_relayed"],
            "errors": mailbox["errors"] + mailbox["store_errors"] + transit["bad_handshakes"]
            + transit["impatient"],
            "refused": mailbox["refused"] + mailbox["ws_refused"] + mailbox["ws_dropped"] + transit["refused"]
            + full,
            "mailbox": mailbox,
            "transit": transit,
        }

    async def aclose(self, drain: float = 1.0) -> None:
        """Stop both servers (clients are told, state is kept on disk) and close the database."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        self.mailbox.close_all()
        for server in self.mailbox_servers + self.transit_servers:
            await server.aclose(drain)
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self.mailbox.persist()
        if self.store is not None:
            self.store.close()

    async def __aenter__(self) -> Relay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def _address(ep: Endpoint) -> str:
    host = ep.host or "127.0.0.1"
    return f"://[{host}]:{ep.port}" if ":" in host else f"://{host}:{ep.port}"


def _open_store(config: RelayConfig) -> RelayStore | None:
    path = config.db_path
    if path == ":memory:":
        return None
    if path is None:
        from socketkit.net.certs import data_dir

        path = data_dir() / DB_NAME
    try:
        return RelayStore(path)
    except RelayStoreError as e:
        raise RelayError(str(e)) from e


async def start_relay(config: RelayConfig | None = None) -> Relay:
    """Start the mailbox server and the transit relay in the running event loop."""
    config = config or RelayConfig()
    relay = Relay(config, _open_store(config))
    try:
        await relay._start()
    except BaseException:
        await relay.aclose(drain=0)
        raise
    return relay


def announce(relay: Relay) -> None:
    lines = [f"peer mailbox listening on {('wss' if ep.is_tls else 'ws') + _address(ep)}/v1"
             for s in relay.mailbox_servers for ep in s.endpoints if not ep.is_unix]
    lines += [f"peer mailbox listening on {ep}" for s in relay.mailbox_servers for ep in s.endpoints if ep.is_unix]
    lines += [f"peer transit relay listening on {ep}" for s in relay.transit_servers for ep in s.endpoints]
    for line in lines:
        sys.stderr.write(line + "\n")  # one write per line, as net.runner.announce
        sys.stderr.flush()


async def serve_relay(config: RelayConfig | None = None, *, ready: Callable[[Relay], Any] | None = None,
                      stop: asyncio.Event | None = None) -> None:
    """Run the relay until SIGINT/SIGTERM (or `stop` is set); `ready` (default: print the URLs) once up."""
    relay = await start_relay(config)
    try:
        with stop_on_signals(stop) as stopping:
            (ready or announce)(relay)
            await stopping.wait()
    finally:
        await relay.aclose()
