"""`--lan`: sender and receiver on two test hosts (network namespaces this test creates, joined by a veth
pair, addresses 10.77.x.1/.2), no server anywhere: they find each other by DNS-SD over multicast DNS and
transfer directly, still under the short code. avahi's own browser sees the announcement. Nothing leaves
the two namespaces, which are deleted afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import two_test_hosts

pytestmark = pytest.mark.slow


@pytest.fixture
def two_hosts():
    with two_test_hosts(ipv4=True) as hosts:
        yield hosts


def _sk(ns: str, *args: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "socketkit", *args], cwd=cwd,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _code_of(proc: subprocess.Popen[str], timeout: float = 15) -> str:
    """The code the sender prints first (read line by line from its stderr)."""
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if line.startswith("Wormhole code is: "):
            return line.split(": ", 1)[1].strip()
        if not line and proc.poll() is not None:
            break
    raise AssertionError(f"the sender printed no code: {proc.communicate(timeout=5)}")


@pytest.mark.timeout(120)  # two transfers, four interpreters: (14 s on a busy 2-core machine) only a hang is cut off
def test_a_file_and_a_text_cross_the_lan_with_no_server(two_hosts, tmp_path):
    (a, _, addr_a), (b, _, addr_b) = two_hosts
    payload = tmp_path / "photo.jpg"
    payload.write_bytes(os.urandom(2_000_000))
    out = tmp_path / "out"
    out.mkdir()
    sender = _sk(a, "peer", "send", "--lan", str(payload), cwd=tmp_path)  # a generated code, every interface
    try:
        code = _code_of(sender)
        receiver = _sk(b, "peer", "receive", "--lan", code, "--yes", "--out", str(out), "--timeout", "20",
                       cwd=tmp_path)
        rout, rerr = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, rerr
        assert f"direct {addr_a}" in rerr or f"direct <- {addr_a}" in rerr, rerr  # straight between the hosts
        serr = sender.communicate(timeout=30)[1]
        assert sender.returncode == 0, serr
    finally:
        sender.kill()
    assert (out / "photo.jpg").read_bytes() == payload.read_bytes()

    sender = _sk(b, "peer", "send", "--lan", "--text", "hello across the veth", "--code", "4321-lan-text",
                 "--advertise", addr_b, cwd=tmp_path)
    try:
        _code_of(sender)
        receiver = _sk(a, "peer", "receive", "--lan", "4321-lan-text", "--advertise", addr_a, cwd=tmp_path)
        rout, rerr = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, rerr
        assert rout == "hello across the veth\n"
        assert sender.wait(30) == 0
    finally:
        sender.kill()


def test_a_wrong_code_on_the_lan_fails_on_both_sides(two_hosts, tmp_path):
    (a, _, _), (b, _, _) = two_hosts
    sender = _sk(a, "peer", "send", "--lan", "--text", "secret", "--code", "555-right-words", cwd=tmp_path)
    try:
        _code_of(sender)
        receiver = _sk(b, "peer", "receive", "--lan", "555-wrong-words", cwd=tmp_path)
        rout, rerr = receiver.communicate(timeout=30)
        assert receiver.returncode == 1 and rout == ""
        assert "key confirmation failed" in rerr and rerr.strip().count("\n") == 0, rerr
        serr = sender.communicate(timeout=30)[1]
        assert sender.returncode == 1 and "key confirmation failed" in serr, serr
    finally:
        sender.kill()


def test_no_sender_on_the_lan_is_one_line(two_hosts, tmp_path):
    (_, _, _), (b, _, _) = two_hosts
    receiver = _sk(b, "peer", "receive", "--lan", "777-nobody-here", "--timeout", "2", cwd=tmp_path)
    rout, rerr = receiver.communicate(timeout=30)
    assert receiver.returncode == 1
    assert "no sender for code 777" in rerr and rerr.strip().count("\n") == 0, rerr


def test_avahi_browse_sees_the_announcement(two_hosts, tmp_path):
    """avahi (another mDNS implementation) in the receiver's namespace, on a private D-Bus."""
    for prog in ("avahi-daemon", "avahi-browse", "dbus-daemon"):
        if shutil.which(prog) is None:
            pytest.skip(f"{prog} is not installed (Debian: avahi-daemon avahi-utils dbus)")
    if Path("/run/avahi-daemon/pid").exists():
        pytest.skip("an avahi-daemon already runs on this machine (its pid file is global)")
    (a, _, addr_a), (b, vb, _) = two_hosts
    bus = tmp_path / "bus"
    (tmp_path / "bus.conf").write_text(f"""<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><type>system</type><listen>unix:path={bus}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*" eavesdrop="true"/>
<allow eavesdrop="true"/></policy></busconfig>
""")
    (tmp_path / "avahi.conf").write_text(f"[server]\nuse-ipv4=yes\nuse-ipv6=no\nallow-interfaces={vb}\n"
                                         "enable-dbus=yes\n[publish]\ndisable-publishing=yes\n")
    env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={bus}")
    procs = []
    try:
        dbus = subprocess.Popen(["ip", "netns", "exec", b, "dbus-daemon", "--nofork", "--print-address",
                                 f"--config-file={tmp_path / 'bus.conf'}"], stdout=subprocess.PIPE, text=True)
        procs.append(dbus)
        assert dbus.stdout is not None and dbus.stdout.readline().startswith("unix:"), "dbus-daemon did not start"
        avahi = subprocess.Popen(["ip", "netns", "exec", b, "avahi-daemon", "--no-drop-root", "--no-chroot",
                                  "--no-rlimits", "-f", str(tmp_path / "avahi.conf")], env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(avahi)
        assert avahi.stdout is not None
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = avahi.stdout.readline()
            if "Server startup complete" in line:
                break
            if not line:
                pytest.skip("avahi-daemon would not start here")
        sender = _sk(a, "peer", "send", "--lan", "--text", "x", "--code", "246-seen-by-avahi", "--wait", "60",
                     cwd=tmp_path)
        procs.append(sender)
        _code_of(sender)
        seen = ""
        deadline = time.monotonic() + 30  # (avahi-browse -t gives up after a moment: ask again, bounded)
        while time.monotonic() < deadline:
            done = subprocess.run(["ip", "netns", "exec", b, "avahi-browse", "-rtp", "_socketkit-peer._tcp"],
                                  env=env, capture_output=True, text=True, timeout=15)
            seen = done.stdout
            if "nameplate=246" in seen:
                break
            time.sleep(0.2)
        assert f"{addr_a};" in seen and '"nameplate=246"' in seen, seen
    finally:
        for p in reversed(procs):
            p.kill()
            p.wait(5)
        Path("/run/avahi-daemon/pid").unlink(missing_ok=True)
