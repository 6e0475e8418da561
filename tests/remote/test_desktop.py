"""`socketkit remote desktop` as a service: the page, the token (401/403 before anything reaches the VNC
server), guessing slowed down, limits, the audit log, TLS and client certificates, the CLI's one line and
URL, and `socketkit up`'s hook. A fake VNC server (a greeting, then echo) counts what reaches it."""

from __future__ import annotations

import asyncio
import json
import re
import ssl
from types import SimpleNamespace

import pytest
from helpers import WAIT, Spawned, cli_env, refused_port, running_server, wait_for
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from socketkit.net import certs
from socketkit.remote.desktop import (
    DesktopConfig,
    DesktopLimits,
    DesktopService,
    start_desktop_for_up,
    vnc_answers,
)
from socketkit.web.wsclient import WebSocketClient, WebSocketError

TOKEN = "correct-horse-battery"


class FakeVNC:
    """Greets like a VNC server, then echoes; remembers every connection and byte that reached it."""

    def __init__(self) -> None:
        self.connections = 0
        self.received = b""

    async def __call__(self, stream) -> None:
        self.connections += 1
        await stream.send(b"RFB 003.008\n")
        async for chunk in stream:
            self.received += chunk
            await stream.send(chunk)


async def desktop(tmp_path, vnc_server, listen="tcp://127.0.0.1:0", **limits) -> DesktopService:
    service = DesktopService(DesktopConfig(vnc=str(vnc_server.endpoints[0]), listen=[listen], token=TOKEN,
                                           audit_log=tmp_path / "audit.log", limits=DesktopLimits(**limits)))
    await service.start()
    return service


def audit(tmp_path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]


def port_of(service: DesktopService) -> int:
    return service.server.endpoints[0].port


async def http_get(port: int, path: str, extra: bytes = b"") -> tuple[str, dict, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), extra))
    head = (await reader.readuntil(b"\r\n\r\n")).decode()
    headers = dict(line.lower().split(": ", 1) for line in head.split("\r\n")[1:] if line)
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    writer.close()
    return head.split("\r\n")[0], headers, body


async def test_the_page_and_novnc_are_served_with_a_strict_csp(tmp_path):
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        service = await desktop(tmp_path, vs)
        try:
            port = port_of(service)
            status, headers, page = await http_get(port, "/")
            assert status == "HTTP/1.1 200 OK" and b'src="desktop.js"' in page
            assert "frame-ancestors 'none'" in headers["content-security-policy"]
            assert headers["x-content-type-options"] == "nosniff"
            assert not re.search(rb"https?://", page), "nothing from another host"
            status, headers, rfb = await http_get(port, "/novnc/core/rfb.js")
            assert status.endswith("200 OK") and headers["content-type"].startswith("text/javascript")
            assert b"export default class RFB" in rfb
            status, _, license_text = await http_get(port, "/novnc/LICENSE.txt")
            assert b"MPL" in license_text
            status, _, _ = await http_get(port, "/novnc/core/rfb.js", b'If-None-Match: ' + headers["etag"].encode() + b"\r\n")
            assert status.endswith("304 Not Modified")
            for path in ("/../../etc/passwd", "/novnc/../desktop.py", "/nothing"):
                assert (await http_get(port, path))[0].endswith("404 Not Found"), path
            assert vnc.connections == 0, "a page load never touches the VNC server"
        finally:
            await service.aclose()


@pytest.mark.parametrize("query, status", [("", 401), ("?token=wrong-token-x", 403), ("?token=", 401),
                                           (f"?token={TOKEN}&token=again", 403)])
async def test_a_websocket_without_the_right_token_is_refused_before_the_vnc_server_hears_of_it(tmp_path, query, status):
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        service = await desktop(tmp_path, vs)
        try:
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(f"ws://127.0.0.1:{port_of(service)}/websockify{query}"):
                    pass
            assert refused.value.response.status_code == status
            assert vnc.connections == 0
        finally:
            await service.aclose()
    refusals = [r for r in audit(tmp_path) if r["event"] == "desktop-refused"]
    assert refusals and refusals[0]["status"] == status and refusals[0]["client"].startswith("127.0.0.1:")


async def test_the_bridge_passes_bytes_unchanged_and_chooses_binary(tmp_path):
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        service = await desktop(tmp_path, vs)
        try:
            url = f"ws://127.0.0.1:{port_of(service)}/websockify?token={TOKEN}"
            async with ws_connect(url, subprotocols=["binary"], max_size=None) as ws:
                assert ws.subprotocol == "binary"
                assert await ws.recv() == b"RFB 003.008\n"
                blob = bytes(range(256)) * 4000
                await ws.send(blob)
                echoed = b""
                while len(echoed) < len(blob):
                    echoed += await ws.recv()
                assert echoed == blob
            async with ws_connect(url) as ws:  # noVNC offers no subprotocol: none is needed
                assert ws.subprotocol is None and await ws.recv() == b"RFB 003.008\n"
                await ws.send("text")
                await asyncio.wait_for(ws.wait_closed(), WAIT)
                assert ws.close_code == 1003, "text frames are refused, as websockify does"
            await wait_for(lambda: service.sessions == 0)
        finally:
            await service.aclose()
    events = [r["event"] for r in audit(tmp_path)]
    assert events.count("desktop-connect") == 2 and events.count("desktop-disconnect") == 2
    # the binary session's record (each session writes its own as it ends, whichever ends first)
    counts = [(r["bytes_to_vnc"], r["bytes_to_browser"]) for r in audit(tmp_path) if r["event"] == "desktop-disconnect"]
    assert (len(blob), len(blob) + 12) in counts, counts


async def test_guessing_is_slowed_down_and_sessions_are_limited(tmp_path):
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        service = await desktop(tmp_path, vs, guesses=3, max_bridges=1)
        try:
            base = f"ws://127.0.0.1:{port_of(service)}/websockify"
            statuses = []
            for _ in range(4):
                with pytest.raises(InvalidStatus) as refused:
                    async with ws_connect(f"{base}?token=guess-guess"):
                        pass
                statuses.append(refused.value.response.status_code)
            assert statuses == [403, 403, 403, 429]
            with pytest.raises(InvalidStatus) as refused:  # even the right token waits now
                async with ws_connect(f"{base}?token={TOKEN}"):
                    pass
            assert refused.value.response.status_code == 429
            service._guesses = type(service._guesses)(3, 60.0)  # forgiven, for the session limit below
            async with ws_connect(f"{base}?token={TOKEN}") as ws:
                await ws.recv()
                with pytest.raises(InvalidStatus) as refused:
                    async with ws_connect(f"{base}?token={TOKEN}"):
                        pass
                assert refused.value.response.status_code == 503
            assert vnc.connections == 1
        finally:
            await service.aclose()


async def test_a_vnc_server_that_is_not_there_is_a_502(tmp_path):
    with refused_port() as port:  # held (bound, not listening) by this test: it refuses, and nobody takes it
        service = await desktop(tmp_path, SimpleNamespace(endpoints=[f"tcp://127.0.0.1:{port}"]))
        try:
            with pytest.raises(InvalidStatus) as refused:
                async with ws_connect(f"ws://127.0.0.1:{port_of(service)}/websockify?token={TOKEN}"):
                    pass
            assert refused.value.response.status_code == 502
            assert b"does not answer" in refused.value.response.body
        finally:
            await service.aclose()


async def test_tls_with_the_development_ca_and_client_certificates(tmp_path):
    ca_cert, _ = certs.ensure_ca()
    client_cert, client_key = certs.issue(["desk-client"], client=True)
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        service = await desktop(tmp_path, vs, listen="tls://127.0.0.1:0?verify=true")
        try:
            (url,) = service.urls()
            assert url.startswith("https://127.0.0.1:")
            ws_url = f"wss://127.0.0.1:{port_of(service)}/websockify?token={TOKEN}"
            # Without a client certificate the TLS handshake itself fails: no page, no bridge.
            with pytest.raises(Exception):  # noqa: B017 - ssl.SSLError or a reset, depending on timing
                ws = await WebSocketClient.connect(ws_url, tls_options={"ca": str(ca_cert)}, timeout=WAIT)
                await ws.receive(timeout=WAIT)
            ws = await WebSocketClient.connect(ws_url, timeout=WAIT, tls_options={
                "ca": str(ca_cert), "cert": str(client_cert), "key": str(client_key)})
            try:
                assert await ws.receive(timeout=WAIT) == b"RFB 003.008\n"
            finally:
                await ws.aclose()
        finally:
            await service.aclose()
    connect = next(r for r in audit(tmp_path) if r["event"] == "desktop-connect")
    assert connect["tls"].startswith("TLSv1.") and connect["client_cert"] == "desk-client"


async def test_the_cli_makes_up_a_token_and_prints_the_url(tmp_path):
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        with Spawned("remote", "desktop", "--vnc", str(vs.endpoints[0]), "--listen", "tcp://127.0.0.1:0",
                     "--audit-log", str(tmp_path / "audit.log"), env=cli_env()) as proc:
            # (a fresh interpreter on a loaded machine: the bound only tells a slow start from none)
            match = await asyncio.to_thread(proc.read_until, r"open the desktop: (http://127\.0\.0\.1:(\d+)/#token=(\S+))",
                                            timeout=25)
            port, token = int(match.group(2)), match.group(3)
            assert len(token) >= 24
            async with ws_connect(f"ws://127.0.0.1:{port}/websockify?token={token}") as ws:
                assert await ws.recv() == b"RFB 003.008\n"
            with pytest.raises(InvalidStatus):
                async with ws_connect(f"ws://127.0.0.1:{port}/websockify"):
                    pass
            proc.signal()
            assert (await asyncio.to_thread(proc.wait, 20))[0] == 0
    with Spawned("remote", "desktop", "--token", "short", env=cli_env()) as short:
        bad = await asyncio.to_thread(short.wait, 25)
    assert bad[0] != 0 and b"at least 8 characters" in bad[2] and b"Traceback" not in bad[2]


async def test_up_shows_the_viewer_only_when_a_vnc_server_answers(tmp_path, monkeypatch):
    monkeypatch.setenv("SOCKETKIT_DATA", str(tmp_path))
    async with running_server(FakeVNC()) as vs:
        assert await vnc_answers(str(vs.endpoints[0]), timeout=WAIT)
        servers, notes, details = await start_desktop_for_up("127.0.0.1", "tcp://127.0.0.1:0", vnc=str(vs.endpoints[0]))
        try:
            assert len(servers) == 1 and notes[0].startswith("desktop viewer: http://127.0.0.1:")
            assert "#token=" in notes[0] and details()["sessions"] == 0
        finally:
            for server in servers:
                await server.aclose(drain=0)
    with refused_port() as port:  # nothing answers there (held: nobody else takes the port meanwhile)
        servers, notes, details = await start_desktop_for_up("127.0.0.1", "tcp://127.0.0.1:0",
                                                             vnc=f"tcp://127.0.0.1:{port}")
    assert servers == [] and details is None and "x11vnc" in notes[0]


async def test_websocket_client_errors_are_one_line(tmp_path):
    vnc = FakeVNC()
    async with running_server(vnc) as vs:
        service = await desktop(tmp_path, vs)
        try:
            with pytest.raises(WebSocketError, match=r"refused the WebSocket \(HTTP 401"):
                await WebSocketClient.connect(f"ws://127.0.0.1:{port_of(service)}/websockify")
        finally:
            await service.aclose()


def test_a_tls_context_from_the_dev_ca_verifies(tmp_path):
    ca_cert, _ = certs.ensure_ca()
    ssl.create_default_context(cafile=str(ca_cert))  # the CA the wss:// tests trust is loadable
