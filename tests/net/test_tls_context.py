"""SSL contexts from endpoints, checked by real handshakes on loopback.

Plain asyncio streams carry the handshakes here so these tests depend on nothing but tls.py and
certs.py; the socketkit Stream has its own tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import socket
import ssl
import subprocess
import warnings

import pytest
from cryptography.hazmat.primitives import serialization
from helpers import WAIT

from socketkit.errors import TLSError
from socketkit.net import certs, tls
from socketkit.net.endpoint import parse


@pytest.fixture
def data(tmp_path, monkeypatch):
    path = tmp_path / "data"
    monkeypatch.setenv("SOCKETKIT_DATA", str(path))
    return path


class Server:
    def __init__(self) -> None:
        self.port = 0
        self.infos: list[tls.TLSInfo] = []


@contextlib.asynccontextmanager
async def serving(ctx: ssl.SSLContext, host: str = "127.0.0.1"):
    server_state = Server()

    async def handler(reader, writer):
        server_state.infos.append(tls.info(writer.get_extra_info("ssl_object")))
        try:
            writer.write(b"hello\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handler, host, 0, ssl=ctx, ssl_handshake_timeout=WAIT)
    server_state.port = server.sockets[0].getsockname()[1]
    try:
        yield server_state
    finally:
        server.close()
        await server.wait_closed()


async def talk(port: int, ctx: ssl.SSLContext, hostname: str | None = "127.0.0.1",
               host: str = "127.0.0.1") -> tuple[bytes, tls.TLSInfo]:
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx, server_hostname=hostname,
                                                   ssl_handshake_timeout=WAIT)
    try:
        line = await reader.readline()
        return line, tls.info(writer.get_extra_info("ssl_object"))
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def client_for(port: int, query: str = "") -> tuple[ssl.SSLContext, str | None]:
    ep = parse(f"tls://127.0.0.1:{port}" + (f"?{query}" if query else ""))
    return tls.client_context(ep), tls.server_hostname(ep)


# -- pure functions ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("tls://example.org:443", "example.org"),
    ("tls://example.org:443?sni=other.example", "other.example"),
    ("tls://127.0.0.1:443?sni=name.example", "name.example"),
    ("tls://127.0.0.1:443", "127.0.0.1"),
    ("tls://[::1]:443", "::1"),
    ("tls://[fe80::1%25eth0]:443", "fe80::1"),
    ("unix:///tmp/x.sock", None),
])
def test_server_hostname(url, expected):
    assert tls.server_hostname(url) == expected


def test_fingerprint_is_sha256_hex():
    text = tls.fingerprint(b"abc")
    assert text == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    parse(f"tls://h:1?pin={text}")  # the pin option accepts exactly this form


def test_only_tls_endpoints(data):
    with pytest.raises(TLSError, match="tcp://"):
        tls.server_context("tcp://127.0.0.1:0")
    with pytest.raises(TLSError, match="tcp://"):
        tls.client_context("tcp://127.0.0.1:0")


def test_server_context_is_strict(data):
    ctx = tls.server_context("tls://127.0.0.1:0")
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION
    assert ctx.verify_mode == ssl.CERT_NONE
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe" and cipher["aead"], cipher["name"]
        assert "GCM" in cipher["name"] or "CHACHA20" in cipher["name"], cipher["name"]


@pytest.mark.parametrize(("verify", "mode"), [
    ("false", ssl.CERT_NONE), ("optional", ssl.CERT_OPTIONAL), ("true", ssl.CERT_REQUIRED)])
def test_server_verify_modes(data, verify, mode):
    assert tls.server_context(f"tls://127.0.0.1:0?verify={verify}").verify_mode == mode


def test_client_context_verifies_by_default(data):
    ctx = tls.client_context("tls://example.org:443")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert not (data / "certs").exists(), "a client must not create the dev CA"
    off = tls.client_context("tls://example.org:443?verify=false")
    assert off.verify_mode == ssl.CERT_NONE and not off.check_hostname
    pinned = tls.client_context("tls://example.org:443?pin=sha256:" + "ab" * 32)
    assert pinned.verify_mode == ssl.CERT_NONE and not pinned.check_hostname


def test_missing_files_name_the_file_and_the_option(data, tmp_path):
    missing = tmp_path / "missing.pem"
    with pytest.raises(TLSError, match=r"option cert: .*missing\.pem"):
        tls.server_context(f"tls://127.0.0.1:0?cert={missing}&key={missing}")
    cert, _ = certs.ensure_dev_certificate()
    with pytest.raises(TLSError, match=r"option key: .*missing\.pem"):
        tls.server_context(f"tls://127.0.0.1:0?cert={cert}&key={missing}")
    with pytest.raises(TLSError, match=r"option ca: .*missing\.pem"):
        tls.client_context(f"tls://127.0.0.1:1?ca={missing}")
    with pytest.raises(TLSError, match="key given without cert"):
        tls.client_context(f"tls://127.0.0.1:1?key={cert}")


def test_mismatched_key_is_an_error_that_shows_no_key_material(data):
    cert, _ = certs.issue(["one.test"])
    _, other_key = certs.issue(["two.test"])
    with pytest.raises(TLSError) as info:
        tls.server_context(f"tls://127.0.0.1:0?cert={cert}&key={other_key}")
    text = str(info.value)
    assert "one.test.pem" in text and "two.test-key.pem" in text
    key_body = other_key.read_text().splitlines()[1]
    assert "PRIVATE KEY" not in text and key_body not in text


def test_encrypted_key_fails_instead_of_prompting(data, tmp_path):
    cert, key_path = certs.issue(["locked.test"])
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    locked = tmp_path / "locked-key.pem"
    locked.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.BestAvailableEncryption(b"secret")))
    with pytest.raises(TLSError, match="encrypted"):
        tls.server_context(f"tls://127.0.0.1:0?cert={cert}&key={locked}")


def test_check_pin_without_a_peer_certificate():
    class NoCert:
        def getpeercert(self, binary_form=False):
            return None

    with pytest.raises(TLSError, match="no certificate"):
        tls.check_pin(NoCert(), "sha256:" + "00" * 32)


def test_tls_info_is_frozen():
    info = tls.TLSInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", None, None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.version = "TLSv1.2"  # type: ignore[misc]
    assert info.peer_fingerprint is None


# -- handshakes --------------------------------------------------------------------------------------

async def test_dev_certificate_verifies_with_no_flags(data):
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        ctx, hostname = client_for(server.port)
        assert hostname == "127.0.0.1"  # checked against the certificate's IP SAN
        line, info = await talk(server.port, ctx, hostname)
        assert line == b"hello\n"
        assert info.version in ("TLSv1.2", "TLSv1.3")
        assert info.cipher
        assert info.peer_subject == "localhost"
        assert info.peer_certificate is not None and info.peer_certificate["subjectAltName"]
        dev_cert, _ = certs.ensure_dev_certificate()
        assert info.peer_der == tls.read_pem_der(dev_cert)
        assert info.peer_fingerprint == tls.fingerprint(info.peer_der)
        # By name, too: the same certificate carries DNS:localhost.
        line, _ = await talk(server.port, tls.client_context(f"tls://localhost:{server.port}"), "localhost")
        assert line == b"hello\n"
        # The server saw an anonymous client.
        assert server.infos[0].peer_subject is None and server.infos[0].peer_der is None


async def test_dev_certificate_over_ipv6(data):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback (::1) in this environment")
    async with serving(tls.server_context("tls://[::1]:0"), host="::1") as server:
        ep = parse(f"tls://[::1]:{server.port}")
        line, info = await talk(server.port, tls.client_context(ep), tls.server_hostname(ep), host="::1")
        assert line == b"hello\n" and info.peer_subject == "localhost"


async def test_wrong_ca_fails_with_a_clear_error(data, tmp_path):
    other_ca, _ = certs.ensure_ca(tmp_path / "other")
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        ctx, hostname = client_for(server.port, f"ca={other_ca}")
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await talk(server.port, ctx, hostname)
        error = tls.translate_error(info.value, f"tls://127.0.0.1:{server.port}")
        assert isinstance(error, TLSError)
        assert "unable to get local issuer certificate" in str(error)
        assert "?ca=" in str(error) and "pin" in str(error)
        assert str(error).startswith(f"tls://127.0.0.1:{server.port}")


async def test_hostname_mismatch_fails(data):
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        ctx, hostname = client_for(server.port, "sni=not-this.example")
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            await talk(server.port, ctx, hostname)
        assert "does not name this host" in str(tls.translate_error(info.value))


async def test_verify_false_accepts_an_unknown_ca(data, tmp_path):
    cert, key = certs.issue(["stranger.test"], dir=tmp_path / "other")
    async with serving(tls.server_context(f"tls://127.0.0.1:0?cert={cert}&key={key}")) as server:
        ctx, hostname = client_for(server.port, "verify=false")
        line, info = await talk(server.port, ctx, hostname)
        assert line == b"hello\n"
        assert info.peer_certificate is None  # not verified, so Python gives no parsed dict
        assert info.peer_subject == "stranger.test"  # still read from the DER


def _old_client(max_version: ssl.TLSVersion) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = max_version
    # OpenSSL 3 refuses to even offer TLS 1.0/1.1 above security level 0.
    ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


async def test_tls11_client_is_refused(data):
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises((ssl.SSLError, ConnectionError)) as info:
                await talk(server.port, _old_client(ssl.TLSVersion.TLSv1_1), None)
        # The refusal came from the server, not from a client unable to say hello.
        assert "NO_PROTOCOLS_AVAILABLE" not in str(info.value)
        assert "TLS handshake failed" in str(tls.translate_error(info.value))
        # The same client allowed TLS 1.2 gets in, and gets an ECDHE + AEAD suite.
        line, info12 = await talk(server.port, _old_client(ssl.TLSVersion.TLSv1_2), None)
        assert line == b"hello\n" and info12.version == "TLSv1.2"
        assert info12.cipher.startswith("ECDHE-") and ("GCM" in info12.cipher or "CHACHA20" in info12.cipher)
        assert server.infos and all(i.version == "TLSv1.2" for i in server.infos)


async def test_mtls_rejects_a_client_without_certificate(data):
    async with serving(tls.server_context("tls://127.0.0.1:0?verify=true")) as server:
        ctx, hostname = client_for(server.port)
        try:
            line, _ = await talk(server.port, ctx, hostname)
        except (ssl.SSLError, ConnectionError):
            pass  # TLS 1.2: the handshake itself fails
        else:
            assert line == b""  # TLS 1.3: the client finishes first, then sees the server's alert close
        await asyncio.sleep(0.05)
        assert server.infos == [], "the handler must never run for an unauthenticated client"


async def test_mtls_accepts_a_ca_issued_client_certificate(data):
    cert, key = certs.issue(["alice"], client=True)
    async with serving(tls.server_context("tls://127.0.0.1:0?verify=true")) as server:
        ctx, hostname = client_for(server.port, f"cert={cert}&key={key}")
        line, _ = await talk(server.port, ctx, hostname)
        assert line == b"hello\n"
        (seen,) = server.infos
        assert seen.peer_subject == "alice"
        assert seen.peer_certificate is not None
        assert seen.peer_der == tls.read_pem_der(cert)


async def test_mtls_with_explicit_ca_rejects_other_cas(data, tmp_path):
    other_ca, _ = certs.ensure_ca(tmp_path / "other")
    cert, key = certs.issue(["alice"], client=True)  # from the dev CA, not from other_ca
    async with serving(tls.server_context(f"tls://127.0.0.1:0?verify=true&ca={other_ca}")) as server:
        ctx, hostname = client_for(server.port, f"cert={cert}&key={key}")
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            assert (await talk(server.port, ctx, hostname))[0] == b""
        await asyncio.sleep(0.05)
        assert server.infos == []


async def test_mtls_optional(data):
    cert, key = certs.issue(["bob"], client=True)
    async with serving(tls.server_context("tls://127.0.0.1:0?verify=optional")) as server:
        anonymous, hostname = client_for(server.port)
        assert (await talk(server.port, anonymous, hostname))[0] == b"hello\n"
        known, hostname = client_for(server.port, f"cert={cert}&key={key}")
        assert (await talk(server.port, known, hostname))[0] == b"hello\n"
        assert [i.peer_subject for i in server.infos] == [None, "bob"]


async def test_pin_match_trusts_a_certificate_no_ca_vouches_for(data, tmp_path):
    cert, key = certs.issue(["pinned.test"], dir=tmp_path / "other")
    pin = tls.fingerprint(tls.read_pem_der(cert))
    async with serving(tls.server_context(f"tls://127.0.0.1:0?cert={cert}&key={key}")) as server:
        ctx, hostname = client_for(server.port, f"pin={pin}")
        line, info = await talk(server.port, ctx, hostname)
        assert line == b"hello\n" and info.peer_fingerprint == pin
        tls.check_pin(_Peer(info.peer_der), pin.upper().replace("SHA256:", "sha256:"))


class _Peer:
    def __init__(self, der):
        self.der = der

    def getpeercert(self, binary_form=False):
        return self.der


async def test_pin_mismatch_fails_the_connect(data):
    wrong = "sha256:" + "00" * 32
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        ctx, hostname = client_for(server.port, f"pin={wrong}")
        with pytest.raises(TLSError) as info:
            await talk(server.port, ctx, hostname)
        actual = tls.fingerprint(tls.read_pem_der(certs.ensure_dev_certificate()[0]))
        assert wrong in str(info.value) and actual in str(info.value)


async def test_pin_is_enforced_on_blocking_sockets_too(data):
    wrong = "sha256:" + "00" * 32
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        ctx, hostname = client_for(server.port, f"pin={wrong}")

        def connect():
            with socket.create_connection(("127.0.0.1", server.port), timeout=WAIT) as raw:
                with ctx.wrap_socket(raw, server_hostname=hostname):
                    pass

        with pytest.raises(tls.PinError, match="pin mismatch"):
            await asyncio.to_thread(connect)


async def test_alpn_is_negotiated(data):
    async with serving(tls.server_context("tls://127.0.0.1:0?alpn=h2,http/1.1")) as server:
        ctx, hostname = client_for(server.port, "alpn=http/1.1")
        _, info = await talk(server.port, ctx, hostname)
        assert info.alpn == "http/1.1" and server.infos[0].alpn == "http/1.1"


# -- a different TLS stack talks to us ---------------------------------------------------------------

OPENSSL = shutil.which("openssl")


async def _s_client(port: int, *args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-brief", *args,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 15)
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command-line tool is not installed")
async def test_openssl_s_client_sees_modern_tls(data):
    async with serving(tls.server_context("tls://127.0.0.1:0")) as server:
        ca = str(certs.ca_paths()[0])
        for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
            code, out = await _s_client(server.port, flag, "-CAfile", ca, "-verify_return_error",
                                        "-verify_ip", "127.0.0.1")
            assert code == 0, out
            assert f"Protocol version: {version}" in out, out
            assert "Verification: OK" in out, out
        code, out = await _s_client(server.port, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
        assert code != 0, out
