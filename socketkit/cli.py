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


def limits_from(args: argparse.Namespace) -> Limits:
    changes = {name: getattr(args, name) for name in
               ("max_connections", "idle_timeout", "handshake_timeout", "drain_timeout")
               if getattr(args, name, None) is not None}
    return Limits(**changes)


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


def _announce(server) -> None:
    for ep in server.endpoints:
        print(f"listening on {ep}", file=sys.stderr, flush=True)


def _serve_cli(args: argparse.Namespace, endpoints: Sequence[str], make_handler: Callable[[], object],
               name: str) -> int:
    """Run a server from the command line, with --workers and --user."""
    from socketkit.net import process
    from socketkit.net.endpoint import parse
    from socketkit.net.server import serve

    limits = limits_from(args)
    eps = [parse(e) for e in endpoints]
    inherited = process.systemd_sockets()
    if inherited:
        eps = []  # systemd decides where we listen

    def ready(server) -> None:
        process.drop_privileges(args.user)
        _announce(server)

    def one(sockets=inherited, reuse_port=False, endpoints=eps) -> int:
        return _run_async(args, lambda: serve(endpoints, make_handler(), limits=limits, ready=ready, name=name,
                                              sockets=sockets, reuse_port=reuse_port))

    if args.workers <= 1:
        return one()
    if args.workers > 256:
        raise SocketkitError("--workers: at most 256")
    eps, holders = process.reserve_ports(eps)
    unix = [e for e in eps if e.is_unix]
    shared = _bind_unix(unix) + inherited
    tcp = [e for e in eps if not e.is_unix]
    return process.run_workers(
        args.workers, lambda i: one(sockets=shared, reuse_port=True, endpoints=tcp),
        on_started=lambda: [h.close() for h in holders],
    )


def _bind_unix(eps):
    import socket

    from socketkit.net.server import _remove_stale_socket

    socks = []
    for ep in eps:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        if not ep.is_abstract:
            _remove_stale_socket(ep.path)
        s.bind(ep.socket_path)
        s.listen(2048)
        socks.append(s)
    return socks


def _cmd_listen(args: argparse.Namespace) -> int:
    from socketkit.console import echo_handler, print_handler

    return _serve_cli(args, args.endpoint, lambda: echo_handler if args.echo else print_handler(), "listen")


def _cmd_relay(args: argparse.Namespace) -> int:
    from socketkit.net.relay import relay_handler

    limits = limits_from(args)
    return _serve_cli(args, [args.source],
                      lambda: relay_handler(args.target, limits=limits, connect_timeout=args.connect_timeout),
                      "relay")


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
