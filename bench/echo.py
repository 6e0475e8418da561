"""TCP echo throughput: socketkit against the usual Python servers, in one run.

    python bench/echo.py [--seconds 5] [--connections 50] [--size 1024] [--repeat 1] [--only NAME,...]

Each server runs as its own single-process subprocess on a free 127.0.0.1 port and is driven
by a closed-loop load generator: CONNECTIONS connections, each sending SIZE bytes and waiting
for all of them to come back before sending again. A message is one such round trip, so
msgs/s is round trips per second summed over all connections.

The load generator is bench/echo_client.c (built with cc -O2 into bench/.build/), a single
epoll loop that is much faster than any of the servers, so the server is what gets measured.
Without a C compiler a multi-process Python generator stands in and the output says so.

The peer servers live in this file too (`python bench/echo.py --serve NAME PORT`), each the
plain idiomatic echo for its library.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HOST,
    BenchError,
    ChildProcess,
    build_c,
    emit,
    free_port,
    install_signal_handlers,
    interleave,
    load_warning,
    median,
    note,
    python_version,
    ratio_line,
    result_line,
    run_main,
    run_options,
    server_process,
    split_cpus,
)

BENCH = "echo"
OURS = "socketkit"
WARMUP = 1.0
CLIENT_SOURCE = Path(__file__).resolve().parent / "echo_client.c"

# (peer, target for ours/peer): the two numbers the project commits to.
TARGETS = {"uvloop-protocol": 0.9, "asyncio-streams-uvloop": 1.7}


# ---------------------------------------------------------------- the servers


def serve_uvloop_protocol(port: int) -> None:
    import asyncio

    import uvloop

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, HOST, port)
        await server.serve_forever()

    uvloop.run(main())


def serve_coroutine_floor(port: int) -> None:
    """Not a server anyone would run: the least a coroutine-per-connection design can do, as a bound.

    data_received stores the bytes and resumes the connection's handler coroutine directly, inside its
    task's context (as socketkit's inline driver does), and the handler writes them back. No buffer, no
    flow control, no deadlines, no EOF or error handling, no async iterator: whatever a Stream does per
    message comes on top of this, so this rate is a ceiling for any Stream echo."""
    import asyncio
    import contextvars
    import functools
    from asyncio.tasks import _enter_task, _leave_task

    import uvloop

    class _Wait:
        __slots__ = ()

    _Wait.__await__ = staticmethod(functools.partial(iter, (None,)))  # type: ignore[attr-defined]
    wait = _Wait()

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.loop = asyncio.get_running_loop()
            self.task = self.loop.create_task(asyncio.sleep(3600))  # the task the handler "runs in"
            self.data = b""
            self.coro = self.handler(transport)
            self.coro.send(None)
            self.run = contextvars.copy_context().run

        async def handler(self, transport) -> None:
            while True:
                await wait
                transport.write(self.data)

        def data_received(self, data: bytes) -> None:
            self.data = data
            _enter_task(self.loop, self.task)
            try:
                self.run(self.coro.send, None)
            finally:
                _leave_task(self.loop, self.task)

        def connection_lost(self, exc: Exception | None) -> None:
            self.coro.close()
            self.task.cancel()

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, HOST, port)
        await server.serve_forever()

    uvloop.run(main())


def _streams_main(port: int):
    import asyncio

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, HOST, port)
        await server.serve_forever()

    return main()


def serve_asyncio_streams_uvloop(port: int) -> None:
    import uvloop

    uvloop.run(_streams_main(port))


def serve_asyncio_streams(port: int) -> None:
    import asyncio

    asyncio.run(_streams_main(port))


def serve_trio(port: int) -> None:
    import trio

    async def handle(stream: trio.SocketStream) -> None:
        try:
            while data := await stream.receive_some(65536):
                await stream.send_all(data)
        except trio.BrokenResourceError:
            pass

    trio.run(lambda: trio.serve_tcp(handle, port, host=HOST))


def serve_twisted(port: int) -> None:
    from twisted.internet import protocol, reactor

    class Echo(protocol.Protocol):
        def connectionMade(self) -> None:
            self.transport.setTcpNoDelay(True)  # asyncio, uvloop and trio all default to it

        def dataReceived(self, data: bytes) -> None:
            self.transport.write(data)

    reactor.listenTCP(port, protocol.Factory.forProtocol(Echo), interface=HOST)
    reactor.run()


PEERS: dict[str, tuple[tuple[str, ...], Callable[[int], None]]] = {
    "uvloop-protocol": (("uvloop",), serve_uvloop_protocol),
    "coroutine-floor": (("uvloop",), serve_coroutine_floor),
    "asyncio-streams-uvloop": (("uvloop",), serve_asyncio_streams_uvloop),
    "asyncio-streams": ((), serve_asyncio_streams),
    "trio": (("trio",), serve_trio),
    "twisted": (("twisted",), serve_twisted),
}
ALL = (OURS, *PEERS)


def server_argv(name: str, port: int) -> list[str]:
    if name == OURS:
        return [sys.executable, "-m", "socketkit", "listen", f"tcp://{HOST}:{port}", "--echo"]
    return [sys.executable, str(Path(__file__).resolve()), "--serve", name, str(port)]


def missing_packages(name: str) -> list[str]:
    needs = PEERS[name][0] if name in PEERS else ()
    return [pkg for pkg in needs if importlib.util.find_spec(pkg) is None]


# ---------------------------------------------------------------- load generators


class CClient:
    label = "C epoll client (bench/echo_client.c)"

    def __init__(self, binary: Path) -> None:
        self.binary = binary

    def run(
        self, port: int, conns: int, size: int, seconds: float, cpus: set[int] | None
    ) -> tuple[int, float, float]:
        argv = [str(self.binary), HOST, str(port), str(conns), str(size), str(WARMUP), str(seconds)]
        with ChildProcess(argv, name="echo_client", cpus=cpus) as child:
            code = child.wait(timeout=WARMUP + seconds + 30)
            out = child.output().strip()
        if code != 0:
            raise BenchError(out.splitlines()[-1] if out else f"echo_client exited with code {code}")
        fields = dict(part.split("=", 1) for part in out.splitlines()[-1].split())
        return int(fields["roundtrips"]), float(fields["seconds"]), float(fields["cpu"])


def _py_worker(port: int, conns: int, size: int, seconds: float, barrier, results) -> None:
    """One load process: its own event loop driving its share of the connections."""
    import asyncio

    try:
        import uvloop

        new_loop = uvloop.new_event_loop
    except ImportError:
        new_loop = asyncio.new_event_loop

    payload = bytes((i * 131 + 7) & 0xFF for i in range(size))
    count = [0]
    failure: list[str] = []

    class Pinger(asyncio.Protocol):
        closing = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.got = 0

        def data_received(self, data: bytes) -> None:
            self.got += len(data)
            if self.got >= size:
                if self.got > size:
                    failure.append("server sent bytes that were never sent to it")
                count[0] += 1
                self.got = 0
                self.transport.write(payload)

        def connection_lost(self, exc: Exception | None) -> None:
            if not self.closing and not failure:
                failure.append(f"server closed the connection ({exc or 'EOF'})")

    async def main() -> tuple[int, float]:
        loop = asyncio.get_running_loop()
        pingers = []
        for _ in range(conns):
            _, p = await loop.create_connection(Pinger, HOST, port)
            pingers.append(p)
        await loop.run_in_executor(None, barrier.wait, 30)  # all processes start together
        for p in pingers:
            p.transport.write(payload)
        await asyncio.sleep(WARMUP)
        count[0] = 0
        start = time.monotonic()
        await asyncio.sleep(seconds)
        n, elapsed = count[0], time.monotonic() - start
        for p in pingers:
            p.closing = True
            p.transport.close()
        return n, elapsed

    loop = new_loop()
    try:
        n, elapsed = loop.run_until_complete(main())
        results.put(("error", failure[0]) if failure else ("ok", n, elapsed))
    except Exception as exc:  # reported by the parent as the run's failure
        barrier.abort()
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        loop.close()


class PyClient:
    def __init__(self, procs: int, reason: str) -> None:
        self.procs = procs
        self.label = f"Python load generator, {procs} processes ({reason}); it may be the bottleneck"

    def run(
        self, port: int, conns: int, size: int, seconds: float, cpus: set[int] | None
    ) -> tuple[int, float, float]:
        import multiprocessing as mp

        ctx = mp.get_context("fork" if sys.platform == "linux" else "spawn")
        procs = min(self.procs, conns)
        barrier = ctx.Barrier(procs)
        results = ctx.Queue()
        shares = [conns // procs + (i < conns % procs) for i in range(procs)]
        workers = [
            ctx.Process(target=_py_worker, args=(port, share, size, seconds, barrier, results), daemon=True)
            for share in shares
        ]
        try:
            for w in workers:
                w.start()
                if cpus:
                    os.sched_setaffinity(w.pid, cpus)
            outcomes = [results.get(timeout=WARMUP + seconds + 60) for _ in workers]
        finally:
            for w in workers:
                w.join(2)
                if w.is_alive():
                    w.kill()
        errors = [o[1] for o in outcomes if o[0] == "error"]
        if errors:
            raise BenchError(errors[0])
        return sum(o[1] for o in outcomes), max(o[2] for o in outcomes), float("nan")


def pick_client(force: str, load_cpus: set[int] | None) -> CClient | PyClient:
    n_load = len(load_cpus) if load_cpus else os.cpu_count() or 2
    procs = max(2, n_load)
    if force == "python":
        return PyClient(procs, "asked for with --client python")
    try:
        return CClient(build_c(CLIENT_SOURCE))
    except BenchError as exc:
        if force == "c":
            raise
        return PyClient(procs, f"C client unavailable: {exc}")


# ---------------------------------------------------------------- the harness


def measure(name: str, client, args, cpus: tuple[set[int] | None, set[int] | None]) -> float:
    server_cpus, load_cpus = cpus
    port = free_port()
    with server_process(server_argv(name, port), port, name=name, cpus=server_cpus) as server:
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        roundtrips, elapsed, client_cpu = client.run(
            port, args.connections, args.size, args.seconds, load_cpus
        )
        cpu1, t1 = server.cpu_seconds(), time.monotonic()
        if server.poll() is not None:
            raise BenchError(server.exit_reason())
    rate = roundtrips / elapsed
    if args.verbose:
        server_load = f"{(cpu1 - cpu0) / (t1 - t0):.0%}" if cpu0 is not None and cpu1 is not None else "?"
        client_load = f"{client_cpu / elapsed:.0%}" if client_cpu == client_cpu else "?"
        note(
            f"{name}: {rate:,.0f} msgs/s, server cpu {server_load} (incl. warm-up), client cpu {client_load}"
        )
    return rate


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_options(p, ALL, seconds=5.0, repeat=1, seconds_help="measured seconds per server (after 1 s warm-up)")
    p.add_argument("--connections", type=int, default=50, help="concurrent connections")
    p.add_argument("--size", type=int, default=1024, help="bytes per message")
    p.add_argument("--client", choices=("auto", "c", "python"), default="auto", help="load generator")
    p.add_argument(
        "--pin",
        action="store_true",
        help="pin the server to one core and the load generator to the others (steadier on an "
        "idle machine, much worse on a busy one)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="per-run details: server and client CPU use")
    p.add_argument("--serve", nargs=2, metavar=("NAME", "PORT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        return args
    if args.seconds <= 0 or args.connections < 1 or args.size < 1 or args.repeat < 1:
        p.error("--seconds, --connections, --size and --repeat must be positive")
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or list(ALL)
    unknown = [n for n in args.names if n not in ALL]
    if unknown:
        p.error(f"unknown server {', '.join(unknown)}; choose from {', '.join(ALL)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        name, port = args.serve
        PEERS[name][1](int(port))
        return 0

    install_signal_handlers()
    cpus = split_cpus() if args.pin else (None, None)
    try:
        client = pick_client(args.client, cpus[1])
    except BenchError as exc:
        emit(f"{BENCH}: FAILED: {exc}")
        return 1
    note(
        f"{args.connections} connections x {args.size} B ping-pong, {WARMUP:g} s warm-up + {args.seconds:g} s, "
        f"median of {args.repeat}; {python_version()}"
    )
    note(f"load generator: {client.label}")
    note("cpu: " + (f"server on {sorted(cpus[0])}, load on {sorted(cpus[1])}" if cpus[0] else "not pinned"))
    busy = load_warning()
    if busy:
        note(busy)

    skipped: dict[str, str] = {}
    for name in args.names:
        if missing := missing_packages(name):
            skipped[name] = f"{', '.join(missing)} not installed"
    runnable = [n for n in args.names if n not in skipped]

    rates, failed = interleave(runnable, args.repeat, lambda name: measure(name, client, args, cpus))

    result: dict[str, float | None] = {}
    for name in args.names:
        if name in skipped:
            emit(f"{BENCH} {name}: SKIPPED: {skipped[name]}")
        elif name in failed:
            emit(f"{BENCH} {name}: FAILED: {failed[name]}")
            result[name] = None
        else:
            result[name] = median(rates[name])
            emit(result_line(BENCH, name, result[name], "msgs/s"))

    if OURS in result:
        peers = [n for n in TARGETS if n in result] + [n for n in result if n != OURS and n not in TARGETS]
        for peer in peers:
            emit(ratio_line(BENCH, peer, result[OURS], result[peer], TARGETS.get(peer)))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
