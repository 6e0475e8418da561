"""ChatCore channels: JOIN, PART, TOPIC, NAMES, LIST, INVITE, KICK, MODE (channel and user)."""

from __future__ import annotations

from test_core_harness import T0, Net, room

from socketkit.chat.core import ChatLimits

A = "alice!~alice@127.0.0.1"


def test_join_creates_channel_with_op():
    net = Net()
    net.register("alice", "alice")
    net.send("alice", "JOIN #Room")
    assert net.lines("alice") == [f":{A} JOIN #Room", ":irc.socketkit.local 353 alice = #Room :@alice",
                                  ":irc.socketkit.local 366 alice #Room :End of /NAMES list"]
    net.register("bob", "bob")
    net.clear()
    net.send("bob", "JOIN #room")  # case-folded to the same channel
    assert net.lines("alice") == [":bob!~bob@127.0.0.1 JOIN #Room"]
    assert net.numeric("bob", "353")[0].params[-1] == "@alice bob"
    net.clear()
    net.send("bob", "JOIN #ROOM")  # already there: nothing
    assert net.lines("bob") == []


def test_join_multiple_keys_and_zero():
    net = Net()
    room(net, "#k", "alice")
    net.send("alice", "MODE #k +k sekrit")
    net.register("bob", "bob")
    net.send("bob", "JOIN #a,#k,#b x,sekrit")
    joined = [m.params[0] for m in net.msgs("bob") if m.command == "JOIN"]
    assert joined == ["#a", "#k", "#b"]
    net.clear()
    net.send("bob", "JOIN 0")
    assert sorted(m.params[0] for m in net.msgs("bob") if m.command == "PART") == ["#a", "#b", "#k"]
    assert net.core.clients["bob"].channels == {}


def test_join_errors():
    net = Net(limits=ChatLimits(chanlimit=2))
    room(net, "#r", "alice")
    net.send("alice", "MODE #r +kil key 1")
    net.register("bob", "bob")
    net.send("bob", "JOIN #r", "JOIN nochan", "JOIN #a,#b,#c")
    assert net.codes("bob")[:2] == ["473", "476"]
    assert net.codes("bob")[-1] == "405"
    net.send("alice", "MODE #r -i")
    net.clear()
    net.send("bob", "PART #a", "JOIN #r", "JOIN #r wrong", "JOIN #r key")
    assert [c for c in net.codes("bob") if c[0] == "4"] == ["475", "475", "471"]
    net.send("alice", "MODE #r -l+b bob")
    net.clear()
    net.send("bob", "JOIN #r key")
    assert net.codes("bob") == ["474"]


def test_invite_bypasses_invite_only_and_ban():
    net = Net()
    room(net, "#r", "alice")
    net.send("alice", "MODE #r +ib bob!*@*")
    net.register("bob", "bob")
    net.clear()
    net.send("alice", "INVITE bob #r")
    assert net.lines("alice") == [":irc.socketkit.local 341 alice bob :#r"]
    assert net.lines("bob") == [f":{A} INVITE bob #r"]
    net.send("bob", "JOIN #r")
    assert "JOIN" in net.codes("bob")


def test_invite_errors():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.register("carol", "carol")
    net.send("carol", "INVITE bob #r")
    net.send("carol", "INVITE nobody #r", "INVITE bob #none", "INVITE bob")
    assert net.codes("carol") == ["442", "401", "403", "461"]
    net.send("alice", "INVITE bob #r")
    assert net.codes("alice") == ["443"]
    net.send("alice", "MODE #r +i")
    net.clear()
    net.send("bob", "INVITE carol #r")
    assert net.codes("bob") == ["482"]


def test_part():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("bob", "PART #r :gone fishing")
    assert net.lines("alice") == [":bob!~bob@127.0.0.1 PART #r :gone fishing"]
    net.send("bob", "PART #r", "PART #nope", "PART")
    assert net.codes("bob")[-3:] == ["442", "403", "461"]
    net.send("alice", "PART #r")
    assert net.core.channels == {}


def test_topic():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("bob", "TOPIC #r")
    assert net.codes("bob") == ["331"]
    net.send("bob", "TOPIC #r :mine")
    assert net.codes("bob")[-1] == "482"  # +t by default
    net.clock.advance(5)
    net.send("alice", "TOPIC #r :" + "x" * 500)
    topic = "x" * 390
    assert net.lines("bob")[-1] == f":{A} TOPIC #r :{topic}"
    net.clear()
    net.send("bob", "TOPIC #r")
    assert [m.params for m in net.msgs("bob")] == [["bob", "#r", topic], ["bob", "#r", "alice", str(int(T0 + 5))]]
    net.register("carol", "carol")
    net.send("carol", "TOPIC #r :x", "TOPIC #zz")
    assert net.codes("carol") == ["442", "403"]
    net.send("carol", "JOIN #r")
    assert "332" in net.codes("carol") and "333" in net.codes("carol")
    net.send("alice", "MODE #r -t")
    net.clear()
    net.send("bob", "TOPIC #r :")
    assert net.lines("carol") == [":bob!~bob@127.0.0.1 TOPIC #r :"]


def test_names_multi_prefix_and_invisible():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "MODE #r +v alice")
    net.register("carol", "carol", caps="multi-prefix")
    net.send("bob", "MODE bob +i")
    net.clear()
    net.send("carol", "NAMES #r")
    assert net.numeric("carol", "353")[0].params == ["carol", "=", "#r", "@+alice"]  # bob is +i
    net.send("alice", "NAMES #r", "NAMES #none", "NAMES")
    assert net.numeric("alice", "353")[0].params[-1] == "@alice bob"
    assert [m.params[1] for m in net.numeric("alice", "366")] == ["#r", "#none", "*"]


def test_names_split_over_lines():
    net = Net()
    for i in range(60):
        net.register(i, f"user{i:02d}xxxxxxxxxxxxxxxxxxxx")
        net.send(i, "JOIN #big")
    net.clear()
    net.send(0, "NAMES #big")
    replies = net.numeric(0, "353")
    assert len(replies) > 1
    assert sum(len(m.params[-1].split()) for m in replies) == 60
    assert all(len(line) <= 512 for line in net.inbox[0])


def test_list():
    net = Net(limits=ChatLimits(list_max=2))
    room(net, "#a", "alice")
    net.send("alice", "TOPIC #a :about a", "JOIN #b", "JOIN #c")
    net.clear()
    net.send("alice", "LIST #a")
    assert [m.command for m in net.msgs("alice")] == ["321", "322", "323"]
    assert net.numeric("alice", "322")[0].params == ["alice", "#a", "1", "about a"]
    net.clear()
    net.send("alice", "LIST")
    assert net.codes("alice") == ["321", "322", "322", "NOTICE", "323"]


def test_kick():
    net = Net()
    room(net, "#r", "alice", "bob", "carol")
    net.send("bob", "KICK #r carol")
    assert net.codes("bob") == ["482"]
    net.send("alice", "KICK #r carol :behave")
    assert net.lines("carol") == [f":{A} KICK #r carol :behave"]
    assert net.lines("bob")[-1] == f":{A} KICK #r carol :behave"
    assert "carol" not in [c.nick for c in net.core.channels["#r"].members]
    net.clear()
    net.send("alice", "KICK #r carol", "KICK #r nobody", "KICK #no bob", "KICK #r")
    assert net.codes("alice") == ["441", "441", "403", "461"]
    net.send("carol", "KICK #r bob")
    assert net.codes("carol") == ["442"]
    net.clear()
    net.send("alice", "KICK #r bob")
    assert net.lines("bob") == [f":{A} KICK #r bob :alice"]


def test_mode_query_and_flags():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "MODE #r")
    assert [m.params for m in net.msgs("alice")] == [["alice", "#r", "+nt"], ["alice", "#r", str(int(T0))]]
    net.clear()
    net.send("alice", "MODE #r +mi-t+lk 10 key")
    assert net.lines("bob") == [f":{A} MODE #r +mi-t+lk 10 key"]
    net.clear()
    net.send("bob", "MODE #r")
    assert net.msgs("bob")[0].params == ["bob", "#r", "+imnkl", "key", "10"]
    net.register("carol", "carol")
    net.send("carol", "MODE #r")
    assert net.msgs("carol")[0].params[-2:] == ["*", "10"]  # key hidden from non-members
    net.clear()
    net.send("alice", "MODE #r +k other", "MODE #r +n", "MODE #r +z", "MODE #r +l x", "MODE #none")
    assert net.codes("alice") == ["467", "472", "696", "403"]
    net.send("alice", "MODE #r -k")
    assert net.lines("bob")[-1] == f":{A} MODE #r -k *"


def test_mode_op_voice():
    net = Net()
    room(net, "#r", "alice", "bob", "carol")
    net.send("bob", "MODE #r +o bob")
    assert net.codes("bob") == ["482"]
    net.send("alice", "MODE #r +ov bob carol")
    assert net.lines("carol")[-1] == f":{A} MODE #r +ov bob carol"
    net.clear()
    net.send("bob", "MODE #r -o+v alice alice", "MODE #r +o nobody", "MODE #r +o")
    assert net.lines("carol") == [":bob!~bob@127.0.0.1 MODE #r -o+v alice alice"]
    assert net.codes("bob")[-1] == "401"
    net.register("dave", "dave")
    net.clear()
    net.send("bob", "MODE #r +v dave")
    assert net.codes("bob") == ["441"]


def test_mode_param_limit():
    net = Net()
    room(net, "#r", "alice", "a1", "a2", "a3", "a4", "a5")
    net.send("alice", "MODE #r +vvvvv a1 a2 a3 a4 a5")
    assert net.lines("a1")[-1] == f":{A} MODE #r +vvvv a1 a2 a3 a4"


def test_bans():
    net = Net(limits=ChatLimits(maxbans=2))
    room(net, "#r", "alice", "bob")
    net.clock.advance(3)
    net.send("alice", "MODE #r +b bob", "MODE #r +b *!*@*.example", "MODE #r +b third!*@*")
    assert net.lines("bob")[:2] == [f":{A} MODE #r +b bob!*@*", f":{A} MODE #r +b *!*@*.example"]
    assert net.codes("alice")[-1] == "478"
    net.clear()
    net.send("bob", "MODE #r +b")
    assert [m.params[2:] for m in net.numeric("bob", "367")] == [
        ["bob!*@*", "alice", str(int(T0 + 3))], ["*!*@*.example", "alice", str(int(T0 + 3))]]
    assert net.codes("bob")[-1] == "368"
    net.send("bob", "PRIVMSG #r :hi")
    assert net.codes("bob")[-1] == "404"
    net.send("alice", "MODE #r +v bob")
    net.clear()
    net.send("bob", "PRIVMSG #r :hi")  # voice overrides the ban
    assert net.lines("alice") == [":bob!~bob@127.0.0.1 PRIVMSG #r :hi"]
    net.send("alice", "MODE #r -b BOB!*@*")
    assert net.lines("bob")[-1] == f":{A} MODE #r -b bob!*@*"
    net.send("alice", "MODE #r +b " + "x" * 200)
    assert net.codes("alice")[-1] == "696"


def test_ban_glob_is_not_quadratic_blowup():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "MODE #r +b " + "*a" * 60 + "!*@*")
    net.send("bob", "PRIVMSG #r :still fast")
    assert net.lines("alice")[-1].endswith("still fast")


def test_user_mode():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "MODE alice", "MODE alice +i", "MODE alice", "MODE bob +i", "MODE nobody", "MODE alice +x")
    assert [m.command for m in net.msgs("alice")] == ["221", "MODE", "221", "502", "401", "501"]
    assert net.lines("alice")[1] == ":alice MODE alice :+i"
    assert net.msgs("alice")[2].params[-1] == "+i"
