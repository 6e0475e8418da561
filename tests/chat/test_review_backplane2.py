# ruff: noqa: F811 - pytest fixtures imported from test_backplane are parameters by the same name
"""Review of 73a638c (TS6-style channel incarnations, references, validation of remote fields): real
redis-server, real nodes, raw IRC clients (the fixtures and helpers of test_backplane)."""

from __future__ import annotations

import json
import time
from typing import Any

from helpers import wait_for
from test_backplane import (  # noqa: F401 - the fixtures are used by name
    Client,
    Redis,
    _clean,
    both_join,
    join,
    knows,
    nodes,
    redis,
    redis_call,
)
from test_review_backplane import Held

PREFIX = "socketkit:chat:socketkit:"


def _member_modes(node: Any, channel: str, nick: str) -> str | None:
    ch = node.core.lookup_channel(channel)
    x = node.core.lookup_nick(nick)
    if ch is None or x is None:
        return None
    return ch.members.get(x)


async def test_the_younger_incarnation_keeps_its_key_when_the_older_one_never_changed(redis: Redis) -> None:
    """B starts while Redis is down and makes its own #x (bob is @ there) with +k. When Redis is back,
    B loses the TS (A's #x is older): bob's @ lapses, but lose_ts keeps B's key/modes and resets its
    stamp to 0; A's record of #x has stamp 0 too (never changed since creation), so B never adopts it.
    A lets anyone in without a key, B asks for the key that a deopped younger incarnation set."""
    async with nodes(redis, 1) as (a,):
        alice = await Client.open(a, "alice")
        await join(alice, "#x")
        redis.stop()
        await wait_for(lambda: a.service.backplane.conn is None, what="A noticing redis is gone")
        async with nodes(redis, 1) as (b,):
            bob = await Client.open(b, "bob")
            await join(bob, "#x")
            await bob.send("MODE #x +k sekrit")
            await bob.expect("MODE")
            redis.start()
            await wait_for(lambda: a.service.backplane.connected.is_set() and b.service.backplane.connected.is_set()
                           and knows(a, "bob") and knows(b, "alice")
                           and _member_modes(b, "#x", "alice") is not None
                           and _member_modes(a, "#x", "bob") is not None,
                           what="both nodes seeing each other's member of #x")
            await wait_for(lambda: _member_modes(b, "#x", "bob") == "", what="bob's @ lapsing on B")
            ch_a, ch_b = a.core.lookup_channel("#x"), b.core.lookup_channel("#x")
            assert ch_a.key is None
            assert ch_b.key == ch_a.key, f"B keeps the losing incarnation's key {ch_b.key!r}; A has none"
            await bob.close()
        await alice.close()


async def test_a_ghost_channel_held_through_an_outage_takes_ops_from_a_fresh_one(redis: Redis) -> None:
    """alice made #x on A; bob (B) joined, alice left: A holds #x with bob alone (created T0). Redis goes
    down; bob parts and rejoins, so B makes a fresh #x (T1, bob @). A never heard the part (it keeps
    remote users through an outage), so after the resync A says bob is not @ (T1 is younger than its
    ghost's T0) while B says he is: the nodes disagree on bob's ops."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")
        await alice.send("PART #x")
        await alice.expect("PART")
        await wait_for(lambda: _member_modes(b, "#x", "alice") is None, what="B seeing alice leave")
        redis.stop()
        await wait_for(lambda: a.service.backplane.conn is None and b.service.backplane.conn is None,
                       what="both nodes noticing redis is gone")
        await bob.send("PART #x")
        await bob.expect("PART")
        await join(bob, "#x")  # a new #x on B: bob is its operator
        assert _member_modes(b, "#x", "bob") == "o"
        redis.start()
        await wait_for(lambda: a.service.backplane.connected.is_set() and b.service.backplane.connected.is_set(),
                       what="both nodes reconnecting")
        # Wait until A has loaded B's state (B's channel record of the fresh #x is in Redis by then).
        await wait_for(lambda: redis_call(redis.port, "HEXISTS",
                                          f"{PREFIX}node:{b.service.backplane.node}:channels", "#x") == 1,
                       what="B's record of #x")
        bp = a.service.backplane
        bp._load(bp.conn, b.service.backplane.node)  # once more, in case A loaded B before it rewrote #x
        loaded: list[bool] = []
        bp.conn.send("PING", cb=lambda _: loaded.append(True))
        await wait_for(lambda: loaded, what="A having applied B's state")
        assert _member_modes(a, "#x", "bob") == _member_modes(b, "#x", "bob") == "o", (
            f"A: bob is {_member_modes(a, '#x', 'bob')!r}, B: {_member_modes(b, '#x', 'bob')!r}")
        # And the ghost's old creation time takes bob's @ on B as soon as anyone on A joins.
        carol = await Client.open(a, "carol")
        await join(carol, "#x")
        await wait_for(lambda: _member_modes(b, "#x", "carol") is not None, what="B seeing carol join")
        assert _member_modes(b, "#x", "bob") == "o", "carol joining through A deopped bob on B"
        for c in (alice, bob, carol):
            await c.close()


def _publish_from(port: int, kind: str, **data: Any) -> None:
    ev = {"k": kind, "u": 1, "i": ["eve", "~eve", "10.0.0.1", "eve", None], "n": "evil", **data}
    redis_call(port, "PUBLISH", PREFIX + "events", json.dumps(ev))


async def test_a_topic_time_that_is_not_a_number_disconnects_whoever_joins(redis: Redis) -> None:
    """A topic event's time is not validated (apply_event: float(ev.get("time"))): NaN (which JSON from
    Python carries) is stored as the channel's topic time, and every local user who then joins the
    channel is cut off (send_topic: int(nan) raises inside the client's handler)."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        await join(alice, "#x")
        _publish_from(redis.port, "topic", channel="#x", topic="hello", time=float("nan"))
        await alice.expect("TOPIC", lambda m: m.params == ["#x", "hello"])
        carol = await Client.open(a, "carol")
        await carol.send("JOIN #x")
        try:
            got = await carol.expect_any(("366", "ERROR"))
        except Exception as e:  # noqa: BLE001 - the server closed the connection
            raise AssertionError(f"carol was cut off joining #x: {e}") from None
        assert got.command == "366"
        for c in (alice, carol):
            await c.close()


async def test_a_deop_from_a_lost_ts_is_not_shown_for_a_user_never_seen_as_op(redis: Redis) -> None:
    """alice (A) and bob (B) make #x in the same instant; each node hears the other late. B loses the TS
    and emits -o for bob; A never counted bob as @ (his join came from the younger side), yet _mode
    relays '-o bob' to alice (a remote o/v change is shown whether or not it changed anything)."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await wait_for(lambda: knows(a, "bob") and knows(b, "alice"), what="the nodes knowing both users")
        held_a, held_b = Held(a), Held(b)
        await join(alice, "#x")
        made = a.core.lookup_channel("#x").created
        await wait_for(lambda: time.time() > made + 0.01, what="a later creation time on B")  # beyond TS_SLACK
        await join(bob, "#x")
        await wait_for(lambda: held_a.has(b'"join"') and held_b.has(b'"join"'), what="both joins in flight")
        held_a.release()
        held_b.release()
        await wait_for(lambda: _member_modes(b, "#x", "bob") == "" and _member_modes(a, "#x", "bob") == ""
                       and _member_modes(a, "#x", "alice") == "o" and _member_modes(b, "#x", "alice") == "o",
                       what="both nodes agreeing alice is the @ of #x")
        await bob.send("PRIVMSG #x :after")  # published by B after its -o: A relays it after too
        await alice.expect("PRIVMSG", lambda m: m.params == ["#x", "after"])
        shown = [line for line in alice.seen if b" MODE #x -o bob" in line]
        assert not shown, f"alice was told bob lost an @ she never saw: {shown}"
        for c in (alice, bob):
            await c.close()
