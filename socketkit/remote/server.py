"""`socketkit remote serve`: an SSH server that stock OpenSSH clients use unchanged (ssh, scp, sftp).

    remote = await start_remote(RemoteConfig(listen=["tcp://127.0.0.1:2222"]))
    remote.servers, remote.fingerprint, remote.sessions(), remote.audit.tail(20)
    await remote.aclose()
    await serve_remote(config)          # until SIGINT/SIGTERM, with the lines a person needs to connect

asyncssh speaks SSH; the socket layer binds the listeners and keeps the connection limits
(socketkit.net.listen); this package adds what a login server needs around them: one account (the one
the server runs as), public keys and certificates only, commands and shells on real ptys (server_session,
pty), sftp/scp in the user's home (sftp), OpenSSH's limits (RemoteLimits), and an audit log written before
each action (audit).

Started as root with `user=`, it binds and reads its host key first, then drops to that user for good.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import os
import pwd
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from socketkit.net.endpoint import parse
from socketkit.net.limits import Limits
from socketkit.net.listen import SocketServer, start_socket_server
from socketkit.net.loop import stop_on_signals
from socketkit.remote import DEFAULT_LISTEN, audit_log_path, host_key_path
from socketkit.remote.audit import AuditLog
from socketkit.remote.auth import Account, KeyStore, RemoteError

log = logging.getLogger("socketkit.remote")


CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")


@dataclass(frozen=True)
class RemoteLimits:
    """OpenSSH's limits, with its defaults where it has one. 0 turns a timeout off."""
    #: open connections in all (SocketServer's max_connections)
    max_connections: int = 1000
    #: connections not yet authenticated, from everywhere (MaxStartups' hard limit, 100)
    max_unauthenticated: int = 100
    #: connections not yet authenticated from one address (MaxStartups' first number, counted per address as
    #: PerSourceMaxStartups does); authenticated ones no longer count
    max_startups: int = 10
    #: failed authentication attempts on one connection before it is cut (MaxAuthTries)
    max_auth_tries: int = 6
    #: seconds from the connection to a successful login, version line included (LoginGraceTime)
    login_grace_time: float = 120.0
    #: seconds without traffic (bytes from the client, channel data to it), sessions open or not (0: never, as
    #: sshd by default; with keepalives on, the client's answers count as traffic)
    idle_timeout: float = 0.0
    #: seconds an authenticated connection may stay without any open session or forward (UnusedConnectionTimeout)
    unused_timeout: float = 600.0
    #: seconds between keepalive probes of a silent client (ClientAliveInterval; 0: none) ...
    keepalive_interval: float = 0.0
    #: ... and probes left unanswered before it is dropped (ClientAliveCountMax)
    keepalive_count_max: int = 3
    #: sessions (shells, commands, sftp) open at once on one connection (MaxSessions)
    max_sessions: int = 10
    #: seconds connections get to end when the server stops
    drain_timeout: float = 2.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            whole = f.type == "int"
            kinds = (int,) if whole else (int, float)
            positive = f.name.startswith("max_") or f.name == "keepalive_count_max"
            if isinstance(value, bool) or not isinstance(value, kinds) or not (
                    0 < value < math.inf if positive else 0 <= value < math.inf):
                what = "whole number above 0" if whole else "number of seconds (0: off)"
                raise ValueError(f"RemoteLimits.{f.name} must be a {what}, got {value!r}")


@dataclass
class RemoteConfig:
    listen: list[str] = field(default_factory=lambda: [DEFAULT_LISTEN])
    authorized_keys: str | os.PathLike[str] | None = None   # None: ~/.ssh/authorized_keys of the account
    host_key: str | os.PathLike[str] | None = None          # None: generated under the data directory
    trusted_ca: str | os.PathLike[str] | None = None        # a user CA public key file (TrustedUserCAKeys)
    audit_log: str | os.PathLike[str] | None = None         # None: socketkit.remote.audit_log_path()
    allow_forwarding: bool = False
    user: str | None = None                                 # started as root: become this user after binding
    limits: RemoteLimits = field(default_factory=RemoteLimits)


def _target_account(user: str | None) -> Account:
    if not user:
        return Account.current()
    try:
        pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
    except KeyError:
        raise RemoteError(f"user {user!r}: no such user") from None
    if os.geteuid() not in (0, pw.pw_uid):
        raise RemoteError(f"user {user!r}: only root can serve as another user (running as uid {os.geteuid()})")
    shell = pw.pw_shell if pw.pw_shell and os.path.isabs(pw.pw_shell) else "/bin/sh"
    return Account(pw.pw_name, pw.pw_uid, pw.pw_dir or "/", shell, Account.current().path if pw.pw_uid == 0
                   else "/usr/local/bin:/usr/bin:/bin:/usr/games")


def load_host_key(path: str | os.PathLike[str] | None) -> tuple[Any, Any, Path]:
    """(private key, host certificate or None, path): the given key, or the data directory's, made on first use."""
    import asyncssh

    from socketkit.remote.ca import _write_private

    key_path = Path(path) if path is not None else host_key_path()
    if path is None and not key_path.exists():
        try:
            _write_private(asyncssh.generate_private_key("ssh-ed25519", comment="socketkit remote host key"),
                           key_path)
            log.info("remote: made a host key %s", key_path)
        except FileExistsError:  # another server made it a moment ago: use theirs
            pass
    try:
        key = asyncssh.read_private_key(str(key_path))
    except (OSError, asyncssh.KeyImportError, ValueError) as e:
        raise RemoteError(f"cannot read the host key {key_path}: {getattr(e, 'strerror', None) or e}") from None
    cert_path = key_path.with_name(key_path.name + "-cert.pub")
    cert = None
    if cert_path.exists():
        try:
            cert = asyncssh.read_certificate(str(cert_path))
        except (OSError, asyncssh.KeyImportError, ValueError) as e:
            raise RemoteError(f"cannot read the host certificate {cert_path}: {e}") from None
        if cert.key.public_data != key.public_data:
            raise RemoteError(f"{cert_path} certifies another key than {key_path}: sign it again "
                              f"(socketkit remote ca sign-host {key_path}.pub)")
    return key, cert, key_path


def _preload() -> None:
    """Modules imported lazily while serving (asyncssh's executor for options, idna for host names): loaded
    now, because after dropping privileges the interpreter's own directory may no longer be readable (a
    Python under /root, as pyenv installs it)."""
    import concurrent.futures.thread  # noqa: F401
    import encodings.idna  # noqa: F401


class RemoteServer:
    """A running `remote serve`: .servers, .fingerprint, .sessions(), .audit, aclose()."""

    def __init__(self, config: RemoteConfig) -> None:
        self.config = config
        self.limits = config.limits
        self.servers: list[SocketServer] = []
        self.fingerprint = ""
        self.host_key_type = ""
        self.host_cert = False
        self.account: Account
        self.keys: KeyStore
        self.audit: AuditLog
        self.children: set[Any] = set()       # pty.Reaper of every running session process
        self._conns: set[Any] = set()          # ConnState
        self._unauthenticated = 0
        self._options: Any = None
        self._ready = asyncio.Event()
        self._closing = False

    # -- start -----------------------------------------------------------------------------------------
    async def _start(self) -> None:
        import asyncssh

        from socketkit.net.process import drop_privileges
        from socketkit.remote.server_conn import Handler

        config = self.config
        listen = [config.listen] if isinstance(config.listen, str) else config.listen
        endpoints = [parse(e) for e in listen]  # EndpointError names the bad one, before anything else
        self.account = _target_account(config.user)
        keys_path = Path(config.authorized_keys) if config.authorized_keys is not None else \
            Path(self.account.home) / ".ssh" / "authorized_keys"
        self.keys = KeyStore(keys_path, Path(config.trusted_ca) if config.trusted_ca is not None else None)
        key, cert, _ = load_host_key(config.host_key)
        self.fingerprint = key.get_fingerprint("sha256")
        alg = key.get_algorithm()
        self.host_key_type = alg.decode() if isinstance(alg, bytes) else str(alg)
        self.host_cert = cert is not None
        self.audit = AuditLog(config.audit_log if config.audit_log is not None else audit_log_path())
        limits = self.limits
        try:
            self._options = asyncssh.SSHServerConnectionOptions(
                server_factory=lambda: Handler(self), server_host_keys=[key],
                server_host_certs=[cert] if cert is not None else (), gss_host=None,
                public_key_auth=True, password_auth=False, kbdint_auth=False, host_based_auth=False,
                allow_pty=True, line_editor=False, x11_forwarding=False, agent_forwarding=False,
                encoding=None, login_timeout=limits.login_grace_time + 5 if limits.login_grace_time else 0,
                # AES-GCM only: one AEAD call per packet with the CPU's AES instructions. asyncssh's
                # chacha20-poly1305 costs four primitive calls and a cipher object per packet in Python, about
                # twice the CPU; OpenSSH clients (the client's order decides) then pick AES-GCM, which every
                # OpenSSH since 6.2 speaks, and is what hardened sshd configurations keep anyway.
                encryption_algs=list(CIPHERS),
                keepalive_interval=limits.keepalive_interval, keepalive_count_max=limits.keepalive_count_max)
        except (ValueError, asyncssh.Error) as e:
            self.audit.close()
            raise RemoteError(f"cannot set up the SSH server: {e}") from None
        try:
            server = await start_socket_server(
                endpoints, self._handle, limits=Limits(max_connections=limits.max_connections,
                                                       drain_timeout=max(limits.drain_timeout, 0.001)),
                per_address=limits.max_startups, name="remote", on_refused=self._refused)
        except BaseException:
            self.audit.close()
            raise
        self.servers.append(server)
        _preload()
        try:
            drop_privileges(config.user)  # listeners bound, host key read, audit log open: now nothing as root
        except BaseException:
            await self.aclose()
            raise
        self.audit.write("start", listen=[str(e) for e in server.endpoints], user=self.account.name,
                         fingerprint=self.fingerprint, host_cert=self.host_cert,
                         allow_forwarding=config.allow_forwarding)
        self._ready.set()

    # -- connections -------------------------------------------------------------------------------------
    def _refused(self, peer: Any, limit: str) -> None:
        ip = peer[0] if isinstance(peer, tuple) else str(peer)
        name = "max_connections" if limit == "max_connections" else "max_startups"
        value = getattr(self.limits, name)
        log.warning("remote: connection from %s refused (limit %s=%s)", ip, name, value)
        self.audit.write("limit", peer=ip, limit=name, value=value, message="connection refused")

    def traffic(self, bytes_in: int, bytes_out: int) -> None:
        """Bytes on the wire of one of our connections, for the listener's counters."""
        if self.servers:
            listener = self.servers[0]
            listener.bytes_in += bytes_in
            listener.bytes_out += bytes_out

    async def _handle(self, sock: Any, peer: Any) -> None:
        from socketkit.remote.server_conn import Connection, ConnState

        await self._ready.wait()
        loop = asyncio.get_running_loop()
        try:
            st = ConnState(self, sock, peer)
        except OSError:  # reset between accept() and now: nothing to serve, nothing to record
            return
        if self._unauthenticated >= self.limits.max_unauthenticated:
            st.limit_hit("max_unauthenticated", self.limits.max_unauthenticated, "connection refused")
            return
        self._unauthenticated += 1
        st.counted = True
        self._conns.add(st)
        st.audit("connect", port=st.peer_port, local=f"{st.local_ip}:{st.local_port}")
        conn = Connection(loop, self._options)
        conn.sk = st
        st.conn = conn
        st.start_grace()
        try:
            try:
                await loop.create_connection(lambda: conn, sock=sock)
            except OSError as e:
                st.reason = f"connection failed: {e.strerror or e}"
                return
            await conn.wait_closed()
        finally:
            st.cancel_timers()
            if not conn.is_closed():  # cancelled: the server is stopping
                conn.abort()
            self._uncount(st)
            self._conns.discard(st)
            st.audit("disconnect", port=st.peer_port, duration=round(time.monotonic() - st.start_mono, 3),
                     authenticated=st.authenticated, reason=st.reason or "closed")

    def _uncount(self, st: Any) -> None:
        if st.counted:
            st.counted = False
            self._unauthenticated -= 1

    def listener_release(self, st: Any) -> None:
        """An authenticated connection no longer counts against the unauthenticated limits."""
        self._uncount(st)
        for server in self.servers:
            server.release(st.sock)

    # -- what a status page shows --------------------------------------------------------------------------
    def sessions(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for st in list(self._conns):
            out.extend(st.describe())
        return out

    @property
    def endpoints(self) -> list[Any]:
        return [ep for s in self.servers for ep in s.endpoints]

    # -- stop ----------------------------------------------------------------------------------------------
    async def aclose(self) -> None:
        if self._closing:
            return
        self._closing = True
        for st in list(self._conns):
            st.cut("server shutting down")
        for server in self.servers:
            await server.aclose(drain=self.limits.drain_timeout)
        await self._end_children()
        if hasattr(self, "audit"):
            self.audit.write("stop")
            self.audit.close()

    async def _end_children(self) -> None:
        # Their sessions hung them up already; whatever still runs a moment later is killed, and reaped.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 0.5
        while any(r.alive for r in self.children) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        for reaper in [r for r in self.children if r.alive]:
            reaper.kill_group(signal.SIGKILL)
        deadline = loop.time() + 2.0
        while any(r.alive for r in self.children) and loop.time() < deadline:
            await asyncio.sleep(0.02)
        self.children.clear()


async def start_remote(config: RemoteConfig | None = None) -> RemoteServer:
    """Bind, read the host key and the keys to accept, drop privileges if asked, then serve."""
    remote = RemoteServer(config or RemoteConfig())
    await remote._start()
    return remote


def announce(remote: RemoteServer) -> None:
    for ep in remote.endpoints:
        sys.stderr.write(f"remote listening on {ep}\n")
    cert = ", with a host certificate" if remote.host_cert else ""
    sys.stderr.write(f"remote host key {remote.fingerprint} ({remote.host_key_type}{cert})\n")
    if remote.endpoints:
        ep = remote.endpoints[0]
        host = ep.host if ep.host not in ("0.0.0.0", "::", "") else "HOST"
        port = "" if ep.port == 22 else f"-p {ep.port} "
        sys.stderr.write(f"connect with: ssh {port}{remote.account.name}@{host}\n")
    sys.stderr.flush()


async def serve_remote(config: RemoteConfig | None = None, *, ready: Callable[[RemoteServer], Any] | None = None,
                       stop: asyncio.Event | None = None) -> None:
    """Run until SIGINT/SIGTERM (or `stop` is set); `ready` (default: print how to connect) once up."""
    remote = await start_remote(config)
    try:
        with stop_on_signals(stop) as stopping:
            (ready or announce)(remote)
            await stopping.wait()
    finally:
        await remote.aclose()


__all__ = ["RemoteConfig", "RemoteError", "RemoteLimits", "RemoteServer", "serve_remote", "start_remote"]
