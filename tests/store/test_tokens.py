"""Gateway tokens: format, checksum, hashing; the cache through a PostgreSQL outage."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.store import tokens
from gateway.store.tokens import TokenCache
from tests.support.seed import user_with_token


def test_generated_tokens_are_well_formed_and_distinct() -> None:
    made = {tokens.generate() for _ in range(200)}
    assert len(made) == 200
    for t in made:
        assert t.startswith("shk_") and len(t) == tokens.TOKEN_LEN
        assert tokens.well_formed(t)


def test_a_typo_fails_the_checksum() -> None:
    t = tokens.generate()
    i = len(tokens.PREFIX) + 5
    typo = t[:i] + ("A" if t[i] != "A" else "B") + t[i + 1 :]
    assert not tokens.well_formed(typo)
    assert not tokens.well_formed(t[:-1])
    assert not tokens.well_formed("sk-" + t[3:])
    assert not tokens.well_formed(t[:-3] + "é!x")
    assert not tokens.well_formed("")


def test_hash_and_hint_do_not_reveal_the_token() -> None:
    t = tokens.generate()
    assert len(tokens.token_hash(t)) == 32
    assert tokens.hint(t) == "shk_…" + t[-4:]
    assert t[4:-4] not in tokens.hint(t)


async def test_a_known_token_outlives_its_cache_entry_while_postgresql_is_down(
    config: config_mod.Config, pool: asyncpg.Pool
) -> None:
    user, token = await user_with_token(pool, "alice")
    _, unseen = await user_with_token(pool, "bob")
    own = await asyncpg.create_pool(config.database.url, min_size=1, max_size=2)
    cache = TokenCache(own, ttl=0.0, miss_ttl=0.2)  # every entry is stale at once
    caller = await cache.lookup(token)
    assert caller is not None and caller.user_id == user.id
    await own.close()  # PostgreSQL is gone for this cache: every query now fails
    with capture_logs() as logs:
        again = await cache.lookup(token)
        assert again == caller
        assert await cache.lookup(token) == caller  # answered from the cache, no second attempt
    assert [e["event"] for e in logs] == ["token_served_from_stale_cache"]
    with pytest.raises(asyncpg.InterfaceError):
        await cache.lookup(unseen)  # never seen: cannot be checked (the proxy answers 503)
    await asyncio.sleep(0.25)
    with capture_logs() as logs:
        assert await cache.lookup(token) == caller  # asked again after a while, still away
    assert [e["event"] for e in logs] == ["token_served_from_stale_cache"]


async def test_a_burst_on_a_cold_cache_is_one_look_up(pool: asyncpg.Pool) -> None:
    """200 requests at once with a token not cached yet: one query, one slot of the address's
    look-up limit (which allows 1 here), and every one of them gets the caller."""
    user, token = await user_with_token(pool, "burst")
    cache = TokenCache(pool, lookups_per_minute=1)
    queries = 0
    real = cache._query

    async def counted(digest: bytes) -> tokens.Caller | None:
        nonlocal queries
        queries += 1
        await asyncio.sleep(0.05)  # a slow database: the others arrive meanwhile
        return await real(digest)

    cache._query = counted  # type: ignore[method-assign]
    callers = await asyncio.gather(*[cache.lookup(token, "10.0.0.1") for _ in range(200)])
    assert {c.user_id for c in callers if c is not None} == {user.id} and None not in callers
    assert queries == 1
    _, other_token = await user_with_token(pool, "burst2")
    assert (await cache.lookup(other_token, "10.0.0.1")) is not None, "the real token gave its slot back"
