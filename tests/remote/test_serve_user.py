"""`remote serve` started as root with user=NAME: it binds, makes and reads its host key and opens the audit
log as root, then becomes NAME for good; logins are NAME's only, commands and files run with NAME's rights
in NAME's home. Needs root and useradd (a throwaway account is made and removed)."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from sshsupport import keygen, pub, require_openssh, run, sftp_argv, ssh_argv, write_known_hosts

SERVER = """
import asyncio, sys
from socketkit.remote.server import RemoteConfig, serve_remote
asyncio.run(serve_remote(RemoteConfig(listen=["tcp://127.0.0.1:0"], audit_log=sys.argv[1], user=sys.argv[2])))
"""


@pytest.fixture
def account():
    require_openssh()
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs root")
    if not (shutil.which("useradd") and shutil.which("userdel")):
        pytest.skip("useradd/userdel are not installed")
    name = "sktest" + secrets.token_hex(4)
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True, timeout=30)
    try:
        yield pwd.getpwnam(name)
    finally:
        _kill_processes_of(pwd.getpwnam(name).pw_uid)  # leftovers, if a failure left any
        subprocess.run(["userdel", "-r", name], capture_output=True, timeout=30)


def _kill_processes_of(uid: int) -> None:
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if re.search(rf"^Uid:\s+{uid}\s", Path(f"/proc/{pid}/status").read_text(), re.M):
                os.kill(int(pid), 9)
        except (OSError, ValueError):
            pass


async def test_root_binds_then_becomes_the_user(tmp_path, account):
    home = Path(account.pw_dir)
    key = keygen(tmp_path / "id")
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700)
    (ssh_dir / "authorized_keys").write_text(pub(key).read_text())  # the default place: the account's own
    for p in (ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(p, account.pw_uid, account.pw_gid)
    data = tmp_path / "data"
    env = {**os.environ, "SOCKETKIT_DATA": str(data)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", SERVER, str(tmp_path / "audit.log"),
                                                account.pw_name, stderr=subprocess.PIPE, env=env,
                                                cwd=str(Path(__file__).resolve().parents[2]))
    try:
        port, lines = None, []
        async with asyncio.timeout(30):
            while port is None:
                line = (await proc.stderr.readline()).decode()
                assert line, "the server ended: " + "".join(lines)
                lines.append(line)
                m = re.search(r"remote listening on tcp://127\.0\.0\.1:(\d+)", line)
                port = int(m.group(1)) if m else None
            while not any(line.startswith("connect with:") for line in lines):
                lines.append((await proc.stderr.readline()).decode())
        assert f"ssh -p {port} {account.pw_name}@127.0.0.1" in lines[-1]
        status = Path(f"/proc/{proc.pid}/status").read_text()
        assert re.search(rf"^Uid:\s+{account.pw_uid}\s+{account.pw_uid}\s+{account.pw_uid}\s+{account.pw_uid}$",
                         status, re.M), status
        host_key = data / "remote" / "ssh_host_ed25519_key"
        assert host_key.stat().st_uid == 0 and oct(host_key.stat().st_mode & 0o777) == "0o600"
        kh = write_known_hosts(tmp_path / "known_hosts", port, pub(host_key).read_text())

        res = await run(ssh_argv(port, key, "id -un; echo $HOME; pwd; touch made; stat -c %U made",
                                 user=account.pw_name, known_hosts=kh))
        assert res.rc == 0, res.errtext
        assert res.text.split() == [account.pw_name, str(home), str(home), account.pw_name]
        (tmp_path / "up.txt").write_text("hello")
        res = await run(sftp_argv(port, key, user=account.pw_name, known_hosts=kh),
                        input=f"put {tmp_path}/up.txt up.txt\n".encode())
        assert res.rc == 0, res.errtext
        assert (home / "up.txt").read_text() == "hello" and (home / "up.txt").stat().st_uid == account.pw_uid
        res = await run(ssh_argv(port, key, "cat /etc/shadow", user=account.pw_name, known_hosts=kh))
        assert res.rc != 0 and "Permission denied" in res.errtext  # the user's rights, not root's
        res = await run(ssh_argv(port, key, "true", user="root", known_hosts=kh))
        assert res.rc == 255 and "Permission denied (publickey)" in res.errtext
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 0
    audit = (tmp_path / "audit.log").read_text()
    assert f'"user":"{account.pw_name}"' in audit and '"event":"stop"' in audit
