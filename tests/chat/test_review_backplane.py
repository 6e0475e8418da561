# ruff: noqa: F811 - pytest fixtures imported from test_backplane are parameters by the same name
"""Review of the shared channel state between backplane nodes (modes, AWAY, INVITE, channel records):
real redis-server, real nodes, raw IRC clients (the fixtures and helpers of test_backplane)."""

from __future__ import annotations

import json
from typing import Any

from helpers import wait_for
from test_backplane import (  # noqa: F401 - the fixtures are used by name
    Client,
    Redis,
    _clean,
    both_join,
    channel_modes,
    join,
    knows,
    nodes,
    redis,
    redis_call,
)

PREFIX = "socketkit:chat:socketkit:"


class Held:
    """Holds the pub/sub pushes a node receives (as if Redis were slow to deliver them) until released."""

    def __init__(self, node: Any) -> None:
        self.bp = node.service.backplane
        self.conn = self.bp.conn
        self.pushes: list[Any] = []
        self.conn.on_push = self.pushes.append

    def has(self, needle: bytes) -> bool:
        return any(len(p) >= 3 and needle in p[2] for p in self.pushes)

    def release(self) -> None:
        self.conn.on_push = self.bp._on_push
        for p in self.pushes:
            self.bp._on_push(p)
        self.pushes.clear()


async def test_invite_used_on_one_node_cannot_be_used_again_on_another(redis: Redis) -> None:
    """An INVITE is consumed by the JOIN it allows (single server). Here A (the inviter's node) keeps it
    after carol joined on B, so carol, kicked, rejoins the +i channel through A without a new invite."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        carol = await Client.open(b, "carol")
        await join(alice, "#x")
        await alice.send("MODE #x +i")
        await alice.expect("MODE")
        await wait_for(lambda: knows(a, "carol") and "i" in channel_modes(b, "#x"),
                       what="A knowing carol, B knowing #x is +i")
        await alice.send("INVITE carol #x")
        await carol.expect("INVITE")
        await carol.send("JOIN #x")
        await carol.expect("366")
        await alice.expect("JOIN", lambda m: m.source.startswith("carol!"))
        await alice.send("KICK #x carol :out")
        await carol.expect("KICK")
        await carol.send("QUIT")
        await wait_for(lambda: a.core.lookup_nick("carol") is None, what="A forgetting carol")
        await wait_for(lambda: redis_call(redis.port, "EXISTS", PREFIX + "nick:carol") == 0,
                       what="carol's nick released")
        again = await Client.open(a, "carol")
        await again.send("JOIN #x")
        got = await again.expect_any(("473", "366"))
        assert got.command == "473", "the invite was used on B, yet A let carol into the +i channel again"
        for c in (alice, carol, again):
            await c.close()


async def test_deop_is_not_lost_when_the_target_changes_nick_meanwhile(redis: Redis) -> None:
    """MODE -o names its target by nick: if bob renames on B before B applies alice's -o, B keeps him
    an operator (A thinks he is not): a deop that does not hold, and ops that differ between nodes."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")
        await alice.send("MODE #x +o bob")
        await bob.expect("MODE", lambda m: m.params[1:] == ["+o", "bob"])
        held = Held(b)  # B hears A late
        await alice.send("MODE #x -o bob")
        await alice.expect("MODE", lambda m: m.params[1:] == ["-o", "bob"])
        await wait_for(lambda: held.has(b'"mode"'), what="A's -o reaching B's connection")
        await bob.send("NICK robert")
        await bob.expect("NICK")
        held.release()
        await wait_for(lambda: knows(a, "robert"), what="A seeing the rename")
        ch_a, ch_b = a.core.lookup_channel("#x"), b.core.lookup_channel("#x")
        robert_a, robert_b = a.core.lookup_nick("robert"), b.core.lookup_nick("robert")
        assert "o" not in ch_a.members[robert_a]
        assert "o" not in ch_b.members[robert_b], "B still lets robert act as an operator after -o"
        for c in (alice, bob):
            await c.close()


async def test_a_record_adopted_at_resync_is_rewritten_for_later_nodes(redis: Redis) -> None:
    """After a Redis restart, B adopts A's newer view of #x (+i set during the outage) but leaves its own
    record of #x in Redis as it was. Once A leaves, a node starting later learns #x from B's stale record
    and lets anyone into the +i channel."""
    cm_a, cm_b = nodes(redis, 1), nodes(redis, 1)
    (a,) = await cm_a.__aenter__()
    a_open = True
    try:
        async with cm_b as (b,):
            alice = await Client.open(a, "alice")
            bob = await Client.open(b, "bob")
            await both_join(a, b, alice, bob, "#x")
            redis.stop()
            await wait_for(lambda: a.service.backplane.conn is None and b.service.backplane.conn is None,
                           what="both nodes noticing redis is gone")
            await alice.send("MODE #x +i")  # B does not hear of it now
            await alice.expect("MODE")
            redis.start()
            await wait_for(lambda: "i" in channel_modes(b, "#x"), what="B adopting +i at the resync")
            a_open = False
            await cm_a.__aexit__(None, None, None)  # A leaves the network (bye)
            await wait_for(lambda: b.core.lookup_nick("alice") is None, what="B forgetting alice")
            async with nodes(redis, 1) as (c,):
                await wait_for(lambda: c.service.backplane.connected.is_set(), what="C joining the network")
                ch = c.core.lookup_channel("#x")
                key = f"{PREFIX}node:{b.service.backplane.node}:channels"
                stale = redis_call(redis.port, "HGET", key, "#x")
                assert ch is not None and "i" in ch.modes, f"C learned #x from B's stale record: {stale!r}"
                carol = await Client.open(c, "carol")
                await carol.send("JOIN #x")
                assert (await carol.expect_any(("473", "366"))).command == "473"
                await carol.close()
            for cl in (alice, bob):
                await cl.close()
    finally:
        if a_open:
            await cm_a.__aexit__(None, None, None)


async def test_a_bad_channel_record_does_not_cut_a_node_off(redis: Redis) -> None:
    """One malformed channel record in another node's channel hash (bans not [mask, by, time]) must be
    skipped, not kill the Redis session (and every reconnect's sync after it)."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice")
        bob = await Client.open(b, "bob")
        await both_join(a, b, alice, bob, "#x")
        users = PREFIX + "node:evil:users"
        redis_call(redis.port, "HSET", users, "1", json.dumps(
            {"u": 1, "i": ["eve", "~eve", "10.0.0.1", "eve", None], "c": {"#x": ""}, "a": None}))
        redis_call(redis.port, "HSET", PREFIX + "node:evil:channels", "#x", json.dumps(
            {"ch": "#x", "created": 1.0, "stamp": 1e12, "topic": "", "topic_by": "", "topic_time": 0.0,
             "modes": "nt", "key": None, "limit": None, "bans": [7]}))
        redis_call(redis.port, "SADD", PREFIX + "nodes", "evil")
        redis_call(redis.port, "SET", PREFIX + "node:evil", "1", "EX", 30)
        redis_call(redis.port, "PUBLISH", PREFIX + "events", json.dumps({"k": "sync", "n": "evil"}))
        await wait_for(lambda: knows(a, "eve"), what="A loading the other node's hash")
        await bob.send("PRIVMSG #x :still connected?")
        got = await alice.expect("PRIVMSG")
        assert got.params == ["#x", "still connected?"]
        for c in (alice, bob):
            await c.close()


async def test_a_remote_user_who_is_away_joining_sends_away_notify(redis: Redis) -> None:
    """away-notify: a user who is away joins a channel; watchers get AWAY after the JOIN (as a local
    join does, core_channels.join_one). A user joining through another node sends none."""
    async with nodes(redis) as (a, b):
        alice = await Client.open(a, "alice", caps="away-notify")
        bob = await Client.open(b, "bob")
        await join(alice, "#x")
        await bob.send("AWAY :lunch")
        await bob.expect("306")
        await wait_for(lambda: knows(a, "bob") and a.core.lookup_nick("bob").away == "lunch"
                       and b.core.lookup_channel("#x"), what="A knowing bob is away, B knowing #x")
        await join(bob, "#x")
        await alice.expect("JOIN", lambda m: m.source.startswith("bob!"))
        away = await alice.expect("AWAY", lambda m: m.source.startswith("bob!"))
        assert away.params == ["lunch"]
        for c in (alice, bob):
            await c.close()



async def test_a_node_cut_off_from_redis_does_not_make_ops_of_the_network(redis: Redis) -> None:
    """B starts while Redis is down: it knows nothing of #x (alice is op there, on A), so bob becomes @
    of a "new" #x. When Redis is back, A takes B's word for it (bob's record says "o"), and bob is an
    operator of alice's +i channel on every node: something no user gets on a single server."""
    async with nodes(redis, 1) as (a,):
        alice = await Client.open(a, "alice")
        await join(alice, "#x")
        await alice.send("MODE #x +i")
        await alice.expect("MODE")
        redis.stop()
        await wait_for(lambda: a.service.backplane.conn is None, what="A noticing redis is gone")
        async with nodes(redis, 1) as (b,):
            bob = await Client.open(b, "bob")
            await join(bob, "#x")
            redis.start()
            await wait_for(lambda: a.service.backplane.connected.is_set() and b.service.backplane.connected.is_set()
                           and knows(a, "bob") and a.core.lookup_nick("bob") in a.core.lookup_channel("#x").members,
                           what="A learning bob is on #x")
            bob_a = a.core.lookup_nick("bob")
            assert "o" not in a.core.lookup_channel("#x").members[bob_a], "A made bob an operator of #x"
            # ... and B, whose #x was the younger incarnation, drops bob's @ and adopts A's +i
            await wait_for(lambda: (ch := b.core.lookup_channel("#x")) is not None and "i" in ch.modes
                           and "o" not in ch.members[b.core.lookup_nick("bob")],
                           what="B dropping bob's @ and adopting +i")
            carol = await Client.open(b, "carol")
            await carol.send("JOIN #x")
            assert (await carol.expect_any(("473", "366"))).command == "473"
            await carol.close()
            await bob.close()
        await alice.close()
