"""The pipelined script line against real Redis: ordering under concurrency, NOSCRIPT, failures."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as rexc

from gateway.net.redisconn import RedisConnection
from gateway.net.redisline import ScriptLine
from gateway.net.resp import encode
from gateway.relay import balancer
from gateway.relay.balancer import Balancer
from gateway.relay.picks import Candidate, UserLimits
from tests.support.redis_servers import RedisServer

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


# --- servers of the test's own: a rotated password, a frozen Redis, an idle line ----------------


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def start(**kw: Any) -> RedisServer:
        server = RedisServer(tmp_path, **kw)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


async def connected_clients(admin: aioredis.Redis) -> int:
    return int((await admin.info("clients"))["connected_clients"])


async def test_a_rotated_password_does_not_leak_a_socket_per_call(own_server: Callable[..., RedisServer]) -> None:
    server = own_server(password="old-secret")
    admin = aioredis.from_url(server.url(), single_connection_client=True)
    line = ScriptLine(server.url(db=2), ECHO, timeout=1.0)
    try:
        replies = await asyncio.gather(*[line(keys=["k"], args=[f"r{i}", i]) for i in range(20)])
        assert replies == [[f"r{i}".encode(), 2 * i] for i in range(20)]
        assert await connected_clients(admin) == 2  # the admin and the line

        await admin.config_set("requirepass", "new-secret")
        assert await admin.client_kill_filter(_type="normal", skipme=True) == 1  # the line's connection
        await asyncio.sleep(0.05)  # the line sees it close
        failures: list[type[BaseException]] = []
        start = time.monotonic()
        for i in range(200):
            with pytest.raises(rexc.ConnectionError) as caught:
                await line(keys=["k"], args=[f"x{i}", i])
            failures.append(type(caught.value))
        elapsed = time.monotonic() - start
        assert set(failures) == {rexc.AuthenticationError}
        assert elapsed < 5, f"200 refused calls took {elapsed:.1f}s"
        await asyncio.sleep(0.05)  # let Redis see the last close
        assert await connected_clients(admin) <= 3, "a refused AUTH must close its socket"
    finally:
        await line.close()
        await admin.aclose()


async def test_a_frozen_redis_fails_every_call_within_its_deadline_then_resumes(
    own_server: Callable[..., RedisServer],
) -> None:
    """SIGSTOP with a password and a database in the URL: every call ends (ConnectionError or
    TimeoutError) within `timeout` of its start, whether it met the stuck connection or a
    reconnect; after SIGCONT the line serves again within a second."""
    server = own_server(password="pw")
    line = ScriptLine(server.url(db=3), ECHO, timeout=2.0)
    ends: list[tuple[float, BaseException | None]] = []

    async def call(i: int, delay: float) -> None:
        await asyncio.sleep(delay)
        start = time.monotonic()
        try:
            await line(keys=["k"], args=[f"r{i}", i])
            error = None
        except BaseException as e:  # noqa: BLE001 - recorded and asserted below
            error = e
        ends.append((time.monotonic() - start, error))

    try:
        assert await line(keys=["k"], args=["a", 1]) == [b"a", 2]
        server.freeze()
        # 50 calls over 2.5 s: the first meet the stuck connection, the rest reconnects that hang at AUTH.
        await asyncio.gather(*[call(i, i * 0.05) for i in range(50)])
        assert len(ends) == 50
        assert all(isinstance(e, rexc.TimeoutError | rexc.ConnectionError) for _, e in ends), ends
        slowest = max(d for d, _ in ends)
        assert slowest < 2.5, f"a call took {slowest:.2f}s against a 2 s deadline"

        server.thaw()
        thawed = time.monotonic()
        while True:
            try:
                assert await line(keys=["k"], args=["b", 2]) == [b"b", 4]
                break
            except (rexc.TimeoutError, rexc.ConnectionError):
                assert time.monotonic() - thawed < 1.0, "no service a second after Redis answered again"
                await asyncio.sleep(0.02)
        resumed = time.monotonic() - thawed
        assert resumed < 1.0, f"resumed {resumed:.2f}s after SIGCONT"
        replies = await asyncio.gather(*[line(keys=["k"], args=[f"c{i}", i]) for i in range(50)])
        assert replies == [[f"c{i}".encode(), 2 * i] for i in range(50)]
    finally:
        await line.close()


async def test_an_idle_line_finds_a_dead_connection_before_a_request_does(
    own_server: Callable[..., RedisServer],
) -> None:
    server = own_server()
    line = ScriptLine(server.url(), ECHO, timeout=0.3, idle=0.2)
    try:
        assert await line(keys=["k"], args=["a", 1]) == [b"a", 2]
        proto = line._proto
        assert proto is not None
        await asyncio.sleep(0.3)
        assert not proto.lost, "a quiet line on a live Redis stays up"
        server.freeze()
        await asyncio.sleep(0.9)  # at most idle (0.2) + a ping's timeout (0.3), with room
        assert proto.lost, "the idle ping found the dead connection"
        server.thaw()
        assert await line(keys=["k"], args=["b", 1]) == [b"b", 2]
    finally:
        await line.close()


async def test_every_balancer_operation_goes_over_the_line(url: str, redis_prefix: str) -> None:
    """The redis-py client handed in points nowhere: every operation must use the line."""
    nowhere = aioredis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.2)
    line = ScriptLine(url, balancer.SCRIPT)
    b = Balancer(nowhere, prefix=redis_prefix, timezone="UTC", failures_before_cooldown=2, line=line)
    limits = UserLimits(daily=0, per_minute=0, streams=1)
    keys = [Candidate("k1", 10), Candidate("k2", 10)]
    try:
        await line.ping()
        first = await b.pick(keys, user_id="u1", limits=limits, request_id="r1", stream=True)
        assert (first.outcome, first.used_today) == ("ok", 1)
        refused = await b.pick(keys, user_id="u1", limits=limits, request_id="r2", stream=True)
        assert refused.outcome == "user_streams"
        await b.end_stream("u1", "r1")
        second = await b.pick(keys, user_id="u1", limits=limits, request_id="r2", stream=True)
        assert second.outcome == "ok"
        assert sum((await b.usage_today()).values()) == 2
        await b.release(second.key_id or "", second.day)
        assert sum((await b.usage_today(["k1", "k2"])).values()) == 1
        await b.cool_down("k1", 30)
        assert 29 < (await b.cooling())["k1"] <= 30
        assert await b.record_failure("k2", 60) is False
        assert await b.record_failure("k2", 60) is True
        assert set(await b.cooling()) == {"k1", "k2"}
        await b.clear("k1")
        await b.trial_passed("k2")
        assert set(await b.cooling()) == {"k2"}
        with pytest.raises(rexc.ConnectionError):
            await nowhere.ping()  # the client really was unusable all along
    finally:
        await line.close()
        await nowhere.aclose()


async def test_the_calls_of_one_turn_of_the_loop_go_out_in_one_write(url: str) -> None:
    """Under load many requests reach their pick in the same turn: one write (one syscall) for all."""
    loop = asyncio.get_running_loop()
    address = url.split("//", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, port = address.rsplit(":", 1)
    transport, conn = await loop.create_connection(lambda: RedisConnection(2.0, 0), host, int(port))
    writes: list[bytes] = []
    write = transport.write
    transport.write = lambda data: (writes.append(bytes(data)), write(data))[1]  # type: ignore[method-assign]
    try:
        first = await asyncio.gather(*[conn.send(encode([b"ECHO", f"a{i}"])) for i in range(100)])
        second = await asyncio.gather(*[conn.send(encode([b"ECHO", f"b{i}"])) for i in range(3)])
    finally:
        conn.close()
    assert first == [f"a{i}".encode() for i in range(100)] and second == [b"b0", b"b1", b"b2"]
    assert len(writes) == 2  # one per turn, in the order sent
    assert writes[0] == b"".join(encode([b"ECHO", f"a{i}"]) for i in range(100))
