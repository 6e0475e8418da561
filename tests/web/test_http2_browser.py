"""A page with many assets, loaded by headless Chromium over TLS: every request arrives over HTTP/2 (ALPN),
on few connections, and the page sees every asset whole."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from pathlib import Path

import pytest
from apps import port_of, serving
from helpers import data_dir  # noqa: F401 - fixture

from socketkit.web.static import StaticFiles

ASSETS = 40


def chromium() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    return path


def site(root: Path) -> None:
    imgs = "".join(f'<img src="/img/{i}.svg" width="8" height="8">' for i in range(ASSETS))
    scripts = "".join(f'<script src="/js/{i}.js"></script>' for i in range(10))
    (root / "img").mkdir()
    (root / "js").mkdir()
    for i in range(ASSETS):
        (root / "img" / f"{i}.svg").write_text(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"><rect width="8" height="{i % 8}"/>'
            f"<!-- {'x' * (i * 200)} --></svg>")
    for i in range(10):
        (root / "js" / f"{i}.js").write_text(f"window.loaded = (window.loaded || 0) + 1; /* {'y' * 5000} */")
    (root / "index.html").write_text(
        "<!DOCTYPE html><html><head><title>assets</title></head><body>" + imgs + scripts +
        "<script>window.addEventListener('load', () => {"
        " const ok = [...document.images].filter(i => i.complete && i.naturalWidth === 8).length;"
        " document.body.setAttribute('data-report', `images=${ok} scripts=${window.loaded}`); });"
        "</script></body></html>")


@pytest.mark.usefixtures("data_dir")
async def test_chromium_loads_a_page_with_many_assets_over_http2(tmp_path):
    browser = chromium()
    root = tmp_path / "www"
    root.mkdir()
    site(root)
    files = StaticFiles(root)
    seen: list[tuple[str, str, tuple]] = []

    async def recording(scope, receive, send):
        if scope["type"] == "http":
            seen.append((scope["http_version"], scope["path"], scope["client"]))
        await files(scope, receive, send)

    async with serving(recording, ["tls://127.0.0.1:0"]) as web:
        url = f"https://127.0.0.1:{port_of(web)}/"
        proc = await asyncio.create_subprocess_exec(
            browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--ignore-certificate-errors", f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=5000", "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        try:
            async with asyncio.timeout(45):
                out, _ = await proc.communicate()
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the browser and its renderer, GPU, ... processes
                await proc.wait()
    assert f'data-report="images={ASSETS} scripts=10"' in out.decode(), out.decode()[-500:]
    pages = [s for s in seen if s[1] == "/" or s[1].startswith(("/img/", "/js/"))]
    assert len({p for _, p, _ in pages}) == ASSETS + 10 + 1
    assert {v for v, _, _ in pages} == {"2"}  # every one over HTTP/2
    assert len({c for _, _, c in pages}) <= 2  # multiplexed: not a connection per asset
