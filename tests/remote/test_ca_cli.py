"""`socketkit remote ca init | sign-user | sign-host`: the certificates it makes are accepted by OpenSSH's own
sshd (TrustedUserCAKeys, HostCertificate) and ssh (@cert-authority), and refused when expired or for another
user; the CA keys are private (0600)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fanout_support import Sshd, keygen, require_sshd

from socketkit.remote.ca import CAError, parse_duration, sign_user


def _cli(*args: str, data: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "socketkit", "remote", "ca", *args], capture_output=True, text=True,
                          timeout=60, env=dict(os.environ, SOCKETKIT_DATA=str(data)))


def _ssh(port: int, key: Path, known_hosts: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ssh", "-F", "/dev/null", "-p", str(port), "-i", str(key), "-o", "BatchMode=yes",
                           "-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", f"UserKnownHostsFile={known_hosts}",
                           "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                           "-o", "ConnectTimeout=10", "root@127.0.0.1", *cmd],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_openssh_accepts_what_the_ca_signs(tmp_path):
    require_sshd()
    data = tmp_path / "data"
    done = _cli("init", data=data)
    assert done.returncode == 0, done.stderr
    ca_dir = data / "remote" / "ca"
    assert oct((ca_dir / "user_ca").stat().st_mode & 0o777) == "0o600"
    known_line = next(line for line in done.stdout.splitlines() if line.strip().startswith("@cert-authority"))

    user_key = keygen(tmp_path / "id_ed25519")
    done = _cli("sign-user", f"{user_key}.pub", "--principal", "root", "--valid", "1h", data=data)
    assert done.returncode == 0, done.stderr
    cert = tmp_path / "id_ed25519-cert.pub"
    assert "user certificate" in subprocess.run(["ssh-keygen", "-L", "-f", str(cert)], capture_output=True,
                                                text=True, timeout=30).stdout

    host_dir = tmp_path / "sshd"
    host_dir.mkdir()
    host_key = keygen(host_dir / "ssh_host_ed25519_key", comment="host")
    done = _cli("sign-host", f"{host_key}.pub", "--name", "127.0.0.1", data=data)
    assert done.returncode == 0, done.stderr
    sshd = Sshd(host_dir, None, host_key=host_key, extra=[
        f"TrustedUserCAKeys {ca_dir / 'user_ca.pub'}", f"HostCertificate {host_key}-cert.pub"]).start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(known_line.strip() + "\n")  # no host key in it: only the host CA
        ok = _ssh(sshd.port, user_key, known, "echo", "certified")
        assert ok.returncode == 0 and ok.stdout.strip() == "certified", ok.stderr + sshd.log()[-1500:]

        # a certificate for another account is refused by sshd
        other = keygen(tmp_path / "other")
        sign_user(f"{other}.pub", ["alice"], "1h", base=data / "remote")
        refused = _ssh(sshd.port, other, known, "true")
        assert refused.returncode == 255 and "Permission denied" in refused.stderr
    finally:
        sshd.stop()


def test_an_expired_certificate_is_refused_by_sshd(tmp_path):
    require_sshd()
    data = tmp_path / "data"
    assert _cli("init", data=data).returncode == 0
    ca_dir = data / "remote" / "ca"
    user_key = keygen(tmp_path / "id")
    sign_user(f"{user_key}.pub", ["root"], "2s", base=data / "remote")
    host_dir = tmp_path / "sshd"
    host_dir.mkdir()
    sshd = Sshd(host_dir, None, extra=[f"TrustedUserCAKeys {ca_dir / 'user_ca.pub'}"]).start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(sshd.known_hosts_line() + "\n")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # valid until 2 s after signing: wait it out (bounded)
            r = _ssh(sshd.port, user_key, known, "true")
            if r.returncode == 255:
                break
            time.sleep(0.5)
        assert r.returncode == 255 and "Permission denied" in r.stderr
    finally:
        sshd.stop()


def test_durations_and_errors_are_one_line(tmp_path):
    assert parse_duration("8h") == 8 * 3600 and parse_duration("1w1d") == 8 * 86400 and parse_duration("90") == 90
    for bad in ("", "0", "8x", "h8", "-1h"):
        with pytest.raises(CAError):
            parse_duration(bad)
    done = _cli("sign-user", str(tmp_path / "nope.pub"), "--principal", "x", data=tmp_path / "empty")
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "ca init" in done.stderr
