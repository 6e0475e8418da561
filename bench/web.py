"""HTTP benchmark: socketkit's web server against uvicorn, granian, hypercorn and nginx, driven by wrk and h2load.

Four cases, each server a single worker process on a free 127.0.0.1 port, one after another in
the same run (interleaved rounds with --repeat, median reported):

- `web`: the plaintext ASGI app in bench/apps.py (200, `Hello, world!`, content-type and
  content-length set), served by socketkit, uvicorn (uvloop + httptools), granian and hypercorn.
- `web-static-4k`: a 4 KiB file, and `web-static`: a 1 MiB file, served by socketkit --static,
  nginx (sendfile), granian's own static file route and uvicorn with starlette's StaticFiles.
- `web-h2`: the plaintext app over HTTP/2 (h2c, prior knowledge), driven by h2load with STREAMS
  concurrent streams over H2_CONNECTIONS connections, served by socketkit, granian --http 2 and
  hypercorn.

wrk keeps CONNECTIONS keep-alive connections busy for SECONDS after a 1 s warm-up run. Before
the load each server must answer GET once with the right status and body, and a run in which
the load generator saw socket errors or error statuses says so next to its number: a broken
server never looks fast, and it never meets a target.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    HOST,
    BenchError,
    ChildProcess,
    emit,
    fmt,
    free_port,
    group_cpu_seconds,
    http_server,
    install_signal_handlers,
    interleave,
    load_warning,
    median,
    note,
    python_version,
    ratio_line,
    run_main,
    run_options,
    server_process,
    split_cpus,
    summarize,
    target_verdict,
    version_of,
)

OURS = "socketkit"
WARMUP = 1  # seconds; wrk takes whole seconds only
READY_TIMEOUT = 20.0
MIB = 1 << 20
STATIC_NAME = "1mib.bin"
SMALL_NAME = "4kib.bin"
SMALL_SIZE = 4096
APP = "bench.apps:plaintext"
HELLO = b"Hello, world!"
GRANIAN_STATIC = "/static"  # granian's --static-path-route

# {case: {peer: (target for ours/peer, label)}}: the numbers the project commits to.
TARGETS = {
    "web": {"uvicorn": (1.3, "target"), "granian": (1.0, "stretch goal")},
    "web-static-4k": {"nginx": (0.5, "target"), "granian": (2.0, "target")},
    "web-static": {"nginx": (0.9, "target")},
    "web-h2": {"granian": (1.0, "target")},
}


# ---------------------------------------------------------------- the servers


@dataclass
class Context:
    """What the servers of one run share: a scratch directory and the static file's bytes."""

    tmp: Path
    static_dir: Path
    bodies: dict[str, bytes]  # file name -> its bytes


@dataclass
class Server:
    name: str
    argv: Callable[[int, Context], list[str]]
    needs: tuple[str, ...] = ()  # importable modules
    needs_cmd: str = ""  # an executable on PATH
    env: Callable[[Context], dict[str, str]] = field(default=lambda ctx: {})
    prefix: str = ""  # where this server serves the case's path (granian's static route)

    def missing(self) -> str:
        if self.needs_cmd and shutil.which(self.needs_cmd) is None:
            return f"{self.needs_cmd} not installed"
        gone = [m for m in self.needs if importlib.util.find_spec(m) is None]
        return f"{', '.join(gone)} not installed" if gone else ""


def _py(module: str, *args: str) -> list[str]:
    # The benchmark's own interpreter for every Python server, so they all run on the same Python.
    return [sys.executable, "-m", module, *args]


def _hypercorn_worker() -> str:
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def _uvicorn_argv(target: str, port: int, *extra: str) -> list[str]:
    flags = f"--port {port} --host {HOST} --loop uvloop --http httptools --no-access-log --log-level warning"
    return _py("uvicorn", target, *flags.split(), *extra)


def _granian_argv(port: int, ctx: Context, *extra: str) -> list[str]:
    # --workers 1 and granian's default --runtime-threads; its access log is off by default, said anyway.
    flags = f"--host {HOST} --port {port} --workers 1 --no-access-log --log-level warning"
    return _py("granian", "--interface", "asgi", APP, *flags.split(), *extra)


def _granian_static_argv(port: int, ctx: Context) -> list[str]:
    # granian serves the directory itself (Rust, no Python per request) under /static; no expiry
    # headers, so its answers carry what the others' do.
    return _granian_argv(port, ctx, "--static-path-mount", str(ctx.static_dir), "--static-path-route",
                         GRANIAN_STATIC, "--static-path-expires", "0")


def _hypercorn_argv(port: int, ctx: Context) -> list[str]:
    return _py("hypercorn", APP, "--bind", f"{HOST}:{port}", "--workers", "1", "-k", _hypercorn_worker())


NGINX_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log {tmp}/nginx-error.log warn;
pid {tmp}/nginx-{port}.pid;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    # nginx closes a connection after 1000 requests by default; the Python servers have no such cap.
    keepalive_requests 1000000;
    default_type application/octet-stream;
    client_body_temp_path {tmp}/nginx-client-body;
    proxy_temp_path {tmp}/nginx-proxy;
    fastcgi_temp_path {tmp}/nginx-fastcgi;
    uwsgi_temp_path {tmp}/nginx-uwsgi;
    scgi_temp_path {tmp}/nginx-scgi;
    server {{
        listen {host}:{port};
        root {root};
    }}
}}
"""


def _nginx_argv(port: int, ctx: Context) -> list[str]:
    conf = ctx.tmp / f"nginx-{port}.conf"
    conf.write_text(NGINX_CONF.format(tmp=ctx.tmp, port=port, host=HOST, root=ctx.static_dir))
    # -e: the compiled-in error log (/var/log/nginx) may not be writable; -p keeps relative paths in tmp.
    nginx = shutil.which("nginx") or "nginx"
    return [nginx, "-p", str(ctx.tmp), "-e", str(ctx.tmp / "nginx-error.log"), "-c", str(conf)]


PLAINTEXT = [
    Server(OURS, lambda port, ctx: _py("socketkit", "web", APP, "--listen", f"tcp://{HOST}:{port}")),
    Server("uvicorn", lambda port, ctx: _uvicorn_argv(APP, port), needs=("uvicorn", "uvloop", "httptools")),
    Server("granian", _granian_argv, needs=("granian",)),
    Server("hypercorn", _hypercorn_argv, needs=("hypercorn",)),
]

# HTTP/2 without TLS (h2c, prior knowledge): what h2load speaks to an http:// URL. socketkit's plain
# listeners take both; granian is told --http 2; hypercorn switches on the preface by itself.
H2 = [
    Server(OURS, lambda port, ctx: _py("socketkit", "web", APP, "--listen", f"tcp://{HOST}:{port}")),
    Server("granian", lambda port, ctx: _granian_argv(port, ctx, "--http", "2"), needs=("granian",)),
    Server("hypercorn", _hypercorn_argv, needs=("hypercorn", "h2")),
]

STATIC = [
    Server(
        OURS,
        lambda port, ctx: _py(
            "socketkit", "web", "--static", str(ctx.static_dir), "--listen", f"tcp://{HOST}:{port}"
        ),
    ),
    Server("nginx", _nginx_argv, needs_cmd="nginx"),
    Server("granian", _granian_static_argv, needs=("granian",), prefix=GRANIAN_STATIC),
    Server(
        "uvicorn-starlette",
        lambda port, ctx: _uvicorn_argv("bench.apps:static_files", port, "--factory", "--lifespan", "off"),
        needs=("uvicorn", "uvloop", "httptools", "starlette"),
        env=lambda ctx: {"SOCKETKIT_BENCH_STATIC_DIR": str(ctx.static_dir)},
    ),
]


@dataclass
class Case:
    bench: str  # the result lines' prefix
    path: str
    servers: list[Server]
    ratio_peers: tuple[str, ...]  # peers listed first in the ratio lines
    throughput: bool  # also print MiB/s
    file: str = ""  # the static file whose bytes are the expected body ("" : the plaintext app's)
    h2: bool = False  # HTTP/2 (h2c) with h2load instead of HTTP/1.1 with wrk

    def check(self, status: int, body: bytes, ctx: Context) -> None:
        want = ctx.bodies[self.file] if self.file else HELLO
        if status != 200:
            raise BenchError(f"GET {self.path} answered {status}, not 200 (body {body[:80]!r})")
        if body != want:
            shown = body[:40] if len(body) < 100 else f"{len(body)} bytes"
            raise BenchError(
                f"GET {self.path} answered 200 with the wrong body ({shown!r}, want {len(want)} bytes)"
            )


CASES = {
    "plaintext": Case("web", "/", PLAINTEXT, ("uvicorn", "granian"), throughput=False),
    "static-4k": Case("web-static-4k", f"/{SMALL_NAME}", STATIC, ("nginx", "granian"), throughput=True,
                      file=SMALL_NAME),
    "static": Case("web-static", f"/{STATIC_NAME}", STATIC, ("nginx",), throughput=True, file=STATIC_NAME),
    "h2": Case("web-h2", "/", H2, ("granian", "hypercorn"), throughput=False, h2=True),
}


# ---------------------------------------------------------------- wrk


@dataclass
class Run:
    rate: float  # requests/s
    mibps: float  # MiB/s read by wrk, headers included
    errors: Counter[str]


_UNITS = {"B": 1, "KB": 1 << 10, "MB": 1 << 20, "GB": 1 << 30, "TB": 1 << 40}  # wrk prints binary units


def parse_wrk(out: str) -> Run:
    """The numbers in wrk's default report (no Lua script needed)."""
    m = re.search(r"^Requests/sec:\s*([\d.]+)", out, re.M)
    if not m:
        tail = out.strip().splitlines()
        raise BenchError(f"no 'Requests/sec:' in wrk's output ({tail[-1] if tail else 'no output'})")
    rate = float(m.group(1))
    t = re.search(r"^Transfer/sec:\s*([\d.]+)([KMGT]?B)", out, re.M)
    mibps = float(t.group(1)) * _UNITS[t.group(2)] / MIB if t else float("nan")
    errors: Counter[str] = Counter()
    if s := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        for kind, n in zip(("connect", "read", "write", "timeout"), s.groups(), strict=True):
            errors[kind] += int(n)
    if b := re.search(r"Non-2xx or 3xx responses: (\d+)", out):
        errors["non-2xx"] += int(b.group(1))
    done = re.search(r"^\s*(\d+) requests in", out, re.M)
    if done and int(done.group(1)) == 0:
        raise BenchError("wrk completed no requests" + (f" ({describe_errors(errors)})" if errors else ""))
    return Run(rate, mibps, +errors)


def describe_errors(errors: Counter[str]) -> str:
    return ", ".join(f"{n} {kind}" for kind, n in sorted(errors.items(), key=lambda kv: -kv[1]))


def wrk(url: str, seconds: int, args: argparse.Namespace) -> Run:
    argv = ["wrk", "-t", str(args.threads), "-c", str(args.connections), "-d", f"{seconds}s", url]
    with ChildProcess(argv, name="wrk", cpus=split_cpus()[1] if args.pin else None) as child:
        code = child.wait(timeout=seconds + 30)
        out = child.output(limit=20000)
    if code != 0:
        tail = out.strip().splitlines()
        raise BenchError(f"wrk exited with code {code}: {tail[-1] if tail else 'no output'}")
    return parse_wrk(out)


def wrk_version() -> str:
    try:
        done = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "wrk"
    first = (done.stdout or done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0].strip() if first else "wrk"


# ---------------------------------------------------------------- the harness


def parse_h2load(out: str) -> Run:
    """The numbers in h2load's report: `finished in 10.00s, 41234.50 req/s, 1.53MB/s` and the counts."""
    m = re.search(r"^finished in [\d.]+m?s, ([\d.]+) req/s, ([\d.]+)([KMGT]?B)/s", out, re.M)
    if not m:
        tail = out.strip().splitlines()
        raise BenchError(f"no 'req/s' in h2load's output ({tail[-1] if tail else 'no output'})")
    rate = float(m.group(1))
    mibps = float(m.group(2)) * _UNITS[m.group(3)] / MIB
    errors: Counter[str] = Counter()
    if r := re.search(r"^requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out, re.M):
        done, ok, failed, errored, timeout = map(int, r.groups())
        errors["failed"] += failed
        errors["errored"] += errored
        errors["timeout"] += timeout
        if done == 0:
            raise BenchError("h2load completed no requests")
    if c := re.search(r"^status codes: \d+ 2xx, \d+ 3xx, (\d+) 4xx, (\d+) 5xx", out, re.M):
        errors["non-2xx"] += int(c.group(1)) + int(c.group(2))
    return Run(rate, mibps, +errors)


def h2load(url: str, seconds: int, args: argparse.Namespace) -> Run:
    # -m: streams in flight per connection, so STREAMS over H2_CONNECTIONS in all.
    per = max(1, args.streams // args.h2_connections)
    threads = min(args.threads, args.h2_connections)
    argv = ["h2load", "-c", str(args.h2_connections), "-m", str(per), "-t", str(threads),
            "-D", str(seconds), "--warm-up-time", str(WARMUP), url]
    with ChildProcess(argv, name="h2load", cpus=split_cpus()[1] if args.pin else None) as child:
        code = child.wait(timeout=seconds + WARMUP + 30)
        out = child.output(limit=20000)
    if code != 0:
        tail = out.strip().splitlines()
        raise BenchError(f"h2load exited with code {code}: {tail[-1] if tail else 'no output'}")
    return parse_h2load(out)


def h2_get(port: int, path: str, child: ChildProcess) -> tuple[int, bytes]:
    """One GET over HTTP/2 with prior knowledge (curl), polled until the server answers: (status, body)."""
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        if child.poll() is not None:
            raise BenchError(child.exit_reason())
        done = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--http2-prior-knowledge", "--max-time", "5", "-o", "-",
             "-w", "\n%{http_code} %{http_version}", f"http://{HOST}:{port}{path}"],
            capture_output=True, timeout=10)
        if done.returncode == 0:
            body, _, tail = done.stdout.rpartition(b"\n")
            status, version = tail.decode().split()
            if version != "2":
                raise BenchError(f"GET {path} with HTTP/2 prior knowledge was answered in HTTP/{version}")
            return int(status), body
        if time.monotonic() > deadline:
            raise BenchError(f"no HTTP/2 answer within {READY_TIMEOUT:g}s: {done.stderr.decode().strip()}")
        time.sleep(0.05)


def measure(case: Case, server: Server, ctx: Context, args: argparse.Namespace) -> Run:
    port = free_port()
    argv = server.argv(port, ctx)
    server_cpus = split_cpus()[0] if args.pin else None
    path = server.prefix + case.path
    if case.h2:
        opened = server_process(argv, port, name=server.name, ready_timeout=READY_TIMEOUT, cpus=server_cpus)
    else:
        opened = http_server(argv, port, path, name=server.name, env=server.env(ctx),
                             ready_timeout=READY_TIMEOUT, cpus=server_cpus)
    with opened as started:
        if case.h2:
            child = started
            status, body = h2_get(port, path, child)
        else:
            child, (status, _headers, body) = started
        case.check(status, body, ctx)
        url = f"http://{HOST}:{port}{path}"
        load = h2load if case.h2 else wrk
        if not case.h2:
            wrk(url, WARMUP, args)  # (h2load warms up by itself: --warm-up-time)
        cpu0, t0 = group_cpu_seconds(child.pid), time.monotonic()
        run = load(url, args.seconds, args)
        cpu1, t1 = group_cpu_seconds(child.pid), time.monotonic()
        if child.poll() is not None:
            raise BenchError(child.exit_reason())
    if args.verbose:
        cpu = f"{(cpu1 - cpu0) / (t1 - t0):.0%}" if cpu0 is not None and cpu1 is not None else "?"
        extra = f", {describe_errors(run.errors)}" if run.errors else ""
        note(f"{case.bench} {server.name}: {fmt(run.rate)} req/s, server cpu {cpu} (process group){extra}")
    return run


def run_case(case: Case, names: list[str], ctx: Context, args: argparse.Namespace) -> bool:
    """Measure and print one case; True when every server that ran did so cleanly."""
    servers = [s for s in case.servers if s.name in names]
    if not servers:
        return True
    skipped = {s.name: reason for s in servers if (reason := s.missing())}
    runnable = [s for s in servers if s.name not in skipped]
    by_name = {s.name: s for s in runnable}
    runs, failed = interleave(list(by_name), args.repeat, lambda name: measure(case, by_name[name], ctx, args))

    def throughput(name: str) -> str:
        return f", {fmt(median([r.mibps for r in runs[name]]))} MiB/s" if case.throughput else ""

    results = summarize(case.bench, [s.name for s in servers], runs, skipped, failed, "req/s",
                        extra=throughput, describe=describe_errors)

    if OURS in results:
        ours = results[OURS]
        peers = [p for p in case.ratio_peers if p in results]
        peers += [p for p in results if p != OURS and p not in peers]
        for peer in peers:
            emit(ratio_text(case, peer, ours, results[peer]))
    return not failed and all(r is not None and not r[1] for r in results.values())


def ratio_text(case: Case, peer: str, ours, theirs) -> str:
    ours_rate = ours[0] if ours else None
    peer_rate = theirs[0] if theirs else None
    line = ratio_line(case.bench, peer, ours_rate, peer_rate)
    dirty = [f"{who} {describe_errors(r[1])}" for who, r in (("ours", ours), ("peer", theirs)) if r and r[1]]
    target = TARGETS.get(case.bench, {}).get(peer)
    if target:
        ratio = ours_rate / peer_rate if ours_rate is not None and peer_rate else None
        line += target_verdict(ratio, target[0], label=target[1], why_na="errors" if dirty else "")
    if dirty:
        line += f" (errors: {'; '.join(dirty)})"
    return line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    all_names = list(dict.fromkeys(s.name for c in CASES.values() for s in c.servers))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    run_options(p, all_names, seconds=10, repeat=3, seconds_type=int,
                seconds_help="measured seconds per run (after a 1 s warm-up)")
    p.add_argument("--connections", type=int, default=64, help="wrk's concurrent connections")
    p.add_argument("--threads", type=int, default=2, help="wrk's threads")
    p.add_argument("--pin", action="store_true",
                   help="server on the first CPU, wrk on the others (use with --threads 1 on 2 cores): "
                        "the server is measured without the load generator competing for its core")
    p.add_argument("--case", default="all",
                   help=f"comma-separated cases: {', '.join(CASES)} (default: all)")
    p.add_argument("--streams", type=int, default=100, help="h2load: concurrent streams in all (default 100)")
    p.add_argument("--h2-connections", type=int, default=10, help="h2load: connections (default 10)")
    p.add_argument("-v", "--verbose", action="store_true", help="per-run details: server CPU use")
    args = p.parse_args(argv)
    if args.seconds < 1 or args.connections < 1 or args.threads < 1 or args.repeat < 1:
        p.error("--seconds, --connections, --threads and --repeat must be positive (wrk takes whole seconds)")
    if args.threads > args.connections:
        p.error("wrk needs at least one connection per thread: --threads <= --connections")
    args.cases = list(CASES) if args.case == "all" else [c.strip() for c in args.case.split(",") if c.strip()]
    if unknown := [c for c in args.cases if c not in CASES]:
        p.error(f"unknown case {', '.join(unknown)}; choose from {', '.join(CASES)}")
    if args.streams < 1 or args.h2_connections < 1:
        p.error("--streams and --h2-connections must be positive")
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] or all_names
    if unknown := [n for n in args.names if n not in all_names]:
        p.error(f"unknown server {', '.join(unknown)}; choose from {', '.join(all_names)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    install_signal_handlers()
    if shutil.which("wrk") is None:
        emit("web: SKIPPED: wrk not installed (apt-get install wrk)")
        return 0
    cases = [CASES[key] for key in args.cases]
    if any(c.h2 for c in cases) and shutil.which("h2load") is None:
        emit("web-h2: SKIPPED: h2load not installed (apt-get install nghttp2-client)")
        cases = [c for c in cases if not c.h2]
    note(
        f"{wrk_version()}: {args.connections} connections, {args.threads} threads, keep-alive; "
        f"{WARMUP} s warm-up + {args.seconds} s per run, median of {args.repeat}; {python_version()}"
    )
    note(
        "one worker process per server: uvicorn --loop uvloop --http httptools, "
        f"hypercorn -k {_hypercorn_worker()}, nginx worker_processes 1 (master_process off); access logs off"
    )
    if any(c.h2 for c in cases):
        note(f"h2load: {args.streams} streams over {args.h2_connections} connections "
             f"(-c {args.h2_connections} -m {max(1, args.streams // args.h2_connections)}), h2c prior knowledge")
    if "granian" in args.names and "plaintext" in args.cases:
        note(
            f"{version_of('granian')}: --workers 1, --runtime-threads left at its default (1 in granian 2.x; "
            "one Rust I/O thread beside the Python thread), --runtime-mode auto"
        )
    note("peers: " + ", ".join(version_of(d) for d in ("uvicorn", "granian", "hypercorn", "starlette")))
    if busy := load_warning():
        note(busy)

    clean = True
    with tempfile.TemporaryDirectory(prefix="socketkit-bench-web-") as tmp:
        static_dir = Path(tmp) / "static"
        static_dir.mkdir()
        rng = random.Random(1)  # incompressible, and the same bytes every run
        bodies = {STATIC_NAME: rng.randbytes(MIB), SMALL_NAME: rng.randbytes(SMALL_SIZE)}
        for name, body in bodies.items():
            (static_dir / name).write_bytes(body)
        ctx = Context(Path(tmp), static_dir, bodies)
        for case in cases:
            clean &= run_case(case, args.names, ctx, args)
    return 0 if clean else 1


if __name__ == "__main__":
    run_main(main)
