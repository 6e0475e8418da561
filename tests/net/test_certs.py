"""The development CA: where it lives, how its files are protected, and what it issues."""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import ipaddress
import multiprocessing
import os
import stat
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from socketkit.errors import TLSError
from socketkit.net import certs, tls


@pytest.fixture
def data(tmp_path, monkeypatch):
    path = tmp_path / "data"
    monkeypatch.setenv("SOCKETKIT_DATA", str(path))
    return path


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def load_cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path):
    return serialization.load_pem_private_key(path.read_bytes(), password=None)


def sans(cert: x509.Certificate) -> list:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


# -- data_dir ----------------------------------------------------------------------------------------

def test_data_dir_prefers_socketkit_data(data, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert certs.data_dir() == data
    assert data.is_dir() and mode(data) == 0o700


def test_data_dir_falls_back_to_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.delenv("SOCKETKIT_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert certs.data_dir() == tmp_path / "xdg" / "socketkit"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = certs.data_dir()
    assert path == tmp_path / "home" / ".local" / "share" / "socketkit"
    assert mode(path) == 0o700


# -- the CA ------------------------------------------------------------------------------------------

def test_ensure_ca_creates_a_p256_ca_for_ten_years(data):
    cert_path, key_path = certs.ensure_ca()
    assert (cert_path, key_path) == (data / "certs" / "ca.pem", data / "certs" / "ca-key.pem")
    assert mode(key_path) == 0o600
    assert mode(data / "certs") == 0o700
    cert, key = load_cert(cert_path), load_key(key_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert key.public_key() == cert.public_key()
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3649) < lifetime < dt.timedelta(days=3651)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_ensure_ca_is_idempotent(data):
    first = certs.ensure_ca()
    before = first[0].read_bytes(), first[1].read_bytes()
    assert certs.ensure_ca() == first
    assert (first[0].read_bytes(), first[1].read_bytes()) == before


def test_ensure_ca_in_an_explicit_directory(data, tmp_path):
    cert_path, key_path = certs.ensure_ca(tmp_path / "elsewhere")
    assert cert_path.parent == tmp_path / "elsewhere"
    assert not (data / "certs").exists()


def test_ca_paths_and_dev_ca_certificate_create_nothing(data):
    assert certs.dev_ca_certificate() is None
    assert certs.ca_paths() == (data / "certs" / "ca.pem", data / "certs" / "ca-key.pem")
    assert not data.exists()
    certs.ensure_ca()
    assert certs.dev_ca_certificate() == data / "certs" / "ca.pem"


def test_concurrent_creation_in_threads_yields_one_matching_pair(data):
    barrier = threading.Barrier(8)

    def create():
        barrier.wait()
        return certs.ensure_ca()

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: create(), range(8)))
    assert len(set(results)) == 1
    cert_path, key_path = results[0]
    assert load_key(key_path).public_key() == load_cert(cert_path).public_key()
    assert [p.name for p in (data / "certs").iterdir() if p.name.endswith(".tmp")] == []


def _ensure_ca_in(directory: str) -> bytes:
    cert_path, _ = certs.ensure_ca(directory)
    return cert_path.read_bytes()


def test_concurrent_creation_in_processes_yields_one_ca(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(4, mp_context=ctx) as pool:
        results = list(pool.map(_ensure_ca_in, [str(tmp_path / "certs")] * 4))
    assert len(set(results)) == 1
    cert = x509.load_pem_x509_certificate(results[0])
    assert load_key(tmp_path / "certs" / "ca-key.pem").public_key() == cert.public_key()


def test_keys_are_created_0600_even_with_a_permissive_umask(data, monkeypatch):
    opened = []
    real_open = os.open

    def spy(path, flags, mode=0o777, *args, **kwargs):
        opened.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(certs.os, "open", spy)
    old_umask = os.umask(0)
    try:
        ca_cert, ca_key = certs.ensure_ca()
        leaf_cert, leaf_key = certs.issue(["example.test"])
    finally:
        os.umask(old_umask)
    assert mode(ca_key) == 0o600 and mode(leaf_key) == 0o600
    assert mode(ca_cert) == 0o644 and mode(leaf_cert) == 0o644
    key_temps = [(f, m) for p, f, m in opened if "key" in os.path.basename(p) and p.endswith(".tmp")]
    assert len(key_temps) == 2
    # The mode is given when the file is created (exclusively), not applied afterwards.
    assert all(m == 0o600 and f & os.O_EXCL and f & os.O_CREAT for f, m in key_temps)


# -- leaf certificates -------------------------------------------------------------------------------

def test_issue_server_certificate_with_dns_and_ip_sans(data):
    cert_path, key_path = certs.issue(["example.test", "10.1.2.3", "::1"])
    assert cert_path == data / "certs" / "example.test.pem"
    assert key_path == data / "certs" / "example.test-key.pem"
    assert mode(key_path) == 0o600
    cert = load_cert(cert_path)
    assert sans(cert) == [x509.DNSName("example.test"),
                          x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
                          x509.IPAddress(ipaddress.ip_address("::1"))]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    cert.verify_directly_issued_by(load_cert(certs.ca_paths()[0]))
    assert load_key(key_path).public_key() == cert.public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=826)


def test_issue_client_certificate_does_not_replace_the_server_one(data):
    server_cert, _ = certs.issue(["alice"])
    client_cert, client_key = certs.issue(["alice"], client=True)
    assert client_cert != server_cert and server_cert.exists()
    assert client_cert.name == "alice-client.pem" and client_key.name == "alice-client-key.pem"
    eku = load_cert(client_cert).extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]


def test_issue_honours_days(data):
    cert = load_cert(certs.issue(["short.test"], days=10)[0])
    assert cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=10, hours=1)


@pytest.mark.parametrize(("name", "stem"), [
    ("*.example.test", "wildcard.example.test"),
    ("::1", "_1"),
    ("fe80::1", "fe80_1"),
    ("user@example.test", "user_example.test"),
])
def test_file_names_are_sanitised(data, name, stem):
    cert_path, key_path = certs.issue([name])
    assert cert_path.name == f"{stem}.pem" and key_path.name == f"{stem}-key.pem"
    assert cert_path.parent == data / "certs"


@pytest.mark.parametrize("names", [[], [""], ["bad name!"], ["../../etc/passwd"]])
def test_issue_rejects_bad_names(data, names):
    with pytest.raises(TLSError):
        certs.issue(names)


def test_dev_certificate_is_issued_once_and_reused(data):
    cert_path, key_path = certs.ensure_dev_certificate()
    assert cert_path.name == "localhost.pem"
    first = cert_path.read_bytes()
    assert sans(load_cert(cert_path)) == [x509.DNSName("localhost"),
                                          x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                          x509.IPAddress(ipaddress.ip_address("::1"))]
    assert certs.ensure_dev_certificate() == (cert_path, key_path)
    assert cert_path.read_bytes() == first


def test_dev_certificate_is_reissued_when_the_ca_changes(data):
    cert_path, _ = certs.ensure_dev_certificate()
    first = cert_path.read_bytes()
    for path in certs.ca_paths():
        path.unlink()
    certs.ensure_dev_certificate()
    assert cert_path.read_bytes() != first
    load_cert(cert_path).verify_directly_issued_by(load_cert(certs.ca_paths()[0]))


def test_describe_is_one_line_with_the_facts(data):
    cert_path, _ = certs.ensure_dev_certificate()
    text = certs.describe(cert_path)
    assert "\n" not in text
    assert "CN=localhost" in text
    assert "DNS:localhost" in text and "IP:127.0.0.1" in text and "IP:::1" in text
    assert tls.fingerprint(tls.read_pem_der(cert_path)) in text
    assert "not after 20" in text


def test_describe_names_a_missing_file(tmp_path):
    with pytest.raises(TLSError, match="nope.pem"):
        certs.describe(tmp_path / "nope.pem")
