"""ChatCore: the IRCv3 extensions modern clients use (extended-join, invite-notify, setname, chghost,
account-notify, labeled-response, standard-replies, server-time on every line, MONITOR, bot mode, WHOX,
UTF8ONLY, userhost-in-names) and the Modern IRC conformance fixes (WHO prefix, NAMES of a secret channel,
USER edge cases, several KICKs at once, the 417 tag limit). Each checked against the spec's wording."""

from __future__ import annotations

import base64

from test_core_harness import Net, room

from socketkit.chat import core_monitor
from socketkit.chat.core import ChatLimits
from socketkit.proto.irc import parse


def tags_of(net: Net, cid) -> list[dict[str, str]]:
    return [m.tags for m in net.msgs(cid)]


# -- extended-join ---------------------------------------------------------------------------------------
def test_extended_join_carries_account_and_realname():
    net = Net(authenticate=lambda user, password: user if password == "pw" else None)
    net.register("old", "old", caps="extended-join")
    net.send("old", "JOIN #x")
    net.register("plain", "plain")
    net.send("plain", "JOIN #x")
    net.clear()
    net.connect("acc")
    net.send("acc", "CAP LS 302", "CAP REQ :sasl", "NICK acc", "USER acc 0 * :Real Person", "AUTHENTICATE PLAIN",
             "AUTHENTICATE " + base64.b64encode(b"\0acc\0pw").decode(), "CAP END")
    net.clear()
    net.send("acc", "JOIN #x")
    # https://ircv3.net/specs/extensions/extended-join: JOIN <channel> <account> :<realname>, '*' when logged out
    assert net.lines("old") == [":acc!~acc@127.0.0.1 JOIN #x acc :Real Person"]
    assert net.lines("plain") == [":acc!~acc@127.0.0.1 JOIN #x"]
    net.clear()
    net.register("anon", "anon")
    net.send("anon", "JOIN #x")
    assert net.lines("old")[-1] == ":anon!~anon@127.0.0.1 JOIN #x * :Real anon"


# -- invite-notify ---------------------------------------------------------------------------------------
def test_invite_notify_tells_members_that_asked():
    net = Net()
    net.register("op", "op")
    net.register("watcher", "watcher", caps="invite-notify")
    net.register("other", "other")
    net.register("guest", "guest", caps="invite-notify")
    for nick in ("op", "watcher", "other"):
        net.send(nick, "JOIN #inv")
    net.clear()
    net.send("op", "INVITE guest #inv")
    assert net.codes("op") == ["341"]
    assert net.lines("guest") == [":op!~op@127.0.0.1 INVITE guest #inv"]  # the invitee gets it once
    assert net.lines("watcher") == [":op!~op@127.0.0.1 INVITE guest #inv"]
    assert net.lines("other") == []


# -- setname ---------------------------------------------------------------------------------------------
def test_setname_changes_the_realname_and_tells_peers_with_the_cap():
    net = Net()
    room(net, "#s", "alice", caps="setname")
    room(net, "#s", "bob", caps="setname")
    room(net, "#s", "carol")
    net.send("alice", "SETNAME :Alice Liddell")
    # https://ircv3.net/specs/extensions/setname: the client itself and peers with the cap see SETNAME
    assert net.lines("alice") == [":alice!~alice@127.0.0.1 SETNAME :Alice Liddell"]
    assert net.lines("bob") == [":alice!~alice@127.0.0.1 SETNAME :Alice Liddell"]
    assert net.lines("carol") == []
    net.clear()
    net.send("bob", "WHOIS alice")
    assert net.numeric("bob", "311")[0].params[-1] == "Alice Liddell"
    # FAIL SETNAME INVALID_REALNAME (standard-replies) for what cannot be a realname
    net.clear()
    net.send("alice", "SETNAME :" + "x" * 200, b"SETNAME :caf\xe9")
    fails = [m.params[:2] for m in net.msgs("alice")]
    assert fails == [["SETNAME", "INVALID_REALNAME"], ["SETNAME", "INVALID_UTF8"]]
    assert net.core.lookup_nick("alice").realname == "Alice Liddell"


def test_isupport_names_namelen_and_the_new_tokens():
    net = Net()
    net.register(1, "a")
    net.send(1, "VERSION")
    tokens = " ".join(" ".join(m.params[1:-1]) for m in net.numeric(1, "005"))
    for token in ("NAMELEN=128", "MONITOR=100", "BOT=B", "WHOX", "UTF8ONLY", "CHANMODES=b,k,l,imnst"):
        assert token in tokens.split(), tokens


# -- chghost and account-notify --------------------------------------------------------------------------
def test_chghost_to_peers_with_the_cap():
    net = Net()
    room(net, "#h", "alice", caps="chghost")
    room(net, "#h", "bob", caps="chghost")
    room(net, "#h", "carol")
    core_monitor.change_host(net.core, net.core.lookup_nick("bob"), "~robert", "cloak.example")
    net.core._flush()  # (the harness reads through its own calls; take the output by hand)
    net.clear()
    core_monitor.change_host(net.core, net.core.lookup_nick("bob"), "~bob", "home.example")
    net._take(net.core._flush())
    assert net.lines("alice") == [":bob!~robert@cloak.example CHGHOST ~bob home.example"]
    assert net.lines("bob") == [":bob!~robert@cloak.example CHGHOST ~bob home.example"]
    assert net.lines("carol") == []
    assert net.core.lookup_nick("bob").prefix == "bob!~bob@home.example"


def test_account_notify_after_a_late_sasl_login():
    net = Net(authenticate=lambda user, password: "acct" if password == "pw" else None)
    room(net, "#a", "alice", caps="account-notify")
    room(net, "#a", "bob")
    net.send("bob", "CAP REQ :sasl", "AUTHENTICATE PLAIN", "AUTHENTICATE " + base64.b64encode(b"\0acct\0pw").decode())
    assert net.lines("alice") == [":bob!~bob@127.0.0.1 ACCOUNT acct"]


# -- labeled-response ------------------------------------------------------------------------------------
LR = "labeled-response batch echo-message"


def test_labeled_single_line_reply():
    net = Net()
    net.register(1, "a", caps=LR)
    net.send(1, "@label=abc PING tok")
    (pong,) = net.msgs(1)
    assert pong.command == "PONG" and pong.tags["label"] == "abc"


def test_labeled_several_lines_come_in_a_batch():
    net = Net()
    net.register(1, "a", caps=LR)
    net.send(1, "@label=w1 WHOIS a")
    msgs = net.msgs(1)
    start, *body, end = msgs
    # https://ircv3.net/specs/extensions/labeled-response: BATCH +ref labeled-response, each line tagged
    assert start.command == "BATCH" and start.params[1] == "labeled-response" and start.tags["label"] == "w1"
    ref = start.params[0][1:]
    assert all(m.tags.get("batch") == ref and "label" not in m.tags for m in body)
    assert [m.command for m in body][0] == "311" and body[-1].command == "318"
    assert end.command == "BATCH" and end.params == [f"-{ref}"]


def test_labeled_command_without_reply_gets_ack_and_pong_too():
    net = Net()
    room(net, "#l", "a", caps="labeled-response batch")
    net.send("a", "@label=n1 NOTICE #l :quiet")
    (ack,) = net.msgs("a")
    assert ack.command == "ACK" and ack.tags["label"] == "n1"
    net.clear()
    net.send("a", "@label=p1 PONG x")  # PONG never answers, but a labeled one is acknowledged
    assert [(m.command, m.tags["label"]) for m in net.msgs("a")] == [("ACK", "p1")]


def test_labeled_message_to_self_labels_only_the_echo():
    net = Net()
    net.register("foo", "foo", caps=LR)
    net.send("foo", "@label=12345 PRIVMSG foo :hi")
    msgs = net.msgs("foo")
    assert [m.command for m in msgs] == ["PRIVMSG", "PRIVMSG"]
    assert [m.tags.get("label") for m in msgs] == ["12345", None]


def test_labeled_unknown_command_and_errors():
    net = Net()
    net.register(1, "a", caps="labeled-response batch")
    net.send(1, "@label=u1 NONEXISTENT_COMMAND")
    (reply,) = net.msgs(1)
    assert reply.command == "421" and reply.tags["label"] == "u1"


def test_label_needs_the_cap():
    net = Net()
    net.register(1, "a", caps="batch")
    net.send(1, "@label=x PING t")
    assert "label" not in net.msgs(1)[0].tags


# -- server-time on every line ---------------------------------------------------------------------------
def test_server_time_on_numerics_and_server_lines():
    net = Net()
    net.register(1, "a", caps="server-time")
    net.send(1, "PING t", "WHOIS a", "JOIN #t")
    assert net.msgs(1) and all(m.tags.get("time", "").endswith("Z") for m in net.msgs(1))
    net.clear()
    net.clock.advance(200)  # the PING from the server for an idle client is stamped too
    net.tick()
    assert [m.command for m in net.msgs(1)] == ["PING"] and net.msgs(1)[0].tags["time"].endswith("Z")


# -- MONITOR ---------------------------------------------------------------------------------------------
def test_monitor_add_list_status_and_notifications():
    net = Net(limits=ChatLimits(flood_burst=1000, monitor=3))
    net.register("w", "watcher")
    net.register("b", "bob")
    net.send("w", "MONITOR + bob,carol")
    # https://ircv3.net/specs/extensions/monitor: 730 for those online (nick!user@host), 731 for the rest
    assert [(m.command, m.params[-1]) for m in net.msgs("w")] == [("730", "bob!~bob@127.0.0.1"), ("731", "carol")]
    net.clear()
    net.register("c", "carol")  # comes online
    assert [(m.command, m.params[-1]) for m in net.msgs("w")] == [("730", "carol!~carol@127.0.0.1")]
    net.clear()
    net.send("c", "NICK carla")  # leaves the nick: offline as carol
    assert [(m.command, m.params[-1]) for m in net.msgs("w")] == [("731", "carol")]
    net.clear()
    net.send("b", "QUIT :bye")
    assert [(m.command, m.params[-1]) for m in net.msgs("w")] == [("731", "bob")]
    net.clear()
    net.send("w", "MONITOR L")
    assert [(m.command, m.params[-1]) for m in net.msgs("w")][-1][0] == "733"
    assert sorted(net.msgs("w")[0].params[-1].split(",")) == ["bob", "carol"]
    net.clear()
    net.send("w", "MONITOR + dave,erin")  # limit 3: dave fits, erin does not
    codes = net.codes("w")
    assert "734" in codes
    full = net.numeric("w", "734")[0]
    assert full.params[1:3] == ["3", "erin"]
    net.clear()
    net.send("w", "MONITOR - bob", "MONITOR S")
    assert [(m.command, m.params[-1]) for m in net.msgs("w")] == [("731", "carol,dave")]
    net.clear()
    net.send("w", "MONITOR C", "MONITOR L")
    assert net.codes("w") == ["733"]
    assert net.core.monitors == {}


def test_monitor_is_forgotten_when_the_watcher_leaves():
    net = Net()
    net.register("w", "watcher")
    net.send("w", "MONITOR + someone")
    net.disconnect("w")
    assert net.core.monitors == {}


# -- bot mode --------------------------------------------------------------------------------------------
def test_bot_mode_whois_who_and_tag():
    net = Net()
    room(net, "#b", "botnick", caps="message-tags echo-message")
    room(net, "#b", "user", caps="message-tags")
    room(net, "#b", "plain")
    net.send("botnick", "MODE botnick +B")
    # https://ircv3.net/specs/extensions/bot-mode
    assert net.lines("botnick") == [":botnick MODE botnick :+B"]
    net.clear()
    net.send("botnick", "PRIVMSG #b :beep boop")
    assert "bot" in net.msgs("user")[0].tags
    assert "bot" in net.msgs("botnick")[0].tags  # the echo too
    assert net.lines("plain") == [":botnick!~botnick@127.0.0.1 PRIVMSG #b :beep boop"]
    net.clear()
    net.send("user", "WHOIS botnick", "WHO #b")
    assert net.numeric("user", "335")[0].params[1] == "botnick"
    flags = {m.params[5]: m.params[6] for m in net.numeric("user", "352")}
    assert "B" in flags["botnick"] and "B" not in flags["user"]
    net.clear()
    net.send("botnick", "MODE botnick", "MODE botnick -B", "MODE botnick")
    assert [m.params[-1] for m in net.numeric("botnick", "221")] == ["+B", "+"]


# -- WHO and WHOX ----------------------------------------------------------------------------------------
def test_who_nick_shows_the_prefix_of_the_channel_it_names():
    net = Net()
    room(net, "#chan", "coolNick", "otherNick")
    net.send("otherNick", "WHO coolNick", "WHO coolni*")
    for reply in net.numeric("otherNick", "352"):
        # Modern IRC WHO: <channel> is one the user is in, and the flags carry its membership prefix there
        assert reply.params[1] == "#chan" and reply.params[6] == "H@", reply


def test_whox_fields_token_and_order():
    net = Net()
    room(net, "#w", "alice", "bob")
    net.send("bob", "WHO #w %tcuhnfar,42")
    replies = net.numeric("bob", "354")
    # https://ircv3.net/specs/extensions/whox: fields in the order t c u i h s n f d l a o r
    assert replies[0].params == ["bob", "42", "#w", "~alice", "127.0.0.1", "alice", "H@", "0", "Real alice"]
    assert net.numeric("bob", "315")
    net.clear()
    net.send("bob", "WHO alice %na")
    assert [m.params for m in net.numeric("bob", "354")] == [["bob", "alice", "0"]]


# -- UTF8ONLY ----------------------------------------------------------------------------------------------
def test_utf8only_refuses_lines_that_are_not_utf8():
    net = Net()
    room(net, "#u", "alice", caps="labeled-response batch")
    room(net, "#u", "bob")
    net.send("alice", b"@label=xyz PRIVMSG #u :hi\xaa", b"NOTICE #u :hi\xaa", b"PRIVMSG #u :fine \xc3\xa9")
    fail = net.msgs("alice")[0]
    # https://ircv3.net/specs/extensions/utf8-only: FAIL <command> INVALID_UTF8
    assert fail.command == "FAIL" and fail.params[:2] == ["PRIVMSG", "INVALID_UTF8"] and fail.tags["label"] == "xyz"
    assert len(net.msgs("alice")) == 1  # nothing for the NOTICE (no automatic replies to a NOTICE)
    assert net.lines("bob") == [":alice!~alice@127.0.0.1 PRIVMSG #u :fine \u00e9"]


def test_utf8only_can_be_turned_off():
    net = Net(utf8_only=False)
    room(net, "#u", "alice", "bob")
    net.send("alice", b"PRIVMSG #u :caf\xe9")
    assert net.lines("bob") == [":alice!~alice@127.0.0.1 PRIVMSG #u :caf\u00e9"]
    net.send("alice", "VERSION")
    assert "UTF8ONLY" not in " ".join(" ".join(m.params) for m in net.numeric("alice", "005"))


# -- NAMES ---------------------------------------------------------------------------------------------
def test_userhost_in_names():
    net = Net()
    room(net, "#n", "alice")
    net.register("bob", "bob", caps="userhost-in-names")
    net.send("bob", "JOIN #n")
    names = net.numeric("bob", "353")[0].params[-1].split()
    assert sorted(names) == ["@alice!~alice@127.0.0.1", "bob!~bob@127.0.0.1"]


def test_names_of_a_secret_channel_uses_the_at_symbol_and_hides_it_from_outsiders():
    net = Net()
    room(net, "#sec", "alice", "bob")
    net.send("alice", "MODE #sec +s")
    net.clear()
    net.send("bob", "NAMES #sec")
    # RFC 2812 / Modern IRC RPL_NAMREPLY: '@' secret, '*' private, '=' public
    assert net.numeric("bob", "353")[0].params[1] == "@"
    net.register("out", "outsider")
    net.send("out", "NAMES #sec", "LIST", "WHOIS alice")
    assert not net.numeric("out", "353") and net.numeric("out", "366")
    assert not net.numeric("out", "322")
    assert not net.numeric("out", "319")  # alice's channels: the secret one is not shown


def test_names_without_a_channel_lists_every_visible_channel():
    net = Net()
    room(net, "#a", "alice")
    room(net, "#b", "bob")
    net.send("bob", "MODE #b +s")
    net.register("c", "carol")
    net.send("c", "NAMES")
    assert [m.params[2] for m in net.numeric("c", "353")] == ["#a"]
    assert net.numeric("c", "366")[0].params[1] == "*"


# -- USER ----------------------------------------------------------------------------------------------
def test_user_with_nothing_usable_as_a_username_is_answered():
    net = Net()
    net.connect(1)
    net.send(1, "NICK foo", "USER 😊😊😊 * * :realname")
    # Modern IRC: a client must not be left waiting; ERR_INVALIDUSERNAME, then it may try again
    assert net.codes(1) == ["468"]
    net.send(1, "USER foo * * :realname")
    assert "001" in net.codes(1)


def test_user_not_utf8_is_refused_under_utf8only():
    net = Net()
    net.connect(1)
    net.send(1, "NICK foo", b"USER \xe8rc\xe9 * * :realname")
    assert net.msgs(1)[0].command == "FAIL" and net.msgs(1)[0].params[1] == "INVALID_UTF8"


def test_empty_realname_or_username_is_refused():
    net = Net()
    net.connect(1)
    net.send(1, "NICK foo", "USER username * * :")
    assert net.codes(1) == ["461"]  # Modern IRC USER: ERR_NEEDMOREPARAMS, not a default value
    net.send(1, "USER : * * :Real")
    assert net.codes(1) == ["461", "461"]


# -- KICK ----------------------------------------------------------------------------------------------
def test_kick_several_users_each_get_their_kick_line():
    net = Net()
    room(net, "#chan", "foo", "bar", "baz", "qux")
    net.send("foo", "KICK #chan,#chan bar,baz :bye")
    # RFC 2812 3.2.8: channels and users paired; the server sends one KICK per user, never a list
    assert net.lines("qux") == [":foo!~foo@127.0.0.1 KICK #chan bar :bye", ":foo!~foo@127.0.0.1 KICK #chan baz :bye"]
    net.send("bar", "JOIN #chan")
    net.send("baz", "JOIN #chan")
    net.clear()
    net.send("foo", "KICK #chan bar,baz")  # one channel, several users
    assert [m.params[1] for m in net.msgs("qux") if m.command == "KICK"] == ["bar", "baz"]
    net.send("foo", "KICK #chan,#other qux")  # two channels, one user: not a valid pairing
    assert net.codes("foo")[-1] == "461"


# -- the length of tags --------------------------------------------------------------------------------
def test_client_tag_limit_is_4094_bytes_of_tag_data():
    net = Net()
    room(net, "#t", "alice", caps="message-tags echo-message")
    room(net, "#t", "bob", caps="message-tags")
    at_limit = "@foo=bar;+baz={} TAGMSG #t".format("a" * 4081)
    assert at_limit.index("TAGMSG") == 4096  # '@' + 4094 octets of tags + ' '
    net.send("alice", at_limit)
    (relayed,) = net.msgs("bob")
    assert relayed.tags["+baz"] == "a" * 4081 and "foo" not in relayed.tags  # server tags from a client: dropped
    net.clear()
    net.send("alice", "@foo=bar;+baz={} TAGMSG #t".format("a" * 4082))
    assert net.codes("alice") == ["417"] and net.msgs("bob") == []


def test_info_command():
    net = Net()
    net.register(1, "a")
    net.send(1, "INFO", "INFO nowhere.example")
    assert net.codes(1)[-3:] == ["371", "374", "402"] and net.codes(1)[0] == "371"


def test_parse_keeps_the_utf8_flag():
    assert parse(b"PRIVMSG #a :caf\xe9").utf8 is False
    assert parse("PRIVMSG #a :caf\u00e9".encode()).utf8 is True
