"""Real OpenSSH servers for the fan-out tests (remote run / copy) and bench/remote.py: each `Sshd` is Debian's
/usr/sbin/sshd on its own 127.0.0.1 port, with its own host key and config file in a temporary directory.

    require_sshd()                         # pytest.skip with the reason when sshd cannot run here
    user_key = keygen(tmp / "id")          # ssh-keygen, ed25519, no passphrase; returns the private key's Path
    with Fleet(tmp, 5, user_key) as fleet: # 5 servers; fleet.known_hosts (a file naming all their keys)
        fleet.targets                      # ["127.0.0.1:PORT", ...]

Nothing here reads the real ~/.ssh: tests pass known_hosts, identity and an ssh config of their own.
sshd runs as root (privilege separation wants root and /run/sshd); each runs in its own process group and
is killed when its `with` ends. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"


def sshd_missing_reason() -> str | None:
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (Debian: apt-get install openssh-server)"
    if not os.path.exists(SSH_KEYGEN):
        return "ssh-keygen is not installed (Debian: apt-get install openssh-client)"
    if os.geteuid() != 0:
        return "sshd needs root here (privilege separation: /run/sshd and the sshd user); run the tests as root"
    return None


def require_sshd() -> None:
    import pytest

    reason = sshd_missing_reason()
    if reason:
        pytest.skip(reason)


def keygen(path: Path, kind: str = "ed25519", comment: str = "socketkit-test") -> Path:
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return path


def pub_line(key: Path) -> str:
    """'ssh-ed25519 AAAA...' of a private key's .pub, comment dropped."""
    return " ".join(Path(str(key) + ".pub").read_text().split()[:2])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def closed_port():
    """A port nothing listens on (connecting is refused): (port). It stays bound, not listening, by this
    process for the block, so no other program (another test worker, an sshd) can take it meanwhile."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@contextlib.contextmanager
def silent_listener():
    """A TCP port that accepts (the kernel completes the handshake) and never says a word: (port)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(64)
    accepted = []
    s.setblocking(False)
    try:
        yield s.getsockname()[1]
    finally:
        with contextlib.suppress(OSError):
            while True:
                accepted.append(s.accept()[0])
        for c in accepted:
            c.close()
        s.close()


class Sshd:
    """One sshd on 127.0.0.1: `port`, `host_key` (its private key path), `log()`; `config` holds extra
    sshd_config lines (HostCertificate, TrustedUserCAKeys, Subsystem ...)."""

    def __init__(self, base: Path, authorized_keys: Path | None, *, extra: list[str] = (),
                 host_key: Path | None = None, sftp_dir: Path | None = None) -> None:
        self.dir = base
        base.mkdir(parents=True, exist_ok=True)
        self.host_key = host_key or keygen(base / "ssh_host_ed25519_key", comment="host")
        self.authorized_keys = authorized_keys
        self.extra = list(extra)
        self.sftp_dir = sftp_dir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.home = base / "session-home"
        self.home.mkdir(exist_ok=True)

    def _config(self, port: int) -> Path:
        sftp = "internal-sftp" + (f" -d {self.sftp_dir}" if self.sftp_dir else "")
        lines = [
            f"ListenAddress 127.0.0.1:{port}",
            f"HostKey {self.host_key}",
            "PidFile none",
            "UsePAM no",
            "StrictModes no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "PermitRootLogin yes",
            f"AuthorizedKeysFile {self.authorized_keys or 'none'}",
            "UseDNS no",
            "LogLevel VERBOSE",
            "MaxStartups 200",
            "MaxSessions 100",
            f"Subsystem sftp {sftp}",
            # The sessions' HOME is ours: root's real shell startup files (bash reads ~/.bashrc for ssh commands)
            # neither slow every command down nor get to write in the real home.
            f"SetEnv HOME={self.home}",
            *self.extra,
        ]
        path = self.dir / "sshd_config"
        path.write_text("\n".join(lines) + "\n")
        return path

    def start(self, timeout: float = 30.0) -> Sshd:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation's empty chroot
        for attempt in range(3):  # a free port may be taken between our probe and sshd's bind: try again
            port = free_port()
            config = self._config(port)
            log = open(self.dir / "sshd.log", "wb")
            self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                text = self.log()
                if "Server listening on" in text:
                    self.port = port
                    return self
                if self.proc.poll() is not None:
                    break
                time.sleep(0.01)
            self.stop()
            if "Address already in use" not in self.log() or attempt == 2:
                raise RuntimeError(f"sshd did not start on port {port}: {self.log()[-800:]}")
        raise AssertionError("unreachable")

    def log(self) -> str:
        try:
            return (self.dir / "sshd.log").read_text(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def known_hosts_line(self, key: Path | None = None) -> str:
        return f"[127.0.0.1]:{self.port} {pub_line(key or self.host_key)}"


class Fleet:
    """N sshd sharing one authorized key (`user_key`), each with its own host key and (optionally) its own
    sftp start directory (`dirs[i]`): the same relative path lands in a different place per server."""

    def __init__(self, base: Path, n: int, user_key: Path, *, sftp_dirs: bool = False,
                 extra: list[str] = ()) -> None:
        self.base = base
        self.user_key = user_key
        self.authorized = base / "authorized_keys"
        self.authorized.write_text(Path(str(user_key) + ".pub").read_text())
        self.dirs: list[Path] = []
        self.servers: list[Sshd] = []
        shared_key = None
        for i in range(n):
            d = base / f"sshd{i}"
            d.mkdir(parents=True, exist_ok=True)
            home = None
            if sftp_dirs:
                home = d / "home"
                home.mkdir()
                self.dirs.append(home)
            self.servers.append(Sshd(d, self.authorized, extra=list(extra), host_key=shared_key, sftp_dir=home))
        self.known_hosts = base / "known_hosts"

    def __enter__(self) -> Fleet:
        try:
            for s in self.servers:
                s.start()
        except BaseException:
            self.stop()
            raise
        self.known_hosts.write_text("".join(s.known_hosts_line() + "\n" for s in self.servers))
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        for s in self.servers:
            s.stop()

    @property
    def targets(self) -> list[str]:
        return [s.target for s in self.servers]

    def ssh_config(self, path: Path, names: list[str]) -> Path:
        """An ssh client config naming server i `names[i]` (Host alias -> HostName 127.0.0.1, Port)."""
        blocks = [f"Host {name}\n    HostName 127.0.0.1\n    Port {s.port}\n" for name, s in zip(names, self.servers, strict=False)]
        path.write_text("\n".join(blocks))
        return path
