"""Process-level concerns of a server: --workers (SO_REUSEPORT), --user (privilege drop after binding),
and systemd socket activation (LISTEN_FDS).

Nginx and Postfix bind port 80/25 as root and then drop to an unprivileged user; we do the same: the
listeners are opened first, then `drop_privileges()` runs before the first connection is handled.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable, Sequence

from socketkit.errors import SocketkitError
from socketkit.net.endpoint import Endpoint

log = logging.getLogger("socketkit.process")
SD_LISTEN_FDS_START = 3


def drop_privileges(user: str | None) -> None:
    """Become `user` (name or uid) for good: groups, gid, then uid. No-op without a user."""
    if not user:
        return
    import pwd

    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise SocketkitError(f"--user {user}: no such user") from None
    if os.geteuid() != 0:
        if os.geteuid() == pw.pw_uid:
            return
        raise SocketkitError(f"--user {user}: only root can switch users (running as uid {os.geteuid()})")
    os.setgroups(os.getgrouplist(pw.pw_name, pw.pw_gid))
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
    if os.getuid() == 0 and pw.pw_uid != 0:  # pragma: no cover - the kernel refused silently
        raise SocketkitError(f"--user {user}: still root after setuid")
    log.info("dropped privileges to %s (uid %d)", pw.pw_name, pw.pw_uid)


def systemd_sockets(unset: bool = True) -> list[socket.socket]:
    """Listening sockets passed by systemd (sd_listen_fds protocol), or [] when there are none."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return []
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return []
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    socks = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        try:
            os.set_inheritable(fd, False)
            socks.append(socket.socket(fileno=fd))
        except OSError as e:
            raise SocketkitError(f"LISTEN_FDS={count}, but file descriptor {fd} is not a usable socket "
                                 f"({e.strerror or e})") from None
    return socks


def reserve_ports(endpoints: Sequence[Endpoint]) -> tuple[list[Endpoint], list[socket.socket]]:
    """Give port-0 TCP endpoints a concrete port that every worker can bind with SO_REUSEPORT.

    The returned placeholder sockets hold the port for as long as they are open: keep them until the
    workers are done (bound, never listening, they take no connections), so that no other socket can get
    the port before every worker has bound it.
    """
    out, holders = [], []
    for ep in endpoints:
        if ep.is_unix or ep.port != 0:
            out.append(ep)
            continue
        family = socket.AF_INET6 if ep.ip_version == 6 else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ep.host, 0))
        holders.append(sock)
        out.append(ep.with_port(sock.getsockname()[1]))
    return out, holders


def run_workers(count: int, worker: Callable[[int], int | None]) -> int:
    """Fork `count` workers running `worker(index)`; forward SIGINT/SIGTERM; wait for all of them.

    Returns the worst exit status. Must be called before any event loop runs in this process.
    """
    children: dict[int, int] = {}
    for index in range(count):
        pid = os.fork()
        if pid == 0:  # child
            code = 1
            try:
                code = worker(index) or 0
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: object) -> None:
        for pid in list(children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    old = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    worst = 0
    try:
        while children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            children.pop(pid, None)
            code = os.waitstatus_to_exitcode(status)
            worst = max(worst, abs(code))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    return worst
