"""The chat's browser side against a real service: IRC over WebSocket (`websockets` client) meeting a raw
TCP IRC client in one channel, and the chat page itself in headless Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
from importlib import resources
from pathlib import Path
from urllib.parse import urlencode

import pytest
from websockets.asyncio.client import connect as ws_connect

import socketkit.web
from socketkit.chat.server import ChatConfig, ChatService
from socketkit.chat.web import ChatWebApp

WAIT = 10.0
XSS = "<img src=x onerror=alert(1)>"


@contextlib.asynccontextmanager
async def chat_stack(wrap=None, config: ChatConfig | None = None):
    """The chat service on a free TCP port and its web app (optionally wrapped) on another."""
    service = ChatService(config or ChatConfig())
    await service.start(["tcp://127.0.0.1:0"])
    app = ChatWebApp(service)
    web = await socketkit.web.start(wrap(app) if wrap else app, ["tcp://127.0.0.1:0"])
    try:
        yield service.servers[0].endpoints[0].port, web.server.endpoints[0].port
    finally:
        await web.aclose(drain=0)
        await service.aclose(drain=0)


class TCPClient:
    """A plain IRC client over TCP, as irssi or weechat would connect."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seen: list[str] = []

    @classmethod
    async def register(cls, port: int, nick: str) -> TCPClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        client = cls(reader, writer)
        await client.send(f"NICK {nick}", f"USER {nick} 0 * :{nick}")
        await client.expect(rf"^:\S+ 001 {re.escape(nick)} ")
        return client

    async def send(self, *lines: str) -> None:
        for line in lines:
            self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def expect(self, pattern: str, timeout: float = WAIT) -> str:
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                raw = await self.reader.readline()
                if not raw:
                    raise AssertionError(f"connection closed waiting for {pattern!r}; saw {self.seen[-10:]}")
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                self.seen.append(line)
                if line.startswith("PING "):
                    await self.send("PONG " + line[5:])
                if regex.search(line):
                    return line

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


class WSClient:
    """IRC over WebSocket: one text message per line, no CRLF."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.seen: list[str] = []

    async def send(self, *lines: str) -> None:
        for line in lines:
            await self.ws.send(line)

    async def expect(self, pattern: str, timeout: float = WAIT) -> str:
        regex = re.compile(pattern)
        async with asyncio.timeout(timeout):
            while True:
                line = await self.ws.recv()
                assert isinstance(line, str), "IRC lines arrive as WebSocket text messages"
                assert "\r" not in line and "\n" not in line, f"one IRC line per message, no CRLF: {line!r}"
                self.seen.append(line)
                if line.startswith("PING "):
                    await self.send("PONG " + line[5:])
                if regex.search(line):
                    return line


async def test_websocket_and_tcp_clients_share_a_channel():
    async with chat_stack() as (irc_port, web_port):
        async with ws_connect(f"ws://127.0.0.1:{web_port}/ws", subprotocols=["text.ircv3.net"], proxy=None,
                              open_timeout=WAIT) as ws:
            assert ws.subprotocol == "text.ircv3.net"
            web = WSClient(ws)
            await web.send("CAP LS 302", "NICK wsuser", "USER ws 0 * :web user")
            caps = await web.expect(r"^:\S+ CAP \* LS ")
            for cap in ("server-time", "echo-message", "message-tags", "batch", "multi-prefix", "away-notify"):
                assert cap in caps.split(":", 2)[2].split()
            await web.send("CAP REQ :server-time echo-message message-tags")
            await web.expect(r"^(@\S+ )?:\S+ CAP wsuser ACK :server-time echo-message message-tags$|CAP \* ACK")
            await web.send("CAP END")
            await web.expect(r"^(@\S+ )?:\S+ 001 wsuser ")

            tcp = await TCPClient.register(irc_port, "tcpuser")
            try:
                await tcp.send("JOIN #lobby")
                await tcp.expect(r" 366 tcpuser #lobby ")

                await web.send("JOIN #lobby")
                await web.expect(r"^(@\S+ )?:wsuser!\S+ JOIN #lobby$")
                names = await web.expect(r" 353 wsuser . #lobby :")
                assert "@tcpuser" in names and "wsuser" in names
                await tcp.expect(r"^:wsuser!\S+ JOIN #lobby$")

                # WebSocket -> TCP, and echo-message returns our own line with its server time.
                await web.send("PRIVMSG #lobby :hello from the web")
                echo = await web.expect(r":wsuser!\S+ PRIVMSG #lobby :hello from the web$")
                assert re.match(r"^@(\S+;)?time=\d{4}-\d\d-\d\dT", echo), echo
                await tcp.expect(r"^:wsuser!\S+ PRIVMSG #lobby :hello from the web$")

                # TCP -> WebSocket, with the server-time tag the browser shows.
                await tcp.send("PRIVMSG #lobby :hello from tcp ✓")
                line = await web.expect(r":tcpuser!\S+ PRIVMSG #lobby :hello from tcp ✓$")
                assert "time=" in line.split(" ", 1)[0]

                await web.send("PING :are-you-there")
                await web.expect(r" PONG \S+ :?are-you-there$")

                await web.send("QUIT :bye")
                await tcp.expect(r"^:wsuser!\S+ QUIT :")
            finally:
                await tcp.close()


async def test_page_is_served_with_its_assets_and_a_strict_csp():
    async with chat_stack() as (_, web_port):
        for path, ctype in (("/", "text/html"), ("/chat.js", "text/javascript"), ("/chat.css", "text/css")):
            reader, writer = await asyncio.open_connection("127.0.0.1", web_port)
            writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            response = await asyncio.wait_for(reader.read(), WAIT)
            writer.close()
            head, _, body = response.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert f"content-type: {ctype}".encode() in head.lower()
            assert b"content-security-policy: default-src 'none'; script-src 'self'" in head.lower()
            assert len(body) > 500


def test_page_source_keeps_to_the_csp_and_never_parses_network_text_as_html():
    static = resources.files("socketkit.chat").joinpath("static")
    html = static.joinpath("chat.html").read_text()
    js = re.sub(r"(?m)^\s*//.*$", "", static.joinpath("chat.js").read_text())  # comments may name the sinks
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == [], "inline scripts are blocked by the CSP"
    assert "<style" not in html and not re.search(r"\sstyle=", html), "inline styles are blocked by the CSP"
    assert not re.search(r"\son[a-z]+=", html), "inline event handlers are blocked by the CSP"
    assert not re.search(r"https?://", html), "no external resources"
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        found = sink in js
        assert not found, f"{sink} must not be used: network text goes through textContent only"


@pytest.fixture
def chromium():
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium); the chat page is not tested")
    return path


def with_report_endpoint(reports: asyncio.Queue):
    """The chat app plus POST /report, where the page (with ?report=1) sends what it rendered."""

    def wrap(app):
        async def wrapped(scope, receive, send):
            if scope["type"] == "http" and scope["path"] == "/report" and scope["method"] == "POST":
                body = b""
                while True:
                    part = await receive()
                    body += part.get("body", b"")
                    if not part.get("more_body"):
                        break
                await reports.put(json.loads(body))
                await send({"type": "http.response.start", "status": 204, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
            await app(scope, receive, send)

        return wrapped

    return wrap


@contextlib.asynccontextmanager
async def browser(chromium: str, url: str, tmp_path: Path):
    log = open(tmp_path / "chromium.log", "wb")  # noqa: SIM115 - closed below, after Chromium is gone
    proc = await asyncio.create_subprocess_exec(
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", "--remote-debugging-port=0", "--window-size=1000,700", url,
        stdout=asyncio.subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # Chromium's renderers and zygote too
        await proc.wait()
        log.close()


async def test_chat_page_in_chromium(chromium, tmp_path):
    """The page connects, registers (renaming itself past a nick in use), joins, shows a hostile message
    as text, and sends a message a TCP client receives."""
    reports: asyncio.Queue[dict] = asyncio.Queue()
    async with chat_stack(with_report_endpoint(reports)) as (irc_port, web_port):
        squatter = await TCPClient.register(irc_port, "webby")  # the page must settle for webby_
        bot = await TCPClient.register(irc_port, "tcpbot")
        try:
            await bot.send("JOIN #lobby", "TOPIC #lobby :Welcome to the lobby")
            await bot.expect(r"^:tcpbot!\S+ TOPIC #lobby :")
            query = urlencode({"nick": "webby", "channel": "#lobby", "autoconnect": "1",
                               "say": "hello from chromium", "report": "1"})
            url = f"http://127.0.0.1:{web_port}/?{query}"
            async with browser(chromium, url, tmp_path):
                try:
                    await bot.expect(r"^:webby_!\S+ JOIN #lobby$", timeout=20)
                    await bot.send(f"PRIVMSG #lobby :look {XSS} here")
                    await bot.expect(r"^:webby_!\S+ PRIVMSG #lobby :hello from chromium$")
                    async with asyncio.timeout(10):
                        while True:
                            report = await reports.get()
                            lines = report["buffers"].get("#lobby", [])
                            if any(XSS in line for line in lines) and any("hello from chromium" in x for x in lines):
                                break
                except TimeoutError:
                    log = (tmp_path / "chromium.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"the page did not get there; Chromium said:\n{log}") from None
        finally:
            await bot.close()
            await squatter.close()
    assert report["nick"] == "webby_"
    assert report["images"] == 0 and "img" not in report["elements"], report
    mine = [line for line in lines if "hello from chromium" in line]
    assert len(mine) == 1 and "webby_" in mine[0], "own line shown once, when echoed by the server"
    hostile = next(line for line in lines if XSS in line)
    assert re.match(r"^\d\d:\d\dtcpbotlook <img src=x onerror=alert\(1\)> here$", hostile), hostile
    assert any("Welcome to the lobby" in line for line in lines), "topic shown on join"


async def test_chat_page_fetches_history_with_chathistory(chromium, tmp_path):
    """With history kept, the page asks for it (draft/chathistory, in a batch) and shows what was said
    before it came, in order and before its own join."""
    reports: asyncio.Queue[dict] = asyncio.Queue()
    config = ChatConfig(data_dir=tmp_path / "chat")
    async with chat_stack(with_report_endpoint(reports), config) as (irc_port, web_port):
        bot = await TCPClient.register(irc_port, "tcpbot")
        try:
            await bot.send("JOIN #lobby", "PRIVMSG #lobby :first, before anyone came",
                           "PRIVMSG #lobby :second <b>still text</b>")
            await bot.send("PING :sync")
            await bot.expect(r" PONG \S+ :?sync$")
            query = urlencode({"nick": "histy", "channel": "#lobby", "autoconnect": "1", "report": "1"})
            async with browser(chromium, f"http://127.0.0.1:{web_port}/?{query}", tmp_path):
                try:
                    async with asyncio.timeout(20):
                        while True:
                            report = await reports.get()
                            lines = report["buffers"].get("#lobby", [])
                            if any("second" in line for line in lines):
                                break
                except TimeoutError:
                    log = (tmp_path / "chromium.log").read_text(errors="replace")[-3000:]
                    raise AssertionError(f"no history shown; Chromium said:\n{log}") from None
        finally:
            await bot.close()
    texts = [re.sub(r"^\d\d:\d\d", "", line) for line in lines]
    first = texts.index("tcpbotfirst, before anyone came")
    second = texts.index("tcpbotsecond <b>still text</b>")
    joined = next(i for i, t in enumerate(texts) if "You joined #lobby" in t)
    assert first < second < joined, texts
    assert report["elements"] == [], "history text is text too"
