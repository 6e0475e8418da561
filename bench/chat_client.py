"""The IRC load generator for bench/chat.py: asyncio (uvloop) clients in several processes.

Each process owns a share of the clients and runs them on its own event loop, over bare
`asyncio.Protocol` connections with a hand-rolled line splitter (the generator must stay much cheaper
than the server it measures). A client registers (NICK, USER, waits for 001), joins its channel
(clients go round robin over the channels) and waits for its own JOIN or the end of NAMES. PING is
answered with PONG at any time.

Once every process has reported its clients joined, the parent (chat.py) samples the server's memory
and hands out a common start time T0 (time.monotonic_ns(): CLOCK_MONOTONIC, one clock for all
processes on the machine). From then each joined client sends PRIVMSG to its channel on a fixed
schedule: RATE lines per second, the first one at a random phase in [0, 1/RATE), the same phases for
every server of a run (seeded), so every server is offered exactly the same messages. Lines that fall
behind their schedule are still sent (late, and the lateness is reported): the offered load never
depends on the server. Each line carries its send time, its sender and a sequence number; receivers
count deliveries and take the latency from the arrival of the chunk that held the line.

After the sending window a short drain lets late deliveries arrive, then every process reports its
counts (per channel: clients joined and lines sent, so the parent can work out the deliveries that
should have arrived) and waits for the parent to sample memory once more before hanging up.
"""

from __future__ import annotations

import asyncio
import random
import re
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field

HOST = "127.0.0.1"
CONNECT_CONCURRENCY = 8  # connects + registrations in flight per process: ngircd listens with a backlog of 10
TEXT_LEN = 64  # bytes of message text: "<send ns> <sender> <seq> " and filler
FILLER = b"socketkit-chat-bench-" * 4
SYNC_TIMEOUT = 60.0  # the longest a process waits for the parent between phases
# One delivery as a server relays it: optional tags, a source, and our text "<send ns> <sender> <seq> ...".
_DELIVERY = re.compile(rb"^(?:@[^ \n]* )?:[^ \n]+ PRIVMSG [^ \n]+ :(\d+) (\d+) (\d+) [^\n]*\n", re.M)


@dataclass
class Plan:
    """What every process needs to know about the run; the same for all of them."""

    port: int
    clients: int  # in total, over all processes
    channels: int
    rate: float  # lines per second per client
    seconds: float
    drain: float
    tag: str  # makes nicks and channel names unique to the run
    seed: int  # send phases: the same seed gives every server the same schedule
    register_deadline_ns: int  # absolute monotonic time by which registration and JOIN must be done

    def nick(self, i: int) -> str:
        return f"{self.tag}{i}"

    def channel_of(self, i: int) -> int:
        return i % self.channels

    def channel_name(self, ch: int) -> str:
        return f"#{self.tag}{ch}"

    def line_bytes(self) -> int:
        """Length of one PRIVMSG line as sent, CRLF included (for the flood-limit check)."""
        return len(f"PRIVMSG {self.channel_name(self.channels - 1)} :".encode()) + TEXT_LEN + 2


class Closed(Exception):
    pass


@dataclass
class Tally:
    """One process's counts; everything here is sent back to the parent."""

    deliveries: int = 0
    latencies: array = field(default_factory=lambda: array("q"))  # ns, one per delivery
    out_of_order: int = 0  # a sender's sequence number not above the last one seen from it
    garbled: int = 0  # PRIVMSG lines whose text is not ours
    notices: Counter[str] = field(default_factory=Counter)  # after joining: NOTICE and error numerics
    disconnects: Counter[str] = field(default_factory=Counter)  # after joining, by reason
    measuring: bool = False  # deliveries and latencies are counted only from T0 on


class ChatClient(asyncio.Protocol):
    def __init__(self, plan: Plan, index: int, tally: Tally) -> None:
        self.plan = plan
        self.index = index
        self.nick = plan.nick(index).encode()
        self.channel = plan.channel_name(plan.channel_of(index)).encode()
        self.tally = tally
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.joined_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.joined = False
        self.closing = False
        self.closed_reason = ""
        self.last_seq: dict[int, int] = {}

    # ------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        reason = self.closed_reason or (f"connection lost ({exc})" if exc else "server closed the connection")
        self._fail(reason)
        if self.joined and not self.closing:
            self.tally.disconnects[reason[:80]] += 1

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.buf:
            data = self.buf + data
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            self.buf = data[cut:]
            data = data[:cut]
        else:
            self.buf = b""
        if not data:
            return
        tally = self.tally
        # The hot path, one regular expression over the whole chunk: the channel messages. At the
        # higher rates this process receives hundreds of thousands of them a second.
        found = _DELIVERY.findall(data)
        lines = data.count(b"\n")
        if found and tally.measuring:
            tally.deliveries += len(found)
            tally.latencies.extend([now - int(ts) for ts, _, _ in found])
            last = self.last_seq
            for _, sender, seq in found:
                s_i, q_i = int(sender), int(seq)
                if q_i <= last.get(s_i, -1):
                    tally.out_of_order += 1
                else:
                    last[s_i] = q_i
        if len(found) == lines:
            return
        for line in data.split(b"\n")[:-1]:
            i = line.find(b" PRIVMSG ")
            if i > 0 and line[0] == 58:  # ':' prefix, as servers send it
                if tally.measuring and not _DELIVERY.match(line + b"\n"):
                    tally.garbled += 1
            else:
                self._control(line.rstrip(b"\r"))

    # ------------------------------------------------------------ everything but PRIVMSG

    def _control(self, line: bytes) -> None:
        if not line:
            return
        parts = line.split(b" ", 3)
        if line[0] == 58:
            prefix, parts = parts[0], parts[1:]
        else:
            prefix = b""
        if not parts:
            return
        cmd = parts[0].upper()
        if cmd == b"PING":
            self.send(b"PONG" + line[line.upper().find(b"PING") + 4 :] + b"\r\n")
        elif cmd == b"001":
            if not self.welcomed.done():
                self.welcomed.set_result(None)
        elif cmd == b"JOIN" and prefix[1:].split(b"!", 1)[0] == self.nick:
            self._joined()
        elif cmd == b"366":  # end of NAMES: the JOIN is complete
            self._joined()
        elif cmd == b"ERROR":
            self.closed_reason = "ERROR " + line.decode(errors="replace").split(" ", 1)[-1][:70]
        elif cmd == b"NOTICE" or (cmd.isdigit() and cmd[:1] in b"45"):
            text = line.decode(errors="replace")
            if self.joined:
                self.tally.notices[_squash(text)] += 1
            elif cmd.isdigit():  # an error before we are in: registration or JOIN failed
                self._fail(f"{cmd.decode()} {_squash(text)}")

    def _joined(self) -> None:
        if not self.joined:
            self.joined = True
            if not self.joined_fut.done():
                self.joined_fut.set_result(None)

    def _fail(self, reason: str) -> None:
        for fut in (self.welcomed, self.joined_fut):
            if not fut.done():
                fut.set_exception(Closed(reason))
                fut.exception()  # retrieved: no "never retrieved" warning if nobody waits on it

    # ------------------------------------------------------------ sending

    def send(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


def _squash(text: str) -> str:
    """A NOTICE or numeric without what differs per client (prefix, nick), to count by kind."""
    words = text.split(" ")
    if words and words[0].startswith(":"):
        words = words[1:]
    if len(words) >= 2:
        words = [words[0], *words[2:]]  # drop the target (our nick)
    return " ".join(words)[:80]


# ---------------------------------------------------------------- one process


async def _register(plan: Plan, index: int, tally: Tally, sem: asyncio.Semaphore, errors: Counter[str]):
    loop = asyncio.get_running_loop()
    step = "connect"
    client: ChatClient | None = None
    try:
        async with asyncio.timeout(max(0.001, (plan.register_deadline_ns - time.monotonic_ns()) / 1e9)):
            # Only connecting and registering are throttled: the JOIN may take a while (ngircd
            # delays the first command after the welcome by ~1 s) and needs no new connection.
            async with sem:
                _, client = await loop.create_connection(
                    lambda: ChatClient(plan, index, tally), HOST, plan.port
                )
                nick = plan.nick(index)
                client.send(f"NICK {nick}\r\nUSER {nick} 0 * :socketkit bench\r\n".encode())
                step = "register"
                await client.welcomed
            client.send(f"JOIN {plan.channel_name(plan.channel_of(index))}\r\n".encode())
            step = "join"
            await client.joined_fut
        return client
    except TimeoutError:
        errors[f"{step}: no answer by the registration deadline"] += 1
    except Closed as exc:
        errors[f"{step}: {exc}"] += 1
    except OSError as exc:
        errors[f"{step}: {type(exc).__name__}: {exc.strerror or exc}"] += 1
    if client is not None:
        client.close()
    return None


async def _sender(
    client: ChatClient, plan: Plan, t0_ns: int, phase_ns: int, sent: list[int], late: array
) -> None:
    period_ns = int(1e9 / plan.rate)
    end_ns = t0_ns + int(plan.seconds * 1e9)
    channel = client.channel
    head = b"PRIVMSG " + channel + b" :"
    sender = str(client.index).encode()
    seq = 0
    sched = t0_ns + phase_ns
    while sched < end_ns:
        delay = sched - time.monotonic_ns()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        if client.transport is None or client.transport.is_closing():
            return
        now = time.monotonic_ns()
        late.append(now - sched)
        text = b"%d %s %d " % (now, sender, seq)
        client.transport.write(head + text + FILLER[: TEXT_LEN - len(text)] + b"\r\n")
        sent[0] += 1
        seq += 1
        sched = t0_ns + phase_ns + seq * period_ns


async def run_process(plan: Plan, indices: range, pid: int, results, go, t0_value, release) -> None:
    loop = asyncio.get_running_loop()
    tally = Tally()
    errors: Counter[str] = Counter()
    sem = asyncio.Semaphore(CONNECT_CONCURRENCY)

    start = time.monotonic()
    got = await asyncio.gather(*(_register(plan, i, tally, sem, errors) for i in indices))
    clients = [c for c in got if c is not None]
    joined_per_channel = Counter(plan.channel_of(c.index) for c in clients)
    results.put(
        (
            "ready",
            pid,
            {
                "joined": len(clients),
                "per_channel": dict(joined_per_channel),
                "errors": dict(errors),
                "seconds": time.monotonic() - start,
            },
        )
    )

    # The clients keep reading (PING, other clients' JOINs) while the parent waits for the slowest
    # process and samples memory.
    wait = max(0.0, (plan.register_deadline_ns - time.monotonic_ns()) / 1e9) + SYNC_TIMEOUT
    if not await loop.run_in_executor(None, go.wait, wait) or t0_value.value <= 0:
        for c in clients:
            c.close()
        return
    t0_ns = t0_value.value

    rng = random.Random(plan.seed)
    period_ns = int(1e9 / plan.rate)
    phases = [rng.randrange(period_ns) for _ in range(plan.clients)]  # indexed by the global client number
    sent_per_channel: Counter[int] = Counter()
    counters = {c.index: [0] for c in clients}
    late = array("q")
    errors = Counter()  # from here on: the send phase's own problems (the ready report had the rest)
    tally.measuring = True
    cpu0, w0 = time.process_time(), time.monotonic()
    senders = [
        asyncio.create_task(_sender(c, plan, t0_ns, phases[c.index], counters[c.index], late))
        for c in clients
    ]
    await asyncio.sleep(max(0.0, (t0_ns - time.monotonic_ns()) / 1e9 + plan.seconds))
    done, pending = await asyncio.wait(senders, timeout=5.0)  # bounded even if the loop fell far behind
    for t in pending:
        t.cancel()
    await asyncio.sleep(plan.drain)
    tally.measuring = False
    cpu1, w1 = time.process_time(), time.monotonic()
    for t in done:
        if t.exception() is not None:
            exc = t.exception()
            errors[f"load generator bug: {type(exc).__name__}: {exc}"] += 1
    for c in clients:
        sent_per_channel[plan.channel_of(c.index)] += counters[c.index][0]
    still = sum(1 for c in clients if c.transport is not None and not c.transport.is_closing())

    results.put(
        (
            "done",
            pid,
            {
                "sent_per_channel": dict(sent_per_channel),
                "deliveries": tally.deliveries,
                "latencies": tally.latencies.tobytes(),
                "late": late.tobytes(),
                "out_of_order": tally.out_of_order,
                "garbled": tally.garbled,
                "notices": dict(tally.notices),
                "disconnects": dict(tally.disconnects),
                "connected_at_end": still,
                "errors": dict(errors),
                "cpu": cpu1 - cpu0,
                "wall": w1 - w0,
            },
        )
    )
    # Connected until the parent has sampled the server's memory at the end.
    await loop.run_in_executor(None, release.wait, SYNC_TIMEOUT)
    for c in clients:
        c.close()
    await asyncio.sleep(0.05)


def _worker(plan: Plan, indices: range, pid: int, results, go, t0_value, release) -> None:
    try:
        import uvloop

        new_loop = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop
    loop = new_loop()
    try:
        loop.run_until_complete(run_process(plan, indices, pid, results, go, t0_value, release))
    except BaseException as exc:  # reported by the parent as the run's failure
        results.put(("error", pid, f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


# ---------------------------------------------------------------- the parent side


@dataclass
class LoadResult:
    clients: int
    joined: int
    register_seconds: float  # the slowest process, connect to last JOIN
    join_errors: Counter[str]
    sent: int
    expected: int  # deliveries that should have arrived: per channel, lines sent x (members - 1)
    delivered: int
    latencies_ns: array  # every delivery's latency, unsorted
    late_ns: array  # how late each line went out against its schedule
    out_of_order: int
    garbled: int
    notices: Counter[str]
    disconnects: Counter[str]
    errors: Counter[str]
    connected_at_end: int
    client_cpu: float  # CPU seconds per second of the send window + drain, summed over processes

    lat_hist: dict[int, int] | None = None   # the C generator's histograms (see chat_load.c)
    late_hist: dict[int, int] | None = None
    generator: str = "python"

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.delivered)

    def latency_ms(self, q: float) -> float:
        """The q-quantile of the delivery latency (q=1: the maximum), in ms; NaN without deliveries."""
        return _quantile_ms(self.latencies_ns, self.lat_hist, q)

    def lateness_ms(self, q: float) -> float:
        return _quantile_ms(self.late_ns, self.late_hist, q)


def _bucket_ms(b: int) -> float:
    us = b * 10 + 5 if b < 100_000 else 1_000_000 + (b - 100_000) * 1000 + 500
    return us / 1000


def _quantile_ms(values: array, hist: dict[int, int] | None, q: float) -> float:
    if hist is not None:
        total = sum(hist.values())
        if not total:
            return float("nan")
        rank = min(total - 1, int(q * total))
        seen = 0
        for b in sorted(hist):
            seen += hist[b]
            if seen > rank:
                return _bucket_ms(b)
        return _bucket_ms(max(hist))
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1e6


# ---------------------------------------------------------------- the C generator (chat_load.c)


def run_load_c(binary: str, plan_args: dict, *, procs: int, register_timeout: float, on_joined, on_end) -> LoadResult:
    """Drive one server with `procs` chat_load processes (the clients interleaved over them), as
    run_load() does with Python ones. Raises RuntimeError if a process broke or answered nonsense."""
    import subprocess

    plan = Plan(**plan_args, register_deadline_ns=0)
    procs = max(1, min(procs, plan.clients))
    children = [
        subprocess.Popen(
            [binary, str(plan.port), str(plan.clients), str(plan.channels), repr(plan.rate), repr(plan.seconds),
             plan.tag, str(plan.seed), str(i), str(procs), repr(register_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
        for i in range(procs)
    ]

    # A thread per child reads its lines into a queue: every wait below is bounded.
    import queue
    import threading

    lines: dict[int, queue.SimpleQueue[str | None]] = {}
    for child in children:
        q: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        lines[child.pid] = q

        def pump(child=child, q=q) -> None:
            for line in child.stdout:
                q.put(line.rstrip("\n"))
            q.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def readline(child, timeout: float) -> str:
        try:
            line = lines[child.pid].get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"chat_load said nothing within {timeout:g}s") from None
        if line is None:
            raise RuntimeError(f"chat_load exited ({child.wait()}): {child.stderr.read()[:300]}")
        return line

    def tell(child, text: str) -> None:
        try:
            child.stdin.write(text + "\n")
            child.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    try:
        members: Counter[int] = Counter()
        joined = join_errors = 0
        register_seconds = 0.0
        for child in children:
            head = readline(child, register_timeout + 30).split()
            if head[:1] != ["ready"]:
                raise RuntimeError(f"chat_load: expected 'ready', got {' '.join(head)[:80]!r}")
            joined += int(head[1])
            register_seconds = max(register_seconds, float(head[2]))
            join_errors += int(head[3])
            for _ in range(plan.channels):
                _, ch, n = readline(child, 5).split()
                members[int(ch)] += int(n)
        if joined == 0:
            raise RuntimeError("no client registered and joined")
        on_joined()
        t0 = time.monotonic_ns() + 300_000_000
        for child in children:
            tell(child, f"go {t0}")
        time.sleep(max(0.0, (t0 - time.monotonic_ns()) / 1e9 + plan.seconds + plan.drain))
        for child in children:
            tell(child, "drain")
        sent: Counter[int] = Counter()
        lat: Counter[int] = Counter()
        late: Counter[int] = Counter()
        delivered = out_of_order = garbled = notices = disconnects = still = 0
        cpu = wall = 0.0
        for child in children:
            while True:
                line = readline(child, 60)
                kind, *rest = line.split()
                if kind == "end":
                    break
                if kind == "sent":
                    sent[int(rest[0])] += int(rest[1])
                elif kind == "lat":
                    lat[int(rest[0])] += int(rest[1])
                elif kind == "late":
                    late[int(rest[0])] += int(rest[1])
                elif kind == "counts":
                    delivered += int(rest[0])
                    out_of_order += int(rest[1])
                    garbled += int(rest[2])
                    notices += int(rest[3])
                    disconnects += int(rest[4])
                    still += int(rest[5])
                    cpu += float(rest[6])
                    wall = max(wall, float(rest[7]))
        on_end()
    finally:
        for child in children:
            tell(child, "release")
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait(5)
    return LoadResult(
        clients=plan.clients,
        joined=joined,
        register_seconds=register_seconds,
        join_errors=Counter({"not joined (refused, closed or too slow)": join_errors}) if join_errors else Counter(),
        sent=sum(sent.values()),
        expected=sum(n * max(0, members[ch] - 1) for ch, n in sent.items()),
        delivered=delivered,
        latencies_ns=array("q"),
        late_ns=array("q"),
        out_of_order=out_of_order,
        garbled=garbled,
        notices=Counter({"NOTICE or error numerics": notices}) if notices else Counter(),
        disconnects=Counter({"disconnected": disconnects}) if disconnects else Counter(),
        errors=Counter(),
        connected_at_end=still,
        client_cpu=cpu / wall if wall else 0.0,
        lat_hist=dict(lat),
        late_hist=dict(late),
        generator="c",
    )


def run_load(plan_args: dict, *, procs: int, register_timeout: float, on_joined, on_end) -> LoadResult:
    """Drive one server; `on_joined()` runs once every client is in, `on_end()` after the drain
    while the clients are still connected. Raises RuntimeError if a load process broke."""
    import multiprocessing as mp

    ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
    plan = Plan(**plan_args, register_deadline_ns=time.monotonic_ns() + int(register_timeout * 1e9))
    procs = max(1, min(procs, plan.clients))
    go, release = ctx.Event(), ctx.Event()
    t0_value = ctx.Value("q", 0)
    results = ctx.Queue()
    # Interleaved shares: each process gets clients of every channel, so no process has all the
    # receivers of a busy channel.
    shares = [range(i, plan.clients, procs) for i in range(procs)]
    workers = [
        ctx.Process(target=_worker, args=(plan, share, n, results, go, t0_value, release), daemon=True)
        for n, share in enumerate(shares)
    ]

    def collect(kind: str, timeout: float) -> dict[int, dict]:
        got: dict[int, dict] = {}
        deadline = time.monotonic() + timeout
        while len(got) < procs:
            try:
                what, pid, payload = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # queue.Empty
                raise RuntimeError(f"load processes did not report '{kind}' within {timeout:g}s") from None
            if what == "error":
                raise RuntimeError(f"load generator process failed: {payload}")
            got[pid] = payload
        return got

    try:
        for w in workers:
            w.start()
        ready = collect("ready", register_timeout + 30)
        joined = sum(r["joined"] for r in ready.values())
        members: Counter[int] = Counter()
        join_errors: Counter[str] = Counter()
        for r in ready.values():
            members.update({int(k): v for k, v in r["per_channel"].items()})
            join_errors.update(r["errors"])
        if joined == 0:
            raise RuntimeError(
                "no client registered and joined"
                + (f": {', '.join(f'{n} {k}' for k, n in join_errors.most_common(3))}" if join_errors else "")
            )
        on_joined()
        t0_value.value = time.monotonic_ns() + 300_000_000  # every process has time to see it
        go.set()
        done = collect("done", 0.3 + plan.seconds + 5 + plan.drain + 30)
        on_end()
    finally:
        if not go.is_set():
            go.set()  # t0 stays 0: the processes hang up and exit
        release.set()
        for w in workers:
            w.join(10)
            if w.is_alive():
                w.kill()
                w.join(5)

    sent: Counter[int] = Counter()
    latencies, late = array("q"), array("q")
    notices: Counter[str] = Counter()
    disconnects: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for d in done.values():
        sent.update({int(k): v for k, v in d["sent_per_channel"].items()})
        latencies.frombytes(d["latencies"])
        late.frombytes(d["late"])
        notices.update(d["notices"])
        disconnects.update(d["disconnects"])
        errors.update(d["errors"])
    wall = max(d["wall"] for d in done.values())
    return LoadResult(
        clients=plan.clients,
        joined=joined,
        register_seconds=max(r["seconds"] for r in ready.values()),
        join_errors=join_errors,
        sent=sum(sent.values()),
        expected=sum(n * max(0, members[ch] - 1) for ch, n in sent.items()),
        delivered=sum(d["deliveries"] for d in done.values()),
        latencies_ns=latencies,
        late_ns=late,
        out_of_order=sum(d["out_of_order"] for d in done.values()),
        garbled=sum(d["garbled"] for d in done.values()),
        notices=notices,
        disconnects=disconnects,
        errors=errors,
        connected_at_end=sum(d["connected_at_end"] for d in done.values()),
        client_cpu=sum(d["cpu"] for d in done.values()) / wall,
    )
