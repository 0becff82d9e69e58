"""The balancer at 5,000 keys against real Redis (issue #15): the spread of counts on equal limits,
the last key standing, cheap refusals when every key is spent or cooling, exact limits across two
processes, the roll-over at midnight, and the rest of the pick path that must not grow with the pool."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import Counter
from datetime import timedelta
from pathlib import Path

import redis.asyncio as aioredis

from gateway.relay.balancer import Balancer
from gateway.relay.picks import Candidate, Pick, Pool, UserLimits
from tests.relay.test_balancer import make, offset_to, redis_now, rkey, wide_client
from tests.support.redis_servers import RedisServer

NO_LIMITS = UserLimits(daily=0, per_minute=0, streams=0)
N = 5_000


def pool_of(n: int, limit: int, name: str = "any\0model-x") -> Pool:
    return Pool.of([Candidate(f"key-{i:05d}", limit) for i in range(n)], name)


async def pick(b: Balancer, pool: Pool, exclude: set[str] | None = None) -> Pick:
    return await b.pick(
        pool, user_id="u1", limits=NO_LIMITS, request_id=uuid.uuid4().hex, stream=False, exclude=exclude or ()
    )


async def picks(b: Balancer, pool: Pool, n: int, width: int = 200) -> list[Pick]:
    out: list[Pick] = []
    for start in range(0, n, width):
        out += await asyncio.gather(*(pick(b, pool) for _ in range(min(width, n - start))))
    return out


async def script_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return sum(int(v["calls"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))


async def test_equal_limits_stay_within_the_spread_bound(
    redis: aioredis.Redis, redis_prefix: str, servers: tuple[str, str]
) -> None:
    client = wide_client(servers[1])
    try:
        b = make(client, redis_prefix)
        pool = pool_of(N, 1000)
        done = await picks(b, pool, 20_000)
    finally:
        await client.aclose()
    assert Counter(p.outcome for p in done) == {"ok": 20_000}
    counts = Counter(p.key_id for p in done)
    values = [counts.get(f"key-{i:05d}", 0) for i in range(N)]
    mean = sum(values) / N
    assert max(values) - min(values) <= 10 + 0.01 * mean, (min(values), max(values))


async def test_two_pools_sharing_keys_stay_fair(redis: aioredis.Redis, redis_prefix: str) -> None:
    """A key serving two models is counted once; each pool re-files what the other one used."""
    b = make(redis, redis_prefix)
    keys = [Candidate(f"k{i:03d}", 1000) for i in range(200)]
    one, two = Pool.of(keys, "any\0a"), Pool.of(keys[:150], "any\0b")
    for i in range(3000):
        assert (await pick(b, one if i % 3 else two)).outcome == "ok"
    used = await b.usage_today([k.key_id for k in keys])
    assert max(used.values()) - min(used.values()) <= 10 + 0.01 * (3000 / 200), used


async def test_the_last_key_under_its_limit_is_found(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    pool = pool_of(N, 3)
    first = await pick(b, pool)  # builds the pool
    assert first.outcome == "ok"
    # Every other key reaches its limit elsewhere (another model's pool, another process).
    counts = rkey(redis_prefix, f"counts:{first.day}")
    await redis.hset(counts, mapping={f"key-{i:05d}": 3 for i in range(N) if i != 4321})
    p = await pick(b, pool)
    assert (p.outcome, p.key_id) == ("ok", "key-04321")
    assert [(await pick(b, pool)).key_id for _ in range(2)] == ["key-04321", "key-04321"]
    refused = await pick(b, pool)
    assert refused.outcome == "exhausted"
    await b.release("key-04321", first.day)  # a reservation given back is found again
    assert (await pick(b, pool)).key_id == "key-04321"


async def test_all_spent_and_all_cooling_are_refused_without_looking_at_every_key(
    redis_prefix: str, tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)  # its own server: the script calls counted are this test's alone
    redis = aioredis.from_url(server.url())
    try:
        await _spent_and_cooling(redis, redis_prefix)
    finally:
        await redis.aclose()
        server.stop()


async def _spent_and_cooling(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    spent = pool_of(N, 1, "any\0spent")
    day = (await pick(b, spent)).day
    await redis.hset(rkey(redis_prefix, f"counts:{day}"), mapping={f"key-{i:05d}": 1 for i in range(N)})
    assert (await pick(b, spent)).outcome == "exhausted"  # files every key away, once
    before = await script_calls(redis)
    for _ in range(20):
        p = await pick(b, spent)
        assert p.outcome == "exhausted" and p.retry_after > 0
    assert await script_calls(redis) - before == 20  # one call each, no rebuild
    assert await redis.zcard(rkey(redis_prefix, f"avail:{spent.pool_id}")) == 0

    cooling = Pool.of([Candidate(f"cool-{i:05d}", 100) for i in range(N)], "any\0cooling")
    for i in range(N):
        await b.cool_down(f"cool-{i:05d}", 120 if i != 777 else 30)
    p = await pick(b, cooling)
    assert p.outcome == "cooling" and 29 <= p.retry_after <= 30  # the soonest end
    for _ in range(5):
        assert (await pick(b, cooling)).outcome == "cooling"
    assert await redis.zcard(rkey(redis_prefix, f"avail:{cooling.pool_id}")) == 0
    assert await redis.zcard(rkey(redis_prefix, f"resting:{cooling.pool_id}")) == N
    later = make(redis, redis_prefix, clock_offset_ms=31_000)  # only key 777 has cooled down
    assert (await pick(later, cooling)).key_id == "cool-00777"


async def test_a_retry_excludes_the_keys_it_tried(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    pool = pool_of(20, 100)
    tried: set[str] = set()
    for _ in range(20):
        p = await pick(b, pool, tried)
        assert p.outcome == "ok" and p.key_id not in tried
        tried.add(p.key_id or "")
    assert (await pick(b, pool, tried)).outcome == "exhausted"


async def test_the_pool_is_rebuilt_when_its_keys_change(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    old = Pool.of([Candidate("a", 100), Candidate("b", 100)], "any\0m")
    new = Pool.of([Candidate("a", 100), Candidate("c", 100)], "any\0m")
    assert old.pool_id == new.pool_id and old.fingerprint != new.fingerprint
    await b.cool_down("a", 60)
    assert {(await pick(b, old)).key_id for _ in range(3)} == {"b"}
    assert {(await pick(b, new)).key_id for _ in range(3)} == {"c"}  # b left the model


async def test_midnight_starts_a_fresh_day_for_the_pool(redis: aioredis.Redis, redis_prefix: str) -> None:
    now = await redis_now(redis, "Asia/Shanghai")
    before = now.replace(hour=23, minute=59, second=50, microsecond=0)
    tz_b = make(redis, redis_prefix, timezone="Asia/Shanghai", clock_offset_ms=await offset_to(redis, before))
    pool = pool_of(3, 2)
    day_one = [await pick(tz_b, pool) for _ in range(7)]
    assert [p.outcome for p in day_one] == ["ok"] * 6 + ["exhausted"]
    after = before + timedelta(seconds=20)
    tz_a = make(redis, redis_prefix, timezone="Asia/Shanghai", clock_offset_ms=await offset_to(redis, after))
    p = await pick(tz_a, pool)
    assert (p.outcome, p.used_today, p.day) == ("ok", 1, after.date().isoformat())
    assert p.day != day_one[0].day


PICKER = """
import asyncio, json, sys, uuid
import redis.asyncio as aioredis
from gateway.relay.balancer import Balancer
from gateway.relay.picks import Candidate, Pool, UserLimits

async def main(url, prefix, n_keys, limit, n):
    client = aioredis.from_url(url, max_connections=400)
    b = Balancer(client, prefix=prefix, timezone="UTC")
    pool = Pool.of([Candidate(f"key-{i:05d}", limit) for i in range(n_keys)], "any\\0model-x")
    async def one():
        return await b.pick(pool, user_id="u", limits=UserLimits(0, 0, 0), request_id=uuid.uuid4().hex, stream=False)
    out = []
    for start in range(0, n, 300):
        out += await asyncio.gather(*(one() for _ in range(min(300, n - start))))
    await client.aclose()
    print(json.dumps([p.key_id for p in out if p.outcome == "ok"]))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
"""


async def test_limits_hold_exactly_at_5000_keys_across_two_processes(
    redis: aioredis.Redis, redis_prefix: str, servers: tuple[str, str]
) -> None:
    """Two OS processes, 300 picks in flight each, 12,000 picks for 10,000 calls (5,000 keys x 2)."""
    args = [sys.executable, "-c", PICKER, servers[1], redis_prefix, str(N), "2", "6000"]
    procs = [await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE) for _ in range(2)]
    outputs = [await p.communicate() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    taken = Counter(k for out, _ in outputs for k in json.loads(out.splitlines()[-1]))  # after any log lines
    assert sum(taken.values()) == 2 * N and set(taken.values()) == {2}
    used = await make(redis, redis_prefix).usage_today()
    assert len(used) == N and set(used.values()) == {2}
