"""The numbered INVARIANTS of the balancer script's header (gateway/relay/lua/prelude.lua), one
test (or two) per number, against real Redis. The pool's structures (pool:, avail:, resting:,
revived) are read, and sometimes made stale on purpose, with plain commands; picks go through the
`Balancer` as requests make them. Time moves through `clock_offset_ms`, never sleeps."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from gateway.net import redisnames
from gateway.relay.balancer import Balancer
from gateway.relay.picks import Candidate, Pick, Pool, UserLimits
from tests.support.redis_servers import RedisServer

DAY_MS = 86_400_000
NO_LIMITS = UserLimits(daily=0, per_minute=0, streams=0)
BATCH, REVIVED_MAX, REVIVED_KEEP = 8, 256, 65536  # as in prelude.lua


def make(client: aioredis.Redis, prefix: str, **kwargs: object) -> Balancer:
    return Balancer(client, prefix=prefix, timezone="UTC", **kwargs)  # type: ignore[arg-type]


def keys(tag: str, n: int, limit: int) -> list[Candidate]:
    return [Candidate(f"{tag}{i:04d}", limit) for i in range(n)]


async def pick(b: Balancer, pool: Pool | Sequence[Candidate], *, exclude: Sequence[str] = ()) -> Pick:
    return await b.pick(
        pool, user_id="u1", limits=NO_LIMITS, request_id=uuid.uuid4().hex, stream=False, exclude=exclude
    )


class Names:
    """The Redis keys of one prefix and pool, as the script names them."""

    def __init__(self, prefix: str, pool: Pool, day: str) -> None:
        self.counts = redisnames.counts(prefix, day)
        self.cooldown = redisnames.cooldown(prefix)
        self.probation = redisnames.probation(prefix)
        self.revived = redisnames.revived(prefix)
        self.meta = redisnames.pool_meta(prefix, pool.pool_id)
        self.avail = redisnames.pool_avail(prefix, pool.pool_id)
        self.resting = redisnames.pool_resting(prefix, pool.pool_id)


async def zset(client: aioredis.Redis, key: str) -> dict[str, int]:
    return {m.decode(): int(s) for m, s in await client.zrange(key, 0, -1, withscores=True)}


async def counts(client: aioredis.Redis, n: Names) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in (await client.hgetall(n.counts)).items() if not k.startswith(b"~")}


async def unfiled_usable_keys(client: aioredis.Redis, n: Names, pool: Pool) -> list[str]:
    """Candidates under their limit that are neither in avail nor in resting, nor revived after
    the pool last looked at the log ("~rv"): what INVARIANTS 2 says never exists."""
    used = await counts(client, n)
    avail, resting, revived = await zset(client, n.avail), await zset(client, n.resting), await zset(client, n.revived)
    seen = int(await client.hget(n.meta, "~rv") or -1)
    lost = []
    for key_id, limit in zip(pool.pairs[::2], pool.pairs[1::2], strict=True):
        key_id = str(key_id)
        if used.get(key_id, 0) < int(limit) and key_id not in avail and key_id not in resting:
            if revived.get(key_id, -1) <= seen:
                lost.append(key_id)
    return lost


# --- 1. counts, cooldown and probation are the truth ---------------------------------------------


async def test_invariant_1_a_stale_avail_entry_costs_a_look_never_a_daily_limit(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 1: a key spent behind the pool's back (its count raised, its avail score left at
    0) is checked against counts before it is taken: the limit holds and the entry is filed away."""
    b = make(redis, redis_prefix)
    pool = Pool.of([Candidate("a", 2), Candidate("b", 5)])
    assert (await pick(b, pool)).outcome == "ok"  # builds the pool
    n = Names(redis_prefix, pool, b.today())
    await redis.hset(n.counts, "a", 2)  # type: ignore[misc]  # spent by other pools / processes
    await redis.zadd(n.avail, {"a": 0, "b": 9})  # a's entry says "least used", b's says "busy"
    p = await pick(b, pool)
    assert (p.outcome, p.key_id) == ("ok", "b")
    assert (await counts(redis, n))["a"] == 2, "a spent key is never counted past its limit"
    assert "a" not in await zset(redis, n.avail), "the stale entry is filed away once"
    await redis.hset(n.counts, "b", 5)  # type: ignore[misc]
    assert (await pick(b, pool)).outcome == "exhausted"
    assert await counts(redis, n) == {"a": 2, "b": 5}


async def test_invariant_1_cooldown_and_probation_are_read_from_the_truth_not_from_the_pool(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 1: a cooldown set while the key sits in avail keeps it out of the next pick; a
    key on probation whose cooldown ended is handed out as its one trial, whatever avail says."""
    b = make(redis, redis_prefix, failures_before_cooldown=1)
    pool = Pool.of([Candidate("a", 100), Candidate("b", 100)])
    assert (await pick(b, pool)).outcome == "ok"
    n = Names(redis_prefix, pool, b.today())
    await b.cool_down("a", 60)
    await redis.zadd(n.avail, {"a": 0, "b": 50})  # the pool still files a as the least used
    p = await pick(b, pool)
    assert p.key_id == "b"
    assert "a" in await zset(redis, n.resting) and "a" not in await zset(redis, n.avail)

    assert await b.record_failure("b", 30)  # b cools for 30 s and goes on probation
    later = make(redis, redis_prefix, clock_offset_ms=31_000)
    p = await pick(later, pool, exclude=["a"])
    assert (p.outcome, p.key_id, p.trial) == ("ok", "b", True), "b's one trial, read from probation"
    assert (await pick(later, pool, exclude=["a"])).outcome == "cooling", "no second request during the trial"


# --- 2. every usable candidate is filed: the last key left is found -------------------------------


async def test_invariant_2_the_only_key_left_under_its_limit_is_found_after_a_release(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 2: keys spent for today leave avail; the one a release brings back is found
    again, among 300 spent ones."""
    b = make(redis, redis_prefix)
    pool = Pool.of(keys("k", 300, 1))
    taken = [await pick(b, pool) for _ in range(300)]
    assert {p.key_id for p in taken} == {f"k{i:04d}" for i in range(300)}
    assert (await pick(b, pool)).outcome == "exhausted"
    n = Names(redis_prefix, pool, b.today())
    assert await zset(redis, n.avail) == {} and await zset(redis, n.resting) == {}
    await b.release("k0123", taken[0].day)
    p = await pick(b, pool)
    assert (p.outcome, p.key_id, p.used_today) == ("ok", "k0123", 1)


async def test_invariant_2_no_usable_key_is_ever_unfiled_through_cools_failures_clears_and_releases(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 2, checked after every step of a run that moves keys between avail, resting and
    nowhere: each candidate under its limit is in avail or resting, or revived since "~rv"."""
    b = make(redis, redis_prefix, failures_before_cooldown=2)
    pool = Pool.of(keys("k", 12, 3))
    n = Names(redis_prefix, pool, b.today())
    picks: list[Pick] = []
    rested = spent = False
    for step in range(72):
        match step % 6:
            case 0 | 1 | 2:
                picks.append(await pick(b, pool))
            case 3:
                await b.cool_down(f"k{step % 12:04d}", 40 if step % 12 else 0.5)
            case 4:
                await b.record_failure(f"k{(step + 5) % 12:04d}", 30)
            case 5:
                last = next((p for p in reversed(picks) if p.key_id), None)
                if last is not None and step % 4:
                    await b.release(last.key_id or "", last.day)
                else:
                    await b.clear(f"k{step % 12:04d}")
        assert await unfiled_usable_keys(redis, n, pool) == [], f"after step {step}"
        rested = rested or bool(await zset(redis, n.resting))
        spent = spent or 3 in (await counts(redis, n)).values()
    assert rested and spent, "the run filed keys away as cooling and as spent"
    assert {p.outcome for p in picks} >= {"ok"}


# --- 3. scores only lag counts; the lowest-scored usable key is taken -----------------------------


async def test_invariant_3_another_pools_picks_are_refiled_and_the_least_used_key_is_taken(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 3: picks through another pool raise a shared key's count without touching this
    pool's score; the next pick here re-files it at its count and takes the least-used key."""
    b = make(redis, redis_prefix)
    wide = Pool.of([Candidate("shared", 100), Candidate("own", 100)], "wide")
    narrow = Pool.of([Candidate("shared", 100)], "narrow")
    for _ in range(2):
        assert (await pick(b, wide, exclude=["shared"])).key_id == "own"
    n = Names(redis_prefix, wide, b.today())
    before = await zset(redis, n.avail)
    assert before == {"shared": 0, "own": 2}
    for _ in range(5):
        assert (await pick(b, narrow)).key_id == "shared"
    used = await counts(redis, n)
    lagging = await zset(redis, n.avail)
    assert used == {"shared": 5, "own": 2}
    assert lagging == before and all(lagging[k] <= used[k] for k in lagging), "a score only ever lags its count"
    p = await pick(b, wide)
    assert p.key_id == "own", "the least-used key, found after the stale head was re-filed"
    assert await zset(redis, n.avail) == {"shared": 5, "own": 3}, "re-filed at its count"


async def test_invariant_3_a_release_brings_a_spent_key_back_into_every_pool_at_its_count(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 3 (and 2): a count falls only through a release, which is logged in `revived`;
    every pool sharing the key files it again, at its count, on its next pick."""
    b = make(redis, redis_prefix)
    one = Pool.of([Candidate("x", 4), Candidate("y", 100)], "one")
    two = Pool.of([Candidate("x", 4), Candidate("z", 100)], "two")
    assert (await pick(b, one, exclude=["x"])).key_id == "y"
    assert (await pick(b, two, exclude=["x"])).key_id == "z"
    for _ in range(4):
        assert (await pick(b, [Candidate("x", 4)])).key_id == "x"  # a pool of its own spends x
    n1, n2 = Names(redis_prefix, one, b.today()), Names(redis_prefix, two, b.today())
    assert ((await pick(b, one)).key_id, (await pick(b, two)).key_id) == ("y", "z")
    assert "x" not in await zset(redis, n1.avail) and "x" not in await zset(redis, n2.avail), "spent: filed away"

    await b.release("x", b.today())
    top = int((await redis.zrange(n1.revived, -1, -1, withscores=True))[0][1])
    assert ((await pick(b, one)).key_id, (await pick(b, two)).key_id) == ("y", "z")  # 3 is not under 2
    assert (await zset(redis, n1.avail))["x"] == 3 and (await zset(redis, n2.avail))["x"] == 3
    assert int(await redis.hget(n1.meta, "~rv") or 0) == int(await redis.hget(n2.meta, "~rv") or 0) == top


# --- 4. a pick looks at the heads only: the same work for 4 keys or 1,000 --------------------------


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[aioredis.Redis]:
    """A redis-server of this test's own, so that INFO commandstats counts only our commands."""
    server = RedisServer(tmp_path)
    client = aioredis.from_url(server.url())
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


async def script_commands(client: aioredis.Redis, b: Balancer, pool: Pool) -> tuple[str, int]:
    """One pick's outcome and the number of commands the script ran for it."""
    await client.config_resetstat()
    p = await pick(b, pool)
    stats = await client.info("commandstats")
    skip = {"cmdstat_evalsha", "cmdstat_eval", "cmdstat_config", "cmdstat_info", "cmdstat_script"}
    return p.outcome, sum(int(v["calls"]) for k, v in stats.items() if k not in skip)


async def test_invariant_4_a_pick_runs_as_many_commands_for_1000_keys_as_for_4(own_redis: aioredis.Redis) -> None:
    """INVARIANTS 4: once a pool is built, a pick reads the heads of avail and resting and the new
    revivals: the commands it runs do not depend on the pool's size. (Counted, not timed: one
    command that reads a whole structure would not show here; bench/scale.py times the picks.)"""
    b = make(own_redis, "inv4")
    small, large = Pool.of(keys("s", 4, 10**6)), Pool.of(keys("l", 1000, 10**6))
    for pool in (small, large):
        for _ in range(3):
            assert (await pick(b, pool)).outcome == "ok"  # built, and the heads are warm
    small_cost = [await script_commands(own_redis, b, small) for _ in range(5)]
    large_cost = [await script_commands(own_redis, b, large) for _ in range(5)]
    assert small_cost == large_cost
    assert small_cost[0][0] == "ok" and small_cost[0][1] < 30


async def test_invariant_4_refusals_of_an_all_spent_or_all_cooling_pool_cost_the_same_as_for_a_small_one(
    own_redis: aioredis.Redis,
) -> None:
    """INVARIANTS 4: filing 1,000 spent (or cooling) entries away is work done once; every refusal
    after it costs what a 4-key pool's refusal costs."""
    b = make(own_redis, "inv4r")
    cells = {}
    for tag, n in (("s", 4), ("l", 1000)):
        spent = Pool.of(keys(f"{tag}spent", n, 1))
        for _ in range(n):
            assert (await pick(b, spent)).outcome == "ok"
        cooling = Pool.of(keys(f"{tag}cool", n, 100))
        assert (await pick(b, cooling)).outcome == "ok"
        for c in keys(f"{tag}cool", n, 100):
            await b.cool_down(c.key_id, 3600)
        first = (await script_commands(own_redis, b, spent), await script_commands(own_redis, b, cooling))
        again = [(await script_commands(own_redis, b, spent), await script_commands(own_redis, b, cooling))]
        again += [(await script_commands(own_redis, b, spent), await script_commands(own_redis, b, cooling))]
        assert first[0][0] == "exhausted" and first[1][0] == "cooling"
        assert again[0] == again[1], "nothing is left to file away after the first refusal"
        cells[n] = again[0]
    assert cells[4] == cells[1000]


# --- 5. a pool is rebuilt when missing, of another day, of another list, or behind on revivals ------


async def marked(client: aioredis.Redis, n: Names) -> bool:
    """Whether the mark `mark()` left on the pool's membership hash is still there (a rebuild
    deletes the hash first)."""
    return bool(await client.hexists(n.meta, "~test-mark"))


async def mark(client: aioredis.Redis, n: Names) -> None:
    await client.hset(n.meta, "~test-mark", 1)  # type: ignore[misc]


async def test_invariant_5_a_pool_is_rebuilt_only_when_missing_old_changed_or_behind_on_revivals(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """INVARIANTS 5: `init` (the one call that grows with the pool) builds the pool on its first
    pick, then rebuilds it only when it is missing, was built for another day, its list changed,
    or it missed more revivals than a pick applies (or than the log keeps)."""
    b = make(redis, redis_prefix)
    first = keys("k", 6, 100)
    pool = Pool.of(first, "model")
    n = Names(redis_prefix, pool, b.today())

    assert (await pick(b, pool)).outcome == "ok"
    assert await redis.hget(n.meta, "~fp") == pool.fingerprint.encode()
    assert await redis.hget(n.meta, "~day") == b.today().encode()
    await mark(redis, n)
    for _ in range(5):  # every key used once: the new one is then the least used
        assert (await pick(b, pool)).outcome == "ok"
    assert await marked(redis, n), "the same list on the same day: not rebuilt"

    changed = Pool.of([*first, Candidate("new", 100)], "model")
    assert changed.pool_id == pool.pool_id and changed.fingerprint != pool.fingerprint
    assert (await pick(b, changed)).key_id == "new"
    assert not await marked(redis, n), "rebuilt when the list changed"
    assert await redis.hget(n.meta, "~fp") == changed.fingerprint.encode()

    await mark(redis, n)
    await b.release("k0000", b.today())
    assert (await pick(b, changed)).outcome == "ok"
    assert await marked(redis, n), "a few revivals are applied by the pick itself"

    seen = int(await redis.hget(n.meta, "~rv") or 0)
    await redis.zadd(n.revived, {f"x{i}": seen + 1 + i for i in range(REVIVED_MAX + 1)})
    assert (await pick(b, changed)).outcome == "ok"
    assert not await marked(redis, n), "rebuilt when more revivals came than a pick applies"

    await mark(redis, n)
    seen = int(await redis.hget(n.meta, "~rv") or 0)
    await redis.zadd(n.revived, {"far": seen + REVIVED_KEEP})
    assert (await pick(b, changed)).outcome == "ok"
    assert not await marked(redis, n), "rebuilt when the log may have dropped revivals it did not see"

    await redis.delete(n.meta, n.avail, n.resting)
    assert (await pick(b, changed)).outcome == "ok"
    assert await redis.hget(n.meta, "~fp") == changed.fingerprint.encode(), "rebuilt when missing"

    await mark(redis, n)
    tomorrow = make(redis, redis_prefix, clock_offset_ms=DAY_MS)
    assert tomorrow.today() != b.today()
    assert (await pick(tomorrow, changed)).outcome == "ok"
    assert not await marked(redis, n), "rebuilt for a new day"
    assert await redis.hget(n.meta, "~day") == tomorrow.today().encode()
    await mark(redis, n)
    for _ in range(3):
        assert (await pick(tomorrow, changed)).outcome == "ok"
    assert await marked(redis, n)
