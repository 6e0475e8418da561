"""Process-level server features, each with a real `socketkit listen` process: systemd socket activation
(LISTEN_FDS), --workers sharing a port with SO_REUSEPORT, and --user dropping root privileges."""

from __future__ import annotations

import os
import pwd
import signal
import socket
import subprocess
import sys
import time

import pytest

DEADLINE = 15.0


def _echo_roundtrip(port: int, payload: bytes = b"ping\n") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as s:
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def _wait_listening(proc: subprocess.Popen[bytes], count: int = 1) -> list[str]:
    """Read stderr until `count` 'listening on' lines arrived (bounded)."""
    lines: list[str] = []
    end = time.monotonic() + DEADLINE
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), False)
    buf = b""
    while time.monotonic() < end and len(lines) < count:
        try:
            chunk = proc.stderr.read()
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            lines = [ln for ln in buf.decode(errors="replace").splitlines() if ln.startswith("listening on ")]
        elif proc.poll() is not None:
            break
        else:
            time.sleep(0.02)
    assert len(lines) >= count, f"server did not report listening: {buf.decode(errors='replace')}"
    return lines


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=DEADLINE)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def test_systemd_socket_activation():
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]

    fd = listener.fileno()
    # Play systemd: the socket as fd 3, LISTEN_PID the server's own pid (exec keeps the pid).
    launcher = (
        "import os, sys\n"
        f"if {fd} != 3:\n    os.dup2({fd}, 3); os.close({fd})\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'socketkit', 'listen', 'tcp://127.0.0.1:1', '--echo'])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", launcher], stderr=subprocess.PIPE, pass_fds=(fd,))
    try:
        lines = _wait_listening(proc)
        assert f":{port}" in lines[0], lines  # the inherited socket, not the (ignored) command-line one
        listener.close()
        assert _echo_roundtrip(port) == b"ping\n"
    finally:
        assert _stop(proc) == 0


def test_workers_share_the_port():
    proc = subprocess.Popen([sys.executable, "-m", "socketkit", "listen", "tcp://127.0.0.1:0", "--echo",
                             "--workers", "2"], stderr=subprocess.PIPE)
    try:
        lines = _wait_listening(proc, count=2)
        ports = {ln.rsplit(":", 1)[1] for ln in lines}
        assert len(ports) == 1, lines  # port 0 was resolved once, both workers bound it
        port = int(ports.pop())
        for i in range(20):
            assert _echo_roundtrip(port, b"%d\n" % i) == b"%d\n" % i
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) == 2
    finally:
        assert _stop(proc) == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_user_drops_privileges_after_binding():
    nobody = pwd.getpwnam("nobody")
    proc = subprocess.Popen([sys.executable, "-m", "socketkit", "listen", "tcp://127.0.0.1:0", "--echo",
                             "--user", "nobody"], stderr=subprocess.PIPE, cwd="/")
    try:
        port = int(_wait_listening(proc)[0].rsplit(":", 1)[1])
        assert _echo_roundtrip(port) == b"ping\n"
        with open(f"/proc/{proc.pid}/status") as f:
            status = dict(line.split(":", 1) for line in f if ":" in line)
        assert status["Uid"].split()[:2] == [str(nobody.pw_uid)] * 2
        assert status["Gid"].split()[:2] == [str(nobody.pw_gid)] * 2
    finally:
        assert _stop(proc) == 0


def test_missing_activation_socket_is_one_line_error():
    launcher = (
        "import os, sys\n"
        "try:\n    os.close(3)\nexcept OSError:\n    pass\n"
        "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1')\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'socketkit', 'listen', 'tcp://127.0.0.1:0', '--echo'])\n"
    )
    proc = subprocess.run([sys.executable, "-c", launcher], capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode != 0
    assert "file descriptor 3" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_user_is_one_line_error():
    proc = subprocess.run([sys.executable, "-m", "socketkit", "listen", "tcp://127.0.0.1:0", "--echo",
                           "--user", "no-such-user-here"], capture_output=True, text=True, timeout=DEADLINE)
    assert proc.returncode != 0
    assert "no such user" in proc.stderr and "Traceback" not in proc.stderr
