"""The pipelined script line against real Redis: ordering under concurrency, NOSCRIPT, failures."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from gateway.redisline import ScriptLine

ECHO = "redis.call('HINCRBY', KEYS[1], 'calls', 1); return {ARGV[1], tonumber(ARGV[2]) * 2}"
FAIL = "return redis.error_reply('ERR no good')"


@pytest.fixture
def url(servers: tuple[str, str]) -> str:
    return servers[1]


async def test_concurrent_calls_get_their_own_replies(url: str, redis: aioredis.Redis, redis_prefix: str) -> None:
    line = ScriptLine(url, ECHO)
    key = f"{redis_prefix}:calls"
    try:
        replies = await asyncio.gather(*[line(keys=[key], args=[f"r{i}", i]) for i in range(2000)])
    finally:
        await line.close()
    assert replies == [[f"r{i}".encode(), 2 * i] for i in range(2000)]
    assert int(await redis.hget(key, "calls")) == 2000


async def test_noscript_is_recovered_and_errors_propagate(url: str, redis: aioredis.Redis, redis_prefix: str) -> None:
    line = ScriptLine(url, ECHO)
    try:
        assert await line(keys=[f"{redis_prefix}:k"], args=["a", 1]) == [b"a", 2]
        await redis.script_flush()
        assert await line(keys=[f"{redis_prefix}:k"], args=["b", 2]) == [b"b", 4], "reloaded after NOSCRIPT"
    finally:
        await line.close()
    bad = ScriptLine(url, FAIL)
    try:
        with pytest.raises(rexc.ResponseError, match="no good"):
            await bad(keys=[f"{redis_prefix}:k"], args=[])
        with pytest.raises(rexc.ResponseError):
            await bad(keys=[f"{redis_prefix}:k"], args=[])  # the line is still in step
    finally:
        await bad.close()


async def test_a_lost_connection_fails_calls_then_reconnects(url: str, redis_prefix: str) -> None:
    line = ScriptLine(url, ECHO)
    try:
        assert await line(keys=[f"{redis_prefix}:k"], args=["a", 1]) == [b"a", 2]
        proto = line._proto
        assert proto is not None and proto.transport is not None
        proto.transport.abort()
        await asyncio.sleep(0)
        assert await line(keys=[f"{redis_prefix}:k"], args=["b", 1]) == [b"b", 2]
        assert line._proto is not proto
    finally:
        await line.close()


async def test_silence_times_out_fast() -> None:
    writers: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)  # reads the command, never answers
        await reader.read(1 << 16)

    server = await asyncio.start_server(mute, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    line = ScriptLine(f"redis://127.0.0.1:{port}/0", ECHO, timeout=0.3)
    start = time.monotonic()
    try:
        with pytest.raises(rexc.TimeoutError):
            await line(keys=["k"], args=["a", 1])
        assert time.monotonic() - start < 1.5
    finally:
        await line.close()
        for w in writers:
            w.close()
        server.close()
        await server.wait_closed()


async def test_nothing_listening_is_a_connection_error() -> None:
    line = ScriptLine("redis://127.0.0.1:1/0", ECHO)
    with pytest.raises(rexc.ConnectionError):
        await line(keys=["k"], args=["a", 1])
    await line.close()


async def test_database_number_is_selected(url: str, redis_prefix: str) -> None:
    if url.startswith("unix://"):
        db_url = url.replace("db=0", "db=3")
        plain = aioredis.from_url(db_url)
    else:
        db_url = url.rsplit("/", 1)[0] + "/3"
        plain = aioredis.from_url(db_url)
    line = ScriptLine(db_url, ECHO)
    key = f"{redis_prefix}:db3"
    try:
        await line(keys=[key], args=["a", 1])
        assert int(await plain.hget(key, "calls")) == 1
    finally:
        await plain.delete(key)
        await plain.aclose()
        await line.close()
