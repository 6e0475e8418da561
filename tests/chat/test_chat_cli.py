"""`socketkit chat` as a user starts it: a subprocess on free ports, stopped with SIGTERM."""

from __future__ import annotations

import http.client
import signal
import socket
import stat
import time
from pathlib import Path

from helpers import WAIT, Spawned, cli_env, listening_url

from socketkit.net.endpoint import parse


class LineClient:
    """A blocking IRC client for talking to a server in another process (every read has a timeout)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.buf = b""

    def send(self, *lines: str) -> None:
        self.sock.sendall(b"".join(ln.encode() + b"\r\n" for ln in lines))

    def until(self, needle: bytes, timeout: float = WAIT) -> bytes:
        """Everything received up to and including the line that contains `needle`, within `timeout`."""
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {needle!r} within {timeout}s; got {self.buf[-2000:]!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            finally:
                self.sock.settimeout(WAIT)
            if not chunk:
                raise AssertionError(f"closed before {needle!r}; got {self.buf[-2000:]!r}")
            self.buf += chunk
        end = self.buf.index(b"\n", self.buf.index(needle)) + 1
        got, self.buf = self.buf[:end], self.buf[end:]
        return got

    def rest(self) -> bytes:
        """Read until the server closes the connection."""
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                got, self.buf = self.buf, b""
                return got
            self.buf += chunk

    def close(self) -> None:
        self.sock.close()


def spawn_chat(tmp_path: Path, *extra: str) -> Spawned:
    env = cli_env(SOCKETKIT_DATA=str(tmp_path / "data"))
    return Spawned("chat", "--listen", "tcp://127.0.0.1:0", "--data", str(tmp_path / "chat"), *extra, env=env)


def test_chat_serves_keeps_history_and_stops_on_sigterm(tmp_path: Path):
    # IRC connections never end by themselves: a short drain keeps SIGTERM quick (see the xfail below).
    with spawn_chat(tmp_path, "--drain-timeout", "1") as proc:
        port = parse(listening_url(proc)).port
        alice, bob = LineClient(port), LineClient(port)
        try:
            for c, nick in ((alice, "alice"), (bob, "bob")):
                c.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
                c.until(b" 376 ")
            alice.send("JOIN #cli")
            alice.until(b" 366 ")
            bob.send("JOIN #cli")
            bob.until(b" 366 ")
            alice.send("PRIVMSG #cli :from a subprocess")
            assert b":alice!~alice@127.0.0.1 PRIVMSG #cli :from a subprocess" in bob.until(b"PRIVMSG")
            proc.signal(signal.SIGTERM)
            code, _, err = proc.wait(timeout=10)
            assert code == 0, err.decode(errors="replace")
            assert b"Traceback" not in err
            alice.rest()  # closed
        finally:
            alice.close()
            bob.close()
    db = tmp_path / "chat" / "history.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600

    # A new process on the same --data replays the channel to a joiner.
    with spawn_chat(tmp_path, "--drain-timeout", "1") as proc:
        port = parse(listening_url(proc)).port
        first, second = LineClient(port), LineClient(port)
        try:
            for c, nick in ((first, "first"), (second, "second")):
                c.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
                c.until(b" 376 ")
            first.send("JOIN #cli")
            first.until(b" 366 ")
            second.send("JOIN #cli")
            assert b"PRIVMSG #cli :from a subprocess" in second.until(b"PRIVMSG")
        finally:
            first.close()
            second.close()
            proc.signal(signal.SIGTERM)
            code, _, err = proc.wait(timeout=10)
        assert code == 0, err.decode(errors="replace")


# "Quick" below: well under the default drain timeout (10 s), which is what a shutdown that waited for
# the connections would take; the bound leaves a loaded machine room to stop a Python process.
QUICK = 6.0


def test_sigterm_with_no_clients_is_quick(tmp_path: Path):
    with spawn_chat(tmp_path) as proc:
        listening_url(proc)
        start = time.monotonic()
        proc.signal(signal.SIGTERM)
        code, _, err = proc.wait(timeout=WAIT)
        assert code == 0, err.decode(errors="replace")
        assert time.monotonic() - start < QUICK


def test_sigterm_with_a_client_connected_says_goodbye_at_once(tmp_path: Path):
    with spawn_chat(tmp_path) as proc:
        port = parse(listening_url(proc)).port
        c = LineClient(port)
        try:
            c.send("NICK stay", "USER stay 0 * :stay")
            c.until(b" 376 ")
            start = time.monotonic()
            proc.signal(signal.SIGTERM)
            code, _, _ = proc.wait(timeout=WAIT)
            assert code == 0 and time.monotonic() - start < QUICK
            assert b"ERROR :Closing Link" in c.rest()
        finally:
            c.close()


def test_chat_web_page_has_a_csp(tmp_path: Path):
    with spawn_chat(tmp_path, "--web", "tcp://127.0.0.1:0") as proc:
        page = parse(proc.read_until(r"chat page on (\S+)", timeout=10).group(1))
        irc = parse(listening_url(proc))
        assert page.port != irc.port
        conn = http.client.HTTPConnection("127.0.0.1", page.port, timeout=WAIT)
        try:
            conn.request("GET", "/")
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200
            assert resp.getheader("content-type", "").startswith("text/html")
            csp = resp.getheader("content-security-policy", "")
            assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
            assert resp.getheader("x-content-type-options") == "nosniff"
            assert b"<html" in body.lower() and b"chat.js" in body
            conn.request("GET", "/chat.js")
            js = conn.getresponse()
            assert js.status == 200 and js.read()
            conn.request("GET", "/nothing-here")
            missing = conn.getresponse()
            missing.read()
            assert missing.status == 404
        finally:
            conn.close()
        # the IRC side works next to it
        c = LineClient(irc.port)
        try:
            c.send("NICK web", "USER web 0 * :web")
            c.until(b" 001 ")
        finally:
            c.close()
        proc.signal(signal.SIGTERM)
        code, _, err = proc.wait(timeout=10)
        assert code == 0, err.decode(errors="replace")


def test_flood_flags_set_the_limits(tmp_path: Path):
    """--flood-burst/--flood-rate/--flood-queue as an operator sets them, told apart without close timings:
    40 lines at once (registering took 2) go through with a burst of 40, where the default burst (10) would
    queue 30 of them, past a queue of 5 (Excess Flood, the connection closed); then 20 more lines, 5 at a
    time, pass at 20 lines a second in about a second, where the default rate (2) would need ten."""
    with spawn_chat(tmp_path, "--flood-burst", "40", "--flood-rate", "20", "--flood-queue", "5") as proc:
        port = parse(listening_url(proc)).port
        c = LineClient(port)
        try:
            c.send("NICK burst", "USER burst 0 * :burst")
            c.until(b" 376 ")
            c.send(*[f"PING :n{i}" for i in range(38)])
            c.until(b"PONG irc.socketkit.local :n37")  # not "closed before": the burst took them all
            start = time.monotonic()
            for r in range(4):  # the bucket is empty now: these wait for the rate
                c.send(*[f"PING :r{r}-{i}" for i in range(5)])
                c.until(f"PONG irc.socketkit.local :r{r}-4".encode())
            assert time.monotonic() - start < 6  # at the default rate: 9.5 s at least
        finally:
            c.close()
            proc.signal(signal.SIGTERM)
            proc.wait(timeout=10)


def test_flood_exempt_network_skips_flood_control(tmp_path: Path):
    with spawn_chat(tmp_path, "--flood-exempt", "127.0.0.0/8", "--flood-queue", "5") as proc:
        port = parse(listening_url(proc)).port
        c = LineClient(port)
        try:
            c.send("NICK bridge", "USER bridge 0 * :bridge")
            c.until(b" 376 ")
            c.send(*[f"PING :n{i}" for i in range(200)])  # far past burst + queue: no Excess Flood
            c.until(b"PONG irc.socketkit.local :n199")
        finally:
            c.close()
            proc.signal(signal.SIGTERM)
            proc.wait(timeout=10)


def test_bad_flood_and_backplane_flags_are_one_line(tmp_path: Path):
    from helpers import run_cli

    env = cli_env(SOCKETKIT_DATA=str(tmp_path / "data"))
    for args, message in [
        (["--flood-rate", "0"], b"--flood-rate must be a positive number"),
        (["--flood-burst", "0"], b"--flood-burst must be a whole number >= 1"),
        (["--flood-exempt", "10.0.0/8"], b"--flood-exempt: '10.0.0/8' is not an address or CIDR"),
        (["--backplane", "http://x"], b"expected redis://HOST:PORT"),
        (["--backplane-sentinel", "127.0.0.1:26379"], b"--backplane-sentinel needs --backplane"),
        (["--workers", "2"], b"--workers needs --backplane"),
    ]:
        done = run_cli("chat", "--listen", "tcp://127.0.0.1:0", "--data", str(tmp_path / "chat"), *args, env=env)
        assert done.returncode != 0, args
        err = done.stderr.strip()
        assert message in err and b"Traceback" not in err and err.count(b"\n") == 0, (args, err)
