"""`--lan`: two devices on one network exchange with no server anywhere.

The sender runs a private mailbox server (peer/relay.py, in-process, on an ephemeral port) and announces it
by DNS-SD over multicast DNS as a `_socketkit-peer._tcp` service whose TXT record names the code's
nameplate; `avahi-browse -r _socketkit-peer._tcp` sees it. The receiver browses for that nameplate, connects
to the announced mailbox, and from there on everything is the usual protocol: SPAKE2 on the short code (a
neighbour who sees the announcement learns only the nameplate, and has one guess at the words before the
sender stops), the versions phase, transit with direct hints only, the same encrypted records.

zeroconf (python-zeroconf) owns its multicast sockets, as asyncssh owns its connections: a well-kept
implementation of a protocol we do not write again (see docs/architecture.md).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import os
import secrets
import socket
from collections.abc import Callable

from socketkit.errors import PeerError, WrongCodeError
from socketkit.net.interfaces import local_addresses
from socketkit.peer.options import PeerOptions, Result
from socketkit.peer.receive import Confirm
from socketkit.proto.wormhole import choose_words, validate_code

SERVICE = "_socketkit-peer._tcp.local."


def _zeroconf(addresses: list[str] | None):
    from zeroconf import InterfaceChoice, IPVersion
    from zeroconf.asyncio import AsyncZeroconf

    if addresses:
        v4 = [a for a in addresses if ipaddress.ip_address(a).version == 4]
        return AsyncZeroconf(interfaces=v4 or addresses, ip_version=IPVersion.V4Only if v4 else IPVersion.V6Only)
    return AsyncZeroconf(interfaces=InterfaceChoice.All, ip_version=IPVersion.V4Only)


async def send_lan(paths: list[str], *, text: str | None = None, code: str | None = None, words: int = 2,
                   options: PeerOptions | None = None, on_code: Callable[[str], None] | None = None) -> Result:
    from zeroconf.asyncio import AsyncServiceInfo

    from socketkit.peer.relay import RelayConfig, start_relay
    from socketkit.peer.send import send

    opts = options or PeerOptions()
    # A nameplate from a range wide enough that two senders on one network rarely pick the same one.
    code = validate_code(code) if code else f"{100 + secrets.randbelow(900)}-{choose_words(words)}"
    nameplate = code.split("-", 1)[0]
    addresses = opts.advertise or local_addresses()
    bind = addresses[0] if opts.advertise and len(addresses) == 1 else "0.0.0.0"
    relay = await start_relay(RelayConfig(mailbox_listen=[f"tcp://{_literal(bind)}:0"], transit_listen=[], db_path=":memory:"))
    port = relay.mailbox_servers[0].endpoints[0].port
    announced = [a for a in addresses if ipaddress.ip_address(a).version == 4] or addresses
    info = AsyncServiceInfo(
        SERVICE, f"socketkit-{nameplate}-{os.urandom(3).hex()}.{SERVICE}", port=port,
        addresses=[socket.inet_pton(socket.AF_INET6 if ":" in a else socket.AF_INET, a) for a in announced],
        properties={"nameplate": nameplate, "v": "1"}, server=f"socketkit-{os.urandom(3).hex()}.local.")
    azc = _zeroconf(opts.advertise)
    try:
        await azc.async_register_service(info)
        local = dataclasses.replace(opts, mailbox=f"ws://{_literal(announced[0])}:{port}/v1", relay=None)
        return await send(paths, text=text, code=code, options=local, on_code=on_code)
    finally:
        try:
            await azc.async_unregister_service(info)
        finally:
            await azc.async_close()
            await relay.aclose()


def _literal(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


async def discover(nameplate: str, *, timeout: float, advertise: list[str] | None = None) -> list[tuple[str, int]]:
    """(address, port) of every mailbox announced for `nameplate`, gathered until the first appears (plus a
    short moment for others) or `timeout`."""
    from zeroconf import ServiceStateChange
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo

    found: list[tuple[str, int]] = []
    first = asyncio.Event()
    azc = _zeroconf(advertise)
    pending: set[asyncio.Task[None]] = set()

    async def resolve(name: str) -> None:
        info = AsyncServiceInfo(SERVICE, name)
        if not await info.async_request(azc.zeroconf, 3000):
            return
        props = {k: v for k, v in (info.properties or {}).items()}
        if props.get(b"nameplate") != nameplate.encode() or info.port is None:
            return
        for addr in info.parsed_addresses():
            if (addr, info.port) not in found:
                found.append((addr, info.port))
                first.set()

    def changed(zeroconf, service_type, name, state_change) -> None:  # zeroconf's handler signature
        if state_change is ServiceStateChange.Added:
            task = asyncio.ensure_future(resolve(name))
            pending.add(task)
            task.add_done_callback(pending.discard)

    browser = AsyncServiceBrowser(azc.zeroconf, [SERVICE], handlers=[changed])
    try:
        try:
            async with asyncio.timeout(timeout):
                await first.wait()
        except TimeoutError:
            pass
        else:
            await asyncio.sleep(0.3)
    finally:
        await browser.async_cancel()
        for t in list(pending):
            t.cancel()
        await azc.async_close()
    return found


async def receive_lan(code: str, *, out_dir: str = ".", confirm: Confirm | None = None, overwrite: bool = False,
                      options: PeerOptions | None = None) -> Result:
    from socketkit.peer.receive import receive

    opts = options or PeerOptions()
    code = validate_code(code)
    nameplate = code.split("-", 1)[0]
    mailboxes = await discover(nameplate, timeout=opts.timeout, advertise=opts.advertise)
    if not mailboxes:
        raise PeerError(f"no sender for code {nameplate}-... found on this network within {opts.timeout:g}s "
                        "(is it running with --lan, on the same network, and is multicast allowed?)")
    last: Exception | None = None
    for addr, port in mailboxes:
        local = dataclasses.replace(opts, mailbox=f"ws://{_literal(addr)}:{port}/v1", relay=None)
        try:
            return await receive(code, out_dir=out_dir, confirm=confirm, overwrite=overwrite, options=local)
        except WrongCodeError:
            raise  # the sender we found does not share our code: trying others would be guessing
        except PeerError as e:
            last = e
    assert last is not None
    raise last


__all__ = ["SERVICE", "discover", "receive_lan", "send_lan"]
