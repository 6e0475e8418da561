"""A development certificate authority, so `tls://127.0.0.1:8443` works with no flags.

The CA and the certificates it issues live under `data_dir()/certs`. Private keys are created with
mode 0600 from the first byte (never chmod'ed after the fact), and every file is written to a temporary
name and moved into place, so a reader never sees half a certificate and a crash never leaves one.
Creation is serialised with a lock file, because the CA's certificate and key are two files that must
match: two processes racing to create them could otherwise each win one of the pair.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ipaddress
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from socketkit.errors import TLSError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the atomic renames still prevent torn files
    fcntl = None  # type: ignore[assignment]

CA_NAME = "socketkit development CA"
CA_DAYS = 3650
DEV_NAMES = ["localhost", "127.0.0.1", "::1"]
# A dev certificate this close to expiry is reissued rather than reused, so a long-running dev
# server started today does not fail next week.
_RENEW_BEFORE = dt.timedelta(days=30)
# Tolerate clocks that disagree by a little (VMs, containers just resumed).
_BACKDATE = dt.timedelta(hours=1)


def data_dir() -> Path:
    """Where socketkit keeps its state: $SOCKETKIT_DATA, $XDG_DATA_HOME/socketkit or ~/.local/share/socketkit."""
    return _make_private_dir(_data_dir_path())


def _data_dir_path() -> Path:
    if os.environ.get("SOCKETKIT_DATA"):
        return Path(os.environ["SOCKETKIT_DATA"]).expanduser()
    if os.environ.get("XDG_DATA_HOME"):
        return Path(os.environ["XDG_DATA_HOME"]).expanduser() / "socketkit"
    return Path.home() / ".local" / "share" / "socketkit"


def _make_private_dir(path: Path) -> Path:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise TLSError(f"cannot create directory {str(path)!r}: {exc.strerror or exc}") from exc
    return path


def _certs_dir(dir: str | os.PathLike[str] | None, *, create: bool = True) -> Path:
    path = Path(dir) if dir is not None else _data_dir_path() / "certs"
    if create:
        if dir is None:
            data_dir()
        _make_private_dir(path)
    return path


def ca_paths(dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Where the CA's certificate and key are (or would be); creates nothing."""
    base = _certs_dir(dir, create=False)
    return base / "ca.pem", base / "ca-key.pem"


def dev_ca_certificate(dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The dev CA certificate if one was already created, else None (clients trust it; never create it)."""
    cert, key = ca_paths(dir)
    return cert if cert.is_file() else None


# -- files -----------------------------------------------------------------------------------------

@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the flock


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL + the mode given at creation: a key file is 0600 before it holds a single byte.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fd = -1
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _read_cert(path: Path) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSError(f"cannot read certificate {str(path)!r}: {exc.strerror or exc}") from exc
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise TLSError(f"{str(path)!r} is not a PEM or DER certificate") from None


def _read_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise TLSError(f"cannot read key {str(path)!r}: {exc.strerror or exc}") from exc
    except (ValueError, TypeError):
        # Say nothing about the content: it is a private key.
        raise TLSError(f"{str(path)!r} is not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TLSError(f"{str(path)!r} is not an EC key; the dev CA only uses EC P-256")
    return key


# -- the CA ----------------------------------------------------------------------------------------

def ensure_ca(dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """Create the development CA once; return (cert_path, key_path). Safe to call concurrently.

    `dir` is the directory that holds the certificates (default: data_dir()/certs).
    """
    base = _certs_dir(dir)
    cert_path, key_path = ca_paths(base)
    if cert_path.is_file() and key_path.is_file():
        return cert_path, key_path
    with _locked(base):
        _ensure_ca_locked(cert_path, key_path)
    return cert_path, key_path


def _ensure_ca_locked(cert_path: Path, key_path: Path) -> None:
    # Checked again under the lock: whoever held it before us may have just created the pair.
    if cert_path.is_file() and key_path.is_file():
        return
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "socketkit")])
    now = dt.datetime.now(dt.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=CA_DAYS))
        # path_length=0: the dev CA signs leaves only, so a leaked leaf key cannot mint certificates.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    # Key first: a certificate on disk then always has its key next to it.
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


# -- leaf certificates -----------------------------------------------------------------------------

def _file_stem(name: str, client: bool) -> str:
    if name.startswith("*."):
        name = "wildcard." + name[2:]
    # Only [A-Za-z0-9._-] and no leading dot: the name can neither climb out of the directory nor
    # hide as a dotfile.
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).lstrip(".") or "cert"
    if stem in ("ca", "ca-key"):
        stem = f"{stem}_leaf"  # never overwrite the CA's own files
    return f"{stem}-client" if client else stem


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        pass
    if "@" in name:
        return x509.RFC822Name(name)
    try:
        ascii_name = name.encode("idna").decode("ascii") if not name.isascii() else name
    except UnicodeError:
        raise TLSError(f"{name!r} is not a valid DNS name") from None
    if not re.fullmatch(r"(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9_])?", ascii_name):
        raise TLSError(f"{name!r} is not a valid DNS name, IP address or e-mail address")
    return x509.DNSName(ascii_name.lower())


def issue(names: list[str], *, dir: str | os.PathLike[str] | None = None, client: bool = False,
          days: int = 825) -> tuple[Path, Path]:
    """Issue a leaf certificate signed by the dev CA for `names`; return (cert_path, key_path).

    Names that parse as IP addresses become IP SANs, the rest DNS names. `client=True` makes a
    client-authentication certificate (for mutual TLS) instead of a server one. 825 days is the longest
    validity some TLS clients (Apple's) accept for a server certificate.
    """
    names = [n.strip() for n in names if n and n.strip()]
    if not names:
        raise TLSError("a certificate needs at least one name (a host name or an IP address)")
    if days < 1:
        raise TLSError(f"days must be at least 1, got {days}")
    base = _certs_dir(dir)
    with _locked(base):
        return _issue_locked(base, names, client=client, days=days)


def _issue_locked(base: Path, names: list[str], *, client: bool, days: int) -> tuple[Path, Path]:
    ca_cert_path, ca_key_path = ca_paths(base)
    _ensure_ca_locked(ca_cert_path, ca_key_path)
    ca_cert, ca_key = _read_cert(ca_cert_path), _read_key(ca_key_path)
    sans = list(dict.fromkeys(_general_name(n) for n in names))
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    stem = _file_stem(names[0], client)
    cert_path, key_path = base / f"{stem}.pem", base / f"{stem}-key.pem"
    _write_atomic(key_path, _key_pem(key), 0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def ensure_dev_certificate(dir: str | os.PathLike[str] | None = None) -> tuple[Path, Path]:
    """A server certificate for localhost, 127.0.0.1 and ::1, issued once and reused while valid."""
    base = _certs_dir(dir)
    with _locked(base):
        ca_cert_path, ca_key_path = ca_paths(base)
        _ensure_ca_locked(ca_cert_path, ca_key_path)
        stem = _file_stem(DEV_NAMES[0], False)
        cert_path, key_path = base / f"{stem}.pem", base / f"{stem}-key.pem"
        if _still_good(cert_path, key_path, ca_cert_path):
            return cert_path, key_path
        return _issue_locked(base, DEV_NAMES, client=False, days=825)


def _still_good(cert_path: Path, key_path: Path, ca_cert_path: Path) -> bool:
    # Reissue rather than fail when anything is off: these are throwaway development credentials.
    if not (cert_path.is_file() and key_path.is_file()):
        return False
    try:
        cert, ca_cert, key = _read_cert(cert_path), _read_cert(ca_cert_path), _read_key(key_path)
        cert.verify_directly_issued_by(ca_cert)  # the CA may have been recreated since
    except (TLSError, ValueError, TypeError, InvalidSignature):
        return False
    if key.public_key() != cert.public_key():
        return False
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) > _RENEW_BEFORE


# -- for people ------------------------------------------------------------------------------------

def _san_text(name: x509.GeneralName) -> str:
    if isinstance(name, x509.DNSName):
        return f"DNS:{name.value}"
    if isinstance(name, x509.IPAddress):
        return f"IP:{name.value}"
    if isinstance(name, x509.RFC822Name):
        return f"email:{name.value}"
    return str(name.value)


def describe(path: str | os.PathLike[str]) -> str:
    """One line about a certificate file: subject, SANs, expiry and SHA-256 fingerprint."""
    cert = _read_cert(Path(path))
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        san_text = ", ".join(_san_text(n) for n in sans)
    except x509.ExtensionNotFound:
        san_text = "none"
    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    expires = cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"{os.fspath(path)}: subject {cert.subject.rfc4514_string()}; SANs {san_text}; "
            f"not after {expires}; sha256:{digest}")
