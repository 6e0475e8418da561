"""remote: manage many machines over SSH, through asyncssh (the field's well-kept SSH implementation).

- `remote serve` (server.py): an SSH server stock OpenSSH clients use: commands, shells on a real PTY, sftp
  and scp, forwarding when allowed; public keys and OpenSSH certificates only; an audit log (audit.py).
- `remote run` / `remote copy` (fanout.py): a command or files on many hosts at once, over asyncssh's
  client, every host bounded in time, a clear summary of which failed.
- `remote ca` (ca.py): an SSH user CA and host CA, and certificates OpenSSH accepts.

asyncssh owns its connections (as zeroconf owns its multicast sockets): the socket layer binds the listeners
and keeps limits, counters and the stop (socketkit.net.listen), and asyncssh is imported only when used.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_LISTEN = "tcp://127.0.0.1:2222"


def remote_dir() -> Path:
    """The data directory's remote/ (0700): host keys, the CAs, the audit log."""
    from socketkit.net.certs import _make_private_dir, data_dir

    return _make_private_dir(data_dir() / "remote")


def host_key_path() -> Path:
    return remote_dir() / "ssh_host_ed25519_key"


def audit_log_path() -> Path:
    return remote_dir() / "audit.log"
