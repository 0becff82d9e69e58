"""The balancer's key-state operations: how a key that failed is kept out of picks, and brought back.

    cool_down(key, seconds)       a 429's Retry-After, years for a disabled key
    spend_today(key)              out of quota: out of picks until the day ends
    record_failure(key, cooldown) a 5xx or timeout, counted; at the threshold, cooled and on probation
    reject(key, cooldown)         a relay key's 401/403: cooled, doubling; True when it is to be disabled
    trial_passed(key), clear(key) back in the pool
    cooling(keys)                 seconds of cooldown left

Each is one call of the balancer script (the `cool`, `fail`, `reject`, `trial_ok`, `clear` and
`read` operations of `lua/`), on the same clock as the pick. Mixed into `balancer.Balancer`, which
owns the script and the names.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from gateway.net.resp import text
from gateway.relay.days import Day

log = structlog.get_logger(__name__)

DISABLED_FOR = 10 * 365 * 86400.0  # a rejected key cools "for years"
RELAY_LONGEST_COOLDOWN = 3600.0  # a relay key's doubling cooldowns stop growing here
RELAY_COOLDOWNS = 3  # a relay key refused through this many cooldowns in a row is disabled


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class KeyCooling:
    """Mixed into `Balancer`, which provides the script, the names, the clock (`guess_now`,
    `_day_at`) and `_read`."""

    _script: Any
    _offset_ms: int
    _cooldown: str
    _key_state: list[str]
    _failures: int
    _window_ms: int
    guess_now: Callable[[], int]
    _day_at: Callable[[int], Day]
    _read: Callable[..., Awaitable[tuple[int, list[Any]]]]

    async def cool_down(self, key_id: str, seconds: float) -> None:
        """Keep the key out of picks for `seconds` (a 429's Retry-After, or years for a disabled
        key). A later cooldown end already set is kept."""
        await self._script(keys=[self._cooldown], args=["cool", self._offset_ms, key_id, _ms(seconds)])
        log.info("key_cooled_down", key_id=key_id, seconds=seconds, cause="cool_down")

    async def spend_today(self, key_id: str) -> float:
        """Keep the key out of picks until today (the balancer's day) ends: its account is out of
        quota or balance. Returns the seconds that is."""
        seconds = self.seconds_left_today()
        await self._script(keys=[self._cooldown], args=["cool", self._offset_ms, key_id, _ms(seconds)])
        log.info("key_cooled_down", key_id=key_id, seconds=seconds, cause="spent")
        return seconds

    def seconds_left_today(self) -> float:
        """Until the balancer's day ends, by this process' clock (skew learned from Redis')."""
        now = self.guess_now()
        return (self._day_at(now).end_ms - now) / 1000

    async def record_failure(self, key_id: str, cooldown_seconds: float) -> bool:
        """Count a 5xx or timeout. At `failures_before_cooldown` failures within the window the key
        cools down and must then pass one trial request; a key on probation that fails cools again
        at once. True when this call cooled the key."""
        cooled, failures = await self._script(
            keys=self._key_state,
            args=["fail", self._offset_ms, key_id, _ms(cooldown_seconds), self._failures, self._window_ms],
        )
        if cooled:
            log.info("key_cooled_down", key_id=key_id, seconds=cooldown_seconds, cause="failures", failures=failures)
        return bool(cooled)

    async def reject(self, key_id: str, cooldown_seconds: float) -> tuple[int, bool]:
        """A relay key's 401/403: cool it for `cooldown_seconds`, doubling with each cooldown in a
        row (up to an hour), then one trial. Returns (cooldowns in a row, whether to disable it:
        refused again after `RELAY_COOLDOWNS` of them). A late refusal of a call picked before the
        key cooled changes nothing."""
        cooldowns, disable = await self._script(
            keys=self._key_state,
            args=[
                "reject",
                self._offset_ms,
                key_id,
                _ms(cooldown_seconds),
                _ms(RELAY_LONGEST_COOLDOWN),
                RELAY_COOLDOWNS,
            ],
        )
        log.info("key_cooled_down", key_id=key_id, cause="relay_rejected", cooldowns=cooldowns, disable=bool(disable))
        return int(cooldowns), bool(disable)

    async def trial_passed(self, key_id: str) -> None:
        await self._script(keys=self._key_state, args=["trial_ok", self._offset_ms, key_id])

    async def clear(self, key_id: str) -> None:
        """Forget cooldown, probation and failures: the owner resumed the key, or a health check passed."""
        await self._script(keys=self._key_state, args=["clear", self._offset_ms, key_id])

    async def cooling(self, key_ids: Sequence[str] | None = None) -> dict[str, float]:
        """key_id -> seconds of cooldown left, for keys still cooling (disabled ones included).
        With `key_ids`, only those are read (HMGET): a page of keys costs its size, not the pool's."""
        if key_ids is not None:
            if not key_ids:
                return {}
            now, values = await self._read(self._cooldown, key_ids)
            ends = {k: int(v) for k, v in zip(key_ids, values, strict=True) if v is not None}
        else:
            now, values = await self._read(self._cooldown)
            ends = {text(k): int(v) for k, v in zip(values[::2], values[1::2], strict=True)}
        return {k: (end - now) / 1000 for k, end in ends.items() if end > now}
