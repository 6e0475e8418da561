"""SMTP delivery throughput into a durable Maildir: socketkit's mail service against aiosmtpd, in one run.

    python bench/mail.py [--seconds 10] [--clients 20] [--size 10240] [--repeat 3] [--fresh-connections]

Each server runs as one process on a free 127.0.0.1 port and stores every message in a fresh Maildir
in a temporary directory (the same file system for both), durably: the file is fsynced, moved into
new/, and new/ is fsynced before the server answers 250. CLIENTS concurrent SMTP sessions each
deliver SIZE-byte messages in a closed loop (EHLO once per connection, then MAIL/RCPT/DATA again and
again without RSET; or one connection per message with --fresh-connections); msgs/s counts the
messages acknowledged with 250 during --seconds after a 1 s warm-up.

The load generator (bench/mail_client.py) is an asyncio client on uvloop in several processes that
speaks SMTP on raw connections, pipelines MAIL+RCPT+DATA where the server advertises PIPELINING and
checks every reply code: errors are printed next to the number and void the target.

The aiosmtpd peer lives in this file (`python bench/mail.py --serve-aiosmtpd PORT DIR` runs it by
hand): aiosmtpd's SMTP protocol on `loop.create_server`, with a handle_DATA that stores the message
the careful way in a worker thread (loop.run_in_executor).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import secrets
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HOST,
    BenchError,
    describe_counts,
    emit,
    filesystem_of,
    fmt,
    free_port,
    install_signal_handlers,
    interleave,
    load_warning,
    note,
    python_version,
    ratio_line,
    run_main,
    run_options,
    server_process,
    summarize,
    target_verdict,
    version_of,
)

BENCH = "mail"
OURS = "socketkit"
PEER = "aiosmtpd"
ALL = (OURS, PEER)
TARGET = 2.0  # socketkit's msgs/s over aiosmtpd's
WARMUP = 1.0
READY_TIMEOUT = 20.0


# ---------------------------------------------------------------- the aiosmtpd peer


class DurableMaildir:
    """A Maildir written as a careful aiosmtpd user would: tmp/, fsync, rename to new/, fsync new/."""

    def __init__(self, root: Path) -> None:
        import socket

        self.root = root
        for sub in ("tmp", "new", "cur"):
            (root / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        for directory in (root, root.parent):  # the new directories themselves must survive a crash
            self._fsync_dir(directory)
        self.host = socket.gethostname().replace("/", r"\057").replace(":", r"\072")

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def store(self, data: bytes) -> str:
        """Runs in a worker thread; returns the new file's name, raises OSError if it is not stored."""
        while True:
            # time.pid.random: unique across threads and processes without a shared counter.
            name = f"{time.time_ns() // 1000}.P{os.getpid()}R{secrets.token_hex(6)}.{self.host}"
            tmp = self.root / "tmp" / name
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            break
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, self.root / "new" / name)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self._fsync_dir(self.root / "new")
        return name


def serve_aiosmtpd(port: int, root: str) -> None:
    import asyncio

    from aiosmtpd.smtp import SMTP

    maildir = DurableMaildir(Path(root))

    class MaildirHandler:
        async def handle_DATA(self, server, session, envelope) -> str:
            loop = asyncio.get_running_loop()
            try:
                # fsync blocks for milliseconds: in the default executor, not on the event loop.
                await loop.run_in_executor(None, maildir.store, envelope.original_content)
            except OSError as exc:
                return f"451 4.3.0 Could not store the message: {exc.strerror or exc}"
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        handler = MaildirHandler()
        server = await loop.create_server(
            lambda: SMTP(handler, hostname="aiosmtpd.bench", loop=loop), HOST, port
        )
        await server.serve_forever()

    try:
        import uvloop  # the same loop socketkit picks by default
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())


# ---------------------------------------------------------------- checks on the Maildir


def new_files(maildir: Path) -> list[Path]:
    """Every message in a new/ under `maildir`: its own (catch-all) or its mailboxes' (per recipient)."""
    found = []
    for new in [maildir / "new", *maildir.glob("*/new")]:
        if new.is_dir():
            found.extend(p for p in new.iterdir() if not p.name.startswith("."))
    return found


def check_stored(maildir: Path, message: bytes) -> None:
    """Exactly one message in new/, and it is `message`, maybe after trace headers (Received: ...)."""
    files = new_files(maildir)
    if len(files) != 1:
        raise BenchError(f"after one acknowledged message, {len(files)} files in new/ under {maildir}")
    stored = files[0].read_bytes()

    def lf(b: bytes) -> bytes:  # Maildir writers may store LF or CRLF line ends; both are intact
        return b.replace(b"\r\n", b"\n")

    got, want = lf(stored), lf(message)
    if not got.endswith(want):
        raise BenchError(
            f"the stored message is not the one sent ({len(stored)} bytes stored for {len(message)} sent; "
            f"first difference near byte {_first_difference(got, want)} of the message)"
        )
    prefix = got[: len(got) - len(want)]
    if prefix and (not prefix.endswith(b"\n") or b"\n\n" in prefix or prefix[:1] in b" \t"):
        raise BenchError(f"the stored message starts with something that is not a header: {prefix[:60]!r}")


def _first_difference(got: bytes, want: bytes) -> int:
    # Where the message starts in the file (trace headers may come first), then the first byte that differs.
    start = got.find(want[:64])
    tail = got[start:] if start >= 0 else got[-len(want) :]
    for i, (a, b) in enumerate(zip(tail, want, strict=False)):
        if a != b:
            return i
    return min(len(tail), len(want))


# ---------------------------------------------------------------- the harness


def server_argv(name: str, port: int, maildir: Path) -> list[str]:
    if name == OURS:
        listen = f"tcp://{HOST}:{port}"
        return [
            sys.executable,
            "-m",
            "socketkit",
            "mail",
            "--listen",
            listen,
            "--maildir",
            str(maildir),
            "--accept-all",
        ]
    return [sys.executable, str(Path(__file__).resolve()), "--serve-aiosmtpd", str(port), str(maildir)]


@dataclass
class Run:
    rate: float
    errors: Counter[str]
    server_cpu: float | None  # CPU seconds per second, warm-up included
    client_cpu: float
    pipelining: bool | None


def measure(name: str, args: argparse.Namespace, tmp_root: Path) -> Run:
    from mail_client import build_message, run_load, send_one

    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=tmp_root))
    maildir = run_dir / "Maildir"
    port = free_port()
    try:
        with server_process(
            server_argv(name, port, maildir), port, name=name, ready_timeout=READY_TIMEOUT
        ) as child:
            probe = build_message(args.size, f"check.{secrets.token_hex(8)}")
            acked, errors, pipelining = send_one(port, probe)
            if errors or acked != 1:
                raise BenchError(f"one test message was not delivered: {describe_counts(errors)}")
            check_stored(maildir, probe)

            message = build_message(args.size)
            cpu0, t0 = child.cpu_seconds(), time.monotonic()
            try:
                load = run_load(
                    port,
                    args.clients,
                    message,
                    warmup=WARMUP,
                    seconds=args.seconds,
                    fresh=args.fresh_connections,
                    procs=args.client_procs,
                )
            except RuntimeError as exc:
                raise BenchError(str(exc)) from None
            cpu1, t1 = child.cpu_seconds(), time.monotonic()
            if child.poll() is not None:
                raise BenchError(child.exit_reason())
        # The server is stopped: everything it acknowledged must be in new/ (it may hold a few more,
        # stored for a reply the clients stopped waiting for).
        stored = len(new_files(maildir)) - 1
        errors = Counter(load.errors)
        if stored < load.acked:
            errors[f"acknowledged but not in new/ (of {load.acked:,} acknowledged)"] += load.acked - stored
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    server_cpu = (cpu1 - cpu0) / (t1 - t0) if cpu0 is not None and cpu1 is not None else None
    run = Run(
        load.rate,
        errors,
        server_cpu,
        load.client_cpu,
        load.pipelining if load.pipelining is not None else pipelining,
    )
    if args.verbose:
        scpu = f"{server_cpu:.0%}" if server_cpu is not None else "?"
        extra = f", errors: {describe_counts(errors)}" if errors else ""
        note(
            f"{name}: {fmt(run.rate)} msgs/s, {load.acked:,} acked in all, server cpu {scpu} (incl. warm-up), "
            f"client cpu {load.client_cpu:.0%} over {min(args.client_procs, args.clients)} processes{extra}"
        )
    return run


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_options(p, ALL, seconds=10.0, repeat=3, seconds_help="measured seconds per run (after a 1 s warm-up)")
    p.add_argument("--clients", type=int, default=20, help="concurrent SMTP sessions")
    p.add_argument("--size", type=int, default=10240, help="bytes per message, headers included")
    p.add_argument(
        "--fresh-connections",
        action="store_true",
        help="one connection per message (greeting, EHLO, one transaction, QUIT) instead of reusing sessions",
    )
    p.add_argument(
        "--client-procs", type=int, default=2, help="load generator processes (clients are shared out)"
    )
    p.add_argument(
        "--tmpdir",
        default=None,
        help="where the Maildirs go (default: the system's temporary directory); both servers use it",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="per-run details: server and client CPU use")
    p.add_argument("--serve-aiosmtpd", nargs=2, metavar=("PORT", "DIR"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_aiosmtpd:
        return args
    if args.seconds <= 0 or args.clients < 1 or args.repeat < 1 or args.client_procs < 1:
        p.error("--seconds, --clients, --repeat and --client-procs must be positive")
    from mail_client import build_message

    try:
        build_message(args.size)
    except ValueError as exc:
        p.error(str(exc))
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ALL)
    if unknown := [n for n in args.names if n not in ALL]:
        p.error(f"unknown server {', '.join(unknown)}; choose from {', '.join(ALL)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_aiosmtpd:
        port, root = args.serve_aiosmtpd
        serve_aiosmtpd(int(port), root)
        return 0

    install_signal_handlers()
    procs = min(args.client_procs, args.clients)
    how = (
        "a fresh connection per message (greeting, EHLO, MAIL/RCPT/DATA, QUIT)"
        if args.fresh_connections
        else "persistent sessions (EHLO once, then MAIL/RCPT/DATA again and again, no RSET)"
    )
    note(
        f"{args.clients} SMTP clients x {args.size:,} B messages, {how}; {WARMUP:g} s warm-up + "
        f"{args.seconds:g} s per run, median of {args.repeat}; {python_version()}"
    )
    note(
        f"load generator: bench/mail_client.py, asyncio on uvloop in {procs} processes, MAIL+RCPT+DATA "
        "in one write where PIPELINING is advertised, every reply code checked"
    )
    workers = min(32, (os.cpu_count() or 1) + 4)
    note(
        "durability: both servers make the message file durable, rename it into new/ and fsync new/ before "
        "answering 250 (socketkit: one committer thread stores whatever is queued as a batch, one syncfs "
        "or fsync per file and one fsync of new/ per batch; aiosmtpd: fsync per file and per rename, in "
        f"asyncio's default executor, {workers} threads here); one server process each, on uvloop"
    )
    note(f"peer: {version_of('aiosmtpd')}")
    if busy := load_warning():
        note(busy)

    skipped: dict[str, str] = {}
    if PEER in args.names and importlib.util.find_spec("aiosmtpd") is None:
        skipped[PEER] = "aiosmtpd not installed"
    runnable = [n for n in args.names if n not in skipped]
    with tempfile.TemporaryDirectory(prefix="socketkit-bench-mail-", dir=args.tmpdir) as tmp:
        note(f"maildirs: {filesystem_of(tmp)}, a fresh one per run, deleted after it")
        runs, failed = interleave(runnable, args.repeat, lambda name: measure(name, args, Path(tmp)))

    results = summarize(BENCH, args.names, runs, skipped, failed, "msgs/s")
    for name in results:
        if results[name] is None:
            continue
        flags = {r.pipelining for r in runs[name]}
        pipelined = (
            "advertises PIPELINING" if flags == {True} else "no PIPELINING: one command per round trip"
        )
        client = max(r.client_cpu for r in runs[name]) / procs
        busy_client = (
            f"; load generator up to {client:.0%} of {procs} cores: it may be the limit"
            if client > 0.85
            else ""
        )
        note(f"{name}: {pipelined}{busy_client}")

    if OURS in results and PEER in results:
        ours, peer = results[OURS], results[PEER]
        ours_rate = ours[0] if ours else None
        peer_rate = peer[0] if peer else None
        line = ratio_line(BENCH, PEER, ours_rate, peer_rate)
        dirty = [
            f"{who} {describe_counts(r[1])}" for who, r in (("ours", ours), ("peer", peer)) if r and r[1]
        ]
        ratio = ours_rate / peer_rate if ours_rate is not None and peer_rate else None
        line += target_verdict(ratio, TARGET, why_na="errors" if dirty else "")
        if dirty:
            line += f" (errors: {'; '.join(dirty)})"
        emit(line)
    clean = not failed and all(r is not None and not r[1] for r in results.values())
    return 0 if clean else 1


if __name__ == "__main__":
    run_main(main)
