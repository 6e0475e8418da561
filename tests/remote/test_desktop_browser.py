"""The desktop with the real programs: Debian's Xvfb, x11vnc and xterm make a desktop, `socketkit remote desktop`
bridges it, headless Chromium opens the viewer. The test sees the desktop in the page (the page's pixels, and
a screenshot of the page, against the X server's own capture with xwd) and types into the xterm through
the page (a command the xterm's shell runs). Chromium is driven over its DevTools protocol with socketkit's
own WebSocket client.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from helpers import WAIT, wait_for

from socketkit.remote.desktop import DesktopConfig, DesktopService
from socketkit.web.wsclient import WebSocketClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chat"))
from test_browser import browser  # noqa: E402 - the chat page's Chromium launcher, shared

PROGRAMS = {"Xvfb": "xvfb", "x11vnc": "x11vnc", "xterm": "xterm", "xwd": "x11-apps", "chromium": "chromium"}
missing = [f"{name} ({pkg})" for name, pkg in PROGRAMS.items() if shutil.which(name) is None]
pytestmark = pytest.mark.skipif(bool(missing), reason="needs " + ", ".join(missing) + ": apt-get install them")

WIDTH, HEIGHT = 640, 400


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def x_desktop(tmp_path: Path):
    """Xvfb (it picks a free display), an xterm running a shell in tmp_path, x11vnc on a loopback port."""
    procs: list[asyncio.subprocess.Process] = []
    log = open(tmp_path / "x.log", "wb")  # noqa: SIM115 - closed below
    read, write = os.pipe()
    try:
        xvfb = await asyncio.create_subprocess_exec(
            "Xvfb", "-displayfd", str(write), "-screen", "0", f"{WIDTH}x{HEIGHT}x24", "-nolisten", "tcp",
            pass_fds=(write,), stdout=log, stderr=log, start_new_session=True)
        procs.append(xvfb)
        os.close(write)
        # (the read end stays open until Xvfb is gone: it may write to it again, and dies of EPIPE)
        number = await asyncio.wait_for(asyncio.to_thread(os.read, read, 16), 30)
        display = f":{int(number)}"
        env = dict(os.environ, DISPLAY=display, HOME=str(tmp_path), PS1="$ ", ENV="")
        env.pop("XAUTHORITY", None)
        # The shell says when it runs (xterm starts it once its window is made): keys typed before would be lost.
        ready = tmp_path / "xterm-shell-started"
        procs.append(await asyncio.create_subprocess_exec(
            "xterm", "-geometry", "60x12+0+0", "-e", "sh", "-c", f'touch "{ready}"; exec sh', cwd=tmp_path,
            env=env, stdout=log, stderr=log, start_new_session=True))
        for attempt in range(3):
            # x11vnc cannot listen on port 0: a port found free may be taken before it binds. With -noipv6 it
            # then exits (instead of listening on ::1 only), and is started again on another port.
            port = free_port()
            x11vnc = await asyncio.create_subprocess_exec(
                "x11vnc", "-display", display, "-localhost", "-noipv6", "-rfbport", str(port), "-nopw", "-forever",
                "-shared", "-noxdamage", "-quiet", env=env, stdout=log, stderr=log, start_new_session=True)
            procs.append(x11vnc)
            await wait_for(lambda proc=x11vnc, port=port: _greets_or_ended(proc, port), timeout=30,
                           what="x11vnc to greet")
            if x11vnc.returncode is None:
                break
            log.flush()
            assert attempt < 2, "x11vnc would not start: " + (tmp_path / "x.log").read_text(errors="replace")[-2000:]
        await wait_for(ready.exists, timeout=30, what="the xterm's shell to start")
        yield display, port
    finally:
        for proc in reversed(procs):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        log.close()
        os.close(read)


async def _greets_or_ended(proc: asyncio.subprocess.Process, port: int) -> bool:
    """Whether a VNC server greets on 127.0.0.1:port, or `proc` (which was to be that server) has ended."""
    if proc.returncode is not None:
        return True
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    try:
        return (await asyncio.wait_for(reader.read(12), 2)).startswith(b"RFB ")
    except (OSError, TimeoutError):  # not (yet) a VNC server there
        return False
    finally:
        writer.close()


def xwd_rgb(display: str) -> tuple[int, int, bytes]:
    """The X server's own capture of the root window, as (width, height, RGB bytes)."""
    raw = subprocess.run(["xwd", "-root", "-silent", "-display", display], capture_output=True, check=True,
                         timeout=WAIT).stdout
    f = struct.unpack(">25I", raw[:100])
    header_size, width, height, byte_order, bpp, stride, ncolors = f[0], f[4], f[5], f[7], f[11], f[12], f[19]
    assert bpp == 32, f"xwd: {bpp} bits per pixel"
    pixels = raw[header_size + 12 * ncolors:]
    rows = b"".join(pixels[y * stride:y * stride + width * 4] for y in range(height))
    out = bytearray(width * height * 3)
    order = (2, 1, 0) if byte_order == 0 else (1, 2, 3)  # LSBFirst: B G R x; MSBFirst: x R G B
    for channel, offset in enumerate(order):
        out[channel::3] = rows[offset::4]
    return width, height, bytes(out)


def png_rgb(data: bytes) -> tuple[int, int, bytes]:
    """A PNG (8-bit RGB or RGBA, as Chromium writes screenshots) as (width, height, RGB bytes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    out = bytearray()
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up = prev[i]
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((left + up) >> 1)) & 0xFF
            elif kind == 4:
                upleft = prev[i - channels] if i >= channels else 0
                p = left + up - upleft
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - upleft)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else upleft)) & 0xFF
        out += line if channels == 3 else bytes(b for i, b in enumerate(line) if i % 4 != 3)
        prev = line
    return width, height, bytes(out)


def region(rgb: bytes, width: int, x: int, y: int, w: int, h: int) -> bytes:
    return b"".join(rgb[((y + row) * width + x) * 3:((y + row) * width + x + w) * 3] for row in range(h))


def same_share(a: bytes, b: bytes) -> float:
    assert len(a) == len(b)
    if a == b:
        return 1.0
    pixels = len(a) // 3
    return sum(a[i:i + 3] == b[i:i + 3] for i in range(0, len(a), 3)) / pixels


class DevTools:
    """Chromium's DevTools protocol over socketkit's WebSocket client."""

    def __init__(self, ws: WebSocketClient) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    @classmethod
    async def open(cls, profile: Path, url_prefix: str) -> DevTools:
        active = profile / "DevToolsActivePort"
        await wait_for(lambda: active.exists() and active.read_text().strip(), timeout=20, what="Chromium to start")
        port, path = active.read_text().split()[:2]
        # The browser target, then the page's: /json would need an HTTP client; Target.* does it in-band.
        browser_ws = await WebSocketClient.connect(f"ws://127.0.0.1:{port}{path}", max_message=64 << 20)
        tools = cls(browser_ws)
        targets = await wait_for(lambda: tools._pages(url_prefix), timeout=20, what=f"a page on {url_prefix}")
        session = (await tools.call("Target.attachToTarget", targetId=targets[0], flatten=True))["sessionId"]
        tools.session = session
        return tools

    async def _pages(self, url_prefix: str) -> list[str]:
        infos = (await self.call("Target.getTargets", session=False))["targetInfos"]
        return [t["targetId"] for t in infos if t["type"] == "page" and t["url"].startswith(url_prefix)]

    session: str | None = None

    async def call(self, method: str, session: bool = True, **params):
        call = next(self.ids)
        message = {"id": call, "method": method, "params": params}
        if session and self.session:
            message["sessionId"] = self.session
        await self.ws.send_text(json.dumps(message))
        while True:
            text = await self.ws.receive_text(timeout=WAIT * 2)
            assert text is not None, "Chromium closed its DevTools connection"
            reply = json.loads(text)
            if reply.get("id") == call:
                if "error" in reply:
                    raise AssertionError(f"{method}: {reply['error']}")
                return reply["result"]

    async def js(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def check(self, expression: str) -> bool:
        """For polling: a truthy value, or False also while the page is still loading (no context yet)."""
        try:
            return bool(await self.js(expression))
        except AssertionError:
            return False

    async def key(self, key: str, code: str, vk: int, text: str = "") -> None:
        for kind in ("keyDown", "keyUp"):
            await self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=vk,
                            nativeVirtualKeyCode=vk, text=text if kind == "keyDown" else "")

    async def type(self, text: str) -> None:
        for ch in text:
            if ch == "\n":
                await self.key("Enter", "Enter", 13, "\r")
            elif ch == "-":
                await self.key("-", "Minus", 189, "-")
            elif ch == " ":
                await self.key(" ", "Space", 32, " ")
            else:
                assert ch.isalpha() and ch.islower(), ch
                await self.key(ch, f"Key{ch.upper()}", ord(ch.upper()), ch)


CANVAS_RGB = """(() => {
  const c = document.querySelector('#screen canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  let s = '';
  for (let i = 0; i < d.length; i += 4) s += String.fromCharCode(d[i], d[i + 1], d[i + 2]);
  return [c.width, c.height, btoa(s)];
})()"""


@contextlib.asynccontextmanager
async def desktop_in_chromium(tmp_path: Path):
    """x_desktop(), `remote desktop` bridging it, headless Chromium on the viewer page: (display, url, DevTools)."""
    async with x_desktop(tmp_path) as (display, vnc_port):
        service = DesktopService(DesktopConfig(vnc=f"tcp://127.0.0.1:{vnc_port}", listen=["tcp://127.0.0.1:0"],
                                               audit_log=tmp_path / "audit.log"))
        await service.start()
        try:
            (url,) = service.urls()
            async with browser("chromium", url, tmp_path):
                tools = await DevTools.open(tmp_path / "profile", url.split("#")[0])
                try:
                    await tools.call("Emulation.setFocusEmulationEnabled", enabled=True)
                    yield display, url, tools
                finally:
                    await tools.ws.aclose()
        finally:
            await service.aclose()


async def test_the_desktop_in_chromium_shows_the_screen_and_types_into_the_xterm(tmp_path):
    async with desktop_in_chromium(tmp_path) as (display, url, tools):
        assert "#token=" in url
        try:
            await wait_for(lambda: tools.check("document.getElementById('status').textContent === 'connected'"),
                           timeout=20, what="the viewer to connect")
        except AssertionError:
            state = await tools.js("[location.href, (document.getElementById('status') || {}).textContent]")
            log = (tmp_path / "chromium.log").read_text(errors="replace")[-2000:]
            raise AssertionError(f"the viewer did not connect: {state}; Chromium said:\n{log}") from None
        assert await tools.js("location.hash") == "", "the token is taken out of the address bar"
        # 1:1, so that the page's pixels are the desktop's pixels
        await tools.js("document.getElementById('scale').click()")

        async def page_matches_x() -> float:
            w, h, data = await tools.js(CANVAS_RGB)
            xw, xh, xdata = await asyncio.to_thread(xwd_rgb, display)
            assert (w, h) == (xw, xh) == (WIDTH, HEIGHT)
            return same_share(base64.b64decode(data), xdata) >= 0.999

        await wait_for(page_matches_x, timeout=15, interval=0.3, what="the page to show the X screen")

        # Through the page: the pointer onto the xterm (X gives it the keyboard), then keys.
        left, top = await tools.js("(() => { const r = document.querySelector('#screen canvas')"
                                   ".getBoundingClientRect(); return [r.left, r.top]; })()")
        await tools.call("Input.dispatchMouseEvent", type="mouseMoved", x=left + 100, y=top + 60)
        await tools.type("touch typed-through-the-page\n")
        await wait_for(lambda: (tmp_path / "typed-through-the-page").exists(), timeout=20,
                       what="the xterm's shell to run what the page typed")

        # A screenshot of the page, against the X server's capture of the same pixels. (The shell prints its
        # next prompt on its own time after the command: a pair taken across that moment differs, so the
        # pair is taken again, a few times at most, once the page has caught up.)
        share = 0.0
        for _ in range(10):
            await wait_for(page_matches_x, timeout=10, interval=0.3, what="the page to catch up")
            shot = await tools.call("Page.captureScreenshot", format="png",
                                    clip={"x": left, "y": top, "width": 240, "height": 48, "scale": 1})
            png = base64.b64decode(shot["data"])
            (tmp_path / "viewer.png").write_bytes(png)
            sw, sh, srgb = png_rgb(png)
            xw, xh, xrgb = xwd_rgb(display)
            assert (sw, sh) == (240, 48)
            # (the xterm's first lines: its prompt and what was typed, black on white)
            expected = region(xrgb, xw, 0, 0, 240, 48)
            share = same_share(srgb, expected)
            if share >= 0.99:
                break
            await asyncio.sleep(0.3)
        assert share >= 0.99, f"the screenshot matches the X capture for {share:.1%} of its pixels"
        assert len({expected[i:i + 3] for i in range(0, len(expected), 3)}) > 1, "not a blank region"
    records = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    events = [r["event"] for r in records]
    assert "desktop-connect" in events and "desktop-disconnect" in events, events
    connect = next(r for r in records if r["event"] == "desktop-connect")
    assert connect["client"].startswith("127.0.0.1:") and "HeadlessChrome" in connect["user_agent"]


def xdotool(display: str, *args: str) -> None:
    """Act on the X display directly (the test's own hands on the desktop, not through the page)."""
    subprocess.run(["xdotool", *args], env=dict(os.environ, DISPLAY=display), check=True, timeout=WAIT,
                   capture_output=True)


@pytest.mark.skipif(shutil.which("xdotool") is None, reason="needs xdotool (apt-get install xdotool)")
async def test_the_toolbar_clipboard_both_ways_ctrl_alt_del_and_full_screen(tmp_path):
    async with desktop_in_chromium(tmp_path) as (display, _url, tools):
        await wait_for(lambda: tools.check("document.getElementById('status').textContent === 'connected'"
                                           " && !document.getElementById('cad').disabled"),
                       timeout=20, what="the viewer to connect")
        xdotool(display, "mousemove", "100", "60")  # over the xterm: it has the keyboard (no WM)

        # Ctrl-Alt-Del from the button reaches the desktop: xterm turns it into CSI 3;7~, which
        # `cat -v` writes out as text.
        cad = tmp_path / "cad.txt"
        xdotool(display, "type", "--delay", "15", "cat -v > cad.txt")
        xdotool(display, "key", "Return")
        await wait_for(cad.exists, timeout=10, what="the shell to start cat")  # (what comes next waits for cat)
        await tools.js("document.getElementById('cad').click()")

        # The page's keys travel through the bridge and x11vnc, xdotool's go straight to X: which comes first
        # is not known. So cat's line is ended (Return) until the sequence is in the file, and only then is
        # cat ended (Ctrl-D), never before the sequence has arrived.
        async def cad_arrived() -> bool:
            await asyncio.to_thread(xdotool, display, "key", "Return")
            return "^[[3;7~" in cad.read_text()

        await wait_for(cad_arrived, timeout=20, interval=0.3, what="Ctrl-Alt-Del in the xterm")
        xdotool(display, "key", "ctrl+d")

        # The page's clipboard to the desktop's: Send, then a middle click pastes it in the xterm.
        await tools.js("document.getElementById('clip').click()")
        assert await tools.js("!document.getElementById('clipboard').hidden")
        await tools.js("(() => { document.getElementById('cliptext').value = 'touch pasted-from-page';"
                       " document.getElementById('clipsend').click(); return true })()")
        pasted = tmp_path / "pasted-from-page"
        for _ in range(40):  # x11vnc sets the X selection on its own schedule: paste until it is there
            await asyncio.sleep(0.25)
            xdotool(display, "click", "2")
            xdotool(display, "key", "Return")
            await asyncio.sleep(0.25)
            if pasted.exists():
                break
        assert pasted.exists(), "the xterm never ran what was pasted from the page"

        # The desktop's selection to the page: a word selected in the xterm shows in the panel.
        xdotool(display, "type", "--delay", "15", "clear; echo remoteclipword")
        xdotool(display, "key", "Return")
        shown = "document.getElementById('cliptext').value.includes('remoteclipword')"
        for _ in range(40):  # until the shell has printed it, and x11vnc has passed the selection on
            await asyncio.sleep(0.25)
            xdotool(display, "mousemove", "20", "8", "click", "--repeat", "2", "1")  # the first row's word
            await asyncio.sleep(0.25)
            if await tools.check(shown):
                break
        assert await tools.check(shown), "the desktop's selection never reached the page's clipboard panel"

        # Full screen: the button asks the browser, which grants it to a click.
        await tools.call("Runtime.evaluate", expression="document.getElementById('full').click()",
                         userGesture=True)
        await wait_for(lambda: tools.check("document.fullscreenElement !== null"), timeout=10,
                       what="the page in full screen")
