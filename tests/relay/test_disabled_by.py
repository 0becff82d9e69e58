"""Key state as values (issue #12): `disabled_by` decides what a health check may revive, never the
reason's words; the migration's backfill; failure kinds, pick outcomes, usage statuses, key states
and probe results as StrEnums that read and write the same strings as before."""

from __future__ import annotations

import shutil
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway.net.keytest import ProbeResult
from gateway.ops.keychecks import HealthChecks
from gateway.relay.balancer import Balancer
from gateway.relay.call import FailureKind
from gateway.relay.keystate import KEY_STATES
from gateway.relay.picks import USER_OUTCOMES, Candidate, PickOutcome, UserLimits
from gateway.relay.usage import UsageRecord, UsageStatus
from gateway.store import db, sharedkeys
from gateway.store.sharedkeys import DisabledBy, KeyStatus
from tests.support.fake_upstream import FakeUpstream
from tests.web import test_keys_api
from tests.web.test_keys_api import Api

people, make_api, api = test_keys_api.people, test_keys_api.make_api, test_keys_api.api  # fixtures

REJECTED = "the upstream rejected the key (HTTP 401)"


async def state(api: Api, key_id: str) -> tuple[str, str | None, str | None]:
    async with api.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, status_reason, disabled_by FROM shared_keys WHERE id = $1", uuid.UUID(key_id)
        )
    return row["status"], row["status_reason"], row["disabled_by"]


async def test_an_operators_stop_is_never_revived_whatever_its_reason_says(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    reason = "the upstream rejected the key because I said so"
    async with api.pool.acquire() as conn:
        assert await sharedkeys.disable_key(conn, key_id, reason)
    assert await state(api, key_id) == ("disabled", reason, "operator")
    [item] = await api.keys()
    assert (item["status"], item["status_reason"], item["disabled_by"]) == ("disabled", reason, "operator")

    fake_upstream.requests.clear()
    assert await HealthChecks(api.app).run() == {}, "not even probed: the upstream would accept it"
    assert fake_upstream.requests == []
    assert await state(api, key_id) == ("disabled", reason, "operator")

    # A 401 from a request still in flight cannot turn the operator's stop into a revivable one.
    states = api.app[KEY_STATES]
    states.disabled(key_id, REJECTED)
    await states.wait()
    assert await state(api, key_id) == ("disabled", reason, "operator")
    assert await HealthChecks(api.app).run() == {}
    assert await state(api, key_id) == ("disabled", reason, "operator")


async def test_a_key_the_upstream_rejected_is_revived_however_its_reason_is_worded(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    states = api.app[KEY_STATES]
    reworded = "The provider refused this key (HTTP 401)."
    states.disabled(key_id, reworded)  # the proxy's write, in other words
    await states.wait()
    assert await state(api, key_id) == ("disabled", reworded, "upstream")
    assert await HealthChecks(api.app).run() == {"ok": 1}
    assert await state(api, key_id) == ("active", None, None)


async def test_a_health_check_disables_and_revives_as_health(
    api: Api, fake_upstream: FakeUpstream, redis: aioredis.Redis
) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    checks = HealthChecks(api.app)
    fake_upstream.valid_keys = {"sk-not-the-stored-one-000"}
    assert await checks.run() == {ProbeResult.REJECTED: 1}
    assert await state(api, key_id) == ("disabled", REJECTED, "health")

    fake_upstream.valid_keys = None
    await redis.delete(checks.backoff_key)  # due again now, not after its back-off
    assert await checks.run() == {"ok": 1}
    assert await state(api, key_id) == ("active", None, None)

    # The owner's resume after a passing live test clears it too.
    async with api.pool.acquire() as conn:
        assert await sharedkeys.disable_key(conn, key_id, "abuse report")
    reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": True})
    assert (reply.status, reply.body["status"], reply.body["disabled_by"]) == (200, "active", None)
    assert await state(api, key_id) == ("active", None, None)


async def test_disabled_by_is_set_exactly_when_disabled(api: Api, fake_upstream: FakeUpstream) -> None:
    key_id = uuid.UUID((await api.add(fake_upstream)).body["id"])
    async with api.pool.acquire() as conn:
        for sql in (
            "UPDATE shared_keys SET status = 'disabled' WHERE id = $1",
            "UPDATE shared_keys SET disabled_by = 'operator' WHERE id = $1",
            "UPDATE shared_keys SET status = 'disabled', disabled_by = 'someone' WHERE id = $1",
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(sql, key_id)
        await conn.execute("UPDATE shared_keys SET status = 'disabled', disabled_by = 'owner' WHERE id = $1", key_id)


async def test_the_migration_backfills_disabled_by_from_todays_reasons(database_url: str, tmp_path: Path) -> None:
    before = tmp_path / "sql"
    before.mkdir()
    for m in db.migrations():
        if m.version < 3:
            shutil.copy(m.path, before / m.path.name)
    health = "the upstream rejected the key (HTTP 403)"
    rows = {  # name: (status, status_reason, last_error, disabled_by expected)
        "proxy": ("disabled", REJECTED, REJECTED, "upstream"),
        "health": ("disabled", health, f"health check: {health}", "health"),
        "proxy-then-429": ("disabled", REJECTED, "health check: rate limited by the upstream", "upstream"),
        "cli-default": ("disabled", "disabled by an administrator", None, "operator"),
        "cli-lookalike": ("disabled", "the upstream rejected the key because I said so", None, "operator"),
        "no-reason": ("disabled", None, None, "operator"),
        "cooling": ("cooling", "rate limited by the upstream for 30s", "x", None),
        "active": ("active", None, None, None),
    }
    conn = await asyncpg.connect(database_url)
    try:
        await db.migrate(conn, before)
        owner = await conn.fetchval("INSERT INTO users (username) VALUES ('donor') RETURNING id")
        for name, (status, reason, error, _) in rows.items():
            await conn.execute(
                "INSERT INTO shared_keys (user_id, name, base_url, api_key_encrypted, key_version, api_key_hint,"
                " available_models, status, status_reason, last_error)"
                " VALUES ($1, $2, 'https://api.example.com/v1', 'x', 'k', 'sk-…', '{m}', $3, $4, $5)",
                owner,
                name,
                status,
                reason,
                error,
            )
        assert [m.version for m in await db.migrate(conn)][0] == 3
        found = {r["name"]: r["disabled_by"] for r in await conn.fetch("SELECT name, disabled_by FROM shared_keys")}
    finally:
        await conn.close()
    assert found == {name: expected for name, (*_, expected) in rows.items()}


# --- the enums ---------------------------------------------------------------------------------


def test_enums_are_todays_strings() -> None:
    assert [str(k) for k in FailureKind] == [
        "unreachable",
        "timeout",
        "key_rejected",
        "rate_limited",
        "quota_exhausted",
        "redirect",
        "upstream_error",
        "bad_stream",
        "too_large",
        "unsupported_encoding",
        "untranslatable",
        "proxy_unreachable",
        "proxy_refused",
    ]
    assert [str(s) for s in KeyStatus] == ["active", "paused", "cooling", "disabled"]
    assert [str(r) for r in ProbeResult] == ["ok", "rejected", "rate_limited", "failed", "proxy_unavailable"]
    assert USER_OUTCOMES == {
        "user_daily",
        "user_rpm",
        "user_streams",
        "response_not_found",
        "token_daily",
        "token_rpm",
        "token_budget",
    }
    assert f"{FailureKind.KEY_REJECTED}: x" == "key_rejected: x"
    assert sharedkeys.REVIVABLE == {DisabledBy.UPSTREAM, DisabledBy.HEALTH}


def test_a_spooled_usage_record_round_trips() -> None:
    record = UsageRecord(
        request_id="req-1",
        attempt=1,
        day=date(2026, 11, 23),
        created_at=datetime.now(UTC),
        shared_key_id=None,
        user_id=None,
        donor_id=None,
        api_endpoint="/v1/chat/completions",
        model="gpt-4o-mini",
        status=UsageStatus.STREAM_ERROR,
        success=False,
        committed=True,
    )
    text = record.to_json()
    assert '"status": "stream_error"' in text
    back = UsageRecord.from_json(text)
    assert back == record and type(back.status) is UsageStatus


async def test_pick_outcomes_are_converted_once(redis: aioredis.Redis, redis_prefix: str) -> None:
    balancer = Balancer(redis, prefix=redis_prefix, timezone="UTC")
    limits = UserLimits(daily=1, per_minute=0, streams=0)
    kw = {"user_id": "u1", "limits": limits, "stream": False}
    first = await balancer.pick([Candidate("k1", 10)], request_id="r1", **kw)  # type: ignore[arg-type]
    assert first.outcome is PickOutcome.OK
    second = await balancer.pick([Candidate("k1", 10)], request_id="r2", **kw)  # type: ignore[arg-type]
    assert second.outcome is PickOutcome.USER_DAILY and second.outcome in USER_OUTCOMES
