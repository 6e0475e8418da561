"""Who may log in to `remote serve`: the account the server runs as, with a key from its authorized_keys
(OpenSSH's format and the options asyncssh honours: from=, command=, no-pty, no-port-forwarding,
permitopen=, principals=, cert-authority) or an OpenSSH user certificate signed by a trusted CA key
(TrustedUserCAKeys: the user name among the principals, inside its validity window).

The authorized_keys file is read again when it changes, as sshd reads it on every login.
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from socketkit.errors import SocketkitError

if TYPE_CHECKING:
    import asyncssh

log = logging.getLogger("socketkit.remote")

_ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_USER_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"


class RemoteError(SocketkitError):
    """`remote serve` cannot start or run as configured; the message says why and what to do."""


@dataclass(frozen=True)
class Account:
    """The one account this server logs people in as: the user it runs as."""
    name: str
    uid: int
    home: str
    shell: str
    path: str

    @classmethod
    def current(cls) -> "Account":
        uid = os.geteuid()
        try:
            pw = pwd.getpwuid(uid)
        except KeyError:
            raise RemoteError(f"uid {uid} has no entry in the password database: no user name to log in as") \
                from None
        shell = pw.pw_shell if pw.pw_shell and os.path.isabs(pw.pw_shell) else "/bin/sh"
        return cls(pw.pw_name, uid, pw.pw_dir or "/", shell, _ROOT_PATH if uid == 0 else _USER_PATH)


def _signature(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _read_cas(path: Path) -> list[asyncssh.SSHKey]:
    import asyncssh

    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise RemoteError(f"cannot read the trusted CA file {path}: {getattr(e, 'strerror', None) or e}") \
            from None
    keys = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                keys.append(asyncssh.import_public_key(line))
            except (asyncssh.KeyImportError, ValueError) as e:
                raise RemoteError(f"{path}: not an SSH public key line ({e}): {line[:60]!r}") from None
    if not keys:
        raise RemoteError(f"{path}: no CA public key in it (`socketkit remote ca init` makes one)")
    return keys


class KeyStore:
    """authorized_keys (reloaded when the file changes) and the trusted user CA keys."""

    def __init__(self, authorized_keys: Path, trusted_ca: Path | None) -> None:
        self.authorized_path = authorized_keys
        self.trusted_ca_path = trusted_ca
        self.cas = _read_cas(trusted_ca) if trusted_ca is not None else []
        self._ca_blobs = {k.public_data for k in self.cas}
        self._sig: tuple[int, int, int, int] | None = None
        self._keys: asyncssh.SSHAuthorizedKeys | None = None
        if _signature(authorized_keys) is None and not self.cas:
            raise RemoteError(f"no keys to accept: {authorized_keys} does not exist and no trusted CA is set; "
                              f"put your public key there (e.g. ssh-copy-id, or cat ~/.ssh/id_ed25519.pub >> it), "
                              f"choose another file (--authorized-keys), or trust a CA (--trusted-ca)")
        self.authorized()

    def authorized(self) -> asyncssh.SSHAuthorizedKeys | None:
        import asyncssh

        sig = _signature(self.authorized_path)
        if sig != self._sig:
            self._sig = sig
            self._keys = None
            if sig is not None:
                try:
                    self._keys = asyncssh.read_authorized_keys(str(self.authorized_path))
                except ValueError:  # no valid line: an empty file, as sshd sees it
                    log.warning("remote: %s has no usable key", self.authorized_path)
                except OSError as e:
                    log.error("remote: cannot read %s: %s", self.authorized_path, e.strerror or e)
        return self._keys

    def trusts_ca(self, key: asyncssh.SSHKey) -> bool:
        return key.public_data in self._ca_blobs


def _name(value: bytes | str) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def describe(key_data: bytes) -> dict[str, Any]:
    """Audit fields for a key or certificate blob: fingerprints and ids, never the key itself."""
    import asyncssh
    from asyncssh.public_key import decode_ssh_certificate, decode_ssh_public_key

    try:
        cert = decode_ssh_certificate(key_data)
    except (asyncssh.KeyImportError, ValueError):
        cert = None
    if cert is not None and not getattr(cert, "is_x509_chain", False):
        return {"key_type": _name(cert.algorithm),
                "fingerprint": cert.key.get_fingerprint("sha256"),
                "cert_id": getattr(cert, "key_id", None) or getattr(cert, "_key_id", None),
                "cert_serial": getattr(cert, "serial", None) or getattr(cert, "_serial", None),
                "cert_principals": list(cert.principals),
                "ca_fingerprint": cert.signing_key.get_fingerprint("sha256")}
    try:
        key = decode_ssh_public_key(key_data)
    except (asyncssh.KeyImportError, ValueError):
        return {"key_type": "unknown"}
    return {"key_type": _name(key.get_algorithm()), "fingerprint": key.get_fingerprint("sha256")}


def certificate_problem(key_data: bytes) -> str | None:
    """Why a user certificate is not acceptable before asyncssh looks at it (None: no objection, or not
    a certificate). asyncssh takes a certificate without principals as valid for every user; OpenSSH
    refuses it for TrustedUserCAKeys, and so do we."""
    import asyncssh
    from asyncssh.public_key import decode_ssh_certificate

    try:
        cert = decode_ssh_certificate(key_data)
    except (asyncssh.KeyImportError, ValueError):
        return None
    if getattr(cert, "is_x509_chain", False):
        return "X.509 certificates are not accepted"
    if not cert.principals:
        return "certificate has no principals"
    return None


def refusal_reason(key_data: bytes, username: str, account: Account, store: KeyStore) -> str:
    """A readable reason for the audit log once asyncssh said no to a key or certificate."""
    import asyncssh
    from asyncssh.public_key import decode_ssh_certificate

    if username != account.name:
        return f"user {username!r} is not {account.name!r}, the only account this server logs in"
    try:
        cert = decode_ssh_certificate(key_data)
    except (asyncssh.KeyImportError, ValueError):
        cert = None
    if cert is None:
        return "key not in authorized_keys (or its options do not allow this client)"
    if getattr(cert, "is_x509_chain", False):
        return "X.509 certificates are not accepted"
    if not store.trusts_ca(cert.signing_key):
        return "certificate signed by a CA that is not trusted (neither the trusted CA file nor a cert-authority line)"
    now = time.time()
    if now < getattr(cert, "_valid_after", 0):
        return "certificate not yet valid"
    if now >= getattr(cert, "_valid_before", 2**64):
        return "certificate expired"
    if username not in cert.principals:
        return f"certificate principals {list(cert.principals)} do not include {username!r}"
    source = cert.options.get("source-address")
    if source:
        return "certificate's source-address does not allow this client"
    return "certificate refused"
