"""The `socketkit` command: argument parsing only; every command calls a public function elsewhere.

Errors become one readable line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from socketkit.errors import SocketkitError
from socketkit.net.endpoint import parse
from socketkit.net.limits import Limits

EXIT_USAGE = 2
EXIT_ERROR = 1


def _limits_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("limits")
    g.add_argument("--max-connections", type=int, help="open connections before new ones are refused")
    g.add_argument("--idle-timeout", type=float, help="seconds without traffic before a connection is closed")
    g.add_argument("--handshake-timeout", type=float, help="seconds a TLS handshake may take")
    g.add_argument("--drain-timeout", type=float, help="seconds open connections get to finish on shutdown")


def _server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--user", help="after binding, drop privileges to this user (when started as root)")
    _limits_options(p)


def limits_from(args: argparse.Namespace, base: Limits | None = None) -> Limits:
    changes = {name: getattr(args, name) for name in
               ("max_connections", "idle_timeout", "handshake_timeout", "drain_timeout")
               if getattr(args, name, None) is not None}
    return (base or Limits()).replace(**changes)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="socketkit", description="Network sockets made real, fast and safe.")
    parser.add_argument("--loop", choices=("auto", "uvloop", "asyncio"), default="auto",
                        help="event loop (default: uvloop where installed)")
    parser.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("up", help="start every service on unprivileged default ports")
    p.add_argument("--host", default="127.0.0.1", help="address the services listen on")
    p.add_argument("--only", help="comma-separated services to start (default: all)")
    p.add_argument("--listen", action="append", default=[], metavar="SERVICE=URL",
                   help="where one service listens instead of its default, e.g. web=tcp://127.0.0.1:0 "
                        "(repeatable; a service given several times listens on all of them)")
    p.add_argument("--dashboard", metavar="URL", help="where the dashboard (the web service) listens; "
                   "beyond loopback it wants a token (made up and printed if not given) or "
                   "tls://...?verify=true&ca=CLIENTS.pem (mTLS)")
    p.add_argument("--dashboard-token", metavar="TOKEN", help="the token non-loopback dashboard clients must show")
    _limits_options(p)
    p.set_defaults(run=_cmd_up)

    p = sub.add_parser("status", help="what a running `socketkit up` of this user is doing (services, busiest sockets)")
    p.add_argument("--json", action="store_true", help="the raw status as JSON")
    p.set_defaults(run=_cmd_status)

    p = sub.add_parser("connect", help="netcat-like: stdin to the socket, the socket to stdout")
    p.add_argument("endpoint", help="tcp://host:port, tls://host:port, unix:///path")
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    p.set_defaults(run=_cmd_connect)

    p = sub.add_parser("listen", help="accept connections; print what arrives, or echo it back")
    p.add_argument("endpoint", nargs="+", help="one or more endpoints to listen on")
    p.add_argument("--echo", action="store_true", help="send back what arrives")
    _server_options(p)
    p.set_defaults(run=_cmd_listen)

    p = sub.add_parser("relay", help="socat-like: accept on FROM, forward each connection to TO "
                       "(ws:// or wss:// on either side: a WebSocket-to-TCP bridge, as websockify)")
    p.add_argument("source", metavar="FROM", help="tcp://, tls://, unix://; or ws://HOST:PORT[/PATH] "
                   "(wss://...?cert=..&key=..): WebSocket clients, their binary frames' bytes go to TO")
    p.add_argument("target", metavar="TO", help="tcp://, tls://, unix://; or ws://HOST:PORT/PATH (wss://): "
                   "each connection is carried in binary frames over a new WebSocket")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    _server_options(p)
    p.set_defaults(run=_cmd_relay)

    p = sub.add_parser("web", help="serve an ASGI app (module:app) and/or a directory over HTTP/1.1, HTTP/2 and "
                       "WebSocket")
    p.add_argument("app", nargs="?", help="the ASGI app as module:attribute (e.g. main:app)")
    p.add_argument("--listen", action="append", metavar="URL",
                   help="endpoint to listen on, repeatable (default tcp://127.0.0.1:8000): tcp://HOST:PORT (HTTP/1.1, "
                        "and HTTP/2 with prior knowledge), tls://HOST:PORT?cert=C&key=K (HTTP/2 or 1.1 by ALPN), "
                        "unix:///PATH (uvicorn's --uds). Sockets handed over by systemd (LISTEN_FDS, what uvicorn's "
                        "--fd is for) are used instead of any --listen")
    p.add_argument("--static", metavar="DIR", help="serve this directory (alone, or under --static-path)")
    p.add_argument("--static-path", default="/", help="URL path the --static directory is served at "
                   "when an app is given too (default: / alone, /static with an app)")
    p.add_argument("--factory", action="store_true", help="APP is a callable that returns the ASGI app")
    p.add_argument("--root-path", default="", help="the path prefix a proxy strips (ASGI root_path)")
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-For/-Proto from "
                   "--forwarded-allow-ips")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1,::1",
                   help="comma-separated proxy addresses/networks to trust, or '*'")
    p.add_argument("--access-log", action="store_true",
                   help="log every request, in the combined format (off by default)")
    p.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default=argparse.SUPPRESS,
                   help="what the log shows (default warning; the same as `socketkit --log-level`)")
    p.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--max-body", type=int, help="largest request body in bytes (413 past it)")
    p.add_argument("--env-file", metavar="FILE", help="set environment variables from KEY=VALUE lines before "
                   "the app is imported (variables already set win)")
    p.add_argument("--reload", action="store_true", help="restart the server whenever a Python file under "
                   "--reload-dir changes (development; one process)")
    p.add_argument("--reload-dir", action="append", metavar="DIR",
                   help="directory to watch with --reload, repeatable (default: the current directory)")
    p.add_argument("--no-http2", dest="http2", action="store_false",
                   help="HTTP/1.1 only: no h2 in ALPN, no h2c prior knowledge")
    _server_options(p)
    p.set_defaults(run=_cmd_web)

    p = sub.add_parser("user", help="accounts for the services that log users in (mail, chat)")
    usub = p.add_subparsers(dest="user_command", metavar="ACTION")
    usub.required = True
    for action, helptext in (("add", "add an account (the password is asked twice)"),
                             ("passwd", "change an account's password")):
        u = usub.add_parser(action, help=helptext)
        u.add_argument("name")
        u.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
        u.set_defaults(run=_cmd_user_add if action == "add" else _cmd_user_passwd)
    usub.choices["add"].add_argument("--email")
    u = usub.add_parser("del", help="delete an account")
    u.add_argument("name")
    u.set_defaults(run=_cmd_user_del)
    u = usub.add_parser("list", help="list accounts: name, email, created, disabled")
    u.set_defaults(run=_cmd_user_list)
    for u in usub.choices.values():
        u.add_argument("--db", metavar="PATH", help="accounts database (default: DATA_DIR/accounts.db)")

    p = sub.add_parser("mail", help="receive mail over SMTP into Maildirs; `mail send` sends one message")
    p.add_argument("--listen", action="append", metavar="URL",
                   help="endpoint to listen on, repeatable (default tcp://127.0.0.1:2525; :25 as root)")
    p.add_argument("--maildir", metavar="DIR", help="where mail is stored: DIR/<local@domain>/ per recipient "
                   "(default: the data directory's mail/)")
    p.add_argument("--catch-all", action="store_true", help="store every message in the one Maildir DIR")
    p.add_argument("--domain", action="append", default=[], metavar="D",
                   help="accept mail for this domain, repeatable (default: localhost and this host's name)")
    p.add_argument("--accept-all", action="store_true",
                   help="accept every recipient: a development sink, never for the open internet")
    p.add_argument("--hostname", help="the name the server greets with and writes in Received:")
    p.add_argument("--insecure-auth", action="store_true", help="allow AUTH without STARTTLS")
    p.add_argument("--no-starttls", action="store_true", help="do not offer STARTTLS")
    p.add_argument("--tls-cert", metavar="FILE", help="PEM certificate for STARTTLS (default: the dev one)")
    p.add_argument("--tls-key", metavar="FILE", help="PEM private key for --tls-cert")
    p.add_argument("--max-size", type=int, metavar="BYTES", help="largest message accepted (SIZE)")
    p.add_argument("--max-recipients", type=int, metavar="N", help="recipients per message")
    p.add_argument("--command-timeout", type=float, metavar="S", help="seconds per command (default 300)")
    p.add_argument("--data-timeout", type=float, metavar="S", help="seconds for a whole DATA (default 600)")
    p.add_argument("--max-connections", type=int, help="open connections before new ones get 421")
    p.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (SO_REUSEPORT)")
    p.add_argument("--user", help="after binding (port 25 as root), drop privileges to this user")
    p.add_argument("--web", action="append", metavar="URL",
                   help="also serve the inbox (page + JSON API) on this endpoint, e.g. tcp://127.0.0.1:8025")
    p.set_defaults(run=_cmd_mail)
    msub = p.add_subparsers(dest="mail_command", metavar="ACTION")
    m = msub.add_parser("send", help="send one message over SMTP")
    m.add_argument("--from", dest="sender", required=True, metavar="ADDRESS")
    m.add_argument("--to", action="append", required=True, metavar="ADDRESS", help="repeatable")
    m.add_argument("--subject", default="")
    m.add_argument("--body", help="the text (default: read from stdin)")
    m.add_argument("--attach", action="append", default=[], metavar="FILE", help="repeatable")
    m.add_argument("--server", default="tcp://127.0.0.1:2525", metavar="URL",
                   help="tcp://host:port, or tls://host:465 for implicit TLS (default tcp://127.0.0.1:2525)")
    m.add_argument("--starttls", action="store_true", help="upgrade to TLS before anything else")
    m.add_argument("--auth", metavar="USER:PASS", help="log in (AUTH PLAIN or LOGIN)")
    m.add_argument("--helo", metavar="NAME", help="the name to send in EHLO (default: this host's name)")
    m.add_argument("--insecure", action="store_true", help="do not verify the server's certificate")
    m.add_argument("--ca", metavar="FILE", help="trust this CA for the server's certificate")
    m.add_argument("--timeout", type=float, default=30.0, help="seconds per step")
    m.set_defaults(run=_cmd_mail_send)

    p = sub.add_parser("chat", help="chat server: IRC clients on tcp/tls, browsers over WebSocket")
    p.add_argument("--listen", action="append", metavar="URL",
                   help="IRC endpoint, repeatable (default tcp://127.0.0.1:6667 and tls://127.0.0.1:6697)")
    p.add_argument("--web", action="append", metavar="URL", help="also serve the chat page (and its WebSocket) here")
    p.add_argument("--data", metavar="DIR", help="where history.db is kept (default: the data directory/chat)")
    p.add_argument("--backplane", metavar="URL",
                   help="share channels with other nodes through Redis: redis://[USER:PASSWORD@]HOST:PORT[/DB], "
                        "rediss://... (TLS; ?ca=CA.pem), redis+sentinel://SENTINEL:PORT/MASTER")
    p.add_argument("--backplane-sentinel", action="append", default=[], metavar="HOST:PORT",
                   help="ask this Redis Sentinel where the master is; --backplane redis://MASTER names it (repeatable)")
    p.add_argument("--workers", type=int, default=1,
                   help="processes sharing the ports, joined through the backplane (needs --backplane)")
    p.add_argument("--server-name", default="irc.socketkit.local")
    p.add_argument("--no-sasl", action="store_true", help="do not offer SASL logins")
    p.add_argument("--user", help="after binding, drop privileges to this user (when started as root)")
    f = p.add_argument_group("flood control (on by default: a client past it is delayed, then disconnected)")
    f.add_argument("--flood-burst", type=int, metavar="LINES", help="lines a client may send at once (default 10)")
    f.add_argument("--flood-rate", type=float, metavar="LINES_PER_SECOND",
                   help="lines per second a client may keep sending after the burst (default 2)")
    f.add_argument("--flood-queue", type=int, metavar="LINES",
                   help="lines held back (delayed) before the client is disconnected for Excess Flood (default 50)")
    f.add_argument("--flood-exempt", action="append", default=[], metavar="CIDR",
                   help="clients from this network skip flood control, e.g. 10.0.0.0/8 (repeatable)")
    f.add_argument("--flood-exempt-account", action="append", default=[], metavar="ACCOUNT",
                   help="clients logged in (SASL) as this account skip flood control (repeatable)")
    _limits_options(p)
    p.set_defaults(run=_cmd_chat)

    p = sub.add_parser("cert", help="development certificates: a local CA and certificates it signs")
    csub = p.add_subparsers(dest="cert_command", metavar="ACTION")
    csub.required = True
    c = csub.add_parser("ca", help="create the development CA if needed and show it")
    c.set_defaults(run=_cmd_cert_ca)
    c = csub.add_parser("issue", help="issue a certificate for host names / IP addresses")
    c.add_argument("names", nargs="+")
    c.add_argument("--client", action="store_true", help="a client certificate (for mutual TLS)")
    c.add_argument("--days", type=int, default=825)
    c.set_defaults(run=_cmd_cert_issue)
    c = csub.add_parser("show", help="describe a certificate file (subject, names, expiry, fingerprint)")
    c.add_argument("path")
    c.set_defaults(run=_cmd_cert_show)
    p.add_argument("--dir", help="where certificates live (default: the data directory)")

    from socketkit import cli_peer, cli_remote

    cli_peer.add_parsers(sub)
    cli_remote.add_parsers(sub)
    return parser


# -- commands ---------------------------------------------------------------------------------------
def _run_async(args: argparse.Namespace, make: Callable[[], object]) -> int:
    from socketkit.net.loop import run

    run(make(), loop=args.loop)  # type: ignore[arg-type]
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from socketkit import up

    ctx = up.UpContext(host=args.host, limits=limits_from(args))
    known = {s.name for s in up.SERVICES} | {extra for s in up.SERVICES for extra in s.extra_listeners}
    for item in args.listen:
        name, sep, url = item.partition("=")
        if not sep or name not in known:
            raise SocketkitError(f"--listen {item!r}: write SERVICE=URL with SERVICE one of {', '.join(sorted(known))}")
        ctx.overrides.setdefault(name, []).append(parse(url).format())
    if args.dashboard:
        ep = parse(args.dashboard)
        ctx.overrides["web"] = [ep.format()]
        ctx.dashboard_client_certs = ep.is_tls and ep.option("verify") == "true"
        import ipaddress

        try:
            loopback = ipaddress.ip_address(ep.host or "").is_loopback
        except ValueError:
            loopback = ep.host == "localhost"
        if not loopback and not ctx.dashboard_client_certs and not args.dashboard_token:
            import secrets

            args.dashboard_token = secrets.token_urlsafe(18)
    elif args.host not in ("127.0.0.1", "::1", "localhost") and not args.dashboard_token:
        import secrets

        args.dashboard_token = secrets.token_urlsafe(18)
    ctx.dashboard_token = args.dashboard_token
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {s.name for s in up.SERVICES}
        if unknown:
            raise SocketkitError(f"--only: unknown service(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(s.name for s in up.SERVICES)}")
    return _run_async(args, lambda: up.run_up(ctx, only=only))


def _cmd_status(args: argparse.Namespace) -> int:
    import json

    from socketkit.dashboard.status_socket import query, render

    status = query()
    print(json.dumps(status, indent=1) if args.json else render(status))
    return 0


def _cmd_connect(args: argparse.Namespace) -> int:
    from socketkit.console import run_connect

    return _run_async(args, lambda: run_connect(args.endpoint, timeout=args.timeout))


def _serve_cli(args: argparse.Namespace, endpoints: Sequence[str], make_handler: Callable[[], object],
               name: str) -> int:
    from socketkit.net.runner import run_server

    async def setup():
        return make_handler(), None

    return run_server(endpoints, setup, workers=args.workers, user=args.user, limits=limits_from(args),
                      loop=args.loop, name=name)


def _cmd_listen(args: argparse.Namespace) -> int:
    from socketkit.console import echo_handler, print_handler

    return _serve_cli(args, args.endpoint, lambda: echo_handler if args.echo else print_handler(), "listen")


def _cmd_relay(args: argparse.Namespace) -> int:
    from socketkit.net.relay import relay_handler
    from socketkit.web import wsbridge

    limits = limits_from(args)
    source, target = args.source, args.target
    if wsbridge.is_ws_url(source) and wsbridge.is_ws_url(target):
        raise SocketkitError("relay: one side may be a WebSocket, not both (use tcp:// on one of them)")
    if wsbridge.is_ws_url(source):
        ep, path = wsbridge.listen_endpoint_of(source)
        parse(target)  # a bad target fails now, with one line
        return _serve_cli(args, [ep], lambda: wsbridge.ws_listener_handler(
            target, path=path, limits=limits, connect_timeout=args.connect_timeout), "relay")
    if wsbridge.is_ws_url(target):
        return _serve_cli(args, [source], lambda: wsbridge.ws_target_handler(
            target, limits=limits, connect_timeout=args.connect_timeout), "relay")
    return _serve_cli(args, [source],
                      lambda: relay_handler(target, limits=limits, connect_timeout=args.connect_timeout),
                      "relay")


def _cmd_web(args: argparse.Namespace) -> int:
    from socketkit import web

    if not args.app and not args.static:
        raise SocketkitError("give an ASGI app (module:attribute), --static DIR, or both")
    if args.reload:
        if args.workers != 1:
            raise SocketkitError("--reload runs one process: leave out --workers")
        from socketkit.web.reload import run_with_reload

        return run_with_reload(sys.argv[1:], args.reload_dir or ["."])
    if args.env_file:
        from socketkit.web.config import load_env_file

        load_env_file(args.env_file)
    limits = limits_from(args, web.WEB_LIMITS)
    if args.max_body:
        limits = limits.replace(max_body=args.max_body)
    app = args.app
    if args.static:
        from socketkit.web.mount import static_app

        app = static_app(args.static, app, mount=args.static_path, factory=args.factory)
    elif args.factory:
        from socketkit.web.config import load_app

        app = load_app(args.app, factory=True)
    return web.run(
        app, args.listen or [web.DEFAULT_LISTEN], workers=args.workers, user=args.user, loop=args.loop,
        limits=limits, root_path=args.root_path, proxy_headers=args.proxy_headers,
        forwarded_allow_ips=tuple(x.strip() for x in args.forwarded_allow_ips.split(",") if x.strip()),
        access_log=args.access_log, lifespan=args.lifespan, http2=args.http2,
    )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        return sys.stdin.readline().removesuffix("\n").removesuffix("\r")
    import getpass

    password = getpass.getpass("password: ")
    if getpass.getpass("again: ") != password:
        raise SocketkitError("the two passwords differ; nothing changed")
    return password


def _cmd_user_add(args: argparse.Namespace) -> int:
    from socketkit.accounts import AccountExistsError, AccountStore

    with AccountStore(args.db) as store:
        if store.get(args.name) is not None:  # tell before asking for a password (get checks the name)
            raise AccountExistsError(f"account {args.name!r} already exists (names ignore case)")
        store.add(args.name, _read_password(args), email=args.email)
    print(f"account {args.name} added")
    return 0


def _cmd_user_passwd(args: argparse.Namespace) -> int:
    from socketkit.accounts import AccountNotFoundError, AccountStore

    with AccountStore(args.db) as store:
        if store.get(args.name) is None:
            raise AccountNotFoundError(f"no account named {args.name!r}")
        store.set_password(args.name, _read_password(args))
    print(f"password of {args.name} changed")
    return 0


def _cmd_user_del(args: argparse.Namespace) -> int:
    from socketkit.accounts import AccountStore

    with AccountStore(args.db) as store:
        store.delete(args.name)
    print(f"account {args.name} deleted")
    return 0


def _cmd_user_list(args: argparse.Namespace) -> int:
    import datetime as dt

    from socketkit.accounts import AccountStore

    with AccountStore(args.db) as store:
        for a in store.list():
            created = dt.datetime.fromtimestamp(a.created_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            print("\t".join([a.name, a.email or "-", created] + (["disabled"] if a.disabled else [])))
    return 0


def _cmd_mail(args: argparse.Namespace) -> int:
    from socketkit.mail import server

    options = {name: getattr(args, name) for name in
               ("max_size", "max_recipients", "command_timeout", "data_timeout", "max_connections",
                "hostname", "tls_cert", "tls_key") if getattr(args, name) is not None}
    config = server.MailConfig(
        maildir=args.maildir, catch_all=args.catch_all, domains=args.domain, accept_all=args.accept_all,
        insecure_auth=args.insecure_auth, starttls=not args.no_starttls, **options)
    if args.web:
        from socketkit.mail import inbox

        return inbox.run_with_inbox(config, args.listen, args.web, workers=args.workers, user=args.user,
                                    loop=args.loop)
    return server.run(config, args.listen, workers=args.workers, user=args.user, loop=args.loop)


def _cmd_mail_send(args: argparse.Namespace) -> int:
    from socketkit.mail import sender

    auth = None
    if args.auth is not None:
        user, colon, password = args.auth.partition(":")
        if not colon or not user:
            raise SocketkitError("--auth wants USER:PASSWORD")
        auth = (user, password)
    body = args.body
    if body is None:
        if sys.stdin.isatty():
            print("reading the message text from stdin; end it with Ctrl-D", file=sys.stderr)
        body = sys.stdin.read()
    msg = sender.build_message(args.sender, args.to, args.subject, body, attachments=args.attach)
    result = sender.send(msg, loop=args.loop, server=args.server, starttls=args.starttls, auth=auth,
                         helo=args.helo, insecure=args.insecure, ca=args.ca, timeout=args.timeout)
    for rcpt, reply in result.refused:
        print(f"warning: <{rcpt}> refused: {sender.describe(reply)}", file=sys.stderr)
    print(f"sent: {result}")
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from pathlib import Path

    from socketkit.chat.core import ChatLimits
    from socketkit.chat.server import DEFAULT_LISTEN, ChatConfig, run
    from socketkit.net.certs import data_dir

    limits = limits_from(args)
    flood = {name: getattr(args, name) for name in ("flood_burst", "flood_rate", "flood_queue")
             if getattr(args, name) is not None}
    try:
        chat_limits = ChatLimits(**flood, flood_exempt=tuple(args.flood_exempt),
                                 flood_exempt_accounts=tuple(args.flood_exempt_account))
    except ValueError as e:
        text = str(e)
        for field in ("flood_exempt_accounts", "flood_exempt", "flood_burst", "flood_rate", "flood_queue"):
            text = text.replace(f"ChatLimits.{field}", "--" + field.replace("_", "-").removesuffix("s"))
        raise SocketkitError(text) from None
    if args.backplane_sentinel and not args.backplane:
        raise SocketkitError("--backplane-sentinel needs --backplane redis://[USER:PASSWORD@]MASTER_NAME")
    config = ChatConfig(server_name=args.server_name, data_dir=Path(args.data) if args.data else data_dir() / "chat",
                        sasl=not args.no_sasl, backplane=args.backplane, limits=chat_limits,
                        backplane_options={"sentinels": args.backplane_sentinel} if args.backplane_sentinel else {},
                        net_limits=limits.replace(idle_timeout=None) if args.idle_timeout is None else limits)
    if config.backplane:
        from socketkit.chat.redis_link import parse_url

        parse_url(config.backplane, args.backplane_sentinel or None)  # a bad URL is one line, now
    return run(config, args.listen or list(DEFAULT_LISTEN), web=args.web or (), user=args.user, loop=args.loop,
               workers=args.workers)


def _cmd_cert_ca(args: argparse.Namespace) -> int:
    from socketkit.net import certs

    cert, key = certs.ensure_ca(args.dir)
    print(f"CA certificate: {cert}\nCA key:         {key} (mode 0600)\n{certs.describe(cert)}")
    return 0


def _cmd_cert_issue(args: argparse.Namespace) -> int:
    from socketkit.net import certs

    cert, key = certs.issue(args.names, dir=args.dir, client=args.client, days=args.days)
    print(f"certificate: {cert}\nkey:         {key} (mode 0600)\n{certs.describe(cert)}")
    return 0


def _cmd_cert_show(args: argparse.Namespace) -> int:
    from socketkit.net import certs

    print(certs.describe(args.path))
    return 0


# -- entry point ------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    # `remote run HOSTS... -- COMMAND`: the command is everything after "--", verbatim (argparse would mix its
    # words into the host list).
    after: list[str] | None = None
    if "--" in words and words[:words.index("--")].count("remote") and "run" in words[:words.index("--")]:
        cut = words.index("--")
        words, after = words[:cut], words[cut + 1:]
    args, extra = parser.parse_known_args(words)
    if extra:
        # `remote copy FILE --hosts F :PATH`: options between the paths leave the last ones over; anything
        # else left over is an error, said as argparse says it.
        if getattr(args, "remote_command", None) == "copy" and not any(e.startswith("-") for e in extra):
            args.paths = list(args.paths) + extra
        else:
            parser.parse_args(words)  # exits with argparse's own message
    args.after_dashes = after
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if getattr(args, "access_log", False):
        logging.getLogger("socketkit.web.access").setLevel(logging.INFO)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except SocketkitError as e:
        print(f"socketkit {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR
    except BrokenPipeError:
        os._exit(EXIT_ERROR)  # stdout went away (| head): nothing left to tell anyone
    except (OSError, ValueError) as e:
        print(f"socketkit {args.command}: {e}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
