"""Run commands in a network namespace that has nothing but `lo`, so they cannot reach any other host.

Why: programs like the `wormhole` CLI advertise and dial every address of the machine's interfaces. Inside
such a namespace the only address is 127.0.0.1/::1, so whatever they do stays on that loopback, and all
processes started through the same `Namespace` share it (a relay, a sender and a receiver meet there).

    with loopback_namespace() as ns:          # pytest.skip()s with the reason when it cannot be made
        proc = ns(["python", "-c", "..."], stdout=subprocess.PIPE)   # subprocess.Popen inside
        done = ns.run(["ip", "addr"], capture_output=True, text=True, timeout=10)
        ns.argv(["cmd"])                      # the wrapped command line, for your own Popen

As root it is a named namespace (`ip netns add`, deleted afterwards); otherwise a user+network namespace
(`unshare -rn`) held open by a sleeping process and entered with `nsenter`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest


def _quiet(argv: Sequence[str], timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)


class Namespace:
    """A network namespace with only `lo` (up): call it like subprocess.Popen, or use run()/argv()."""

    def __init__(self, prefix: list[str], description: str) -> None:
        self.prefix = prefix
        self.description = description

    def argv(self, argv: Sequence[str]) -> list[str]:
        return [*self.prefix, *argv]

    def __call__(self, argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        return subprocess.Popen(self.argv(argv), **popen)

    def run(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        kwargs.setdefault("timeout", 30)
        return subprocess.run(self.argv(argv), **kwargs)

    def addresses(self) -> list[str]:
        """Every address of every interface in the namespace (a check that only loopback is there)."""
        done = self.run(["ip", "-o", "addr"], capture_output=True, text=True)
        return [line.split()[3] for line in done.stdout.splitlines() if len(line.split()) > 3]


@contextlib.contextmanager
def _root_namespace() -> Iterator[Namespace]:
    name = f"skpeer{uuid.uuid4().hex[:8]}"
    made = _quiet(["ip", "netns", "add", name])
    if made.returncode != 0:
        raise OSError(f"ip netns add: {made.stderr.strip()}")
    try:
        ns = Namespace(["ip", "netns", "exec", name], f"netns {name}")
        up = ns.run(["ip", "link", "set", "lo", "up"], capture_output=True, text=True)
        if up.returncode != 0:
            raise OSError(f"ip link set lo up: {up.stderr.strip()}")
        yield ns
    finally:
        _quiet(["ip", "netns", "del", name])


@contextlib.contextmanager
def _user_namespace() -> Iterator[Namespace]:
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        raise OSError("unshare/nsenter not found (util-linux)")
    # The holder keeps the namespace alive; its stdout says when it is made (no sleeping on a guess).
    holder = subprocess.Popen(["unshare", "-rn", "sh", "-c", "ip link set lo up && echo ready && exec sleep 3600"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline() if holder.stdout is not None else ""
        if line.strip() != "ready":
            holder.kill()
            raise OSError(f"unshare -rn: {holder.stderr.read().strip() if holder.stderr else ''}")
        ns = Namespace(["nsenter", f"--target={holder.pid}", "--user", "--net", "--preserve-credentials"],
                       f"user+net namespace of pid {holder.pid}")
        probe = ns.run(["true"], capture_output=True, text=True)
        if probe.returncode != 0:
            raise OSError(f"nsenter: {probe.stderr.strip()}")
        yield ns
    finally:
        holder.kill()
        holder.wait(5)
        for pipe in (holder.stdout, holder.stderr):
            if pipe is not None:
                pipe.close()


@contextlib.contextmanager
def loopback_namespace() -> Iterator[Namespace]:
    """A fresh namespace with only loopback; skips the calling test (with why) when none can be made."""
    if not os.path.exists("/proc/self/ns/net"):
        pytest.skip("network namespaces need Linux")
    reasons = []
    makers = [_root_namespace] if os.geteuid() == 0 and shutil.which("ip") else []
    makers.append(_user_namespace)
    for maker in makers:
        stack = contextlib.ExitStack()
        try:
            ns = stack.enter_context(maker())
        except (OSError, subprocess.SubprocessError) as e:
            reasons.append(str(e))
            continue
        with stack:
            yield ns
        return
    pytest.skip("cannot make a loopback-only network namespace (needs root with iproute2, or unprivileged "
                "user namespaces): " + "; ".join(reasons))
