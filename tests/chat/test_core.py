"""ChatCore: registration, CAP negotiation, SASL PLAIN, PING/timeouts, flood control, QUIT, robustness."""

from __future__ import annotations

import base64

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_core_harness import Net, room

from socketkit.chat.core import ChatCore, ChatLimits, Close, Send
from socketkit.chat.core_cap import cap_change


def test_registration_burst():
    net = Net()
    net.connect(1, host="10.0.0.1")
    net.send(1, "NICK alice", "USER al 0 * :Alice Liddell")
    codes = net.codes(1)
    assert codes[:5] == ["001", "002", "003", "004", "005"]
    for c in ("251", "254", "255", "265", "266", "375", "372", "376"):
        assert c in codes
    welcome = net.numeric(1, "001")[0]
    assert welcome.params == ["alice", "Welcome to the socketkit Network, alice!~al@10.0.0.1"]
    isupport = " ".join(" ".join(m.params[1:-1]) for m in net.numeric(1, "005"))
    for token in ("CASEMAPPING=rfc1459", "CHANTYPES=#", "CHANMODES=b,k,l,imnst", "PREFIX=(ov)@+", "NICKLEN=30",
                  "CHANNELLEN=64", "TOPICLEN=", "KICKLEN=", "AWAYLEN=", "MAXTARGETS=4", "CHANLIMIT=#:50",
                  "NETWORK=socketkit", "MODES=4"):
        assert token in isupport
    assert all(len(line) <= 512 for line in net.inbox[1])


def test_no_motd_gives_422():
    net = Net(motd=[])
    net.connect(1)
    net.send(1, "USER a 0 * :A", "NICK a")
    assert "422" in net.codes(1) and "375" not in net.codes(1)


def test_commands_before_registration_451_and_unknown_421():
    net = Net()
    net.connect(1)
    net.send(1, "JOIN #a", "FOO bar")
    assert net.codes(1) == ["451", "421"]


def test_nick_errors():
    net = Net()
    net.register(1, "alice")
    net.connect(2)
    net.send(2, "NICK", "NICK 1bad", "NICK ALICE", "NICK " + "a" * 31)
    assert net.codes(2) == ["431", "432", "433", "432"]
    net.clear()
    net.send(2, "NICK bob", "USER b 0 * :B")
    assert "001" in net.codes(2)


def test_nick_change_broadcast_and_case_change():
    net = Net()
    room(net, "#r", "alice", "bob")
    net.send("alice", "NICK Alice2")
    assert net.lines("bob") == [":alice!~alice@127.0.0.1 NICK Alice2"]
    assert net.lines("alice") == [":alice!~alice@127.0.0.1 NICK Alice2"]
    net.clear()
    net.send("alice", "NICK ALICE2")
    assert net.lines("alice") == [":Alice2!~alice@127.0.0.1 NICK ALICE2"]
    net.clear()
    net.send("bob", "NICK alice2")
    assert net.codes("bob") == ["433"]


def test_user_errors():
    net = Net()
    net.register(1, "alice")
    net.send(1, "USER a 0 * :again", "USER a")
    assert net.codes(1) == ["462", "461"]


def test_server_password():
    net = Net(password="sesame")
    net.connect(1)
    net.send(1, "NICK a", "USER a 0 * :A")
    assert net.codes(1) == ["464", "ERROR"] and net.closed[1] == "Bad password"
    net.connect(2)
    net.send(2, "PASS sesame", "NICK b", "USER b 0 * :B")
    assert "001" in net.codes(2)
    net.send(2, "PASS x")
    assert net.codes(2)[-1] == "462"


def test_ping_pong_and_idle_timeout():
    net = Net()
    net.register(1, "alice")
    net.send(1, "PING :hello there")
    assert net.lines(1) == [":irc.socketkit.local PONG irc.socketkit.local :hello there"]
    net.clear()
    net.clock.advance(119)
    net.tick()
    assert net.lines(1) == []
    net.clock.advance(1)
    net.tick()
    assert net.lines(1) == ["PING irc.socketkit.local"]
    net.send(1, "PONG irc.socketkit.local")
    net.clock.advance(100)
    net.tick()
    assert 1 not in net.closed
    net.clock.advance(20)
    net.tick()  # idle again: second PING
    net.clock.advance(60)
    net.tick()
    assert net.closed[1].startswith("Ping timeout")
    assert net.lines(1)[-1].startswith("ERROR :Closing Link")


def test_registration_timeout():
    net = Net()
    net.connect(1)
    net.send(1, "NICK a")
    net.clock.advance(61)
    net.tick()
    assert net.closed[1] == "Registration timed out"
    assert "a" not in net.core.nicks  # the nick is free again


def test_quit_broadcast_and_disconnect():
    net = Net()
    room(net, "#r", "alice", "bob", "carol")
    net.send("alice", "QUIT :bye all")
    assert net.lines("bob") == [":alice!~alice@127.0.0.1 QUIT :Quit: bye all"]
    assert net.lines("alice")[-1].startswith("ERROR :Closing Link")
    assert net.closed["alice"] == "Client Quit"
    assert net.disconnect("alice") == []  # idempotent after the core closed it
    net.clear()
    net.disconnect("bob", "Connection reset by peer")
    assert net.lines("carol") == [":bob!~bob@127.0.0.1 QUIT :Connection reset by peer"]
    assert "bob" not in net.closed
    net.send("carol", "QUIT")
    assert net.core.channels == {}


# -- CAP --------------------------------------------------------------------------------------------------
def test_cap_ls_holds_registration():
    net = Net()
    net.connect(1)
    net.send(1, "CAP LS 302", "NICK a", "USER a 0 * :A")
    assert net.codes(1) == ["CAP"]
    ls = net.msgs(1)[0]
    assert ls.params[:2] == ["*", "LS"]
    caps = ls.params[-1].split()
    for cap in ("cap-notify", "message-tags", "server-time", "echo-message", "multi-prefix", "away-notify",
                "account-tag", "batch", "sasl=PLAIN"):
        assert cap in caps
    net.clear()
    net.send(1, "CAP REQ :server-time multi-prefix")
    # server-time is on from this answer on: every line has its time tag
    assert net.lines(1) == ["@time=2023-11-14T22:13:20.000Z :irc.socketkit.local CAP a ACK :server-time multi-prefix"]
    net.send(1, "CAP REQ :server-time bogus")
    assert net.msgs(1)[-1].params[1] == "NAK"
    net.clear()
    net.send(1, "CAP LIST")
    assert set(net.msgs(1)[0].params[-1].split()) == {"server-time", "multi-prefix", "cap-notify"}
    net.send(1, "CAP END")
    assert "001" in net.codes(1)
    net.clear()
    net.send(1, "CAP REQ :-multi-prefix", "CAP FOO")
    assert net.msgs(1)[0].params[1] == "ACK"
    assert net.codes(1)[1] == "410"
    assert "multi-prefix" not in net.core.clients[1].caps


def test_cap_ls_without_302_has_no_values():
    net = Net()
    net.connect(1)
    net.send(1, "CAP LS")
    assert "sasl" in net.msgs(1)[0].params[-1].split()


def test_cap_req_alone_holds_registration():
    net = Net()
    net.connect(1)
    net.send(1, "CAP REQ :echo-message", "NICK a", "USER a 0 * :A")
    assert "001" not in net.codes(1)
    net.send(1, "CAP END")
    assert "001" in net.codes(1)


def test_cap_notify_new_and_del():
    net = Net()
    net.register(1, "a", caps="server-time")  # 302: cap-notify implied
    net.register(2, "b")
    cap_change(net.core, "draft/example", "v1", True)
    out = net.core._flush()
    stamp = b"@time=2023-11-14T22:13:20.000Z "
    assert [o for o in out if o.cid == 1] == [Send(1, stamp + b":irc.socketkit.local CAP a NEW :draft/example=v1\r\n")]
    assert not [o for o in out if o.cid == 2]
    cap_change(net.core, "server-time", None, False)
    out = net.core._flush()
    assert out == [Send(1, stamp + b":irc.socketkit.local CAP a DEL :server-time\r\n")]
    assert "server-time" not in net.core.clients[1].caps


# -- SASL -------------------------------------------------------------------------------------------------
def _plain(user: str, password: str, authz: str = "") -> str:
    return base64.b64encode(f"{authz}\0{user}\0{password}".encode()).decode()


def test_sasl_plain_success_with_auth_request():
    net = Net()
    net.connect(1)
    net.send(1, "CAP LS 302", "NICK a", "USER a 0 * :A", "CAP REQ :sasl", "AUTHENTICATE PLAIN")
    assert net.lines(1)[-1] == "AUTHENTICATE +"
    net.send(1, "AUTHENTICATE " + _plain("alice", "pw"), "CAP END")
    req = net.auth[-1]
    assert (req.cid, req.username, req.password) == (1, "alice", "pw")
    assert "pw" not in repr(req)
    assert "001" not in net.codes(1)  # CAP END waits for the answer
    net.clear()
    net.auth_result(1, "alice")
    assert net.codes(1)[:3] == ["900", "903", "001"]
    assert net.numeric(1, "900")[0].params[1:3] == ["a!~a@127.0.0.1", "alice"]
    assert net.core.clients[1].account == "alice"
    net.clear()
    net.send(1, "AUTHENTICATE PLAIN")
    assert net.codes(1) == ["907"]


def test_sasl_sync_authenticate_and_failure():
    net = Net(authenticate=lambda u, p: u if p == "good" else None)
    net.connect(1)
    net.send(1, "CAP REQ :sasl", "AUTHENTICATE PLAIN", "AUTHENTICATE " + _plain("bob", "bad"))
    assert net.codes(1)[-1] == "904"
    net.send(1, "AUTHENTICATE PLAIN", "AUTHENTICATE " + _plain("bob", "good"))
    assert net.codes(1)[-2:] == ["900", "903"]


def test_sasl_errors():
    net = Net()
    net.connect(1)
    net.send(1, "CAP REQ :sasl", "AUTHENTICATE EXTERNAL")
    assert net.codes(1)[-2:] == ["908", "904"]
    net.send(1, "AUTHENTICATE PLAIN", "AUTHENTICATE *")
    assert net.codes(1)[-1] == "906"
    net.send(1, "AUTHENTICATE PLAIN", "AUTHENTICATE " + "A" * 401)
    assert net.codes(1)[-1] == "905"
    net.send(1, "AUTHENTICATE PLAIN", "AUTHENTICATE !!!notbase64")
    assert net.codes(1)[-1] == "904"
    net.send(1, "AUTHENTICATE PLAIN", "AUTHENTICATE " + _plain("bob", "x", authz="root"))
    assert net.codes(1)[-2:] == ["904", "ERROR"]
    assert net.closed[1] == "Too many SASL failures"  # the third failure


def test_sasl_chunks_of_400():
    net = Net()
    net.connect(1)
    password = "p" * 500
    data = _plain("carol", password)
    chunks = [data[i:i + 400] for i in range(0, len(data), 400)]
    net.send(1, "CAP REQ :sasl", "AUTHENTICATE PLAIN", *[f"AUTHENTICATE {c}" for c in chunks])
    if len(chunks[-1]) == 400:
        net.send(1, "AUTHENTICATE +")
    assert net.auth[-1].password == password


def test_sasl_cap_end_aborts_exchange():
    net = Net()
    net.connect(1)
    net.send(1, "CAP REQ :sasl", "NICK a", "USER a 0 * :A", "AUTHENTICATE PLAIN", "CAP END")
    assert "906" in net.codes(1) and "001" in net.codes(1)


def test_account_notify_after_registration():
    net = Net(authenticate=lambda u, p: u)
    room(net, "#r", "alice", "bob", caps="account-notify account-tag")
    net.send("alice", "AUTHENTICATE PLAIN", "AUTHENTICATE " + _plain("acct", "x"))
    assert net.lines("bob") == ["@account=acct :alice!~alice@127.0.0.1 ACCOUNT acct"]


# -- flood control -------------------------------------------------------------------------------------
def test_fake_lag_queues_then_processes_on_tick():
    net = Net(limits=ChatLimits())
    net.register(1, "alice")
    net.clock.advance(10)
    net.send(1, *[f"PING :{i}" for i in range(15)])
    pongs = [m.params[-1] for m in net.take(1)]
    assert pongs == [str(i) for i in range(10)]  # burst of 10, the rest waits
    net.tick()
    assert net.take(1) == []
    net.clock.advance(1.0)  # two tokens
    net.tick()
    assert [m.params[-1] for m in net.take(1)] == ["10", "11"]
    net.clock.advance(0.5)
    net.send(1, "PING :later")  # queued behind the earlier lines: order kept
    assert [m.params[-1] for m in net.take(1)] == ["12"]
    net.clock.advance(10)
    net.tick()
    assert [m.params[-1] for m in net.take(1)] == ["13", "14", "later"]


def test_excess_flood_closes():
    net = Net(limits=ChatLimits(flood_burst=5, flood_queue=10))
    room(net, "#r", "alice", "bob")
    net.clock.advance(10)
    out = net.send("alice", *["PRIVMSG #r :spam"] * 16)
    assert net.closed["alice"] == "Excess Flood"
    assert Close("alice", "Excess Flood", broke_limit=True) in out
    assert net.lines("bob")[-1] == ":alice!~alice@127.0.0.1 QUIT :Excess Flood"
    assert sum(1 for line in net.lines("bob") if "PRIVMSG" in line) == 5


def test_pong_skips_bucket():
    net = Net(limits=ChatLimits(flood_burst=2, flood_queue=3))
    net.register(1, "alice")
    net.send(1, *["PONG x"] * 20)
    assert 1 not in net.closed


def test_input_too_long():
    net = Net()
    net.register(1, "alice")
    net.send(1, b"PRIVMSG #a :" + b"x" * 600)
    assert net.codes(1) == ["417"]
    net.send(1, b"@+a=" + b"y" * 5000 + b" PING x")
    assert net.codes(1) == ["417", "417"]


# -- robustness --------------------------------------------------------------------------------------------
_words = st.sampled_from(["NICK", "USER", "JOIN", "PART", "PRIVMSG", "NOTICE", "TAGMSG", "MODE", "TOPIC", "KICK",
                          "INVITE", "WHO", "WHOIS", "NAMES", "LIST", "AWAY", "CAP", "AUTHENTICATE", "PING",
                          "CHATHISTORY", "QUIT", "MOTD", "LUSERS", "VERSION", "TIME", "USERHOST", "ISON",
                          "#r", "#x", "bob", "alice", "+o", "-o", "+b", "+k", "+l", "+imnt", "LS", "REQ", "END",
                          "LATEST", "*", "0", "10", ":", ":x y", "PLAIN", "+", "msgid=1", "\xe9", "@+a=b",
                          "@time=x", ",", "#r,#x", "bob,alice"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.binary(max_size=80), st.lists(_words, min_size=1, max_size=6).map(
    lambda ws: " ".join(ws).encode())), max_size=25))
def test_receive_never_raises(lines):
    from socketkit.chat.core_history import MemoryHistory

    net = Net(history=MemoryHistory())
    room(net, "#r", "alice", "bob")
    net.connect("x")
    for i, line in enumerate(lines):
        cid = ("alice", "bob", "x")[i % 3]
        net.send(cid, line)
        net.clock.advance(0.3)
        net.tick()
    for lines_ in net.inbox.values():
        assert all(len(line.split(b" ", 1)[1] if line.startswith(b"@") else line) <= 512 for line in lines_)


def test_connect_twice_is_an_error():
    core = ChatCore()
    core.connect(1)
    try:
        core.connect(1)
    except ValueError:
        pass
    else:
        raise AssertionError("duplicate cid accepted")
