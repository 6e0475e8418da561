"""socketkit's mailbox server on a real socket, driven by a raw WebSocket client (the `websockets` package):
the reference protocol over the wire, limits, slow readers, and the state surviving a restart."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from pathlib import Path

import pytest
from helpers import WAIT, wait_for
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from socketkit.peer.relay import MailboxLimits, RelayConfig, RelayLimits, start_relay

APP = "lothar.com/wormhole/text-or-file-xfer"
LOCAL = ["tcp://127.0.0.1:0"]


def config(db: str | Path = ":memory:", **limits) -> RelayConfig:
    return RelayConfig(LOCAL, [], db_path=db, limits=RelayLimits(**limits))


class Peer:
    """A WebSocket client speaking the mailbox protocol by hand; every wait bounded."""

    def __init__(self, ws) -> None:
        self.ws = ws

    @classmethod
    async def connect(cls, url: str, **options) -> Peer:
        peer = cls(await ws_connect(url, open_timeout=WAIT, **options))
        welcome = await peer.recv()
        assert welcome["type"] == "welcome", welcome
        return peer

    async def recv(self) -> dict:
        return json.loads(await asyncio.wait_for(self.ws.recv(), WAIT))

    async def send(self, **msg) -> None:
        await self.ws.send(json.dumps(msg))

    async def ask(self, **msg) -> dict:
        """Send; expect the ack, then return the next message (the answer)."""
        await self.send(**msg)
        ack = await self.recv()
        assert ack["type"] == "ack", ack
        return await self.recv()

    async def bind(self, side: str) -> None:
        await self.send(type="bind", appid=APP, side=side, client_version=["socketkit-test", "1"])
        assert (await self.recv())["type"] == "ack"

    async def close(self) -> None:
        await self.ws.close()


async def test_a_whole_exchange_over_websockets_and_the_counters():
    async with await start_relay(config()) as relay:
        url = relay.mailbox_url
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/v1")
        a, b = await Peer.connect(url), await Peer.connect(url)
        await a.bind("aaaa")
        await b.bind("bbbb")
        name = (await a.ask(type="allocate"))["nameplate"]
        assert (await b.ask(type="list"))["nameplates"] == [{"id": name}]
        mailbox = (await a.ask(type="claim", nameplate=name))["mailbox"]
        assert (await b.ask(type="claim", nameplate=name))["mailbox"] == mailbox
        await a.send(type="open", mailbox=mailbox)
        await b.send(type="open", mailbox=mailbox)
        await a.recv(), await b.recv()  # acks
        await a.send(type="add", phase="pake", body="c0ffee", id="7")
        assert (await a.recv())["type"] == "ack"
        for peer in (a, b):
            got = await peer.recv()
            assert (got["type"], got["side"], got["phase"], got["body"], got["id"]) == \
                ("message", "aaaa", "pake", "c0ffee", "7")
        stats = relay.stats()
        assert stats["mailbox_clients"] == 2 and stats["nameplates"] == 1 and stats["messages"] == 1
        assert (await a.ask(type="release"))["type"] == "released"
        assert (await b.ask(type="release"))["type"] == "released"
        assert (await a.ask(type="close", mood="happy"))["type"] == "closed"
        assert (await b.ask(type="close", mood="happy"))["type"] == "closed"
        assert relay.stats()["mailboxes"] == 0
        await a.close()
        await b.close()
        await wait_for(lambda: relay.stats()["mailbox_clients"] == 0)


async def test_crowded_errors_and_the_landing_page():
    async with await start_relay(config()) as relay:
        url = relay.mailbox_url
        peers = [await Peer.connect(url) for _ in range(3)]
        for peer, side in zip(peers, "abc", strict=True):
            await peer.bind(side)
        for peer in peers[:2]:
            assert (await peer.ask(type="claim", nameplate="4"))["type"] == "claimed"
        answer = await peers[2].ask(type="claim", nameplate="4")
        assert answer["type"] == "error" and answer["error"] == "crowded"
        assert answer["orig"] == {"type": "claim", "nameplate": "4"}
        await peers[2].ws.send(b"\xff\xfe binary garbage")
        assert (await peers[2].recv())["error"] == "message is not UTF-8"
        for peer in peers:
            await peer.close()
        # a plain HTTP GET of / answers as the reference's one-line page; other paths are refused
        reader, writer = await asyncio.open_connection("127.0.0.1", relay.mailbox_servers[0].endpoints[0].port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), WAIT)
        writer.close()
        assert reply.startswith(b"HTTP/1.1 200") and b"Wormhole Relay" in reply
        with pytest.raises(InvalidStatus):
            await ws_connect(url.replace("/v1", "/v2"), open_timeout=WAIT)


async def test_limits_on_the_wire():
    limits = dict(clients_per_address=2, ws_message=2000, mailbox=MailboxLimits(max_body=1000))
    async with await start_relay(config(**limits)) as relay:
        url = relay.mailbox_url
        a, b = await Peer.connect(url), await Peer.connect(url)
        with pytest.raises(InvalidStatus) as info:
            await ws_connect(url, open_timeout=WAIT)
        assert info.value.response.status_code == 403
        assert relay.stats()["refused"] == 1
        await a.bind("a")
        await a.send(type="open", mailbox="m")
        await a.recv()
        answer = await a.ask(type="add", phase="0", body="00" * 600)
        assert answer["type"] == "error" and "body too large" in answer["error"]
        # a WebSocket message past ws_message ends the connection (1009), before any parsing
        await b.send(type="ping", ping="x" * 3000)
        with pytest.raises(ConnectionClosed) as closed:
            await b.recv()
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        await a.close()


async def test_a_client_that_stops_reading_is_dropped_not_buffered():
    limits = dict(sendq=2_000_000, ws_message=600_000,
                  mailbox=MailboxLimits(max_body=500_000, max_mailbox_bytes=100 << 20, max_stored_bytes=200 << 20))
    async with await start_relay(config(**limits)) as relay:
        url = relay.mailbox_url
        port = relay.mailbox_servers[0].endpoints[0].port
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # so the kernel holds little for it
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        slow = Peer(await ws_connect(url, sock=sock, max_queue=1, max_size=None, compression=None,
                                    open_timeout=WAIT))
        await slow.recv()
        await slow.bind("slow")
        await slow.send(type="open", mailbox="m")
        writer = await Peer.connect(url, max_size=None, compression=None)
        await writer.bind("writer")
        await writer.send(type="open", mailbox="m")
        heard: list[str] = []

        async def keep_up() -> None:  # the writer hears its own messages too, and reads them all
            async for text in writer.ws:
                heard.append(json.loads(text)["type"])

        reading = asyncio.get_running_loop().create_task(keep_up())
        body = os.urandom(200_000).hex()   # (and no compression: this must cost its size on the wire)
        for i in range(60):  # 24 MB for the slow one, far past its sendq and every buffer on the way
            await writer.send(type="add", phase=str(i), body=body)
            # the writer keeps up: it hears each of its messages before it sends the next
            await wait_for(lambda i=i: heard.count("message") > i, what=f"the writer's message {i}")
            if relay.mailbox.dropped:
                break
        await wait_for(lambda: relay.mailbox.dropped == 1, what="the slow client to be dropped")
        # the writer is unharmed: it still gets answers
        await writer.send(type="ping", ping=1)
        await wait_for(lambda: "pong" in heard, what="the writer's pong")
        assert relay.stats()["mailbox_clients"] == 2 and relay.stats()["refused"] == 1
        reading.cancel()
        await writer.close()
        slow.ws.transport.abort()   # no close handshake with a client that does not read


async def test_channels_and_messages_survive_a_restart(tmp_path):
    db = tmp_path / "peer-relay.db"
    relay = await start_relay(config(db))
    a = await Peer.connect(relay.mailbox_url)
    await a.bind("aaaa")
    name = (await a.ask(type="allocate"))["nameplate"]
    mailbox = (await a.ask(type="claim", nameplate=name))["mailbox"]
    await a.send(type="open", mailbox=mailbox)
    await a.recv()
    await a.send(type="add", phase="pake", body="0123", id="p1")
    await a.recv()
    assert (await a.recv())["type"] == "message"
    await relay.aclose()
    with pytest.raises(ConnectionClosed):   # the server said goodbye (1001): clients reconnect
        while True:
            await a.recv()

    relay = await start_relay(config(db))   # a new port, the same file
    async with relay:
        assert relay.stats()["nameplates"] == 1 and relay.stats()["messages"] == 1
        b = await Peer.connect(relay.mailbox_url)
        await b.bind("bbbb")
        assert (await b.ask(type="list"))["nameplates"] == [{"id": name}]
        assert (await b.ask(type="claim", nameplate=name))["mailbox"] == mailbox
        got = await b.ask(type="open", mailbox=mailbox)
        assert (got["type"], got["side"], got["body"], got["id"]) == ("message", "aaaa", "0123", "p1")
        # the side that was there before can still release and close: both go, the file is emptied
        again = await Peer.connect(relay.mailbox_url)
        await again.bind("aaaa")
        assert (await again.ask(type="release", nameplate=name))["type"] == "released"
        assert (await again.ask(type="close", mailbox=mailbox))["type"] == "closed"
        assert (await b.ask(type="release"))["type"] == "released"
        assert (await b.ask(type="close", mood="happy"))["type"] == "closed"
        assert relay.stats()["mailboxes"] == 0
        usage = relay.store.usage_counts()
        assert usage["mailbox"] == {"happy": 1} and usage["nameplate"] == {"happy": 1}
        await b.close()
        await again.close()


async def test_idle_channels_expire_once_nobody_is_connected():
    async with await start_relay(config(prune_interval=0.05, mailbox=MailboxLimits(expiry=0.3))) as relay:
        a = await Peer.connect(relay.mailbox_url)
        await a.bind("a")
        mailbox = (await a.ask(type="claim", nameplate="12"))["mailbox"]
        await a.send(type="open", mailbox=mailbox)
        await a.recv()
        await asyncio.sleep(0.5)    # past the expiry, but a listens: kept
        assert relay.stats()["nameplates"] == 1
        await a.close()
        await wait_for(lambda: relay.stats()["nameplates"] == 0 and relay.stats()["mailboxes"] == 0,
                       what="the idle channel to expire")
