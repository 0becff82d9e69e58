"""`sharekey rotate-secret`: re-seal every donor key under the newest secret of the key ring.

Rows are read in id order, a batch at a time; each batch is re-sealed in its own short
transaction, and each row only if its ciphertext is still the one that was read (an owner may
change a key meanwhile). Rows already under the current key id are never selected, so an
interrupted run loses nothing and a second run finishes the job. Gateways keep serving: every
ciphertext, old or new, opens under a ring that holds both secrets.

Each row's keyed fingerprint (`KeyRing.fingerprint`, derived from the secret like the sealing key)
is written again with its new ciphertext, so the duplicate check keeps working under the new
secret; a row stored before fingerprints existed (sql/0016) gets one here, re-sealed or not. A
fingerprint another row already holds (the same key stored twice before then) stays unset.

That is the one condition: every running gateway must already hold the new secret (as its
current one, the old ones kept in `old_key_encryption_secrets`), or it could not open what this
writes. Each gateway process therefore announces its ring's key ids in Redis (`jobs.announce_ring`),
and the command refuses to start while a live gateway lacks the new one.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field

import asyncpg
import redis.asyncio as aioredis
import structlog

from gateway.config import Config
from gateway.net import redisnames
from gateway.store.crypto import KeyRing, SealError
from gateway.store.sharedkeys import open_row

log = structlog.get_logger(__name__)

BATCH = 100
RING_EVERY = 10.0
RING_TTL_MS = 30_000


def ring_ids(config: Config) -> list[str]:
    """The key ids of this configuration's ring, the current one first."""
    secrets = (config.security.key_encryption_secret, *config.security.old_key_encryption_secrets)
    return [KeyRing(s).current_kid for s in secrets if s]


async def _redis_ms(client: aioredis.Redis) -> int:
    seconds, micros = await client.time()
    return int(seconds) * 1000 + int(micros) // 1000


async def gateways_without(client: aioredis.Redis, prefix: str, kid: str) -> list[str]:
    """Live gateway processes whose ring lacks `kid`; forgets the announcements that expired."""
    now = await _redis_ms(client)
    missing, stale = [], []
    for member, value in (await client.hgetall(redisnames.keyrings(prefix))).items():
        expires, _, kids = value.decode().partition(" ")
        if int(expires) < now:
            stale.append(member)
        elif kid not in kids.split(","):
            missing.append(member.decode())
    if stale:
        await client.hdel(redisnames.keyrings(prefix), *stale)
    return sorted(missing)


SELECT_STALE = """
SELECT id, user_id, base_url, api_key_encrypted FROM shared_keys
WHERE id > $1 AND (split_part(api_key_encrypted, ':', 1) <> $2 OR key_fingerprint IS NULL)
ORDER BY id LIMIT $3
"""

RESEAL = """
UPDATE shared_keys SET api_key_encrypted = $2, key_version = $3, key_fingerprint = $5
WHERE id = $1 AND api_key_encrypted = $4
"""

COUNT_CURRENT = """
SELECT count(*) FILTER (WHERE split_part(api_key_encrypted, ':', 1) = $1), count(*) FROM shared_keys
"""


@dataclass(slots=True)
class Rotation:
    kid: str
    resealed: int = 0
    fingerprinted: int = 0  # rows already under `kid` that got their first fingerprint
    unopenable: list[str] = field(default_factory=list)  # row ids whose ciphertext no secret opens
    current: int = 0  # rows under `kid` at the end
    total: int = 0


async def rotate(conn: asyncpg.Connection, ring: KeyRing, *, batch: int = BATCH, pause: float = 0.0) -> Rotation:
    """Re-seal every row not under the ring's current key id. Safe to interrupt and run again."""
    done = Rotation(ring.current_kid)
    after = uuid.UUID(int=0)
    while rows := await conn.fetch(SELECT_STALE, after, ring.current_kid, batch):
        after = rows[-1]["id"]
        updates = []
        for r in rows:
            key_id, owner_id = str(r["id"]), str(r["user_id"])
            try:
                plain = open_row(ring, r)
            except SealError as e:
                log.error("key_unsealable", key_id=key_id, reason=str(e))
                done.unopenable.append(key_id)
                continue
            current = not ring.needs_rotation(r["api_key_encrypted"])
            sealed = (
                r["api_key_encrypted"]
                if current
                else ring.seal(plain, key_id=key_id, owner_id=owner_id, base_url=r["base_url"])
            )
            updates.append(
                (current, (r["id"], sealed, ring.current_kid, r["api_key_encrypted"], ring.fingerprint(plain)))
            )
        async with conn.transaction():
            for current, update in updates:
                if await _reseal(conn, update, current=current):
                    if current:
                        done.fingerprinted += 1
                    else:
                        done.resealed += 1
        log.info("keys_resealed", batch=len(updates), resealed=done.resealed)
        if pause:
            await asyncio.sleep(pause)
    done.current, done.total = await conn.fetchrow(COUNT_CURRENT, ring.current_kid)
    return done


async def _reseal(conn: asyncpg.Connection, update: tuple[object, ...], *, current: bool) -> bool:
    """One row, in a savepoint: a fingerprint another row holds leaves this one's unset (and a
    row already under the current secret as it was)."""
    try:
        async with conn.transaction():
            return bool(await conn.execute(RESEAL, *update) == "UPDATE 1")
    except asyncpg.UniqueViolationError:
        log.warning("key_fingerprint_duplicate", key_id=str(update[0]))
        return not current and await conn.execute(RESEAL, *update[:4], None) == "UPDATE 1"
