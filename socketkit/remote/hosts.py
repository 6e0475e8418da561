"""Where `remote run` and `remote copy` go: targets as people write them, hosts files, `TARGET:PATH`.

A target is `ssh://user@host:port`, `user@host:port`, `user@host`, `host:port` or `host` (an IPv6 address in
brackets when a port follows: `[::1]:2222`). What is not given (user, port) is left to the ssh config and then
to ssh's defaults (the local user, port 22), so `web1` may be a `Host web1` alias of ~/.ssh/config.
No I/O here beyond reading a hosts file; nothing imports asyncssh.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass

from socketkit.errors import SocketkitError


class TargetError(SocketkitError, ValueError):
    """A target, a hosts file line or a copy destination could not be understood."""


@dataclass(frozen=True)
class Target:
    host: str
    user: str | None = None
    port: int | None = None
    label: str = ""  # as the person wrote it (minus ssh://): the prefix of its output lines and its row

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", format_target(self.host, self.user, self.port))

    def __str__(self) -> str:
        return self.label


def format_target(host: str, user: str | None = None, port: int | None = None) -> str:
    shown = f"[{host}]" if ":" in host and port is not None else host
    return (f"{user}@" if user else "") + shown + (f":{port}" if port is not None else "")


_BAD_HOST = re.compile(r"[\s/@\[\]\\#,'\"`$;&|<>(){}*?!]")


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TargetError(f"bad target {text!r}: port {port!r} is not a number from 1 to 65535")
    return int(port)


def parse_target(text: str) -> Target:
    """One target as written on the command line or in a hosts file."""
    raw = text.strip()
    body = raw
    if body.lower().startswith("ssh://"):
        body = body[6:].rstrip("/")
    elif "://" in body:
        raise TargetError(f"bad target {text!r}: only ssh:// URLs (or user@host:port) are understood")
    if not body:
        raise TargetError(f"bad target {text!r}: no host")
    user = None
    if "@" in body:
        user, _, body = body.rpartition("@")
        if not user or re.search(r"[\s:/]", user):
            raise TargetError(f"bad target {text!r}: bad user name {user!r}")
    port = None
    if body.startswith("["):
        host, sep, rest = body[1:].partition("]")
        if not sep or not host:
            raise TargetError(f"bad target {text!r}: an IPv6 address in brackets needs its ']'")
        if rest:
            if not rest.startswith(":"):
                raise TargetError(f"bad target {text!r}: write [address]:port")
            port = _port(text, rest[1:])
    elif body.count(":") == 1:
        host, _, p = body.partition(":")
        port = _port(text, p)
    else:
        host = body  # a bare IPv6 address (no port), or a plain name
    if ":" in host:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise TargetError(f"bad target {text!r}: {host!r} is not an IPv6 address (write [address]:port)") from None
    elif not host or _BAD_HOST.search(host):
        raise TargetError(f"bad target {text!r}: {host!r} is not a host name or address")
    label = raw[6:].rstrip("/") if raw.lower().startswith("ssh://") else raw
    return Target(host=host, user=user, port=port, label=label)


def read_hosts_file(path: str | os.PathLike[str]) -> list[Target]:
    """One target per line; `#` starts a comment; blank lines are skipped. Errors name FILE:LINE."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TargetError(f"cannot read the hosts file {os.fspath(path)}: {getattr(e, 'strerror', None) or e}") from None
    found = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        if len(text.split()) > 1:
            raise TargetError(f"{os.fspath(path)}:{number}: one target per line, found {text!r}")
        try:
            found.append(parse_target(text))
        except TargetError as e:
            raise TargetError(f"{os.fspath(path)}:{number}: {e}") from None
    return found


def collect_targets(targets: list[str] | tuple[str, ...] = (),
                    hosts_file: str | os.PathLike[str] | None = None) -> list[Target]:
    """The targets given, then the hosts file's, in order; a label named twice runs once."""
    found = [t if isinstance(t, Target) else parse_target(t) for t in targets]
    if hosts_file is not None:
        found += read_hosts_file(hosts_file)
    seen: set[str] = set()
    unique = []
    for t in found:
        if t.label not in seen:
            seen.add(t.label)
            unique.append(t)
    if not unique:
        raise TargetError("no hosts: give targets or a hosts file" + (f" ({os.fspath(hosts_file)} lists none)"
                                                                       if hosts_file is not None else ""))
    return unique


_COPY_PORT = re.compile(r"^(?P<head>(?:ssh://)?(?:[^@/:\[\]\s]+@)?(?:\[[^\]]+\]|[^:/\[\]@\s]+)):(?P<port>\d+):"
                        r"(?P<path>.*)$", re.IGNORECASE)
_COPY_PLAIN = re.compile(r"^(?P<head>(?:ssh://)?(?:[^@/:\[\]\s]+@)?(?:\[[^\]]+\]|[^:/\[\]@\s]+)):(?P<path>.*)$",
                         re.IGNORECASE)


def parse_copy_target(spec: str) -> tuple[Target | None, str]:
    """`TARGET:PATH` -> (target, path); `:PATH` -> (None, path) for a hosts file's hosts. As scp: `host:` is the
    home directory, a relative path is under it; a port goes between host and path (`user@host:2222:/tmp`,
    `ssh://host:2222:/tmp`, `[::1]:2222:/tmp`). A path ending in `/` is a directory (made when missing)."""
    if spec.startswith(":"):
        return None, spec[1:]
    m = _COPY_PORT.match(spec) or _COPY_PLAIN.match(spec)
    if not m:
        raise TargetError(f"bad copy destination {spec!r}: write HOST:PATH, user@host:port:PATH, or :PATH with "
                          "--hosts FILE")
    head = m.group("head")
    target = parse_target(head + (f":{m.group('port')}" if m.groupdict().get("port") else ""))
    return target, m.group("path")


__all__ = ["Target", "TargetError", "collect_targets", "format_target", "parse_copy_target", "parse_target",
           "read_hosts_file"]
