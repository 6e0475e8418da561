"""remote run against real OpenSSH servers: seven Debian sshd on 127.0.0.1 (five good ones named web1..web5 by
an ssh config, one whose host key known_hosts does not list, one whose listed key is another), a closed port
and a port that accepts TCP and never speaks."""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path

import pytest
from fanout_support import Fleet, closed_port, keygen, pub_line, require_sshd, silent_listener

from socketkit.remote.fanout import EXIT_FAILED, EXIT_OK, EXIT_UNREACHED, run, run_command

NAMES = ["web1", "web2", "web3", "web4", "web5"]
# Each server tells its port (the last word of $SSH_CONNECTION); web3 exits 3.
SCRIPT = ('p=${SSH_CONNECTION##* }; echo "out from $p"; echo "err from $p" >&2; printf "no newline"; '
          'if [ "$p" = "FAILING" ]; then exit 3; fi')


def script(failing_port: int) -> str:
    return SCRIPT.replace("FAILING", str(failing_port))


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require_sshd()
    base = tmp_path_factory.mktemp("fleet")
    key = keygen(base / "id_ed25519")
    with Fleet(base, 7, key) as f:
        good, unknown, mismatched = f.servers[:5], f.servers[5], f.servers[6]
        other = keygen(base / "other_host_key", comment="not the real one")
        f.known_hosts.write_text("".join(s.known_hosts_line() + "\n" for s in good)
                                 + mismatched.known_hosts_line(other) + "\n")
        f.config = f.ssh_config(base / "ssh_config", NAMES)
        f.good, f.unknown, f.mismatched = good, unknown, mismatched
        yield f


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))  # nothing may read the real ~/.ssh
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def opts(fleet, **kw):
    return dict(identity=[fleet.user_key], known_hosts=fleet.known_hosts, ssh_config=fleet.config, agent=False,
                **kw)


async def test_five_hosts_prefixed_output_and_a_summary(fleet):
    out, err = io.StringIO(), io.StringIO()
    result = await run(NAMES, script(fleet.good[2].port), out=out, err=err, **opts(fleet))
    ports = {name: s.port for name, s in zip(NAMES, fleet.good, strict=True)}
    lines = out.getvalue().splitlines()
    for name, port in ports.items():
        assert f"{name} | out from {port}" in lines
        assert f"{name} | no newline" in lines  # the last line without a newline, flushed when the host ended
        assert f"{name} ! err from {port}" in err.getvalue().splitlines()
    assert len(lines) == 10
    assert [(h.host, h.status, h.exit_status) for h in result.hosts] == [
        (n, "exit" if n == "web3" else "ok", 3 if n == "web3" else 0) for n in NAMES]
    table = err.getvalue().split("HOST ")[1].splitlines()
    assert table[1].split()[0] == "web3" and table[1].endswith("exit 3")  # failed first
    assert table[-1].startswith("5 hosts in ") and table[-1].endswith(": 4 ok, 1 failed")
    assert result.exit_code == EXIT_FAILED
    assert "\x1b[" not in out.getvalue() + err.getvalue()  # not a terminal: no colour


async def test_every_failure_named_and_on_time(fleet):
    # The per-host timeout is also what the good hosts get to log in and run `echo`: long enough for a loaded
    # machine. The upper bounds only tell "the timeout cut the silent host off" from "it hung".
    timeout = 6
    with silent_listener() as silent, closed_port() as closed:
        refused = f"127.0.0.1:{closed}"
        targets = ["web1", "web2", refused, f"127.0.0.1:{silent}", fleet.unknown.target, fleet.mismatched.target]
        err = io.StringIO()
        started = time.monotonic()
        result = await run(targets, "echo ok", out=io.StringIO(), err=err, timeout=timeout, **opts(fleet))
        took = time.monotonic() - started
    by = {h.host: h for h in result.hosts}
    assert by["web1"].ok and by["web2"].ok, (by["web1"].error, by["web2"].error)
    assert by[refused].status == "unreachable" and "connection refused" in by[refused].error
    quiet = by[f"127.0.0.1:{silent}"]
    assert quiet.status == "timeout" and "SSH handshake" in quiet.error
    assert timeout <= quiet.seconds < 2 * timeout, quiet.seconds
    assert took < 2 * timeout, took  # the whole run is bounded by the per-host timeout, hosts run at once
    unknown = by[fleet.unknown.target]
    assert unknown.status == "hostkey-unknown"
    assert unknown.error.startswith(f"[127.0.0.1]:{fleet.unknown.port} is not in known_hosts")
    assert "SHA256:" in unknown.error
    bad = by[fleet.mismatched.target]
    assert bad.status == "hostkey-mismatch"
    assert bad.error.startswith(f"host key for [127.0.0.1]:{fleet.mismatched.port} does not match known_hosts "
                                "(possible MITM)")
    assert result.exit_code == EXIT_UNREACHED
    text = err.getvalue()
    rows = text.split("HOST ")[1].splitlines()[1:5]
    assert {r.split()[0] for r in rows} == {refused, f"127.0.0.1:{silent}", fleet.unknown.target,
                                            fleet.mismatched.target}  # the four failures lead the table
    assert "6 hosts in" in text and "2 ok, 1 timed out, 1 unreachable, 1 host key mismatch, 1 unknown host key" in text
    # nothing was accepted on the way: known_hosts is as it was
    assert pub_line(fleet.unknown.host_key) not in Path(fleet.known_hosts).read_text()


async def test_json_lines_complete(fleet):
    out, err = io.StringIO(), io.StringIO()
    cmd = script(fleet.good[0].port) + f'; if [ "$p" = "{fleet.good[1].port}" ]; then printf "\\377\\376"; fi'
    with closed_port() as closed:
        refused = f"127.0.0.1:{closed}"
        result = await run(NAMES + [refused], cmd, json=True, out=out, err=err, **opts(fleet))
    objs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert err.getvalue() == ""  # --json: the objects and nothing else
    assert sorted(o["host"] for o in objs) == sorted(NAMES + [refused])
    by = {o["host"]: o for o in objs}
    for name, s in zip(NAMES, fleet.good, strict=True):
        o = by[name]
        assert set(o) >= {"host", "status", "exit_status", "signal", "error", "stdout", "stderr", "seconds"}
        assert o["stdout"].startswith(f"out from {s.port}\nno newline")
        assert o["stderr"] == f"err from {s.port}\n"
        assert o["signal"] is None and o["error"] is None and o["seconds"] > 0
    assert by["web1"]["exit_status"] == 3 and by["web1"]["status"] == "exit"
    assert by["web3"]["exit_status"] == 0 and by["web3"]["status"] == "ok"
    assert by["web2"]["stdout_base64"]  # not UTF-8: the exact bytes as base64 too
    assert "stdout_base64" not in by["web3"]
    assert by[refused]["status"] == "unreachable" and by[refused]["exit_status"] is None
    assert result.exit_code == EXIT_UNREACHED


async def test_long_lines_in_pieces_and_signals(fleet):
    out, err = io.StringIO(), io.StringIO()
    cmd = ('head -c 200000 /dev/zero | tr "\\0" x; echo; p=${SSH_CONNECTION##* }; '
           f'if [ "$p" = "{fleet.good[1].port}" ]; then kill -TERM $$; fi')
    result = await run(NAMES[:2], cmd, out=out, err=err, capture=True, **opts(fleet))
    mine = [line for line in out.getvalue().splitlines() if line.startswith("web1 | ")]
    assert [len(line) - 7 for line in mine] == [65536, 65536, 65536, 200000 - 3 * 65536]
    assert result["web1"].stdout == b"x" * 200000 + b"\n"
    assert result["web2"].status == "signal" and result["web2"].signal == "TERM"
    assert "killed by SIGTERM" in err.getvalue()


def test_run_command_exit_codes(fleet):
    quiet = dict(out=io.StringIO(), err=io.StringIO())
    assert run_command(NAMES, "true", **opts(fleet), **quiet) == EXIT_OK
    assert run_command(NAMES, "test $(hostname) = nope", **opts(fleet), **quiet) == EXIT_FAILED
    hosts = Path(fleet.base / "hosts")
    err = io.StringIO()
    with closed_port() as closed:
        hosts.write_text(f"# two good, one refused\nweb1\nweb2\n127.0.0.1:{closed}\n")
        assert run_command([], "true", hosts_file=hosts, **opts(fleet), out=io.StringIO(), err=err) == EXIT_UNREACHED
    assert "unreachable: connection refused" in err.getvalue()


async def test_parallel_bound(fleet, tmp_path):
    # each command says when it ran (the servers share this machine's clock): with parallel=1 the hosts take
    # turns
    cmd = "date +%s.%N; sleep 0.3; date +%s.%N"
    result = await run(NAMES[:3], cmd, capture=True, out=io.StringIO(), err=io.StringIO(), parallel=1, **opts(fleet))
    assert result.ok, [h.error for h in result.hosts]
    one = sorted(tuple(map(float, h.stdout.split())) for h in result.hosts)
    assert all(a[1] <= b[0] for a, b in zip(one, one[1:], strict=False)), one
    # with the default they overlap: each command waits (bounded) until all three have started, which only
    # hosts that run at once can do (logins staggered by a loaded machine do not matter)
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    cmd = (f'touch {barrier}/$$; i=0; while [ "$(ls {barrier} | wc -l)" -lt 3 ]; do '
           f'i=$((i+1)); if [ $i -gt 200 ]; then echo alone; exit 7; fi; sleep 0.05; done; echo met')
    result = await run(NAMES[:3], cmd, capture=True, out=io.StringIO(), err=io.StringIO(), timeout=20, **opts(fleet))
    assert [h.stdout for h in result.hosts] == [b"met\n"] * 3, [(h.stdout, h.error) for h in result.hosts]
    assert result.ok


async def test_command_timeout_and_auth_failure(fleet, tmp_path):
    # (the timeout also covers the login: long enough for a loaded machine; the upper bound tells "cut off
    # on time" from "ran to its end or hung")
    timeout = 6
    result = await run(["web1"], "sleep 60", timeout=timeout, out=io.StringIO(), err=io.StringIO(), **opts(fleet))
    h = result["web1"]
    assert h.status == "timeout" and "running the command" in h.error, h.error
    assert timeout <= h.seconds < 2 * timeout, h.seconds
    stranger = keygen(tmp_path / "stranger")
    result = await run(["web1", "nobody@web2"], "true", out=io.StringIO(), err=io.StringIO(),
                       **{**opts(fleet), "identity": [stranger]})
    assert [h.status for h in result.hosts] == ["auth", "auth"]
    assert "nobody" in result["nobody@web2"].error


async def test_cancelled_run_leaves_nothing_behind(fleet):
    with silent_listener() as silent:
        task = asyncio.ensure_future(run([f"127.0.0.1:{silent}", "web1"], "sleep 5", out=io.StringIO(),
                                         err=io.StringIO(), **opts(fleet)))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    await asyncio.sleep(0)
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_known_hosts_entries_and_ports(fleet, tmp_path):
    # as OpenSSH 9.2's ssh (checked by hand): the key listed for the bare address vouches for its other ports
    # too, a different key listed there makes the host unknown (not a mismatch: nothing was said of this port)
    s = fleet.good[0]
    kh = tmp_path / "kh"
    kh.write_text(f"127.0.0.1 {pub_line(s.host_key)}\n")
    result = await run([s.target], "true", out=io.StringIO(), err=io.StringIO(),
                       **{**opts(fleet), "known_hosts": kh})
    assert result.ok, result.hosts[0].error
    kh.write_text(f"127.0.0.1 {pub_line(fleet.mismatched.host_key)}\n")
    result = await run([s.target], "true", out=io.StringIO(), err=io.StringIO(),
                       **{**opts(fleet), "known_hosts": kh})
    assert result.hosts[0].status == "hostkey-unknown", result.hosts[0].error
    kh.write_text(f"[127.0.0.1]:{s.port} {pub_line(s.host_key)}\n# a comment\n\n@revoked * {pub_line(fleet.user_key)}\n")
    result = await run([s.target], "true", out=io.StringIO(), err=io.StringIO(),
                       **{**opts(fleet), "known_hosts": kh})
    assert result.ok, result.hosts[0].error
