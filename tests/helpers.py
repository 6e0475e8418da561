"""Shared helpers for tests that run real servers and real clients over loopback and Unix sockets.

Import them as `from helpers import ...` (tests/ is on sys.path because tests/conftest.py lives there).
Every wait here is bounded: a bug shows as an AssertionError that says what never happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from socketkit.net.server import Server, start_server
from socketkit.net.stream import Stream

# Long enough for a loaded 2-core CI machine running two test workers and a browser, short enough that a
# hang fails fast.
WAIT = 10.0
REPO = Path(__file__).resolve().parent.parent


# -- servers ----------------------------------------------------------------------------------------
@contextlib.asynccontextmanager
async def running_server(
    handler: Callable[[Stream], Awaitable[None]],
    endpoints: str | list[str] = "tcp://127.0.0.1:0",
    *,
    drain: float = 0,
    **options: Any,
) -> AsyncIterator[Server]:
    """Start a server (port 0 by default), yield it, and stop it (no drain by default) afterwards."""
    server = await start_server(endpoints, handler, **options)
    try:
        yield server
    finally:
        await server.aclose(drain=drain)


def url(server: Server, index: int = 0, scheme: str | None = None) -> str:
    """The URL of one of the server's real listeners, optionally with another scheme (tls -> tcp)."""
    ep = server.endpoints[index]
    text = str(ep)
    if scheme is not None:
        text = scheme + text[len(ep.scheme):]
        text = text.split("?", 1)[0]
    return text


async def echo(stream: Stream) -> None:
    async for chunk in stream:
        await stream.send(chunk)


# -- waiting ----------------------------------------------------------------------------------------
# What a polled predicate raises when what it looks at is not there yet (an attribute of None, a key or an
# item not yet added, next() on nothing yet): the wait goes on, and reports the last one if it times out.
NOT_YET = (AttributeError, LookupError, StopIteration)


async def wait_for(predicate: Callable[[], Any], timeout: float = WAIT, *, interval: float = 0.005,
                   what: str | None = None) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; fail after `timeout`.

    A predicate that looks at something not there yet (None, a missing key, an empty `next()`) counts as
    not yet true: see NOT_YET."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    missing: BaseException | None = None
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except NOT_YET as e:
            value, missing = None, e
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or _describe(predicate)}"
                                 + (f" (last: {missing!r})" if missing is not None else "")) from missing
        await asyncio.sleep(interval)


async def wait_stable(read: Callable[[], Any], *, quiet: float = 0.3, timeout: float = WAIT,
                      interval: float = 0.01, what: str = "a value to stop changing") -> Any:
    """Wait until `read()` has not changed for `quiet` seconds (e.g. bytes sent stalls); bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last, since = read(), loop.time()
    while True:
        await asyncio.sleep(interval)
        now, value = loop.time(), read()
        if value != last:
            last, since = value, now
        elif now - since >= quiet:
            return value
        if now >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last {last!r})")


def wait_until(predicate: Callable[[], Any], timeout: float = WAIT, *, interval: float = 0.01,
               what: str | None = None) -> Any:
    """Blocking twin of wait_for, for tests that drive subprocesses."""
    deadline = time.monotonic() + timeout
    missing: BaseException | None = None
    while True:
        try:
            value = predicate()
        except NOT_YET as e:
            value, missing = None, e
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or _describe(predicate)}"
                                 + (f" (last: {missing!r})" if missing is not None else "")) from missing
        time.sleep(interval)


def _describe(predicate: Callable[[], Any]) -> str:
    try:
        return inspect.getsource(predicate).strip()
    except (OSError, TypeError):
        return repr(predicate)


async def elapsed(awaitable: Awaitable[Any]) -> tuple[float, Any]:
    """(seconds, result) of awaiting `awaitable`; an exception propagates."""
    start = time.monotonic()
    result = await awaitable
    return time.monotonic() - start, result


async def raises_within(exc_type: type[BaseException], awaitable: Awaitable[Any]) -> tuple[float, BaseException]:
    """Await `awaitable`, expecting `exc_type`; return (seconds taken, the exception)."""
    start = time.monotonic()
    with pytest.raises(exc_type) as info:
        await awaitable
    return time.monotonic() - start, info.value


# -- sockets ----------------------------------------------------------------------------------------
def ipv6_loopback_works() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback_works(), reason="no IPv6 loopback (::1) on this host")
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux-only socket feature")


@contextlib.contextmanager
def refused_port(host: str = "127.0.0.1"):
    """A port where nothing listens, held (bound, not listening) so no one else takes it meanwhile."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        yield s.getsockname()[1]


def shrink_buffers(stream: Stream, *, rcv: int | None = None, snd: int | None = None) -> None:
    """Make the kernel buffer less for a stream so backpressure shows after a few hundred KiB, not 40 MB."""
    sock = stream.extra("socket")
    if rcv is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcv)
    if snd is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, snd)


def other_tasks() -> set[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return {t for t in asyncio.all_tasks() if t is not current and not t.done()}


# -- data directory and subprocesses ----------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private SOCKETKIT_DATA, so the dev CA and certificates are made fresh for the test."""
    path = tmp_path / "data"
    monkeypatch.setenv("SOCKETKIT_DATA", str(path))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 20, input: bytes | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    """Run `python -m socketkit ARGS` to completion (bounded), capturing its output."""
    return subprocess.run([sys.executable, "-m", "socketkit", *args], input=input, capture_output=True,
                          timeout=timeout, env=env or cli_env(), cwd=REPO)


class Spawned:
    """A `python -m socketkit ...` that keeps running; read its stderr/stdout lines with a deadline."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, stdin: int | None = subprocess.DEVNULL):
        self.args = args
        self.proc = subprocess.Popen([sys.executable, "-m", "socketkit", *args], stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env or cli_env(),
                                     cwd=REPO, start_new_session=True)  # its own group: see kill()
        self._pending = {"stdout": b"", "stderr": b""}
        self.seen = {"stdout": b"", "stderr": b""}

    def read_until(self, pattern: str, *, stream: str = "stderr", timeout: float = WAIT) -> re.Match[str]:
        """Read `stream` until `pattern` (a regex) matches a line; return the match."""
        regex = re.compile(pattern)
        pipe = getattr(self.proc, stream)
        deadline = time.monotonic() + timeout
        while True:
            lines = self._pending[stream].split(b"\n")
            self._pending[stream] = lines.pop()
            for i, line in enumerate(lines):
                m = regex.search(line.decode(errors="replace"))
                if m:
                    # Keep the lines after the match for the next call.
                    self._pending[stream] = b"\n".join([*lines[i + 1:], self._pending[stream]])
                    return m
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.args}: no line matching {pattern!r} on {stream} within "
                                     f"{timeout}s; saw {self.seen[stream][-2000:]!r}")
            ready, _, _ = select.select([pipe], [], [], left)
            if ready:
                chunk = os.read(pipe.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"{self.args}: {stream} closed before {pattern!r}; saw "
                                         f"{self.seen[stream][-2000:]!r}, exit {self.proc.poll()}")
                self.seen[stream] += chunk
                self._pending[stream] += chunk

    def signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout: float = WAIT) -> tuple[int, bytes, bytes]:
        """Wait (bounded) for exit; return (code, all stdout, all stderr)."""
        if self.proc.stdin is not None and self.proc.stdin.closed:
            self.proc.stdin = None   # communicate() would try to flush it
        out, err = self.proc.communicate(timeout=timeout)
        self.seen["stdout"] += out
        self.seen["stderr"] += err
        return self.proc.returncode, self.seen["stdout"], self.seen["stderr"]

    def kill(self) -> None:
        """Kill it and whatever it started (`--workers`, `--reload`): the whole process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass  # the group is gone already
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=WAIT)

    def __enter__(self) -> Spawned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def listening_url(proc: Spawned, timeout: float = 10) -> str:
    """The first 'listening on URL' a spawned server prints on stderr."""
    return proc.read_until(r"listening on (\S+)", timeout=timeout).group(1)


# -- test hosts in network namespaces -----------------------------------------------------------------
@contextlib.contextmanager
def two_test_hosts(*, ipv4: bool = False):
    """Two network namespaces joined by a veth pair, made here and deleted afterwards: test hosts whose
    traffic never leaves them. Yields ((ns_a, if_a, addr_a), (ns_b, if_b, addr_b)); the addresses are
    10.77.N.1/.2 with `ipv4`, else None (IPv6 link-local only, duplicate address detection off). Skips the
    calling test, with the reason, where namespaces cannot be made (not root, no iproute2)."""
    import shutil
    import uuid

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("test hosts in network namespaces need root and iproute2's `ip`")

    def ip(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, timeout=15)

    tag = uuid.uuid4().hex[:6]
    net = 16 + int(tag[:2], 16) % 200
    a, b, va, vb = f"ska{tag}", f"skb{tag}", f"va{tag}", f"vb{tag}"
    made = ip("ip", "netns", "add", a)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        steps = [("ip", "netns", "add", b), ("ip", "link", "add", va, "type", "veth", "peer", "name", vb),
                 ("ip", "link", "set", va, "netns", a), ("ip", "link", "set", vb, "netns", b),
                 # no duplicate address detection: the link-local addresses are usable at once
                 ("ip", "netns", "exec", a, "sysctl", "-qw", f"net.ipv6.conf.{va}.accept_dad=0"),
                 ("ip", "netns", "exec", b, "sysctl", "-qw", f"net.ipv6.conf.{vb}.accept_dad=0")]
        if ipv4:
            steps += [("ip", "-n", a, "addr", "add", f"10.77.{net}.1/24", "dev", va),
                      ("ip", "-n", b, "addr", "add", f"10.77.{net}.2/24", "dev", vb)]
        steps += [("ip", "-n", a, "link", "set", va, "up"), ("ip", "-n", b, "link", "set", vb, "up"),
                  ("ip", "-n", a, "link", "set", "lo", "up"), ("ip", "-n", b, "link", "set", "lo", "up")]
        for step in steps:
            done = ip(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        yield ((a, va, f"10.77.{net}.1" if ipv4 else None), (b, vb, f"10.77.{net}.2" if ipv4 else None))
    finally:
        ip("ip", "netns", "del", a)
        ip("ip", "netns", "del", b)
