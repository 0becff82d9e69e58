"""Key states the owner sees: active, cooling, disabled, with the reason and the last error.

The balancer's Redis state (cooldowns) is what routes traffic; this module records the same
changes in PostgreSQL for the owner's pages and announces a disabled key to every process. It is
called from failure paths and health checks, in background tasks: a request never waits on it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from typing import Any

import asyncpg
import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway.net import events
from gateway.store.sharedkeys import REVIVABLE, DisabledBy, KeyStatus

log = structlog.get_logger(__name__)

# A disabled key changes only when forced, or when it is disabled again for a cause a health check
# may revive anyway ($7): an operator's stop keeps its reason, and stays an operator's.
SET_STATE = """
UPDATE shared_keys
SET status = $2, status_reason = $3, disabled_by = $6, last_error = coalesce($4, last_error),
    last_error_at = CASE WHEN $4 IS NULL THEN last_error_at ELSE now() END, updated_at = now()
WHERE id = $1 AND (status <> 'disabled' OR $5 OR ($6::text IS NOT NULL AND disabled_by = ANY($7::text[])))
"""

# Out of quota: cooling until the day ends (a disabled key stays disabled).
SET_SPENT = """
UPDATE shared_keys
SET status = 'cooling', status_reason = $2, disabled_by = NULL, last_error = $2, last_error_at = now(),
    spent_until = now() + make_interval(secs => $3), updated_at = now()
WHERE id = $1 AND status <> 'disabled'
"""

SET_RELAY_COOLING = """
UPDATE shared_keys
SET status = 'cooling', status_reason = $2, last_error = $2, last_error_at = now(), auth_cooldowns = $3,
    updated_at = now()
WHERE id = $1 AND status <> 'disabled'
"""


class KeyStates:
    def __init__(self, pool: asyncpg.Pool, client: aioredis.Redis, prefix: str) -> None:
        self._pool, self._redis, self._prefix = pool, client, prefix
        self._tasks: set[asyncio.Task[None]] = set()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def disabled(self, key_id: str, reason: str, by: DisabledBy = DisabledBy.UPSTREAM) -> None:
        log.warning("key_disabled", key_id=key_id, reason=reason, by=by)
        self._spawn(self._set(key_id, KeyStatus.DISABLED, reason, reason, by=by, announce=True))

    def cooling(self, key_id: str, reason: str, error: str | None = None) -> None:
        self._spawn(self._set(key_id, KeyStatus.COOLING, reason, error or reason))

    def spent(self, key_id: str, reason: str, seconds: float) -> None:
        """Out of quota or balance: cooling, and out of the key index and the health checks for
        `seconds` (until the balancer's day ends); every process is told."""
        log.warning("key_spent", key_id=key_id, reason=reason)
        self._spawn(self._write(key_id, SET_SPENT, reason, seconds, announce=True))

    def relay_cooling(self, key_id: str, reason: str, cooldowns: int) -> None:
        """A relay key refused (401/403) and cooling: `cooldowns` in a row so far."""
        self._spawn(self._write(key_id, SET_RELAY_COOLING, reason, cooldowns))

    def failed(self, key_id: str, error: str) -> None:
        """A failure that did not change the key's state: only the last error is recorded."""
        self._spawn(self._last_error(key_id, error))

    def recovered(self, key_id: str) -> None:
        self._spawn(self._set(key_id, KeyStatus.ACTIVE, None, None, force=True, announce=True))

    async def _set(
        self,
        key_id: str,
        status: KeyStatus,
        reason: str | None,
        error: str | None,
        *,
        by: DisabledBy | None = None,  # exactly when `status` is disabled
        force: bool = False,
        announce: bool = False,
    ) -> None:
        await self._write(key_id, SET_STATE, status, reason, error, force, by, sorted(REVIVABLE), announce=announce)

    async def _last_error(self, key_id: str, error: str) -> None:
        await self._write(key_id, "UPDATE shared_keys SET last_error = $2, last_error_at = now() WHERE id = $1", error)

    async def _write(self, key_id: str, sql: str, *args: Any, announce: bool = False) -> None:
        try:
            async with self._pool.acquire(timeout=5) as conn:
                await conn.execute(sql, uuid.UUID(key_id), *args)
            if announce:
                await events.publish(self._redis, self._prefix, "keys", key_id)
        except Exception as e:  # the owner's view lags; routing (Redis) is already right
            log.warning("key_state_write_failed", key_id=key_id, error=str(e))

    async def wait(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


KEY_STATES: web.AppKey[KeyStates] = web.AppKey("key_states", KeyStates)
