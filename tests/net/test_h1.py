"""The hot path's HTTP/1.1 client against real loopback servers that answer byte by byte as told."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from yarl import URL

from gateway.net import h1
from tests.support.rawserver import Handler, Server, read_request  # noqa: F401


@pytest.fixture
async def pool() -> AsyncIterator[h1.Pool]:
    p = h1.Pool(allow_private=True, connect_timeout=2)
    yield p
    await p.close()


HEAD = h1.header_lines({"Content-Type": "application/json", "Authorization": "Bearer sk-test"})


def answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def test_json_answer_and_the_connection_is_reused(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            request = await read_request(reader)
            state.requests.append(request)
            writer.write(answer(b'{"n": %d}' % len(state.requests)))

    state = await serve(handler)
    for n in (1, 2, 3):
        resp = await pool.request(state.url(), HEAD, b'{"model": "m"}')
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert await resp.read() == b'{"n": %d}' % n
        resp.release()
        resp.release()  # a second release changes nothing
        assert len(pool._idle[("http", "127.0.0.1", state.port)]) == 1
    assert state.connections == 1
    first = state.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{state.port}\r\n".encode() in first
    assert b"Content-Length: 14\r\n" in first and b"Authorization: Bearer sk-test\r\n" in first
    assert first.endswith(b'\r\n\r\n{"model": "m"}')


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def test_chunked_stream_arrives_piece_by_piece(serve, pool: h1.Pool) -> None:
    go_on = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(chunk(b"data: first\n\n"))
        await writer.drain()
        await go_on.wait()
        writer.write(chunk(b"data: second\n\n") + b"0\r\n\r\n")
        await writer.drain()
        await reader.read()  # keep the connection open until the client closes it

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert resp.headers["Content-Type"] == "text/event-stream"
    assert await asyncio.wait_for(resp.readany(), 2) == b"data: first\n\n"  # before the rest exists
    go_on.set()
    assert await asyncio.wait_for(resp.readany(), 2) == b"data: second\n\n"
    assert await resp.readany() == b""
    resp.release()
    assert state.connections == 1


async def test_a_body_without_length_ends_with_the_connection_and_is_not_reused(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{"a":')
        await writer.drain()
        writer.write(b" 1}")

    state = await serve(handler)
    for _ in range(2):
        resp = await pool.request(state.url(), HEAD, b"{}")
        assert await resp.read() == b'{"a": 1}'
        resp.release()
    assert state.connections == 2


async def test_gzip_body_is_decoded(serve, pool: h1.Pool) -> None:
    body = b'{"usage": {"prompt_tokens": 3}}' * 50

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(gzip.compress(body), "Content-Encoding: gzip"))
        await reader.read()

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert await resp.read() == body
    resp.release()


async def test_an_unsupported_encoding_is_an_error(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"xx", "Content-Encoding: br"))
        await reader.read()

    state = await serve(handler)
    with pytest.raises(h1.UpstreamClosed, match="unsupported content encoding"):
        await pool.request(state.url(), HEAD, b"{}")


async def test_a_connection_lost_mid_body_raises_after_what_arrived(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert await resp.readany() == b"partial"
    with pytest.raises(h1.UpstreamClosed):
        await resp.readany()
    resp.release()
    assert not pool._idle.get(("http", "127.0.0.1", state.port))


async def test_garbage_is_not_http(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await reader.read()

    state = await serve(handler)
    with pytest.raises(h1.UpstreamClosed, match="invalid HTTP"):
        await pool.request(state.url(), HEAD, b"{}")


async def test_interim_100_continue_is_skipped(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}", status="201 Created"))
        await reader.read()

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert resp.status == 201
    assert await resp.read() == b"{}"


async def test_a_large_body_survives_flow_control(serve, pool: h1.Pool) -> None:
    body = bytes(range(256)) * (3 * h1.HIGH_WATER // 256 + 7)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(body))
        await writer.drain()
        await reader.read()

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    await asyncio.sleep(0.2)  # let more than the high-water mark arrive before reading
    assert await resp.read() == body
    resp.release()
    assert state.connections == 1 and len(pool._idle[("http", "127.0.0.1", state.port)]) == 1


async def test_read_with_a_limit_and_release_closes_an_unfinished_answer(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 100000\r\n\r\n" + b"e" * 5000)
        await writer.drain()
        await reader.read()  # returns when the client hangs up

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert resp.status == 500
    assert await resp.read_prefix(1000) == b"e" * 1000
    resp.release()
    await asyncio.wait_for(state.closed.wait(), 2)  # the upstream saw the hang-up


async def test_a_cancelled_request_hangs_up(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers

    state = await serve(handler)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await pool.request(state.url(), HEAD, b"{}")
    await asyncio.wait_for(state.closed.wait(), 2)
    assert not pool._all


async def test_a_connection_the_server_closed_while_idle_is_not_reused(serve, pool: h1.Pool) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(b"{}"))
        await writer.drain()  # then the server closes its keep-alive connection

    state = await serve(handler)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert await resp.read() == b"{}"
    resp.release()
    await asyncio.wait_for(state.closed.wait(), 2)
    await asyncio.sleep(0.05)
    resp = await pool.request(state.url(), HEAD, b"{}")
    assert await resp.read() == b"{}"
    assert state.connections == 2


async def test_connections_idle_too_long_are_closed(serve) -> None:
    closed = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal closed
        try:
            while True:
                await read_request(reader)
                await asyncio.sleep(0.05)  # long enough for three requests to need three connections
                writer.write(answer(b"{}"))
        finally:
            closed += 1

    state = await serve(handler)
    pool = h1.Pool(allow_private=True, connect_timeout=2, idle_seconds=1.0)

    async def one() -> None:
        resp = await pool.request(state.url(), HEAD, b"{}")
        assert await resp.read() == b"{}"
        resp.release()

    try:
        await asyncio.gather(one(), one(), one())
        assert state.connections == 3
        await asyncio.sleep(0.4)
        await one()  # reuses the newest; the other two keep waiting
        await asyncio.sleep(0.7)  # now those two have been idle for longer than a second
        await one()  # putting this one back closes them
        await asyncio.sleep(0.05)
        assert (state.connections, closed) == (3, 2)
        assert len(pool._idle[("http", "127.0.0.1", state.port)]) == 1
    finally:
        await pool.close()


def test_header_lines_refuse_line_breaks() -> None:
    assert h1.header_lines({"A": "b"}) == b"A: b\r\n"
    with pytest.raises(ValueError):
        h1.header_lines({"Authorization": "Bearer x\r\nX-Injected: 1"})


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, and its key: the server's, and the client's trust."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sharekey test upstream")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def test_https_upstream_with_a_checked_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    connections = 0

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        try:
            while True:
                request = await read_request(reader)
                assert b"\r\nHost: 127.0.0.1:" in request
                writer.write(answer(b'{"tls": true}'))
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0, ssl=server_tls)
    port = server.sockets[0].getsockname()[1]
    url = URL(f"https://127.0.0.1:{port}/v1/chat/completions")
    trusting = h1.Pool(allow_private=True, connect_timeout=2, tls=ssl.create_default_context(cafile=str(cert)))
    default = h1.Pool(allow_private=True, connect_timeout=2)  # the system's trust store: not this certificate
    try:
        for _ in range(2):
            resp = await trusting.request(url, HEAD, b"{}")
            assert (resp.status, await resp.read()) == (200, b'{"tls": true}')
            resp.release()
        assert connections == 1  # the TLS connection was kept and reused
        with pytest.raises(ssl.SSLCertVerificationError):
            await default.request(url, HEAD, b"{}")
    finally:
        await trusting.close()
        await default.close()
        server.close()
