"""`socketkit status`: what a running `socketkit up` is doing, read from a terminal through a Unix socket in
the data directory that only the same user can open (the socket is 0600 in a 0700 directory).

The protocol is one line each way: the client sends `status\n`, the server answers one JSON object and
closes. No secrets travel (the same figures the dashboard shows).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socketkit.errors import SocketkitError
from socketkit.net.server import Server, start_server

if TYPE_CHECKING:
    from socketkit.dashboard.core import Dashboard
    from socketkit.net.stream import Stream


def socket_path() -> Path:
    from socketkit.net.certs import data_dir

    return data_dir() / "up.sock"


def snapshot(dash: Dashboard, busiest: int = 10) -> dict[str, Any]:
    sockets = dash.sockets()
    conns = [dict(c, service=s["name"]) for s in sockets for c in s["connections"]]
    conns.sort(key=lambda c: -(c.get("bytes_in", 0) + c.get("bytes_out", 0)))
    return {"pid": os.getpid(), "started": dash.started, "services": dash.status(),
            "listeners": {s["name"]: s["listeners"] for s in sockets}, "busiest": conns[:busiest],
            "open": sum(len(s["connections"]) for s in sockets)}


async def start_status_socket(dash: Dashboard, path: Path | None = None) -> Server:
    path = path or socket_path()

    async def answer(stream: Stream) -> None:
        line = await stream.receive_until(b"\n", max_size=64, timeout=5)
        if line.strip() != b"status":
            await stream.send(b'{"error": "send the word status and a newline"}\n')
            return
        await stream.send(json.dumps(snapshot(dash)).encode() + b"\n")

    return await start_server(f"unix://{path}?mode=600", answer, name="status")


def query(path: Path | None = None, timeout: float = 5.0) -> dict[str, Any]:
    path = path or socket_path()
    if not path.exists():
        raise SocketkitError(f"socketkit up is not running for this user (no {path})")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(str(path))
        s.sendall(b"status\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
            if len(data) > 16 << 20:
                raise SocketkitError("socketkit up sent a status larger than 16 MiB")
    except (ConnectionRefusedError, FileNotFoundError):
        raise SocketkitError(f"socketkit up is not running for this user ({path} is stale)") from None
    except OSError as e:
        raise SocketkitError(f"cannot read the status from {path}: {e.strerror or e}") from None
    finally:
        s.close()
    return json.loads(data)


def render(status: dict[str, Any]) -> str:
    """The terminal view: services, listeners, the busiest connections."""
    from socketkit.peer.progress import human

    lines = [f"socketkit up (pid {status['pid']}), {status['open']} open connections"]
    lines.append(f"{'service':<10}{'open':>6}{'accepted':>10}{'refused':>9}{'errors':>8}{'in':>10}{'out':>10}  listening on")
    for s in status["services"]:
        lines.append(f"{s['name']:<10}{s['open']:>6}{s['accepted']:>10}{s['refused']:>9}{s['errors']:>8}"
                     f"{human(s['bytes_in']):>10}{human(s['bytes_out']):>10}  {', '.join(s['endpoints'])}")
    if status["busiest"]:
        lines.append("")
        lines.append(f"{'busiest connections':<28}{'service':<10}{'protocol':<24}{'age':>8}{'in':>10}{'out':>10}{'idle':>7}")
        for c in status["busiest"]:
            lines.append(f"{c['peer']:<28}{c['service']:<10}{c['protocol'][:23]:<24}{c['age']:>7.0f}s"
                         f"{human(c['bytes_in']):>10}{human(c['bytes_out']):>10}{c['idle']:>6.0f}s")
    return "\n".join(lines)


__all__ = ["query", "render", "snapshot", "socket_path", "start_status_socket"]
