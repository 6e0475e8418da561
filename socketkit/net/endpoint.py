"""Endpoints are URLs: one parser and one `Endpoint` type for every service and CLI flag.

    tcp://127.0.0.1:8080   tcp://[::1]:8080   tcp://localhost:0
    tls://example.org:443?ca=ca.pem&sni=example.org   tls://0.0.0.0:8443?cert=c.pem&key=k.pem
    udp://0.0.0.0:5353     unix:///run/socketkit/web.sock   unix://@abstract-name

`format(parse(text))` is canonical and `parse(format(e)) == e` holds for every Endpoint.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from urllib.parse import quote, unquote

from socketkit.errors import EndpointError

SCHEMES = ("tcp", "tls", "udp", "unix")

# Query parameters each scheme understands, with the values they accept (None: any non-empty text).
_BOOL = {"1": "true", "true": "true", "yes": "true", "on": "true",
         "0": "false", "false": "false", "no": "false", "off": "false"}
_VERIFY = dict(_BOOL, optional="optional")
_OPTIONS: dict[str, dict[str, dict[str, str] | None]] = {
    "tcp": {"reuse_port": _BOOL, "nodelay": _BOOL},
    "tls": {"cert": None, "key": None, "ca": None, "verify": _VERIFY, "sni": None, "pin": None,
            "alpn": None, "reuse_port": _BOOL, "nodelay": _BOOL},
    "udp": {"reuse_port": _BOOL, "broadcast": _BOOL},
    "unix": {"mode": None},
}
_HOSTNAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?\.?$")
_PIN = re.compile(r"sha256:[0-9a-f]{64}")


@dataclasses.dataclass(frozen=True, slots=True)
class Endpoint:
    scheme: str
    host: str | None = None          # IP literal (no brackets) or host name; None for unix
    port: int | None = None          # 0 asks the OS for a free port
    path: str | None = None          # unix socket path; "@name" is a Linux abstract socket
    options: tuple[tuple[str, str], ...] = ()

    # -- convenience -------------------------------------------------------------------------
    @property
    def is_tls(self) -> bool:
        return self.scheme == "tls"

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    @property
    def is_datagram(self) -> bool:
        return self.scheme == "udp"

    @property
    def is_abstract(self) -> bool:
        return self.path is not None and self.path.startswith("@")

    def option(self, name: str, default: str | None = None) -> str | None:
        for key, value in self.options:
            if key == name:
                return value
        return default

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.option(name)
        return default if value is None else value == "true"

    @property
    def socket_path(self) -> str | bytes:
        """The address to give to a AF_UNIX socket (abstract names start with a NUL byte)."""
        assert self.path is not None
        return "\0" + self.path[1:] if self.is_abstract else self.path

    @property
    def ip_version(self) -> int | None:
        """4 or 6 when the host is an IP literal, else None."""
        try:
            return ipaddress.ip_address(self.host.split("%")[0]).version if self.host else None
        except ValueError:
            return None

    def with_port(self, port: int) -> "Endpoint":
        return dataclasses.replace(self, port=port)

    def with_options(self, **changes: str | None) -> "Endpoint":
        opts = dict(self.options)
        for key, value in changes.items():
            if value is None:
                opts.pop(key, None)
            else:
                opts[key] = value
        return dataclasses.replace(self, options=tuple(sorted(opts.items())))

    def format(self) -> str:
        if self.scheme == "unix":
            text = "unix://" + quote(self.path or "", safe="/@._-~")
        else:
            host = self.host or ""
            if ":" in host:
                # The zone id after '%' may hold any character parse() unquoted; escape it all again.
                host = "[" + quote(host, safe=":") + "]"
            text = f"{self.scheme}://{host}:{self.port}"
        if self.options:
            text += "?" + "&".join(f"{k}={quote(v, safe='/:.,_-~@')}" for k, v in self.options)
        return text

    def __str__(self) -> str:
        # Shown in logs and errors: hide nothing secret (endpoints carry file names, not secrets).
        return self.format()


def parse(text: "str | Endpoint") -> Endpoint:
    """Parse an endpoint URL; raise EndpointError naming the part that is wrong."""
    if isinstance(text, Endpoint):
        return text
    if not isinstance(text, str):
        raise EndpointError(repr(text), "type", f"expected a URL string, got {type(text).__name__}")
    if text != text.strip() or any(c in text for c in "\r\n\t\0 "):
        raise EndpointError(text, "text", "contains whitespace or control characters")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            # Lone surrogates could never be written back out by format().
            raise EndpointError(text, "text", "contains characters that are not valid Unicode") from None
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise EndpointError(text, "scheme", "missing; write it as e.g. tcp://127.0.0.1:8080")
    scheme = scheme.lower()
    if scheme not in SCHEMES:
        raise EndpointError(text, "scheme", f"{scheme!r} is not one of {', '.join(SCHEMES)}")
    if "#" in rest:
        raise EndpointError(text, "fragment", "'#' has no meaning in an endpoint")
    location, _, query = rest.partition("?")
    options = _parse_query(text, scheme, query)
    if scheme == "unix":
        path = unquote(location)
        if not path or path == "@":
            raise EndpointError(text, "path", "empty; write unix:///path/to.sock or unix://@name")
        if "\0" in path:
            raise EndpointError(text, "path", "contains a NUL byte")
        return Endpoint("unix", path=path, options=options)
    host, port = _parse_host_port(text, location)
    return Endpoint(scheme, host=host, port=port, options=options)


def _parse_host_port(text: str, location: str) -> tuple[str, int]:
    if "@" in location or "/" in location:
        raise EndpointError(text, "host", "user info and paths are not allowed in a tcp/tls/udp endpoint")
    if location.startswith("["):
        end = location.find("]")
        if end < 0:
            raise EndpointError(text, "host", "IPv6 literal lacks its closing ']'")
        host = unquote(location[1:end])
        tail = location[end + 1:]
        try:
            ipaddress.IPv6Address(host.split("%")[0])
        except ValueError:
            raise EndpointError(text, "host", f"{host!r} is not an IPv6 address") from None
        if "%" in host and not host.split("%", 1)[1]:
            raise EndpointError(text, "host", "empty IPv6 zone after '%'")
        if not tail.startswith(":"):
            raise EndpointError(text, "port", "missing; write [addr]:port")
        port_text = tail[1:]
    else:
        host, sep, port_text = location.rpartition(":")
        if not sep:
            raise EndpointError(text, "port", "missing; write host:port (port 0 picks a free one)")
        if ":" in host:
            raise EndpointError(text, "host", "an IPv6 address must be in brackets, e.g. [::1]:8080")
        if not host:
            raise EndpointError(text, "host", "empty; use 0.0.0.0 or [::] to mean every address")
        if not _HOSTNAME.match(host):
            raise EndpointError(text, "host", f"{host!r} is not a valid host name or IPv4 address")
        host = host.lower()
    if not port_text.isdigit() or not port_text.isascii():
        raise EndpointError(text, "port", f"{port_text!r} is not a number")
    # Count digits before int(): Python refuses to convert strings of more than 4300 digits.
    digits = port_text.lstrip("0") or "0"
    if len(digits) > 5 or int(digits) > 65535:
        raise EndpointError(text, "port", f"{digits[:20]} is out of range 0-65535")
    port = int(digits)
    return host, port


def _parse_query(text: str, scheme: str, query: str) -> tuple[tuple[str, str], ...]:
    allowed = _OPTIONS[scheme]
    found: dict[str, str] = {}
    if not query:
        return ()
    for item in query.split("&"):
        key, sep, raw = item.partition("=")
        key = unquote(key)
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise EndpointError(text, f"option {key!r}", f"unknown for {scheme}:// (known: {known})")
        if key in found:
            raise EndpointError(text, f"option {key!r}", "given twice")
        value = unquote(raw) if sep else "true"
        choices = allowed[key]
        if choices is not None:
            if value.lower() not in choices:
                raise EndpointError(text, f"option {key!r}", f"{value!r} is not one of {sorted(set(choices))}")
            value = choices[value.lower()]
        elif not value:
            raise EndpointError(text, f"option {key!r}", "empty value")
        if key == "pin":
            value = value.lower().replace(":", "") if not value.lower().startswith("sha256:") else (
                "sha256:" + value[7:].lower().replace(":", ""))
            if not _PIN.fullmatch(value):
                raise EndpointError(text, "option 'pin'", "expected sha256:<64 hex digits>")
        if key == "mode" and not re.fullmatch(r"0?[0-7]{3}", value):
            raise EndpointError(text, "option 'mode'", "expected an octal file mode such as 660")
        found[key] = value
    return tuple(sorted(found.items()))


def format(endpoint: Endpoint) -> str:  # noqa: A001 - mirrors parse()
    return endpoint.format()
