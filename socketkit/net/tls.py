"""SSL contexts built from `tls://` endpoint options, certificate pinning and handshake details.

Options understood (see endpoint.py): cert, key, ca, verify (true/false/optional), sni,
pin (sha256:<hex>), alpn (comma list). With no options at all a server uses the development
certificate (certs.py) and a client trusts the development CA besides the system store, so
`tls://127.0.0.1:8443` works end to end with no flags in development.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import os
import ssl
from pathlib import Path
from typing import Any

from socketkit.errors import TLSError
from socketkit.net import certs
from socketkit.net.endpoint import Endpoint, parse

# TLS 1.3 suites are all AEAD and not configurable here; this list only governs TLS 1.2, where we
# keep forward secrecy (ECDHE) and AEAD ciphers, with either an ECDSA or an RSA certificate.
SERVER_CIPHERS_TLS12 = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"

_Ssl = ssl.SSLObject | ssl.SSLSocket


def _endpoint(endpoint: Endpoint | str) -> Endpoint:
    ep = parse(endpoint)
    if ep.scheme != "tls":
        raise TLSError(f"expected a tls:// endpoint, got {ep.scheme}://", endpoint=ep)
    return ep


def _check_file(ep: Endpoint, option: str, value: str, *, directory_ok: bool = False) -> str:
    # Probe the file ourselves: OpenSSL's own errors name neither the file nor the option.
    path = os.path.expanduser(value)
    if directory_ok and os.path.isdir(path):
        return path
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TLSError(f"option {option}: cannot read {value!r}: {exc.strerror or exc}",
                       endpoint=ep) from None
    return path


def _no_password(*_: Any) -> bytes:
    # Without a callback OpenSSL would prompt on the terminal, hanging a server started by systemd.
    raise TLSError("the private key is encrypted; socketkit needs an unencrypted key file (mode 0600)")


def _load_chain(ctx: ssl.SSLContext, ep: Endpoint, cert: str | None, key: str | None,
                cert_option: str = "cert", key_option: str = "key") -> None:
    if cert is None:
        raise TLSError(f"option {key_option} given without {cert_option}", endpoint=ep)
    cert_file = _check_file(ep, cert_option, cert)
    key_file = _check_file(ep, key_option, key) if key is not None else None
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except TLSError as exc:
        raise TLSError(f"option {key_option}: {key or cert!r}: {exc.message}", endpoint=ep) from None
    except ssl.SSLError as exc:
        # The reason text is OpenSSL's (e.g. KEY_VALUES_MISMATCH); it never contains file contents.
        reason = exc.reason or exc.strerror or "unusable"
        where = f"{cert!r}" + (f" with key {key!r}" if key else "")
        raise TLSError(f"options {cert_option}/{key_option}: cannot load {where}: {reason} "
                       "(expected a PEM certificate and the PEM private key that matches it)",
                       endpoint=ep) from None


def _load_ca(ctx: ssl.SSLContext, ep: Endpoint, ca: str) -> None:
    path = _check_file(ep, "ca", ca, directory_ok=True)
    try:
        if os.path.isdir(path):
            ctx.load_verify_locations(capath=path)
        else:
            ctx.load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise TLSError(f"option ca: {ca!r} holds no usable PEM certificate: {exc.reason or exc}",
                       endpoint=ep) from None


def _common(ctx: ssl.SSLContext, ep: Endpoint) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION  # CRIME
    alpn = ep.option("alpn")
    if alpn:
        protocols = [p.strip() for p in alpn.split(",") if p.strip()]
        if protocols:
            ctx.set_alpn_protocols(protocols)


def server_context(endpoint: Endpoint | str, *,
                   default_cert: tuple[str | os.PathLike[str], str | os.PathLike[str]] | None = None
                   ) -> ssl.SSLContext:
    """An SSLContext for a listener on a tls:// endpoint.

    Without cert/key options the server presents `default_cert` (a (cert, key) pair) if given, else
    the development certificate for localhost/127.0.0.1/::1, creating the dev CA on first use.
    """
    ep = _endpoint(endpoint)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _common(ctx, ep)
    ctx.set_ciphers(SERVER_CIPHERS_TLS12)
    # Renegotiation is a DoS lever and a source of past bugs; no client we care about needs it.
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_SINGLE_ECDH_USE
    cert, key = ep.option("cert"), ep.option("key")
    if cert is not None or key is not None:
        _load_chain(ctx, ep, cert, key)
    else:
        if default_cert is None:
            default_cert = certs.ensure_dev_certificate()
        _load_chain(ctx, ep, os.fspath(default_cert[0]), os.fspath(default_cert[1]),
                    "default cert", "default key")
    verify = ep.option("verify", "false")
    if verify in ("true", "optional"):
        ctx.verify_mode = ssl.CERT_REQUIRED if verify == "true" else ssl.CERT_OPTIONAL
        ca = ep.option("ca")
        if ca is None:
            # Mutual TLS in development: clients get certificates from the same dev CA (`issue`).
            ca = os.fspath(certs.ensure_ca()[0])
        _load_ca(ctx, ep, ca)
    else:
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def client_context(endpoint: Endpoint | str) -> ssl.SSLContext:
    """An SSLContext for connecting to a tls:// endpoint.

    Verifies the server by default, against `ca` if given, else against the system store plus the
    dev CA when one exists. `verify=false` turns checks off; `pin` replaces the chain and hostname
    checks with a fingerprint check right after the handshake, done by the context itself.
    """
    ep = _endpoint(endpoint)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # Client cipher list stays at Python's default: it is already forward-secret and AEAD-first,
    # and narrowing it further only costs interoperability with servers we do not control.
    _common(ctx, ep)
    pin = ep.option("pin")
    verify = ep.option("verify", "true")
    if pin is not None or verify == "false":
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        # verify=optional means nothing to a client; failing closed is the safe reading of it.
        ctx.check_hostname = True
        ctx.verify_mode = ssl.CERT_REQUIRED
    ca = ep.option("ca")
    if ca is not None:
        _load_ca(ctx, ep, ca)
    elif ctx.verify_mode != ssl.CERT_NONE:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        dev_ca = certs.dev_ca_certificate()
        if dev_ca is not None:
            try:
                ctx.load_verify_locations(cafile=os.fspath(dev_ca))
            except (OSError, ssl.SSLError):
                pass  # a broken dev CA must not stop connections to real servers
    if ep.option("cert") is not None or ep.option("key") is not None:
        _load_chain(ctx, ep, ep.option("cert"), ep.option("key"))
    if pin is not None:
        ctx.sslobject_class = type("PinnedSSLObject", (_PinnedSSLObject,), {"_pin": pin, "_endpoint": ep})
        ctx.sslsocket_class = type("PinnedSSLSocket", (_PinnedSSLSocket,), {"_pin": pin, "_endpoint": ep})
    return ctx


class _PinnedSSLObject(ssl.SSLObject):
    # asyncio and uvloop both drive the handshake through SSLObject.do_handshake, so checking here
    # enforces the pin for every stream without the caller having to remember to.
    _pin: str
    _endpoint: Endpoint | None

    def do_handshake(self) -> None:
        super().do_handshake()
        check_pin(self, self._pin, self._endpoint)


class _PinnedSSLSocket(ssl.SSLSocket):
    _pin: str
    _endpoint: Endpoint | None

    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        check_pin(self, self._pin, self._endpoint)


def server_hostname(endpoint: Endpoint | str) -> str | None:
    """The name to send as SNI and check the certificate against: `sni`, else the host.

    IP literals are returned as they are: Python's ssl then skips SNI (as RFC 6066 asks) but still
    matches the address against the certificate's IP SANs.
    """
    ep = parse(endpoint)
    sni = ep.option("sni")
    if sni:
        return sni
    if not ep.host:
        return None
    # A zone id ("fe80::1%eth0") is local routing information; certificates never carry it.
    return ep.host.split("%", 1)[0] if ep.ip_version == 6 else ep.host


def fingerprint(der: bytes) -> str:
    """'sha256:<hex>' of a DER certificate, in the form the `pin` option takes."""
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _normalise_pin(pin: str) -> str:
    text = pin.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:"):]
    return "sha256:" + text.replace(":", "")


class PinError(TLSError, ssl.SSLError):
    """The peer's certificate does not have the pinned fingerprint.

    Also an ssl.SSLError because it is raised from inside the handshake: asyncio and uvloop then treat
    it as the handshake failure it is (the connect fails with it) rather than as a crash to log.
    """


def check_pin(ssl_object: _Ssl, pin: str, endpoint: Endpoint | str | None = None) -> None:
    """Raise PinError (a TLSError) unless the peer's certificate has the SHA-256 fingerprint `pin`."""
    der = ssl_object.getpeercert(binary_form=True)
    if not der:
        raise PinError(f"certificate pin {pin} expected, but the peer sent no certificate",
                       endpoint=endpoint)
    expected, actual = _normalise_pin(pin), fingerprint(der)
    if not hmac.compare_digest(expected, actual):
        raise PinError(f"certificate pin mismatch: expected {expected}, the peer presented {actual}",
                       endpoint=endpoint)


@dataclasses.dataclass(frozen=True)
class TLSInfo:
    version: str | None                   # 'TLSv1.3'
    cipher: str | None                    # 'TLS_AES_256_GCM_SHA384'
    alpn: str | None                      # negotiated ALPN protocol
    peer_certificate: dict[str, Any] | None  # getpeercert(): only filled in when it was verified
    peer_der: bytes | None
    peer_subject: str | None              # CN, else the first SAN

    @property
    def peer_fingerprint(self) -> str | None:
        return fingerprint(self.peer_der) if self.peer_der else None


def info(ssl_object: _Ssl) -> TLSInfo:
    """What was negotiated on a finished handshake, and who the peer is."""
    cipher = ssl_object.cipher()
    peer_der = ssl_object.getpeercert(binary_form=True) or None
    # getpeercert() is empty unless the chain was verified; then we read the subject from the DER.
    peer_cert = ssl_object.getpeercert() or None
    subject = _subject_from_dict(peer_cert) if peer_cert else None
    if subject is None and peer_der is not None:
        subject = _subject_from_der(peer_der)
    return TLSInfo(
        version=ssl_object.version(),
        cipher=cipher[0] if cipher else None,
        alpn=ssl_object.selected_alpn_protocol(),
        peer_certificate=peer_cert,
        peer_der=peer_der,
        peer_subject=subject,
    )


def _subject_from_dict(cert: dict[str, Any]) -> str | None:
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    for _kind, value in cert.get("subjectAltName", ()):
        return value
    return None


def _subject_from_der(der: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        cert = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if names:
        value = names[0].value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for san in sans:
        return str(san.value)
    return None


_HINTS = {
    "unable to get local issuer certificate":
        "the certificate is not signed by a CA we trust; pass ?ca=FILE, or ?pin=sha256:... to trust "
        "this one certificate",
    "self-signed certificate":
        "the peer uses a self-signed certificate; pass ?ca=FILE or ?pin=sha256:...",
    "certificate has expired": "the certificate has expired (or a clock is wrong)",
    "Hostname mismatch": "the certificate does not name this host; pass ?sni=NAME if it names another",
    "IP address mismatch": "the certificate does not name this IP address; connect by host name or ?sni=NAME",
    "UNSUPPORTED_PROTOCOL": "the peer does not speak TLS 1.2 or newer",
    "WRONG_VERSION_NUMBER": "the peer did not answer with TLS (plain TCP on this port?)",
    "CERTIFICATE_REQUIRED": "the server requires a client certificate; pass ?cert=FILE&key=FILE",
}


def translate_error(exc: BaseException, endpoint: Endpoint | str | None = None) -> TLSError:
    """Turn an ssl.SSLError from a handshake into a TLSError that says what to do about it."""
    if isinstance(exc, TLSError):
        return exc
    detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or str(exc)
    if not detail or isinstance(exc, (ConnectionError, EOFError)):
        # A peer that rejects our hello often just closes; say so instead of printing nothing.
        detail = f"the peer closed the connection during the handshake ({type(exc).__name__})"
    text = str(exc)
    hint = next((h for key, h in _HINTS.items() if key in text or key == detail), None)
    message = f"TLS handshake failed: {detail}"
    if hint:
        message += f" ({hint})"
    error = TLSError(message, endpoint=endpoint)
    error.__cause__ = exc
    return error


def read_pem_der(path: str | os.PathLike[str]) -> bytes:
    """The DER bytes of the first certificate in a PEM file (e.g. to compute a pin for it)."""
    try:
        text = Path(path).read_text("ascii")
    except (OSError, UnicodeError) as exc:
        raise TLSError(f"cannot read certificate {os.fspath(path)!r}: {exc}") from None
    try:
        return ssl.PEM_cert_to_DER_cert(text[text.index("-----BEGIN CERTIFICATE-----"):
                                             text.index("-----END CERTIFICATE-----") + 25])
    except ValueError:
        raise TLSError(f"{os.fspath(path)!r} holds no PEM certificate") from None
