"""remote run/copy without a network: targets, hosts files, copy destinations, the line printer, JSON lines,
the summary table, and that importing the module does not import asyncssh."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys

import pytest

from socketkit.remote.fanout import EXIT_FAILED, EXIT_OK, EXIT_UNREACHED, FanoutResult, HostResult
from socketkit.remote.hosts import Target, TargetError, collect_targets, parse_copy_target, parse_target
from socketkit.remote.output import LinePrinter, json_line, write_summary


@pytest.mark.parametrize("text, host, user, port, label", [
    ("web1", "web1", None, None, "web1"),
    ("root@web1", "web1", "root", None, "root@web1"),
    ("root@10.0.0.5:2222", "10.0.0.5", "root", 2222, "root@10.0.0.5:2222"),
    ("ssh://deploy@db.example.org:2200", "db.example.org", "deploy", 2200, "deploy@db.example.org:2200"),
    ("ssh://db.example.org", "db.example.org", None, None, "db.example.org"),
    ("web1:22", "web1", None, 22, "web1:22"),
    ("[::1]:2222", "::1", None, 2222, "[::1]:2222"),
    ("u@[fe80::1%eth0]", "fe80::1%eth0", "u", None, "u@[fe80::1%eth0]"),
    ("::1", "::1", None, None, "::1"),
])
def test_targets(text, host, user, port, label):
    t = parse_target(text)
    assert (t.host, t.user, t.port, t.label) == (host, user, port, label)


@pytest.mark.parametrize("text, says", [
    ("", "no host"),
    ("web1:0", "port '0'"),
    ("web1:99999", "port '99999'"),
    ("web1:http", "port 'http'"),
    ("http://web1", "only ssh://"),
    ("@web1", "bad user name"),
    ("a b", "not a host name"),
    ("[::1", "needs its ']'"),
    ("a:b:c", "not an IPv6 address"),
    ("web1;rm", "not a host name"),
])
def test_bad_targets(text, says):
    with pytest.raises(TargetError, match=".*" + says.replace("[", r"\[").replace("]", r"\]")):
        parse_target(text)


def test_hosts_file(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# the web tier\nweb1\n\n  root@web2:2222   # second\nssh://db\nweb1\n")
    got = collect_targets(["db", "extra"], f)
    assert [t.label for t in got] == ["db", "extra", "web1", "root@web2:2222"]  # ssh://db is db again: once
    f.write_text("web1\nweb2 web3\n")
    with pytest.raises(TargetError, match=r"hosts:2: one target per line"):
        collect_targets([], f)
    f.write_text("web1\nweb1:x\n")
    with pytest.raises(TargetError, match=r"hosts:2: bad target"):
        collect_targets([], f)
    with pytest.raises(TargetError, match="cannot read the hosts file"):
        collect_targets([], tmp_path / "missing")
    f.write_text("# nobody\n")
    with pytest.raises(TargetError, match="lists none"):
        collect_targets([], f)


@pytest.mark.parametrize("spec, label, path", [
    ("web1:/tmp/x", "web1", "/tmp/x"),
    ("web1:", "web1", ""),
    ("web1:rel/dir/", "web1", "rel/dir/"),
    ("root@web1:2222:/tmp", "root@web1:2222", "/tmp"),
    ("ssh://root@web1:2222:/srv", "root@web1:2222", "/srv"),
    ("[::1]:2222:/tmp", "[::1]:2222", "/tmp"),
    ("web1:123", "web1", "123"),  # as scp: a file named 123 in the home directory
    ("web1:/a:b", "web1", "/a:b"),
    (":/etc/motd", None, "/etc/motd"),
])
def test_copy_targets(spec, label, path):
    target, got = parse_copy_target(spec)
    assert (target.label if target else None, got) == (label, path)
    with pytest.raises(TargetError, match="bad copy destination"):
        parse_copy_target("/just/a/path")


def test_printer_holds_partial_lines_and_bounds_long_ones():
    out, err = io.StringIO(), io.StringIO()
    p = LinePrinter(["web1", "db"], out, err, colour_out=False, colour_err=False, max_line=10)
    p.feed(0, False, b"hel")
    p.feed(1, False, b"one\ntw")
    assert out.getvalue() == "db   | one\n"  # labels padded to the longest; web1's half line is held
    p.feed(0, False, b"lo\n")
    p.feed(0, True, b"oops\n")
    p.feed(1, False, b"o\n" + b"x" * 25)
    assert out.getvalue().splitlines() == ["db   | one", "web1 | hello", "db   | two", "db   | xxxxxxxxxx",
                                           "db   | xxxxxxxxxx"]
    assert err.getvalue() == "web1 ! oops\n"
    p.finish(1)
    p.finish(0)
    assert out.getvalue().splitlines()[-1] == "db   | xxxxx"  # the unfinished last line, once the host is done


def test_printer_colour_and_binary_stream():
    raw = io.BytesIO()
    out = io.TextIOWrapper(raw, encoding="utf-8")
    p = LinePrinter(["h"], out, io.StringIO(), colour_out=True, colour_err=False)
    p.feed(0, False, b"\xff\xfe bytes as sent\n")
    assert raw.getvalue() == b"\x1b[36mh\x1b[0m | \xff\xfe bytes as sent\n"


def _result(label, status="ok", **kw):
    return HostResult(Target(label), status=status, **kw)


def test_json_line_text_and_binary():
    r = _result("web1", "exit", exit_status=3, stdout=b"hi\n", stderr=b"\xff\x00", seconds=0.123456)
    obj = json.loads(json_line(r))
    assert obj == {"host": "web1", "status": "exit", "exit_status": 3, "signal": None, "error": None,
                   "stdout": "hi\n", "stderr": "\ufffd\x00", "stderr_base64": base64.b64encode(b"\xff\x00").decode(),
                   "seconds": 0.123}


def test_summary_failed_first_and_exit_codes():
    rs = [_result("a", exit_status=0), _result("b", "exit", exit_status=3), _result("c", "timeout", error="timed out"),
          _result("d", exit_status=0), _result("e", "unreachable", error="unreachable: connection refused")]
    s = io.StringIO()
    write_summary(rs, s, colour=False, seconds=1.5)
    rows = s.getvalue().splitlines()
    assert rows[0].split() == ["HOST", "TIME", "RESULT"]
    assert [r.split()[0] for r in rows[1:6]] == ["c", "e", "b", "a", "d"]
    assert "exit 3" in rows[3] and "connection refused" in rows[2]
    assert rows[-1] == "5 hosts in 1.50s: 2 ok, 1 failed, 1 timed out, 1 unreachable"
    assert FanoutResult(rs).exit_code == EXIT_UNREACHED
    assert FanoutResult(rs[:2]).exit_code == EXIT_FAILED
    assert FanoutResult([rs[0], rs[3]]).exit_code == EXIT_OK


def test_import_is_light():
    code = ("import sys, socketkit.remote.fanout, socketkit.remote.hosts, socketkit.remote.output; "
            "print('asyncssh' in sys.modules, 'tqdm' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.split() == ["False", "False"], done.stderr
