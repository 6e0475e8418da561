"""The inbox over real sockets: messages put in a MailStore, read back with httpx from a running server."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import json
import os
import shutil
import signal
import smtplib
from collections.abc import AsyncIterator
from email.message import EmailMessage
from pathlib import Path

import httpx
import pytest
from helpers import WAIT, Spawned, cli_env, run_cli, wait_for
from websockets.asyncio.client import connect as ws_connect

import socketkit
from socketkit import web
from socketkit.dashboard.app import DashboardApp
from socketkit.dashboard.core import Dashboard
from socketkit.mail import inbox_page
from socketkit.mail.inbox import Inbox, decode_id, encode_id
from socketkit.mail.maildir import MailStore
from socketkit.mail.server import MailConfig
from socketkit.mail.server import start as start_mail

BOB = "bob@example.org"


@contextlib.asynccontextmanager
async def serving(app) -> AsyncIterator[httpx.AsyncClient]:
    server = await web.start(app, ["tcp://127.0.0.1:0"])
    port = server.server.endpoints[0].port
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=WAIT) as client:
            yield client
    finally:
        await server.aclose(drain=0)


def multipart() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Zoë Sender <zoe@example.org>"
    msg["To"] = BOB
    msg["Subject"] = "Grüße aus Köln ✓"      # the policy writes it as RFC 2047 encoded-words
    msg["Date"] = "Tue, 03 Mar 2026 10:00:00 +0100"
    msg.set_content("Hallo Bob,\nschöne Grüße.\n", charset="iso-8859-1")
    msg.add_alternative("<p>Hallo <b>Bob</b><script>alert(1)</script>"
                        "<img src='https://tracker.example/p.gif'></p>", subtype="html")
    msg.add_attachment(b"%PDF-1.4 not really\x00\xff", maintype="application", subtype="pdf",
                       filename="Bericht März.pdf")
    msg.add_attachment("a,b\n1,2\n", subtype="csv", filename="../../etc/passwd")
    return msg


# An 8-bit windows-1252 body, and a subject in RFC 2047 Q-encoded ISO-8859-1, as old mailers send them.
LEGACY = (b"From: =?iso-8859-1?q?J=F6rg?= <jorg@example.org>\r\nTo: bob@example.org\r\n"
          b"Subject: =?ISO-8859-1?Q?=C0_bient=F4t?=\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: text/plain; charset=windows-1252\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
          b"Caf\xe9 \x80 5\r\n")


async def put(store: MailStore, data: bytes | EmailMessage, to: str = BOB) -> str:
    raw = data.as_bytes() if isinstance(data, EmailMessage) else data
    [(mailbox, message_id)] = await store.deliver([(to, raw)])
    return encode_id(mailbox, message_id)


@pytest.fixture
def store(tmp_path: Path) -> MailStore:
    return MailStore(tmp_path / "mail")


# -- reading ---------------------------------------------------------------------------------------
async def test_list_and_details(store: MailStore):
    first = await put(store, LEGACY)
    second = await put(store, multipart())
    await put(store, b"Subject: for carol\r\n\r\nhi\r\n", to="carol@example.org")
    async with serving(Inbox(store)) as client:
        listing = (await client.get("/api/messages")).json()
        assert [m["subject"] for m in listing] == ["for carol", "Grüße aus Köln ✓", "À bientôt"]
        m = listing[1]
        assert m["id"] == second and m["mailbox"] == BOB
        assert m["from"] == "Zoë Sender <zoe@example.org>" and m["to"] == BOB
        assert m["has_html"] is True and m["attachments"] == 2
        assert m["date"] == "2026-03-03T10:00:00+01:00"
        assert m["size"] == len(store.mailbox(BOB).get(decode_id(second)[1]))
        assert listing[2]["from"] == "Jörg <jorg@example.org>" and listing[2]["has_html"] is False

        only_bob = (await client.get("/api/messages", params={"mailbox": BOB})).json()
        assert [x["id"] for x in only_bob] == [second, first]
        assert (await client.get("/api/messages", params={"mailbox": "nobody@x"})).json() == []
        boxes = (await client.get("/api/mailboxes")).json()
        assert boxes == [{"name": BOB, "count": 2}, {"name": "carol@example.org", "count": 1}]

        detail = (await client.get(f"/api/messages/{second}")).json()
        assert detail["text"] == "Hallo Bob,\nschöne Grüße.\n"
        assert detail["html"].startswith("<p>Hallo <b>Bob</b><script>")  # raw: the sandbox shows it
        assert ("Subject", "Grüße aus Köln ✓") in [(h["name"], h["value"]) for h in detail["headers"]]
        assert detail["attachments"] == [
            {"index": 0, "filename": "Bericht März.pdf", "content_type": "application/pdf",
             "size": 21, "inline": False},
            {"index": 1, "filename": "passwd", "content_type": "text/csv", "size": 8, "inline": False}]
        assert detail["truncated"] is False

        legacy = (await client.get(f"/api/messages/{first}")).json()
        assert legacy["text"] == "Café € 5\r\n" or legacy["text"] == "Café € 5\n"
        assert legacy["html"] is None and legacy["attachments"] == []


async def test_raw_and_attachment_downloads(store: MailStore):
    mid = await put(store, multipart())
    stored = store.mailbox(BOB).get(decode_id(mid)[1])
    async with serving(Inbox(store)) as client:
        raw = await client.get(f"/api/messages/{mid}/raw")
        assert raw.status_code == 200 and raw.content == stored
        assert raw.headers["content-type"] == "message/rfc822"
        assert raw.headers["content-disposition"].startswith("attachment; filename=")

        pdf = await client.get(f"/api/messages/{mid}/attachments/0")
        assert pdf.content == b"%PDF-1.4 not really\x00\xff"
        assert pdf.headers["content-type"] == "application/pdf"
        assert pdf.headers["content-disposition"] == (
            "attachment; filename=\"Bericht M_rz.pdf\"; filename*=UTF-8''Bericht%20M%C3%A4rz.pdf")
        assert pdf.headers["x-content-type-options"] == "nosniff"
        assert "sandbox" in pdf.headers["content-security-policy"]
        csv = await client.get(f"/api/messages/{mid}/attachments/1")
        assert csv.content == b"a,b\n1,2\n"
        assert csv.headers["content-disposition"] == 'attachment; filename="passwd"'
        for bad in ("2", "-1", "01x", "99999999", ""):
            assert (await client.get(f"/api/messages/{mid}/attachments/{bad}")).status_code == 404


async def test_html_part_is_sandboxed(store: MailStore):
    mid = await put(store, multipart())
    plain = await put(store, LEGACY)
    async with serving(Inbox(store)) as client:
        r = await client.get(f"/api/messages/{mid}/html")
        assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
        csp = r.headers["content-security-policy"]
        assert csp.startswith("default-src 'none'; style-src 'unsafe-inline'; img-src data:")
        assert "script-src" not in csp and "sandbox" in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert "<script>alert(1)</script>" in r.text  # served as is; the CSP and the iframe stop it
        assert (await client.get(f"/api/messages/{plain}/html")).status_code == 404

        page = await client.get("/")
        assert page.status_code == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        page_csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in page_csp and "unsafe-inline" not in page_csp
        assert "<script>" not in page.text and '<script src="inbox.js"' in page.text
        assert '<iframe id="html" sandbox ' in page.text  # no allow-scripts, no allow-same-origin
        js = await client.get("/inbox.js")
        assert js.headers["content-type"] == "text/javascript; charset=utf-8"
        assert "innerHTML" not in js.text.replace("never innerHTML", "") and "EventSource" in js.text
        assert (await client.get("/inbox.css")).status_code == 200


async def test_bounded_parsing(store: MailStore, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(inbox_page, "MAX_PARTS", 5)
    many = EmailMessage()
    many["Subject"] = "many parts"
    many.set_content("body")
    for i in range(9):
        many.add_attachment(b"x" * i, maintype="application", subtype="octet-stream", filename=f"f{i}")
    mid = await put(store, many)
    broken = await put(store, b"\xff\xfe garbage without headers \x00\r\n")
    async with serving(Inbox(store)) as client:
        detail = (await client.get(f"/api/messages/{mid}")).json()
        assert detail["truncated"] is True and len(detail["attachments"]) == 4
        assert (await client.get(f"/api/messages/{broken}")).status_code == 200
        assert len((await client.get("/api/messages")).json()) == 2


# -- deleting --------------------------------------------------------------------------------------
async def test_delete_one_and_all(store: MailStore):
    a = await put(store, LEGACY)
    b = await put(store, multipart(), to="carol@example.org")
    c = await put(store, LEGACY)
    async with serving(Inbox(store)) as client:
        assert (await client.delete(f"/api/messages/{a}")).status_code == 204
        assert (await client.delete(f"/api/messages/{a}")).status_code == 404
        assert (await client.get(f"/api/messages/{a}")).status_code == 404
        assert [m["id"] for m in (await client.get("/api/messages")).json()] == [c, b]
        r = await client.delete("/api/messages", params={"mailbox": "carol@example.org"})
        assert r.status_code == 204
        assert [m["id"] for m in (await client.get("/api/messages")).json()] == [c]
        assert (await client.post("/api/messages")).status_code == 405
        r = await client.put(f"/api/messages/{c}/raw")
        assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"
        assert (await client.delete("/api/messages")).status_code == 204
        assert (await client.get("/api/messages")).json() == []


# -- what must be refused ----------------------------------------------------------------------------
async def raw_request(client: httpx.AsyncClient, target: str) -> int:
    """The status for a request target sent byte for byte (httpx would normalise dot segments)."""
    stream = await socketkit.connect(f"tcp://{client.base_url.host}:{client.base_url.port}")
    try:
        await stream.send(f"GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        head = await stream.receive_until(b"\r\n", max_size=1000)
        return int(head.split()[1])
    finally:
        await stream.aclose()


async def test_traversal_and_forged_ids_are_404(store: MailStore, tmp_path: Path):
    mid = await put(store, LEGACY)
    mailbox, message_id = decode_id(mid)
    (tmp_path / "secret").write_text("top secret")
    forged = [
        encode_id(mailbox, "../../secret"), encode_id("..", "secret"), encode_id("../mail", message_id),
        encode_id(mailbox, ".hidden"), encode_id("", message_id), encode_id(mailbox, ""),
        base64.urlsafe_b64encode(b"../../../secret").decode().rstrip("="),
        mid + "=", mid + "A", mid[:-1], mid[:-1] + "+", mid[:-1] + "/", "not base64!", "%2e%2e", "a.b",
    ]
    async with serving(Inbox(store)) as client:
        for bad in forged:
            for suffix in ("", "/raw", "/html", "/attachments/0"):
                r = await client.get(f"/api/messages/{bad}{suffix}")
                assert r.status_code == 404, (bad, suffix)
                assert b"secret" not in r.content
            assert (await client.delete(f"/api/messages/{bad}")).status_code == 404
        for target in ("/api/messages/../../secret", "/api/messages/..%2F..%2Fsecret", "/api/messages/..",
                       f"/api/messages/{mid}%2Fraw", "/api/messages/%2e%2e/%2e%2e/secret",
                       f"/api/messages/{mid}/raw%00", "/..%5c..%5csecret", f"/api/messages/{mid}/raw/x"):
            assert await raw_request(client, target) == 404, target
        assert await raw_request(client, f"/api/messages/{mid}/raw") == 200
        assert (await client.get("/api/nothing")).status_code == 404
    assert store.mailbox(mailbox).list() == [message_id]


def test_filenames_are_made_safe():
    assert inbox_page.safe_filename("..\\..\\boot.ini", 0, "text/plain") == "boot.ini"
    assert inbox_page.safe_filename("a\x00b\r\nc.txt", 0, "text/plain") == "abc.txt"
    assert inbox_page.safe_filename("...", 3, "image/png") == "attachment-3.png"
    assert inbox_page.safe_filename(None, 1, "application/x-unknown") == "attachment-1.bin"
    long = inbox_page.safe_filename("x" * 500 + ".tar.gz", 0, "")
    assert len(long) <= 200 and long.endswith(".gz")
    assert inbox_page.content_disposition('we"ird;%.txt') == (
        b"attachment; filename=\"we_ird__.txt\"; filename*=UTF-8''we%22ird%3B%25.txt")


# -- live events -----------------------------------------------------------------------------------
async def read_event(lines: AsyncIterator[str], timeout: float = WAIT) -> tuple[str, dict | None]:
    """The next event (name, data) or comment ("comment", None) from an SSE line stream."""
    event, data = "message", None
    async with asyncio.timeout(timeout):
        async for line in lines:
            if line.startswith(":"):
                return "comment", None
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = json.loads(line[6:])
            elif line == "" and data is not None:
                return event, data
    raise AssertionError("the event stream ended")


async def test_events_on_delivery_and_deletion(store: MailStore):
    inbox = Inbox(store)
    async with serving(inbox) as client:
        async with client.stream("GET", "/api/events") as r:
            assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
            lines = r.aiter_lines()
            assert await read_event(lines) == ("comment", None)
            assert len(store.on_delivery) == 1 and len(inbox.subscribers) == 1
            mid = await put(store, multipart())
            assert await read_event(lines) == ("delivered", {"id": mid, "mailbox": BOB})
            assert (await client.delete(f"/api/messages/{mid}")).status_code == 204
            assert await read_event(lines) == ("deleted", {"id": mid, "mailbox": BOB})
            await client.delete("/api/messages")
            assert await read_event(lines) == ("cleared", {"mailbox": None, "deleted": 0})
        # Closing the response closes the connection: http.disconnect ends the stream and its hook.
        await wait_for(lambda: not store.on_delivery and not inbox.subscribers, what="the hook to go")


async def test_heartbeat_and_close(store: MailStore):
    inbox = Inbox(store, heartbeat=0.05)
    async with serving(inbox) as client:
        async with client.stream("GET", "/api/events") as r:
            lines = r.aiter_lines()
            for _ in range(3):
                assert await read_event(lines) == ("comment", None)
            inbox.close()  # what lifespan shutdown does: every stream ends, cleanly
            async with asyncio.timeout(WAIT):
                rest = [line async for line in lines]
            assert all(line.startswith(":") or not line for line in rest)
        assert not store.on_delivery and not inbox.subscribers


async def test_slow_client_is_dropped_and_delivery_goes_on(store: MailStore):
    inbox = Inbox(store, queue_size=2)
    async with serving(inbox) as client:
        async with client.stream("GET", "/api/events") as r:
            lines = r.aiter_lines()
            await read_event(lines)
            # Three copies: three hook calls before the stream's writer runs again; the queue holds two.
            stored = await store.deliver([(f"u{i}@example.org", b"Subject: x\r\n\r\n") for i in range(3)])
            assert len(stored) == 3
            with pytest.raises(httpx.HTTPError):
                async with asyncio.timeout(WAIT):
                    async for _line in lines:
                        pass
        await wait_for(lambda: not store.on_delivery and not inbox.subscribers, what="the hook to go")
        assert len((await client.get("/api/messages")).json()) == 3


# -- mounted, and end to end ------------------------------------------------------------------------
async def test_mounted_under_the_dashboard(store: MailStore):
    mid = await put(store, LEGACY)
    landing = DashboardApp(Dashboard(lambda: [], lambda: []))
    landing.mount("/mail", Inbox(store), "Mail inbox")
    async with serving(landing) as client:
        r = await client.get("/mail")
        assert r.status_code == 301 and r.headers["location"] == "/mail/"
        assert 'src="inbox.js"' in (await client.get("/mail/")).text
        assert (await client.get("/mail/inbox.js")).status_code == 200
        assert [m["id"] for m in (await client.get("/mail/api/messages")).json()] == [mid]
        assert (await client.get(f"/mail/api/messages/{mid}/raw")).content == LEGACY
        assert (await client.head("/mail/api/messages")).content == b""
        assert {"href": "mail/", "title": "Mail inbox"} in (await client.get("/api/status")).json()["pages"]


async def test_smtp_to_inbox_end_to_end(tmp_path: Path):
    config = MailConfig(maildir=tmp_path / "mail", domains=("example.org",), hostname="mx.test",
                        starttls=False)
    mail = await start_mail(config, ["tcp://127.0.0.1:0"])
    try:
        async with serving(Inbox(mail.store)) as client:
            async with client.stream("GET", "/api/events") as events:
                lines = events.aiter_lines()
                await read_event(lines)

                def send() -> None:
                    with smtplib.SMTP("127.0.0.1", mail.endpoints[0].port, timeout=WAIT) as smtp:
                        smtp.send_message(multipart())

                await asyncio.to_thread(send)
                kind, data = await read_event(lines)
                assert kind == "delivered" and data["mailbox"] == BOB
            listing = (await client.get("/api/messages")).json()
            assert [(m["id"], m["subject"]) for m in listing] == [(data["id"], "Grüße aus Köln ✓")]
            detail = (await client.get(f"/api/messages/{data['id']}")).json()
            assert detail["headers"][0]["name"] == "Received" and "mx.test" in detail["headers"][0]["value"]
            assert detail["attachments"][0]["filename"] == "Bericht März.pdf"
    finally:
        await mail.aclose(drain=0)


def test_cli_mail_with_web(tmp_path: Path):
    """`socketkit mail --web URL`: one process receives over SMTP and serves the inbox."""
    args = ["mail", "--listen", "tcp://127.0.0.1:0", "--web", "tcp://127.0.0.1:0", "--accept-all",
            "--no-starttls", "--maildir", str(tmp_path / "mail")]
    with Spawned(*args, env=cli_env(SOCKETKIT_DATA=str(tmp_path / "data"))) as proc:
        inbox_url = proc.read_until(r"inbox on tcp://(\S+)").group(1)
        smtp_port = int(proc.read_until(r"listening on tcp://\S+:(\d+)").group(1))
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=WAIT) as smtp:
            smtp.send_message(multipart())
        listing = httpx.get(f"http://{inbox_url}/api/messages", timeout=WAIT).json()
        assert [m["subject"] for m in listing] == ["Grüße aus Köln ✓"]
        proc.signal(signal.SIGINT)
        assert proc.wait()[0] == 0
    refused = run_cli("mail", "--web", "tcp://127.0.0.1:0", "--workers", "2")
    assert refused.returncode != 0 and b"--web" in refused.stderr


async def test_page_in_headless_chromium(store: MailStore, tmp_path: Path):
    """The real page in a real browser: list, view, live update over EventSource, delete button."""
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(chromium).exists():
        pytest.skip("chromium is not installed; the page is not tried in a browser")
    mid = await put(store, multipart())
    profile = tmp_path / "profile"
    async with serving(Inbox(store)) as client:
        proc = await asyncio.create_subprocess_exec(
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}", "--remote-debugging-port=0", f"{client.base_url}/#{mid}",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            active = profile / "DevToolsActivePort"
            # (two lines, the port and the browser's path: a file read while being written has fewer)
            await wait_for(lambda: active.exists() and len(active.read_text().split()) >= 2, timeout=20)
            devtools = int(active.read_text().split()[0])

            async def page_target():
                targets = (await client.get(f"http://127.0.0.1:{devtools}/json")).json()
                return next((t for t in targets if t["type"] == "page"), None)

            page = await wait_for(page_target, what="the browser's page target")
            async with ws_connect(page["webSocketDebuggerUrl"], max_size=None) as ws:
                calls = iter(range(1, 10**6))

                async def js(expression: str):
                    call = next(calls)
                    await ws.send(json.dumps({"id": call, "method": "Runtime.evaluate",
                                              "params": {"expression": expression, "returnByValue": True}}))
                    while True:
                        reply = json.loads(await ws.recv())
                        if reply.get("id") == call:
                            return reply["result"]["result"].get("value")

                rows = "document.querySelectorAll('#list tr').length"
                await wait_for(lambda: js(f"{rows} === 1 && $status()".replace(
                    "$status()", "document.getElementById('status').textContent === 'live'")), timeout=10)
                await wait_for(lambda: js("document.getElementById('subject').textContent"), timeout=10)
                assert await js("document.getElementById('subject').textContent") == "Grüße aus Köln ✓"
                text = await js("document.getElementById('text').textContent")
                assert text == "Hallo Bob,\nschöne Grüße.\n"
                assert await js("[...document.querySelectorAll('#attachments a')].map(a => a.textContent)"
                                ) == ["Bericht März.pdf", "passwd"]
                frame = "document.getElementById('html')"
                assert await js(f"{frame}.getAttribute('src')") == f"api/messages/{mid}/html"
                assert await js(f"{frame}.getAttribute('sandbox')") == ""
                assert await js(f"{frame}.contentDocument === null")  # an opaque origin: not ours

                await put(store, LEGACY)  # arrives live, no reload
                await wait_for(lambda: js(f"{rows} === 2"), timeout=10, what="the live update")
                await js("document.getElementById('delete').click()")
                await wait_for(lambda: js(f"{rows} === 1 && document.getElementById('view').hidden"),
                               timeout=10, what="the deleted message to go")
            assert store.mailbox(BOB).list() and mid not in [m["id"] for m in
                                                            (await client.get("/api/messages")).json()]
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the browser and every process it started
            await proc.wait()
    # Collect the browser session's cyclic garbage now: on CPython 3.11 its finalizers, run by a later
    # collection inside pytest's ast.parse, can trip "AST constructor recursion depth mismatch".
    gc.collect()
