"""`socketkit remote ...`: argument parsing only (socketkit.remote does the work; asyncssh is imported there,
lazily, so `socketkit --help` stays fast)."""

from __future__ import annotations

import argparse

from socketkit.errors import SocketkitError


def _client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hosts", metavar="FILE", help="more targets, one per line (user@host:port; # comments)")
    p.add_argument("--parallel", type=int, default=64, metavar="N", help="hosts at once (default 64)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S",
                   help="seconds per host for connecting, key exchange, authentication and the command (default 30)")
    p.add_argument("-i", "--identity", action="append", metavar="KEY", help="private key file (repeatable; "
                   "default: ssh's own keys and the agent)")
    p.add_argument("--known-hosts", metavar="FILE", help="trusted host keys (default ~/.ssh/known_hosts; "
                   "@cert-authority lines trust a host CA)")
    p.add_argument("--ssh-config", metavar="FILE", help="ssh client config for host aliases (default ~/.ssh/config)")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("remote", help="manage machines over SSH: an agent (serve), commands and copies on many hosts")
    rsub = p.add_subparsers(dest="remote_command", metavar="ACTION")
    rsub.required = True

    s = rsub.add_parser("serve", help="an SSH server OpenSSH clients use (public keys and certificates only)")
    s.add_argument("--listen", action="append", metavar="URL", help="endpoint, repeatable (default tcp://127.0.0.1:2222)")
    s.add_argument("--authorized-keys", metavar="FILE", help="accepted keys (default ~/.ssh/authorized_keys)")
    s.add_argument("--host-key", metavar="FILE", help="host key (default: generated under the data directory)")
    s.add_argument("--trusted-ca", metavar="FILE", help="accept OpenSSH user certificates signed by this CA key")
    s.add_argument("--audit-log", metavar="FILE", help="JSON-lines audit log (default: the data directory's)")
    s.add_argument("--allow-forwarding", action="store_true", help="allow ssh -L and -R (refused otherwise)")
    s.add_argument("--user", help="after binding, drop privileges to this user (when started as root)")
    g = s.add_argument_group("limits")
    g.add_argument("--max-connections", type=int, help="open connections before new ones are refused")
    g.add_argument("--max-startups", type=int, metavar="N", help="unauthenticated connections per address")
    g.add_argument("--max-auth-tries", type=int, metavar="N", help="authentication attempts per connection")
    g.add_argument("--login-grace-time", type=float, metavar="S", help="seconds to authenticate")
    g.add_argument("--idle-timeout", type=float, metavar="S", help="seconds without traffic before a connection is closed")
    s.set_defaults(run=_cmd_serve)

    r = rsub.add_parser("run", help="run a command on many hosts at once; a summary says which failed",
                        usage="socketkit remote run [options] TARGET... -- COMMAND")
    r.add_argument("targets", nargs="*", metavar="TARGET", help="ssh://user@host:port, user@host or host")
    _client_options(r)
    r.add_argument("--json", action="store_true", help="one JSON result per host per line, nothing else")
    r.set_defaults(run=_cmd_run)

    c = rsub.add_parser("copy", help="push files to many hosts over sftp: FILE... TARGET:PATH")
    c.add_argument("paths", nargs="+", metavar="FILE... TARGET:PATH")
    c.add_argument("-r", "--recursive", action="store_true", help="copy directories")
    _client_options(c)
    c.set_defaults(run=_cmd_copy)

    d = rsub.add_parser("desktop", help="a VNC desktop in the browser: noVNC viewer + websockify-compatible bridge, "
                        "loopback and a token by default")
    d.add_argument("--vnc", default="tcp://127.0.0.1:5900", metavar="URL",
                   help="the VNC server (default tcp://127.0.0.1:5900; tls:// and unix:// too)")
    d.add_argument("--listen", action="append", metavar="URL", help="endpoint, repeatable (default "
                   "tcp://127.0.0.1:6080; tls://HOST:PORT for HTTPS, ?verify=true&ca=FILE for client certificates)")
    t = d.add_mutually_exclusive_group()
    t.add_argument("--token", help="the token browsers must present (default: made up and printed)")
    t.add_argument("--token-file", metavar="FILE", help="read the token from FILE (keeps it out of ps)")
    d.add_argument("--audit-log", metavar="FILE", help="JSON-lines audit log (default: the data directory's)")
    g = d.add_argument_group("limits")
    g.add_argument("--max-connections", type=int, help="open connections (pages and sessions; default 64)")
    g.add_argument("--max-sessions", type=int, help="desktop sessions at once (default 16)")
    g.add_argument("--idle-timeout", type=float, metavar="S", help="seconds with nothing moving before a "
                   "session is closed (default 3600)")
    g.add_argument("--buffer", type=int, metavar="BYTES", help="bytes held per direction per stage (default "
                   "1048576; at most 16 sessions): a slow browser slows the VNC server down instead")
    d.set_defaults(run=_cmd_desktop)

    ca = rsub.add_parser("ca", help="SSH certificate authorities: init, sign-user, sign-host")
    csub = ca.add_subparsers(dest="ca_command", metavar="ACTION")
    csub.required = True
    x = csub.add_parser("init", help="create a user CA and a host CA under the data directory")
    x.set_defaults(run=_cmd_ca_init)
    x = csub.add_parser("sign-user", help="certify a user's public key: who they may log in as, for how long")
    x.add_argument("key", metavar="KEY.pub")
    x.add_argument("--principal", action="append", required=True, metavar="NAME", help="account name (repeatable)")
    x.add_argument("--valid", default="8h", help="how long, e.g. 8h, 30m, 7d (default 8h)")
    x.add_argument("--id", help="the certificate's key id (shown in logs)")
    x.set_defaults(run=_cmd_sign_user)
    x = csub.add_parser("sign-host", help="certify a host's public key for the names clients use")
    x.add_argument("key", metavar="KEY.pub")
    x.add_argument("--name", action="append", required=True, help="host name or address (repeatable)")
    x.add_argument("--valid", default="52w", help="how long (default 52w)")
    x.add_argument("--id", help="the certificate's key id")
    x.set_defaults(run=_cmd_sign_host)


def _cmd_serve(args: argparse.Namespace) -> int:
    import dataclasses

    from socketkit.net.loop import run
    from socketkit.remote.server import RemoteConfig, RemoteLimits, serve_remote

    changes = {k: v for k, v in (("max_connections", args.max_connections), ("max_startups", args.max_startups),
                                 ("max_auth_tries", args.max_auth_tries), ("login_grace_time", args.login_grace_time),
                                 ("idle_timeout", args.idle_timeout)) if v is not None}
    config = RemoteConfig(authorized_keys=args.authorized_keys, host_key=args.host_key, trusted_ca=args.trusted_ca,
                          audit_log=args.audit_log, allow_forwarding=args.allow_forwarding, user=args.user,
                          limits=dataclasses.replace(RemoteLimits(), **changes))
    if args.listen:
        config.listen = list(args.listen)
    run(serve_remote(config), loop=args.loop)
    return 0


def _cmd_desktop(args: argparse.Namespace) -> int:
    import dataclasses

    from socketkit.net.loop import run
    from socketkit.remote.desktop import DesktopConfig, DesktopLimits, read_token_file, serve_desktop

    token = read_token_file(args.token_file) if args.token_file else args.token
    changes = {k: v for k, v in (("max_connections", args.max_connections), ("max_bridges", args.max_sessions),
                                 ("idle_timeout", args.idle_timeout), ("buffer", args.buffer)) if v is not None}
    for name, value in changes.items():
        if value <= 0:
            raise SocketkitError(f"--{name.replace('_', '-')} must be positive, got {value}")
    config = DesktopConfig(vnc=args.vnc, token=token, audit_log=args.audit_log,
                           limits=dataclasses.replace(DesktopLimits(), **changes))
    if args.listen:
        config.listen = list(args.listen)
    run(serve_desktop(config), loop=args.loop)
    return 0


def _command_of(args: argparse.Namespace) -> tuple[list[str], str]:
    command = getattr(args, "after_dashes", None)
    if not command:
        raise SocketkitError("put the command after --, e.g. socketkit remote run web1 web2 -- uptime")
    if not args.targets and not args.hosts:
        raise SocketkitError("no hosts: give targets before -- or --hosts FILE")
    import shlex

    # One word is a shell command line as given (`-- 'ls -l | wc -l'`), several are quoted for the shell.
    return list(args.targets), command[0] if len(command) == 1 else shlex.join(command)


def _cmd_run(args: argparse.Namespace) -> int:
    from socketkit.remote.fanout import run_command

    targets, command = _command_of(args)
    return run_command(targets, command, hosts_file=args.hosts, parallel=args.parallel, timeout=args.timeout,
                       identity=args.identity, known_hosts=args.known_hosts, ssh_config=args.ssh_config,
                       json=args.json, loop=args.loop)


def _cmd_copy(args: argparse.Namespace) -> int:
    from socketkit.remote.fanout import copy_command

    if len(args.paths) < 2:
        raise SocketkitError("copy FILE... TARGET:PATH (or --hosts FILE and :PATH)")
    return copy_command(args.paths[:-1], args.paths[-1], hosts_file=args.hosts, recursive=args.recursive,
                        parallel=args.parallel, timeout=args.timeout, identity=args.identity,
                        known_hosts=args.known_hosts, ssh_config=args.ssh_config, loop=args.loop)


def _cmd_ca_init(args: argparse.Namespace) -> int:
    from socketkit.remote import ca

    made, created = ca.init()
    print(("created" if created else "already there") + f": user CA {made.user_key}, host CA {made.host_key}")
    print(f"servers trust users it signs with:   socketkit remote serve --trusted-ca {made.user_pub}")
    print(f"  (OpenSSH: TrustedUserCAKeys {made.user_pub})")
    print(f"clients trust hosts it signs with this known_hosts line:\n  {ca.known_hosts_line()}")
    return 0


def _cmd_sign_user(args: argparse.Namespace) -> int:
    from socketkit.remote import ca

    path = ca.sign_user(args.key, args.principal, args.valid, key_id=args.id)
    print(f"{path}: user certificate for {', '.join(args.principal)}, valid {args.valid}")
    return 0


def _cmd_sign_host(args: argparse.Namespace) -> int:
    from socketkit.remote import ca

    path = ca.sign_host(args.key, args.name, args.valid, key_id=args.id)
    print(f"{path}: host certificate for {', '.join(args.name)}, valid {args.valid} "
          "(sshd: HostCertificate; socketkit remote serve: found next to its host key)")
    return 0
