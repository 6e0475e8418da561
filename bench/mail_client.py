"""The SMTP load generator for bench/mail.py: asyncio (uvloop) clients in several processes.

Each process drives its share of the connections with its own event loop. A connection says EHLO
once, then delivers the same message again and again: MAIL, RCPT, DATA, the dot-stuffed message and
'.' (no RSET between transactions: a transaction that ended with a reply to the final '.' leaves the
session ready for the next MAIL). With --fresh-connections every message gets a connection of its own:
greeting, EHLO, one transaction, QUIT.

When the server advertises PIPELINING (RFC 2920), MAIL, RCPT and DATA go out in one write and their
three replies are read together; otherwise each command waits for its reply. Every reply code is
checked: anything else than the expected 2xx/3xx is counted as an error by code, and so is a
connection the server closed, so a broken server can never look fast.

The parent measures nothing itself: each process counts the messages acknowledged with 250 during the
measured window and its own CPU time, and the parent adds them up.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field

HOST = "127.0.0.1"
MAIL_FROM = "bench-sender@example.org"
RCPT_TO = "bench-rcpt@example.org"
LINE = 76  # body line length before CRLF: under the RFC 5322 limit of 78
STOP_GRACE = 2.0  # seconds the connections get to finish their transaction after the window


# ---------------------------------------------------------------- the message


def build_message(size: int, tag: str = "load") -> bytes:
    """An RFC 5322 message of exactly `size` bytes (CRLF line ends), for any size >= the headers.

    Every 16th body line starts with '.', so the client must dot-stuff and the server un-stuff:
    a server that gets transparency wrong stores a different message and fails the check.
    """
    head = (
        f"From: Bench Sender <{MAIL_FROM}>\r\n"
        f"To: Bench Recipient <{RCPT_TO}>\r\n"
        f"Subject: socketkit mail benchmark ({tag})\r\n"
        f"Message-ID: <{tag}.{size}@bench.example.org>\r\n"
        "Date: Thu, 01 Jan 2026 00:00:00 +0000\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        "\r\n"
    ).encode()
    if size < len(head) + 2:
        raise ValueError(f"--size must be at least {len(head) + 2} bytes (the headers and one line end)")
    body = bytearray()
    n = 0
    alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 "
    while len(head) + len(body) < size:
        room = size - len(head) - len(body)
        text_len = min(LINE, room - 2)
        line = bytes(alphabet[(n * 7 + i) % len(alphabet)] for i in range(text_len))
        if n % 16 == 5 and text_len > 0:
            line = b"." + line[1:]
        body += line + b"\r\n"
        n += 1
    message = head + bytes(body)
    assert len(message) == size and message.endswith(b"\r\n")
    return message


def dot_stuff(message: bytes) -> bytes:
    """The DATA block for `message` (which ends with CRLF): leading dots doubled, then '.' CRLF."""
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    if stuffed.startswith(b"."):
        stuffed = b"." + stuffed
    return stuffed + b".\r\n"


# ---------------------------------------------------------------- one connection


class Closed(Exception):
    """The server closed the connection (or reset it)."""


class ReplyReader(asyncio.Protocol):
    """Splits the server's output into replies: lists of lines, a reply ends at 'NNN ' (not 'NNN-')."""

    MAX_BUFFER = 1 << 16

    def __init__(self) -> None:
        self.buf = bytearray()
        self.lines: list[bytes] = []
        self.replies: deque[list[bytes]] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.want = 0
        self.lost: str | None = None
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        start = 0
        while (end := buf.find(b"\r\n", start)) >= 0:
            line = bytes(buf[start:end])
            start = end + 2
            self.lines.append(line)
            if len(line) < 4 or line[3] != 0x2D:  # not "NNN-": the reply's last line
                self.replies.append(self.lines)
                self.lines = []
        if start:
            del buf[:start]
        if len(buf) > self.MAX_BUFFER:
            self.lost = f"reply line longer than {self.MAX_BUFFER} bytes"
            self.transport.abort()
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = (
                f"connection closed by the server ({exc})" if exc else "connection closed by the server"
            )
        self._wake()

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done() and (len(self.replies) >= self.want or self.lost):
            w.set_result(None)

    async def read(self, n: int) -> list[list[bytes]]:
        while len(self.replies) < n:
            if self.lost is not None:
                raise Closed(self.lost)
            self.waiter = asyncio.get_running_loop().create_future()
            self.want = n
            try:
                await self.waiter
            finally:
                self.waiter = None
        return [self.replies.popleft() for _ in range(n)]

    def write(self, data: bytes) -> None:
        if self.lost is not None:
            raise Closed(self.lost)
        self.transport.write(data)


def code_of(reply: list[bytes]) -> int:
    try:
        return int(reply[0][:3])
    except ValueError:
        return 0


@dataclass
class Tally:
    """What one process saw."""

    acked: int = 0  # 250 after the final '.', whole run (the parent compares it with the Maildir)
    window: int = 0  # the same, during the measured window only
    errors: Counter[str] = field(default_factory=Counter)
    pipelining: bool | None = None
    counting: bool = False

    def error(self, what: str) -> None:
        self.errors[what] += 1


def expect(tally: Tally, step: str, reply: list[bytes], ok: tuple[int, ...]) -> bool:
    code = code_of(reply)
    if code in ok:
        return True
    tally.error(f"{step} {code or 'garbled'}")
    return False


class Client:
    """One SMTP session; `deliver()` runs one transaction and returns True when it was acknowledged."""

    def __init__(self, port: int, data_block: bytes, tally: Tally) -> None:
        self.port = port
        self.data_block = data_block
        self.tally = tally
        self.proto: ReplyReader | None = None
        self.pipelining = False
        self.mail_cmd = f"MAIL FROM:<{MAIL_FROM}>\r\n".encode()
        self.rcpt_cmd = f"RCPT TO:<{RCPT_TO}>\r\n".encode()
        self.data_cmd = b"DATA\r\n"
        self.envelope = self.mail_cmd + self.rcpt_cmd + self.data_cmd  # one write when pipelining

    async def open(self) -> bool:
        loop = asyncio.get_running_loop()
        _, self.proto = await loop.create_connection(ReplyReader, HOST, self.port)
        (greeting,) = await self.proto.read(1)
        if not expect(self.tally, "greeting", greeting, (220,)):
            return False
        self.proto.write(b"EHLO bench.example.org\r\n")
        (ehlo,) = await self.proto.read(1)
        if not expect(self.tally, "EHLO", ehlo, (250,)):
            return False
        self.pipelining = any(line[4:].upper().split()[:1] == [b"PIPELINING"] for line in ehlo[1:])
        self.tally.pipelining = self.pipelining
        return True

    async def deliver(self) -> bool:
        p = self.proto
        tally = self.tally
        if self.pipelining:
            p.write(self.envelope)
            mail, rcpt, data = await p.read(3)
            ok = expect(tally, "MAIL", mail, (250,))
            ok = expect(tally, "RCPT", rcpt, (250, 251)) and ok
            if code_of(data) != 354:
                # DATA refused: nothing to send (the server said why in the replies above).
                expect(tally, "DATA", data, (354,))
                return False
            if not ok:  # 354 despite a refused MAIL/RCPT: send the block anyway to stay in sync
                p.write(self.data_block)
                await p.read(1)
                return False
        else:
            p.write(self.mail_cmd)
            (mail,) = await p.read(1)
            if not expect(tally, "MAIL", mail, (250,)):
                return False
            p.write(self.rcpt_cmd)
            (rcpt,) = await p.read(1)
            if not expect(tally, "RCPT", rcpt, (250, 251)):
                p.write(b"RSET\r\n")
                await p.read(1)
                return False
            p.write(self.data_cmd)
            (data,) = await p.read(1)
            if not expect(tally, "DATA", data, (354,)):
                return False
        p.write(self.data_block)
        (done,) = await p.read(1)
        if not expect(tally, "end of data", done, (250,)):
            return False
        tally.acked += 1
        if tally.counting:
            tally.window += 1
        return True

    async def quit(self) -> None:
        """QUIT, then wait for the server to close first: its side keeps the TIME_WAIT, not our ports."""
        p = self.proto
        if p is None or p.lost is not None:
            return
        try:
            p.write(b"QUIT\r\n")
            (bye,) = await p.read(1)
            expect(self.tally, "QUIT", bye, (221,))
            while p.lost is None:
                await p.read(1)
        except Closed:
            pass
        finally:
            self.close()

    def close(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()


# ---------------------------------------------------------------- one process


async def _persistent(port: int, block: bytes, tally: Tally, stop: list[bool]) -> None:
    client = Client(port, block, tally)
    try:
        opened = await client.open()
    except (OSError, Closed) as exc:
        tally.error(f"connect: {exc}")
        opened = False
    while not stop[0]:
        if not opened:
            # Reconnect once the server misbehaved on this session; the error is already counted.
            client.close()
            await asyncio.sleep(0.01)
            client = Client(port, block, tally)
            try:
                opened = await client.open()
            except (OSError, Closed) as exc:
                tally.error(f"connect: {exc}")
            continue
        try:
            await client.deliver()
        except Closed as exc:
            tally.error(str(exc))
            opened = False
    await client.quit()


async def _fresh(port: int, block: bytes, tally: Tally, stop: list[bool]) -> None:
    while not stop[0]:
        client = Client(port, block, tally)
        try:
            if await client.open():
                await client.deliver()
            await client.quit()
        except (OSError, Closed) as exc:
            tally.error(str(exc) if isinstance(exc, Closed) else f"connect: {exc}")
            client.close()
            await asyncio.sleep(0.01)


async def run_process(
    port: int, conns: int, message: bytes, warmup: float, seconds: float, fresh: bool, barrier
) -> dict:
    loop = asyncio.get_running_loop()
    block = dot_stuff(message)
    tally = Tally()
    stop = [False]
    body = _fresh if fresh else _persistent
    await loop.run_in_executor(None, barrier.wait, 30)  # every process starts together
    tasks = [asyncio.create_task(body(port, block, tally, stop)) for _ in range(conns)]
    await asyncio.sleep(warmup)
    tally.counting = True
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    tally.counting = False
    cpu1, t1 = time.process_time(), time.monotonic()
    window = tally.window
    stop[0] = True
    # Let each session finish the transaction it is in and QUIT; bounded, then cut.
    done, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            exc = t.exception()
            tally.error(f"client bug: {type(exc).__name__}: {exc}")
    return {
        "window": window,
        "acked": tally.acked,
        "elapsed": t1 - t0,
        "cpu": cpu1 - cpu0,
        "errors": dict(tally.errors),
        "pipelining": tally.pipelining,
    }


def _worker(port, conns, message, warmup, seconds, fresh, barrier, results) -> None:
    try:
        import uvloop

        new_loop = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    loop = new_loop()
    try:
        out = loop.run_until_complete(run_process(port, conns, message, warmup, seconds, fresh, barrier))
        results.put(("ok", out))
    except BaseException as exc:  # reported by the parent as the run's failure
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


@dataclass
class LoadResult:
    rate: float  # messages acknowledged per second in the window
    acked: int  # acknowledged over the whole run, warm-up and wind-down included
    errors: Counter[str]
    client_cpu: float  # CPU seconds per second of window, summed over the processes
    pipelining: bool | None


def run_load(
    port: int, clients: int, message: bytes, *, warmup: float, seconds: float, fresh: bool, procs: int
) -> LoadResult:
    """Drive the server at `port` from `procs` processes; raises RuntimeError if a process broke."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    procs = max(1, min(procs, clients))
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    shares = [clients // procs + (i < clients % procs) for i in range(procs)]
    workers = [
        ctx.Process(
            target=_worker, args=(port, share, message, warmup, seconds, fresh, barrier, results), daemon=True
        )
        for share in shares
    ]
    outcomes = []
    try:
        for w in workers:
            w.start()
        for _ in workers:
            outcomes.append(results.get(timeout=warmup + seconds + STOP_GRACE + 60))
    finally:
        for w in workers:
            w.join(5)
            if w.is_alive():
                w.kill()
                w.join(5)
    broken = [o[1] for o in outcomes if o[0] == "error"]
    if broken:
        raise RuntimeError(f"load generator process failed: {broken[0]}")
    outs = [o[1] for o in outcomes]
    elapsed = max(o["elapsed"] for o in outs)
    errors: Counter[str] = Counter()
    for o in outs:
        errors.update(o["errors"])
    flags = {o["pipelining"] for o in outs} - {None}
    return LoadResult(
        rate=sum(o["window"] for o in outs) / elapsed,
        acked=sum(o["acked"] for o in outs),
        errors=errors,
        client_cpu=sum(o["cpu"] for o in outs) / elapsed,
        pipelining=flags.pop() if len(flags) == 1 else None,
    )


# ---------------------------------------------------------------- one message, for the pre-check


async def _send_one(port: int, message: bytes, timeout: float) -> tuple[Tally, bool | None]:
    tally = Tally()
    client = Client(port, dot_stuff(message), tally)

    async def go() -> None:
        try:
            if await client.open() and await client.deliver():
                await client.quit()
        except Closed as exc:
            tally.error(str(exc))
        except OSError as exc:
            tally.error(f"connect: {exc}")
        finally:
            client.close()

    try:
        await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        tally.error(f"no complete exchange within {timeout:g}s")
    return tally, client.pipelining if client.proto is not None else None


def send_one(port: int, message: bytes, timeout: float = 10.0) -> tuple[int, Counter[str], bool | None]:
    """Deliver one message with the load generator's own code; (acknowledged, errors, pipelining)."""
    tally, pipelining = asyncio.run(_send_one(port, message, timeout))
    return tally.acked, tally.errors, pipelining


if __name__ == "__main__":  # a quick manual check: python bench/mail_client.py PORT
    port = int(sys.argv[1])
    print(send_one(port, build_message(10240, f"manual.{os.getpid()}")))
