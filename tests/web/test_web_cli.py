"""`socketkit web MODULE:APP`: a real process serving tests.web.apps:APP on a free loopback port."""

from __future__ import annotations

import http.client
import json
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from helpers import WAIT, Spawned, cli_env, listening_url, run_cli, wait_until

APP = "tests.web.apps:APP"
LISTEN = ["--listen", "tcp://127.0.0.1:0"]


def _get(url: str, path: str, *, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """One request on a fresh connection (so --workers spreads them), bounded by a timeout."""
    parts = urlsplit(url.replace("tcp://", "http://"))
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def _stop(proc: Spawned) -> tuple[int, bytes, bytes]:
    proc.signal(signal.SIGTERM)
    return proc.wait(timeout=WAIT)


def test_web_serves_and_sigterm_runs_lifespan_shutdown(tmp_path: Path):
    marker = tmp_path / "lifespan.txt"
    with Spawned("web", APP, *LISTEN, env=cli_env(SOCKETKIT_TEST_MARKER=str(marker))) as proc:
        url = listening_url(proc)
        assert url.startswith("tcp://127.0.0.1:")
        assert marker.read_text() == "startup\n"  # the lifespan started before the port was announced
        assert _get(url, "/") == (200, b"hello")
        status, body = _get(url, "/scope?x=1")
        scope = json.loads(body)
        assert (status, scope["path"], scope["query_string"], scope["root_path"]) == (200, "/scope", "x=1", "")
        code, _, err = _stop(proc)
    assert code == 0, err
    assert b"Traceback" not in err
    assert marker.read_text() == "startup\nshutdown\n"


def test_web_root_path_flag():
    with Spawned("web", APP, *LISTEN, "--root-path", "/api") as proc:
        url = listening_url(proc)
        status, body = _get(url, "/scope")
        scope = json.loads(body)
        assert (scope["root_path"], scope["path"]) == ("/api", "/api/scope")
        assert _stop(proc)[0] == 0


@pytest.mark.parametrize("spec, message", [
    ("tests.web.apps", "module:attribute"),
    ("tests.web.no_such_module:APP", "no module named"),
    ("tests.web.apps:no_such_app", "has no attribute"),
    ("tests.web.apps:NOT_AN_APP", "is not callable"),
])
def test_web_bad_app_spec_is_one_line_error(spec: str, message: str):
    result = run_cli("web", spec, *LISTEN, timeout=20)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("socketkit web: ") and message in lines[0], err
    assert "listening on" not in err  # nothing was served


def test_web_startup_failure_is_one_line_error():
    result = run_cli("web", "tests.web.apps:failing_startup_app", *LISTEN, timeout=20)
    err = result.stderr.decode()
    assert result.returncode != 0
    assert "Traceback" not in err
    assert "database is not reachable" in err
    assert "listening on" not in err


def test_web_workers_both_answer():
    with Spawned("web", APP, *LISTEN, "--workers", "2") as proc:
        url = listening_url(proc, timeout=15)
        pids: set[bytes] = set()

        def two_workers_seen() -> bool:
            status, body = _get(url, "/pid")
            assert status == 200
            pids.add(body)
            return len(pids) >= 2

        # New connections are spread by the kernel (SO_REUSEPORT): both answer, sooner or later.
        wait_until(two_workers_seen, timeout=15, interval=0.01, what="requests answered by two worker pids")
        assert str(proc.proc.pid).encode() not in pids  # the parent only supervises
        code, _, err = _stop(proc)
    assert code == 0, err
    assert b"Traceback" not in err


def test_web_access_log_logs_each_request():
    with Spawned("web", APP, *LISTEN, "--access-log") as proc:
        url = listening_url(proc)
        port = urlsplit(url.replace("tcp://", "http://")).port
        assert port
        for path in ("/one", "/two?q=1", "/pid"):
            assert _get(url, path)[0] == 200
            m = proc.read_until(r'"GET (\S+) HTTP/1\.1" (\d{3})')
            assert (m.group(1), m.group(2)) == (path, "200")
        assert _stop(proc)[0] == 0


def test_web_without_access_log_is_quiet():
    with Spawned("web", APP, *LISTEN) as proc:
        url = listening_url(proc)
        for _ in range(3):
            assert _get(url, "/")[0] == 200
        code, _, err = _stop(proc)
    assert code == 0
    assert b'"GET /' not in err


def test_web_sigterm_with_an_open_idle_connection_exits_promptly():
    with Spawned("web", APP, *LISTEN, "--drain-timeout", "2") as proc:
        url = listening_url(proc)
        parts = urlsplit(url.replace("tcp://", "http://"))
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
        try:
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"hello"  # the connection stays open (keep-alive)
            start = time.monotonic()
            code, _, err = _stop(proc)
            assert code == 0, err
            # (today it waits out the drain timeout, 2 s, for the idle client; unbounded, it would hang)
            assert time.monotonic() - start < WAIT
        finally:
            conn.close()


# -- what uvicorn users reach for ----------------------------------------------------------------------


def test_web_access_log_is_in_the_combined_format():
    with Spawned("web", APP, *LISTEN, "--access-log") as proc:
        url = listening_url(proc)
        assert _get(url, "/two?q=1", headers={"Referer": "http://x/", "User-Agent": 'ua "quoted"'})[0] == 200
        m = proc.read_until(r'(\S+) - - \[(\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d \+0000)\] "GET /two\?q=1 HTTP/1\.1" '
                            r'(\d{3}) (\S+) "([^"]*)" "([^"]*)"')
        assert (m.group(1), m.group(3), m.group(4), m.group(5)) == ("127.0.0.1", "200", "5", "http://x/")
        assert m.group(6) == r"ua \x22quoted\x22"
        assert _stop(proc)[0] == 0


def test_web_log_level_env_file_and_factory(tmp_path: Path):
    (tmp_path / "factory_app.py").write_text(
        "import os\n"
        "def make():\n"
        "    async def app(scope, receive, send):\n"
        "        if scope['type'] != 'http':\n"
        "            return\n"
        "        body = (os.environ['GREETING'] + '|' + os.environ['KEPT']).encode()\n"
        "        await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "        await send({'type': 'http.response.body', 'body': body})\n"
        "    return app\n")
    (tmp_path / ".env").write_text('# settings\nexport GREETING="hi \\"there\\""\nKEPT=from-file # comment\n')
    env = cli_env(PYTHONPATH=str(tmp_path), KEPT="from-environment")
    with Spawned("web", "factory_app:make", "--factory", "--env-file", str(tmp_path / ".env"), *LISTEN,
                 "--log-level", "info", env=env) as proc:
        url = listening_url(proc)
        assert _get(url, "/") == (200, b'hi "there"|from-environment')
        code, _, err = _stop(proc)
    assert code == 0, err
    assert b" INFO " in err  # --log-level info after the subcommand, as uvicorn users type it


def test_web_help_names_the_uds_and_fd_ways():
    done = run_cli("web", "--help")
    text = " ".join(done.stdout.decode().split())
    assert done.returncode == 0 and "unix:///PATH (uvicorn's --uds)" in text and "LISTEN_FDS" in text and "--reload" in text


def test_web_reload_restarts_the_worker_when_a_file_changes(tmp_path: Path):
    app = tmp_path / "reload_app.py"
    app.write_text("async def app(scope, receive, send):\n"
                   "    if scope['type'] != 'http':\n"
                   "        return\n"
                   "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
                   "    await send({'type': 'http.response.body', 'body': b'one'})\n")
    # No .pyc next to it: Python checks a cached module by its source's size and mtime in whole seconds,
    # and the edit below can land in the same second as the first write.
    env = cli_env(PYTHONPATH=str(tmp_path), PYTHONDONTWRITEBYTECODE="1")
    with Spawned("web", "reload_app:app", *LISTEN, "--reload", "--reload-dir",
                 str(tmp_path), env=env) as proc:
        url = listening_url(proc)
        assert _get(url, "/") == (200, b"one")
        app.write_text(app.read_text().replace("b'one'", "b'two, reloaded'"))  # (another size too)
        url = listening_url(proc, timeout=15)  # the new worker announces itself (a new port: port 0)
        assert wait_until(lambda: _get(url, "/") == (200, b"two, reloaded"), timeout=15)
        code, _, err = _stop(proc)
    assert code == 0, err
    assert b"restarting the server" in err and b"Traceback" not in err
