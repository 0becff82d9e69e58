"""What a donor's key failing does to it (DESIGN.md "Donors' rules for their keys"), end to end
through the gateway against real PostgreSQL and Redis: an account out of quota is spent until the
day ends (not a 60 s cooldown retried all day), a relay key's 401/403 cools it, doubling, and
disables it only after refusals through three cooldowns in a row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway.ops.keychecks import HealthChecks
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from tests.relay.test_proxy import reserve
from tests.support.fake_upstream import Failure, FakeUpstream
from tests.support.gateways import Gateway

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}


def error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": code}}


@pytest.mark.parametrize(
    "failure",
    [
        Failure(429, body=error("You exceeded your current quota, check your plan.", "insufficient_quota")),
        Failure(429, body=error("Billing hard limit has been reached", "billing_hard_limit_reached")),
        Failure(402, body=error("该令牌额度已用尽 (token quota exhausted)")),
        Failure(429, body={"error": "账户余额不足"}),
    ],
)
async def test_an_account_out_of_quota_is_spent_until_the_day_ends(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream, failure: Failure
) -> None:
    spent = await gw.add_key(fake_upstream, name="spent", api_key="sk-spent-key-00000001")
    await reserve(gw, await gw.add_key(second_upstream, name="good", api_key="sk-good-key-000000002"))
    fake_upstream.fail_next(failure)
    resp = await gw.post("/v1/chat/completions", CHAT)
    assert resp.status == 200, "the next key serves"
    assert len(fake_upstream.requests) == 1
    await gw.flush()

    balancer = gw.app[BALANCER]
    left = balancer.seconds_left_today()
    cooling = await balancer.cooling()
    assert left - 5 < cooling[spent] <= left + 1, "out of picks until the day ends, not for 60 s"
    row = await gw.key_row(spent)
    assert (row["status"], row["disabled_by"]) == ("cooling", None)
    assert row["status_reason"].startswith(f"the account is out of quota or balance (HTTP {failure.status})")
    assert "sk-spent" not in row["status_reason"]
    until = (row["spent_until"] - datetime.now(UTC)).total_seconds()
    assert left - 5 < until <= left + 1

    index = gw.app[KEY_INDEX]
    await index.reload()
    assert index.get(spent) is None, "every process leaves it out until then"
    fake_upstream.requests.clear()
    await HealthChecks(gw.app).run()
    assert fake_upstream.requests == [], "no health check revives it today"
    assert (await gw.key_row(spent))["status"] == "cooling"
    for _ in range(3):
        assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    assert fake_upstream.requests == [], "and no call tries it again today"

    async with gw.pool.acquire() as conn:  # tomorrow (the day's end moved into the past)
        await conn.execute(
            "UPDATE shared_keys SET spent_until = now() - interval '1 second' WHERE id = $1::uuid", spent
        )
    await balancer.clear(spent)
    await index.reload()
    assert index.get(spent) is not None
    await HealthChecks(gw.app).run()
    assert len(fake_upstream.requests) == 1, "tomorrow it is checked again, and passes"
    row = await gw.key_row(spent)
    assert (row["status"], row["spent_until"]) == ("active", None)


@pytest.mark.parametrize(
    ("failure", "cooled_for"),
    [
        # Gemini's free tier says "quota" of its per-minute limit: a rate limit, not an empty account.
        (Failure(429, body=error("Quota exceeded for metric: generate_content_free_tier_requests per minute")), 60),
        (Failure(429, retry_after="30", body=error("You exceeded your current quota")), 30),
        (Failure(429, body=error("Rate limit reached for requests")), 60),
        (Failure(402, body=error("Payment required")), None),  # says nothing of quota: an upstream error
    ],
)
async def test_a_rate_limit_that_names_quota_only_cools(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream, failure: Failure, cooled_for: int | None
) -> None:
    key = await gw.add_key(fake_upstream, name="limited", api_key="sk-limited-key-000001")
    await reserve(gw, await gw.add_key(second_upstream, name="good", api_key="sk-good-key-000000002"))
    fake_upstream.fail_next(failure, times=5)
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    await gw.flush()
    cooling = await gw.app[BALANCER].cooling()
    row = await gw.key_row(key)
    assert row["spent_until"] is None
    if cooled_for is None:
        assert key not in cooling and row["status"] == "active"
    else:
        assert cooled_for - 5 < cooling[key] <= cooled_for and row["status"] == "cooling"


async def refuse(gw: Gateway, upstream: FakeUpstream, status: int = 401) -> int:
    """One call the relay refuses (the next key serves it); the HTTP status the caller got."""
    upstream.fail_next(Failure(status, body=error("invalid token (upstream pool: quota)", "invalid_api_key")))
    resp = await gw.post("/v1/chat/completions", CHAT)
    await gw.flush()
    return resp.status


async def test_a_relay_key_refused_cools_doubling_and_is_disabled_after_three_cooldowns(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    relay = await gw.add_key(
        fake_upstream, name="relay", api_key="sk-relay-key-00000001", rules={"upstream_kind": "relay"}
    )
    await reserve(gw, await gw.add_key(second_upstream, name="good", api_key="sk-good-key-000000002"))
    balancer, base = gw.app[BALANCER], gw.config.balancer.cooldown_seconds
    for n, status in enumerate((401, 403, 401), start=1):
        assert await refuse(gw, fake_upstream, status) == 200
        cooling = await balancer.cooling()
        assert base * 2 ** (n - 1) - 5 < cooling[relay] <= min(3600, base * 2 ** (n - 1)), n
        row = await gw.key_row(relay)
        assert (row["status"], row["disabled_by"], row["auth_cooldowns"]) == ("cooling", None, n)
        assert row["status_reason"].endswith(f"cooling down ({n} of 3)")
        # A refusal of a call picked before the key cooled changes nothing.
        assert await balancer.reject(relay, base) == (n, False)
        await _end_cooldown(gw, relay)
    # The trial after the third cooldown is refused again: now it is disabled.
    assert await refuse(gw, fake_upstream) == 200
    row = await gw.key_row(relay)
    assert (row["status"], row["disabled_by"]) == ("disabled", "upstream")
    assert row["status_reason"] == "the relay refused the key (HTTP 401) through 3 cooldowns in a row"
    assert (await balancer.cooling())[relay] > 86400


async def test_a_relay_keys_passed_trial_forgets_its_refusals(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    relay = await gw.add_key(
        fake_upstream, name="relay", api_key="sk-relay-key-00000001", rules={"upstream_kind": "relay"}
    )
    await reserve(gw, await gw.add_key(second_upstream, name="good", api_key="sk-good-key-000000002"))
    balancer = gw.app[BALANCER]
    for _ in range(2):
        assert await refuse(gw, fake_upstream) == 200
        await _end_cooldown(gw, relay)
    fake_upstream.requests.clear()
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    assert len(fake_upstream.requests) == 1, "the trial went to the relay key, and passed"
    assert await refuse(gw, fake_upstream) == 200
    cooldown = gw.config.balancer.cooldown_seconds
    assert (await balancer.cooling())[relay] <= cooldown, "counted from the first cooldown again"
    assert (await gw.key_row(relay))["status_reason"].endswith("cooling down (1 of 3)")


async def test_a_provider_keys_401_still_disables_it(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    key = await gw.add_key(fake_upstream, name="provider", api_key="sk-provider-key-000001")
    await reserve(gw, await gw.add_key(second_upstream, name="good", api_key="sk-good-key-000000002"))
    assert await refuse(gw, fake_upstream) == 200
    row = await gw.key_row(key)
    assert (row["status"], row["disabled_by"], row["auth_cooldowns"]) == ("disabled", "upstream", 0)


async def test_a_health_check_refused_on_a_relay_key_cools_it(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    relay = await gw.add_key(
        fake_upstream, name="relay", api_key="sk-relay-key-00000001", rules={"upstream_kind": "relay"}
    )
    async with gw.pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET status = 'cooling' WHERE id = $1::uuid", relay)
    fake_upstream.valid_keys = {"sk-someone-else"}  # the relay now says 401 to this key
    assert await HealthChecks(gw.app).run() == {"rejected": 1}
    row = await gw.key_row(relay)
    assert (row["status"], row["disabled_by"]) == ("cooling", None)
    assert row["status_reason"].endswith("cooling down (1 of 3)")
    assert (await gw.app[BALANCER].cooling())[relay] > 0


async def _end_cooldown(gw: Gateway, key_id: str) -> None:
    """Move the key's cooldown end into the past, where pools filed it too (its probation stays):
    the time it cooled for has passed."""
    balancer = gw.app[BALANCER]
    client = balancer._redis
    await client.hset(balancer._cooldown, key_id, 1)
    async for name in client.scan_iter(match=f"{gw.config.redis.key_prefix}:*resting:*"):
        await client.zadd(name, {key_id: 1}, xx=True)
