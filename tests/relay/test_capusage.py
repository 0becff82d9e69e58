"""What the `/keys` page reads of a key's caps (relay/capusage.py) against real Redis: the counts
the pick keeps, expired entries of the 60-second windows and run-out leases left out, all keys in
one round trip. Time moves through `clock_offset_ms`, never sleeps."""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.relay import capusage
from gateway.relay.capusage import CapUsage
from tests.relay.test_balancer import make, pick
from tests.relay.test_key_caps import capped


async def test_usage_counts_as_the_pick_counts_and_expires_with_its_windows(
    redis: aioredis.Redis, redis_prefix: str
) -> None:
    b = make(redis, redis_prefix, stream_lease_seconds=30)
    keys = [capped("k1", rpm=10, conc=5, tpm=1000, mday=50)]
    first = await pick(b, keys, request_id="r1")
    await pick(b, keys, request_id="r2")  # still in flight
    await pick(b, keys, request_id="r3")  # still in flight
    await b.finish(first, "r1", tokens=120)
    other = [capped("k2", rpm=3)]
    await pick(b, other, request_id="r4")
    asked = {"k1": ["m"], "k2": [], "k3": []}  # k3: capped, never used

    async def at(offset_ms: int) -> dict[str, CapUsage]:
        later = make(redis, redis_prefix, clock_offset_ms=offset_ms)
        return await capusage.in_use(redis, redis_prefix, asked, now_ms=later.guess_now(), day=b.today())

    now = await at(0)
    assert now == {
        "k1": CapUsage(started=3, in_flight=2, tokens=120, today={"m": 3}),
        "k2": CapUsage(started=1, in_flight=0, tokens=0, today={}),
        "k3": CapUsage(),
    }
    # 31 s on, the two leases left by calls never finished have run out; the minute still counts.
    assert (await at(31_000))["k1"] == CapUsage(started=3, in_flight=0, tokens=120, today={"m": 3})
    # 61 s on, the starts and the tokens have left their window, untrimmed as no pick has run;
    # the day's count per model stays.
    assert (await at(61_000))["k1"] == CapUsage(started=0, in_flight=0, tokens=0, today={"m": 3})


async def test_no_keys_no_round_trip(redis: aioredis.Redis, redis_prefix: str) -> None:
    assert await capusage.in_use(redis, redis_prefix, {}, now_ms=0, day="2025-01-01") == {}


def test_which_rules_are_caps() -> None:
    none = {"rpm_limit": None, "tpm_limit": None, "max_concurrent": None, "model_daily_limits": {}}
    assert not capusage.capped({**none, "min_trust_level": 3})
    assert capusage.capped({**none, "max_concurrent": 1})
    assert capusage.capped({**none, "model_daily_limits": {"m": 5}})
