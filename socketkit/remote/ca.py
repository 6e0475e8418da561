"""SSH certificate authorities made easy: `socketkit remote ca init | sign-user | sign-host`.

OpenSSH certificates instead of key lists: a server trusts one CA key (`TrustedUserCAKeys`, or `remote serve
--trusted-ca`), a client one host CA (`@cert-authority` in known_hosts); a person gets a certificate that
names who they may log in as (principals) and expires by itself. The certificates are asyncssh's, in
OpenSSH's own format, so OpenSSH's sshd and ssh accept them as they accept ssh-keygen's.

Layout under the data directory's remote/ca/ (0700): user_ca and host_ca (private, 0600) with their .pub.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from socketkit.errors import SocketkitError

_DURATION = re.compile(r"(\d+)([smhdw]?)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class CAError(SocketkitError):
    """A CA or certificate operation failed; the message says why."""


def parse_duration(text: str) -> int:
    """"8h", "30m", "2d", "1w1d", "3600" -> seconds."""
    parts = _DURATION.findall(text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != text.strip().lower():
        raise CAError(f"bad validity {text!r}: write e.g. 8h, 30m, 7d or 1w")
    seconds = sum(int(n) * _UNITS[u] for n, u in parts)
    if seconds <= 0:
        raise CAError(f"bad validity {text!r}: must be more than zero")
    return seconds


def ca_dir(base: Path | None = None) -> Path:
    from socketkit.net.certs import _make_private_dir
    from socketkit.remote import remote_dir

    return _make_private_dir((base or remote_dir()) / "ca")


@dataclass
class CA:
    user_key: Path
    host_key: Path

    @property
    def user_pub(self) -> Path:
        return self.user_key.with_name(self.user_key.name + ".pub")

    @property
    def host_pub(self) -> Path:
        return self.host_key.with_name(self.host_key.name + ".pub")


def _write_private(key, path: Path) -> None:
    # Created 0600 from the start: a private key is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    path.with_name(path.name + ".pub").write_bytes(key.export_public_key())


def init(base: Path | None = None, *, comment: str = "socketkit") -> tuple[CA, bool]:
    """Create the user CA and host CA if missing; (the CA, whether anything was created)."""
    import asyncssh

    d = ca_dir(base)
    ca = CA(d / "user_ca", d / "host_ca")
    made = False
    for path, what in ((ca.user_key, "user"), (ca.host_key, "host")):
        if not path.exists():
            key = asyncssh.generate_private_key("ssh-ed25519", comment=f"{comment} {what} CA")
            _write_private(key, path)
            made = True
    return ca, made


def load(base: Path | None = None) -> CA:
    d = (base or _remote()) / "ca"
    ca = CA(d / "user_ca", d / "host_ca")
    if not ca.user_key.exists() or not ca.host_key.exists():
        raise CAError(f"no CA in {d}: run `socketkit remote ca init` first")
    return ca


def _remote() -> Path:
    from socketkit.remote import remote_dir

    return remote_dir()


def _read_public(path: str | os.PathLike[str]):
    import asyncssh

    try:
        return asyncssh.read_public_key(str(path))
    except (OSError, asyncssh.KeyImportError) as e:
        raise CAError(f"cannot read the public key {path}: {e}") from None


def _cert_path(pub: Path) -> Path:
    name = pub.name[:-4] if pub.name.endswith(".pub") else pub.name
    return pub.with_name(name + "-cert.pub")


def sign_user(pub: str | os.PathLike[str], principals: list[str], valid: str = "8h", *, key_id: str | None = None,
              base: Path | None = None, out: str | os.PathLike[str] | None = None) -> Path:
    """Sign a user's public key: a certificate for `principals` (the user names it may log in as), valid
    from a minute ago (clock skew) for `valid`. Written next to the key as NAME-cert.pub, as ssh expects."""
    import asyncssh

    if not principals:
        raise CAError("a user certificate needs at least one --principal (the account name to log in as)")
    ca = load(base)
    signer = asyncssh.read_private_key(str(ca.user_key))
    key = _read_public(pub)
    now = int(time.time())
    cert = signer.generate_user_certificate(
        key, key_id or f"{principals[0]}@socketkit-{now}", principals=principals,
        valid_after=now - 60, valid_before=now + parse_duration(valid))
    target = Path(out) if out else _cert_path(Path(pub))
    target.write_bytes(cert.export_certificate())
    return target


def sign_host(pub: str | os.PathLike[str], names: list[str], valid: str = "52w", *, key_id: str | None = None,
              base: Path | None = None, out: str | os.PathLike[str] | None = None) -> Path:
    """Sign a host's public key for the names clients reach it by (host names, addresses)."""
    import asyncssh

    if not names:
        raise CAError("a host certificate needs at least one --name (the host name or address clients use)")
    ca = load(base)
    signer = asyncssh.read_private_key(str(ca.host_key))
    key = _read_public(pub)
    now = int(time.time())
    cert = signer.generate_host_certificate(
        key, key_id or f"{names[0]}-{now}", principals=names, valid_after=now - 60,
        valid_before=now + parse_duration(valid))
    target = Path(out) if out else _cert_path(Path(pub))
    target.write_bytes(cert.export_certificate())
    return target


def known_hosts_line(base: Path | None = None, pattern: str = "*") -> str:
    """The line that makes ssh (and `remote run`) trust every host certificate this CA signs."""
    ca = load(base)
    return f"@cert-authority {pattern} {ca.host_pub.read_text().strip()}"


def authorized_line(base: Path | None = None) -> str:
    """What a server needs to trust the user CA: OpenSSH's TrustedUserCAKeys file content (the public key);
    `remote serve --trusted-ca FILE` takes the same file."""
    ca = load(base)
    return ca.user_pub.read_text().strip()


__all__ = ["CA", "CAError", "authorized_line", "init", "known_hosts_line", "load", "parse_duration", "sign_host",
           "sign_user"]
