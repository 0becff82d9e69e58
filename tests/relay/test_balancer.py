"""The balancer script against real Redis: limits under concurrency, cooldowns, trials, user limits,
days in time zones, and the one-call budget. Time moves through `clock_offset_ms`, never sleeps."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
import redis.asyncio as aioredis

from gateway.relay import balancer as balancer_mod
from gateway.relay import days
from gateway.relay.balancer import Balancer
from gateway.relay.picks import Candidate, Pick, UserLimits

DAY_MS = 86_400_000
NO_LIMITS = UserLimits(daily=0, per_minute=0, streams=0)


def make(client: aioredis.Redis, prefix: str, timezone: str = "UTC", **kwargs: object) -> Balancer:
    return Balancer(client, prefix=prefix, timezone=timezone, **kwargs)  # type: ignore[arg-type]


async def pick(
    b: Balancer,
    keys: list[Candidate],
    *,
    user: str = "u1",
    limits: UserLimits = NO_LIMITS,
    stream: bool = False,
    count_user: bool = True,
    request_id: str | None = None,
) -> Pick:
    return await b.pick(
        keys,
        user_id=user,
        limits=limits,
        request_id=request_id or uuid.uuid4().hex,
        stream=stream,
        count_user=count_user,
    )


def rkey(prefix: str, name: str) -> str:
    return f"{prefix}:v5:{{{prefix}}}:{name}"


async def redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return seconds * 1000 + micros // 1000


async def offset_to_second_5_of_a_minute(client: aioredis.Redis) -> int:
    """A clock offset that puts 'now' 5 s into a minute, so a test has 55 s before the next one."""
    now = await redis_ms(client)
    return (now // 60_000 + 1) * 60_000 + 5_000 - now


async def offset_to(client: aioredis.Redis, instant: datetime) -> int:
    """A clock offset that puts Redis' 'now' at `instant`."""
    return int(instant.timestamp() * 1000) - await redis_ms(client)


async def redis_now(client: aioredis.Redis, timezone: str) -> datetime:
    return datetime.fromtimestamp(await redis_ms(client) / 1000, ZoneInfo(timezone))


def seconds_to_local_midnight(now: datetime) -> float:
    midnight = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    return midnight.timestamp() - now.timestamp()


def wide_client(url: str) -> aioredis.Redis:
    """A client that may open a connection per concurrent call (redis-py's default pool stops at
    100 and then raises), so the picks really race each other on the server."""
    return aioredis.from_url(url, max_connections=400)


# --- the daily limit holds ---------------------------------------------------------------------


async def test_limit_holds_under_200_concurrent_picks(
    redis: aioredis.Redis, redis_prefix: str, servers: tuple[str, str]
) -> None:
    client = wide_client(servers[1])
    try:
        b = make(client, redis_prefix)
        picks = await asyncio.gather(*(pick(b, [Candidate("k1", 150)]) for _ in range(200)))
    finally:
        await client.aclose()
    outcomes = Counter(p.outcome for p in picks)
    assert outcomes == {"ok": 150, "exhausted": 50}
    assert sorted(p.used_today for p in picks if p.outcome == "ok") == list(range(1, 151))
    assert await redis.hget(rkey(redis_prefix, f"counts:{picks[0].day}"), "k1") == b"150"
    assert await make(redis, redis_prefix).usage_today() == {"k1": 150}


async def test_limit_holds_across_two_balancers_on_two_connections(
    redis: aioredis.Redis, redis_prefix: str, servers: tuple[str, str]
) -> None:
    one, other = wide_client(servers[1]), wide_client(servers[1])
    try:
        b1, b2 = make(one, redis_prefix), make(other, redis_prefix)
        keys = [Candidate(f"k{i}", 50) for i in range(3)]
        picks = await asyncio.gather(*(pick(b1 if i % 2 else b2, keys) for i in range(300)))
    finally:
        await one.aclose()
        await other.aclose()
    b1 = make(redis, redis_prefix)
    assert Counter(p.outcome for p in picks) == {"ok": 150, "exhausted": 150}
    assert Counter(p.key_id for p in picks if p.outcome == "ok") == {"k0": 50, "k1": 50, "k2": 50}
    assert await b1.usage_today(["k0", "k1", "k2", "unused"]) == {"k0": 50, "k1": 50, "k2": 50, "unused": 0}


async def test_counters_expire_by_themselves(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    p = await pick(b, [Candidate("k1", 5)], limits=UserLimits(daily=10, per_minute=10, streams=2), stream=True)
    assert p.outcome == "ok"
    counts_ttl = await redis.pttl(rkey(redis_prefix, f"counts:{p.day}"))
    assert DAY_MS < counts_ttl <= 2 * DAY_MS
    assert DAY_MS < await redis.pttl(rkey(redis_prefix, f"udaily:{p.day}")) <= 2 * DAY_MS
    minute_keys = [k async for k in redis.scan_iter(match=rkey(redis_prefix, "urpm:*"))]
    assert len(minute_keys) == 1
    assert 60_000 <= await redis.pttl(minute_keys[0]) <= 120_000
    assert 0 < await redis.pttl(rkey(redis_prefix, "ustreams:u1")) <= 660_000


async def test_no_candidates_is_the_callers_case(redis: aioredis.Redis, redis_prefix: str) -> None:
    with pytest.raises(ValueError):
        await pick(make(redis, redis_prefix), [])


# --- least used, ties, release -----------------------------------------------------------------


async def test_least_used_key_is_picked(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    a, bb, c = Candidate("a", 10), Candidate("b", 10), Candidate("c", 10)
    for key, n in ((a, 3), (bb, 1), (c, 2)):
        for _ in range(n):
            assert (await pick(b, [key])).outcome == "ok"
    p = await pick(b, [a, bb, c])
    assert (p.outcome, p.key_id, p.used_today, p.trial) == ("ok", "b", 2, False)
    # b and c now tie at 2, a has 3: the next two picks take b and c, in either order.
    assert {(await pick(b, [a, bb, c])).key_id for _ in range(2)} == {"b", "c"}


async def test_ties_are_spread(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [Candidate(f"k{i}", 10) for i in range(3)]
    chosen: Counter[str | None] = Counter()
    for _ in range(60):  # give each pick back, so the keys stay tied
        p = await pick(b, keys)
        chosen[p.key_id] += 1
        await b.release(p.key_id or "", p.day)
    assert set(chosen) == {"k0", "k1", "k2"}  # a missed key has odds of 3 * (2/3)**60
    assert await b.usage_today([k.key_id for k in keys]) == {"k0": 0, "k1": 0, "k2": 0}


async def test_release_gives_the_reservation_back(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    key = [Candidate("k1", 1)]
    first = await pick(b, key)
    assert first.outcome == "ok" and first.used_today == 1
    spent = await pick(b, key)
    assert spent.outcome == "exhausted" and spent.key_id is None
    await b.release("k1", first.day)
    assert await b.usage_today(["k1"]) == {"k1": 0}
    again = await pick(b, key)
    assert (again.outcome, again.used_today) == ("ok", 1)
    await b.release("k1", again.day)
    await b.release("k1", again.day)  # a double release never goes below zero
    assert await b.usage_today(["k1"]) == {"k1": 0}


# --- cooldowns -----------------------------------------------------------------------------------


async def test_cooling_keys_are_skipped_and_cleared(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    a, bb = Candidate("a", 100), Candidate("b", 100)
    await b.cool_down("a", 30)
    assert {(await pick(b, [a, bb])).key_id for _ in range(5)} == {"b"}

    await b.cool_down("b", 10)
    p = await pick(b, [a, bb])
    assert (p.outcome, p.key_id) == ("cooling", None)
    assert 9 <= p.retry_after <= 10  # the sooner of the two ends
    left = await b.cooling()
    assert set(left) == {"a", "b"} and 29 < left["a"] <= 30 and 9 < left["b"] <= 10

    await b.cool_down("a", 5)  # a shorter cooldown never cuts a longer one short
    assert (await b.cooling())["a"] > 29

    await b.clear("a")
    p = await pick(b, [a, bb])
    assert (p.outcome, p.key_id) == ("ok", "a")
    assert set(await b.cooling()) == {"b"}


async def test_long_cooldown_excludes_a_disabled_key(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    await b.cool_down("dead", 10 * 365 * 86400)
    year_later = make(redis, redis_prefix, clock_offset_ms=365 * DAY_MS)
    keys = [Candidate("dead", 100), Candidate("live", 100)]
    assert {(await pick(year_later, keys)).key_id for _ in range(5)} == {"live"}
    assert (await pick(year_later, keys[:1])).outcome == "cooling"
    await b.clear("dead")
    assert (await pick(year_later, keys[:1])).key_id == "dead"


async def test_a_spent_key_that_is_also_cooling_counts_as_spent(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    spent, cooling = Candidate("spent", 1), Candidate("cooling", 5)
    assert (await pick(b, [spent])).outcome == "ok"
    await b.cool_down("spent", 60)
    assert (await pick(b, [spent])).outcome == "exhausted"
    await b.cool_down("cooling", 60)
    assert (await pick(b, [spent, cooling])).outcome == "cooling"


# --- failures, probation, the trial request ------------------------------------------------------


async def test_failures_cool_the_key_then_one_trial(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, failures_before_cooldown=3)
    key = [Candidate("k1", 100)]
    assert await b.record_failure("k1", 60) is False
    assert await b.record_failure("k1", 60) is False
    assert (await pick(b, key)).outcome == "ok"  # below the threshold nothing changes
    assert await b.record_failure("k1", 60) is True
    p = await pick(b, key)
    assert p.outcome == "cooling" and 59 <= p.retry_after <= 60
    # A request picked before the cooldown that fails late does not cool the key again.
    assert await b.record_failure("k1", 60) is False

    later = make(redis, redis_prefix, clock_offset_ms=61_000)
    first, second = await asyncio.gather(pick(later, key), pick(later, key))
    trial, refused = (first, second) if first.outcome == "ok" else (second, first)
    assert (trial.outcome, trial.key_id, trial.trial) == ("ok", "k1", True)
    assert (refused.outcome, refused.key_id) == ("cooling", None)
    assert 29 <= refused.retry_after <= 30  # the trial lease

    await later.trial_passed("k1")
    for _ in range(3):
        p = await pick(later, key)
        assert (p.outcome, p.trial) == ("ok", False)
    assert await later.cooling() == {}


async def test_a_failed_trial_cools_the_key_at_once(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, failures_before_cooldown=3)
    key = [Candidate("k1", 100)]
    for _ in range(3):
        await b.record_failure("k1", 60)
    later = make(redis, redis_prefix, clock_offset_ms=61_000)
    assert (await pick(later, key)).trial is True
    assert await later.record_failure("k1", 60) is True  # one failure is enough on probation
    p = await pick(later, key)
    assert p.outcome == "cooling" and 59 <= p.retry_after <= 60
    await later.trial_passed("k1")  # no trial in flight any more: nothing to end
    assert (await pick(later, key)).outcome == "cooling"

    much_later = make(redis, redis_prefix, clock_offset_ms=122_000)
    assert (await pick(much_later, key)).trial is True


async def test_an_unfinished_trial_lease_runs_out(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, failures_before_cooldown=1)
    key = [Candidate("k1", 100)]
    assert await b.record_failure("k1", 60) is True
    later = make(redis, redis_prefix, clock_offset_ms=61_000)
    assert (await pick(later, key)).trial is True
    # The trial's caller vanished (say, a client error that does not count): after the lease
    # another request becomes the trial.
    after_lease = make(redis, redis_prefix, clock_offset_ms=92_000)
    assert (await pick(after_lease, key)).trial is True


async def test_failures_outside_the_window_do_not_add_up(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, failures_before_cooldown=3, failure_window_seconds=60)
    later = make(redis, redis_prefix, failures_before_cooldown=3, failure_window_seconds=60, clock_offset_ms=61_000)
    assert await b.record_failure("k1", 60) is False
    assert await b.record_failure("k1", 60) is False
    assert await later.record_failure("k1", 60) is False  # a new window: 1 failure
    assert await later.record_failure("k1", 60) is False
    assert await later.record_failure("k1", 60) is True


async def test_clear_forgets_failures_and_probation(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, failures_before_cooldown=2)
    key = [Candidate("k1", 100)]
    await b.record_failure("k1", 60)
    await b.clear("k1")
    assert await b.record_failure("k1", 60) is False  # the count started again
    assert await b.record_failure("k1", 60) is True
    await b.clear("k1")
    p = await pick(b, key)
    assert (p.outcome, p.trial) == ("ok", False)


# --- the caller's own limits ---------------------------------------------------------------------


async def test_user_daily_limit(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    key = [Candidate("k1", 100)]
    limits = UserLimits(daily=2, per_minute=0, streams=0)
    assert [(await pick(b, key, limits=limits)).outcome for _ in range(2)] == ["ok", "ok"]
    p = await pick(b, key, limits=limits)
    assert (p.outcome, p.key_id, p.used_today) == ("user_daily", None, 0)
    assert abs(p.retry_after - seconds_to_local_midnight(await redis_now(redis, "UTC"))) <= 2
    # The refusal reserved nothing and counted nothing.
    assert await b.usage_today() == {"k1": 2}
    assert await redis.hget(rkey(redis_prefix, f"udaily:{p.day}"), "u1") == b"2"
    # A retry of a counted request, and other users, are not limited by it.
    assert (await pick(b, key, limits=limits, count_user=False)).outcome == "ok"
    assert (await pick(b, key, limits=limits, user="u2")).outcome == "ok"
    tomorrow = make(redis, redis_prefix, clock_offset_ms=DAY_MS)
    assert (await pick(tomorrow, key, limits=limits)).outcome == "ok"


async def test_user_per_minute_limit(redis: aioredis.Redis, redis_prefix: str) -> None:
    offset = await offset_to_second_5_of_a_minute(redis)
    b = make(redis, redis_prefix, clock_offset_ms=offset)
    key = [Candidate("k1", 100)]
    limits = UserLimits(daily=0, per_minute=2, streams=0)
    assert [(await pick(b, key, limits=limits)).outcome for _ in range(2)] == ["ok", "ok"]
    p = await pick(b, key, limits=limits)
    assert (p.outcome, p.key_id) == ("user_rpm", None)
    assert 50 <= p.retry_after <= 55
    assert await b.usage_today() == {"k1": 2}
    assert (await pick(b, key, limits=limits, count_user=False)).outcome == "ok"
    next_minute = make(redis, redis_prefix, clock_offset_ms=offset + 60_000)
    assert (await pick(next_minute, key, limits=limits)).outcome == "ok"


async def test_user_stream_limit(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, stream_lease_seconds=600)
    key = [Candidate("k1", 100)]
    limits = UserLimits(daily=0, per_minute=0, streams=1)
    assert (await pick(b, key, limits=limits, stream=True, request_id="r1")).outcome == "ok"
    p = await pick(b, key, limits=limits, stream=True, request_id="r2")
    assert (p.outcome, p.key_id, p.retry_after) == ("user_streams", None, 1)
    assert await b.usage_today() == {"k1": 1}  # the refusal reserved no key
    # Non-streaming requests, and a retry of the stream that holds the slot, are not limited.
    assert (await pick(b, key, limits=limits)).outcome == "ok"
    assert (await pick(b, key, limits=limits, stream=True, request_id="r1", count_user=False)).outcome == "ok"

    await b.end_stream("u1", "r1")
    assert (await pick(b, key, limits=limits, stream=True, request_id="r2")).outcome == "ok"
    assert (await pick(b, key, limits=limits, stream=True, request_id="r3")).outcome == "user_streams"
    # r2 never ended (its process died): once its lease ran out the slot is free again.
    after_lease = make(redis, redis_prefix, clock_offset_ms=601_000)
    assert (await pick(after_lease, key, limits=limits, stream=True, request_id="r3")).outcome == "ok"
    assert await redis.zrange(rkey(redis_prefix, "ustreams:u1"), 0, -1) == [b"r3"]


async def test_a_user_refused_for_a_spent_pool_is_not_counted(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    limits = UserLimits(daily=5, per_minute=5, streams=1)
    assert (await pick(b, [Candidate("k1", 0)], limits=limits, stream=True)).outcome == "exhausted"
    await b.cool_down("k2", 60)
    assert (await pick(b, [Candidate("k2", 5)], limits=limits, stream=True)).outcome == "cooling"
    assert [k async for k in redis.scan_iter(match=rkey(redis_prefix, "u*"))] == []


# --- days ------------------------------------------------------------------------------------------


async def test_the_next_day_starts_fresh(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix, "Asia/Shanghai")
    key = [Candidate("k1", 1)]
    today = await pick(b, key)
    assert today.outcome == "ok"
    assert (await pick(b, key)).outcome == "exhausted"
    tomorrow_b = make(redis, redis_prefix, "Asia/Shanghai", clock_offset_ms=DAY_MS)
    tomorrow = await pick(tomorrow_b, key)
    assert (tomorrow.outcome, tomorrow.used_today) == ("ok", 1)
    assert tomorrow.day == (datetime.fromisoformat(today.day) + timedelta(days=1)).date().isoformat()
    assert tomorrow_b.today() == tomorrow.day
    assert await b.usage_today() == {"k1": 1} and await tomorrow_b.usage_today() == {"k1": 1}


@pytest.mark.parametrize("timezone", ["Asia/Shanghai", "America/New_York"])
async def test_exhausted_retries_at_local_midnight(redis: aioredis.Redis, redis_prefix: str, timezone: str) -> None:
    b = make(redis, redis_prefix, timezone)
    before = await redis_now(redis, timezone)
    p = await pick(b, [Candidate("k1", 0)])
    after = await redis_now(redis, timezone)
    assert p.outcome == "exhausted" and p.day in (before.date().isoformat(), after.date().isoformat())
    assert seconds_to_local_midnight(after) - 1 <= p.retry_after <= seconds_to_local_midnight(before) + 1


@pytest.mark.parametrize(
    ("local", "day", "hours_left"),
    [
        ("2026-03-08T00:30", "2026-03-08", 22.5),  # spring forward: a 23-hour day
        ("2026-11-01T00:30", "2026-11-01", 24.5),  # fall back: a 25-hour day
    ],
)
async def test_days_follow_daylight_saving_time(
    redis: aioredis.Redis, redis_prefix: str, local: str, day: str, hours_left: float
) -> None:
    target = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("America/New_York"))
    b = make(redis, redis_prefix, "America/New_York", clock_offset_ms=await offset_to(redis, target))
    assert (await pick(b, [Candidate("k1", 1)])).outcome == "ok"
    p = await pick(b, [Candidate("k1", 1)])
    assert (p.outcome, p.day) == ("exhausted", day)
    assert abs(p.retry_after - hours_left * 3600) <= 2


def test_days_never_overlap_where_dst_skips_midnight() -> None:
    # Santiago springs forward at midnight: 2026-09-06 00:00 never happens, the day starts at 01:00.
    tz = ZoneInfo("America/Santiago")
    starts = int(datetime(2026, 9, 6, 1, 0, tzinfo=tz).timestamp() * 1000)
    before = days.day_bounds(starts - 1, tz)
    after = days.day_bounds(starts, tz)
    assert (before.name, before.end_ms) == ("2026-09-05", starts)
    assert (after.name, after.start_ms) == ("2026-09-06", starts)
    assert after.end_ms - after.start_ms == 23 * 3600 * 1000


# --- the one-call budget ---------------------------------------------------------------------------


def count_commands(client: aioredis.Redis) -> list[str]:
    """Record the name of every command the client sends (pipelines aside)."""
    sent: list[str] = []
    real = client.execute_command

    async def recording(*args: object, **options: object) -> object:
        sent.append(str(args[0]).upper())
        return await real(*args, **options)

    client.execute_command = recording  # type: ignore[method-assign]
    return sent


async def test_pick_is_one_evalsha(redis: aioredis.Redis, redis_prefix: str) -> None:
    b = make(redis, redis_prefix)
    keys = [Candidate(f"k{i}", 100) for i in range(5)]
    limits = UserLimits(daily=100, per_minute=100, streams=10)
    await pick(b, keys)  # may load the script first (NOSCRIPT fallback)
    sent = count_commands(redis)
    for i in range(5):
        p = await pick(b, keys, limits=limits, stream=i % 2 == 0)
        assert p.outcome == "ok"
    assert sent == ["EVALSHA"] * 5


async def test_a_wrong_local_clock_costs_one_more_call_once(
    redis: aioredis.Redis, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = make(redis, redis_prefix)
    await pick(b, [Candidate("k1", 100)])
    real_day = b.today()
    real_wall = balancer_mod.wall_ms
    monkeypatch.setattr(balancer_mod, "wall_ms", lambda: real_wall() - 2 * DAY_MS)
    skewed = make(redis, redis_prefix)
    assert skewed.today() != real_day  # its own clock says two days ago
    sent = count_commands(redis)
    p = await pick(skewed, [Candidate("k1", 100)])
    assert (p.outcome, p.day, p.used_today) == ("ok", real_day, 2)
    assert sent == ["EVALSHA", "EVALSHA"]
    sent.clear()
    assert (await pick(skewed, [Candidate("k1", 100)])).used_today == 3
    assert sent == ["EVALSHA"]  # the skew was learned
    assert skewed.today() == real_day
    assert await skewed.usage_today() == {"k1": 3}
    # Reads name the day from Redis' clock too.
    assert await make(redis, redis_prefix).usage_today(["k1"]) == {"k1": 3}


async def test_a_day_is_seeded_from_postgresql_once_and_a_count_only_rises(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """Before the first pool of a day is built, `counts_today` (PostgreSQL's committed calls)
    seeds the counts: a key spent there is spent here; a higher count in Redis is kept."""
    asked: list[str] = []

    async def counts_today(day: str) -> dict[str, int]:
        asked.append(day)
        return {"k1": 5, "k2": 1}

    b = make(redis, redis_prefix, counts_today=counts_today)
    keys = [Candidate("k1", 5), Candidate("k2", 5)]
    picks = [await pick(b, keys) for _ in range(4)]
    assert [p.key_id for p in picks] == ["k2"] * 4  # k1 was at its limit before Redis saw a call
    assert picks[-1].used_today == 5
    assert (await pick(b, keys)).outcome == "exhausted"
    assert len(asked) == 1
    other = make(redis, redis_prefix, counts_today=counts_today)  # another process, another pool
    assert (await pick(other, [Candidate("k2", 9)])).used_today == 6
    assert len(asked) == 1  # the day was seeded once
    assert await b.usage_today() == {"k1": 5, "k2": 6}  # the marker is not a key


async def test_a_quiet_pool_still_serves_after_more_revivals_elsewhere_than_a_pick_applies(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    """257 keys of other pools cleared (health checks passed, owners resumed them) while a pool
    was not picked: the pool is rebuilt, not answered "init" until the day ends."""
    b = make(redis, redis_prefix)
    quiet = [Candidate("q", 100)]
    assert (await pick(b, quiet)).key_id == "q"
    for i in range(257):  # REVIVED_MAX + 1 distinct keys logged in `revived`
        await b.clear(f"elsewhere-{i}")
    p = await pick(b, quiet)
    assert (p.outcome, p.key_id, p.used_today) == ("ok", "q", 2)


def test_the_script_is_every_lua_file_joined_once_in_order_with_every_operation_dispatched() -> None:
    """A file of gateway/relay/lua/ left out of LUA_FILES would leave its operation undefined when
    dispatch names it; one named twice would define it twice."""
    from pathlib import Path

    folder = Path(balancer_mod.__file__).parent / "lua"
    assert sorted(p.stem for p in folder.glob("*.lua")) == sorted(balancer_mod.LUA_FILES)
    assert balancer_mod.LUA_FILES[0] == "prelude" and balancer_mod.LUA_FILES[-1] == "dispatch"
    dispatch = (folder / "dispatch.lua").read_text(encoding="utf-8")
    for name in balancer_mod.OPERATIONS:
        assert balancer_mod.SCRIPT.count(f"\nlocal function {name}()\n") == 1, name
        assert f"  {name} = {name},\n" in dispatch, name
    assert dispatch.count(" = ") - dispatch.count("local ") == len(balancer_mod.OPERATIONS)
