"""Odd but legal peers: upstreams that go silent, trickle, flood, close kept-alive connections,
send bytes after their answer, compress unasked, or shape their errors strangely. Each test
asserts what the client got and when, how often the upstream was called, the usage rows, and
that benign behaviour leaves the key's standing alone."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from aiohttp.resolver import DefaultResolver

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.net import h1, redisnames
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway
from tests.support.rawserver import Server, read_request
from tests.support.seed import user_with_token

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
CONTENT = b'data: {"choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
DONE = b"data: [DONE]\n\n"

MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gw(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client) -> AsyncIterator[MakeGateway]:  # type: ignore[no-untyped-def]
    async def make(**upstream: Any) -> Gateway:
        cfg = config.replace("limits", user_daily_requests=0, user_requests_per_minute=0)
        cfg = cfg.replace(
            "upstream", **{"first_token_timeout": 5.0, "idle_timeout": 5.0, "connect_timeout": 5.0, **upstream}
        )
        app = create_app(cfg)
        client = await aiohttp_client(app)
        donor, _ = await user_with_token(pool, "donor")
        _, token = await user_with_token(pool, "caller")
        return Gateway(client, app, token, donor, pool, cfg)

    yield make


def json_answer(body: bytes, *extra: str, status: str = "200 OK") -> bytes:
    head = [f"HTTP/1.1 {status}", "Content-Type: application/json", f"Content-Length: {len(body)}", *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
COMPLETION = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]}).encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def add_raw_key(gw: Gateway, server: Server, **kw: Any) -> str:
    class _Raw:
        base_url = f"http://127.0.0.1:{server.port}/v1"

    return await gw.add_key(_Raw, **kw)  # type: ignore[arg-type]


async def timed(coro: Awaitable[Any]) -> tuple[Any, float]:
    start = time.monotonic()
    result = await coro
    return result, time.monotonic() - start


async def rows(gw: Gateway) -> list[asyncpg.Record]:
    return list(await gw.logs())


# --- timeouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_a_silent_upstream_is_cut_off_at_the_first_token_timeout(
    make_gw: MakeGateway, serve, stream: bool
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await reader.read()  # never answers

    gw = await make_gw(first_token_timeout=0.6)
    server = await serve(silent)
    await add_raw_key(gw, server)
    resp, seconds = await timed(gw.post("/v1/chat/completions", {**CHAT, "stream": stream}))
    assert resp.status == 502
    assert 0.55 <= seconds < 1.5, seconds
    [row] = await rows(gw)
    assert (row["status"], row["committed"]) == ("timeout", False)


async def test_a_stream_that_goes_quiet_after_its_first_event_ends_within_the_idle_timeout(
    make_gw: MakeGateway, serve
) -> None:
    async def quiet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(CONTENT))
        await reader.read()

    gw = await make_gw(idle_timeout=0.7)
    server = await serve(quiet)
    key_id = await add_raw_key(gw, server)
    resp, _ = await timed(gw.post("/v1/chat/completions", {**CHAT, "stream": True}))
    assert resp.status == 200
    start = time.monotonic()
    body = await resp.read()
    seconds = time.monotonic() - start
    assert 0.6 <= seconds < 1.5, seconds
    events = [e for e in body.split(b"\n\n") if e]
    assert events[0] + b"\n\n" == CONTENT
    assert len(events) == 2 and b"timed out" in events[1] and b'"error"' in events[1]
    assert DONE not in body
    [row] = await rows(gw)
    assert (row["status"], row["committed"], row["attempt"]) == ("stream_error", True, 1)
    assert (await gw.key_row(key_id))["status"] == "active"


async def test_the_total_timeout_ends_a_stream_that_trickles(make_gw: MakeGateway, serve) -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD)
        while True:
            writer.write(chunk(CONTENT))
            await writer.drain()
            await asyncio.sleep(0.2)

    gw = await make_gw(idle_timeout=1.0, total_timeout=1.2)
    server = await serve(trickle)
    await add_raw_key(gw, server)
    start = time.monotonic()
    resp = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    body = await resp.read()
    seconds = time.monotonic() - start
    assert resp.status == 200 and 1.1 <= seconds < 2.0, seconds
    assert body.count(b"Hel") >= 4 and body.rstrip().endswith(b"}") and b"timed out" in body
    [row] = await rows(gw)
    assert row["status"] == "stream_error"


async def test_the_connect_timeout_fires_on_a_listener_that_never_accepts(make_gw: MakeGateway) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(3):  # fill the accept queue: further SYNs are dropped, connect() hangs
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", port))
        except BlockingIOError:
            pass
        fillers.append(s)
    try:
        gw = await make_gw(connect_timeout=0.5)
        await add_raw_key(gw, Server(port))
        resp, seconds = await timed(gw.post("/v1/chat/completions", CHAT))
        assert resp.status == 502 and 0.45 <= seconds < 1.3, seconds
        [row] = await rows(gw)
        assert row["status"] == "timeout"
    finally:
        for s in (*fillers, listener):
            s.close()


# --- what the upstream says when it fails ----------------------------------------------------------


@pytest.mark.parametrize(
    "error_body",
    [
        b'{"error": {"message": {"nested": "object"}, "code": 7}}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"error": ' * 5_000 + b"1" + b"}" * 5_000,
        b"\xff\xfe not json at all",
    ],
    ids=["object-message", "deep-array", "deep-object", "binary"],
)
async def test_any_error_body_fails_over(
    make_gw: MakeGateway, serve, second_upstream: FakeUpstream, error_body: bytes
) -> None:
    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(error_body, status="500 Internal Server Error"))
        await reader.read()

    gw = await make_gw()
    server = await serve(broken)
    await add_raw_key(gw, server, name="broken")
    await gw.add_key(second_upstream, name="good")
    for _ in range(2):  # whichever key the balancer tries first, the answer comes from the good one
        resp = await gw.post("/v1/chat/completions", CHAT)
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["choices"][0]["message"]["content"] == second_upstream.reply


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [], "model": "gpt-4o"}', "model"),
        (b'{"mod\\u0065l": "gpt-4o", "messages": [], "model": "gpt-4o-mini"}', "model"),
        (b'{"model": "gpt-4o-mini", "stream": true, "messages": [], "stream": false}', "stream"),
        (b'{"model": "gpt-4o-mini", "max_tokens": 1, "messages": [], "max_tokens": 100000}', "max_tokens"),
    ],
)
async def test_a_decision_field_given_twice_is_refused(
    make_gw: MakeGateway, fake_upstream: FakeUpstream, body: bytes, field: str
) -> None:
    gw = await make_gw()
    await gw.add_key(fake_upstream)
    resp = await gw.post("/v1/chat/completions", body)
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert error["code"] == "duplicate_field" and f"'{field}'" in error["message"]
    assert fake_upstream.requests == []


async def test_a_field_name_inside_the_body_is_not_a_duplicate(
    make_gw: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    gw = await make_gw()
    await gw.add_key(fake_upstream)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"properties": {"model": {}, "stream": {}}}}}
    resp = await gw.post("/v1/chat/completions", {**CHAT, "tools": [tool], "metadata": {"note": "\\u0041"}})
    assert resp.status == 200


# --- keep-alive ------------------------------------------------------------------------------------


async def test_a_kept_alive_connection_the_upstream_closed_is_retried_on_a_fresh_one(
    make_gw: MakeGateway, serve
) -> None:
    async def once_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(COMPLETION))  # keep-alive by default in HTTP/1.1 …
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # … but the next request on it is met with a reset
        writer.transport.abort()

    gw = await make_gw()
    server = await serve(once_per_connection)
    key_id = await add_raw_key(gw, server)
    for _ in range(3):
        resp = await gw.post("/v1/chat/completions", CHAT)
        assert resp.status == 200, await resp.text()
    assert server.connections == 3
    logged = await rows(gw)
    assert [(r["status"], r["attempt"]) for r in logged] == [("ok", 1)] * 3
    row = await gw.key_row(key_id)
    assert (row["status"], row["last_error"]) == ("active", None)


async def test_the_servers_keep_alive_timeout_is_honoured(serve) -> None:
    async def short_keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            writer.write(json_answer(b"{}", "Keep-Alive: timeout=1"))

    pool = h1.Pool(allow_private=True, connect_timeout=2)
    try:
        server = await serve(short_keep_alive)
        for pause in (0, 0.1, 0.7):
            await asyncio.sleep(pause)
            resp = await pool.request(server.url(), b"", b"{}")
            assert await resp.read() == b"{}"
            resp.release()
        # Reused after 0.1 s; after 0.7 s the server's 1 s, less our margin, had run out.
        assert server.connections == 2
    finally:
        await pool.close()


async def test_bytes_after_a_complete_answer_do_not_spoil_it(make_gw: MakeGateway, serve) -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        if b'"stream": true' in request:
            writer.write(SSE_HEAD + chunk(CONTENT) + chunk(DONE) + b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\ngarbage")
        else:
            writer.write(json_answer(COMPLETION) + b"\r\nextra bytes nobody asked for")
        await reader.read()

    gw = await make_gw()
    server = await serve(chatty)
    key_id = await add_raw_key(gw, server)
    resp = await gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == "ok"
    resp = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    body = await resp.read()
    assert resp.status == 200 and body.endswith(DONE) and b'"error"' not in body
    assert server.connections == 2  # neither connection was reused
    assert [r["status"] for r in await rows(gw)] == ["ok", "ok"]
    assert (await gw.key_row(key_id))["last_error"] is None


# --- connecting ------------------------------------------------------------------------------------


class TwoFamilies(DefaultResolver):
    """A name whose IPv6 address black-holes and whose IPv4 address works."""

    def __init__(self, v6_port: int, v4_port: int) -> None:
        super().__init__()
        self.ports = (v6_port, v4_port)

    async def resolve(self, host: str, port: int = 0, family: Any = socket.AF_INET) -> list[dict[str, Any]]:
        v6, v4 = self.ports
        base = {"hostname": host, "proto": 0, "flags": 0}
        return [
            {**base, "host": "::1", "port": v6, "family": socket.AF_INET6},
            {**base, "host": "127.0.0.1", "port": v4, "family": socket.AF_INET},
        ]


async def test_happy_eyeballs_reaches_the_working_family_at_once(serve) -> None:
    async def ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(b'{"family": 4}'))

    black_hole = socket.socket(socket.AF_INET6)
    black_hole.bind(("::1", 0))
    black_hole.listen(0)
    v6_port = black_hole.getsockname()[1]
    fillers = []
    for _ in range(3):
        s = socket.socket(socket.AF_INET6)
        s.setblocking(False)
        try:
            s.connect(("::1", v6_port))
        except BlockingIOError:
            pass
        fillers.append(s)
    server = await serve(ok)
    pool = h1.Pool(allow_private=True, connect_timeout=3, resolver=TwoFamilies(v6_port, server.port))
    try:
        start = time.monotonic()
        resp = await pool.request(server.url(host="dual.test"), b"", b"{}")
        assert await resp.read() == b'{"family": 4}'
        assert time.monotonic() - start < 1.0  # 0.25 s for the IPv6 attempt, then IPv4
    finally:
        await pool.close()
        for s in (*fillers, black_hole):
            s.close()


# --- sizes and encodings ---------------------------------------------------------------------------


async def test_a_non_stream_answer_over_the_cap_fails_over_without_blaming_the_key(
    make_gw: MakeGateway, serve, second_upstream: FakeUpstream
) -> None:
    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(b'{"x": "' + b"a" * 300_000 + b'"}'))
        await reader.read()

    gw = await make_gw(max_response_bytes=100_000)
    server = await serve(huge)
    key_id = await add_raw_key(gw, server, name="huge")
    await gw.add_key(second_upstream, name="good")
    for _ in range(2):
        resp = await gw.post("/v1/chat/completions", CHAT)
        assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == second_upstream.reply
    statuses = {r["status"] for r in await rows(gw) if str(r["shared_key_id"]) == key_id}
    assert statuses <= {"upstream_error"}
    fails = await gw.app[appkeys.redis].hgetall(redisnames.fails(gw.app[appkeys.config].redis.key_prefix))
    assert key_id.encode() not in fails, "too large is not the key's failure"


async def test_an_event_over_the_cap_after_the_commit_ends_the_stream(make_gw: MakeGateway, serve) -> None:
    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(SSE_HEAD + chunk(CONTENT))
        for _ in range(40):
            writer.write(chunk(b"data: " + b"z" * 10_000))  # an event that never ends
            await writer.drain()
        await reader.read()

    gw = await make_gw(max_event_bytes=100_000)
    server = await serve(flood)
    await add_raw_key(gw, server)
    resp = await gw.post("/v1/chat/completions", {**CHAT, "stream": True})
    body = await resp.read()
    assert resp.status == 200 and body.startswith(CONTENT) and b"too large" in body and b"zzz" not in body
    [row] = await rows(gw)
    assert row["status"] == "stream_error"


@pytest.mark.parametrize("wbits", [-15, 15, 31], ids=["raw-deflate", "zlib", "gzip"])
async def test_compressed_answers_we_did_not_ask_for_are_decoded(make_gw: MakeGateway, serve, wbits: int) -> None:
    z = zlib.compressobj(wbits=wbits)
    packed = z.compress(COMPLETION) + z.flush()
    encoding = "gzip" if wbits == 31 else "deflate"

    async def compressing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(packed, f"Content-Encoding: {encoding}"))
        await reader.read()

    gw = await make_gw()
    server = await serve(compressing)
    await add_raw_key(gw, server)
    resp = await gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200 and (await resp.json())["choices"][0]["message"]["content"] == "ok"


async def test_a_zip_bomb_is_refused_without_being_inflated(serve) -> None:
    z = zlib.compressobj(wbits=31)
    bomb = z.compress(b"0" * 50_000_000) + z.flush()  # 50 MB in about 50 KB

    async def bombing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(bomb, "Content-Encoding: gzip"))
        await reader.read()

    pool = h1.Pool(allow_private=True, connect_timeout=2)
    try:
        server = await serve(bombing)
        resp = await pool.request(server.url(), b"", b"{}")
        with pytest.raises(h1.AnswerTooLarge):
            await resp.read(limit=1_000_000)
        resp.release()
    finally:
        await pool.close()


async def test_an_encoding_we_do_not_decode_fails_over_without_blaming_the_key(
    make_gw: MakeGateway, serve, second_upstream: FakeUpstream
) -> None:
    async def brotli(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(json_answer(b"\x1b\x03\x00\xf8", "Content-Encoding: br"))
        await reader.read()

    gw = await make_gw()
    server = await serve(brotli)
    key_id = await add_raw_key(gw, server, name="br")
    await gw.add_key(second_upstream, name="good")
    for _ in range(4):
        resp = await gw.post("/v1/chat/completions", CHAT)
        assert resp.status == 200
    fails = await gw.app[appkeys.redis].hgetall(redisnames.fails(gw.app[appkeys.config].redis.key_prefix))
    assert key_id.encode() not in fails
    assert (await gw.key_row(key_id))["status"] == "active"
