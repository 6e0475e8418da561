"""`socketkit up`: every service in one process, on unprivileged default ports, for a first look.

Each service registers a `Service` here; `up` starts them all, prints what listens where, and stops them
together on Ctrl-C. Services added later (web, mail, chat) append themselves to SERVICES.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

from socketkit.console import echo_handler
from socketkit.net.limits import Limits
from socketkit.net.loop import stop_on_signals
from socketkit.net.server import Server, start_server


@dataclasses.dataclass
class Running:
    name: str
    description: str
    servers: list[Server]
    #: lines printed under the service at start (how to point a client at it)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: the service's own live counters, shown beside the socket layer's
    details: Callable[[], dict[str, Any]] | None = None
    #: connections the socket layer does not see (a library owns them), and how to close one
    connections: Callable[[], list[dict[str, Any]]] | None = None
    close_connection: Callable[[Any], bool] | None = None

    @property
    def endpoints(self) -> list[str]:
        return [str(ep) for s in self.servers for ep in s.endpoints]


@dataclasses.dataclass
class Service:
    name: str
    description: str
    start: Callable[["UpContext"], Awaitable[list[Server]]]
    #: more `--listen NAME=URL` names the service takes (e.g. peer-transit for the relay's second port)
    extra_listeners: tuple[str, ...] = ()


@dataclasses.dataclass
class UpContext:
    host: str = "127.0.0.1"
    limits: Limits = dataclasses.field(default_factory=Limits)
    running: list[Running] = dataclasses.field(default_factory=list)
    overrides: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    landing: Any = None   # the web landing page, where services mount their pages
    closers: list[Any] = dataclasses.field(default_factory=list)  # extra async clean-ups, run at stop
    web: Any = None
    notes: dict[str, list[str]] = dataclasses.field(default_factory=dict)     # service -> lines for describe()
    dashboard: Any = None
    dashboard_interval: float = 1.0         # seconds between samples (tests make it short)
    dashboard_token: str | None = None      # required from non-loopback clients of the dashboard
    dashboard_client_certs: bool = False    # the dashboard's listeners verify client certificates (mTLS)
    details: dict[str, Callable[[], dict[str, Any]]] = dataclasses.field(default_factory=dict)
    # services whose library owns its connections (remote) list and close them themselves
    connections: dict[str, Callable[[], list[dict[str, Any]]]] = dataclasses.field(default_factory=dict)
    closers_by_id: dict[str, Callable[[Any], bool]] = dataclasses.field(default_factory=dict)

    def listen(self, service: str, default: str) -> list[str]:
        return self.overrides.get(service) or [default]


async def _start_echo(ctx: UpContext) -> list[Server]:
    return [await start_server(ctx.listen("echo", f"tcp://{ctx.host}:7007"), echo_handler, limits=ctx.limits,
                               name="echo")]


def status(ctx: UpContext) -> list[dict[str, object]]:
    """Each running service with its endpoints and the socket layer's live counters."""
    out = []
    for r in ctx.running:
        total = {"open": 0, "accepted": 0, "refused": 0, "bytes_in": 0, "bytes_out": 0, "errors": 0}
        for server in r.servers:
            stats = server.stats
            for key in total:
                total[key] += getattr(stats, key)
        row: dict[str, object] = {"name": r.name, "description": r.description, "endpoints": r.endpoints, **total,
                                  "notes": r.notes}
        if r.details is not None:
            details = {k: v for k, v in r.details().items() if not isinstance(v, dict)}
            # "units": the requests, messages, transfers or commands a service counts, charted per second
            row["units"] = details.pop("units", 0)
            # "dropped": clients the service closed for breaking a limit (a chat flood), charted as problems
            row["dropped"] = details.pop("dropped", 0)
            row["details"] = details
        else:
            row["units"] = row["dropped"] = 0
        out.append(row)
    return out


async def _start_web(ctx: UpContext) -> list[Server]:
    from socketkit.dashboard.app import DashboardApp
    from socketkit.dashboard.core import Dashboard
    from socketkit.web import WebServer
    from socketkit.web.config import WEB_LIMITS, WebConfig

    dash = Dashboard(lambda: status(ctx), lambda: ctx.running, interval=ctx.dashboard_interval)
    ctx.dashboard = dash
    ctx.landing = DashboardApp(dash, token=ctx.dashboard_token, client_certs=ctx.dashboard_client_certs)
    ctx.web = WebServer(WebConfig(app=ctx.landing, limits=WEB_LIMITS))
    servers = [await ctx.web.start(ctx.listen("web", f"tcp://{ctx.host}:8080"))]
    ctx.details["web"] = lambda: {"units": ctx.web.requests}  # requests answered
    await dash.start()

    async def stop_dashboard() -> None:
        ctx.landing.close()
        await dash.aclose()

    ctx.closers.append(stop_dashboard)
    return servers


SERVICES: list[Service] = [
    Service("web", "web server: the dashboard, and the pages of the services below", _start_web),
    Service("echo", "echo service (RFC 862 style): what you send comes back", _start_echo),
]


async def _start_mail(ctx: UpContext) -> list[Server]:
    from socketkit.mail.server import MailConfig, start
    from socketkit.net.certs import data_dir

    # A development sink: every recipient accepted, one Maildir per recipient under the data directory.
    mail = await start(MailConfig(maildir=data_dir() / "mail", accept_all=True),
                       ctx.listen("mail", f"tcp://{ctx.host}:2525"))
    if ctx.landing is not None:
        from socketkit.mail.inbox import Inbox

        inbox = Inbox(mail.store)
        ctx.landing.mount("/mail", inbox, "Mail inbox")

        async def end_live_streams() -> None:  # an open event stream would hold the web server's drain
            inbox.close()

        ctx.closers.append(end_live_streams)
    ctx.details["mail"] = lambda: {"units": mail.accepted, "not stored": mail.failed}  # messages stored
    return [mail.server]


SERVICES.append(Service("mail", "SMTP sink (any recipient) into Maildirs: socketkit mail send", _start_mail))


async def _start_chat(ctx: UpContext) -> list[Server]:
    from socketkit.chat.server import ChatConfig, ChatService
    from socketkit.chat.web import ChatWebApp
    from socketkit.net.certs import data_dir

    chat = ChatService(ChatConfig(data_dir=data_dir() / "chat"))
    servers = await chat.start(ctx.overrides.get("chat") or [f"tcp://{ctx.host}:6667", f"tls://{ctx.host}:6697"])
    ctx.closers.append(chat.aclose)
    from socketkit.dashboard.events import emit

    chat.core.observer = lambda kind, **fields: emit(kind, service="chat", **fields)
    ctx.details["chat"] = lambda: {"units": chat.core.lines, "dropped": chat.dropped, "users": len(chat.core.nicks),
                                   "channels": len(chat.core.channels)}
    ctx.connections["chat"] = lambda: _chat_connections(chat)
    ctx.closers_by_id["chat"] = lambda conn_id: _close_chat(chat, conn_id)
    if ctx.landing is not None:
        ctx.landing.mount("/chat", ChatWebApp(chat), "Chat (the same channels as IRC clients)")
    return servers


def _chat_connections(chat: Any) -> list[dict[str, Any]]:
    """IRC connections are callback connections (no Stream): the sockets view reads them here."""
    import time

    from socketkit.dashboard.sockets import address_text

    now = time.time()
    rows = []
    for server in chat.servers:
        for conn in server.connections:
            c = conn.client
            if c is None:
                continue
            peer = conn.peer
            info = {"nick": c.nick or "(registering)", "channels": len(c.channels)}
            if c.account:
                info["account"] = c.account
            if conn.write_buffer_size:
                info["queued"] = conn.write_buffer_size
            rows.append({"id": c.cid, "peer": address_text(peer), "local": address_text(conn.local),
                         "protocol": "irc over tls" if conn.tls else "irc over tcp",
                         "age": round(now - c.connected, 1), "bytes_in": conn.bytes_in, "bytes_out": conn.bytes_out,
                         "idle": round(now - c.last_active, 1) if c.last_active else 0.0, "info": info})
    return rows


def _close_chat(chat: Any, conn_id: Any) -> bool:
    for server in chat.servers:
        for conn in server.connections:
            if conn.client is not None and conn.client.cid == conn_id:
                conn.close()
                return True
    return False


SERVICES.append(Service("chat", "IRC server (6667, TLS 6697); browsers: the chat page", _start_chat))


async def _start_peer(ctx: UpContext) -> list[Server]:
    from socketkit.peer.relay import RelayConfig, start_relay

    relay = await start_relay(RelayConfig(
        mailbox_listen=ctx.overrides.get("peer") or [f"tcp://{ctx.host}:4000"],
        transit_listen=ctx.overrides.get("peer-transit") or [f"tcp://{ctx.host}:4001"]))
    ctx.closers.append(relay.aclose)
    helper = relay.transit_url.replace("tcp://", "tcp:", 1)
    ctx.notes["peer"] = [
        f"socketkit peer send|receive --mailbox {relay.mailbox_url} --transit-relay {relay.transit_url}",
        f"wormhole --relay-url {relay.mailbox_url} --transit-helper {helper} send|receive",
    ]
    def peer_details() -> dict[str, Any]:
        stats = relay.stats()
        return {**stats, "units": stats["mailbox"].get("messages_in", 0)}  # mailbox messages handled

    ctx.details["peer"] = peer_details
    return relay.mailbox_servers + relay.transit_servers


SERVICES.append(Service("peer", "magic-wormhole mailbox + transit relay (peers still default to the public one)",
                        _start_peer, ("peer-transit",)))


async def _start_remote(ctx: UpContext) -> list[Server]:
    import time
    from pathlib import Path

    from socketkit.dashboard.sockets import address_text
    from socketkit.remote.server import RemoteConfig, start_remote

    keys = Path.home() / ".ssh" / "authorized_keys"
    if not keys.is_file():
        ctx.notes["remote"] = [f"not started: no {keys} to accept (add your public key there, or run "
                               "socketkit remote serve --authorized-keys FILE)"]
        return []
    remote = await start_remote(RemoteConfig(listen=ctx.overrides.get("remote") or [f"tcp://{ctx.host}:2222"],
                                             authorized_keys=str(keys)))
    ctx.closers.append(remote.aclose)
    port = remote.endpoints[0].port if remote.endpoints else 2222
    ctx.notes["remote"] = [f"host key {remote.fingerprint}; connect with: ssh -p {port} {remote.account.name}@{ctx.host}",
                           f"audit log: {remote.audit.path}"]
    ctx.details["remote"] = lambda: {"sessions": len(remote.sessions()), "units": remote.audit.events}
    now = time.time

    def connections() -> list[dict[str, Any]]:
        rows = []
        states = {st.id: st for st in list(remote._conns)}
        for s in remote.sessions():
            key = s.get("cert_id") or s.get("fingerprint") or ""
            st = states.get(s["conn"])
            rows.append({"id": s["conn"], "peer": s["peer"],
                         "local": address_text((st.local_ip, st.local_port)) if st is not None else "",
                         "protocol": f"ssh {s['kind']}",
                         "age": round(now() - s["started"], 1) if isinstance(s.get("started"), (int, float)) else 0,
                         "bytes_in": st.bytes_in if st is not None else 0,
                         "bytes_out": st.bytes_out if st is not None else 0,
                         "idle": round(time.monotonic() - st.last_active, 1) if st is not None else 0,
                         "info": {k: v for k, v in (("user", s.get("user")), ("key", key),
                                                    ("command", s.get("command"))) if v}})
        return rows

    def close(conn_id: object) -> bool:
        for st in list(remote._conns):
            if st.id == conn_id:
                st.cut("closed by the operator from the dashboard")
                return True
        return False

    ctx.connections["remote"] = connections
    ctx.closers_by_id["remote"] = close
    return list(remote.servers)


SERVICES.append(Service("remote", "SSH server for OpenSSH clients (your ~/.ssh/authorized_keys)", _start_remote))


async def _start_desktop(ctx: UpContext) -> list[Server]:
    from socketkit.remote.desktop import start_desktop_for_up

    listen = (ctx.overrides.get("desktop") or [None])[0]
    servers, notes, details = await start_desktop_for_up(ctx.host, listen)
    ctx.notes["desktop"] = notes
    if servers and ctx.landing is not None:
        for note in notes:  # "desktop viewer: URL"
            if "http" in note:
                ctx.landing.links.append((note.split(": ", 1)[-1], "Remote desktop"))
    if details is not None:
        ctx.details["desktop"] = details
    for server in servers:
        ctx.closers.append(lambda s=server: s.aclose(drain=0))
    return servers


SERVICES.append(Service("desktop", "a VNC desktop in the browser (noVNC + a websockify-compatible bridge)",
                        _start_desktop))


async def start_all(ctx: UpContext, only: set[str] | None = None) -> list[Running]:
    try:
        for svc in SERVICES:
            if only and svc.name not in only:
                continue
            servers = await svc.start(ctx)
            ctx.running.append(Running(svc.name, svc.description, servers, ctx.notes.get(svc.name, []),
                                       ctx.details.get(svc.name), ctx.connections.get(svc.name),
                                       ctx.closers_by_id.get(svc.name)))
    except BaseException:
        await stop_all(ctx)
        raise
    return ctx.running


async def stop_all(ctx: UpContext, drain: float | None = None) -> None:
    # Services' own clean-ups first (they end long-lived conversations), then every server drains.
    for closer in reversed(ctx.closers):
        await closer()
    ctx.closers.clear()
    for running in reversed(ctx.running):
        for server in running.servers:
            await server.aclose(drain=drain)
    if ctx.web is not None:
        await ctx.web.lifespan.shutdown()
    ctx.running.clear()


def _http_url(endpoint: str) -> str:
    scheme, _, rest = endpoint.partition("://")
    rest = rest.split("?", 1)[0]
    host, _, port = rest.rpartition(":")
    if host in ("0.0.0.0", "[::]"):
        host = "127.0.0.1" if host == "0.0.0.0" else "[::1]"
    return f"{'https' if scheme == 'tls' else 'http'}://{host}:{port}/"


def describe(running: list[Running], out: TextIO, dashboard: str | None = None) -> None:
    out.write("socketkit is up:\n")
    for r in running:
        out.write(f"  {r.name:<8} {', '.join(r.endpoints):<40} {r.description}\n")
        for note in r.notes:
            out.write(f"  {'':<8}   {note}\n")
    if dashboard:
        out.write(f"Open the dashboard: {dashboard}\n")
    out.write("Press Ctrl-C to stop.\n")
    out.flush()


async def run_up(ctx: UpContext, *, only: set[str] | None = None, out: TextIO = sys.stdout,
                 stop: asyncio.Event | None = None) -> None:
    with stop_on_signals(stop) as stopping:
        await _run_up(ctx, only, out, stopping)


async def _run_up(ctx: UpContext, only: set[str] | None, out: TextIO, stop: asyncio.Event) -> None:
    await start_all(ctx, only)
    status_server = None
    if ctx.dashboard is not None:
        from socketkit.dashboard.status_socket import start_status_socket

        try:
            status_server = await start_status_socket(ctx.dashboard)
        except Exception as e:  # noqa: BLE001 - another `up` of this user has it: the services still run
            out.write(f"(no `socketkit status` for this one: {e})\n")
    dashboard = None
    web = next((r for r in ctx.running if r.name == "web"), None)
    if ctx.dashboard is not None and web is not None and web.endpoints:
        dashboard = _http_url(web.endpoints[0]) + (f"?token={ctx.dashboard_token}" if ctx.dashboard_token else "")
    describe(ctx.running, out, dashboard)
    try:
        await stop.wait()
    finally:
        out.write("stopping...\n")
        out.flush()
        if status_server is not None:
            await status_server.aclose(drain=0)
        await stop_all(ctx)
        out.write("stopped.\n")
        out.flush()
