"""Settings of the web server, and loading an ASGI app from "module:attribute"."""

from __future__ import annotations

import dataclasses
import importlib
import ipaddress
import sys
from collections.abc import Callable
from typing import Any

from socketkit.errors import SocketkitError
from socketkit.net.limits import Limits

ASGIApp = Callable[..., Any]

# A web server's connections idle between requests (keep-alive): close them sooner than a raw socket.
WEB_LIMITS = Limits(idle_timeout=30.0, request_timeout=30.0)


@dataclasses.dataclass
class WebConfig:
    app: ASGIApp
    limits: Limits = WEB_LIMITS
    root_path: str = ""
    proxy_headers: bool = False
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    access_log: bool = False
    server_header: bool = True
    lifespan: str = "auto"              # auto | on | off
    ws_max_size: int = 16 * 1024 * 1024
    ws_ping_interval: float | None = 20.0
    ws_ping_timeout: float | None = 20.0
    ws_per_message_deflate: bool = True
    http2: bool = True                  # h2 by ALPN on tls:// listeners, h2c (prior knowledge) on plain ones
    h2_limits: Any = None               # socketkit.proto.http2.H2Limits; None: its defaults

    def __post_init__(self) -> None:
        if self.root_path.endswith("/"):
            self.root_path = self.root_path.rstrip("/")
        if self.lifespan not in ("auto", "on", "off"):
            raise SocketkitError(f"lifespan must be auto, on or off, not {self.lifespan!r}")
        self._trusted = _Trusted(self.forwarded_allow_ips)

    def trusts(self, host: str | None) -> bool:
        return self._trusted(host)


class _Trusted:
    """--forwarded-allow-ips: addresses, networks, or '*' for any."""

    def __init__(self, items: tuple[str, ...]) -> None:
        self.any = "*" in items
        self.networks = []
        self.literals = set()
        for item in items:
            if item == "*":
                continue
            try:
                self.networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                self.literals.add(item)  # e.g. "unix:" style names

    def __call__(self, host: str | None) -> bool:
        if self.any:
            return True
        if host is None:
            return False
        if host in self.literals:
            return True
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


def load_env_file(path: str) -> dict[str, str]:
    """`--env-file`: KEY=VALUE lines into os.environ, as python-dotenv (uvicorn's) reads them: `export ` and
    comments allowed, values in single quotes taken as they are, in double quotes with \\n, \\t, \\" and
    \\\\ escapes; a variable already in the environment is kept. Returns what was set."""
    import os

    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SocketkitError(f"--env-file {path!r}: {e.strerror or e}") from None
    found: dict[str, str] = {}
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.startswith("export "):
            text = text[7:].lstrip()
        key, sep, value = text.partition("=")
        key = key.strip()
        if not sep or not key.replace("_", "a").replace(".", "a").isalnum() or key[0].isdigit():
            raise SocketkitError(f"--env-file {path!r}, line {number}: expected KEY=VALUE")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = _unescape(value[1:-1])
        else:
            value = value.split(" #", 1)[0].rstrip()
        found[key] = value
    for key, value in found.items():
        os.environ.setdefault(key, value)
    return found


def _unescape(value: str) -> str:
    out = []
    i = 0
    while i < len(value):
        c = value[i]
        if c == "\\" and i + 1 < len(value):
            out.append({"n": "\n", "t": "\t", "r": "\r", '"': '"', "\\": "\\"}.get(value[i + 1], "\\" + value[i + 1]))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def load_app(spec: str, *, factory: bool = False) -> ASGIApp:
    """Import "package.module:attribute" (attribute may be dotted); the current directory is importable."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise SocketkitError(f"app {spec!r}: write it as module:attribute, e.g. main:app")
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            raise SocketkitError(f"app {spec!r}: no module named {e.name!r}") from None
        raise
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SocketkitError(f"app {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    if factory:
        obj = obj()
    if not callable(obj):
        raise SocketkitError(f"app {spec!r} is not callable")
    return obj
