"""remote copy against three real sshd: each serves sftp from its own start directory (internal-sftp -d), so one
relative destination lands in a different place per server and every copy can be checked on its own."""

from __future__ import annotations

import filecmp
import io
import os
import pty
import stat

import pytest
from fanout_support import Fleet, closed_port, keygen, require_sshd

from socketkit.remote.fanout import EXIT_OK, EXIT_UNREACHED, copy, copy_command
from socketkit.remote.hosts import TargetError


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    require_sshd()
    base = tmp_path_factory.mktemp("copy")
    key = keygen(base / "id_ed25519")
    with Fleet(base, 3, key, sftp_dirs=True) as f:
        f.config = base / "ssh_config"
        f.config.write_text("")
        f.hosts = base / "hosts"
        f.hosts.write_text("".join(t + "\n" for t in f.targets))
        yield f


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture
def src(tmp_path):
    d = tmp_path / "src"
    (d / "tree" / "sub" / "deeper").mkdir(parents=True)
    (d / "a.txt").write_text("hello\n")
    (d / "b.bin").write_bytes(os.urandom(3 << 20))
    (d / "tree" / "top.txt").write_text("top\n")
    (d / "tree" / "sub" / "run.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(d / "tree" / "sub" / "run.sh", 0o755)
    (d / "tree" / "sub" / "deeper" / "empty").write_bytes(b"")
    return d


def opts(fleet, **kw):
    return dict(identity=[fleet.user_key], known_hosts=fleet.known_hosts, ssh_config=fleet.config, agent=False, **kw)


def tree_equal(a, b) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.funny_files:
        return False
    if filecmp.cmpfiles(a, b, cmp.common_files, shallow=False)[1:] != ([], []):
        return False
    return all(tree_equal(os.path.join(a, d), os.path.join(b, d)) for d in cmp.common_dirs)


async def test_files_to_every_host(fleet, src):
    err = io.StringIO()
    result = await copy([src / "a.txt", src / "b.bin"], ":files/", hosts_file=fleet.hosts, err=err, **opts(fleet))
    assert result.ok, [h.error for h in result.hosts]
    for home in fleet.dirs:
        assert (home / "files" / "a.txt").read_text() == "hello\n"
        assert (home / "files" / "b.bin").read_bytes() == (src / "b.bin").read_bytes()
    assert [h.files for h in result.hosts] == [2, 2, 2]
    assert all(h.sent == 6 + (3 << 20) for h in result.hosts)
    text = err.getvalue()
    assert "copied 2 files (3.1 MB)" in text and text.splitlines()[-1].endswith(": 3 ok")
    assert "\r" not in text  # not a terminal: no bar


async def test_directory_recursive(fleet, src):
    result = await copy([src / "tree"], ":fresh", hosts_file=fleet.hosts, recursive=True, err=io.StringIO(),
                        **opts(fleet))
    assert result.ok, [h.error for h in result.hosts]
    for home in fleet.dirs:
        assert tree_equal(src / "tree", home / "fresh")  # a new name: the directory becomes it, as scp -r
        assert stat.S_IMODE((home / "fresh" / "sub" / "run.sh").stat().st_mode) == 0o755  # modes kept
    # into an existing directory: the tree goes inside it
    for home in fleet.dirs:
        (home / "existing").mkdir()
    result = await copy([src / "tree", src / "a.txt"], ":existing", hosts_file=fleet.hosts, recursive=True,
                        err=io.StringIO(), **opts(fleet))
    assert result.ok
    for home in fleet.dirs:
        assert tree_equal(src / "tree", home / "existing" / "tree")
        assert (home / "existing" / "a.txt").read_text() == "hello\n"


async def test_one_host_and_a_new_name(fleet, src):
    target = fleet.targets[1]
    result = await copy([src / "a.txt"], f"{target}:renamed.txt", err=io.StringIO(), **opts(fleet))
    assert result.ok
    assert (fleet.dirs[1] / "renamed.txt").read_text() == "hello\n"
    assert not (fleet.dirs[0] / "renamed.txt").exists()


async def test_local_mistakes_before_any_connection(fleet, src):
    with pytest.raises(TargetError, match="is a directory: copy it with -r"):
        await copy([src / "tree"], ":x", hosts_file=fleet.hosts, **opts(fleet))
    with pytest.raises(TargetError, match="no such file"):
        await copy([src / "nope"], ":x", hosts_file=fleet.hosts, **opts(fleet))
    with pytest.raises(TargetError, match="give --hosts FILE"):
        await copy([src / "a.txt"], ":x", **opts(fleet))


async def test_failures_named(fleet, src):
    err = io.StringIO()
    hosts = fleet.base / "hosts-bad"
    with closed_port() as port:
        refused = f"127.0.0.1:{port}"
        hosts.write_text(f"{fleet.targets[0]}\n{refused}\n")
        result = await copy([src / "a.txt"], ":no/such/dir/a.txt", hosts_file=hosts, err=err, **opts(fleet))
    by = {h.host: h for h in result.hosts}
    assert by[refused].status == "unreachable"
    assert by[fleet.targets[0]].status == "error" and "sftp" in by[fleet.targets[0]].error
    assert "no/such/dir" in by[fleet.targets[0]].error
    assert result.exit_code == EXIT_UNREACHED


def test_copy_command_exit_codes(fleet, src):
    assert copy_command([src / "a.txt"], ":cmd.txt", hosts_file=fleet.hosts, err=io.StringIO(),
                        **opts(fleet)) == EXIT_OK
    assert all((home / "cmd.txt").exists() for home in fleet.dirs)
    hosts = fleet.base / "hosts-refused"
    err = io.StringIO()
    with closed_port() as port:
        hosts.write_text(f"127.0.0.1:{port}\n")
        assert copy_command([src / "a.txt"], ":cmd.txt", hosts_file=hosts, err=err, **opts(fleet)) == EXIT_UNREACHED
    assert "unreachable: connection refused" in err.getvalue()


async def test_progress_bar_on_a_terminal(fleet, src):
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as err:
            result = await copy([src / "b.bin"], ":bar.bin", hosts_file=fleet.hosts, err=err, **opts(fleet))
        assert result.ok
        os.set_blocking(master, False)
        seen = b""
        try:
            while chunk := os.read(master, 65536):
                seen += chunk
        except BlockingIOError:
            pass
        text = seen.decode(errors="replace")
        assert "copy:" in text and "%" in text and "\r" in text  # tqdm drew, then the summary
        assert "3 ok" in text
    finally:
        os.close(master)
        os.close(slave)
