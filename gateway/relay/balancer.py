"""The atomic key balancer: which donated key serves a request, and the Redis state behind it.

Owns the balancer script (`lua/`: a prelude, one file per operation and a dispatch, joined into
one script, one SHA) and every Redis key it touches (schema v5, `redisnames.BALANCER_VERSION`:
`counts:<day>`, `cooldown`, `probation`, `fails`, `udaily:<day>`, `urpm:<minute>`,
`ustreams:<user>`, per token `tdaily:<day>`, `trpm:<minute>`, `tspend:<day>`, per pool `pool:`,
`avail:`, `resting:`, and `revived`, `aff:`, `resp:`; per capped key `kwin:`, `kfly:`, `ktok:`,
`ktoksum:`, and `mcounts:<day>`; layout and invariants in the header of `lua/prelude.lua`). The
operations on a key's health (cool, fail, reject, trial_ok, clear) are `cooling.KeyCooling`'s,
mixed in.
`pick()` is one script call: the caller's fair-use limits, then the least-used key under its daily
limit and its donor's caps (per minute, in flight, tokens, per model: `Candidate.caps`) and not
cooling, one call reserved on it (`reserve=False`: only chosen), atomically across any number of
processes; a call on a key with a concurrency or token cap ends with `finish`. Affinity is the
caller's (`Affinity`). Its cost does not grow with the pool: a `Pool` (one per model and audience
in the key index) goes as an id and a fingerprint, the list only in `init`.

"Today" is the calendar day in the configured time zone at Redis' clock. The client names the
day and minute keys from its own clock and the script checks that guess against `TIME`; a wrong
guess (only at a boundary, or with a skewed clock) costs one more call, and the skew is learned.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway.net import redisnames
from gateway.net.redisline import ScriptLine
from gateway.net.resp import text
from gateway.relay.cooling import KeyCooling
from gateway.relay.days import Day, day_bounds, wall_ms
from gateway.relay.picks import Affinity, Candidate, Pick, PickOutcome, Pool, TokenLimits, UserLimits, digest

log = structlog.get_logger(__name__)

# The script's files (gateway/relay/lua/), in the order they are joined into the one script Redis
# loads: the prelude (header, clock, helpers), one `local function` per operation, the dispatch.
OPERATIONS = (
    "pick",
    "init",
    "seed",
    "release",
    "finish",
    "cool",
    "fail",
    "reject",
    "trial_ok",
    "clear",
    "read",
    "end_stream",
    "remember",
    "spend",
)
LUA_FILES = ("prelude", *OPERATIONS, "dispatch")


def _assemble() -> str:
    folder = resources.files("gateway.relay").joinpath("lua")
    return "\n".join(
        f"-- lua/{name}.lua\n" + folder.joinpath(f"{name}.lua").read_text(encoding="utf-8") for name in LUA_FILES
    )


SCRIPT = _assemble()  # one script, one SHA: every operation is one EVALSHA of it
TRIAL_LEASE_SECONDS = 30.0
CLOCK_TRIES = 3  # a second try always has the right keys unless a boundary passed in between
INIT = "init"  # the script's answer when the pool's structures must be (re)built first
INIT_TRIES = 2  # a pool rebuilt just before our pick by a process with another candidate list


CLOCK = "clock"  # the script's answer when the client named the wrong day or minute
SEED = "seed"  # init's answer when today's counts were never seeded from PostgreSQL


NO_TOKEN = TokenLimits(token_id="")  # no token cap: the script reads none of the token's counters


def _seconds(ms: int) -> int:
    return max(1, math.ceil(ms / 1000))


class Balancer(KeyCooling):
    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str,
        timezone: str,
        stream_lease_seconds: float = 600,
        failures_before_cooldown: int = 3,
        failure_window_seconds: int = 60,
        clock_offset_ms: int = 0,
        trial_lease_seconds: float = TRIAL_LEASE_SECONDS,
        line: ScriptLine | None = None,
        counts_today: Callable[[str], Awaitable[dict[str, int]]] | None = None,
    ) -> None:
        self._redis = redis
        self._line = line
        self._counts_today = counts_today  # a day's committed calls per key (PostgreSQL), to seed it
        # Every script operation goes over the lean pipelined line when there is one (see redisline),
        # sharing its connection and deadline; redis-py's registered script otherwise.
        self._script: Any = line or redis.register_script(SCRIPT)
        self._prefix = prefix
        self._cooldown, self._probation = redisnames.cooldown(prefix), redisnames.probation(prefix)
        self._revived = redisnames.revived(prefix)
        # KEYS of fail, trial_ok, clear
        self._key_state = [self._cooldown, self._probation, redisnames.fails(prefix), self._revived]
        self._tz = ZoneInfo(timezone)
        self._stream_lease_ms = max(1, round(stream_lease_seconds * 1000))
        self._trial_lease_ms = max(1, round(trial_lease_seconds * 1000))
        self._failures = max(1, failures_before_cooldown)
        self._window_ms = max(1, round(failure_window_seconds * 1000))
        self._offset_ms = clock_offset_ms
        self._skew_ms = 0  # Redis' clock minus ours, learned from "clock" answers
        self._day: Day | None = None
        self._minute: tuple[int, str] = (-1, "")  # (start ms, key name) of the last minute seen
        self._inits: dict[tuple[str, str, str], asyncio.Future[int]] = {}  # pool builds in flight
        self._finishing: set[asyncio.Task[None]] = set()  # finish calls in the background

    def guess_now(self) -> int:
        """Redis' now (ms) as this process guesses it: its clock, the offset, the skew learned."""
        return wall_ms() + self._offset_ms + self._skew_ms

    def _day_at(self, now_ms: int) -> Day:
        day = self._day
        if day is not None and day.start_ms <= now_ms < day.end_ms:
            return day
        day = self._day = day_bounds(now_ms, self._tz)
        return day

    def _learn_clock(self, redis_now_ms: int) -> None:
        self._skew_ms = redis_now_ms - (wall_ms() + self._offset_ms)

    def today(self) -> str:
        """The day by this process' clock: a guess for display; picks count on Redis' day."""
        return self._day_at(self.guess_now()).name

    async def pick(
        self,
        candidates: Pool | Sequence[Candidate],
        *,
        user_id: str,
        limits: UserLimits,
        request_id: str,
        stream: bool,
        count_user: bool = True,
        exclude: Collection[str] = (),
        affinity: Affinity | None = None,
        reserve: bool = True,
        token: TokenLimits | None = None,
    ) -> Pick:
        """Reserve one call on the least-used available key, after the caller's limits.

        `exclude`: keys of the pool not to pick (those a retry already tried). `count_user=False`
        is for a retry of the same request on another key: the request was already counted
        against the user (and holds its stream slot) on its first pick. The cost does not depend
        on the pool's size, but for one `init` call per pool per day (or after a change).
        `affinity`: the conversation and response this request continues (see `Affinity`),
        decided in the same call. `reserve=False` (count_tokens) only chooses the key: neither its
        count today nor the user's day or streams change; the user's minute counts, and limits.
        `token`: the caller's token's caps, enforced and counted in the same call, like the user's.
        """
        pool = candidates if isinstance(candidates, Pool) else Pool.of(candidates)
        if not pool.size:
            raise ValueError("pick() needs at least one candidate")
        now = self.guess_now()
        clock_tries = init_tries = 0
        capped = token if token is not None and token.any else NO_TOKEN
        while clock_tries < CLOCK_TRIES:
            day = self._day_at(now)
            minute_ms = now - now % 60_000
            if minute_ms != self._minute[0]:
                self._minute = (minute_ms, time.strftime("%Y-%m-%dT%H:%M", time.gmtime(minute_ms // 1000)))
            minute = self._minute[1]
            reply = await self._script(
                keys=[
                    redisnames.counts(self._prefix, day.name),
                    self._cooldown,
                    self._probation,
                    redisnames.user_daily(self._prefix, day.name),
                    redisnames.user_rpm(self._prefix, minute),
                    redisnames.user_streams(self._prefix, user_id),
                    redisnames.pool_meta(self._prefix, pool.pool_id),
                    redisnames.pool_avail(self._prefix, pool.pool_id),
                    redisnames.pool_resting(self._prefix, pool.pool_id),
                    self._revived,
                    redisnames.token_daily(self._prefix, day.name),
                    redisnames.token_rpm(self._prefix, minute),
                    redisnames.token_spend(self._prefix, day.name),
                    *(affinity.keys(self._prefix, user_id) if affinity is not None else ()),
                ],
                args=[
                    "pick",
                    self._offset_ms,
                    day.start_ms,
                    day.end_ms,
                    minute_ms,
                    int(count_user),
                    limits.daily,
                    limits.per_minute,
                    int(stream),
                    limits.streams,
                    user_id,
                    request_id,
                    self._stream_lease_ms,
                    self._trial_lease_ms,
                    day.name,
                    pool.fingerprint,
                    random.getrandbits(30),  # the tie-break among equally used keys
                    affinity.conversation_ms if affinity is not None and affinity.conversation else 0,
                    int(reserve),
                    capped.token_id,
                    capped.daily,
                    capped.per_minute,
                    capped.budget_micro_usd,
                    *exclude,
                ],
            )
            answer, key_id = text(reply[0]), text(reply[1])
            used, retry_ms, trial, now = (int(v) for v in reply[2:6])
            if answer == INIT and init_tries < INIT_TRIES:
                init_tries += 1
                now = await self._init_once(pool, day)
                continue
            if answer not in (CLOCK, INIT):
                outcome = PickOutcome(answer)
                return Pick(
                    outcome=outcome,
                    key_id=key_id or None,
                    used_today=used,
                    retry_after=0 if outcome == PickOutcome.OK else _seconds(retry_ms),
                    day=day.name,
                    trial=bool(trial),
                    pool_id=pool.pool_id,
                    held=len(reply) > 6 and reply[6] == 1,
                )
            clock_tries += 1
            self._learn_clock(now)
        raise RuntimeError("balancer: Redis' clock kept leaving the day or minute the keys were named for")

    async def remember(self, response_id: str, key_id: str, seconds: float, *, user_id: str) -> None:
        """The user a response was made for and the key that produced it: that user's request
        continuing it goes there while it can; another user's is refused."""
        key, ms = redisnames.response(self._prefix, digest(response_id)), max(1, round(seconds * 1000))
        await self._script(keys=[key], args=["remember", self._offset_ms, key_id, ms, user_id])

    async def _init_once(self, pool: Pool, day: Day) -> int:
        """`_init`, shared by every pick of this process that asks for the same pool at once."""
        key = (pool.pool_id, pool.fingerprint, day.name)
        task = self._inits.get(key)
        if task is None:
            task = self._inits[key] = asyncio.ensure_future(self._init(pool, day))
            task.add_done_callback(lambda _: self._inits.pop(key, None))
        return await asyncio.shield(task)

    async def _init(self, pool: Pool, day: Day) -> int:
        """Build the pool's structures for `day` from its candidate list: the one call whose cost
        grows with the pool, once per pool per day or change. Returns Redis' now."""
        answer, now = await self._script(
            keys=[
                redisnames.counts(self._prefix, day.name),
                self._cooldown,
                redisnames.pool_meta(self._prefix, pool.pool_id),
                redisnames.pool_avail(self._prefix, pool.pool_id),
                redisnames.pool_resting(self._prefix, pool.pool_id),
                self._revived,
            ],
            args=["init", self._offset_ms, day.start_ms, day.end_ms, day.name, pool.fingerprint, *pool.pairs],
        )
        if text(answer) == SEED:
            await self._seed_day(day)
            return await self._init(pool, day)
        if text(answer) == CLOCK:
            self._learn_clock(int(now))
        log.debug("balancer_pool_built", pool=pool.pool_id, keys=pool.size, day=day.name)
        return int(now)

    async def _seed_day(self, day: Day) -> None:
        """Today's counts into Redis before any pool of the day is built: on a new day, and after
        Redis lost its data (a restart without persistence, a failover to a replica that lagged),
        so that a key spent today stays spent. What `counts_today` cannot know (calls in flight,
        other processes' unflushed records) may exceed a limit once."""
        counts = await self._counts_today(day.name) if self._counts_today is not None else {}
        pairs = [v for key_id, n in counts.items() if n > 0 for v in (key_id, n)]
        await self._script(
            keys=[redisnames.counts(self._prefix, day.name)], args=["seed", self._offset_ms, day.end_ms, *pairs]
        )
        log.info("balancer_day_seeded", day=day.name, keys=len(pairs) // 2)

    async def release(self, key_id: str, day: str, *, pool_id: str = "", request_id: str = "") -> None:
        """Give back the reservation of an attempt that failed before its commit point (and, for a
        key with caps, its call on the model today and its slot in flight)."""
        await self._script(
            keys=[
                redisnames.counts(self._prefix, day),
                self._revived,
                self._cooldown,
                redisnames.pool_meta(self._prefix, pool_id or "-"),
            ],
            args=["release", self._offset_ms, key_id, request_id],
        )

    def finish_later(self, pick: Pick, request_id: str, tokens: int) -> None:
        """`finish`, in the background: the client is not kept waiting for it. Lost (Redis
        down), the slot comes free when its lease runs out."""
        self._background(self.finish(pick, request_id, tokens), "balancer_finish_failed", key_id=pick.key_id)

    def _background(self, call: Awaitable[None], failed: str, **fields: Any) -> None:
        task = asyncio.create_task(self._quietly(call, failed, fields))
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)

    @staticmethod
    async def _quietly(call: Awaitable[None], failed: str, fields: dict[str, Any]) -> None:
        try:
            await call
        except Exception as e:  # a background task: log, never raise into the loop
            log.warning(failed, **fields, error=str(e))

    async def finish(self, pick: Pick, request_id: str, tokens: int) -> None:
        """A call on a key with a concurrency or token cap (`pick.held`) ended: free its slot in
        flight and count its tokens in the key's minute."""
        await self._script(
            keys=[self._cooldown, self._revived, redisnames.pool_meta(self._prefix, pick.pool_id)],
            args=["finish", self._offset_ms, pick.key_id or "", request_id, max(0, tokens)],
        )

    def spend_later(self, day: str, token_id: str, micro_usd: int) -> None:
        """Add a committed call's estimated cost to its token's spend on `day` (the pick's), in
        the background like `finish_later`: only for a token with a daily budget."""
        if micro_usd > 0:
            self._background(self._spend(day, token_id, micro_usd), "balancer_spend_failed", token_id=token_id)

    async def _spend(self, day: str, token_id: str, micro_usd: int) -> None:
        await self._script(
            keys=[redisnames.token_spend(self._prefix, day)], args=["spend", self._offset_ms, token_id, micro_usd]
        )

    async def end_stream(self, user_id: str, request_id: str) -> None:
        await self._script(
            keys=[redisnames.user_streams(self._prefix, user_id)], args=["end_stream", self._offset_ms, request_id]
        )

    async def ping(self) -> None:
        """Can the script run where its keys live, as requests run it (on a master: the line's ROLE)?"""
        await (self._line or self._redis).ping()
        await self._read(self._cooldown, ["~ready"])

    async def _read(self, key: str, fields: Sequence[str] = ()) -> tuple[int, list[Any]]:
        """A hash (or some of its fields) and Redis' now, read together."""
        now, values = await self._script(keys=[key], args=["read", self._offset_ms, *fields])
        return int(now), list(values)

    async def usage_today(self, key_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Reservations per key on Redis' today (calls in flight included). With `key_ids`, every
        one of them is in the answer; without, only keys used today."""
        if key_ids is not None and not key_ids:
            return {}
        now = self.guess_now()
        for _ in range(CLOCK_TRIES):
            day = self._day_at(now)
            now, values = await self._read(redisnames.counts(self._prefix, day.name), key_ids or ())
            if day.start_ms <= now < day.end_ms:
                if key_ids is None:  # "~seeded" is the hash's, not a key's
                    pairs = zip(values[::2], values[1::2], strict=True)
                    return {text(k): int(v) for k, v in pairs if not text(k).startswith("~")}
                return {k: int(v or 0) for k, v in zip(key_ids, values, strict=True)}
            self._learn_clock(now)
        raise RuntimeError("balancer: Redis' clock kept leaving the day the keys were named for")


BALANCER: web.AppKey[Balancer] = web.AppKey("balancer", Balancer)
