"""asyncssh's client side as `remote run` and `remote copy` use it: what every host shares, prepared once (keys
and their certificates, known_hosts, connection options), one connection per host, and what went wrong in
words when it fails (timeout, unreachable, auth, a host key refused as unknown or mismatching).

asyncssh is imported inside the functions: importing this module stays cheap.
"""

from __future__ import annotations

import asyncio
import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from socketkit.remote.hosts import Target, TargetError

PathArg = str | os.PathLike[str]


def _paths(value: PathArg | list[PathArg] | tuple[PathArg, ...]) -> list[str]:
    return [os.fspath(value)] if isinstance(value, (str, os.PathLike)) else [os.fspath(v) for v in value]


def _read_known_hosts(known_hosts: PathArg | list[PathArg] | None):
    import asyncssh

    if known_hosts is None:  # as ssh: the user's file and the system's, either may be missing
        files = [p for p in (os.path.expanduser("~/.ssh/known_hosts"), "/etc/ssh/ssh_known_hosts")
                 if os.access(p, os.R_OK)]
    else:
        files = _paths(known_hosts)
    text = []
    for f in files:
        try:
            text.append(Path(f).read_text(encoding="utf-8", errors="replace"))
        except OSError as e:
            raise TargetError(f"cannot read known_hosts {f}: {e.strerror or e}") from None
    try:
        return asyncssh.import_known_hosts("\n".join(text))
    except ValueError as e:
        raise TargetError(f"bad known_hosts ({', '.join(files)}): {e}") from None


def _load_identity(identity: list[PathArg] | PathArg | None, config_names_keys: bool):
    """Keys and their certificates (KEY-cert.pub next to KEY is paired with it), loaded once for every host.
    () lets asyncssh choose per host: when the ssh config names IdentityFile for some host."""
    import asyncssh
    from asyncssh.public_key import load_default_keypairs

    if identity is None:
        return () if config_names_keys else list(load_default_keypairs())
    keys = []
    for path in _paths(identity):
        try:
            keys.extend(asyncssh.load_keypairs([path]))
        except (OSError, asyncssh.KeyImportError, asyncssh.KeyEncryptionError) as e:
            why = getattr(e, "strerror", None) or str(e)
            if "passphrase" in why.lower():
                why += " (an encrypted key: add it to ssh-agent with ssh-add and leave -i out)"
            raise TargetError(f"cannot load the identity {path}: {why}") from None
    return keys


@dataclass
class Setup:
    """Connection options prepared once, and the bound every host gets."""

    options: Any
    known_hosts: Any
    timeout: float
    parallel: int
    configs: list[str]

    @classmethod
    def prepare(cls, *, identity=None, known_hosts=None, ssh_config=None, agent: str | bool | None = None,
                timeout: float = 30.0, parallel: int = 64) -> Setup:
        import asyncssh

        if parallel < 1:
            raise TargetError(f"parallel must be at least 1, not {parallel}")
        if not timeout or timeout <= 0:
            raise TargetError(f"timeout must be more than 0 seconds, not {timeout}")
        if ssh_config is None:
            default = os.path.expanduser("~/.ssh/config")
            configs = [default] if os.access(default, os.R_OK) else []
        else:
            configs = _paths(ssh_config)
        names_keys = False
        for c in configs:
            try:
                names_keys |= "identityfile" in Path(c).read_text(errors="replace").lower()
            except OSError as e:
                raise TargetError(f"cannot read the ssh config {c}: {e.strerror or e}") from None
        kh = _read_known_hosts(known_hosts)
        keys = _load_identity(identity, names_keys)
        agent_path: Any = () if agent is None or agent is True else (agent or None)
        try:
            options = asyncssh.SSHClientConnectionOptions(
                config=[], known_hosts=kh, client_keys=keys, agent_path=agent_path,
                # ssh would ask for a password; a fan-out cannot: keys, certificates and the agent only
                password_auth=False, kbdint_auth=False, gss_kex=False, gss_auth=False, host_based_auth=False,
                x509_trusted_certs=None, connect_timeout=None, login_timeout=timeout, encoding=None)
        except (asyncssh.ConfigParseError, ValueError) as e:
            raise TargetError(f"bad ssh options: {e}") from None
        return cls(options, kh, float(timeout), parallel, configs)


@functools.cache
def client_class():
    """The SSHClient every host gets, made on first use (asyncssh is imported only then)."""
    import asyncssh

    class Client(asyncssh.SSHClient):
        """Remembers how far the connection got (for a timeout's message) and which host key was offered
        when known_hosts did not vouch for it (to say unknown or mismatch, and its fingerprint)."""

        phase = "connecting"
        offered: tuple | None = None

        def connection_made(self, conn) -> None:
            self.phase = "in the SSH handshake"

        def validate_host_public_key(self, host, addr, port, key) -> bool:
            self.offered = (host, addr, port, key)
            return False

        def validate_host_ca_key(self, host, addr, port, key) -> bool:
            self.offered = (host, addr, port, key)
            return False

        def auth_completed(self) -> None:
            self.phase = "after authentication"

    return Client


def _kh_name(host: str, port: int | None) -> str:
    return host if port in (None, 22) else f"[{host}]:{port}"


def classify(exc: BaseException, client, target: Target, setup: Setup) -> tuple[str, str]:
    """(status, what went wrong) for an exception of one host's connection."""
    import asyncssh

    if isinstance(exc, TimeoutError):
        why = {"connecting": " (no TCP answer)",
               "in the SSH handshake": " (the port accepted; SSH did not finish)"}.get(client.phase, "")
        return "timeout", f"timed out after {setup.timeout:g}s {client.phase}{why}"
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        if client.offered is None:  # known_hosts vouched for a key or CA, and what came did not satisfy it
            reason = exc.reason.split(" for host ")[0]  # a revoked key, a certificate for other names or expired
            return "hostkey-mismatch", f"host key of {target.label} refused (possible MITM): {reason}"
        host, addr, port, key = client.offered
        name = _kh_name(host, port)
        # As ssh words it: a key that differs from the one listed for this very host (and port) is a mismatch;
        # when only the port-22 entry differs (asyncssh, as ssh, also accepts a host's key listed without its
        # port), the host is unknown. _match() is asyncssh's lookup without that fallback.
        kh = setup.known_hosts
        trusted = getattr(kh, "_match", kh.match)(host, addr, None if port == 22 else port)
        fingerprint = key.get_fingerprint()
        if trusted[0] or trusted[1]:
            return ("hostkey-mismatch", f"host key for {name} does not match known_hosts (possible MITM): it "
                    f"offered {fingerprint}")
        return "hostkey-unknown", f"{name} is not in known_hosts (it offered {fingerprint}; refused)"
    if isinstance(exc, asyncssh.PermissionDenied):
        return "auth", f"auth failed: no key was accepted for user {target.user or 'the default user'}"
    if isinstance(exc, asyncssh.KeyExchangeFailed):
        return "error", f"key exchange failed: {exc.reason}"
    if isinstance(exc, ConnectionRefusedError):
        return "unreachable", "unreachable: connection refused"
    if isinstance(exc, OSError):
        import socket

        if isinstance(exc, socket.gaierror):
            return "unreachable", f"unreachable: cannot resolve {target.host} ({exc.strerror})"
        return "unreachable", f"unreachable: {exc.strerror or exc}"
    if isinstance(exc, asyncssh.ConnectionLost):
        return "error", f"connection lost {client.phase}: {exc.reason}"
    if isinstance(exc, asyncssh.DisconnectError):
        return "error", f"disconnected by the server: {exc.reason}"
    if isinstance(exc, asyncssh.ChannelOpenError):
        return "error", f"the server refused a session: {exc.reason}"
    if isinstance(exc, asyncssh.SFTPError):
        where = getattr(exc, "dstpath", b"")
        where = where.decode("utf-8", "replace") + ": " if isinstance(where, bytes) and where else ""
        return "error", f"sftp: {where}{exc.reason}"
    return "error", f"{type(exc).__name__}: {exc}"


async def connect(target: Target, setup: Setup, client):
    import asyncssh

    # The ssh config is read per host (its Host blocks match the name given); [] reads none, never ~/.ssh/config
    return await asyncssh.connect(target.host, port=target.port or (), username=target.user or (),
                                  config=setup.configs, options=setup.options, client_factory=lambda: client)


async def close(conn) -> None:
    if conn is None:
        return
    conn.abort()  # nothing left to say to it; a hung peer must not hold us here
    try:
        async with asyncio.timeout(1):
            await conn.wait_closed()
    except TimeoutError:
        pass


__all__ = ["Setup", "classify", "client_class", "close", "connect"]
