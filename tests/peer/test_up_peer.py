"""`socketkit up` runs the peer relay: its printed flags point a socketkit peer at it, and the landing page's
status shows the relay's own counters moving."""

from __future__ import annotations

import asyncio
import io
import os

import httpx

from socketkit import up
from socketkit.peer.options import PeerOptions
from socketkit.peer.receive import receive
from socketkit.peer.send import send


async def test_up_runs_the_relay_and_a_transfer_goes_through_it(tmp_path):
    ctx = up.UpContext(overrides={"web": ["tcp://127.0.0.1:0"], "peer": ["tcp://127.0.0.1:0"],
                                  "peer-transit": ["tcp://127.0.0.1:0"]})
    await up.start_all(ctx, {"web", "peer"})
    try:
        out = io.StringIO()
        up.describe(ctx.running, out)
        text = out.getvalue()
        peer = next(r for r in ctx.running if r.name == "peer")
        mailbox = next(line.split("--mailbox ")[1].split()[0] for line in peer.notes if "--mailbox" in line)
        relay = next(line.split("--transit-relay ")[1].split()[0] for line in peer.notes if "--transit-relay" in line)
        assert f"--relay-url {mailbox}" in text and "--transit-helper tcp:127.0.0.1:" in text
        payload = tmp_path / "doc.bin"
        payload.write_bytes(os.urandom(300_000))
        (tmp_path / "out").mkdir()
        # both sides refuse direct connections: the bytes must go through up's transit relay
        opts = PeerOptions(mailbox=mailbox, relay=relay, listen=False, timeout=10, wait=20, quiet=True)
        sent, got = await asyncio.gather(send([str(payload)], code="8-up-relay", options=opts),
                                         receive("8-up-relay", out_dir=tmp_path / "out", options=opts))
        assert "relay" in got.route and got.sha256 == sent.sha256
        assert (tmp_path / "out" / "doc.bin").read_bytes() == payload.read_bytes()
        web = next(r for r in ctx.running if r.name == "web")
        base = web.endpoints[0].replace("tcp://", "http://")
        async with httpx.AsyncClient() as client:
            status = (await client.get(base + "/api/status")).json()
            page = (await client.get(base + "/")).text
        row = next(s for s in status["services"] if s["name"] == "peer")
        assert row["details"]["bytes_relayed"] >= 300_000
        assert row["details"]["transit_pairs"] >= 1
        assert "static/app.js" in page  # the dashboard (it draws the figures above from /api/status)
    finally:
        await up.stop_all(ctx, drain=0)
