"""IPv6 multicast for real, between two test hosts: network namespaces this test creates, joined by a
veth pair. (The host's `lo` cannot carry IPv6 multicast, so the loopback test in test_datagram.py
skips.) Traffic never leaves the two namespaces, which are deleted afterwards."""

from __future__ import annotations

import select
import subprocess
import sys
import time

import pytest
from helpers import two_test_hosts

RECEIVER = r"""
import sys
from socketkit import bind
from socketkit.net.loop import run

async def main(group, ifname, port):
    async with await bind(f"udp://[::]:{port}") as sock:
        sock.join(group, ifname)
        print("ready", flush=True)
        data, addr = await sock.receive_from(timeout=60)   # the test kills it sooner
        sock.leave(group, ifname)
        print(data.decode(), addr[0].split("%")[0].startswith("fe80::"), flush=True)

run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""

SENDER = r"""
import sys
from socketkit import bind
from socketkit.net.loop import run

async def main(group, ifname, port):
    async with await bind("udp://[::]:0") as sock:
        sock.set_multicast_interface(ifname)
        sock.set_multicast_ttl(1)
        await sock.send_to(b"hello v6 group", (group, port))

run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15)


@pytest.fixture
def two_hosts():
    """(namespace A, its interface, namespace B, its interface), linked by veth, DAD off."""
    with two_test_hosts() as ((a, va, _), (b, vb, _)):
        yield a, va, b, vb


@pytest.mark.parametrize("group", ["ff02::1:7741", "ff12::7741"])
def test_ipv6_multicast_between_two_hosts(two_hosts, group):
    a, va, b, vb = two_hosts
    port = "17741"
    receiver = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", RECEIVER, group, vb, port],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([receiver.stdout], [], [], 15)
        assert ready and receiver.stdout.readline().strip() == "ready", receiver.stderr.read()
        deadline = time.monotonic() + 20
        out = ""
        while time.monotonic() < deadline:
            if receiver.poll() is None:  # still waiting (MLD may need a moment): send (again)
                sent = _run("ip", "netns", "exec", a, sys.executable, "-c", SENDER, group, va, port)
                assert sent.returncode == 0, sent.stderr[-2000:]
            # Read even when the receiver has just exited: its line (or EOF) is in the pipe.
            ready, _, _ = select.select([receiver.stdout], [], [], 0.5)
            if ready:
                out = receiver.stdout.readline().strip()
                break
        assert out == "hello v6 group True", receiver.stderr.read() if receiver.poll() is not None else out
    finally:
        receiver.kill()
        receiver.wait(5)
