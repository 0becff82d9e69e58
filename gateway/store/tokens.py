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
from dataclasses import dataclass

import asyncpg
import structlog

from gateway.errors import POSTGRES_DOWN

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
class Caller:
    """Who a valid gateway token belongs to."""

    token_id: str
    user_id: str
    username: str
    trust_level: int
    is_admin: bool


LOOKUP_TOKEN = """
SELECT t.id AS token_id, u.id AS user_id, u.username, u.trust_level, u.is_admin
FROM api_tokens t JOIN users u ON u.id = t.user_id
WHERE t.token_hash = $1 AND t.revoked_at IS NULL
"""

TOUCH_TOKENS = "UPDATE api_tokens SET last_used_at = now() WHERE id = ANY($1::uuid[])"


class TokenCache:
    """SHA-256 of the token -> Caller, with expiry; misses (unknown tokens) are cached briefly too.

    Steady state costs no database round trip. Revocation and user changes arrive as `token` /
    `user` events and drop entries at once; the TTL is only a safety net. `last_used_at` is
    written in batches, not per request. While PostgreSQL is down an expired entry for a known
    token keeps serving; an unknown token cannot be checked and the caller gets 503.
    """

    def __init__(self, pool: asyncpg.Pool, *, ttl: float = 300.0, miss_ttl: float = 10.0, max_entries: int = 100_000):
        self._pool = pool
        self._ttl, self._miss_ttl, self._max = ttl, miss_ttl, max_entries
        self._entries: dict[bytes, tuple[float, Caller | None]] = {}
        self._used: set[str] = set()

    async def lookup(self, token: str) -> Caller | None:
        digest = token_hash(token)
        now = time.monotonic()
        entry = self._entries.get(digest)
        if entry is None or entry[0] < now:
            if not well_formed(token):  # checked on a miss only: a cached token was well formed
                return None
            entry = await self._refresh(digest, now, entry)
        caller = entry[1]
        if caller is not None:
            self._used.add(caller.token_id)
        return caller

    async def _refresh(
        self, digest: bytes, now: float, stale: tuple[float, Caller | None] | None
    ) -> tuple[float, Caller | None]:
        try:
            async with self._pool.acquire() as conn:
                row = await conn.fetchrow(LOOKUP_TOKEN, digest)
        except POSTGRES_DOWN:
            if stale is None or stale[1] is None:
                raise
            # PostgreSQL is away: a token it knew keeps working (revoking one needs PostgreSQL
            # too) and is asked about again a little later, not on every request.
            log.warning("token_served_from_stale_cache", token_id=stale[1].token_id)
            entry = self._entries[digest] = (now + self._miss_ttl, stale[1])
            return entry
        caller = (
            Caller(str(row["token_id"]), str(row["user_id"]), row["username"], row["trust_level"], row["is_admin"])
            if row
            else None
        )
        if len(self._entries) >= self._max:
            self._entries.clear()  # crude but bounded; a refill costs one query per active token
        entry = self._entries[digest] = (now + (self._ttl if caller else self._miss_ttl), caller)
        return entry

    def drop_token(self, digest_hex: str) -> None:
        try:
            self._entries.pop(bytes.fromhex(digest_hex), None)
        except ValueError:
            pass

    def drop_user(self, user_id: str) -> None:
        for digest, (_, caller) in list(self._entries.items()):
            if caller is not None and caller.user_id == user_id:
                del self._entries[digest]

    def clear(self) -> None:
        self._entries.clear()

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
