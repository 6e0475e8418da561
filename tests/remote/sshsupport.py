"""Driving the real OpenSSH client programs (ssh, scp, sftp, ssh-keygen) and tmux from tests.

    require_openssh()                                   # pytest.skip with the reason when a program is missing
    key = keygen(tmp / "id")                            # ed25519, no passphrase; returns the private key's Path
    ca = keygen(tmp / "ca"); cert = sign_cert(ca, key, principals=["root"], validity="-5m:+1h")
    kh = write_known_hosts(tmp / "known_hosts", port, host_pub_text)     # [127.0.0.1]:PORT KEY
    argv = ssh_argv(port, key, "echo", "hi", known_hosts=kh)           # or known_hosts=None: accept any key
    res = await run(argv, input=b"...", timeout=20)     # Result(rc, out, err); the program is killed at the deadline
    scp_argv(port, key, src, dst, known_hosts=kh, legacy=True)        # remote paths as "USER@127.0.0.1:path"
    sftp_argv(port, key, known_hosts=kh)                # batch commands on stdin ("-b -")
    async with Tmux(["ssh", "-tt", ...], cols=100, rows=30) as t: await t.wait_for("$ "); t.send("tty", "Enter")

Every program gets `-F /dev/null` (no ~/.ssh/config), its own UserKnownHostsFile, no global known hosts, no
agent, IdentitiesOnly, BatchMode (never a prompt): nothing reads or writes the real ~/.ssh. Every wait here
is bounded and says what it waited for when it fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SSH = shutil.which("ssh") or "/usr/bin/ssh"
SCP = shutil.which("scp") or "/usr/bin/scp"
SFTP = shutil.which("sftp") or "/usr/bin/sftp"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
TMUX = shutil.which("tmux") or "/usr/bin/tmux"
HOST = "127.0.0.1"


def current_user() -> str:
    return pwd.getpwuid(os.geteuid()).pw_name


def missing(*programs: str) -> str | None:
    """Why the given programs (default: ssh, scp, sftp, ssh-keygen) cannot run here, or None."""
    for program in programs or (SSH, SCP, SFTP, SSH_KEYGEN):
        if not os.access(program, os.X_OK):
            return f"{program} is not installed (Debian: apt-get install openssh-client{' tmux' if program == TMUX else ''})"
    return None


def require_openssh(*programs: str) -> None:
    import pytest

    reason = missing(*programs)
    if reason:
        pytest.skip(reason)


# -- keys and certificates ------------------------------------------------------------------------------
def keygen(path: str | os.PathLike[str], *, kind: str = "ed25519", comment: str = "socketkit-test") -> Path:
    """A new key pair without passphrase at `path` (+ `.pub`); returns the private key's path."""
    path = Path(path)
    subprocess.run([SSH_KEYGEN, "-q", "-t", kind, "-N", "", "-C", comment, "-f", str(path)], check=True,
                   stdin=subprocess.DEVNULL, timeout=30)
    return path


def pub(key: str | os.PathLike[str]) -> Path:
    return Path(str(key) + ".pub")


def sign_cert(ca: str | os.PathLike[str], key: str | os.PathLike[str], *, principals: Sequence[str] | None,
              validity: str = "-5m:+1h", key_id: str = "socketkit-test", serial: int = 1, host: bool = False) -> Path:
    """ssh-keygen -s: certify `key`'s public half with the CA's private key. `validity` is ssh-keygen's -V
    (e.g. "20200101:20200102" for one in the past, "+1d:+2d" for one not yet valid). principals=None or []
    makes a certificate without principals. Returns `<key>-cert.pub`, where ssh looks for it."""
    argv = [SSH_KEYGEN, "-q", "-s", str(ca), "-I", key_id, "-z", str(serial), "-V", validity]
    if principals:
        argv += ["-n", ",".join(principals)]
    if host:
        argv.append("-h")
    subprocess.run([*argv, str(pub(key))], check=True, stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    return Path(str(key) + "-cert.pub")


def fingerprint(public_key_file: str | os.PathLike[str]) -> str:
    """SHA256:... as `ssh-keygen -l` prints it."""
    out = subprocess.run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(public_key_file)], check=True,
                         capture_output=True, text=True, timeout=30).stdout
    return out.split()[1]


def write_known_hosts(path: str | os.PathLike[str], port: int, host_public_key: str, *, host: str = HOST,
                      ca: bool = False) -> Path:
    """A known_hosts file trusting `host_public_key` ("ssh-ed25519 AAAA...") for host:port, or, with
    ca=True, every host certificate that key signs (@cert-authority)."""
    path = Path(path)
    name = host if port == 22 else f"[{host}]:{port}"
    line = f"@cert-authority {name} {host_public_key.strip()}" if ca else f"{name} {host_public_key.strip()}"
    with open(path, "a") as f:
        f.write(line + "\n")
    return path


# -- argument vectors -----------------------------------------------------------------------------------
def client_options(key: str | os.PathLike[str] | None, *, known_hosts: str | os.PathLike[str] | None,
                   cert: str | os.PathLike[str] | None = None, options: Sequence[str] = ()) -> list[str]:
    """The options every test client gets. known_hosts=None: any host key is accepted (and not stored).
    `options` ("Name=value") come first: for ssh the first value of an option wins."""
    argv = ["-F", "/dev/null"]
    for opt in options:
        argv += ["-o", opt]
    argv += ["-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "ConnectTimeout=15", "-o", "LogLevel=ERROR",
            "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o", "UpdateHostKeys=no"]
    if known_hosts is None:
        argv += ["-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no"]
    else:
        argv += ["-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes"]
    if key is not None:
        argv += ["-i", str(key)]
    if cert is not None:
        argv += ["-o", f"CertificateFile={cert}"]
    return argv


def ssh_argv(port: int, key: str | os.PathLike[str] | None, *command: str, user: str | None = None,
             host: str = HOST, known_hosts: str | os.PathLike[str] | None = None,
             cert: str | os.PathLike[str] | None = None, options: Sequence[str] = (), flags: Sequence[str] = ()
             ) -> list[str]:
    """`ssh -p PORT [flags] USER@HOST [command...]`; flags are ssh's own ("-tt", "-N", "-L", "spec", ...)."""
    return [SSH, *client_options(key, known_hosts=known_hosts, cert=cert, options=options), "-p", str(port),
            *flags, f"{user or current_user()}@{host}", *command]


def remote_path(path: str | os.PathLike[str], *, user: str | None = None, host: str = HOST) -> str:
    return f"{user or current_user()}@{host}:{path}"


def scp_argv(port: int, key: str | os.PathLike[str] | None, *paths: str | os.PathLike[str], legacy: bool = False,
             known_hosts: str | os.PathLike[str] | None = None, cert: str | os.PathLike[str] | None = None,
             options: Sequence[str] = (), flags: Sequence[str] = ()) -> list[str]:
    """scp in OpenSSH 9's default (sftp) mode, or the old scp protocol with legacy=True (-O)."""
    return [SCP, *client_options(key, known_hosts=known_hosts, cert=cert, options=options), "-P", str(port),
            *(["-O"] if legacy else []), *flags, *[str(p) for p in paths]]


def sftp_argv(port: int, key: str | os.PathLike[str] | None, *, user: str | None = None, host: str = HOST,
              known_hosts: str | os.PathLike[str] | None = None, batch: str = "-", options: Sequence[str] = ()
              ) -> list[str]:
    """sftp reading batch commands from `batch` ("-": stdin); any failing command makes it exit non-zero."""
    return [SFTP, *client_options(None if key is None else key, known_hosts=known_hosts, options=options),
            "-P", str(port), "-b", batch, f"{user or current_user()}@{host}"]


# -- running them ---------------------------------------------------------------------------------------
@dataclass
class Result:
    rc: int
    out: bytes
    err: bytes

    @property
    def text(self) -> str:
        return self.out.decode(errors="replace")

    @property
    def errtext(self) -> str:
        return self.err.decode(errors="replace")


async def run(argv: Sequence[str], *, input: bytes | None = b"", timeout: float = 30.0,
              env: dict[str, str] | None = None) -> Result:
    """Run a program to its end (stdin from `input`; None: /dev/null); killed, and a failure, at `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        out, err = await proc.communicate()
        raise AssertionError(f"{Path(argv[0]).name} did not finish within {timeout}s: {argv}\n"
                             f"stdout: {out[-2000:]!r}\nstderr: {err[-2000:]!r}") from None
    assert proc.returncode is not None
    return Result(proc.returncode, out, err)


@contextlib.asynccontextmanager
async def started(argv: Sequence[str], *, env: dict[str, str] | None = None):
    """A program left running (stdin a pipe, output collected by the caller); killed with its process
    group when the block ends."""
    proc = await asyncio.create_subprocess_exec(*argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.PIPE, env=env, start_new_session=True)
    try:
        yield proc
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, 9)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.communicate(), 5)


# -- tmux: a real terminal for interactive sessions -------------------------------------------------------
class Tmux:
    """A detached tmux session on a private server socket, running `argv` in a cols x rows window."""

    def __init__(self, argv: Sequence[str], *, cols: int = 100, rows: int = 30, socket_dir: str | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.cols, self.rows = cols, rows
        self.name = "sk" + uuid.uuid4().hex[:10]
        self.socket = os.path.join(socket_dir or "/tmp", f"tmux-{self.name}")
        self.env = env

    def _tmux(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run([TMUX, "-S", self.socket, "-f", "/dev/null", *args], capture_output=True, text=True,
                              timeout=15, env=self.env)
        if check and proc.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    async def __aenter__(self) -> "Tmux":
        import shlex

        await asyncio.to_thread(self._tmux, "new-session", "-d", "-s", self.name, "-x", str(self.cols), "-y",
                                str(self.rows), " ".join(shlex.quote(a) for a in self.argv))
        await asyncio.to_thread(self._tmux, "set-option", "-t", self.name, "remain-on-exit", "on")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self._tmux, "kill-server", check=False)
        with contextlib.suppress(OSError):
            os.unlink(self.socket)

    def send(self, *keys: str, literal: bool = False) -> None:
        """tmux send-keys: "Enter", "C-c", ... or, with literal=True, the text as typed."""
        self._tmux("send-keys", "-t", self.name, *(["-l"] if literal else []), *keys)

    def type(self, text: str) -> None:
        self.send(text, literal=True)
        self.send("Enter")

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", self.name, "-S", "-200")

    def resize(self, cols: int, rows: int) -> None:
        self._tmux("resize-window", "-t", self.name, "-x", str(cols), "-y", str(rows))

    def dead(self) -> bool:
        """Whether the program in the pane has ended (remain-on-exit keeps the pane to read it)."""
        return self._tmux("display-message", "-p", "-t", self.name, "#{pane_dead}", check=False).strip() == "1"

    async def wait_for(self, text: str, *, timeout: float = 20.0, count: int = 1) -> str:
        """Wait until `text` appears at least `count` times on the screen; returns the screen."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        screen = ""
        while loop.time() < deadline:
            screen = await asyncio.to_thread(self.screen)
            if screen.count(text) >= count:
                return screen
            await asyncio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {text!r} (x{count}) on the terminal:\n{screen}")


# -- socketkit's own server (remote serve) with a client that may log in ---------------------------------
@dataclass
class Served:
    """A running `remote serve` on 127.0.0.1 and a client key it accepts; argv builders pre-filled."""
    remote: object            # socketkit.remote.server.RemoteServer
    port: int
    key: Path
    known_hosts: Path
    audit_path: Path
    tmp: Path

    def ssh(self, *command: str, **kw) -> list[str]:
        kw.setdefault("known_hosts", self.known_hosts)
        return ssh_argv(self.port, kw.pop("key", self.key), *command, **kw)

    def scp(self, *paths: str | os.PathLike[str], **kw) -> list[str]:
        kw.setdefault("known_hosts", self.known_hosts)
        return scp_argv(self.port, kw.pop("key", self.key), *paths, **kw)

    def sftp(self, **kw) -> list[str]:
        kw.setdefault("known_hosts", self.known_hosts)
        return sftp_argv(self.port, kw.pop("key", self.key), **kw)

    def records(self, event: str | None = None, **match: object) -> list[dict]:
        import json

        out = []
        for line in self.audit_path.read_text().splitlines():
            rec = json.loads(line)
            if (event is None or rec.get("event") == event) and all(rec.get(k) == v for k, v in match.items()):
                out.append(rec)
        return out

    async def wait_record(self, event: str, *, timeout: float = 15.0, **match: object) -> dict:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = self.records(event, **match)
            if found:
                return found[-1]
            if loop.time() >= deadline:
                raise AssertionError(f"no {event!r} audit record matching {match} within {timeout}s; the log:\n"
                                     + self.audit_path.read_text()[-4000:])
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def serving(tmp: str | os.PathLike[str], *, authorize: bool = True, **config: object):
    """start_remote() on 127.0.0.1:0 with a fresh client key in its authorized_keys (unless authorize=False),
    a host key made by ssh-keygen, the audit log in `tmp`, and a known_hosts naming the host key."""
    from socketkit.remote.server import RemoteConfig, start_remote

    tmp = Path(tmp)
    key = keygen(tmp / "id_client")
    authorized = tmp / "authorized_keys"
    authorized.write_text(pub(key).read_text() if authorize else "")
    if "host_key" not in config:
        config["host_key"] = keygen(tmp / "ssh_host_ed25519_key", comment="host")
    config.setdefault("authorized_keys", authorized)
    config.setdefault("audit_log", tmp / "audit.log")
    remote = await start_remote(RemoteConfig(listen=[f"tcp://{HOST}:0"], **config))  # type: ignore[arg-type]
    try:
        port = remote.servers[0].endpoints[0].port
        host_pub = pub(config["host_key"]).read_text() if config["host_key"] is not None else None
        known = tmp / "known_hosts"
        if host_pub:
            write_known_hosts(known, port, host_pub)
        yield Served(remote, port, key, known, Path(config["audit_log"]), tmp)  # type: ignore[arg-type]
    finally:
        await remote.aclose()
