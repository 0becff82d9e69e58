"""Test data through the real code paths: users, tokens and sealed keys."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg

from gateway import config as config_mod
from gateway.store import sharedkeys, tokens, users
from gateway.store.crypto import KeyRing


async def user_with_token(pool: asyncpg.Pool, name: str = "alice", **kw: object) -> tuple[users.User, str]:
    async with pool.acquire() as conn:
        user = await users.add_user(conn, name, **kw)  # type: ignore[arg-type]
        token, _ = await tokens.create(conn, user.id, "test")
    return user, token


async def add_key(
    pool: asyncpg.Pool,
    config: config_mod.Config,
    owner: users.User,
    base_url: str,
    *,
    name: str = "k1",
    api_key: str | None = None,  # None: a key of its own (the same key is never stored twice)
    models: list[str] | None = None,
    daily_limit: int = 150,
    private: bool = False,
    stream_usage: bool = True,
    api_format: str = "openai",
    rules: dict[str, Any] | None = None,  # the donor's rules (sql/0013 columns), e.g. {"rpm_limit": 5}
) -> sharedkeys.SharedKey:
    ring = KeyRing(config.security.key_encryption_secret)
    new = sharedkeys.NewKey(
        owner_id=owner.id,
        name=name,
        base_url=base_url,
        api_key=api_key or f"sk-test-donor-key-{uuid.uuid4().hex[:12]}",
        available_models=models or ["gpt-4o-mini", "text-embedding-3-small"],
        daily_limit=daily_limit,
        is_private=private,
        stream_usage=stream_usage,
        api_format=api_format,
    )
    async with pool.acquire() as conn:
        key = await sharedkeys.insert_key(conn, ring, new, timezone=config.balancer.timezone)
        for column, value in (rules or {}).items():
            value = json.dumps(value) if column == "model_daily_limits" else value
            await conn.execute(f"UPDATE shared_keys SET {column} = $1 WHERE id = $2", value, key.id)
        return key


SCOPE_COLUMNS = frozenset(
    {"models", "expires_at", "daily_requests", "requests_per_minute", "daily_budget_usd", "allowed_ips"}
)


async def scope_token(pool: asyncpg.Pool, token: str, **columns: object) -> None:
    """Set a token's scope columns (sql/0017) directly, as the tokens API will: e.g.
    `models=["gpt-4o-mini"]`, `allowed_ips=["127.0.0.1/32"]`, `expires_at=datetime`. Callers
    already cached keep their scope until the cache's ttl (or a `token` event)."""
    assert columns and set(columns) <= SCOPE_COLUMNS, columns
    names = sorted(columns)
    casts = {"allowed_ips": "::cidr[]", "models": "::text[]"}
    sets = ", ".join(f"{n} = ${i + 2}{casts.get(n, '')}" for i, n in enumerate(names))
    async with pool.acquire() as conn:
        done = await conn.execute(
            f"UPDATE api_tokens SET {sets} WHERE token_hash = $1",
            tokens.token_hash(token),
            *(columns[n] for n in names),
        )
    assert done == "UPDATE 1", done
