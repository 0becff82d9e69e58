"""The server itself against callers that trickle, flood or speak broken HTTP, over real sockets
to the app served as `sharekey serve` serves it (`ops.server.make_runner`): a head must arrive
within `server.header_timeout`, a body within `server.body_timeout`, bodies being read at once
hold at most `limits.max_inflight_body_bytes`, a caller over the per-minute limit is refused
before its body is read, every answer says `Server: sharekey`, and /v1 answers carry the
content type the gateway vouches for."""

from __future__ import annotations

import asyncio
import contextlib
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
from gateway.net import redisnames
from gateway.ops.server import LINGER, make_runner
from gateway.relay.keyindex import KEY_INDEX
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.rawserver import Server, read_request
from tests.support.seed import add_key, user_with_token

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


async def _clear_of_a_minute_boundary(margin: float = 3.0) -> None:
    """Per-minute counts start again each minute: a test that needs two requests in one minute
    starts after the boundary when it is too close."""
    left = 60 - time.time() % 60
    if left < margin:
        await asyncio.sleep(left + 0.05)


class RedisMonitor:
    """The script calls Redis runs that name this test's per-minute keys (MONITOR, filtered: not
    the commands the scripts run inside)."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client, self.needle = client, f"{prefix}:".encode()
        self.seen: list[bytes] = []
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def __aenter__(self) -> RedisMonitor:
        self._task = asyncio.create_task(self._listen())
        await asyncio.wait_for(self._ready.wait(), 5)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    async def _listen(self) -> None:
        async with self.client.monitor() as monitor:
            self._ready.set()
            async for info in monitor.listen():
                command = str(info.get("command", "")).encode()
                if command.startswith(b"EVAL") and self.needle in command and b":urpm:" in command:
                    self.seen.append(command)

    async def settle(self) -> list[bytes]:
        await asyncio.sleep(0.3)  # MONITOR's stream lags the commands a little
        return list(self.seen)


async def _post(port: int, path: str, token: str, body: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_head(path, token, len(body)) + body)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return head, await reader.readexactly(length)
    finally:
        writer.close()


async def test_a_caller_over_its_limit_on_another_process_is_refused_before_a_large_body_is_read(
    served: Serve, fake_upstream: FakeUpstream, redis: Any, redis_prefix: str, config: config_mod.Config
) -> None:
    """Two gateways on one Redis, as two processes: the limit was reached through the first, so
    the second has no refusal to remember; a large body still gets its 429 from the head alone,
    after one read-only look at the count, which it leaves as it was."""
    port_a, token, _ = await served(limits={"user_requests_per_minute": 1})
    port_b, _, _ = await served(limits={"user_requests_per_minute": 1})
    await _clear_of_a_minute_boundary()
    head, _ = await _post(port_a, "/v1/chat/completions", token, json.dumps(CHAT).encode())
    assert head.startswith(b"HTTP/1.1 200")

    reader, writer = await asyncio.open_connection("127.0.0.1", port_b)
    start = time.monotonic()
    writer.write(_head("/v1/chat/completions", token, config.limits.max_body_bytes))  # and never the body
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    seconds = time.monotonic() - start
    writer.close()
    assert head.startswith(b"HTTP/1.1 429") and b"Retry-After:" in head and seconds < 1.0
    assert b"X-Content-Type-Options: nosniff" in head and b"Server: sharekey" in head
    assert len(fake_upstream.calls("/v1/chat/completions")) == 1
    minute = time.strftime("%Y-%m-%dT%H:%M", time.gmtime())
    counts = await redis.hgetall(redisnames.user_rpm(redis_prefix, minute))
    assert list(counts.values()) == [b"1"], "the look before the body counts nothing"

    # Chunked (no length announced) is large too: refused from the head on the Anthropic route.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_b)
    writer.write(
        f"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: {token}\r\nanthropic-version: 2023-06-01\r\n"
        "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    writer.close()
    assert head.startswith(b"HTTP/1.1 429")
    assert fake_upstream.calls("/v1/messages") == []


async def test_a_normal_request_costs_one_script_call_and_a_large_one_a_look_first(
    served: Serve, fake_upstream: FakeUpstream, redis: Any, redis_prefix: str
) -> None:
    port, token, _ = await served(limits={"user_requests_per_minute": 100})
    small = json.dumps(CHAT).encode()
    assert (await _post(port, "/v1/chat/completions", token, small))[0].startswith(b"HTTP/1.1 200")  # pool built
    async with RedisMonitor(redis, redis_prefix) as monitor:
        head, _ = await _post(port, "/v1/chat/completions", token, small)
        assert head.startswith(b"HTTP/1.1 200")
        seen = await monitor.settle()
        assert len(seen) == 1, seen  # the pick, nothing else about the caller's minute
        # A body of unknown length (chunked) may be as large as the cap: the count is looked at first.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        head_lines = _head("/v1/chat/completions", token, 0).replace(
            b"Content-Length: 0", b"Transfer-Encoding: chunked"
        )
        writer.write(head_lines + f"{len(small):x}\r\n".encode() + small + b"\r\n0\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 200")
        seen = await monitor.settle()
        assert len(seen) == 3, seen  # the look, then the pick
        numkeys = [command.split()[2] for command in seen]
        assert numkeys[1] == b"1" and numkeys[2] == numkeys[0] != b"1"  # the one-key look, then a pick
    assert len(fake_upstream.calls("/v1/chat/completions")) == 3


async def test_a_body_announced_over_the_cap_gets_413_from_its_head(served: Serve, fake_upstream: FakeUpstream) -> None:
    port, token, _ = await served(limits={"max_body_bytes": 1000, "max_inflight_body_bytes": 1000})
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    start = time.monotonic()
    writer.write(_head("/v1/chat/completions", token, 10**9))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 2)
    body = await asyncio.wait_for(reader.read(), LINGER + 2)  # answered, then closed after LINGER at most
    assert head.startswith(b"HTTP/1.1 413") and time.monotonic() - start < LINGER + 1.5
    assert json.loads(body.split(b"\r\n\r\n")[-1])["error"]["code"] == "request_too_large"
    assert fake_upstream.calls("/v1/chat/completions") == []
    writer.close()


@pytest.mark.parametrize(
    ("path", "code"),
    [("/v1/chat/completions", "server_busy"), ("/v1/messages", "overloaded_error"), ("/api/tokens", "server_busy")],
)
async def test_server_busy_answers_in_each_routes_shape_with_retry_after(
    served: Serve, fake_upstream: FakeUpstream, path: str, code: str
) -> None:
    port, token, app = await served(limits={"max_body_bytes": 1000, "max_inflight_body_bytes": 1000})
    holder_r, holder_w = await asyncio.open_connection("127.0.0.1", port)
    holder_w.write(_head("/v1/chat/completions", token, 1000) + b'{"model"')
    deadline = time.monotonic() + 2
    while app[BODY_BUDGET].held < 1000:
        assert time.monotonic() < deadline, "the first body was never being read"
        await asyncio.sleep(0.01)
    head, body = await _post(port, path, token, json.dumps(CHAT).encode())
    holder_w.close()
    assert head.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in head, head
    error = json.loads(body)["error"]
    assert code in (error.get("code"), error.get("type"))
    assert fake_upstream.calls("/v1/chat/completions") == fake_upstream.calls("/v1/messages") == []


async def _raw_upstream(serve: Any, status: int, content_type: str, body: bytes) -> Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()

    return await serve(answer)


async def test_a_page_of_html_labelled_json_fails_the_attempt(served: Serve, serve: Any) -> None:
    upstream = await _raw_upstream(serve, 200, "application/json", b"<html><body>Sign in to the wifi</body></html>")
    port, token, _ = await served(base_url=f"http://127.0.0.1:{upstream.port}/v1")
    head, body = await _post(port, "/v1/chat/completions", token, json.dumps(CHAT).encode())
    assert head.startswith(b"HTTP/1.1 502") and b"Content-Type: application/json" in head
    assert b"wifi" not in body and json.loads(body)["error"]["code"] == "upstream_failed"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_an_upstreams_html_refusal_reaches_the_caller_as_json_in_our_words(
    served: Serve, serve: Any, path: str
) -> None:
    upstream = await _raw_upstream(serve, 400, "text/html", b"<html><body>Bad Request from nginx</body></html>")
    port, token, _ = await served(base_url=f"http://127.0.0.1:{upstream.port}/v1")
    head, body = await _post(port, path, token, json.dumps({**CHAT, "max_tokens": 10}).encode())
    assert head.startswith(b"HTTP/1.1 400") and b"Content-Type: application/json" in head and b"nosniff" in head
    assert b"nginx" not in body and b"<html>" not in body
    error = json.loads(body)["error"]
    assert error["message"] == "The upstream refused the request (HTTP 400)."
