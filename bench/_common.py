"""Helpers shared by the benchmarks: ports, readiness, child processes, result lines.

Every benchmark talks to 127.0.0.1 only, bounds every wait by a deadline, and owns the
processes it starts: each child gets its own process group, so stopping it also stops
anything it forked, and the group is killed on the way out even after Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

HOST = "127.0.0.1"
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
BUILD_DIR = BENCH_DIR / ".build"


class BenchError(Exception):
    """A benchmark step failed; the message is meant to be printed as-is after 'FAILED: '."""


# ---------------------------------------------------------------- ports


def free_port(host: str = HOST) -> int:
    """A port the kernel just considered free. Racy by nature; callers bind it right away."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(
    port: int,
    host: str = HOST,
    *,
    timeout: float = 10.0,
    proc: ChildProcess | None = None,
) -> float:
    """Poll connect() until the port accepts; return the seconds it took.

    Raises BenchError if the deadline passes or if `proc` exits first (a server that crashed
    at start-up should be reported at once, not after the whole timeout).
    """
    start = time.monotonic()
    deadline = start + timeout
    delay = 0.005
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(proc.exit_reason())
        try:
            with socket.create_connection((host, port), timeout=max(0.05, deadline - time.monotonic())):
                return time.monotonic() - start
        except OSError as exc:
            last = exc
        if time.monotonic() + delay > deadline:
            raise BenchError(f"{host}:{port} did not accept connections within {timeout:g}s ({last})")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


# ---------------------------------------------------------------- child processes

_live: dict[int, ChildProcess] = {}


def _kill_all_live() -> None:
    for child in list(_live.values()):
        child.stop(grace=1.0)


atexit.register(_kill_all_live)


def install_signal_handlers() -> None:
    """Turn SIGTERM/SIGHUP into SystemExit so `finally` blocks (and process-group kills) run."""

    def _exit(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(ValueError, OSError):  # not the main thread, or no such signal
            signal.signal(sig, _exit)


class ChildProcess:
    """A subprocess in its own process group whose output goes to a temporary file.

    A file rather than a pipe: a chatty server can never block on a full pipe while we are
    busy measuring it, and its last lines are still there to explain a crash.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str = "",
        env: dict[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        cpus: set[int] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self._log = tempfile.TemporaryFile(prefix="socketkit-bench-")
        full_env = dict(os.environ)
        if env:
            full_env.update(env)

        def _in_child() -> None:  # runs between fork and exec
            if cpus:
                os.sched_setaffinity(0, cpus)

        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,  # own process group: killpg reaches everything it forks
            preexec_fn=_in_child if cpus else None,
        )
        self.pid = self.proc.pid
        _live[self.pid] = self

    def poll(self) -> int | None:
        return self.proc.poll()

    def output(self, limit: int = 4000) -> str:
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        size = self._log.tell()
        self._log.seek(max(0, size - limit))
        return self._log.read().decode(errors="replace")

    def exit_reason(self) -> str:
        code = self.proc.poll()
        tail = self.output().strip().splitlines()
        last = tail[-1].strip() if tail else "no output"
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exited with code {code}"
        return f"{self.name} {how}: {last}"

    def cpu_seconds(self) -> float | None:
        """User+system CPU time used so far (all threads), from /proc; None where unavailable."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            return None
        # fields[0] is the state (field 3); utime and stime are fields 14 and 15.
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise BenchError(f"{self.name} still running after {timeout:g}s") from None

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM the whole group, SIGKILL it after `grace` seconds. Safe to call twice."""
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(5)
        # The leader is gone, but something it forked may still hold the group.
        self._signal_group(signal.SIGKILL)
        _live.pop(self.pid, None)
        with contextlib.suppress(Exception):
            self._log.close()

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def __enter__(self) -> ChildProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def server_process(
    argv: Sequence[str],
    port: int,
    *,
    name: str = "",
    ready_timeout: float = 10.0,
    cpus: set[int] | None = None,
) -> Iterator[ChildProcess]:
    """Start a server, wait until `port` accepts, yield it, and always stop its group."""
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    child = ChildProcess(argv, name=name, env=env, cwd=REPO_ROOT, cpus=cpus)
    try:
        wait_for_port(port, timeout=ready_timeout, proc=child)
        yield child
    finally:
        child.stop()


# ---------------------------------------------------------------- CPU placement


def split_cpus() -> tuple[set[int] | None, set[int] | None]:
    """(server cpus, load generator cpus): one core for the server, the rest for the load.

    Pinning keeps the scheduler from putting both on one core for part of a run, which is
    the largest source of run-to-run noise on small machines. None, None when there is only one.
    """
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None, None
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


# ---------------------------------------------------------------- building C helpers


def find_cc() -> str | None:
    for candidate in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def build_c(source: Path, *, flags: Sequence[str] = ("-O2",)) -> Path:
    """Compile `source` into bench/.build/ unless an up-to-date binary is there already."""
    cc = find_cc()
    if cc is None:
        raise BenchError("no C compiler found (looked for $CC, cc, gcc, clang)")
    BUILD_DIR.mkdir(exist_ok=True)
    out = BUILD_DIR / source.stem
    if out.exists() and out.stat().st_mtime >= source.stat().st_mtime:
        return out
    # Build under a private name and rename: two runs building at once never see half a binary.
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    cmd = [cc, *flags, "-Wall", "-Wextra", "-o", str(tmp), str(source)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{' '.join(cmd)}: {exc}") from None
    if done.returncode != 0:
        tmp.unlink(missing_ok=True)
        first = (done.stderr or done.stdout).strip().splitlines()[:3]
        raise BenchError(f"{Path(cc).name} failed on {source.name}: {' | '.join(first)}")
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------- results


def run_options(p, names: Sequence[str], *, seconds: float, repeat: int, seconds_help: str,
                seconds_type: type = float) -> None:
    """The options every benchmark takes: --seconds, --repeat (interleaved runs, median), --only."""
    p.add_argument("--seconds", type=seconds_type, default=seconds, help=seconds_help)
    p.add_argument(
        "--repeat", type=int, default=repeat, help="runs per server, interleaved; the median is reported"
    )
    p.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(names)}")


def interleave(names: Sequence[str], repeat: int, measure, before_round=None) -> tuple[dict, dict[str, str]]:
    """Run `measure(name)` for every name, `repeat` rounds interleaved (a, b, a, b...: slow drifts of the
    machine hit everyone alike). A BenchError fails that name for the remaining rounds. Returns
    ({name: [results]}, {name: why it failed}). `before_round()` runs at the start of each round."""
    runs: dict = {n: [] for n in names}
    failed: dict[str, str] = {}
    for _ in range(repeat):
        if before_round is not None:
            before_round()
        for name in names:
            if name in failed:
                continue
            try:
                runs[name].append(measure(name))
            except BenchError as exc:
                failed[name] = str(exc)
    return runs, failed


def summarize(bench: str, names: Sequence[str], runs: dict, skipped: dict[str, str], failed: dict[str, str],
              unit: str, extra=None, describe=None) -> dict:
    """Print each server's result line (median rate, errors summed over its runs, SKIPPED or FAILED);
    returns {name: (rate, errors) or None when it failed}; skipped servers are left out. Each run must
    have `.rate` and `.errors` (a Counter); `extra(name)` may add text after the rate."""
    from collections import Counter

    describe = describe or describe_counts
    results: dict = {}
    for name in names:
        if name in skipped:
            emit(f"{bench} {name}: SKIPPED: {skipped[name]}")
            continue
        if name in failed:
            emit(f"{bench} {name}: FAILED: {failed[name]}")
            results[name] = None
            continue
        rate = median([r.rate for r in runs[name]])
        errors = sum((r.errors for r in runs[name]), Counter())
        line = result_line(bench, name, rate, unit) + (extra(name) if extra else "")
        if errors:
            line += f" (errors: {describe(errors)})"
        emit(line)
        results[name] = (rate, errors)
    return results


def run_main(main) -> None:
    """A benchmark's entry point: its exit status, and 130 with one line on Ctrl-C (no traceback)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def fmt(value: float) -> str:
    """Rates as whole numbers with thousands separators; they are noisy well above 1/s."""
    return f"{value:,.0f}"


def emit(line: str) -> None:
    print(line, flush=True)


def note(line: str) -> None:
    """Context that is not a result (setup, warnings): '#'-prefixed so parsers can skip it."""
    print(f"# {line}", flush=True)


def result_line(bench: str, name: str, value: float, unit: str) -> str:
    return f"{bench} {name}: {fmt(value)} {unit}"


def ratio_line(
    bench: str, name: str, ours: float | None, peer: float | None, target: float | None = None
) -> str:
    """The project format: `name: ours X, peer Y, ratio X/Y`, plus the target when there is one."""
    ours_s = fmt(ours) if ours is not None else "FAILED"
    peer_s = fmt(peer) if peer is not None else "FAILED"
    if ours is not None and peer:
        ratio = ours / peer
        ratio_s = f"{ratio:.2f}"
    else:
        ratio, ratio_s = None, "n/a"
    line = f"{bench} {name}: ours {ours_s}, peer {peer_s}, ratio {ratio_s}"
    if target is not None:
        verdict = "n/a" if ratio is None else ("met" if ratio >= target else "MISSED")
        line += f" (target >= {target:g}: {verdict})"
    return line


def python_version() -> str:
    return f"{sys.implementation.name} {sys.version.split()[0]}"


# ---------------------------------------------------------------- added for bench/web.py


def wait_for_http(
    port: int,
    path: str = "/",
    host: str = HOST,
    *,
    timeout: float = 10.0,
    proc: ChildProcess | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """Poll GET `path` until the server answers; return (status, headers, body).

    A port that accepts is not yet a server that answers (a master process binds, then forks
    the worker that will accept), so readiness for HTTP is the first complete response. Any
    response counts, whatever its status: judging it is the caller's job. Bounded by `timeout`;
    raises BenchError if it passes or if `proc` exits first.
    """
    import http.client

    start = time.monotonic()
    deadline = start + timeout
    delay = 0.005
    while True:
        if proc is not None and proc.poll() is not None:
            raise BenchError(proc.exit_reason())
        conn = http.client.HTTPConnection(host, port, timeout=max(0.05, deadline - time.monotonic()))
        try:
            conn.request("GET", path, headers={"Host": f"{host}:{port}"})
            resp = conn.getresponse()
        except (OSError, http.client.HTTPException) as exc:  # not answering yet: try again
            last = exc
        else:
            # It answered: from here a failure is the server's, reported at once, not retried.
            try:
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, http.client.IncompleteRead):
                    what = f"{len(exc.partial)} body bytes, then the connection closed ({exc.expected} more expected)"
                else:
                    what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                raise BenchError(
                    f"GET {path} answered {resp.status} but the body broke off: {what}"
                ) from None
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
        finally:
            conn.close()
        if time.monotonic() + delay > deadline:
            what = f"{type(last).__name__}: {last}" if str(last) else type(last).__name__
            raise BenchError(f"GET http://{host}:{port}{path} got no response within {timeout:g}s ({what})")
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def target_verdict(ratio: float | None, target: float, *, label: str = "target", why_na: str = "") -> str:
    """' (LABEL >= T: met|MISSED|n/a)', as ratio_line() writes it, for lines that build their own.

    `why_na` voids the verdict even when there is a ratio (e.g. the run had errors: a server
    that answers with errors must not meet a target by answering them fast).
    """
    if why_na:
        verdict = f"n/a, {why_na}"
    elif ratio is None:
        verdict = "n/a"
    else:
        verdict = "met" if ratio >= target else "MISSED"
    return f" ({label} >= {target:g}: {verdict})"


def load_warning() -> str:
    """A warning when something else already keeps the cores busy, '' when the machine is quiet."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if load < 0.5:
        return ""
    return f"warning: load average {load:.2f} on {cores} cores before starting; other work competes with the servers"


@contextlib.contextmanager
def http_server(
    argv: Sequence[str],
    port: int,
    path: str = "/",
    *,
    name: str = "",
    env: dict[str, str] | None = None,
    ready_timeout: float = 10.0,
    cpus: set[int] | None = None,
) -> Iterator[tuple[ChildProcess, tuple[int, dict[str, str], bytes]]]:
    """server_process() for HTTP servers: extra environment, and ready means GET `path` answered.

    Yields (child, (status, headers, body)) of that first answer; the group is always stopped.
    """
    paths = [str(REPO_ROOT), os.environ.get("PYTHONPATH"), (env or {}).get("PYTHONPATH")]
    full_env = {**(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, paths))}
    child = ChildProcess(argv, name=name, env=full_env, cwd=REPO_ROOT, cpus=cpus)
    try:
        deadline = time.monotonic() + ready_timeout
        wait_for_port(port, timeout=ready_timeout, proc=child)
        reply = wait_for_http(port, path, timeout=max(0.1, deadline - time.monotonic()), proc=child)
        yield child, reply
    finally:
        child.stop()


def group_cpu_seconds(pgid: int) -> float | None:
    """User+system CPU time used so far by the live processes of group `pgid`, from /proc.

    For servers whose work happens in forked workers (a master and its worker), where the
    leader's own counters stay near zero. None where /proc is unavailable.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total = 0
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        # fields[0] is the state (field 3), fields[2] the process group (field 5).
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- added for bench/mail.py


def filesystem_of(path: str | os.PathLike[str]) -> str:
    """'ext2/ext3 on /tmp (block size 4096)': what `stat -f` says about the file system holding `path`.

    Storage benchmarks depend on it more than on anything else (fsync on tmpfs costs nothing).
    """
    try:
        done = subprocess.run(
            ["stat", "-f", "-c", "%T (block size %S)", str(path)], capture_output=True, text=True, timeout=10
        )
        if done.returncode == 0 and done.stdout.strip():
            return f"{done.stdout.strip()} at {path}"
    except (OSError, subprocess.TimeoutExpired):
        pass
    return f"unknown file system at {path}"


def describe_counts(counts: dict[str, int]) -> str:
    """'12 RCPT 451, 3 connection closed': a Counter of error kinds, the most frequent first."""
    return ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


# ---------------------------------------------------------------- added for bench/chat.py


def group_rss_kib(pgid: int) -> int | None:
    """Resident memory (VmRSS, KiB) summed over the live processes of group `pgid`, from /proc.

    A server's memory is its whole process group's (a master and its workers, helper children).
    Pages shared between those processes count once per process, as `ps` shows them. None where
    /proc is unavailable or the group has no process left.
    """
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    total, found = 0, False
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            if int(fields[2]) != pgid:  # fields[2] is the process group (field 5)
                continue
            status = (entry / "status").read_text()
        except OSError:  # gone meanwhile
            continue
        found = True
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])  # "VmRSS:   1234 kB"
                break
    return total if found else None


def version_of(dist: str) -> str:
    """'name version' of an installed distribution, for the '#' context lines."""
    import importlib.metadata

    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist
