"""The real `wormhole` CLI (magic-wormhole) sending text, a file and a directory through socketkit's mailbox
server and transit relay, and a transfer that only the transit relay can carry (both sides --no-listen).

Network rule: `wormhole` advertises and dials every address of the machine's interfaces, so the relay and
every wormhole process run inside one network namespace that has only `lo` (tests/peer/netns.py); nothing
they do can leave the loopback.
"""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env
from netns import Namespace, loopback_namespace

pytest.importorskip("wormhole", reason="the magic-wormhole CLI is a test dependency")

TIMEOUT = 30

# The relay, in the namespace: prints its URLs as one JSON line, then its stats() for every line read
# from stdin, and stops (cleanly, closing its database) at EOF.
RELAY = r"""
import asyncio, json, sys
from socketkit.peer.relay import RelayConfig, serve_relay

async def main():
    stop = asyncio.Event()
    def ready(relay):
        print(json.dumps({"mailbox": relay.mailbox_url, "transit": relay.transit_url}), flush=True)
        def line():
            if sys.stdin.readline():
                print(json.dumps(relay.stats()), flush=True)
            else:
                stop.set()
        asyncio.get_running_loop().add_reader(sys.stdin.fileno(), line)
    await serve_relay(RelayConfig(["tcp://127.0.0.1:0"], ["tcp://127.0.0.1:0"]), ready=ready, stop=stop)

asyncio.run(main())
"""


class RelayInNamespace:
    def __init__(self, ns: Namespace, data: Path) -> None:
        self.ns = ns
        self.proc = ns([sys.executable, "-c", RELAY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True, env=cli_env(SOCKETKIT_DATA=str(data)))
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the relay did not start: {self.proc.stderr.read()}")
        urls = json.loads(line)
        self.mailbox = urls["mailbox"]
        self.transit = "tcp:" + urls["transit"].split("://", 1)[1]   # wormhole's hint syntax

    def stats(self) -> dict:
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def wormhole(self, *args: str, cwd: Path) -> subprocess.Popen[str]:
        argv = [sys.executable, "-m", "wormhole", "--relay-url", self.mailbox, "--transit-helper", self.transit,
                *args]
        return self.ns(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       env=cli_env(HOME=str(cwd)))

    def stop(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(TIMEOUT)
        finally:
            self.proc.kill()
            self.proc.wait(TIMEOUT)
            self.proc.stdout.close()
            self.proc.stderr.close()


@pytest.fixture(scope="module")
def relay(tmp_path_factory):
    with loopback_namespace() as ns:
        running = RelayInNamespace(ns, tmp_path_factory.mktemp("relay-data"))
        try:
            yield running
        finally:
            running.stop()


def transfer(relay: RelayInNamespace, code: str, send: list[str], receive: list[str], tmp: Path
             ) -> tuple[str, str]:
    """Run a sender and a receiver at once (bounded); return their outputs, failing on a non-zero exit."""
    (tmp / "recv").mkdir()
    sender = relay.wormhole("send", "--hide-progress", "--code", code, *send, cwd=tmp)
    receiver = relay.wormhole("receive", "--hide-progress", *receive, code, cwd=tmp / "recv")
    outputs = []
    try:
        for name, proc in (("receiver", receiver), ("sender", sender)):
            out, err = proc.communicate(timeout=TIMEOUT)
            assert proc.returncode == 0, f"wormhole {name} failed ({proc.returncode}):\n{out}\n{err}"
            outputs.append(out + err)
    finally:
        for proc in (sender, receiver):
            proc.kill()
            proc.communicate()
    return outputs[0], outputs[1]


def test_the_namespace_has_only_loopback(relay):
    assert sorted(relay.ns.addresses()) == ["127.0.0.1/8", "::1/128"]


def test_text(relay, tmp_path):
    received, sent = transfer(relay, "31-guitarist-revenge", ["--text", "hello through socketkit's relay"], [],
                              tmp_path)
    assert "hello through socketkit's relay" in received
    assert "text message sent" in sent


def test_file(relay, tmp_path):
    data = os.urandom(1 << 20)
    (tmp_path / "payload.bin").write_bytes(data)
    received, _ = transfer(relay, "32-snapline-vocalist", ["payload.bin"], ["--accept-file"], tmp_path)
    assert (tmp_path / "recv" / "payload.bin").read_bytes() == data, received


def test_directory(relay, tmp_path):
    tree = tmp_path / "tree"
    (tree / "sub" / "deeper").mkdir(parents=True)
    (tree / "a.txt").write_text("first\n")
    (tree / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (tree / "sub" / "deeper" / "empty").write_bytes(b"")
    transfer(relay, "33-tactics-bookseller", ["tree"], ["--accept-file"], tmp_path)
    got = tmp_path / "recv" / "tree"
    compare = filecmp.dircmp(tree, got)
    assert not compare.left_only and not compare.right_only and not compare.diff_files
    for rel in ("a.txt", "sub/b.bin", "sub/deeper/empty"):
        assert (got / rel).read_bytes() == (tree / rel).read_bytes()


def test_forced_relay_carries_the_file(relay, tmp_path):
    """--no-listen on both sides: no direct hints at all, so only the transit relay can carry the bytes."""
    before = relay.stats()
    data = os.urandom(3 << 20)
    (tmp_path / "big.bin").write_bytes(data)
    received, sent = transfer(relay, "34-drumbeat-pioneer", ["--no-listen", "big.bin"],
                              ["--no-listen", "--accept-file"], tmp_path)
    assert (tmp_path / "recv" / "big.bin").read_bytes() == data
    assert "relay:tcp:127.0.0.1" in received + sent   # the CLI says which way it went
    after = relay.stats()
    assert after["transit_pairs"] == before["transit_pairs"] + 1
    assert after["bytes_relayed"] - before["bytes_relayed"] >= len(data)
    # everything the exchange opened on the mailbox server was closed and freed by the two clients
    assert after["nameplates"] == 0 and after["mailboxes"] == 0 and after["errors"] == 0
