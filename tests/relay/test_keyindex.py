"""The key index follows a change of one key by reloading that key alone."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from gateway import config as config_mod
from gateway.relay import keyindex
from gateway.relay.keyindex import KeyIndex
from gateway.store.crypto import KeyRing
from tests.support.seed import add_key, user_with_token


async def test_one_key_changed_rebuilds_only_what_it_touches(pool: asyncpg.Pool, config: config_mod.Config) -> None:
    donor, _ = await user_with_token(pool, "donor")
    a = await add_key(pool, config, donor, "https://a.example.com/v1", name="a", models=["m1", "shared"])
    b = await add_key(pool, config, donor, "https://b.example.com/v1", name="b", models=["m2", "shared"])
    index = KeyIndex(pool, KeyRing(config.security.key_encryption_secret))
    await index.reload()
    untouched = index.pool("m2")
    before = index.snapshot
    assert sorted(k.id for k in index.pooled("shared")) == sorted([a.id, b.id])

    async with pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET available_models = '{m3,shared}' WHERE id = $1::uuid", a.id)
    await index.reload_keys([a.id])
    assert index.snapshot is not before
    assert index.pooled("m1") == [] and [k.id for k in index.pooled("m3")] == [a.id]
    assert sorted(k.id for k in index.pooled("shared")) == sorted([a.id, b.id])
    assert index.pool("m2") is untouched, "a model the change does not touch keeps its balancer pool"
    assert index.pooled("m2") is before.pooled["m2"]

    async with pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET is_active = false WHERE id = $1::uuid", a.id)
    await index.reload_keys([a.id])
    assert index.get(a.id) is None and index.pooled("m3") == [] and [k.id for k in index.pooled("shared")] == [b.id]
    assert sorted(index.models()) == ["m2", "shared"]


async def test_a_change_under_an_alias_rebuilds_the_aliases(pool: asyncpg.Pool, config: config_mod.Config) -> None:
    donor, _ = await user_with_token(pool, "donor")
    a = await add_key(pool, config, donor, "https://a.example.com/v1", name="a", models=["target-1"])
    index = KeyIndex(pool, KeyRing(config.security.key_encryption_secret), {"alias": ("target-1", "target-2")})
    await index.reload()
    assert [k.id for k in index.pooled("alias")] == [a.id]
    b = await add_key(pool, config, donor, "https://b.example.com/v1", name="b", models=["target-2=up-2"])
    await index.reload_keys([b.id])
    assert sorted(k.id for k in index.pooled("alias")) == sorted([a.id, b.id])
    assert index.upstream_model("alias", index.get(b.id)) == "up-2"  # type: ignore[arg-type]


async def test_a_reload_that_started_earlier_never_overwrites_a_newer_one(
    pool: asyncpg.Pool, config: config_mod.Config, monkeypatch: pytest.MonkeyPatch
) -> None:
    donor, _ = await user_with_token(pool, "donor")
    index = KeyIndex(pool, KeyRing(config.security.key_encryption_secret))
    real_load = keyindex.load
    hold = asyncio.Event()

    async def slow_then_real(*args: Any, **kw: Any) -> Any:
        keys = await real_load(*args, **kw)
        if not hold.is_set():
            hold.set()
            await asyncio.sleep(0.2)  # read before the key existed, answers after the newer reload
        return keys

    monkeypatch.setattr(keyindex, "load", slow_then_real)
    stale = asyncio.create_task(index.reload())
    await hold.wait()
    key = await add_key(pool, config, donor, "https://a.example.com/v1", name="a", models=["m"])
    await index.reload()
    await stale
    assert [k.id for k in index.pooled("m")] == [key.id], "the older reload's snapshot was not applied"
    assert index._dirty.is_set() and index._everything, "and it is asked for again"
