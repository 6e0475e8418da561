"""The `socketkit` command: argument parsing only; every command calls a public function elsewhere.

Errors become one readable line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable, Sequence

from socketkit.errors import SocketkitError
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
    _limits_options(p)
    p.set_defaults(run=_cmd_up)

    p = sub.add_parser("connect", help="netcat-like: stdin to the socket, the socket to stdout")
    p.add_argument("endpoint", help="tcp://host:port, tls://host:port, unix:///path")
    p.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    p.set_defaults(run=_cmd_connect)

    p = sub.add_parser("listen", help="accept connections; print what arrives, or echo it back")
    p.add_argument("endpoint", nargs="+", help="one or more endpoints to listen on")
    p.add_argument("--echo", action="store_true", help="send back what arrives")
    _server_options(p)
    p.set_defaults(run=_cmd_listen)

    p = sub.add_parser("relay", help="socat-like: accept on FROM, forward each connection to TO")
    p.add_argument("source", metavar="FROM")
    p.add_argument("target", metavar="TO")
    p.add_argument("--connect-timeout", type=float, default=10.0)
    _server_options(p)
    p.set_defaults(run=_cmd_relay)

    p = sub.add_parser("web", help="serve an ASGI app (module:app) and/or a directory over HTTP/1.1 and WebSocket")
    p.add_argument("app", nargs="?", help="the ASGI app as module:attribute (e.g. main:app)")
    p.add_argument("--listen", action="append", metavar="URL",
                   help="endpoint to listen on, repeatable (default tcp://127.0.0.1:8000)")
    p.add_argument("--static", metavar="DIR", help="serve this directory (alone, or under --static-path)")
    p.add_argument("--static-path", default="/", help="URL path the --static directory is served at "
                   "when an app is given too (default: / alone, /static with an app)")
    p.add_argument("--factory", action="store_true", help="APP is a callable that returns the ASGI app")
    p.add_argument("--root-path", default="", help="the path prefix a proxy strips (ASGI root_path)")
    p.add_argument("--proxy-headers", action="store_true", help="trust X-Forwarded-For/-Proto from "
                   "--forwarded-allow-ips")
    p.add_argument("--forwarded-allow-ips", default="127.0.0.1,::1",
                   help="comma-separated proxy addresses/networks to trust, or '*'")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default)")
    p.add_argument("--lifespan", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--max-body", type=int, help="largest request body in bytes (413 past it)")
    _server_options(p)
    p.set_defaults(run=_cmd_web)

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
    return parser


# -- commands ---------------------------------------------------------------------------------------
def _run_async(args: argparse.Namespace, make: Callable[[], object]) -> int:
    from socketkit.net.loop import run

    run(make(), loop=args.loop)  # type: ignore[arg-type]
    return 0


def _cmd_up(args: argparse.Namespace) -> int:
    from socketkit import up

    ctx = up.UpContext(host=args.host, limits=limits_from(args))
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {s.name for s in up.SERVICES}
        if unknown:
            raise SocketkitError(f"--only: unknown service(s) {', '.join(sorted(unknown))}; "
                                 f"known: {', '.join(s.name for s in up.SERVICES)}")
    return _run_async(args, lambda: up.run_up(ctx, only=only))


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

    limits = limits_from(args)
    return _serve_cli(args, [args.source],
                      lambda: relay_handler(args.target, limits=limits, connect_timeout=args.connect_timeout),
                      "relay")


def _cmd_web(args: argparse.Namespace) -> int:
    from socketkit import web

    if not args.app and not args.static:
        raise SocketkitError("give an ASGI app (module:attribute), --static DIR, or both")
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
        access_log=args.access_log, lifespan=args.lifespan,
    )


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
    args = parser.parse_args(argv)
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
