"""How far each key is into its donor's caps right now, read for its owner's `/keys` page.

    await in_use(redis, prefix, {key_id: models with a daily limit}, now_ms=…, day=…)
        -> {key_id: CapUsage}, in ONE pipelined round trip for every key of the page

The balancer's script keeps the caps (`lua/prelude.lua`, KEY LAYOUT: `kwin:`, `kfly:`, `ktok:`,
`mcounts:<day>`) and trims their windows only when it picks; this reads them without writing,
counting as the pick counts: a start in `kwin` within the last 60 s (score > now − 60 s), a lease
in `kfly` not yet run out (score > now), the tokens of `ktok` entries that ended within the last
60 s (not `ktoksum`, which still holds entries no pick has trimmed yet), and the key's count per
model today in `mcounts:<day>` ("<key_id>|<model>"). `now_ms` and `day` are the balancer's guess of
Redis' clock (`Balancer.guess_now`, `Balancer.today`): this is for display; picks decide on TIME.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.net import redisnames

WINDOW_MS = 60_000  # rpm_limit and tpm_limit count the last 60 seconds (MINUTE_MS in the script)


@dataclass(frozen=True, slots=True)
class CapUsage:
    started: int = 0  # calls started in the last 60 s (against rpm_limit)
    in_flight: int = 0  # calls in flight (against max_concurrent)
    tokens: int = 0  # tokens of the calls that ended in the last 60 s (against tpm_limit)
    today: dict[str, int] = field(default_factory=dict)  # calls today per model (model_daily_limits)


def capped(rules: Mapping[str, Any]) -> bool:
    """Whether a key's rules (`SharedKey.rules`) set a cap the balancer keeps state for."""
    return bool(rules["rpm_limit"] or rules["tpm_limit"] or rules["max_concurrent"] or rules["model_daily_limits"])


def _tokens(members: Sequence[Any]) -> int:
    """The sum of `ktok` members, "<request_id> <tokens>"."""
    total = 0
    for member in members:
        text = member.decode() if isinstance(member, bytes) else str(member)
        tail = text.rpartition(" ")[2]
        total += int(tail) if tail.isdigit() else 0
    return total


async def in_use(
    redis: Any, prefix: str, keys: Mapping[str, Sequence[str]], *, now_ms: int, day: str
) -> dict[str, CapUsage]:
    """`keys`: key_id -> the models it has a daily limit for (may be empty). Read only."""
    if not keys:
        return {}
    since, counts = f"({now_ms - WINDOW_MS}", redisnames.model_counts(prefix, day)
    async with redis.pipeline(transaction=False) as pipe:
        for key_id, models in keys.items():
            pipe.zcount(redisnames.key_window(prefix, key_id), since, "+inf")
            pipe.zcount(redisnames.key_in_flight(prefix, key_id), f"({now_ms}", "+inf")
            pipe.zrangebyscore(redisnames.key_tokens(prefix, key_id), since, "+inf")
            if models:
                pipe.hmget(counts, [f"{key_id}|{model}" for model in models])
        replies = iter(await pipe.execute())
    usage = {}
    for key_id, models in keys.items():
        started, in_flight, tokens = int(next(replies)), int(next(replies)), _tokens(next(replies))
        today = {m: int(n or 0) for m, n in zip(models, next(replies), strict=True)} if models else {}
        usage[key_id] = CapUsage(started, in_flight, tokens, today)
    return usage
