"""Key health checks, a cluster job: test every active key that is due, and set its state.

Cooling keys, and keys disabled because the upstream rejected them (`disabled_by` upstream or
health, never judged by the reason's words), are tested again with back-off (one interval, then
2, 4, … up to 6 hours) and come back as soon as they pass. A key paused by its owner or disabled
by an operator is never touched, whatever its reason says. The probe itself is the live
key test's (`net.keytest.probe`), in the key's `api_format`. A probe the egress proxy failed says
nothing about the key: its state, error and back-off stay as they were.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway import appkeys, metrics
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisnames
from gateway.net.h1 import UPSTREAM_POOL
from gateway.net.keytest import Probe, ProbeResult, probe
from gateway.relay.balancer import BALANCER
from gateway.relay.cooling import DISABLED_FOR, RELAY_COOLDOWNS
from gateway.store import modelnames
from gateway.store.crypto import KEYRING, SealError
from gateway.store.sharedkeys import REVIVABLE, DisabledBy, KeyStatus

log = structlog.get_logger(__name__)


async def redis_now_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


HEALTH_CONCURRENCY = 8
MAX_BACKOFF_SECONDS = 6 * 3600.0
FAILED_CHECK = "failed its health check"

# Paused keys (is_active = false) are never read; disabled ones only if the upstream rejected
# them ($1: `sharedkeys.REVIVABLE`), whatever their reason says.
SELECT_CHECKED = """
SELECT id::text, user_id::text, base_url, api_key_encrypted, available_models, status, status_reason, disabled_by,
       api_format, upstream_kind
FROM shared_keys
WHERE is_active AND (status <> 'disabled' OR disabled_by = ANY($1::text[]))
  AND (spent_until IS NULL OR spent_until <= now())
"""

# Compare-and-set on the state the check started from: an owner's pause or an operator's
# disable in the meantime wins.
SET_CHECKED = """
UPDATE shared_keys
SET status = $2, status_reason = $3, disabled_by = $7, last_error = coalesce($4, last_error),
    last_error_at = CASE WHEN $4::text IS NULL THEN last_error_at ELSE now() END,
    spent_until = CASE WHEN $2 = 'active' THEN NULL ELSE spent_until END,
    auth_cooldowns = CASE WHEN $2 = 'active' THEN 0 ELSE auth_cooldowns END,
    last_checked_at = now(), updated_at = CASE WHEN status = $2 THEN updated_at ELSE now() END
WHERE id = $1 AND is_active AND status = $5 AND status_reason IS NOT DISTINCT FROM $6
  AND disabled_by IS NOT DISTINCT FROM $8
"""


class HealthChecks:
    """One run tests every key that is due; the back-off of failing keys is kept in Redis."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        config = app[appkeys.config]
        self._config = config
        self._prefix = config.redis.key_prefix
        self.backoff_key = redisnames.health_backoff(self._prefix)

    async def run(self) -> dict[str, int]:
        app = self._app
        client, balancer = app[appkeys.redis], app[BALANCER]
        async with app[appkeys.pg].acquire(timeout=5) as conn:
            rows = await conn.fetch(SELECT_CHECKED, sorted(REVIVABLE))
        now_ms = await redis_now_ms(client)
        cooling = await balancer.cooling()
        backoff = {k.decode(): v.decode() for k, v in (await client.hgetall(self.backoff_key)).items()}
        gone = set(backoff) - {r["id"] for r in rows}
        if gone:
            await client.hdel(self.backoff_key, *gone)
        due = [r for r in rows if self._due(r, cooling, backoff, now_ms)]
        limit = asyncio.Semaphore(HEALTH_CONCURRENCY)

        async def one(row: asyncpg.Record) -> str:
            async with limit:
                return await self._check(row, int(backoff.get(row["id"], "0:0").partition(":")[0]), now_ms)

        results = await asyncio.gather(*(one(r) for r in due))
        counts = {r: results.count(r) for r in set(results)}
        log.info("keys_checked", keys=len(rows), checked=len(due), **counts)
        if counts.get(ProbeResult.PROXY_UNAVAILABLE):
            log.warning("key_checks_proxy_unavailable", keys=counts[ProbeResult.PROXY_UNAVAILABLE])
        return counts

    def _due(self, row: asyncpg.Record, cooling: dict[str, float], backoff: dict[str, str], now_ms: int) -> bool:
        if row["status"] != KeyStatus.DISABLED and cooling.get(row["id"], 0) > 0:
            return False  # its cooldown still runs (a 429's Retry-After is the upstream's to give)
        return int(backoff.get(row["id"], "0:0").partition(":")[2]) <= now_ms

    async def _check(self, row: asyncpg.Record, fails: int, now_ms: int) -> str:
        app, key_id = self._app, row["id"]
        try:
            api_key = app[KEYRING].open(
                row["api_key_encrypted"], key_id=key_id, owner_id=row["user_id"], base_url=row["base_url"]
            )
        except SealError as e:
            log.error("key_unsealable", key_id=key_id, reason=str(e))
            metrics.health_checked("unsealable")
            return "unsealable"
        found = await probe(
            app[UPSTREAM_POOL],
            row["base_url"],
            api_key,
            modelnames.split((row["available_models"] or [""])[0])[1],
            method=self._config.health.method,
            timeout=self._config.upstream.test_timeout,
            api_format=row["api_format"],
        )
        metrics.health_checked(found.result)
        if found.result == ProbeResult.PROXY_UNAVAILABLE:  # the gateway's failure: the key keeps its state
            return found.result
        try:
            await self._apply(row, found, fails, now_ms)
        except (*REDIS_DOWN, *POSTGRES_DOWN) as e:
            log.warning("key_check_not_recorded", key_id=key_id, error=str(e))
        return found.result

    async def _apply(self, row: asyncpg.Record, found: Probe, fails: int, now_ms: int) -> None:
        app, key_id = self._app, row["id"]
        client, balancer = app[appkeys.redis], app[BALANCER]
        was, reason, was_by = KeyStatus(row["status"]), row["status_reason"], row["disabled_by"]
        new_by: DisabledBy | None = None
        if found.result == ProbeResult.OK:
            new, new_reason, error = KeyStatus.ACTIVE, None, None
        elif found.result == ProbeResult.REJECTED and row["upstream_kind"] == "relay" and was != KeyStatus.DISABLED:
            new, new_reason, error, new_by = await self._relay_rejected(key_id, found)
        elif found.result == ProbeResult.REJECTED:
            new, new_reason, error = KeyStatus.DISABLED, found.detail, f"health check: {found.detail}"
            new_by = DisabledBy.HEALTH
        elif was == KeyStatus.DISABLED:  # rejected before; a 429 or 5xx now does not prove the key works
            new, new_reason, error, new_by = was, reason, f"health check: {found.detail}", DisabledBy(was_by)
        else:
            new, new_reason = KeyStatus.COOLING, f"{FAILED_CHECK}: {found.detail}"
            error = f"health check: {found.detail}"
        async with app[appkeys.pg].acquire(timeout=5) as conn:
            changed = await conn.execute(
                SET_CHECKED, uuid.UUID(key_id), new, new_reason, error, was, reason, new_by, was_by
            )
        if changed == "UPDATE 0":
            return  # paused, disabled by someone or deleted meanwhile: theirs to decide
        if found.result == ProbeResult.OK:
            if was != KeyStatus.ACTIVE or fails:
                await balancer.clear(key_id)
                await client.hdel(self.backoff_key, key_id)
                log.info("key_recovered", key_id=key_id, was=was)
        else:
            interval = self._config.health.interval_seconds
            delay = min(MAX_BACKOFF_SECONDS, interval * 2**fails)
            await client.hset(self.backoff_key, key_id, f"{fails + 1}:{now_ms + round(delay * 1000)}")
            if found.result == ProbeResult.REJECTED and new == KeyStatus.DISABLED:
                await balancer.cool_down(key_id, DISABLED_FOR)
            elif new == KeyStatus.COOLING:
                await balancer.cool_down(key_id, found.retry_after or self._config.balancer.cooldown_seconds)
            if new != was:
                log.warning("key_check_failed", key_id=key_id, result=found.result, status=new, detail=found.detail)
        if new != was:
            await events.publish(client, self._prefix, "keys", key_id)

    async def _relay_rejected(self, key_id: str, found: Probe) -> tuple[KeyStatus, str, str, DisabledBy | None]:
        """A relay key the probe was refused on cools like one a call was refused on
        (`cooling.reject`): disabled only after refusals through its cooldowns in a row."""
        cooldowns, disable = await self._app[BALANCER].reject(key_id, self._config.balancer.cooldown_seconds)
        error = f"health check: {found.detail}"
        if disable:
            reason = f"{found.detail} through {cooldowns} cooldowns in a row"
            return KeyStatus.DISABLED, reason, error, DisabledBy.HEALTH
        return KeyStatus.COOLING, f"{found.detail}; cooling down ({cooldowns} of {RELAY_COOLDOWNS})", error, None
