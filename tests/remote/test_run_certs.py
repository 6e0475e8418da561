"""remote run with OpenSSH certificates against real sshd: a host certificate (made by socketkit.remote.ca)
trusted through one `@cert-authority` line, with no host key in known_hosts; a user certificate made by
ssh-keygen -s, accepted by an sshd that trusts only the user CA (TrustedUserCAKeys, no authorized_keys)."""

from __future__ import annotations

import io
import subprocess

import pytest
from fanout_support import SSH_KEYGEN, Sshd, keygen, require_sshd

from socketkit.remote import ca
from socketkit.remote.fanout import run


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    require_sshd()
    base = tmp_path_factory.mktemp("certs")
    made, _ = ca.init(base)
    user = keygen(base / "id_user")
    authorized = base / "authorized_keys"
    authorized.write_text((base / "id_user.pub").read_text())
    servers = {}
    try:
        # a host certificate for the name clients use (127.0.0.1) and one for another name
        for name, principal in (("host-ca", "127.0.0.1"), ("wrong-name", "db.example.org")):
            d = base / name
            d.mkdir()
            key = keygen(d / "ssh_host_ed25519_key")
            cert = ca.sign_host(f"{key}.pub", [principal], "1h", base=base)
            servers[name] = Sshd(d, authorized, host_key=key, extra=[f"HostCertificate {cert}"]).start()
        # only the user CA: no authorized_keys at all
        d = base / "user-ca"
        d.mkdir()
        servers["user-ca"] = Sshd(d, None, extra=[f"TrustedUserCAKeys {made.user_pub}"]).start()
        world = {"base": base, "ca": made, "user": user, "servers": servers}
        world["kh_ca"] = base / "known_hosts_ca"
        world["kh_ca"].write_text(ca.known_hosts_line(base, "127.0.0.1") + "\n")
        # the user-ca server's own host key, plainly listed
        world["kh_plain"] = base / "known_hosts_plain"
        world["kh_plain"].write_text(servers["user-ca"].known_hosts_line() + "\n")
        world["config"] = base / "ssh_config"
        world["config"].write_text("")
        yield world
    finally:
        for s in servers.values():
            s.stop()


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


def quiet():
    return dict(out=io.StringIO(), err=io.StringIO(), agent=False)


async def test_host_certificate_trusted_by_cert_authority_line(world):
    s = world["servers"]["host-ca"]
    assert f":{s.port}" not in world["kh_ca"].read_text()  # only the CA is listed
    result = await run([s.target], "echo certified", identity=[world["user"]], known_hosts=world["kh_ca"],
                       ssh_config=world["config"], capture=True, **quiet())
    h = result.hosts[0]
    assert h.ok, h.error
    assert h.stdout == b"certified\n"


async def test_host_certificate_for_another_name_refused(world):
    s = world["servers"]["wrong-name"]
    result = await run([s.target], "true", identity=[world["user"]], known_hosts=world["kh_ca"],
                       ssh_config=world["config"], **quiet())
    h = result.hosts[0]
    assert h.status == "hostkey-mismatch", h.error
    assert s.target in h.error and "certificate" in h.error.lower()


async def test_cert_authority_for_other_hosts_does_not_vouch(world, tmp_path):
    s = world["servers"]["host-ca"]
    kh = tmp_path / "kh"
    kh.write_text(ca.known_hosts_line(world["base"], "*.example.org") + "\n")
    result = await run([s.target], "true", identity=[world["user"]], known_hosts=kh, ssh_config=world["config"],
                       **quiet())
    assert result.hosts[0].status == "hostkey-unknown"
    assert "is not in known_hosts" in result.hosts[0].error


async def test_user_certificate_from_ssh_keygen(world, tmp_path):
    s = world["servers"]["user-ca"]
    key = keygen(tmp_path / "id_cert")
    subprocess.run([SSH_KEYGEN, "-q", "-s", str(world["ca"].user_key), "-I", "test-id", "-n", "root", "-V", "+1h",
                    f"{key}.pub"], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "id_cert-cert.pub").exists()
    result = await run([s.target], "echo by certificate", identity=[key], known_hosts=world["kh_plain"],
                       ssh_config=world["config"], capture=True, **quiet())
    assert result.hosts[0].ok, result.hosts[0].error
    assert result.hosts[0].stdout == b"by certificate\n"
    # the same key without its certificate: this server knows no keys, only the CA
    (tmp_path / "id_cert-cert.pub").unlink()
    result = await run([s.target], "true", identity=[key], known_hosts=world["kh_plain"],
                       ssh_config=world["config"], **quiet())
    assert result.hosts[0].status == "auth"


async def test_user_certificate_for_another_principal_refused(world, tmp_path):
    s = world["servers"]["user-ca"]
    key = keygen(tmp_path / "id_other")
    ca.sign_user(f"{key}.pub", ["deploy"], "1h", base=world["base"])  # not root
    result = await run([s.target], "true", identity=[key], known_hosts=world["kh_plain"],
                       ssh_config=world["config"], **quiet())
    assert result.hosts[0].status == "auth"
    result = await run([f"deploy@{s.target}"], "true", identity=[key], known_hosts=world["kh_plain"],
                       ssh_config=world["config"], **quiet())
    assert result.hosts[0].status in ("auth", "error")  # no such account here: sshd refuses it either way
