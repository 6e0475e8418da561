"""Real magic-wormhole programs for the interop tests: the reference mailbox server and transit relay
(twistd plugins from PyPI's magic-wormhole-mailbox-server and -transit-relay) on loopback port 0, and the
`wormhole` CLI. Everything listens on 127.0.0.1 only; the wormhole CLI runs with --no-listen so the only
direct address it can be given or use is our loopback listener (its own hints would name the machine's
other interfaces)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = BIN / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install magic-wormhole magic-wormhole-mailbox-server "
                    "magic-wormhole-transit-relay: the test extras)")
    return found


@contextmanager
def twistd(plugin: str, *args: str, cwd: Path) -> Iterator[int]:
    """Run a twistd plugin on 127.0.0.1 port 0 and yield the port it logged. Its log goes to a file (a pipe
    nobody reads would fill up and stall it)."""
    log = cwd / f"{plugin}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([tool("twistd"), "-n", "--pidfile=", plugin, "--port", "tcp:0:interface=127.0.0.1",
                                 *args], cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline and proc.poll() is None:
            m = re.search(rb"starting on (\d+)", log.read_bytes())
            if m:
                port = int(m.group(1))
            else:
                time.sleep(0.02)
        assert port is not None, f"{plugin} did not start:\n{log.read_text(errors='replace')[-3000:]}"
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextmanager
def reference_servers(tmp: Path) -> Iterator[tuple[str, str]]:
    """(mailbox URL, transit relay URL) of the reference implementations, on loopback."""
    with twistd("wormhole-mailbox", f"--channel-db={tmp / 'channel.db'}", f"--usage-db={tmp / 'usage.db'}",
                cwd=tmp) as mport, twistd("transitrelay", cwd=tmp) as rport:
        yield f"ws://127.0.0.1:{mport}/v1", f"tcp://127.0.0.1:{rport}"


def wormhole(mailbox: str, relay: str, *args: str, cwd: Path, stdin: str | None = None) -> subprocess.Popen[str]:
    """Start the real `wormhole` CLI (never listening: see the module docstring)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    helper = "tcp:" + relay.removeprefix("tcp://")
    return subprocess.Popen([tool("wormhole"), "--relay-url", mailbox, "--transit-helper", helper, *args],
                            cwd=cwd, env=env, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def socketkit(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "socketkit", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 60) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"{proc.args[:3]} did not finish in {timeout}s:\n{out[-2000:]}\n{err[-3000:]}") from None
    return proc.returncode, out, err


def tree_digest(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else b"<dir>")
            for p in sorted(root.rglob("*"))}
