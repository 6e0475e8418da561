"""Who gets in to `remote serve`: OpenSSH user certificates made by ssh-keygen and checked as sshd's
TrustedUserCAKeys does (principal, validity, the CA), and authorized_keys options (from=, command=,
no-pty, cert-authority), each refusal with its reason on the audit log."""

from __future__ import annotations

import pytest
from sshsupport import current_user, fingerprint, keygen, pub, require_openssh, run, serving, sign_cert

pytestmark = pytest.mark.usefixtures("openssh")
USER = current_user()


@pytest.fixture
def openssh():
    require_openssh()


async def test_user_certificates_valid_expired_future_wrong_principal_untrusted(tmp_path):
    ca = keygen(tmp_path / "user_ca")
    async with serving(tmp_path, authorize=False, trusted_ca=pub(ca)) as s:
        cases = {
            "valid": dict(principals=[USER, "someone"], validity="-5m:+1h"),
            "expired": dict(principals=[USER], validity="20200101:20200102"),
            "future": dict(principals=[USER], validity="+1d:+2d"),
            "principal": dict(principals=["someone-else"]),
            "noprincipal": dict(principals=None),
        }
        certs = {}
        for serial, (name, kw) in enumerate(cases.items(), start=10):
            key = keygen(tmp_path / f"id_{name}")
            certs[name] = (key, sign_cert(ca, key, key_id=f"cert-{name}", serial=serial, **kw))

        key, cert = certs["valid"]
        res = await run(s.ssh("echo in", key=key, cert=cert))
        assert res.rc == 0 and res.text == "in\n", res.errtext
        rec = s.records("auth", result="accepted")[-1]
        assert rec["cert_id"] == "cert-valid" and rec["cert_serial"] == 10
        assert rec["ca_fingerprint"] == fingerprint(pub(ca))
        assert rec["fingerprint"] == fingerprint(pub(key))

        reasons = {"expired": "certificate expired", "future": "not yet valid",
                   "principal": "do not include", "noprincipal": "no principals"}
        for name, why in reasons.items():
            key, cert = certs[name]
            res = await run(s.ssh("echo in", key=key, cert=cert))
            assert res.rc == 255 and "Permission denied (publickey)" in res.errtext, name
            refused = s.records("auth", result="refused", cert_id=f"cert-{name}")
            assert refused and why in refused[-1]["reason"], (name, refused)

        other_ca = keygen(tmp_path / "other_ca")
        key = keygen(tmp_path / "id_other")
        cert = sign_cert(other_ca, key, principals=[USER], key_id="cert-other")
        res = await run(s.ssh("echo in", key=key, cert=cert))
        assert res.rc == 255
        assert "not trusted" in s.records("auth", result="refused", cert_id="cert-other")[-1]["reason"]
        # a certificate for the right principal still logs in only as the server's own user
        key, cert = certs["valid"]
        res = await run(s.ssh("echo in", key=key, cert=cert, user="someone"))
        assert res.rc == 255
        assert len(s.records("exec")) == 1


async def test_authorized_keys_options(tmp_path):
    async with serving(tmp_path) as s:
        plain = pub(s.key).read_text().strip()
        forced, far, ca_line = keygen(tmp_path / "forced"), keygen(tmp_path / "far"), keygen(tmp_path / "kca")
        holder = keygen(tmp_path / "holder")
        (tmp_path / "authorized_keys").write_text(
            f"no-pty {plain}\n"
            f'command="echo forced $SSH_ORIGINAL_COMMAND" {pub(forced).read_text().strip()}\n'
            f'from="10.9.8.7" {pub(far).read_text().strip()}\n'
            f'cert-authority,principals="{USER}" {pub(ca_line).read_text().strip()}\n')
        res = await run(s.ssh("tty; echo ran", flags=["-tt"]), input=None)
        assert res.rc == 255 and "PTY allocation request failed" in res.errtext  # no-pty (-tt insists on one)
        res = await run(s.ssh("tty; echo ran"))
        assert res.text == "not a tty\nran\n"
        res = await run(s.ssh("echo mine", key=forced))
        assert res.rc == 0 and res.text == "forced echo mine\n", res  # what the client asked, as sshd passes it
        assert s.records("exec")[-1]["command"].startswith("echo forced")
        assert s.records("exec")[-1]["requested"] == "echo mine"
        res = await run(s.ssh("echo again"))
        assert "requested" not in s.records("exec")[-1]  # no forced command: nothing to pass on
        res = await run(s.ssh("echo in", key=far))
        assert res.rc == 255  # from= names another address
        cert = sign_cert(ca_line, holder, principals=[USER], key_id="via-authorized-keys")
        res = await run(s.ssh("echo in", key=holder, cert=cert))
        assert res.rc == 0 and res.text == "in\n", res.errtext
        assert s.records("auth", result="accepted", cert_id="via-authorized-keys")
