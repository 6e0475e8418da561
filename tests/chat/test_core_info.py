"""ChatCore queries: WHO, WHOIS, AWAY (+away-notify), MOTD, LUSERS, VERSION, TIME, USERHOST, ISON."""

from __future__ import annotations

from test_core_harness import T0, Net, room

from socketkit.chat.core import ChatLimits

A = "alice!~alice@127.0.0.1"


def test_who_channel():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("bob", "AWAY :out")
    net.clear()
    net.send("alice", "WHO #r")
    assert net.lines("alice") == [
        ":irc.socketkit.local 352 alice #r ~alice 127.0.0.1 irc.socketkit.local alice H@ :0 Real alice",
        ":irc.socketkit.local 352 alice #r ~bob 127.0.0.1 irc.socketkit.local bob G :0 Real bob",
        ":irc.socketkit.local 315 alice #r :End of WHO list",
    ]


def test_who_nick_mask_and_invisible():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.register("carol", "carol")
    net.send("carol", "MODE carol +i")
    net.register("dave", "dave")
    net.send("dave", "WHO bob")
    assert [m.params[5] for m in net.numeric("dave", "352")] == ["bob"]
    assert net.numeric("dave", "352")[0].params[1] == "#r"
    net.clear()
    net.send("dave", "WHO *c*")
    assert sorted(m.params[5] for m in net.numeric("dave", "352")) == ["alice"]  # carol is +i
    net.clear()
    net.send("dave", "WHO #none", "WHO")
    assert net.codes("dave")[0] == "315"


def test_who_is_capped():
    net = Net(limits=ChatLimits(who_max=3, flood_burst=1000))
    room(net, "#big", *[f"u{i}" for i in range(6)])
    net.send("u0", "WHO #big")
    assert net.codes("u0") == ["352", "352", "352", "NOTICE", "315"]


def test_whois():
    net = Net(authenticate=lambda u, p: u)
    room(net, "#r", "alice", "bob")
    net.send("alice", "JOIN #s", "AWAY :gone")
    net.register("carol", "carol", tls=True)
    net.clock.advance(30)
    net.clear()
    net.send("bob", "WHOIS alice")
    got = {m.command: m.params for m in net.msgs("bob")}
    assert list(got) == ["311", "319", "312", "301", "317", "318"]
    assert got["311"] == ["bob", "alice", "~alice", "127.0.0.1", "*", "Real alice"]
    assert got["319"] == ["bob", "alice", "@#r @#s"]
    assert got["301"] == ["bob", "alice", "gone"]
    assert got["317"][:4] == ["bob", "alice", "30", str(int(T0))]
    net.clear()
    net.send("bob", "WHOIS x carol")
    assert "671" in net.codes("bob")
    net.clear()
    net.send("bob", "WHOIS nobody", "WHOIS")
    assert net.codes("bob") == ["401", "318", "461"]


def test_whois_account():
    import base64

    net = Net(authenticate=lambda u, p: u)
    net.connect(1)
    net.send(1, "CAP REQ sasl", "AUTHENTICATE PLAIN", "AUTHENTICATE " + base64.b64encode(b"\0acc\0pw").decode(),
             "NICK a", "USER a 0 * :A", "CAP END")
    net.register(2, "b")
    net.send(2, "WHOIS a")
    assert net.numeric(2, "330")[0].params == ["b", "a", "acc", "is logged in as"]


def test_away_and_away_notify():
    net = Net()
    room(net, "#r", "alice")
    room(net, "#r", "bob", caps="away-notify")
    room(net, "#r", "carol")
    net.send("alice", "AWAY :brb")
    assert net.codes("alice") == ["306"]
    assert net.lines("bob") == [f":{A} AWAY :brb"]
    assert net.lines("carol") == []
    net.send("alice", "AWAY")
    assert net.codes("alice") == ["306", "305"]
    assert net.lines("bob")[-1] == f":{A} AWAY"
    net.send("alice", "AWAY :" + "z" * 500)
    assert len(net.core.clients["alice"].away) == 390
    net.register("dave", "dave")
    net.send("dave", "AWAY :away", "JOIN #r")
    assert net.lines("bob")[-1] == ":dave!~dave@127.0.0.1 AWAY :away"


def test_motd_lusers_version_time():
    net = Net()
    net.register(1, "alice")
    net.connect(2)
    net.send(1, "MOTD")
    assert net.codes(1) == ["375", "372", "376"]
    net.clear()
    net.send(1, "LUSERS")
    lines = {m.command: m.params for m in net.msgs(1)}
    assert lines["251"][-1] == "There are 1 users and 0 invisible on 1 servers"
    assert lines["253"][1] == "1"  # the unregistered connection
    net.clear()
    net.send(1, "VERSION")
    assert net.codes(1)[0] == "351" and "005" in net.codes(1)
    net.clear()
    net.send(1, "TIME")
    assert net.msgs(1)[0].command == "391"
    assert net.msgs(1)[0].params[2] == str(int(T0))


def test_userhost_ison():
    net = Net()
    net.register(1, "alice")
    net.register(2, "bob")
    net.send(2, "AWAY :x")
    net.clear()
    net.send(1, "USERHOST alice bob nobody", "ISON :bob nobody ALICE")
    assert net.msgs(1)[0].params[-1] == "alice=+~alice@127.0.0.1 bob=-~bob@127.0.0.1"
    assert net.msgs(1)[1].params[-1] == "bob alice"


def test_ipv6_host_is_safe_in_replies():
    net = Net()
    net.register(1, "alice", host="::1")
    net.send(1, "WHOIS alice")
    assert net.numeric(1, "311")[0].params[3] == "0::1"
