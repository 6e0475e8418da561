"""The dashboard of `socketkit up`, with every service running for real on loopback and real clients driving
load into them: the series, the sockets view, the events, `socketkit status`, /metrics, and access rules."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import smtplib
import socket
from collections.abc import AsyncIterator
from email.message import EmailMessage

import httpx
import pytest
from helpers import WAIT
from prometheus_client.parser import text_string_to_metric_families

from socketkit import up
from socketkit.dashboard.app import DashboardApp
from socketkit.dashboard.core import Dashboard
from socketkit.dashboard.events import EVENTS
from socketkit.dashboard.series import FINE_POINTS, SeriesStore
from socketkit.dashboard.status_socket import query, start_status_socket

SERVICES = {"web", "echo", "mail", "chat", "peer"}


@contextlib.asynccontextmanager
async def running_up(tmp_path, interval: float = 0.2) -> AsyncIterator[up.UpContext]:
    ctx = up.UpContext(dashboard_interval=interval, overrides={
        "web": ["tcp://127.0.0.1:0"], "echo": ["tcp://127.0.0.1:0"], "mail": ["tcp://127.0.0.1:0"],
        "chat": ["tcp://127.0.0.1:0"], "peer": ["tcp://127.0.0.1:0"], "peer-transit": ["tcp://127.0.0.1:0"]})
    await up.start_all(ctx, SERVICES)
    try:
        yield ctx
    finally:
        await up.stop_all(ctx, drain=0)


def port_of(ctx: up.UpContext, name: str) -> int:
    running = next(r for r in ctx.running if r.name == name)
    return int(running.endpoints[0].rsplit(":", 1)[1])


def base(ctx: up.UpContext) -> str:
    return f"http://127.0.0.1:{port_of(ctx, 'web')}"


def send_mail(port: int, subject: str) -> None:
    msg = EmailMessage()
    msg["From"], msg["To"], msg["Subject"] = "ann@example.org", "bob@example.org", subject
    msg.set_content("hello\n")
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        s.send_message(msg)


async def wait_until(check, what: str, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.1)


async def test_the_dashboard_follows_load_into_every_service(tmp_path):
    async with running_up(tmp_path) as ctx, httpx.AsyncClient(base_url=base(ctx), timeout=10) as web:
        mail_port, echo_port, chat_port = port_of(ctx, "mail"), port_of(ctx, "echo"), port_of(ctx, "chat")
        for i in range(3):
            await asyncio.to_thread(send_mail, mail_port, f"report {i} ✓")
        echo = socket.create_connection(("127.0.0.1", echo_port))
        # (from a thread: a blocking send on the loop's own thread would wait for buffer room that only
        # the echo service, on this loop, can make)
        await asyncio.to_thread(echo.sendall, b"x" * 50_000)
        irc = socket.create_connection(("127.0.0.1", chat_port))
        said = b"NICK dashwatcher\r\nUSER d 0 * :Dash\r\nJOIN #ops\r\nPRIVMSG #ops :hi\r\n"
        irc.sendall(said)

        def open_envelope() -> smtplib.SMTP:  # an envelope left in progress (blocking: not on the loop)
            s = smtplib.SMTP("127.0.0.1", mail_port, timeout=10)
            s.ehlo("watcher.example")
            s.mail("carol@example.org")
            s.rcpt("dave@example.org")
            return s

        smtp = await asyncio.to_thread(open_envelope)
        try:
            async def mail_rate():
                series = (await web.get("/api/series")).json()
                return max((v or 0) for v in series["services"].get("mail", {}).get("units", [0]))
            assert await wait_until(mail_rate, "a messages/s figure for mail") > 0

            async def echo_bytes():
                series = (await web.get("/api/series")).json()
                return max((v or 0) for v in series["services"].get("echo", {}).get("bytes_in", [0])) > 1000
            await wait_until(echo_bytes, "echo's bytes in/s")

            events = (await web.get("/api/events")).json()["events"]
            # (the event log is the process's: earlier tests on this worker may have left mail events in it)
            reports = {"report 0 ✓", "report 1 ✓", "report 2 ✓"}
            received = [e for e in events if e["kind"] == "mail received" and e.get("subject") in reports]
            assert {e["subject"] for e in received} == reports
            assert all(e["sender"] == "ann@example.org" and e["size"] > 0 for e in received)

            async def all_read():  # the chat service has read (and answered) all the IRC client sent
                sockets = {s["name"]: s for s in (await web.get("/api/sockets")).json()["services"]}
                chat = sockets["chat"]["connections"]
                done = chat and chat[0]["bytes_in"] == len(said) and chat[0]["info"].get("channels") == 1 \
                    and chat[0]["bytes_out"] > 500
                return sockets if done else None
            sockets = await wait_until(all_read, "the chat service handling the IRC client's lines")
            assert sockets["echo"]["listeners"][0]["endpoint"].endswith(f":{echo_port}")
            envelopes = [c["info"].get("envelope", "") for c in sockets["mail"]["connections"]]
            assert "<carol@example.org> to <dave@example.org>" in envelopes
            chat_conns = sockets["chat"]["connections"]
            assert len(chat_conns) == 1 and chat_conns[0]["info"]["nick"] == "dashwatcher"
            assert chat_conns[0]["info"]["channels"] == 1 and chat_conns[0]["age"] >= 0
            irc_local = irc.getsockname()
            assert chat_conns[0]["peer"] == f"{irc_local[0]}:{irc_local[1]}"
            assert chat_conns[0]["local"] == f"127.0.0.1:{chat_port}"
            assert chat_conns[0]["bytes_in"] == len(said) and chat_conns[0]["bytes_out"] > 500  # welcome, MOTD, JOIN
            events = (await web.get("/api/events")).json()["events"]
            assert any(e["kind"] == "channel created" and e["channel"] == "#ops" and e["nick"] == "dashwatcher"
                       for e in events)

            # the operator closes the IRC connection: the client sees the end
            closed = await web.post("/api/close", json={"service": "chat", "id": chat_conns[0]["id"]})
            assert closed.json() == {"closed": True}
            irc.settimeout(10)
            data = b""
            while chunk := await asyncio.to_thread(irc.recv, 65536):
                data += chunk
            assert any(e["kind"] == "connection closed by the operator" for e in
                       (await web.get("/api/events")).json()["events"])

            async def chat_emptied():  # the client saw the end; the server forgets it on its own schedule
                status = (await web.get("/api/status")).json()
                chat_row = next(s for s in status["services"] if s["name"] == "chat")
                return status if chat_row["open"] == 0 and chat_row["details"]["channels"] == 0 else None
            status = await wait_until(chat_emptied, "the closed IRC connection and its channel gone")
            mail_row = next(s for s in status["services"] if s["name"] == "mail")
            assert mail_row["units"] >= 3
            chat_row = next(s for s in status["services"] if s["name"] == "chat")
            assert chat_row["units"] >= 4 and chat_row["details"]["channels"] == 0  # the last member left
            web_row = next(s for s in status["services"] if s["name"] == "web")
            assert web_row["units"] >= 5  # our own API requests
            assert {p["href"] for p in status["pages"]} >= {"mail/", "chat/"}
        finally:
            await asyncio.to_thread(smtp.close)
            echo.close()
            irc.close()


async def test_metrics_are_prometheus_text_with_the_latency_histograms(tmp_path):
    async with running_up(tmp_path) as ctx, httpx.AsyncClient(base_url=base(ctx), timeout=10) as web:
        await asyncio.to_thread(send_mail, port_of(ctx, "mail"), "for the histogram")
        r = await web.get("/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        opened = {s.labels["service"] for s in families["socketkit_open_connections"].samples}
        assert opened >= SERVICES
        delivery = families["socketkit_smtp_delivery_seconds"]
        count = next(s.value for s in delivery.samples if s.name.endswith("_count"))
        assert count >= 1
        buckets = [s for s in delivery.samples if s.name.endswith("_bucket")]
        assert buckets[-1].labels["le"] == "+Inf" and buckets[-1].value == count
        accepted = {s.labels["service"]: s.value for s in families["socketkit_connections_accepted"].samples}
        assert accepted["mail"] >= 1 and accepted["web"] >= 1


async def test_socketkit_status_reads_a_running_up_through_its_socket(tmp_path):
    async with running_up(tmp_path) as ctx:
        sock = tmp_path / "up.sock"
        server = await start_status_socket(ctx.dashboard, sock)
        try:
            assert oct(sock.stat().st_mode & 0o777) == "0o600"
            status = await asyncio.to_thread(query, sock)
            assert {s["name"] for s in status["services"]} == SERVICES
            assert "echo" in status["listeners"]
            from socketkit.dashboard.status_socket import render

            text = render(status)
            assert "service" in text and "echo" in text
        finally:
            await server.aclose(drain=0)


def _flood_until_closed(port: int) -> bytes:
    """Register on the chat service and flood a channel far past its queue; what came back until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as s:
        s.sendall(b"NICK flooder\r\nUSER f 0 * :f\r\n")
        got = b""
        while b" 001 " not in got:
            chunk = s.recv(65536)
            assert chunk, got
            got += chunk
        s.sendall(b"JOIN #f\r\n" + b"PRIVMSG #f :spam\r\n" * 2000)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            got += chunk
    return got


async def test_a_chat_flood_disconnection_shows_as_a_problem(tmp_path):
    """The errors-and-refusals chart counts the clients a service closed for breaking a limit (Excess
    Flood), not only refused connections and handler errors."""
    async with running_up(tmp_path) as ctx:
        got = await asyncio.to_thread(_flood_until_closed, port_of(ctx, "chat"))
        assert b"Excess Flood" in got
        chat = next(r for r in up.status(ctx) if r["name"] == "chat")
        assert chat["dropped"] == 1
        async with httpx.AsyncClient(base_url=base(ctx), timeout=WAIT) as web:
            async def counted():
                series = (await web.get("/api/series")).json()
                return max((v or 0) for v in series["services"].get("chat", {}).get("problems", [0])) > 0
            await wait_until(counted, "the flood disconnection in the chat's problems series")


async def test_stopping_up_ends_open_live_streams_at_once(tmp_path, caplog):
    """An open dashboard tab (its /api/live event stream) must not hold `socketkit up`'s stop for the
    drain: the stream ends, and the connection it leaves idle closes, without a handler error."""
    caplog.set_level(logging.ERROR)
    ctx = up.UpContext(dashboard_interval=0.2, overrides={"web": ["tcp://127.0.0.1:0"]})
    await up.start_all(ctx, {"web"})
    stopped = False
    try:
        async with httpx.AsyncClient(base_url=base(ctx), timeout=WAIT) as web:
            async with web.stream("GET", "/api/live") as live:
                lines = live.aiter_lines()
                async with asyncio.timeout(WAIT):
                    while "event: tick" not in await anext(lines):
                        pass
                stop = asyncio.create_task(up.stop_all(ctx, drain=60))  # far longer than the test's waits
                # The stream waits at most 5 s for a tick that a stopped dashboard never sends: it must not.
                async with asyncio.timeout(4.5):
                    async for _ in lines:  # to the stream's end
                        pass
                await asyncio.wait_for(stop, WAIT)
                stopped = True
    finally:
        if not stopped:
            await up.stop_all(ctx, drain=0)
    assert not [r for r in caplog.records if "handler failed" in r.getMessage()], caplog.text


async def _call(app: DashboardApp, client: str, path: str, query: bytes = b"", headers=()) -> tuple[int, dict]:
    out: dict = {}

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        if msg["type"] == "http.response.start":
            out["status"] = msg["status"]
            out["headers"] = dict(msg["headers"])

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "client": (client, 5555),
             "headers": list(headers)}
    await app(scope, receive, send)
    return out["status"], out["headers"]


async def test_only_loopback_unless_a_token_or_client_certificates():
    dash = Dashboard(lambda: [], lambda: [])
    assert (await _call(DashboardApp(dash), "127.0.0.1", "/api/status"))[0] == 200
    assert (await _call(DashboardApp(dash), "192.0.2.7", "/api/status"))[0] == 403
    assert (await _call(DashboardApp(dash), "192.0.2.7", "/metrics"))[0] == 403
    app = DashboardApp(dash, token="s3cret")
    assert (await _call(app, "127.0.0.1", "/api/status"))[0] == 403  # a token is asked of everyone
    status, headers = await _call(app, "192.0.2.7", "/", b"token=s3cret")
    assert status == 200 and b"HttpOnly" in headers[b"set-cookie"]
    cookie = headers[b"set-cookie"].split(b";")[0]
    assert (await _call(app, "192.0.2.7", "/api/status", headers=[(b"cookie", cookie)]))[0] == 200
    assert (await _call(app, "192.0.2.7", "/metrics", headers=[(b"authorization", b"Bearer s3cret")]))[0] == 200
    assert (await _call(app, "192.0.2.7", "/api/status", b"token=wrong"))[0] == 403
    assert (await _call(DashboardApp(dash, client_certs=True), "192.0.2.7", "/api/status"))[0] == 200


def test_series_are_bounded_and_counters_become_rates():
    store = SeriesStore()
    for t in range(FINE_POINTS + 500):
        store.sample(1000.0 + t, {"web": {"open": 3, "accepted": 10 * t, "bytes_in": 100 * t}})
    view = store.view("15m")
    assert len(view["times"]) == FINE_POINTS
    assert set(view["services"]["web"]["open"]) == {3}
    assert view["services"]["web"]["accepted"][-1] == 10.0 and view["services"]["web"]["bytes_in"][-1] == 100.0
    coarse = store.view("24h")
    assert 1 <= len(coarse["times"]) <= 30 and coarse["services"]["web"]["accepted"][-1] == 10.0


def test_a_service_that_starts_between_samples_shows_what_it_counted_at_once():
    """Used to: its first sample became the baseline, so mail received before the dashboard first saw the
    mail service (it starts after web, under a busy machine a sample later) never showed as messages/s."""
    store = SeriesStore()
    store.sample(1000.0, {"web": {"accepted": 0}})
    store.sample(1000.5, {"web": {"accepted": 0}, "mail": {"accepted": 3, "units": 3}})
    store.sample(1001.0, {"web": {"accepted": 0}, "mail": {"accepted": 3, "units": 3}})
    mail = store.view("15m")["services"]["mail"]
    assert mail["units"][-2:] == [6.0, 0.0] and mail["accepted"][-2] == 6.0  # 3 in half a second, then none


def test_the_event_log_is_bounded():
    log = type(EVENTS)(size=50)
    for i in range(500):
        log.emit("tick", service="x", n=i, text="y" * 1000)
    events = log.since(0)
    assert len(events) == 50 and events[-1]["n"] == 499 and len(events[-1]["text"]) < 400
    assert log.counts["tick"] == 500
    log.emit("clash", service="x", id=7, time="mine")  # fields never overwrite the log's own keys
    last = log.since(0)[-1]
    assert last["id"] == log.last_id and last["kind"] == "clash" and last["id_"] == 7 and last["time_"] == "mine"


@pytest.mark.parametrize("limit", ["max_connections"])
async def test_limit_hits_reach_the_event_stream(tmp_path, limit):
    from socketkit.net.limits import Limits
    from socketkit.net.server import start_server

    async def park(stream):
        await stream.receive()

    server = await start_server("tcp://127.0.0.1:0", park, limits=Limits(max_connections=1), name="tiny")
    try:
        before = EVENTS.last_id
        keep = socket.create_connection(("127.0.0.1", server.endpoints[0].port))

        async def kept():  # accepted (and counted) before the others come
            return server.stats.open == 1
        await wait_until(kept, "the first connection accepted")
        for _ in range(3):
            extra = socket.create_connection(("127.0.0.1", server.endpoints[0].port))
            extra.close()

        async def refused():
            return [e for e in EVENTS.since(before) if e["service"] == "tiny" and e["kind"] == "connections refused"]
        hits = await wait_until(refused, "a refusal event")
        assert hits[0]["limit"] == f"{limit}=1"
        keep.close()
    finally:
        await server.aclose(drain=0)
