"""UDP sockets: `bind(endpoint)` gives a `DatagramSocket` with bounded receive memory, broadcast and multicast.

    sock = await bind("udp://127.0.0.1:0")
    await sock.send_to(b"ping", ("127.0.0.1", 9999))
    data, (host, port) = await sock.receive_from(timeout=5)

Received datagrams wait in a queue bounded by `Limits.read_buffer` (bytes) and by a count derived from it.
A reader that falls behind loses new datagrams, counted in `dropped`: that is what UDP promises anyway,
and it keeps a flood from turning into unbounded memory.

ICMP errors (port unreachable and the like) and failed sends reported by the transport are kept in
`last_error` (and counted in `errors`) but never raised by `receive_from`: on an unconnected socket such an
error belongs to some earlier datagram, maybe to another peer, so raising it on an unrelated receive would
blame the wrong call and would let one unreachable peer break a server that talks to many.
Errors a send can report synchronously (too large, unreachable network, no permission) are raised by
`send_to` itself.

To share a port between processes (several multicast receivers on one group), bind with `reuse_port`: it
sets SO_REUSEADDR and, where the OS has it, SO_REUSEPORT.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import errno
import ipaddress
import socket
import struct
from typing import Any

from socketkit.errors import ClosedError, DatagramTooLargeError, DeadlineError, ListenError
from socketkit.net.endpoint import Endpoint, parse
from socketkit.net.limits import Limits

__all__ = ["DatagramSocket", "bind", "MAX_DATAGRAM_IPV4", "MAX_DATAGRAM_IPV6"]

#: largest UDP payload: 65535 minus the UDP header (8) and, for IPv4 only, the IP header (20), since
#: IPv6's length field leaves its own header out
MAX_DATAGRAM_IPV4 = 65_507
MAX_DATAGRAM_IPV6 = 65_527

# The count bound protects against floods of tiny datagrams, whose per-entry overhead (bytes object, address
# tuple, deque slot) dwarfs their payload and would slip past a bytes-only bound.
_BYTES_PER_SLOT = 256
_MIN_SLOTS = 16

# Errors that a send may report on behalf of an *earlier* datagram (Linux with IP_RECVERR, Windows):
# they say nothing about the datagram being sent now.
_DEFERRED_ERRNOS = {errno.ECONNREFUSED, errno.ECONNRESET, errno.EHOSTUNREACH, errno.ENETUNREACH}

Address = tuple[str, int]


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, max_count: int, max_bytes: int) -> None:
        self.queue: collections.deque[tuple[bytes, Any]] = collections.deque()
        self.queued_bytes = 0
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.dropped = 0
        self.received = 0
        self.errors = 0
        self.last_error: OSError | None = None
        self.readable = asyncio.Event()
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost_reason: BaseException | None = None

    def datagram_received(self, data: bytes, addr: Any) -> None:
        size = len(data)
        # An empty queue always takes one datagram, so a read_buffer below the datagram size slows the
        # socket down instead of making it deaf.
        if self.queue and (len(self.queue) >= self.max_count or self.queued_bytes + size > self.max_bytes):
            self.dropped += 1
            return
        self.queue.append((data, addr))
        self.queued_bytes += size
        self.received += 1
        self.readable.set()

    def error_received(self, exc: Exception) -> None:
        self.errors += 1
        if isinstance(exc, OSError):
            self.last_error = exc

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_reason = exc
        self.readable.set()
        self.writable.set()
        if not self.lost.done():
            self.lost.set_result(None)


class DatagramSocket:
    """A bound UDP socket. Create it with `bind()`; use it as an async context manager or close it."""

    def __init__(self, sock: socket.socket, transport: asyncio.DatagramTransport, protocol: _Protocol,
                 endpoint: Endpoint) -> None:
        self._sock = sock
        self._transport = transport
        self._protocol = protocol
        self._family = sock.family
        self._closed = False
        self.local: Address = _host_port(sock.getsockname())
        # A host name becomes the address actually bound, which is what a peer has to send to.
        host = endpoint.host if endpoint.ip_version else self.local[0]
        self.endpoint: Endpoint = dataclasses.replace(endpoint, host=host, port=self.local[1])
        self.sent = 0

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<DatagramSocket {self.endpoint} {state} queued={len(self._protocol.queue)} dropped={self.dropped}>"

    # -- counters ------------------------------------------------------------------------------
    @property
    def dropped(self) -> int:
        """Datagrams thrown away because the receive queue was full."""
        return self._protocol.dropped

    @property
    def received(self) -> int:
        """Datagrams accepted into the receive queue."""
        return self._protocol.received

    @property
    def queued(self) -> int:
        return len(self._protocol.queue)

    @property
    def queued_bytes(self) -> int:
        return self._protocol.queued_bytes

    @property
    def queue_limits(self) -> tuple[int, int]:
        """(datagrams, bytes) the receive queue holds before it drops."""
        return self._protocol.max_count, self._protocol.max_bytes

    @property
    def errors(self) -> int:
        return self._protocol.errors

    @property
    def last_error(self) -> OSError | None:
        """The most recent error the OS reported asynchronously (e.g. ICMP port unreachable); never raised."""
        return self._protocol.last_error

    @property
    def closed(self) -> bool:
        return self._closed or self._protocol.lost.done()

    @property
    def family(self) -> socket.AddressFamily:
        return self._family

    @property
    def max_datagram(self) -> int:
        """Largest payload `send_to` accepts for this socket's address family."""
        return MAX_DATAGRAM_IPV6 if self._family == socket.AF_INET6 else MAX_DATAGRAM_IPV4

    # -- sending and receiving -----------------------------------------------------------------
    async def send_to(self, data: bytes | bytearray | memoryview, addr: Address | Endpoint | str) -> None:
        """Send one datagram; waits only while the OS send buffer is full (backpressure)."""
        self._check_open()
        size = memoryview(data).nbytes
        target = await self._resolve(addr)
        limit = MAX_DATAGRAM_IPV4 if _is_ipv4_target(target) else self.max_datagram
        if size > limit:
            raise self._too_large(size, limit)
        while not self._protocol.writable.is_set():
            await self._protocol.writable.wait()
            self._check_open()
        if self._transport.get_write_buffer_size() == 0:
            # Sending on the socket ourselves lets errors such as EMSGSIZE reach the caller: the transports
            # would hand them to error_received (asyncio) or treat some as fatal (uvloop).
            for _attempt in range(2):
                try:
                    self._sock.sendto(data, target)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as exc:
                    if exc.errno == errno.EMSGSIZE:
                        raise self._too_large(size, limit, exc) from exc
                    if exc.errno in _DEFERRED_ERRNOS and _attempt == 0:
                        # The OS handed us an earlier datagram's error and did not send this one: note
                        # the error and try once more.
                        self._protocol.error_received(exc)
                        continue
                    raise
                else:
                    self.sent += 1
                    return
        # Queue behind what is already waiting so datagrams leave in the order they were given.
        self._transport.sendto(bytes(data), target)
        self.sent += 1

    async def receive_from(self, timeout: float | None = None) -> tuple[bytes, Address]:
        """Next datagram and its sender; DeadlineError after `timeout` seconds, ClosedError once closed."""
        protocol = self._protocol
        if not protocol.queue:
            self._check_open()
            try:
                async with asyncio.timeout(timeout):
                    while not protocol.queue:
                        protocol.readable.clear()
                        await protocol.readable.wait()
                        if not protocol.queue:
                            self._check_open()
            except TimeoutError:
                raise DeadlineError(f"no datagram within {timeout}s", seconds=timeout,
                                    endpoint=self.endpoint) from None
        data, addr = protocol.queue.popleft()
        protocol.queued_bytes -= len(data)
        return data, _host_port(addr)

    def __aiter__(self) -> DatagramSocket:
        return self

    async def __anext__(self) -> tuple[bytes, Address]:
        try:
            return await self.receive_from()
        except ClosedError:
            raise StopAsyncIteration from None

    # -- options -------------------------------------------------------------------------------
    def set_broadcast(self, enabled: bool) -> None:
        self._check_open()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, int(enabled))

    @property
    def broadcast(self) -> bool:
        self._check_open()
        return bool(self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST))

    def join(self, group: str, interface: str | int | None = None) -> None:
        """Join a multicast group. IPv4: `interface` is an address (or a name/index on Linux);
        IPv6: an interface name or index. None lets the OS choose by its routing table."""
        self._membership(group, interface, join=True)

    def leave(self, group: str, interface: str | int | None = None) -> None:
        self._membership(group, interface, join=False)

    def set_multicast_interface(self, interface: str | int) -> None:
        """Interface outgoing multicast leaves by: an IPv4 address, or an interface name or index."""
        self._check_open()
        if self._family == socket.AF_INET6:
            self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, _if_index(interface))
        else:
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, _ipv4_interface(interface))

    def set_multicast_loop(self, enabled: bool) -> None:
        """Whether our own multicast comes back to sockets on this host (needed on a single machine)."""
        self._check_open()
        if self._family == socket.AF_INET6:
            self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_LOOP, int(enabled))
        else:
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_LOOP, int(enabled))

    def set_multicast_ttl(self, ttl: int) -> None:
        """Hops outgoing multicast may take: 0 stays on this host, 1 on the local link."""
        if not 0 <= ttl <= 255:
            raise ValueError(f"multicast TTL must be 0..255, got {ttl}")
        self._check_open()
        if self._family == socket.AF_INET6:
            self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, ttl)
        else:
            self._sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, ttl)

    def getsockopt(self, level: int, option: int, buflen: int | None = None) -> int | bytes:
        """Read a socket option socketkit does not wrap."""
        self._check_open()
        if buflen is None:
            return self._sock.getsockopt(level, option)
        return self._sock.getsockopt(level, option, buflen)

    def setsockopt(self, level: int, option: int, value: int | bytes) -> None:
        """Set a socket option socketkit does not wrap."""
        self._check_open()
        self._sock.setsockopt(level, option, value)

    # -- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close; received datagrams not yet read are discarded and waiting receivers get ClosedError, while
        datagrams `send_to` already accepted are still flushed. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._protocol.queue.clear()
        self._protocol.queued_bytes = 0
        self._protocol.readable.set()
        self._protocol.writable.set()
        self._transport.close()

    async def aclose(self) -> None:
        """Close and wait until the event loop has let go of the socket. Idempotent."""
        self.close()
        await asyncio.shield(self._protocol.lost)

    async def __aenter__(self) -> DatagramSocket:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- helpers -------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("datagram socket is closed", endpoint=self.endpoint)
        if self._protocol.lost.done():
            raise ClosedError(f"datagram socket was closed by the event loop ({self._protocol.lost_reason})",
                              endpoint=self.endpoint)

    def _too_large(self, size: int, limit: int, exc: OSError | None = None) -> DatagramTooLargeError:
        why = f" ({exc.strerror})" if exc is not None else ""
        return DatagramTooLargeError(f"datagram of {size} bytes is too large to send{why}",
                                     limit="max_datagram", value=limit, endpoint=self.endpoint)

    async def _resolve(self, addr: Address | Endpoint | str) -> tuple[Any, ...]:
        if isinstance(addr, (Endpoint, str)):
            ep = parse(addr)
            if ep.scheme != "udp":
                raise ValueError(f"send_to needs a udp:// endpoint, got {ep}")
            host, port = ep.host, ep.port
        else:
            host, port = addr[0], addr[1]
        if not isinstance(port, int) or not 0 < port <= 65535:
            raise ValueError(f"bad destination port {port!r}")
        try:
            ip = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            ip = None
        if ip is not None:
            if self._family == socket.AF_INET6 and ip.version == 4:
                return (f"::ffff:{host}", port)
            if self._family == socket.AF_INET and ip.version == 6:
                raise ValueError(f"cannot send to IPv6 address {host} from an IPv4 socket {self.local}")
            if "%" in host:
                # Python resolves a zone on its own, but only through a blocking lookup; do it here.
                plain, zone = host.split("%", 1)
                return (plain, port, 0, _if_index(zone))
            return (host, port)
        # A host name: resolve without blocking the loop, picking an address our socket can reach.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, family=self._family, type=socket.SOCK_DGRAM)
        if not infos:
            raise OSError(errno.EADDRNOTAVAIL, f"{host} has no {self._family.name} address")
        return infos[0][4]

    def _membership(self, group: str, interface: str | int | None, *, join: bool) -> None:
        self._check_open()
        ip = ipaddress.ip_address(group)
        if not ip.is_multicast:
            raise ValueError(f"{group} is not a multicast address")
        if ip.version == 6:
            option = socket.IPV6_JOIN_GROUP if join else socket.IPV6_LEAVE_GROUP
            value = ip.packed + struct.pack("@I", 0 if interface is None else _if_index(interface))
            level = socket.IPPROTO_IPV6
        else:
            option = socket.IP_ADD_MEMBERSHIP if join else socket.IP_DROP_MEMBERSHIP
            if interface is None:
                value = ip.packed + socket.inet_aton("0.0.0.0")
            elif _looks_like_ipv4(interface):
                value = ip.packed + socket.inet_aton(str(interface))
            else:
                # struct ip_mreqn (Linux): choose the interface by index rather than by one of its addresses.
                value = ip.packed + socket.inet_aton("0.0.0.0") + struct.pack("@i", _if_index(interface))
            level = socket.IPPROTO_IP
        try:
            self._sock.setsockopt(level, option, value)
        except OSError as exc:
            verb = "join" if join else "leave"
            where = "the default interface" if interface is None else f"interface {interface!r}"
            raise OSError(exc.errno, f"cannot {verb} multicast group {group} on {where}: {exc.strerror}") from exc


async def bind(endpoint: str | Endpoint, *, limits: Limits | None = None, reuse_port: bool | None = None,
               broadcast: bool | None = None) -> DatagramSocket:
    """Open a UDP socket bound to `udp://host:port` (port 0: a free port, see `.local`).

    `reuse_port` / `broadcast` override the endpoint's `?reuse_port=` / `?broadcast=` options. A host name
    is resolved and its addresses tried in order; ListenError names the endpoint when none can be bound.
    """
    ep = parse(endpoint)
    if ep.scheme != "udp":
        raise ListenError(f"bind() opens udp:// endpoints; use serve()/connect() for {ep.scheme}://",
                          endpoint=ep)
    limits = limits or Limits()
    reuse = ep.flag("reuse_port") if reuse_port is None else reuse_port
    bcast = ep.flag("broadcast") if broadcast is None else broadcast
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(ep.host, ep.port, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP,
                                       flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot resolve {ep.host!r}: {exc.strerror}", endpoint=ep) from exc
    failures: list[str] = []
    for family, type_, proto, _name, sockaddr in infos:
        sock = socket.socket(family, type_, proto)
        try:
            _prepare(sock, reuse=reuse, broadcast=bcast)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            failures.append(f"{_host_port(sockaddr)[0]}: {exc.strerror or exc}")
            continue
        break
    else:
        raise ListenError(f"cannot bind: {'; '.join(failures) or 'no address'}", endpoint=ep)
    max_bytes = limits.read_buffer
    max_count = max(_MIN_SLOTS, max_bytes // _BYTES_PER_SLOT)
    try:
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Protocol(max_count, max_bytes), sock=sock)
    except BaseException:
        sock.close()
        raise
    try:
        transport.set_write_buffer_limits(high=limits.write_buffer)
    except (AttributeError, NotImplementedError):
        pass  # a loop without flow control on datagrams: sends then never wait, which is still correct
    return DatagramSocket(sock, transport, protocol, ep)


def _prepare(sock: socket.socket, *, reuse: bool, broadcast: bool) -> None:
    if reuse:
        # For UDP both are needed on Linux to share a port among processes, and SO_REUSEADDR alone is what
        # the BSDs and macOS honour for multicast receivers.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if broadcast:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)


def _host_port(addr: Any) -> Address:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        if host.startswith("::ffff:") and "." in host:
            # A dual-stack socket sees IPv4 peers as mapped addresses; report them as the IPv4 they are.
            host = host[7:]
        elif len(addr) >= 4 and addr[3] and "%" not in host:
            try:
                host = f"{host}%{socket.if_indextoname(addr[3])}"
            except OSError:
                host = f"{host}%{addr[3]}"
        return host, port
    return addr


def _is_ipv4_target(target: tuple[Any, ...]) -> bool:
    host = target[0]
    return ":" not in host or (host.startswith("::ffff:") and "." in host)


def _looks_like_ipv4(value: str | int) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value).version == 4
    except ValueError:
        return False


def _ipv4_interface(interface: str | int) -> bytes:
    if _looks_like_ipv4(interface):
        return socket.inet_aton(str(interface))
    # struct ip_mreqn (Linux) picks the interface by index for IP_MULTICAST_IF too.
    return socket.inet_aton("0.0.0.0") + socket.inet_aton("0.0.0.0") + struct.pack("@i", _if_index(interface))


def _if_index(interface: str | int) -> int:
    if isinstance(interface, int):
        return interface
    if interface.isdigit():
        return int(interface)
    try:
        return socket.if_nametoindex(interface)
    except OSError:
        raise ValueError(f"no network interface named {interface!r}") from None
