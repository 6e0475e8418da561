"""`socketkit peer ...`: argument parsing only (socketkit.peer.commands and peer.relay do the work)."""

from __future__ import annotations

import argparse

from socketkit.errors import SocketkitError


def _common(p: argparse.ArgumentParser) -> None:
    from socketkit.peer import PUBLIC_MAILBOX, PUBLIC_RELAY

    g = p.add_argument_group("servers")
    g.add_argument("--mailbox", default=PUBLIC_MAILBOX, metavar="URL",
                   help=f"mailbox (rendezvous) server, ws://HOST:PORT/v1 (default {PUBLIC_MAILBOX})")
    g.add_argument("--transit-relay", default=PUBLIC_RELAY, metavar="URL",
                   help=f"transit relay offered to the other side, tcp://HOST:PORT, or 'none' (default {PUBLIC_RELAY})")
    g.add_argument("--no-listen", action="store_true", help="make no direct-connection listener (relay or outbound only)")
    g.add_argument("--advertise", action="append", metavar="ADDR",
                   help="address to offer for direct connections (repeatable; default: every interface's)")
    g.add_argument("--lan", action="store_true",
                   help="no servers at all: find the other side on this network by DNS-SD (mDNS)")
    g.add_argument("--plain", action="store_true",
                   help="behave exactly like magic-wormhole (no resume, no fast records, even with socketkit)")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds for each network step (default 30)")
    g.add_argument("--wait", type=float, default=3600.0,
                   help="seconds to wait for the other side to arrive (default 3600)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peer", help="send files and text to another device (magic-wormhole compatible)")
    psub = p.add_subparsers(dest="peer_command", metavar="ACTION")
    psub.required = True

    s = psub.add_parser("send", help="send files, directories or a text; prints a code for the receiver")
    s.add_argument("paths", nargs="*", metavar="PATH", help="files or directories (several go as one directory)")
    s.add_argument("--text", metavar="TEXT", help="send this text instead of files ('-': read stdin)")
    s.add_argument("--code", help="use this code (e.g. 7-guitarist-revenge) instead of asking the server for one")
    s.add_argument("--code-length", type=int, default=2, metavar="WORDS", help="words in a generated code (default 2)")
    _common(s)
    s.set_defaults(run=_cmd_send)

    r = psub.add_parser("receive", help="receive what a `peer send` or `wormhole send` offers")
    r.add_argument("code", nargs="?", help="the code the sender printed (asked for when not given)")
    r.add_argument("--out", default=".", metavar="DIR", help="where files go (default: the current directory)")
    r.add_argument("--yes", "-y", action="store_true", help="accept the offer without asking")
    r.add_argument("--overwrite", action="store_true", help="replace an existing file of the same name")
    _common(r)
    r.set_defaults(run=_cmd_receive)

    y = psub.add_parser("relay", help="run your own mailbox server and transit relay (for peer and wormhole)")
    y.add_argument("--listen", action="append", metavar="URL",
                   help="mailbox (WebSocket) endpoint, repeatable (default tcp://127.0.0.1:4000)")
    y.add_argument("--transit", action="append", metavar="URL",
                   help="transit relay endpoint, repeatable (default tcp://127.0.0.1:4001)")
    y.add_argument("--db", metavar="PATH", help="state database (default: the data directory's peer-relay.db)")
    y.add_argument("--motd", help="a message of the day shown to clients")
    y.set_defaults(run=_cmd_relay)


def _options(args: argparse.Namespace):
    from socketkit.peer.options import PeerOptions

    relay = None if args.transit_relay in ("", "none") else args.transit_relay
    return PeerOptions(mailbox=args.mailbox, relay=relay, listen=not args.no_listen, advertise=args.advertise,
                       timeout=args.timeout, wait=args.wait, features=() if args.plain else PeerOptions.features,
                       quiet=args.quiet)


def _run(args: argparse.Namespace, coro) -> int:
    from socketkit.net.loop import run

    run(coro, loop=args.loop)
    return 0


def _cmd_send(args: argparse.Namespace) -> int:
    from socketkit.peer.commands import send_command

    if args.text is None and not args.paths:
        raise SocketkitError("give one or more paths to send, or --text TEXT")
    if args.text is not None and args.paths:
        raise SocketkitError("send either paths or --text, not both")
    return _run(args, send_command(args.paths, text=args.text, code=args.code, words=args.code_length,
                                   options=_options(args), lan=args.lan))


def _cmd_receive(args: argparse.Namespace) -> int:
    from socketkit.peer.commands import receive_command

    return _run(args, receive_command(args.code, out_dir=args.out, yes=args.yes, overwrite=args.overwrite,
                                      options=_options(args), lan=args.lan))


def _cmd_relay(args: argparse.Namespace) -> int:
    from socketkit.peer.relay import RelayConfig, serve_relay

    config = RelayConfig()
    if args.listen:
        config.mailbox_listen = list(args.listen)
    if args.transit:
        config.transit_listen = list(args.transit)
    if args.db:
        config.db_path = args.db
    if args.motd:
        config.motd = args.motd
    return _run(args, serve_relay(config))
