"""IPv6 multicast for real, between two test hosts: network namespaces this test creates, joined by a
veth pair. (The host's `lo` cannot carry IPv6 multicast, so the loopback test in test_datagram.py
skips.) Traffic never leaves the two namespaces, which are deleted afterwards."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
import time
import uuid

import pytest

RECEIVER = r"""
import sys
from socketkit import bind
from socketkit.net.loop import run

async def main(group, ifname, port):
    async with await bind(f"udp://[::]:{port}") as sock:
        sock.join(group, ifname)
        print("ready", flush=True)
        data, addr = await sock.receive_from(timeout=10)
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
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("test hosts in network namespaces need root and iproute2's `ip`")
    tag = uuid.uuid4().hex[:6]
    a, b, va, vb = f"ska{tag}", f"skb{tag}", f"va{tag}", f"vb{tag}"
    made = _run("ip", "netns", "add", a)
    if made.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        steps = [
            ("ip", "netns", "add", b),
            ("ip", "link", "add", va, "type", "veth", "peer", "name", vb),
            ("ip", "link", "set", va, "netns", a),
            ("ip", "link", "set", vb, "netns", b),
            # no duplicate address detection: the link-local addresses are usable at once
            ("ip", "netns", "exec", a, "sysctl", "-qw", f"net.ipv6.conf.{va}.accept_dad=0"),
            ("ip", "netns", "exec", b, "sysctl", "-qw", f"net.ipv6.conf.{vb}.accept_dad=0"),
            ("ip", "netns", "exec", a, "ip", "link", "set", va, "up"),
            ("ip", "netns", "exec", b, "ip", "link", "set", vb, "up"),
        ]
        for step in steps:
            done = _run(*step)
            assert done.returncode == 0, f"{' '.join(step)}: {done.stderr}"
        yield a, va, b, vb
    finally:
        _run("ip", "netns", "del", a)
        _run("ip", "netns", "del", b)


@pytest.mark.parametrize("group", ["ff02::1:7741", "ff12::7741"])
def test_ipv6_multicast_between_two_hosts(two_hosts, group):
    a, va, b, vb = two_hosts
    port = "17741"
    receiver = subprocess.Popen(["ip", "netns", "exec", b, sys.executable, "-c", RECEIVER, group, vb, port],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([receiver.stdout], [], [], 15)
        assert ready and receiver.stdout.readline().strip() == "ready", receiver.stderr.read()
        deadline = time.monotonic() + 10
        out = ""
        while time.monotonic() < deadline and receiver.poll() is None:  # MLD may need a moment: resend
            sent = _run("ip", "netns", "exec", a, sys.executable, "-c", SENDER, group, va, port)
            assert sent.returncode == 0, sent.stderr[-2000:]
            ready, _, _ = select.select([receiver.stdout], [], [], 0.5)
            if ready:
                out = receiver.stdout.readline().strip()
                break
        assert out == "hello v6 group True", receiver.stderr.read() if receiver.poll() is not None else out
    finally:
        receiver.kill()
        receiver.wait(5)
