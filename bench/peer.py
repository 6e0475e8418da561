"""File transfer speed: socketkit peer against magic-wormhole, through the same mailbox server and transit
relay, direct and relayed, in one run; and a plain TCP copy of the same file as the ceiling.

    python bench/peer.py [--size-mb 512] [--repeat 3] [--only socketkit,wormhole,tcp-copy] [--relayed-only]

Every transfer moves a SIZE file of random bytes from a sender process to a receiver process on one
machine. MB/s is SIZE divided by the receiver's wall time, from its start to its exit (the key exchange,
transit set-up, the data, writing the file and the final ack all count), with the sender already waiting
(it has printed its code). Each received file is compared with the original after the timed run.

- direct: both sides may listen and connect to each other (socketkit `--advertise 127.0.0.1`; wormhole
  listens on its own).
- relayed: both sides `--no-listen`: the only way is the transit relay.
- tcp-copy: the same file through one loopback TCP connection (sendfile() in, recv_into()+write() out):
  what any encrypted transfer is measured against.

The mailbox server and transit relay are magic-wormhole's reference ones (twistd plugins from PyPI), the
same for both, on 127.0.0.1. The wormhole CLI offers direct hints for every interface the machine has; to
keep all traffic on loopback, the whole benchmark runs inside a network namespace it creates with only
`lo` (root and iproute2 needed; without them the wormhole direct case is skipped and says so). Peak
memory (max RSS) of each receiver and sender is printed with -v: it stays bounded whatever the file size.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    REPO_ROOT,
    BenchError,
    emit,
    install_signal_handlers,
    median,
    note,
    python_version,
    run_main,
    version_of,
)

BENCH = "peer"
BIN = Path(sys.executable).parent
TARGET = 2.0


@dataclass
class Run:
    seconds: float
    receiver_rss_kib: int = 0
    sender_rss_kib: int = 0


@dataclass
class Netns:
    name: str | None = None

    def wrap(self, argv: list[str]) -> list[str]:
        return (["ip", "netns", "exec", self.name] if self.name else []) + argv


def make_netns() -> Netns:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return Netns(None)
    name = f"skpeerbench{uuid.uuid4().hex[:6]}"
    if subprocess.run(["ip", "netns", "add", name], capture_output=True).returncode != 0:
        return Netns(None)
    subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True)
    return Netns(name)


def drop_netns(ns: Netns) -> None:
    if ns.name:
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


class Proc:
    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
        full = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO_ROOT), **(env or {}))
        self.log = tempfile.TemporaryFile()
        self.p = subprocess.Popen(argv, cwd=cwd, env=full, stdin=subprocess.DEVNULL, stdout=self.log,
                                  stderr=subprocess.STDOUT, start_new_session=True)

    def text(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_text(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = re.search(pattern, self.text())
            if m:
                return m
            if self.p.poll() is not None:
                raise BenchError(f"{Path(self.p.args[-1]).name} exited: {self.text()[-400:]}")
            time.sleep(0.01)
        raise BenchError(f"no {pattern!r} within {timeout:g}s: {self.text()[-400:]}")

    def wait(self, timeout: float) -> int:
        """Wait for the exit; also records this child's own peak memory (wait4's rusage)."""
        deadline = time.monotonic() + timeout
        while self.p.returncode is None:
            pid, status, usage = os.wait4(self.p.pid, os.WNOHANG)
            if pid:
                self.p.returncode = os.waitstatus_to_exitcode(status)
                self.maxrss_kib = usage.ru_maxrss
                break
            if time.monotonic() > deadline:
                self.stop()
                raise BenchError(f"still running after {timeout:g}s: {self.text()[-400:]}")
            time.sleep(0.002)
        return self.p.returncode

    maxrss_kib = 0

    def stop(self) -> None:
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, 9)
            except ProcessLookupError:
                pass
            self.p.wait(5)


@dataclass
class Servers:
    ns: Netns
    tmp: Path
    procs: list[Proc] = field(default_factory=list)
    mailbox: str = ""
    relay: str = ""

    def start(self) -> None:
        twistd = str(BIN / "twistd")
        mb = Proc(self.ns.wrap([twistd, "-n", "--pidfile=", "wormhole-mailbox", "--port", "tcp:0:interface=127.0.0.1",
                                f"--channel-db={self.tmp / 'ch.db'}", f"--usage-db={self.tmp / 'u.db'}"]), self.tmp)
        self.procs.append(mb)
        tr = Proc(self.ns.wrap([twistd, "-n", "--pidfile=", "transitrelay", "--port", "tcp:0:interface=127.0.0.1"]),
                  self.tmp)
        self.procs.append(tr)
        started = r"starting on (\d+)"
        self.mailbox = f"ws://127.0.0.1:{mb.wait_text(started, 20).group(1)}/v1"
        self.relay = f"tcp://127.0.0.1:{tr.wait_text(started, 20).group(1)}"

    def stop(self) -> None:
        for p in self.procs:
            p.stop()


def timed(proc_argv: list[str], cwd: Path, timeout: float) -> tuple[float, int]:
    """Run to completion; (wall seconds, peak RSS KiB of that child)."""
    start = time.monotonic()
    p = Proc(proc_argv, cwd)
    rc = p.wait(timeout)
    took = time.monotonic() - start
    if rc != 0:
        raise BenchError(f"receiver failed ({rc}): {p.text()[-500:]}")
    return took, p.maxrss_kib


def transfer(kind: str, relayed: bool, servers: Servers, src: Path, work: Path) -> Run:
    out = work / f"out-{kind}-{uuid.uuid4().hex[:6]}"
    out.mkdir()
    ns = servers.ns
    code = f"{7000 + int(relayed)}-bench-{uuid.uuid4().hex[:6]}"
    try:
        if kind == "socketkit":
            common = ["--mailbox", servers.mailbox, "--transit-relay", servers.relay, "--advertise", "127.0.0.1",
                      "--quiet", "--timeout", "60"] + (["--no-listen"] if relayed else [])
            sender = Proc(ns.wrap([sys.executable, "-m", "socketkit", "peer", "send", str(src), "--code", code,
                                   *common]), work)
            sender.wait_text(r"Wormhole code is", 30)
            took, rss = timed(ns.wrap([sys.executable, "-m", "socketkit", "peer", "receive", code, "--yes",
                                       "--out", str(out), *common]), work, 600)
        else:
            wh = [str(BIN / "wormhole"), "--relay-url", servers.mailbox, "--transit-helper",
                  "tcp:" + servers.relay.removeprefix("tcp://")]
            extra = ["--no-listen"] if relayed else []
            sender = Proc(ns.wrap([*wh, "send", "--hide-progress", "--code", code, *extra, str(src)]), work)
            sender.wait_text(r"wormhole receive", 30)
            took, rss = timed(ns.wrap([*wh, "receive", "--hide-progress", "--accept-file", *extra, code]), out, 600)
        if sender.wait(60) != 0:
            raise BenchError(f"{kind} sender failed: {sender.text()[-500:]}")
        got = out / src.name
        if got.stat().st_size != src.stat().st_size or digest(got) != SRC_DIGEST[src]:
            raise BenchError(f"{kind}: the received file differs from the original")
        return Run(took, rss, sender.maxrss_kib)
    finally:
        shutil.rmtree(out, ignore_errors=True)


SRC_DIGEST: dict[Path, str] = {}


def digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


TCP_COPY = r"""
import socket, sys, os
mode, path = sys.argv[1], sys.argv[2]
if mode == "recv":
    ls = socket.create_server(("127.0.0.1", 0)); print(ls.getsockname()[1], flush=True)
    c, _ = ls.accept(); buf = bytearray(1 << 20); view = memoryview(buf)
    with open(path, "wb") as f:
        while (n := c.recv_into(buf)):
            f.write(view[:n])
else:
    s = socket.create_connection(("127.0.0.1", int(sys.argv[3])))
    with open(path, "rb") as f:
        s.sendfile(f)
    s.close()
"""


def tcp_copy(ns: Netns, src: Path, work: Path) -> Run:
    out = work / f"tcp-{uuid.uuid4().hex[:6]}.bin"
    try:
        start = time.monotonic()
        recv = Proc(ns.wrap([sys.executable, "-c", TCP_COPY, "recv", str(out)]), work)
        port = recv.wait_text(r"^(\d+)$", 10).group(1)
        send = Proc(ns.wrap([sys.executable, "-c", TCP_COPY, "send", str(src), port]), work)
        if recv.wait(600) != 0 or send.wait(60) != 0:
            raise BenchError("tcp-copy failed")
        took = time.monotonic() - start
        if out.stat().st_size != src.stat().st_size:
            raise BenchError("tcp-copy: short file")
        return Run(took)
    finally:
        out.unlink(missing_ok=True)


def main() -> int:
    install_signal_handlers()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size-mb", type=int, default=512)
    p.add_argument("--repeat", type=int, default=3, help="interleaved runs per case; the median is reported")
    p.add_argument("--only", default="", help="comma-separated subset of: socketkit, wormhole, tcp-copy")
    p.add_argument("--relayed-only", action="store_true")
    p.add_argument("--direct-only", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true", help="also print peak memory (max RSS)")
    p.add_argument("--dir", help="where the file and the received copies go (default: /dev/shm when it has room, "
                   "so the disk's write-back does not decide the result; else the temp directory)")
    args = p.parse_args()
    names = [n for n in ("socketkit", "wormhole", "tcp-copy") if not args.only or n in args.only.split(",")]
    routes = [False, True]
    if args.relayed_only:
        routes = [True]
    if args.direct_only:
        routes = [False]
    if not (BIN / "wormhole").exists() or not (BIN / "twistd").exists():
        raise BenchError("magic-wormhole is not installed here: pip install -e '.[test]'")
    base = args.dir
    if base is None and os.path.isdir("/dev/shm") and shutil.disk_usage("/dev/shm").free > 3 * args.size_mb << 20:
        base = "/dev/shm"
    ns = make_netns()
    note(f"{python_version()}; {version_of('magic-wormhole')}; {args.size_mb} MiB file; "
         f"repeat {args.repeat}; files in {base or tempfile.gettempdir()}; " + (f"inside network namespace {ns.name} (lo only)" if ns.name else
                                      "no network namespace (not root): wormhole direct is skipped"))
    work = Path(tempfile.mkdtemp(prefix="socketkit-bench-peer-", dir=base))
    servers = Servers(ns, work)
    status = 0
    try:
        src = work / "payload.bin"
        with open(src, "wb") as f:
            block = os.urandom(1 << 20)
            for i in range(args.size_mb):
                f.write(i.to_bytes(8, "big") + block[8:])
        SRC_DIGEST[src] = digest(src)
        servers.start()
        cases = [(n, r) for r in routes for n in names if not (n == "tcp-copy" and r)]
        results: dict[tuple[str, bool], list[Run]] = {c: [] for c in cases}
        failed: dict[tuple[str, bool], str] = {}
        for _ in range(args.repeat):
            for case in cases:
                kind, relayed = case
                if case in failed:
                    continue
                if kind == "wormhole" and not relayed and ns.name is None:
                    failed[case] = "SKIPPED: needs a network namespace (run as root) to keep wormhole on loopback"
                    continue
                try:
                    run = tcp_copy(ns, src, work) if kind == "tcp-copy" else transfer(kind, relayed, servers, src, work)
                    results[case].append(run)
                except BenchError as e:
                    failed[case] = f"FAILED: {e}"
        mbs: dict[tuple[str, bool], float] = {}
        for case in cases:
            kind, relayed = case
            label = f"{kind} {'relayed' if relayed else 'direct'}" if kind != "tcp-copy" else "tcp-copy"
            if case in failed:
                emit(f"{BENCH} {label}: {failed[case]}")
                status = status or (1 if failed[case].startswith("FAILED") else 0)
                continue
            secs = median([r.seconds for r in results[case]])
            mbs[case] = args.size_mb * (1 << 20) / 1e6 / secs
            extra = ""
            if args.verbose and results[case][0].receiver_rss_kib:
                extra = (f" (peak RSS: receiver {max(r.receiver_rss_kib for r in results[case]) / 1024:.0f} MiB, "
                         f"sender {max(r.sender_rss_kib for r in results[case]) / 1024:.0f} MiB)")
            emit(f"{BENCH} {label}: {mbs[case]:,.0f} MB/s ({secs:.2f} s){extra}")
        for relayed in routes:
            ours, peer = mbs.get(("socketkit", relayed)), mbs.get(("wormhole", relayed))
            label = "relayed" if relayed else "direct"
            if ours and peer:
                verdict = "met" if ours / peer >= TARGET else "MISSED"
                emit(f"{BENCH} {label}: ours {ours:,.0f}, peer {peer:,.0f}, ratio {ours / peer:.2f} "
                     f"(target >= {TARGET:g}: {verdict})")
            ceiling = mbs.get(("tcp-copy", False))
            if ours and ceiling:
                emit(f"{BENCH} {label} vs tcp-copy: ours {ours:,.0f}, plain TCP {ceiling:,.0f}, "
                     f"fraction {ours / ceiling:.2f}")
    finally:
        servers.stop()
        drop_netns(ns)
        shutil.rmtree(work, ignore_errors=True)
    return status


if __name__ == "__main__":
    run_main(main)
