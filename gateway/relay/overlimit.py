"""The caller's per-minute limit, checked before a request's body is read (a 32 MiB body from a
caller already over its limit costs nothing to refuse).

    await before_body(request, user_id, per_minute) -> seconds to wait | None
        what this process remembers (no Redis call); for a large body only (`PEEK_ABOVE`, or
        chunked), then Redis' count of the caller's requests this minute (`OverLimit.peek`)

The balancer's pick stays the judge, and counts; this only remembers its last word, per process,
for the seconds it said to wait, and, for a body large enough that reading it costs more than a
round trip, reads the count the pick keeps (`urpm:<minute>`, the balancer's key) without changing
it. A normal request therefore still costs one Redis round trip (the pick), and a large one from
a caller over its limit is refused from its head, its body never read. The table is bounded:
past `MAX` callers, the expired ones go, then the oldest.
"""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.net import redisnames
from gateway.relay.days import wall_ms

MAX = 10_000
PEEK_ABOVE = 1024 * 1024  # bodies larger than this (or of unknown length) ask Redis first
MINUTE_MS = 60_000

# KEYS[1] urpm:<minute> (the balancer script's hash, relay/lua/: user_id -> requests started that minute, by
# Redis' clock), for the minute the caller guessed from its own clock.
# ARGV[1] that minute's start (epoch ms)   ARGV[2] user_id
# Returns {count, ms left in the minute}, or {-1, 0} when Redis' clock is in another minute (a
# guess at a boundary, or a skewed clock): then nothing is known, and the body is read as before.
# Read only: the pick alone counts.
PEEK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = tonumber(ARGV[1])
if now < start or now >= start + 60000 then return {-1, 0} end
return {tonumber(redis.call('HGET', KEYS[1], ARGV[2])) or 0, start + 60000 - now}
"""


def minute_name(minute_ms: int) -> str:
    """The name the balancer gives the minute starting at `minute_ms` (UTC)."""
    return time.strftime("%Y-%m-%dT%H:%M", time.gmtime(minute_ms // 1000))


class OverLimit:
    def __init__(self, prefix: str) -> None:
        self._until: dict[str, float] = {}
        self._prefix = prefix
        self._script: Any = None  # PEEK, registered on the first client it is asked of
        self._client: Any = None

    def note(self, user_id: str, retry_after: float) -> None:
        if len(self._until) >= MAX:
            now = time.monotonic()
            self._until = {u: t for u, t in self._until.items() if t > now}
            while len(self._until) >= MAX:
                del self._until[next(iter(self._until))]
        self._until.pop(user_id, None)
        self._until[user_id] = time.monotonic() + max(1.0, retry_after)

    def retry_after(self, user_id: str) -> int | None:
        """Seconds this caller must still wait, or None (the common case: one dict look-up)."""
        until = self._until.get(user_id)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._until[user_id]
            return None
        return math.ceil(left)

    async def peek(self, redis: Any, user_id: str, per_minute: int) -> int | None:
        """Seconds to wait when Redis counts `per_minute` requests of this caller this minute
        already (remembered as a refusal would be), else None. One read-only script call;
        Redis' errors propagate (the caller fails closed, as the pick does)."""
        if self._client is not redis:
            self._script, self._client = redis.register_script(PEEK), redis
        now = wall_ms()
        minute_ms = now - now % MINUTE_MS
        key = redisnames.user_rpm(self._prefix, minute_name(minute_ms))
        count, left_ms = (int(v) for v in await self._script(keys=[key], args=[minute_ms, user_id]))
        if count < per_minute:  # -1 too: Redis is in another minute than our guess
            return None
        seconds = max(1, math.ceil(left_ms / 1000))
        self.note(user_id, seconds)
        return seconds


async def before_body(request: web.Request, user_id: str, per_minute: int) -> int | None:
    """Seconds a caller over its per-minute limit must wait, known from the head: remembered from
    this process' last refusal, or, for a large body only, read from Redis (whose errors propagate)."""
    over = request.app[OVER_LIMIT]
    wait = over.retry_after(user_id)
    if wait is not None or not per_minute or not large_body(request):
        return wait
    return await over.peek(request.app[appkeys.redis], user_id, per_minute)


def large_body(request: web.Request) -> bool:
    """A body worth a round trip before it is read: announced over `PEEK_ABOVE`, or chunked."""
    if not request.body_exists:
        return False
    length = request.content_length
    return length is None or length > PEEK_ABOVE


OVER_LIMIT: web.AppKey[OverLimit] = web.AppKey("over_limit", OverLimit)
