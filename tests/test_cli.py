"""The `socketkit` command, run as a real subprocess: listen/connect/relay, cert, up, errors, --loop."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

import pytest
from helpers import WAIT, Spawned, cli_env, listening_url, refused_port, run_cli, wait_until


def _one_line_error(result, *needles: str) -> str:
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_listen_echo_and_connect_with_piped_stdin(loop):
    payload = b"hello\nworld\n" + bytes(range(256)) * 100
    with Spawned("--loop", loop, "listen", "tcp://127.0.0.1:0", "--echo") as server:
        endpoint = listening_url(server)
        result = run_cli("--loop", loop, "connect", endpoint, input=payload, timeout=20)
        assert result.returncode == 0, result.stderr
        assert result.stdout == payload
        server.signal(signal.SIGTERM)
        code, _out, err = server.wait(timeout=10)
        assert code == 0, err


def test_listen_prints_what_arrives_on_unix(tmp_path):
    path = tmp_path / "l.sock"
    with Spawned("listen", f"unix://{path}") as server:
        assert listening_url(server) == f"unix://{path}"
        result = run_cli("connect", f"unix://{path}", input=b"to stdout\n", timeout=20)
        assert result.returncode == 0, result.stderr
        server.read_until("to stdout", stream="stdout")
        server.signal(signal.SIGINT)
        code, _out, err = server.wait(timeout=10)
        assert code == 0, err


def test_relay_command():
    with Spawned("listen", "tcp://127.0.0.1:0", "--echo") as upstream:
        target = listening_url(upstream)
        with Spawned("relay", "tcp://127.0.0.1:0", target) as relay:
            front = listening_url(relay)
            result = run_cli("connect", front, input=b"through the relay\n", timeout=20)
            assert result.returncode == 0, result.stderr
            assert result.stdout == b"through the relay\n"
            relay.signal(signal.SIGTERM)
            assert relay.wait(timeout=10)[0] == 0
        upstream.signal(signal.SIGTERM)
        assert upstream.wait(timeout=10)[0] == 0


def test_cert_ca_issue_show(tmp_path):
    env = cli_env(SOCKETKIT_DATA=str(tmp_path / "data"))
    ca = run_cli("cert", "ca", env=env)
    assert ca.returncode == 0, ca.stderr
    out = ca.stdout.decode()
    assert "CA certificate:" in out and str(tmp_path) in out and "sha256:" in out
    assert (tmp_path / "data" / "certs" / "ca.pem").exists()

    issued = run_cli("cert", "issue", "myhost.test", "127.0.0.1", env=env)
    assert issued.returncode == 0, issued.stderr
    text = issued.stdout.decode()
    assert "DNS:myhost.test" in text and "IP:127.0.0.1" in text
    cert_path = text.split("certificate:", 1)[1].split()[0]

    shown = run_cli("cert", "show", cert_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "CN=myhost.test" in shown.stdout.decode() and "not after" in shown.stdout.decode()

    client = run_cli("cert", "issue", "--client", "alice", env=env)
    assert client.returncode == 0, client.stderr
    assert "alice" in client.stdout.decode()

    missing = run_cli("cert", "show", str(tmp_path / "nope.pem"), env=env)
    _one_line_error(missing, "nope.pem")


def test_tls_listen_and_connect_with_dev_certificate(tmp_path):
    env = cli_env(SOCKETKIT_DATA=str(tmp_path / "data"))
    with Spawned("listen", "tls://127.0.0.1:0", "--echo", "--drain-timeout", "0.5", env=env) as server:
        endpoint = listening_url(server)
        assert endpoint.startswith("tls://")
        with Spawned("connect", endpoint, env=env, stdin=subprocess.PIPE) as client:
            client.proc.stdin.write(b"over tls\n")
            client.proc.stdin.close()
            client.read_until("over tls", stream="stdout", timeout=10)
            # TLS has no half-close, so the echo server cannot see our end of input: like netcat, the
            # client stays until the server closes. Stopping the server ends it cleanly.
            server.signal(signal.SIGTERM)
            assert server.wait(timeout=10)[0] == 0
            code, _out, err = client.wait(timeout=10)
            assert code == 0, err


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_up_prints_where_it_listens_and_stops_on_sigint():
    if not _port_free(7007):
        pytest.skip("port 7007 (socketkit up's echo) is in use on this machine")
    with Spawned("up", "--host", "127.0.0.1", "--only", "echo") as up:
        m = up.read_until(r"echo\s+(tcp://127\.0\.0\.1:7007)", stream="stdout", timeout=10)
        assert m.group(1) == "tcp://127.0.0.1:7007"
        with socket.create_connection(("127.0.0.1", 7007), timeout=WAIT) as c:
            c.sendall(b"up?\n")
            assert c.recv(100) == b"up?\n"
        up.signal(signal.SIGINT)
        start = time.monotonic()
        code, out, err = up.wait(timeout=15)
        assert code == 0, err
        assert b"stopped." in out
        assert b"Traceback" not in err
        assert time.monotonic() - start < 12
    wait_until(lambda: _port_free(7007), what="port 7007 to be released")


def test_up_unknown_service_is_one_line():
    _one_line_error(run_cli("up", "--only", "nosuchservice"), "nosuchservice", "known")


def test_bad_endpoint_is_one_line():
    _one_line_error(run_cli("listen", "tcp://127.0.0.1"), "port")
    _one_line_error(run_cli("connect", "gopher://x:70"), "scheme")


def test_refused_connect_is_one_line():
    with refused_port() as port:
        result = run_cli("connect", f"tcp://127.0.0.1:{port}", input=b"", timeout=20)
    line = _one_line_error(result, f"127.0.0.1:{port}")
    assert "refused" in line.lower()


def test_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("listen", f"tcp://127.0.0.1:{port}", timeout=20)
    line = _one_line_error(result, str(port))
    assert "in use" in line.lower()


def test_usage_errors_exit_2():
    result = run_cli("listen")
    assert result.returncode == 2
    assert b"Traceback" not in result.stderr
    result = run_cli("--loop", "nope", "listen", "tcp://127.0.0.1:0")
    assert result.returncode == 2
