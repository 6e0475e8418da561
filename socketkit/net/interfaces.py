"""The machine's own IP addresses, for protocols that tell a peer where to reach them (transit hints).

Linux: IPv4 from SIOCGIFADDR per interface, IPv6 (global scope only: link-local needs a zone a hint cannot
carry) from /proc/net/if_inet6. Elsewhere: what the host name resolves to. Nothing here sends a packet.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

SIOCGIFADDR = 0x8915


def _ipv4(name: str) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            raw = fcntl.ioctl(s.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(raw[20:24])


def _ipv6() -> list[str]:
    out = []
    try:
        with open("/proc/net/if_inet6") as f:
            for line in f:
                fields = line.split()
                if len(fields) < 6 or fields[3] != "00":  # scope 00: global
                    continue
                out.append(str(ipaddress.IPv6Address(bytes.fromhex(fields[0]))))
    except OSError:
        pass
    return out


def local_addresses(*, loopback: bool = False) -> list[str]:
    """The addresses of this machine's interfaces that are up: IPv4 first, then global IPv6; loopback
    ones only when `loopback` is true or when there is nothing else."""
    found: list[str] = []
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    for name in names:
        addr = _ipv4(name)
        if addr and addr not in found:
            found.append(addr)
    found += [a for a in _ipv6() if a not in found]
    if not names:
        try:
            found += [i[4][0] for i in socket.getaddrinfo(socket.gethostname(), None, type=socket.SOCK_STREAM)]
        except OSError:
            pass
    outside = [a for a in found if not ipaddress.ip_address(a).is_loopback]
    if loopback or not outside:
        return outside + [a for a in found if ipaddress.ip_address(a).is_loopback] or ["127.0.0.1"]
    return outside


__all__ = ["local_addresses"]
