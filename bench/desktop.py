"""WebSocket-to-TCP bridge throughput: `socketkit remote desktop`'s bridge against websockify, in one run.

    python bench/desktop.py [--mib 512] [--frame 65536] [--repeat 3] [--only socketkit,websockify]

Each bridge runs as its own process (pinned to one core; the load to the other) between a WebSocket client
and a TCP server standing in for the VNC server, both in this process on plain blocking sockets (big
buffers, so the load costs little CPU):

- up (browser -> VNC server): the client sends MIB MiB in masked binary frames of FRAME bytes (as every
  browser must mask), the TCP sink counts them; MB/s is MIB over the time until the sink has them all.
- down (VNC server -> browser): the TCP source sends MIB MiB as fast as the bridge takes them, the client
  reads the frames and counts payload bytes.
- slow reader: the source pushes for a few seconds while the client reads 8 MB/s only: peak memory of the
  bridge's process group must stay bounded (a slow browser slows the VNC server; it never grows memory).

Peak memory (VmRSS of the process group, sampled every 50 ms) is printed for each run. websockify runs as
`python -m websockify` from the same virtual environment, with numpy (it imports it for unmasking).
Target: socketkit >= 2x websockify in each direction.
"""

from __future__ import annotations

import argparse
import base64
import os
import socket
import struct
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BenchError,
    ChildProcess,
    emit,
    free_port,
    group_rss_kib,
    install_signal_handlers,
    load_warning,
    median,
    note,
    python_version,
    ratio_line,
    run_main,
    split_cpus,
    version_of,
    wait_for_port,
)

BENCH = "desktop"
TARGET = 2.0
TOKEN = "bench-token-0123456789"
MiB = 1 << 20
NAMES = ("socketkit", "websockify")


@dataclass
class Run:
    rate: float        # MB/s
    peak_kib: int


# -- the load: a WebSocket client and a TCP server, blocking sockets --------------------------------------
def _ws_open(port: int, path: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16))
    s.sendall(b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n\r\n"
              % (path.encode(), port, key))
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)  # byte by byte: nothing past the head may be swallowed
        if not chunk:
            raise BenchError(f"the bridge closed during the handshake: {head[:200]!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise BenchError(f"the bridge refused the WebSocket: {head.splitlines()[0]!r}")
    return s


def _masked_frame(payload: bytes) -> bytes:
    key = os.urandom(4)
    n = len(payload)
    head = struct.pack("!BBH", 0x82, 0x80 | 126, n) if n < 65536 else struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    masked = (int.from_bytes(payload, "little") ^ int.from_bytes(key * (n // 4), "little")).to_bytes(n, "little")
    return head + key + masked


def _shm_file(make_chunk, size: int) -> int:
    """A file of about `size` bytes in memory (/dev/shm when there is one), for zero-copy sendfile() loads."""
    where = "/dev/shm" if os.path.isdir("/dev/shm") else None
    fd, path = tempfile.mkstemp(prefix="socketkit-bench-desktop-", dir=where)
    os.unlink(path)
    written = 0
    while written < size:
        written += os.write(fd, make_chunk())
    return fd


def _send_file(sock: socket.socket, fd: int, total: int, until: float | None = None) -> int:
    """sendfile() the file again and again until `total` bytes are out (or the time `until`)."""
    size = os.fstat(fd).st_size
    sent = 0
    sock.settimeout(None)  # sendfile() on a socket with a timeout (non-blocking inside) says EAGAIN
    while sent < total and (until is None or time.monotonic() < until):
        offset = 0
        while offset < size and sent < total:
            n = os.sendfile(sock.fileno(), fd, offset, min(size - offset, total - sent))
            if n == 0:
                raise BenchError("the bridge stopped reading")
            offset += n
            sent += n
    return sent


class TcpEnd:
    """The VNC server's stand-in: accepts one connection, then sinks or sources `total` bytes.

    Zero-copy both ways (sendfile() out of a file in memory; recv(MSG_TRUNC), which discards in the
    kernel), so the load process costs little and the bridge is what is measured."""

    def __init__(self, port: int, total: int, mode: str, seconds: float | None = None) -> None:
        self.listener = socket.create_server(("127.0.0.1", port))
        self.port = port
        self.total, self.mode, self.seconds = total, mode, seconds
        self.done_at = 0.0
        self.moved = 0
        self.error: BaseException | None = None
        self.fd = _shm_file(lambda: os.urandom(MiB), 64 * MiB) if mode == "source" else -1
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.listener.settimeout(30)
            conn, _ = self.listener.accept()
            conn.settimeout(60)
            with conn:
                if self.mode == "sink":
                    view = memoryview(bytearray(4 * MiB))
                    while self.moved < self.total:
                        n = conn.recv_into(view, len(view), socket.MSG_TRUNC)
                        if not n:
                            raise BenchError(f"the bridge closed after {self.moved} of {self.total} bytes")
                        self.moved += n
                else:
                    until = time.monotonic() + self.seconds if self.seconds else None
                    self.moved = _send_file(conn, self.fd, self.total, until)
                    conn.shutdown(socket.SHUT_WR)
                    time.sleep(0.2)
                self.done_at = time.monotonic()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            self.error = exc
        finally:
            self.listener.close()
            if self.fd >= 0:
                os.close(self.fd)


def _recv_exactly(s: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def _read_frames(s: socket.socket, total: int, rate: float | None = None) -> int:
    """Count binary payload bytes until `total` (or the bridge closes); `rate` (bytes/s) paces the reads.
    Headers are read, payloads discarded in the kernel (MSG_TRUNC)."""
    view = memoryview(bytearray(4 * MiB))
    step = len(view) if rate is None else 65536
    got = 0
    start = time.monotonic()
    try:
        while got < total:
            b0, b1 = _recv_exactly(s, 2)
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(_recv_exactly(s, 2), "big")
            elif length == 127:
                length = int.from_bytes(_recv_exactly(s, 8), "big")
            opcode = b0 & 0x0F
            if opcode == 0x8:
                return got
            if opcode not in (0x0, 0x2) or b1 & 0x80:
                raise BenchError(f"unexpected frame (opcode {opcode:#x}) from the bridge")
            while length:
                if rate is not None:
                    ahead = got / rate - (time.monotonic() - start)
                    if ahead > 0:
                        time.sleep(ahead)
                n = s.recv_into(view, min(length, step), socket.MSG_TRUNC)
                if not n:
                    return got
                length -= n
                got += n
    except EOFError:
        pass
    return got


def measure(port: int, path: str, target: int, direction: str, total: int, frame: int, group: int) -> Run:
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], group_rss_kib(group) or 0)
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    if direction == "up":
        end = TcpEnd(target, total, "sink")
        ws = _ws_open(port, path)
        frames = _shm_file(lambda: _masked_frame(os.urandom(frame)), 64 * MiB)
        per = len(_masked_frame(b"x" * frame))
        sampler.start()
        start = time.monotonic()
        with ws:
            _send_file(ws, frames, total // frame * per)
            end.thread.join(120)
        os.close(frames)
        seconds = end.done_at - start
        moved = end.moved
    elif direction == "down":
        end = TcpEnd(target, total, "source")
        ws = _ws_open(port, path)
        sampler.start()
        start = time.monotonic()
        with ws:
            moved = _read_frames(ws, total)
            seconds = time.monotonic() - start
        end.thread.join(30)
    else:  # slow reader: the source pushes, the client reads 8 MB/s for 3 s
        end = TcpEnd(target, 1 << 40, "source", seconds=3.0)
        ws = _ws_open(port, path)
        sampler.start()
        start = time.monotonic()
        with ws:
            ws.settimeout(10)
            moved = _read_frames(ws, 24 * 10**6, rate=8e6)
            seconds = time.monotonic() - start
        end.thread.join(30)
        stop.set()
        return Run(moved / seconds / 1e6, peak[0])
    stop.set()
    if end.error is not None:
        raise BenchError(f"{direction}: {end.error}")
    if moved < total:
        raise BenchError(f"{direction}: only {moved} of {total} bytes arrived")
    return Run(total / seconds / 1e6, peak[0])


# -- the bridges ----------------------------------------------------------------------------------------
def start_bridge(name: str, cpus: set[int] | None, target: int) -> tuple[ChildProcess, int, str]:
    """A fresh bridge process for one run, pointed at the TCP end's port `target`."""
    port = free_port()
    exe = sys.executable
    if name == "socketkit":
        audit = Path(tempfile.gettempdir()) / f"socketkit-bench-desktop-{os.getpid()}.log"
        argv = [exe, "-m", "socketkit", "remote", "desktop", "--vnc", f"tcp://127.0.0.1:{target}",
                "--listen", f"tcp://127.0.0.1:{port}", "--token", TOKEN, "--audit-log", str(audit)]
        path = f"/websockify?token={TOKEN}"
    else:
        argv = [exe, "-m", "websockify", f"127.0.0.1:{port}", f"127.0.0.1:{target}"]
        path = "/websockify"
    child = ChildProcess(argv, name=name, cpus=cpus, env={"PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    try:
        wait_for_port(port, proc=child)
    except BaseException:
        child.stop()
        raise
    return child, port, path


def one_run(name: str, direction: str, total: int, frame: int, cpus: set[int] | None) -> Run:
    target = free_port()  # the TCP end binds it when the run starts; the bridge connects to it then
    child, port, path = start_bridge(name, cpus, target)
    try:
        return measure(port, path, target, direction, total, frame, child.pid)
    finally:
        child.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mib", type=int, default=512, help="MiB moved per run and direction (default 512)")
    p.add_argument("--frame", type=int, default=65536, help="payload bytes per browser frame (default 65536)")
    p.add_argument("--repeat", type=int, default=3, help="runs per bridge and direction, interleaved; median")
    p.add_argument("--only", default="", help="comma-separated subset of: " + ", ".join(NAMES))
    p.add_argument("--directions", default="up,down,slow", help="comma-separated subset of: up, down, slow")
    args = p.parse_args()
    install_signal_handlers()
    names = [n for n in NAMES if not args.only or n in args.only.split(",")]
    warning = load_warning()
    server_cpus, load_cpus = split_cpus()
    if load_cpus:
        os.sched_setaffinity(0, load_cpus)
    note(f"{python_version()}; {version_of('websockify')}; {version_of('numpy')}; "
         f"{args.mib} MiB per run, browser frames of {args.frame} bytes, {args.repeat} runs each, interleaved")
    if warning:
        note(warning)
    results: dict[tuple[str, str], list[Run]] = {}
    failed: dict[str, str] = {}
    for direction in [d for d in ("up", "down", "slow") if d in args.directions.split(",")]:
        for _ in range(args.repeat if direction != "slow" else 1):
            for name in names:
                if name in failed:
                    continue
                try:
                    results.setdefault((name, direction), []).append(
                        one_run(name, direction, args.mib * MiB, args.frame, server_cpus))
                except (BenchError, OSError) as exc:
                    failed[name] = f"{direction}: {exc}"
    status = 0
    for direction, label in (("up", "browser->server"), ("down", "server->browser")):
        rates = {}
        for name in names:
            if name in failed and (name, direction) not in results:
                emit(f"{BENCH} {label} {name}: FAILED: {failed[name]}")
                status = 1
                continue
            runs = results.get((name, direction), [])
            if not runs:
                continue
            rates[name] = median([r.rate for r in runs])
            emit(f"{BENCH} {label} {name}: {rates[name]:,.0f} MB/s (peak memory {max(r.peak_kib for r in runs) / 1024:.0f} MiB)")
        if "socketkit" in rates or "websockify" in rates:
            emit(ratio_line(f"{BENCH} {label}", "MB/s", rates.get("socketkit"), rates.get("websockify"), TARGET))
    for name in names:
        runs = results.get((name, "slow"), [])
        if runs:
            emit(f"{BENCH} slow-reader {name}: peak memory {runs[0].peak_kib / 1024:.0f} MiB "
                 f"while the source pushed for 3 s and the browser read {runs[0].rate:.0f} MB/s")
    for name, why in failed.items():
        note(f"{name} failed: {why}")
        status = 1
    return status


if __name__ == "__main__":
    run_main(main)
