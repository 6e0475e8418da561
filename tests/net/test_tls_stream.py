"""TLS streams end to end: dev certificate, details, mutual TLS, STARTTLS, pinning, real TLS tools."""

from __future__ import annotations

import asyncio
import shutil
import time

import pytest
from helpers import WAIT, data_dir, echo, running_server, url  # noqa: F401 - data_dir is a fixture

from socketkit import connect
from socketkit.errors import PeerResetError, SocketkitError, TLSError
from socketkit.net import certs, tls
from socketkit.net.stream import Stream

OPENSSL = shutil.which("openssl") or ("/usr/bin/openssl" if shutil.os.path.exists("/usr/bin/openssl") else None)
CURL = shutil.which("curl")


async def test_tls_with_dev_certificate_and_no_flags(data_dir):  # noqa: F811
    seen = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        seen.set_result(stream.tls)
        await echo(stream)

    async with running_server(handler, "tls://127.0.0.1:0") as server:
        assert server.endpoints[0].scheme == "tls"
        async with await connect(url(server), timeout=WAIT) as s:
            await s.send(b"secret\n")
            assert await s.receive_until(b"\n", timeout=WAIT) == b"secret\n"
            info = s.tls
            assert info is not None
            assert info.version in ("TLSv1.2", "TLSv1.3")
            assert info.cipher
            assert info.peer_subject == "localhost"   # the dev certificate's first name
            assert info.peer_fingerprint and info.peer_fingerprint.startswith("sha256:")
            server_info = await asyncio.wait_for(seen, WAIT)
            assert server_info.version == info.version and server_info.cipher == info.cipher
            assert server_info.peer_der is None   # no client certificate asked for
            with pytest.raises(SocketkitError):
                await s.send_eof()   # TLS cannot half-close
    assert (data_dir / "certs" / "ca.pem").exists()


async def test_tls_large_transfer_both_ways(data_dir):  # noqa: F811
    payload = bytes(range(256)) * 8192   # 2 MiB
    async with running_server(echo, "tls://127.0.0.1:0") as server:
        async with await connect(url(server), timeout=WAIT) as s:
            async def write():
                for i in range(0, len(payload), 65536):
                    await s.send(payload[i:i + 65536])

            writer = asyncio.ensure_future(write())
            got = await s.receive_exactly(len(payload), timeout=WAIT * 2)
            await writer
            assert got == payload


async def test_tls_alpn(data_dir):  # noqa: F811
    async with running_server(echo, "tls://127.0.0.1:0?alpn=x-sk,h2") as server:
        port = server.endpoints[0].port
        async with await connect(f"tls://127.0.0.1:{port}?alpn=x-sk", timeout=WAIT) as s:
            assert s.tls.alpn == "x-sk"


async def test_client_rejects_a_server_its_ca_does_not_sign(data_dir, tmp_path):  # noqa: F811
    other_ca, _ = certs.ensure_ca(tmp_path / "other")
    async with running_server(echo, "tls://127.0.0.1:0") as server:
        port = server.endpoints[0].port
        with pytest.raises(TLSError) as exc:
            await connect(f"tls://127.0.0.1:{port}?ca={other_ca}", timeout=WAIT)
        assert "certificate" in str(exc.value).lower()
        assert server.stats.accepted == 0


async def test_plain_tcp_client_to_tls_server_and_tls_client_to_plain_server(data_dir):  # noqa: F811
    async with running_server(echo, "tcp://127.0.0.1:0") as plain:
        port = plain.endpoints[0].port
        with pytest.raises((TLSError, PeerResetError)):
            await connect(f"tls://127.0.0.1:{port}", timeout=WAIT)


async def test_mutual_tls_handler_sees_client_identity(data_dir):  # noqa: F811
    cert, key = certs.issue(["alice"], client=True)
    seen = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        seen.set_result(stream.tls)
        await echo(stream)

    async with running_server(handler, "tls://127.0.0.1:0?verify=true") as server:
        port = server.endpoints[0].port
        async with await connect(f"tls://127.0.0.1:{port}?cert={cert}&key={key}", timeout=WAIT) as s:
            await s.send(b"hi\n")
            assert await s.receive_until(b"\n", timeout=WAIT) == b"hi\n"
        info = await asyncio.wait_for(seen, WAIT)
        assert info.peer_subject == "alice"
        assert info.peer_certificate is not None   # verified against the dev CA
        assert info.peer_fingerprint == tls.fingerprint(tls.read_pem_der(cert))


async def test_mutual_tls_without_client_certificate_is_refused(data_dir):  # noqa: F811
    async with running_server(echo, "tls://127.0.0.1:0?verify=true") as server:
        port = server.endpoints[0].port
        # With TLS 1.3 the client learns of the refusal on its first read, not during connect.
        with pytest.raises((TLSError, PeerResetError)):
            s = await connect(f"tls://127.0.0.1:{port}", timeout=WAIT)
            try:
                await s.send(b"hi\n")
                assert await s.receive(timeout=WAIT) != b"", "EOF counts as refused too"
            except AssertionError:
                raise TLSError("closed without data") from None
            finally:
                await s.aclose()
        assert server.stats.accepted == 0


async def test_starttls_upgrade_mid_stream(data_dir):  # noqa: F811
    server_ctx = tls.server_context("tls://127.0.0.1:0")
    client_ctx = tls.client_context("tls://127.0.0.1:0")
    seen = asyncio.get_running_loop().create_future()

    async def handler(stream: Stream) -> None:
        assert await stream.receive_until(b"\r\n") == b"STARTTLS\r\n"
        await stream.send(b"220 go ahead\r\n")
        await stream.start_tls(server_ctx, server_side=True)
        seen.set_result(stream.tls)
        await echo(stream)

    async with running_server(handler, "tcp://127.0.0.1:0") as server:
        async with await connect(url(server), timeout=WAIT) as s:
            assert s.tls is None
            await s.send(b"STARTTLS\r\n")
            assert await s.receive_until(b"\r\n", timeout=WAIT) == b"220 go ahead\r\n"
            await s.start_tls(client_ctx, server_hostname="127.0.0.1", timeout=WAIT)
            assert s.tls is not None and s.tls.version
            await s.send(b"now encrypted\r\n")
            assert await s.receive_until(b"\r\n", timeout=WAIT) == b"now encrypted\r\n"
            with pytest.raises(TLSError):
                await s.start_tls(client_ctx, server_hostname="127.0.0.1")   # already TLS
        assert (await asyncio.wait_for(seen, WAIT)).version == s.tls.version


async def test_starttls_refuses_buffered_plaintext(data_dir):  # noqa: F811
    client_ctx = tls.client_context("tls://127.0.0.1:0")

    async def handler(stream: Stream) -> None:
        await stream.receive_until(b"\r\n")
        await stream.send(b"220 go ahead\r\nINJECTED COMMAND\r\n")   # one segment: both lines arrive together
        await stream.receive()

    async with running_server(handler, "tcp://127.0.0.1:0") as server:
        async with await connect(url(server), timeout=WAIT) as s:
            await s.send(b"STARTTLS\r\n")
            assert await s.receive_until(b"\r\n", timeout=WAIT) == b"220 go ahead\r\n"
            with pytest.raises(TLSError) as exc:
                await s.start_tls(client_ctx, server_hostname="127.0.0.1")
            assert "plaintext" in str(exc.value)
            assert s.tls is None


async def test_pin_match_and_mismatch(data_dir):  # noqa: F811
    async with running_server(echo, "tls://127.0.0.1:0") as server:
        port = server.endpoints[0].port
        cert, _key = certs.ensure_dev_certificate()
        pin = tls.fingerprint(tls.read_pem_der(cert))
        async with await connect(f"tls://127.0.0.1:{port}?pin={pin}", timeout=WAIT) as s:
            await s.send(b"pinned\n")
            assert await s.receive_until(b"\n", timeout=WAIT) == b"pinned\n"
            assert s.tls.peer_fingerprint == pin
        wrong = "sha256:" + "00" * 32
        start = time.monotonic()
        with pytest.raises(TLSError) as exc:
            await connect(f"tls://127.0.0.1:{port}?pin={wrong}", timeout=WAIT)
        assert time.monotonic() - start < WAIT
        assert "pin" in str(exc.value)


# -- real TLS tools ----------------------------------------------------------------------------------------
async def _run(*argv: str, stdin: bytes = b"", timeout: float = 10) -> tuple[int, bytes, bytes]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode, out, err


@pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")
async def test_openssl_s_client_talks_to_our_tls_server(data_dir):  # noqa: F811
    async def one_line_echo(stream: Stream) -> None:
        line = await stream.receive_until(b"\n")
        await stream.send(b"echo: " + line)
        await stream.aclose()

    async with running_server(one_line_echo, "tls://127.0.0.1:0") as server:
        port = server.endpoints[0].port
        ca = data_dir / "certs" / "ca.pem"
        code, out, err = await _run(OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-quiet",
                                    "-CAfile", str(ca), "-verify_return_error", "-servername", "localhost",
                                    stdin=b"hello openssl\n")
        assert b"echo: hello openssl\n" in out, (code, out, err)
        assert b"verify error" not in err


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_curl_https_against_a_tiny_handler(data_dir):  # noqa: F811
    async def http(stream: Stream) -> None:
        head = await stream.receive_until(b"\r\n\r\n", max_size=16384)
        assert head.startswith(b"GET / HTTP/1.")
        body = b"hello from socketkit\n"
        await stream.send(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                          b"Connection: close\r\n\r\n%s" % (len(body), body))
        await stream.aclose()

    async with running_server(http, "tls://127.0.0.1:0") as server:
        port = server.endpoints[0].port
        ca = data_dir / "certs" / "ca.pem"
        code, out, err = await _run(CURL, "-sS", "--max-time", "8", "--cacert", str(ca),
                                    "--resolve", f"localhost:{port}:127.0.0.1", f"https://localhost:{port}/")
        assert code == 0, err
        assert out == b"hello from socketkit\n"
        assert server.stats.errors == 0
