"""SSH at scale: socketkit remote against OpenSSH's own tools, on 127.0.0.1, in one run.

    python bench/remote.py                        # all cases: fan-out to 30 sshd, 1 GiB sftp upload, ssh latency
    python bench/remote.py --only fanout --hosts 30 --repeat 5
    python bench/remote.py --only sftp --size-mb 256
    python bench/remote.py --only latency --latency-n 30

- fanout: `true` on --hosts Debian sshd instances (one per port, all on 127.0.0.1, one host key shared, the
  same authorized key), by `socketkit remote run` (one process, asyncssh, --parallel N) and by `parallel-ssh`
  (pssh: one `ssh` process per host, -p N). Wall time of the whole command, process start included; the
  result is hosts/s (hosts / wall time): target socketkit >= 1.5x pssh. Both read the same empty ssh config,
  the same known_hosts and key, no agent, HOME in a temporary directory. A run counts only when every host
  succeeded (socketkit's summary says N ok, pssh prints N [SUCCESS] lines and exits 0).
- sftp: OpenSSH's `sftp` client puts a --size-mb file (1 GiB) to `socketkit remote serve` and to sshd
  (internal-sftp), MB/s of the whole `sftp -b` run; the copy is checked by size. Target >= 0.8x sshd.
- latency: `ssh HOST true` (connect, key exchange, authentication, run `true`) to socketkit's server and
  to sshd, one after the other, median of --latency-n; informational.

The sftp and latency cases need socketkit's SSH server (socketkit.remote.server); until it exists they say
SKIPPED: socketkit remote serve not built yet. sshd runs as root (privilege separation), every server in its
own process group, killed on the way out.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO_ROOT,
    BenchError,
    ChildProcess,
    emit,
    free_port,
    install_signal_handlers,
    load_warning,
    median,
    note,
    python_version,
    run_main,
    target_verdict,
    wait_for_port,
)

BENCH = "remote"
SSHD = "/usr/sbin/sshd"
PSSH = shutil.which("parallel-ssh") or shutil.which("pssh")
FANOUT_TARGET = 1.5
SFTP_TARGET = 0.8
NOT_BUILT = "socketkit remote serve not built yet"
RC_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile", ".bash_logout")


def _run(argv: list[str], env: dict[str, str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    try:
        done = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{Path(argv[0]).name} still running after {timeout:g}s") from None
    return time.monotonic() - start, done


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench", "-f", str(path)], check=True,
                   capture_output=True, timeout=30)
    return path


def pub(key: Path) -> str:
    return " ".join(Path(f"{key}.pub").read_text().split()[:2])


class World:
    """Keys, the client files both sides read, and the servers started so far (stopped together)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.user_key = keygen(tmp / "id_ed25519")
        self.host_key = keygen(tmp / "ssh_host_ed25519_key")
        self.authorized = tmp / "authorized_keys"
        self.authorized.write_text(Path(f"{self.user_key}.pub").read_text())
        self.known_hosts = tmp / "known_hosts"
        self.known_hosts.write_text("")
        self.ssh_config = tmp / "ssh_config"
        self.ssh_config.write_text("# empty: neither side reads ~/.ssh/config or /etc/ssh/ssh_config\n")
        self.home = tmp / "home"
        self.home.mkdir()
        self.children: list[ChildProcess] = []
        env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
        env.update(HOME=str(self.home), PYTHONPATH=str(REPO_ROOT))
        self.env = env

    def trust(self, port: int, key: Path | None = None) -> None:
        with open(self.known_hosts, "a") as f:
            f.write(f"[127.0.0.1]:{port} {pub(key or self.host_key)}\n")

    def ssh_options(self) -> list[str]:
        return ["-F", str(self.ssh_config), "-i", str(self.user_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes"]

    def sshd(self, name: str, sftp_dir: Path | None = None) -> int:
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        for _attempt in range(3):
            port = free_port()
            config = self.tmp / f"sshd_config.{name}"
            config.write_text("\n".join([
                f"ListenAddress 127.0.0.1:{port}", f"HostKey {self.host_key}", "PidFile none", "UsePAM no",
                "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
                "PermitRootLogin yes", f"AuthorizedKeysFile {self.authorized}", "UseDNS no", "LogLevel ERROR",
                "MaxStartups 200", "Subsystem sftp internal-sftp" + (f" -d {sftp_dir}" if sftp_dir else ""),
            ]) + "\n")
            child = ChildProcess(self.light_shell([SSHD, "-D", "-e", "-f", str(config)]), name=f"sshd {name}")
            try:
                wait_for_port(port, timeout=10, proc=child)
            except BenchError:
                child.stop()
                if "Address already in use" in child.output():
                    continue
                raise
            self.children.append(child)
            self.trust(port)
            return port
        raise BenchError("sshd could not bind a free port three times")

    def socketkit_serve(self) -> int:
        port = free_port()
        key = self.tmp / "socketkit_host_key"
        if not key.exists():
            keygen(key)
        child = ChildProcess(self.light_shell([
            sys.executable, "-m", "socketkit", "remote", "serve", "--listen", f"tcp://127.0.0.1:{port}",
            "--authorized-keys", str(self.authorized), "--host-key", str(key), "--audit-log",
            str(self.tmp / "audit.log")]), name="socketkit remote serve", env=self.env, cwd=REPO_ROOT)
        wait_for_port(port, timeout=20, proc=child)
        self.children.append(child)
        self.trust(port, key)
        return port

    def light_shell(self, argv: list[str]) -> list[str]:
        """`argv` in a private mount namespace where the account's shell startup files are empty. bash reads
        ~/.bashrc for every ssh command; the real one (on the machine this was written on: `pyenv init`, ~100
        processes per command) would be what is measured, for both servers alike."""
        empty = self.tmp / "empty-rc"
        empty.write_text("")
        home = pwd.getpwuid(os.geteuid()).pw_dir
        binds = "; ".join(f"if [ -f {shlex.quote(f'{home}/{name}')} ]; then mount --bind {shlex.quote(str(empty))} "
                          f"{shlex.quote(f'{home}/{name}')}; fi" for name in RC_FILES)
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", f"set -e; {binds}; exec \"$@\"", "sh",
                *argv]

    def stop(self) -> None:
        for c in self.children:
            c.stop()


def server_built() -> bool:
    return importlib.util.find_spec("socketkit.remote.server") is not None


# -- fan-out ------------------------------------------------------------------------------------------
def fanout_ours(world: World, hosts_file: Path, n: int) -> float:
    argv = [sys.executable, "-m", "socketkit", "remote", "run", "--hosts", str(hosts_file), "--parallel", str(n),
            "--timeout", "120", "--known-hosts", str(world.known_hosts), "-i", str(world.user_key), "--ssh-config",
            str(world.ssh_config), "--", "true"]
    took, done = _run(argv, world.env, 300)
    if done.returncode != 0 or f"{n} ok" not in done.stderr:
        raise BenchError(f"socketkit remote run exited {done.returncode}: {done.stderr.strip()[-600:]}")
    return took


def fanout_pssh(world: World, hosts_file: Path, n: int, kex: list[str] = ()) -> float:
    argv = [PSSH, "-h", str(hosts_file), "-p", str(n), "-t", "120", "-x", " ".join([*world.ssh_options(), *kex]),
            "true"]
    took, done = _run(argv, world.env, 300)
    ok = len(re.findall(r"\[SUCCESS\]", done.stdout))
    if done.returncode != 0 or ok != n:
        raise BenchError(f"parallel-ssh exited {done.returncode} with {ok}/{n} successes: "
                         f"{(done.stdout + done.stderr).strip()[-600:]}")
    return took


def bench_fanout(world: World, n: int, repeat: int) -> int:
    if PSSH is None:
        emit(f"{BENCH} fanout pssh: SKIPPED: parallel-ssh is not installed (Debian: apt-get install pssh)")
    ports = [world.sshd(f"fan{i}") for i in range(n)]
    hosts_file = world.tmp / "hosts"
    hosts_file.write_text("".join(f"127.0.0.1:{p}\n" for p in ports))
    names = ["socketkit"] + (["pssh", "pssh-x25519"] if PSSH else [])
    x25519 = ["-o", "KexAlgorithms=curve25519-sha256"]
    measure = {"socketkit": fanout_ours, "pssh": fanout_pssh,
               "pssh-x25519": lambda w, h, k: fanout_pssh(w, h, k, x25519)}
    runs: dict[str, list[float]] = {k: [] for k in names}
    failed: dict[str, str] = {}
    # one warm-up each (page cache, sshd's first fork), then interleaved rounds
    for rnd in range(repeat + 1):
        for name in names:
            if name in failed:
                continue
            try:
                took = measure[name](world, hosts_file, n)
            except BenchError as e:
                failed[name] = str(e)
                continue
            if rnd:
                runs[name].append(took)
    rates: dict[str, float] = {}
    for name in names:
        if name in failed:
            emit(f"{BENCH} fanout-{n} {name}: FAILED: {failed[name]}")
            continue
        secs = median(runs[name])
        rates[name] = n / secs
        emit(f"{BENCH} fanout-{n} {name}: {rates[name]:,.1f} hosts/s ({secs:.2f} s; runs: "
             + ", ".join(f"{t:.2f}" for t in runs[name]) + ")")
    ours, peer, same_kex = rates.get("socketkit"), rates.get("pssh"), rates.get("pssh-x25519")
    if ours and peer:
        emit(f"{BENCH} fanout-{n} pssh: ours {ours:,.1f}, peer {peer:,.1f}, ratio {ours / peer:.2f}"
             + target_verdict(ours / peer, FANOUT_TARGET))
    if ours and same_kex:
        emit(f"{BENCH} fanout-{n} pssh-x25519: ours {ours:,.1f}, peer {same_kex:,.1f}, ratio {ours / same_kex:.2f} "
             "(informational: ssh told to use asyncssh's key exchange)")
    return 1 if failed else 0


# -- sftp upload --------------------------------------------------------------------------------------
def sftp_put(world: World, port: int, src: Path, dst: Path, cipher: str | None = None) -> float:
    batch = world.tmp / "sftp.batch"
    batch.write_text(f"put {src} {dst}\n")
    argv = ["sftp", "-q", "-b", str(batch), "-P", str(port), *(["-c", cipher] if cipher else []),
            *world.ssh_options(), "127.0.0.1"]
    dst.unlink(missing_ok=True)
    took, done = _run(argv, world.env, 900)
    if done.returncode != 0:
        raise BenchError(f"sftp exited {done.returncode}: {(done.stdout + done.stderr).strip()[-400:]}")
    if not dst.exists() or dst.stat().st_size != src.stat().st_size:
        raise BenchError(f"the uploaded file is {dst.stat().st_size if dst.exists() else 'missing'}, "
                         f"not {src.stat().st_size} bytes")
    dst.unlink()
    return took


def bench_sftp(world: World, size_mb: int, repeat: int, files: Path) -> int:
    if not server_built():
        emit(f"{BENCH} sftp socketkit: SKIPPED: {NOT_BUILT}")
        return 0
    src = files / "payload.bin"
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(size_mb):
            f.write(i.to_bytes(8, "big") + block[8:])
    sshd = world.sshd("sftp")
    # The client's defaults against each server (what a user gets: socketkit's server offers AES-GCM only, sshd
    # lets the client pick chacha20-poly1305); then, for information, sshd on the same AES-GCM cipher.
    servers = {"socketkit": (world.socketkit_serve(), None), "sshd": (sshd, None),
               "sshd aes128-gcm": (sshd, "aes128-gcm@openssh.com")}
    runs: dict[str, list[float]] = {k: [] for k in servers}
    failed: dict[str, str] = {}
    for _ in range(repeat):
        for name, (port, cipher) in servers.items():
            if name in failed:
                continue
            try:
                runs[name].append(sftp_put(world, port, src, files / f"upload-{name.split()[0]}.bin", cipher))
            except BenchError as e:
                failed[name] = str(e)
    src.unlink()
    rates = {}
    for name in servers:
        if name in failed:
            emit(f"{BENCH} sftp {name}: FAILED: {failed[name]}")
            continue
        secs = median(runs[name])
        rates[name] = size_mb * (1 << 20) / 1e6 / secs
        emit(f"{BENCH} sftp {name}: {rates[name]:,.0f} MB/s ({secs:.2f} s for {size_mb} MiB)")
    ours, peer, same = rates.get("socketkit"), rates.get("sshd"), rates.get("sshd aes128-gcm")
    if ours and peer:
        emit(f"{BENCH} sftp sshd: ours {ours:,.0f}, peer {peer:,.0f}, ratio {ours / peer:.2f}"
             + target_verdict(ours / peer, SFTP_TARGET))
    if ours and same:
        emit(f"{BENCH} sftp sshd aes128-gcm (information): ours {ours:,.0f}, peer {same:,.0f}, "
             f"ratio {ours / same:.2f}")
    return 1 if failed else 0


# -- latency ------------------------------------------------------------------------------------------
def bench_latency(world: World, n: int) -> int:
    if not server_built():
        emit(f"{BENCH} latency socketkit: SKIPPED: {NOT_BUILT}")
        return 0
    servers = {"socketkit": world.socketkit_serve(), "sshd": world.sshd("latency")}
    # ssh's own default key exchange (sntrup761x25519 with OpenSSH 9.2's sshd, curve25519 with asyncssh's, which
    # has no sntrup761 without liboqs), then both told to use curve25519-sha256: the servers' own difference
    kexes = {"": [], " x25519": ["-o", "KexAlgorithms=curve25519-sha256"]}
    cases = [(name, kex) for kex in kexes for name in servers]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in cases}
    failed: dict[tuple[str, str], str] = {}
    for _ in range(n + 1):  # the first of each is a warm-up
        for name, kex in cases:
            if (name, kex) in failed:
                continue
            argv = ["ssh", "-p", str(servers[name]), *world.ssh_options(), *kexes[kex], "127.0.0.1", "true"]
            took, done = _run(argv, world.env, 60)
            if done.returncode != 0:
                failed[(name, kex)] = f"ssh exited {done.returncode}: {done.stderr.strip()[-300:]}"
            times[(name, kex)].append(took)
    ms = {}
    for name, kex in cases:
        if (name, kex) in failed:
            emit(f"{BENCH} latency{kex} {name}: FAILED: {failed[(name, kex)]}")
            continue
        ms[(name, kex)] = median(times[(name, kex)][1:]) * 1000
        emit(f"{BENCH} latency{kex} {name}: {ms[(name, kex)]:,.0f} ms median of {n} "
             "(ssh: connect, key exchange, authentication, `true`)")
    for kex in kexes:
        ours, peer = ms.get(("socketkit", kex)), ms.get(("sshd", kex))
        if ours and peer:
            emit(f"{BENCH} latency{kex} sshd: ours {ours:,.0f} ms, peer {peer:,.0f} ms, ratio {ours / peer:.2f} "
                 "(lower is better; informational)")
    return 1 if failed else 0


def main() -> int:
    install_signal_handlers()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default="", help="comma-separated subset of: fanout, sftp, latency")
    p.add_argument("--hosts", type=int, default=30, help="sshd instances for the fan-out (default 30)")
    p.add_argument("--repeat", type=int, default=5, help="interleaved runs per case; the median is reported")
    p.add_argument("--size-mb", type=int, default=1024, help="sftp upload size in MiB (default 1024)")
    p.add_argument("--latency-n", type=int, default=20, help="ssh connections per server for latency")
    p.add_argument("--dir", help="where the sftp file and its copies go (default /dev/shm when it has room)")
    args = p.parse_args()
    cases = [c for c in ("fanout", "sftp", "latency") if not args.only or c in args.only.split(",")]
    if os.geteuid() != 0 or not os.path.exists(SSHD):
        emit(f"{BENCH}: SKIPPED: needs root and {SSHD} (sshd's privilege separation)")
        return 0
    base = args.dir
    if base is None and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 3 * args.size_mb << 20:
        base = "/dev/shm"
    note(f"{python_version()}; {subprocess.run(['ssh', '-V'], capture_output=True, text=True).stderr.strip()}; "
         f"cases {','.join(cases)}; {args.hosts} hosts; repeat {args.repeat}; cores {len(os.sched_getaffinity(0))}")
    if warning := load_warning():
        note(warning)
    tmp = Path(tempfile.mkdtemp(prefix="socketkit-bench-remote-"))
    files = Path(tempfile.mkdtemp(prefix="socketkit-bench-remote-files-", dir=base))
    world = World(tmp)
    status = 0
    try:
        if "fanout" in cases:
            status |= bench_fanout(world, args.hosts, args.repeat)
        if "sftp" in cases:
            status |= bench_sftp(world, args.size_mb, max(1, min(args.repeat, 3)), files)
        if "latency" in cases:
            status |= bench_latency(world, args.latency_n)
    finally:
        world.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(files, ignore_errors=True)
    return status


if __name__ == "__main__":
    run_main(main)
