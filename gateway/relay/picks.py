"""What a pick is asked and what it answers: the candidates (a `Pool` prepared once per model),
the caller's limits, the conversation and response a request continues (`Affinity`), and the
`Pick` with its `PickOutcome`. Plain data: `balancer` turns them into one script call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from gateway.net import redisnames


@dataclass(frozen=True, slots=True)
class Candidate:
    key_id: str
    daily_limit: int
    # The donor's caps for this pool's model, as the script reads them after the daily limit:
    # "|<rpm>|<concurrent>|<tpm>|<model daily>|<model>" (0: none); "" for a key without caps.
    caps: str = ""

    @property
    def terms(self) -> str | int:
        return f"{int(self.daily_limit)}{self.caps}" if self.caps else int(self.daily_limit)


@dataclass(frozen=True, slots=True)
class Pool:
    """A candidate list prepared once (the key index keeps one per model and endpoint family): its
    id in Redis, its fingerprint, and the `init` arguments. A pick sends only the id and the
    fingerprint; the list itself goes to Redis once per pool per day, or when it changes."""

    pool_id: str
    fingerprint: str
    size: int
    pairs: tuple[str | int, ...]  # key_id, terms (daily limit and caps), ... sorted by key_id

    @classmethod
    def of(cls, candidates: Sequence[Candidate], name: str | None = None) -> Pool:
        """`name` (e.g. the model and endpoint family) gives the pool a stable id whatever its keys;
        without one, the id is the fingerprint (an ad-hoc list is a pool of its own)."""
        ordered = sorted({c.key_id: c.terms for c in candidates}.items())
        digest = hashlib.sha1("\n".join(f"{k}:{v}" for k, v in ordered).encode()).hexdigest()[:20]
        pool_id = "c" + digest if name is None else "m" + hashlib.sha1(name.encode()).hexdigest()[:20]
        return cls(pool_id, digest, len(ordered), tuple(v for pair in ordered for v in pair))


@dataclass(frozen=True, slots=True)
class UserLimits:
    daily: int  # requests per day, 0 = unlimited
    per_minute: int  # 0 = unlimited
    streams: int  # concurrent streams, 0 = unlimited


@dataclass(frozen=True, slots=True)
class TokenLimits:
    """The caps of the caller's gateway token (`store.tokens.Scope`), counted per token in the
    pick like the user's: requests today, requests this minute, and its estimated spend today
    (micro-USD, added after each committed call: see `Balancer.spend_later`). 0 = no such cap."""

    token_id: str
    daily: int = 0
    per_minute: int = 0
    budget_micro_usd: int = 0

    @property
    def any(self) -> bool:
        return bool(self.daily or self.per_minute or self.budget_micro_usd)


class PickOutcome(StrEnum):
    """What `pick()` decided; the script answers with these words (and "clock", handled inside)."""

    OK = "ok"  # a key was reserved
    EXHAUSTED = "exhausted"  # every candidate reached its daily limit
    COOLING = "cooling"  # every candidate not at its limit is cooling down
    BUSY = "busy"  # every candidate not spent is at a per-minute or concurrency cap, or cooling
    USER_DAILY = "user_daily"  # the caller's own limits, before any key is looked at
    USER_RPM = "user_rpm"
    USER_STREAMS = "user_streams"
    RESPONSE_NOT_FOUND = "response_not_found"  # previous_response_id names another user's response
    TOKEN_DAILY = "token_daily"  # the caller's token's caps (`TokenLimits`), after the user's
    TOKEN_RPM = "token_rpm"
    TOKEN_BUDGET = "token_budget"  # its estimated spend today reached its daily budget


# About the caller (its limits, its token's, another user's response): no key nor private
# fallback changes it.
USER_OUTCOMES = frozenset(
    {
        PickOutcome.USER_DAILY,
        PickOutcome.USER_RPM,
        PickOutcome.USER_STREAMS,
        PickOutcome.RESPONSE_NOT_FOUND,
        PickOutcome.TOKEN_DAILY,
        PickOutcome.TOKEN_RPM,
        PickOutcome.TOKEN_BUDGET,
    }
)


def digest(text: str) -> str:
    """A short, fixed-size name for a conversation or response id the caller chose (any length)."""
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


@dataclass(frozen=True, slots=True)
class Affinity:
    """What a request continues: a conversation (per user and model asked for) and/or a response
    (refused when it was made for another user: see `remember`)."""

    conversation: str | None  # the caller's conversation id + model, as given
    response: str | None  # previous_response_id
    conversation_ms: int  # how long the conversation keeps its key

    def keys(self, prefix: str, user_id: str) -> tuple[str, str]:
        unused = redisnames.conversation(prefix, "-")  # never set: GET finds nothing
        named = f"{user_id}\0{self.conversation}"
        conv = redisnames.conversation(prefix, digest(named)) if self.conversation else unused
        resp = redisnames.response(prefix, digest(self.response)) if self.response else unused
        return conv, resp


@dataclass(frozen=True, slots=True)
class Pick:
    outcome: PickOutcome
    key_id: str | None
    used_today: int  # the picked key's count after this reservation (with reserve=False: as it is)
    retry_after: int  # seconds; 0 when outcome is "ok"
    day: str  # YYYY-MM-DD in the configured time zone, by Redis time
    trial: bool  # the single trial request of a key coming out of failure cooldown
    pool_id: str = ""  # the pool it was picked from (its members' terms: see `release`, `finish`)
    held: bool = False  # the key has a concurrency or token cap: the call ends with `finish`
