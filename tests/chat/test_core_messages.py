"""ChatCore messages: PRIVMSG/NOTICE/TAGMSG, IRCv3 tags, fan-out sharing, history replay, CHATHISTORY."""

from __future__ import annotations

import base64

from test_core_harness import T0, Net, room

from socketkit.chat.core import MemoryHistory, Send

A = "alice!~alice@127.0.0.1"
B = "bob!~bob@127.0.0.1"


def test_channel_privmsg_and_notice():
    net = Net()
    room(net, "#r", "alice", "bob", "carol")
    net.send("alice", "PRIVMSG #r :hello all")
    assert net.lines("bob") == [f":{A} PRIVMSG #r :hello all"]
    assert net.lines("carol") == [f":{A} PRIVMSG #r :hello all"]
    assert net.lines("alice") == []  # no echo-message
    net.clear()
    net.send("alice", "NOTICE #R :note")
    assert net.lines("bob") == [f":{A} NOTICE #r :note"]


def test_private_message_and_away_reply():
    net = Net()
    net.register("alice", "alice")
    net.register("bob", "bob")
    net.send("alice", "PRIVMSG Bob :psst")
    assert net.lines("bob") == [f":{A} PRIVMSG bob :psst"]
    net.send("bob", "AWAY :lunch")
    net.clear()
    net.send("alice", "PRIVMSG bob :there?", "NOTICE bob :fyi")
    assert net.codes("alice") == ["301"]
    assert net.msgs("alice")[0].params == ["alice", "bob", "lunch"]
    assert len(net.lines("bob")) == 2


def test_message_errors():
    net = Net()
    room(net, "#r", "alice")
    net.register("bob", "bob")
    net.send("bob", "PRIVMSG", "PRIVMSG #r", "PRIVMSG nobody :x", "PRIVMSG #none :x", "PRIVMSG #r :x",
             "PRIVMSG a,b,c,d,e :x")
    assert net.codes("bob") == ["411", "412", "401", "403", "404", "407"]
    net.clear()
    net.send("bob", "NOTICE", "NOTICE #r", "NOTICE nobody :x", "NOTICE #r :x")
    assert net.codes("bob") == []  # never an automatic reply to NOTICE


def test_moderated_channel():
    net = Net()
    room(net, "#r", "alice", "bob", "carol")
    net.send("alice", "MODE #r +m-n+v bob")
    net.clear()
    net.send("carol", "PRIVMSG #r :x")
    assert net.codes("carol") == ["404"]
    net.send("bob", "PRIVMSG #r :voiced")
    assert net.lines("carol")[-1].endswith("PRIVMSG #r :voiced")
    net.register("dave", "dave")
    net.send("alice", "MODE #r -m")
    net.clear()
    net.send("dave", "PRIVMSG #r :from outside")  # -n lets outsiders speak
    assert net.lines("alice") == [":dave!~dave@127.0.0.1 PRIVMSG #r :from outside"]


def test_duplicate_targets_delivered_once():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "PRIVMSG #r,#R,bob :x")
    assert len(net.lines("bob")) == 2


def test_text_truncated_to_fit_512():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "PRIVMSG #r :" + "\u00e9" * 249)
    line = net.inbox["bob"][0]
    assert len(line) <= 512
    assert line.decode().endswith("\u00e9\r\n")


def test_server_time_message_tags_echo_account():
    net = Net(authenticate=lambda u, p: u)
    room(net, "#r", "plain")
    net.register("tags", "tags", caps="message-tags server-time echo-message account-tag")
    net.send("tags", "JOIN #r")
    net.register("alice", "alice", caps="sasl")
    net.send("alice", "AUTHENTICATE PLAIN",
             "AUTHENTICATE " + base64.b64encode(b"\0acct\0pw").decode(), "JOIN #r")
    net.clear()
    net.clock.advance(1.2345)
    net.send("tags", "@+draft/reply=abc;+x=a\\sb;label=zzz PRIVMSG #r :hi")
    plain = net.msgs("plain")[0]
    assert plain.tags == {}
    echo = net.msgs("tags")[0]
    assert echo.tags["time"] == "2023-11-14T22:13:21.234Z"
    assert echo.tags["+draft/reply"] == "abc" and echo.tags["+x"] == "a b"
    assert "label" not in echo.tags and "msgid" in echo.tags
    net.clear()
    net.send("alice", "PRIVMSG #r :from an account")
    assert net.msgs("tags")[0].tags["account"] == "acct"
    assert net.msgs("plain")[0].tags == {}


def test_msgid_unique():
    net = Net()
    room(net, "#r", "alice", "bob", caps="message-tags")
    net.send("alice", *["PRIVMSG #r :x"] * 50)
    ids = [m.tags["msgid"] for m in net.msgs("bob")]
    assert len(set(ids)) == 50


def test_tagmsg_only_to_message_tags_clients():
    net = Net()
    room(net, "#r", "plain", "alice")
    room(net, "#r", "tags", caps="message-tags")
    net.send("alice", "@+typing=active TAGMSG #r")
    assert net.lines("plain") == []
    assert net.msgs("tags")[0].command == "TAGMSG"
    assert net.msgs("tags")[0].tags["+typing"] == "active"
    net.send("alice", "TAGMSG tags")
    assert net.msgs("tags")[-1].params == ["tags"]


def test_fan_out_shares_bytes_per_capability_set():
    net = Net()
    room(net, "#r", "a1", "a2", "a3")
    room(net, "#r", "t1", "t2", caps="server-time message-tags")
    room(net, "#r", "s1", "s2", caps="server-time")
    out = net.send("a1", "PRIVMSG #r :shared")
    lines = {o.cid: o.line for o in out if isinstance(o, Send)}
    assert set(lines) == {"a2", "a3", "t1", "t2", "s1", "s2"}
    assert lines["a2"] is lines["a3"]
    assert lines["t1"] is lines["t2"]
    assert lines["s1"] is lines["s2"]
    assert len({id(x) for x in lines.values()}) == 3


def test_echo_message_to_user():
    net = Net()
    net.register("alice", "alice", caps="echo-message")
    net.register("bob", "bob")
    net.send("alice", "PRIVMSG bob :hey")
    assert net.lines("alice") == [f":{A} PRIVMSG bob :hey"]


# -- history ------------------------------------------------------------------------------------------
def _chat(net: Net, n: int) -> None:
    for i in range(n):
        net.clock.advance(1)
        net.send("alice", f"PRIVMSG #r :line {i}")


def test_history_replay_plain_client():
    net = Net(history=MemoryHistory())
    room(net, "#r", "alice")
    _chat(net, 25)
    net.register("bob", "bob")
    net.send("bob", "JOIN #r")
    replay = [m for m in net.msgs("bob") if m.command == "PRIVMSG"]
    assert [m.params[1] for m in replay] == [f"line {i}" for i in range(5, 25)]
    assert replay[0].source == A and replay[0].tags == {}
    assert "BATCH" not in net.codes("bob") and "NOTICE" not in net.codes("bob")


def test_history_replay_in_batch():
    net = Net(history=MemoryHistory())
    room(net, "#r", "alice")
    _chat(net, 3)
    net.register("bob", "bob", caps="batch server-time message-tags")
    net.send("bob", "JOIN #r")
    msgs = net.msgs("bob")
    start = next(i for i, m in enumerate(msgs) if m.command == "BATCH")
    assert msgs[start].params[0][0] == "+" and msgs[start].params[1:] == ["chathistory", "#r"]
    ref = msgs[start].params[0][1:]
    body = msgs[start + 1:start + 4]
    assert [m.params[1] for m in body] == ["line 0", "line 1", "line 2"]
    assert all(m.tags["batch"] == ref and "msgid" in m.tags for m in body)
    assert body[0].tags["time"] == "2023-11-14T22:13:21.000Z"
    assert msgs[start + 4].command == "BATCH" and msgs[start + 4].params == ["-" + ref]


def test_chathistory_clients_get_no_auto_replay():
    net = Net(history=MemoryHistory())
    room(net, "#r", "alice")
    _chat(net, 3)
    net.register("bob", "bob", caps="batch server-time draft/chathistory")
    net.send("bob", "JOIN #r")
    assert "PRIVMSG" not in net.codes("bob")


def test_chathistory_commands():
    net = Net(history=MemoryHistory())
    room(net, "#r", "alice")
    _chat(net, 10)
    net.register("bob", "bob", caps="batch server-time message-tags draft/chathistory")
    net.send("bob", "JOIN #r")

    def query(line: str) -> list[str]:
        net.clear()
        net.send("bob", line)
        return [m.params[1] for m in net.msgs("bob") if m.command == "PRIVMSG"]

    assert query("CHATHISTORY LATEST #r * 3") == ["line 7", "line 8", "line 9"]
    msgs = net.msgs("bob")
    assert msgs[0].command == "BATCH" and msgs[-1].command == "BATCH"
    ids = {m.params[1]: m.tags["msgid"] for m in msgs if m.command == "PRIVMSG"}
    assert query(f"CHATHISTORY BEFORE #r msgid={ids['line 7']} 2") == ["line 5", "line 6"]
    assert query(f"CHATHISTORY AFTER #r msgid={ids['line 7']} 5") == ["line 8", "line 9"]
    assert query(f"CHATHISTORY LATEST #r msgid={ids['line 7']} 5") == ["line 8", "line 9"]
    assert query(f"CHATHISTORY AROUND #r msgid={ids['line 8']} 3") == ["line 7", "line 8", "line 9"]
    ts = "2023-11-14T22:13:23.000Z"  # line 2 was sent at T0 + 3
    assert query(f"CHATHISTORY AFTER #r timestamp={ts} 2") == ["line 3", "line 4"]
    assert query(f"CHATHISTORY BEFORE #r timestamp={ts} 2") == ["line 0", "line 1"]
    assert query(f"CHATHISTORY BETWEEN #r timestamp={ts} msgid={ids['line 7']} 100") == [
        "line 3", "line 4", "line 5", "line 6"]
    assert len(query("CHATHISTORY LATEST #r * 1000")) == 10  # capped, not an error
    for bad in ("CHATHISTORY LATEST #r * x", "CHATHISTORY BEFORE #r junk 5", "CHATHISTORY TARGETS a b 5",
                "CHATHISTORY LATEST #nope * 5", "CHATHISTORY LATEST #r"):
        net.clear()
        net.send("bob", bad)
        assert net.codes("bob") == ["FAIL"], bad
    assert net.msgs("bob")[0].params[:2] == ["CHATHISTORY", "NEED_MORE_PARAMS"]
    assert T0  # the clock the timestamps above are computed from


def test_chathistory_without_store_is_unknown():
    net = Net()
    net.register("bob", "bob")
    net.send("bob", "CHATHISTORY LATEST #r * 5")
    assert net.codes("bob") == ["421"]


def test_long_topic_with_long_names_fits_512():
    net = Net()
    nick = "n" * 30
    chan = "#" + "c" * 63
    net.register(1, nick, user="u" * 20, host="2001:db8:aaaa:bbbb:cccc:dddd:eeee:ffff")
    net.send(1, f"JOIN {chan}", f"TOPIC {chan} :" + "t" * 390, f"KICK {chan} {nick} :" + "k" * 390)
    assert all(len(line) <= 512 for line in net.inbox[1])
    assert any(b" TOPIC " in line for line in net.inbox[1]) and any(b" KICK " in line for line in net.inbox[1])
