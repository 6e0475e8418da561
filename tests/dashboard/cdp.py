"""Headless Chromium driven over the DevTools protocol (CDP), for tests that read a page's DOM, measure its
memory and take screenshots. Debian's /usr/bin/chromium, a fresh profile, no network but loopback."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--mute-audio", "--window-size=1400,1800", "--remote-debugging-port=0"]


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium); the dashboard page is not tested")
    return path


class Chromium:
    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.ws: Any = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Chromium:
        self.profile.mkdir(parents=True, exist_ok=True)
        log = open(self.profile / "chromium.log", "wb")  # noqa: SIM115 - closed with the process
        self.proc = subprocess.Popen([chromium_path(), *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=log, stderr=log)
        log.close()
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 20

        def failed(what: str) -> AssertionError:
            return AssertionError(f"chromium {what}: " + (self.profile / "chromium.log").read_text()[-2000:])

        # The file is written in place: wait for both of its lines (the port, then the browser's path).
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise failed("did not start")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with httpx.AsyncClient(timeout=10) as client:
            # DevTools may answer before the first tab (about:blank) is listed: ask again until it is.
            while True:
                pages = (await client.get(f"http://127.0.0.1:{port}/json/list")).json()
                page = next((p for p in pages if p.get("type") == "page" and p.get("webSocketDebuggerUrl")), None)
                if page is not None:
                    break
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise failed(f"listed no page: {pages}")
                await asyncio.sleep(0.05)
        self.ws = await websockets.connect(page["webSocketDebuggerUrl"], max_size=64 << 20)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        return self

    async def _read(self) -> None:
        async for raw in self.ws:
            msg = json.loads(raw)
            fut = self._pending.pop(msg.get("id", -1), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        mid = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        await self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        msg = await asyncio.wait_for(fut, 20)
        if "error" in msg:
            raise AssertionError(f"{method}: {msg['error']}")
        return msg.get("result", {})

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                value = await self.evaluate(expression)
            except AssertionError as e:  # the page is still loading (no body yet, a script not run yet)
                value, last = None, str(e)[:300]
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"page never showed {what or expression} {last}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        data = (await self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True))["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    async def heap(self) -> int:
        await self.send("HeapProfiler.enable")
        await self.send("HeapProfiler.collectGarbage")
        return int((await self.send("Runtime.getHeapUsage"))["usedSize"])

    async def __aexit__(self, *exc: object) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
