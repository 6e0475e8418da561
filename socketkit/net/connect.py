"""`connect(endpoint)`: a Stream to a tcp://, tls:// or unix:// endpoint.

Host names are resolved to every address; attempts follow RFC 8305 ("happy eyeballs"): addresses are
interleaved by family (IPv6 first when the resolver puts it first), a new attempt starts every
`attempt_delay` seconds or as soon as the previous one fails, and the first TCP connection to succeed
wins; the others are closed. TLS is negotiated on the winner only.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
from typing import Any

from socketkit.errors import ConnectError, DeadlineError, PeerResetError, TLSError
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits
from socketkit.net.stream import Stream

ATTEMPT_DELAY = 0.25  # RFC 8305 section 5 recommends 250 ms


def interleave(infos: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Order getaddrinfo results by alternating families, starting with the first one's family."""
    if not infos:
        return []
    first = infos[0][0]
    primary = [i for i in infos if i[0] == first]
    secondary = [i for i in infos if i[0] != first]
    out: list[tuple[Any, ...]] = []
    for idx in range(max(len(primary), len(secondary))):
        if idx < len(primary):
            out.append(primary[idx])
        if idx < len(secondary):
            out.append(secondary[idx])
    return out


async def _open_socket(loop: asyncio.AbstractEventLoop, info: tuple[Any, ...]) -> socket.socket:
    family, type_, proto, _, addr = info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        if family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await loop.sock_connect(sock, addr)
        return sock
    except BaseException:
        sock.close()
        raise


async def happy_eyeballs(
    loop: asyncio.AbstractEventLoop, infos: list[tuple[Any, ...]], delay: float = ATTEMPT_DELAY
) -> socket.socket:
    """Race connection attempts as RFC 8305 describes; return the first connected socket."""
    errors: list[tuple[Any, BaseException]] = []
    pending: set[asyncio.Task[socket.socket]] = set()
    order = interleave(infos)
    winner: socket.socket | None = None
    try:
        idx = 0
        while winner is None and (idx < len(order) or pending):
            if idx < len(order):
                task = loop.create_task(_open_socket(loop, order[idx]))
                task.info = order[idx]  # type: ignore[attr-defined]
                pending.add(task)
                idx += 1
                timeout: float | None = delay if idx < len(order) else None
            else:
                timeout = None
            done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                pending.discard(task)
                if task.exception() is None:
                    if winner is None:
                        winner = task.result()
                    else:
                        task.result().close()
                else:
                    errors.append((task.info[4], task.exception()))  # type: ignore[attr-defined]
    finally:
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                sock = await task
            except BaseException:
                continue
            sock.close()
    if winner is None:
        detail = "; ".join(f"{_fmt_addr(a)}: {_why(e)}" for a, e in errors) or "no addresses"
        raise ConnectError(f"could not connect ({detail})")
    return winner


def _fmt_addr(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _is_handshake_timeout(exc: BaseException) -> bool:
    # asyncio (3.11) reports ssl_handshake_timeout as ConnectionAbortedError("SSL handshake is taking
    # longer than N seconds: aborting the connection"); uvloop the same way.
    return isinstance(exc, ConnectionAbortedError) and "handshake is taking longer" in str(exc)


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno)
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


async def connect(
    endpoint: str | Endpoint,
    *,
    timeout: float | None = 10.0,
    limits: Limits | None = None,
    ssl_context: ssl.SSLContext | None = None,
    attempt_delay: float = ATTEMPT_DELAY,
) -> Stream:
    """Open a Stream to `endpoint`; errors: ConnectError, TLSError, DeadlineError (after `timeout`)."""
    ep = parse(endpoint)
    if ep.is_datagram:
        raise ConnectError("udp:// has no connections; use socketkit.bind() for datagrams", endpoint=ep)
    try:
        async with asyncio.timeout(timeout):
            return await _connect(ep, limits, ssl_context, attempt_delay)
    except TimeoutError as e:
        if isinstance(e, DeadlineError):
            raise
        raise DeadlineError(f"connect did not finish within {timeout:g}s", seconds=timeout, endpoint=ep) from None


async def _connect(ep: Endpoint, limits: Limits | None, ctx: ssl.SSLContext | None, delay: float) -> Stream:
    loop = asyncio.get_running_loop()
    stream = Stream(limits=limits, endpoint=ep)
    if ep.is_unix:
        # Connect the socket ourselves: uvloop hands a path to libuv's uv_pipe_connect, which takes a
        # NUL-terminated string and so fails with EINVAL on abstract names ("@name" -> "\0name").
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await loop.sock_connect(sock, ep.socket_path)
            await loop.create_unix_connection(lambda: stream.protocol, sock=sock)
        except OSError as e:
            sock.close()
            raise ConnectError(f"could not connect ({_why(e)})", endpoint=ep) from e
        except BaseException:
            sock.close()
            raise
        return stream
    try:
        if ep.ip_version is not None and "%" not in (ep.host or ""):
            # An IP literal needs no resolver round trip (a thread hop with getaddrinfo).
            family = socket.AF_INET6 if ep.ip_version == 6 else socket.AF_INET
            addr = (ep.host, ep.port) if family == socket.AF_INET else (ep.host, ep.port, 0, 0)
            infos = [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", addr)]
        else:
            infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConnectError(f"cannot resolve {ep.host!r}: {e.strerror}", endpoint=ep) from e
    try:
        sock = await happy_eyeballs(loop, infos, delay)
    except ConnectError as e:
        e.endpoint = ep
        raise
    server_hostname = None
    if ep.is_tls:
        from socketkit.net import tls

        ctx = ctx or tls.client_context(ep)
        # Always name the server: asyncio and uvloop refuse ssl= on a ready socket without
        # server_hostname (ValueError), which broke ?pin= and ?verify=false. For an IP literal
        # Python's ssl sends no SNI anyway; "" would mean "no SNI, no name check".
        server_hostname = tls.server_hostname(ep) or ""
    try:
        await loop.create_connection(
            lambda: stream.protocol, sock=sock, ssl=ctx if ep.is_tls else None,
            server_hostname=server_hostname,
            ssl_handshake_timeout=(limits or stream.limits).handshake_timeout if ep.is_tls else None,
        )
    except ssl.SSLError as e:
        sock.close()
        from socketkit.net import tls

        # A pin mismatch is raised from inside the handshake as PinError (a TLSError and an SSLError
        # without .reason); translate_error passes it through and explains the OpenSSL ones.
        err = tls.translate_error(e, ep)
        if err is e:
            raise
        raise err from e
    except OSError as e:
        sock.close()
        if _is_handshake_timeout(e):
            raise DeadlineError("TLS handshake timed out", endpoint=ep) from e
        raise PeerResetError(f"connection lost during set-up ({_why(e)})", endpoint=ep) from e
    if ep.is_tls and ep.option("pin"):
        from socketkit.net import tls

        try:
            tls.check_pin(stream.extra("ssl_object"), ep.option("pin"), ep)
        except TLSError:
            stream.abort()
            raise
    return stream
