"""One SSH connection of `remote serve`: asyncssh's server connection with our rules around it.

- ConnState: what the server knows about the connection (peer, user, key, sessions), its audit helper and
  its timers (login grace, idle, traffic).
- Connection: asyncssh.SSHServerConnection plus the hooks asyncssh has no callback for: why a key was
  refused, counting failed attempts (MaxAuthTries), agent and X11 requests refused on the record, and
  activity stamps for the idle limits.
- Handler: the asyncssh.SSHServer callbacks: user and keys, sessions (MaxSessions), forwarding policy.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.constants import DEFAULT_LANG, MSG_DISCONNECT
from asyncssh.packet import String, UInt32

from socketkit.remote import auth
from socketkit.remote.server_session import SessionChannel

if TYPE_CHECKING:
    import socket

    from socketkit.remote.server import RemoteServer

log = logging.getLogger("socketkit.remote")

_CHANNEL_DATA = (94, 95)  # MSG_CHANNEL_DATA, MSG_CHANNEL_EXTENDED_DATA


class ConnState:
    def __init__(self, server: "RemoteServer", sock: "socket.socket", peer: Any) -> None:
        self.server = server
        self.sock = sock
        self.id = secrets.token_hex(4)
        self.peer_ip, self.peer_port = (peer[0], peer[1]) if isinstance(peer, tuple) else (str(peer), 0)
        local = sock.getsockname()
        self.local_ip, self.local_port = local[0], local[1]
        self.started = time.time()
        self.start_mono = time.monotonic()
        self.last_active = self.start_mono
        self.user: str | None = None
        self.login: dict[str, Any] = {}
        self.authenticated = False
        self.counted = False                # among the server's unauthenticated connections
        self.failures = 0
        self.channels = 0
        self.bytes_in = 0                   # on the wire, this connection's
        self.bytes_out = 0
        self.idle_since: float | None = None
        self.sessions: list[SessionChannel] = []
        self.reason: str | None = None      # set when we cut the connection ourselves
        self.conn: Connection | None = None
        self._grace: asyncio.TimerHandle | None = None
        self._idle: asyncio.TimerHandle | None = None

    # -- records -------------------------------------------------------------------------------------
    def audit(self, event: str, **fields: Any) -> None:
        self.server.audit.write(event, conn=self.id, peer=self.peer_ip, user=self.user, **fields)

    def log_event(self, what: str, **fields: Any) -> None:
        extra = " ".join(f"{k}={v}" for k, v in fields.items())
        log.warning("remote %s [%s:%s]: %s %s", self.id, self.peer_ip, self.peer_port, what, extra)

    def limit_hit(self, limit: str, value: Any, message: str) -> None:
        log.warning("remote %s [%s:%s]: %s (limit %s=%s)", self.id, self.peer_ip, self.peer_port, message,
                    limit, value)
        self.audit("limit", limit=limit, value=value, message=message)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    # -- the end -------------------------------------------------------------------------------------
    def cut(self, reason: str, code: int = asyncssh.DISC_BY_APPLICATION) -> None:
        """Close the connection from our side for `reason` (a limit): the client is told, if it listens."""
        if self.reason is None:
            self.reason = reason
        conn = self.conn
        if conn is None:
            return
        # The disconnect message goes first, before the channels close: OpenSSH's ssh ends as soon as its
        # last channel closes, and would then never print why (asyncssh's disconnect() closes them first).
        try:
            conn.send_packet(MSG_DISCONNECT, UInt32(code), String(reason), String(DEFAULT_LANG))
        except Exception:  # noqa: BLE001 - a transport already gone: abort is all that is left
            pass
        conn.abort()

    def cancel_timers(self) -> None:
        for timer in (self._grace, self._idle):
            if timer is not None:
                timer.cancel()
        self._grace = self._idle = None

    # -- timers ----------------------------------------------------------------------------------------
    def start_grace(self) -> None:
        grace = self.server.limits.login_grace_time
        if grace:
            self._grace = asyncio.get_running_loop().call_later(grace, self._grace_over)

    def _grace_over(self) -> None:
        self._grace = None
        if not self.authenticated:
            value = self.server.limits.login_grace_time
            self.limit_hit("login_grace_time", value, f"not authenticated after {value:g} s")
            self.cut(f"login grace time ({value:g} s) exceeded")

    def start_idle_watch(self) -> None:
        limits = self.server.limits
        checks = [t for t in (limits.unused_timeout, limits.idle_timeout) if t]
        if checks:
            self._idle = asyncio.get_running_loop().call_later(min(checks), self._check_idle)

    def _check_idle(self) -> None:
        self._idle = None
        limits, now = self.server.limits, time.monotonic()
        waits = []
        if limits.unused_timeout:
            if self.channels == 0:
                since = self.idle_since if self.idle_since is not None else now
                if now - since >= limits.unused_timeout:
                    self.limit_hit("unused_timeout", limits.unused_timeout,
                                   f"no open session or forward for {limits.unused_timeout:g} s")
                    self.cut(f"unused for {limits.unused_timeout:g} s: no session or forward open")
                    return
                waits.append(since + limits.unused_timeout - now)
            else:
                waits.append(limits.unused_timeout)
        if limits.idle_timeout:
            quiet = now - self.last_active
            if quiet >= limits.idle_timeout:
                self.limit_hit("idle_timeout", limits.idle_timeout,
                               f"no traffic for {limits.idle_timeout:g} s")
                self.cut(f"no traffic for {limits.idle_timeout:g} s")
                return
            waits.append(self.last_active + limits.idle_timeout - now)
        self._idle = asyncio.get_running_loop().call_later(max(0.05, min(waits)), self._check_idle)

    def session_closed(self, session: SessionChannel) -> None:
        if session in self.sessions:
            self.sessions.remove(session)

    def describe(self) -> list[dict[str, Any]]:
        base = {"conn": self.id, "peer": f"{self.peer_ip}:{self.peer_port}", "user": self.user,
                **{k: v for k, v in self.login.items() if k in ("fingerprint", "cert_id", "cert_serial")}}
        if not self.sessions:
            return [{**base, "kind": "connection" if self.authenticated else "authenticating", "command": None,
                     "started": self.started}]
        return [{**base, **s.describe()} for s in self.sessions]


class Connection(asyncssh.SSHServerConnection):
    """asyncssh's server connection; `sk` (our ConnState) is set before the transport starts."""

    sk: ConnState

    # -- activity ------------------------------------------------------------------------------------
    def data_received(self, data: bytes, datatype: Any = None) -> None:
        st = self.sk
        st.last_active = time.monotonic()
        st.bytes_in += len(data)
        st.server.traffic(len(data), 0)
        super().data_received(data, datatype)

    def _send(self, data: bytes) -> None:
        # asyncssh's one write to the transport (every packet, encrypted): bytes out on the wire. Should a
        # version rename it, this is simply never called and the counts stay at what came in.
        st = self.sk
        st.bytes_out += len(data)
        st.server.traffic(0, len(data))
        super()._send(data)

    def send_packet(self, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if pkttype in _CHANNEL_DATA:
            self.sk.last_active = time.monotonic()
        super().send_packet(pkttype, *args, handler=handler)

    def add_channel(self, chan: Any) -> int:
        self.sk.channels += 1
        self.sk.idle_since = None
        return super().add_channel(chan)

    def remove_channel(self, recv_chan: int) -> None:
        super().remove_channel(recv_chan)
        self.sk.channels = max(0, self.sk.channels - 1)
        if self.sk.channels == 0:
            self.sk.idle_since = time.monotonic()

    # -- authentication ----------------------------------------------------------------------------------
    async def _finish_userauth(self, *args: Any) -> None:
        # asyncssh's step for each auth request, (begin_auth, method, packet): the method is what a failure
        # is counted and logged by. Should a version rename it, failures are simply all counted.
        self.sk_method = next((a for a in args if isinstance(a, bytes)), b"")
        await super()._finish_userauth(*args)

    async def validate_public_key(self, username: str, key_data: bytes, msg: bytes, signature: bytes) -> bool:
        st = self.sk
        server = st.server
        problem = auth.certificate_problem(key_data)
        ok = problem is None and await super().validate_public_key(username, key_data, msg, signature)
        if ok and msg:
            st.login = auth.describe(key_data)
        elif not ok:
            reason = problem or auth.refusal_reason(key_data, username, server.account, server.keys)
            st.audit("auth", result="refused", method="publickey", login_as=username, reason=reason,
                     **auth.describe(key_data))
        return ok

    def send_userauth_failure(self, partial_success: bool) -> None:
        st = self.sk
        method = getattr(self, "sk_method", b"")
        self.sk_method = b""
        if method == b"none" and not getattr(self, "sk_none_asked", False):
            self.sk_none_asked = True  # every client asks "none" first to learn the methods; sshd lets it go
        else:
            st.failures += 1
            if method not in (b"publickey", b"none", b""):
                st.audit("auth", result="refused", method=method.decode(errors="replace"), login_as=st.user,
                         reason="only public keys and certificates are accepted")
        super().send_userauth_failure(partial_success)
        limit = st.server.limits.max_auth_tries
        if limit and st.failures >= limit:
            st.limit_hit("max_auth_tries", limit, f"{st.failures} failed authentication attempts")
            st.cut("Too many authentication failures", asyncssh.DISC_NO_MORE_AUTH_METHODS_AVAILABLE)

    # -- what we never allow -----------------------------------------------------------------------------
    async def create_agent_listener(self) -> bool:
        self.sk.audit("forward", direction="agent", allowed=False, reason="agent forwarding is not offered")
        return False

    async def attach_x11_listener(self, chan: Any, auth_proto: bytes, auth_data: bytes, screen: int) -> None:
        self.sk.audit("forward", direction="x11", allowed=False, reason="X11 forwarding is not offered")
        return None


class Handler(asyncssh.SSHServer):
    """asyncssh's callbacks for one connection."""

    def __init__(self, server: "RemoteServer") -> None:
        self.server = server
        self.st: ConnState | None = None
        self.conn: Connection | None = None

    def connection_made(self, conn: Any) -> None:
        self.conn = conn
        self.st = conn.sk

    def connection_lost(self, exc: Exception | None) -> None:
        st = self.st
        if st is None or st.reason is not None:
            return
        st.reason = str(exc) if exc else "closed"
        if exc is not None and "keepalive" in str(exc):  # asyncssh's ClientAlive check gave up on the client
            limits = self.server.limits
            st.limit_hit("keepalive_count_max", limits.keepalive_count_max,
                         f"no answer to {limits.keepalive_count_max} keepalives {limits.keepalive_interval:g} s apart")

    def begin_auth(self, username: str) -> bool:
        st, server = self.st, self.server
        assert st is not None and self.conn is not None
        st.user = username
        if username == server.account.name:
            keys = server.keys.authorized()
            if keys is not None:
                self.conn.set_authorized_keys(keys)
        return True  # always ask: even the wrong user name gets "Permission denied (publickey)"

    def public_key_auth_supported(self) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def host_based_auth_supported(self) -> bool:
        return False

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # keys come from authorized_keys only (asyncssh checks them before asking us)

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return username == self.server.account.name and self.server.keys.trusts_ca(key)

    def auth_completed(self) -> None:
        st = self.st
        assert st is not None
        st.authenticated = True
        st.idle_since = time.monotonic()
        st.audit("auth", result="accepted", method="publickey", **st.login)
        self.server.listener_release(st)
        st.start_idle_watch()

    # -- channels ------------------------------------------------------------------------------------
    def session_requested(self) -> Any:
        st = self.st
        assert st is not None
        limit = self.server.limits.max_sessions
        if limit and len(st.sessions) >= limit:
            st.limit_hit("max_sessions", limit, f"session refused: {len(st.sessions)} open on this connection")
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                            f"too many sessions on this connection (limit {limit})")
        session = SessionChannel(st)
        st.sessions.append(session)
        return session

    def _forward_refused(self, direction: str, host: str, port: int) -> str | None:
        if self.server.config.allow_forwarding:
            return None
        reason = "port forwarding is disabled on this server (remote serve --allow-forwarding)"
        assert self.st is not None
        self.st.audit("forward", direction=direction, host=host, port=port, allowed=False, reason=reason)
        return reason

    def connection_requested(self, dest_host: str, dest_port: int, orig_host: str, orig_port: int) -> Any:
        reason = self._forward_refused("local", dest_host, dest_port)
        if reason:
            raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, reason)
        assert self.st is not None
        self.st.audit("forward", direction="local", host=dest_host, port=dest_port, allowed=True,
                      origin=f"{orig_host}:{orig_port}")
        return True

    def server_requested(self, listen_host: str, listen_port: int) -> Any:
        if self._forward_refused("remote", listen_host, listen_port):
            return False
        assert self.st is not None and self.conn is not None
        # sshd's GatewayPorts no: a remote forward listens on the loopback only, whatever address it asks.
        bind = listen_host if listen_host in ("127.0.0.1", "::1") else "127.0.0.1"
        st, conn = self.st, self.conn
        st.audit("forward", direction="remote", host=listen_host, port=listen_port, allowed=True, bind=bind)

        async def listen() -> Any:
            try:
                return await conn.forward_local_port(bind, listen_port, listen_host, listen_port)
            except OSError as e:  # asyncssh answers the client with a failure
                st.audit("forward", direction="remote", host=listen_host, port=listen_port, allowed=True,
                         error=e.strerror or str(e))
                raise

        return listen()

    def unix_connection_requested(self, dest_path: str) -> Any:
        assert self.st is not None
        self.st.audit("forward", direction="local-unix", path=dest_path[:200], allowed=False,
                      reason="Unix socket forwarding is not offered")
        raise asyncssh.ChannelOpenError(asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                                        "Unix socket forwarding is not offered")

    def unix_server_requested(self, listen_path: str) -> bool:
        assert self.st is not None
        self.st.audit("forward", direction="remote-unix", path=listen_path[:200], allowed=False,
                      reason="Unix socket forwarding is not offered")
        return False
