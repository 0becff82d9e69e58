"""The server itself against callers that trickle, flood or speak broken HTTP, over real sockets
to the app served as `sharekey serve` serves it (`ops.server.make_runner`): a head must arrive
within `server.header_timeout`, a body within `server.body_timeout`, bodies being read at once
hold at most `limits.max_inflight_body_bytes`, a caller over the per-minute limit is refused
before its body is read, every answer says `Server: sharekey`, and /v1 answers carry the
content type the gateway vouches for."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway import config as config_mod
from gateway.app import create_app
from gateway.inbound import BODY_BUDGET
from gateway.ops.server import LINGER, make_runner
from gateway.relay.keyindex import KEY_INDEX

from .fake_upstream import FakeUpstream
from .gateways import gateway_config
from .rawserver import Server, read_request
from .seed import add_key, user_with_token

Serve = Callable[..., Awaitable[tuple[int, str, web.Application]]]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def served(config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream) -> AsyncIterator[Serve]:
    """(port, a caller's token, app) of the gateway on a real loopback listener."""
    runners: list[web.AppRunner] = []
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")

    async def start(base_url: str | None = None, **changes: dict[str, Any]) -> tuple[int, str, web.Application]:
        cfg = gateway_config(config)
        for section, values in changes.items():
            cfg = cfg.replace(section, **values)
        await add_key(pool, cfg, donor, base_url or fake_upstream.base_url, name=f"k{len(runners)}")
        app = create_app(cfg)
        runner = make_runner(app, cfg)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        await app[KEY_INDEX].reload()
        return runner.addresses[0][1], token, app

    yield start
    for runner in runners:
        await runner.cleanup()


async def _closed_within(reader: asyncio.StreamReader, limit: float) -> tuple[bytes, float]:
    """Everything the server sent until it closed the connection, and when it closed."""
    start = time.monotonic()
    data = await asyncio.wait_for(reader.read(), limit)
    return data, time.monotonic() - start


def _head(path: str, token: str, length: int, extra: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {length}\r\n{extra}\r\n"
    ).encode()


async def test_an_idle_connection_and_a_trickled_head_are_closed_at_the_header_timeout(served: Serve) -> None:
    port, _, _ = await served(server={"header_timeout": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data, seconds = await _closed_within(reader, 5)
    assert data == b"" and 0.3 < seconds < 1.5
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    closed = False
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            closed = True
            break
        await asyncio.sleep(0.1)
        if reader.at_eof() or time.monotonic() - start > 3:
            break
    data = await asyncio.wait_for(reader.read(), 3)
    assert (closed or data == b"") and time.monotonic() - start < 2.0
    writer.close()


async def test_a_kept_alive_connection_idle_past_the_header_timeout_is_closed(served: Serve) -> None:
    port, _, _ = await served(server={"header_timeout": 0.5})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    data, seconds = await _closed_within(reader, 5)
    assert seconds < 1.5 and b"HTTP/1.1" not in data.split(b"\r\n\r\n", 1)[-1]
    writer.close()


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/tokens"])
async def test_a_trickled_body_gets_408_at_the_body_timeout_and_the_connection_closes(
    served: Serve, fake_upstream: FakeUpstream, path: str
) -> None:
    port, token, _ = await served(server={"header_timeout": 5.0, "body_timeout": 0.6})
    body = json.dumps(CHAT).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(_head(path, token, len(body)))
    answered = asyncio.create_task(reader.read())
    for byte in body[:20]:
        if answered.done():
            break
        writer.write(bytes([byte]))
        await asyncio.sleep(0.1)
    data = await asyncio.wait_for(answered, 5)
    seconds = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert 0.4 < seconds < 0.6 + LINGER + 1.0  # the body's deadline, then the rest drained as long as LINGER
    assert b"request_timeout" in data and b"Server: sharekey" in data
    assert fake_upstream.calls("/v1/chat/completions") == []
    writer.close()


async def test_bodies_in_flight_past_the_budget_get_503_server_busy(served: Serve, fake_upstream: FakeUpstream) -> None:
    port, token, app = await served(limits={"max_body_bytes": 1000, "max_inflight_body_bytes": 1500})
    holding = []
    for _ in range(1):  # one body of 1,000 bytes being read holds 1,000 of the 1,500
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_head("/v1/chat/completions", token, 1000) + b'{"model"')
        await writer.drain()
        holding.append((reader, writer))
    deadline = time.monotonic() + 2
    while app[BODY_BUDGET].held < 1000:
        assert time.monotonic() < deadline, "the first body was never being read"
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head("/v1/chat/completions", token, 900) + b"x" * 900)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 503"), head
    body = await reader.read(2000)
    assert json.loads(body.split(b"\r\n")[-1] or body)["error"]["code"] == "server_busy"
    assert fake_upstream.calls("/v1/chat/completions") == []
    for _, w in [*holding, (reader, writer)]:
        w.close()
    # The budget is given back whatever became of the bodies.
    deadline = time.monotonic() + 3
    while app[BODY_BUDGET].held:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)


async def test_a_caller_over_the_per_minute_limit_is_refused_before_its_body_is_read(
    served: Serve, fake_upstream: FakeUpstream
) -> None:
    port, token, _ = await served(limits={"user_requests_per_minute": 1})
    body = json.dumps(CHAT).encode()
    statuses = []
    for _ in range(2):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_head("/v1/chat/completions", token, len(body)) + body)
        statuses.append((await reader.readuntil(b"\r\n\r\n"))[:12])
        writer.close()
    assert statuses == [b"HTTP/1.1 200", b"HTTP/1.1 429"]
    # Now a 32 MiB body is announced and never sent: the answer comes from the head alone.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(_head("/v1/chat/completions", token, 32 * 1024 * 1024))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    assert head.startswith(b"HTTP/1.1 429") and b"Retry-After:" in head
    assert time.monotonic() - start < 1.0
    assert len(fake_upstream.calls("/v1/chat/completions")) == 1
    writer.close()


@pytest.mark.parametrize(
    "raw",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
        b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["bad request line", "header without a colon", "10,000-byte URL"],
)
async def test_protocol_errors_say_server_sharekey(served: Serve, raw: bytes) -> None:
    port, _, _ = await served()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)
    assert head.startswith((b"HTTP/1.1 4", b"HTTP/1.0 4")), head
    assert b"\r\nServer: sharekey\r\n" in head and b"aiohttp" not in head and b"Python" not in head
    writer.close()


async def _html_upstream(serve: Any, body: bytes) -> Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()

    return await serve(answer)


async def test_v1_answers_carry_the_type_the_gateway_vouches_for_with_nosniff(served: Serve, serve: Any) -> None:
    upstream = await _html_upstream(
        serve, json.dumps({"id": "x", "object": "chat.completion", "choices": [], "model": "m"}).encode()
    )
    port, token, _ = await served(base_url=f"http://127.0.0.1:{upstream.port}/v1")
    body = json.dumps(CHAT).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head("/v1/chat/completions", token, len(body)) + body)
    head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 3)).decode()
    assert head.startswith("HTTP/1.1 200")
    assert "Content-Type: application/json" in head and "text/html" not in head
    assert "X-Content-Type-Options: nosniff" in head
    writer.close()


async def test_an_upstream_answering_a_page_of_html_fails_the_attempt(
    served: Serve, serve: Any, pool: asyncpg.Pool
) -> None:
    upstream = await _html_upstream(serve, b"<html><body>Welcome to the hotel wifi</body></html>")
    port, token, _ = await served(base_url=f"http://127.0.0.1:{upstream.port}/v1")
    body = json.dumps(CHAT).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_head("/v1/chat/completions", token, len(body)) + body)
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
    rest = await reader.readexactly(length)
    assert head.startswith(b"HTTP/1.1 502") and b"application/json" in head and b"nosniff" in head
    assert b"hotel" not in rest
    writer.close()
