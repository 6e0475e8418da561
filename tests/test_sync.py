"""The blocking facade: the same streams, errors and timeouts as the async API, from plain functions."""

from __future__ import annotations

import socket
import threading

import pytest
from helpers import refused_port

import socketkit.sync
from socketkit.errors import ConnectError, DeadlineError, IncompleteReadError, LineTooLongError


@pytest.fixture
def echo_port():
    """A plain blocking echo server in a thread (so the facade is tested against something independent)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(10)
                try:
                    while data := conn.recv(65536):
                        if data == b"close\n":
                            break
                        conn.sendall(data)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    srv.close()
    t.join(5)


def test_round_trip_and_helpers(echo_port):
    with socketkit.sync.connect(f"tcp://127.0.0.1:{echo_port}", timeout=10) as s:
        s.send(b"hello\nworld\n")
        assert s.receive_until(b"\n") == b"hello\n"
        assert s.receive_exactly(6) == b"world\n"
        assert s.local[0] == "127.0.0.1" and s.peer[1] == echo_port


def test_timeout_is_a_deadline_error(echo_port):
    with socketkit.sync.connect(f"tcp://127.0.0.1:{echo_port}", timeout=10) as s:
        with pytest.raises(DeadlineError) as info:
            s.receive(timeout=0.2)
        assert isinstance(info.value, TimeoutError)


def test_line_limit_and_eof(echo_port):
    with socketkit.sync.connect(f"tcp://127.0.0.1:{echo_port}", timeout=10) as s:
        s.send(b"x" * 100)
        with pytest.raises(LineTooLongError):
            s.receive_until(b"\n", max_size=50)
    with socketkit.sync.connect(f"tcp://127.0.0.1:{echo_port}", timeout=10) as s:
        s.send(b"close\n")
        with pytest.raises(IncompleteReadError):
            s.receive_exactly(10)


def test_refused_connect_is_a_connect_error():
    # The port stays bound (not listening) meanwhile: a freed port could be taken by another test.
    with refused_port() as port, pytest.raises(ConnectError):
        socketkit.sync.connect(f"tcp://127.0.0.1:{port}", timeout=10)


def test_iteration_until_the_peer_closes(echo_port):
    with socketkit.sync.connect(f"tcp://127.0.0.1:{echo_port}", timeout=10) as s:
        s.send(b"abc")
        assert s.receive() == b"abc"
        s.send(b"close\n")
        assert list(s) == []
