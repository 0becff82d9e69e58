"""Gateway tokens: what callers put in `Authorization: Bearer …`.

A token is `shk_` + 32 random base62 characters + a 6-character base62 CRC32 checksum of the rest,
so a mistyped or truncated token is rejected without a lookup, and a leaked one is easy to spot
by secret scanners. Only the SHA-256 of a token is stored; it is shown once, at creation.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from ipaddress import IPv4Network, IPv6Network
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from gateway.errors import POSTGRES_DOWN
from gateway.store.lookuplimit import LookupLimit

log = structlog.get_logger(__name__)

PREFIX = "shk_"
BODY_LEN = 32
CHECK_LEN = 6
TOKEN_LEN = len(PREFIX) + BODY_LEN + CHECK_LEN
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _base62(n: int, width: int) -> str:
    out = []
    for _ in range(width):
        n, r = divmod(n, 62)
        out.append(BASE62[r])
    return "".join(reversed(out))


def _checksum(text: str) -> str:
    return _base62(zlib.crc32(text.encode()), CHECK_LEN)


def generate() -> str:
    body = "".join(secrets.choice(BASE62) for _ in range(BODY_LEN))
    return PREFIX + body + _checksum(PREFIX + body)


def well_formed(token: str) -> bool:
    if len(token) != TOKEN_LEN or not token.startswith(PREFIX):
        return False
    head, check = token[:-CHECK_LEN], token[-CHECK_LEN:]
    if any(c not in BASE62 for c in token[len(PREFIX) :]):
        return False
    return secrets.compare_digest(_checksum(head), check)


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def hint(token: str) -> str:
    return f"{PREFIX}…{token[-4:]}"


INSERT_TOKEN = """
INSERT INTO api_tokens (user_id, label, token_hash, token_hint)
VALUES ($1, $2, $3, $4)
RETURNING id
"""


async def create(conn: asyncpg.Connection, user_id: str, label: str = "") -> tuple[str, str]:
    """Create a token for the user; returns (token, token row id). The token is not kept."""
    token = generate()
    token_id = await conn.fetchval(INSERT_TOKEN, uuid.UUID(user_id), label, token_hash(token), hint(token))
    return token, str(token_id)


# --- the cached lookup on the hot path --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """What a token may do beyond its user's limits (sql/0017); empty or None: no such limit."""

    models: frozenset[str] = frozenset()  # public names and aliases; empty: every model
    expires_at: float | None = None  # epoch seconds
    daily_requests: int | None = None
    requests_per_minute: int | None = None
    daily_budget_usd: Decimal | None = None
    allowed_ips: tuple[IPv4Network | IPv6Network, ...] = ()

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Scope:
        expires = row["expires_at"]
        scope = cls(
            models=frozenset(row["models"] or ()),
            expires_at=expires.timestamp() if expires is not None else None,
            daily_requests=row["daily_requests"],
            requests_per_minute=row["requests_per_minute"],
            daily_budget_usd=row["daily_budget_usd"],
            allowed_ips=tuple(row["allowed_ips"] or ()),
        )
        return UNSCOPED if scope == UNSCOPED else scope


UNSCOPED = Scope()


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a valid gateway token belongs to, and what the token may do (`scope`)."""

    token_id: str
    user_id: str
    username: str
    trust_level: int
    is_admin: bool
    scope: Scope = UNSCOPED


LOOKUP_TOKEN = """
SELECT t.id AS token_id, u.id AS user_id, u.username, u.trust_level, u.is_admin,
       t.models, t.expires_at, t.daily_requests, t.requests_per_minute, t.daily_budget_usd, t.allowed_ips
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = $1 AND t.revoked_at IS NULL
"""

TOUCH_TOKENS = "UPDATE api_tokens SET last_used_at = now() WHERE id = ANY($1::uuid[])"


class TooManyLookups(Exception):
    """This client address has had too many unknown tokens looked up; `retry_after` in seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many look-ups of unknown tokens from this address")
        self.retry_after = retry_after


class TokenCache:
    """SHA-256 of the token -> Caller, with expiry; misses (unknown tokens) are cached briefly apart.

    Steady state costs no database round trip. Revocation and user changes arrive as `token` /
    `user` events and drop entries at once; the TTL is only a safety net. `last_used_at` is
    written in batches, not per request. While PostgreSQL is down an expired entry for a known
    token keeps serving; an unknown token cannot be checked and the caller gets 503.

    Known tokens and misses live in two LRUs: however many unknown tokens arrive, they only push
    out other misses, never a known token (which is then still known during an outage). A token in
    neither costs a query, so those look-ups are rate-limited per client address (`LookupLimit`):
    past it `lookup` raises `TooManyLookups` without asking PostgreSQL.
    """

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = 300.0,
        miss_ttl: float = 10.0,
        max_entries: int = 100_000,
        max_misses: int = 10_000,
        lookups_per_minute: int = 60,
    ):
        self._pool = pool
        self._ttl, self._miss_ttl, self._max, self._max_misses = ttl, miss_ttl, max_entries, max_misses
        self._known: OrderedDict[bytes, tuple[float, Caller]] = OrderedDict()  # least recently used first
        self._misses: OrderedDict[bytes, float] = OrderedDict()  # digest -> expiry, oldest first
        self._limit = LookupLimit(lookups_per_minute)
        self._used: set[str] = set()
        self._pending: dict[bytes, asyncio.Future[Caller | None]] = {}  # first look-ups in flight

    async def lookup(self, token: str, client: str | None = None) -> Caller | None:
        """The token's owner, or None; `client` is the caller's address, for the look-up limit.
        Raises `TooManyLookups`, or one of `POSTGRES_DOWN` for a token it cannot check."""
        digest = token_hash(token)
        now = time.monotonic()
        entry = self._known.get(digest)
        if entry is not None:
            self._known.move_to_end(digest)
            caller: Caller | None = entry[1]
            if entry[0] < now:
                caller = await self._refresh(digest, now, entry[1])
        else:
            expiry = self._misses.get(digest)
            if expiry is not None and expiry >= now:
                return None
            if not well_formed(token):  # checked on a miss only: a cached token was well formed
                return None
            pending = self._pending.get(digest)
            if pending is not None:  # the same token is being looked up already: one query for all
                return await asyncio.shield(pending)
            wait = self._limit.take(client, now)
            if wait > 0:
                raise TooManyLookups(wait)
            pending = self._pending[digest] = asyncio.ensure_future(self._first_lookup(digest, now))
            pending.add_done_callback(lambda _: self._pending.pop(digest, None))
            caller = await asyncio.shield(pending)
            if caller is not None:
                self._limit.give_back(client)  # a real token: the look-up was not a forger's
        if caller is not None:
            self._used.add(caller.token_id)
        return caller

    async def _first_lookup(self, digest: bytes, now: float) -> Caller | None:
        return self._store(digest, now, await self._query(digest))

    async def _query(self, digest: bytes) -> Caller | None:
        async with self._pool.acquire() as conn:
            row = await conn.fetchrow(LOOKUP_TOKEN, digest)
        if row is None:
            return None
        return Caller(
            str(row["token_id"]),
            str(row["user_id"]),
            row["username"],
            row["trust_level"],
            row["is_admin"],
            Scope.of_row(row),
        )

    async def _refresh(self, digest: bytes, now: float, stale: Caller) -> Caller | None:
        try:
            caller = await self._query(digest)
        except POSTGRES_DOWN:
            # PostgreSQL is away: a token it knew keeps working (revoking one needs PostgreSQL
            # too) and is asked about again a little later, not on every request.
            log.warning("token_served_from_stale_cache", token_id=stale.token_id)
            self._known[digest] = (now + self._miss_ttl, stale)
            return stale
        return self._store(digest, now, caller)

    def _store(self, digest: bytes, now: float, caller: Caller | None) -> Caller | None:
        if caller is None:
            self._known.pop(digest, None)
            self._misses.pop(digest, None)
            self._misses[digest] = now + self._miss_ttl
            while len(self._misses) > self._max_misses:
                self._misses.popitem(last=False)
        else:
            self._misses.pop(digest, None)
            self._known[digest] = (now + self._ttl, caller)
            self._known.move_to_end(digest)
            while len(self._known) > self._max:
                self._known.popitem(last=False)  # the least recently used: one query if it comes back
        return caller

    def drop_token(self, digest_hex: str) -> None:
        try:
            digest = bytes.fromhex(digest_hex)
        except ValueError:
            return
        self._known.pop(digest, None)
        self._misses.pop(digest, None)

    def drop_user(self, user_id: str) -> None:
        for digest, (_, caller) in list(self._known.items()):
            if caller.user_id == user_id:
                del self._known[digest]

    def clear(self) -> None:
        self._known.clear()
        self._misses.clear()

    async def touch(self) -> None:
        """Write last_used_at for the tokens used since the last call."""
        used, self._used = self._used, set()
        if used:
            async with self._pool.acquire() as conn:
                await conn.execute(TOUCH_TOKENS, [uuid.UUID(t) for t in used])


TOUCH_SECONDS = 60.0


async def touch_forever(cache: TokenCache) -> None:
    """Write the tokens' last-used times every `TOUCH_SECONDS` (see `TokenCache.touch`)."""
    while True:
        await asyncio.sleep(TOUCH_SECONDS)
        try:
            await cache.touch()
        except POSTGRES_DOWN as e:
            log.warning("token_touch_failed", error=str(e))


TOKEN_CACHE: web.AppKey[TokenCache] = web.AppKey("token_cache", TokenCache)
