"""Migrations: applied in order, recorded, idempotent; the original design's tables and columns."""

from __future__ import annotations

import asyncpg

from gateway.store import db


async def test_migrations_are_recorded_and_idempotent(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert await db.migrate(conn) == []  # the fixture applied them already
        versions = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in db.migrations()]


async def test_original_columns_exist_with_timestamptz(pool: asyncpg.Pool) -> None:
    expected = {
        "users": {"id", "linux_do_id", "username", "avatar_url", "email", "created_at", "updated_at"},
        "shared_keys": {
            "id",
            "user_id",
            "name",
            "base_url",
            "api_key_encrypted",
            "available_models",
            "daily_limit",
            "description",
            "tags",
            "is_active",
            "usage_count_today",
            "total_usage_count",
            "last_used_at",
            "created_at",
            "updated_at",
            "status",
            "status_reason",
            "last_error",
            "key_version",
        },
        "key_usage_logs": {
            "id",
            "shared_key_id",
            "user_id",
            "api_endpoint",
            "model_used",
            "tokens_used",
            "cost_estimate",
            "success",
            "error_message",
            "created_at",
            "status",
            "http_status",
            "attempt",
            "request_id",
        },
        "api_tokens": {"id", "user_id", "token_hash", "label", "created_at", "last_used_at", "revoked_at"},
    }
    async with pool.acquire() as conn:
        for table, columns in expected.items():
            rows = await conn.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = $1",
                table,
            )
            found = {r["column_name"]: r["data_type"] for r in rows}
            assert columns <= set(found), (table, columns - set(found))
            assert all(t != "timestamp without time zone" for t in found.values()), table
        default = await conn.fetchval(
            "SELECT column_default FROM information_schema.columns WHERE table_schema = current_schema() "
            "AND table_name = 'shared_keys' AND column_name = 'daily_limit'"
        )
        assert default == "150"
        indexes = {
            r["indexname"]
            for r in await conn.fetch("SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")
        }
        assert {
            "idx_shared_keys_active",
            "idx_shared_keys_user",
            "idx_usage_logs_key",
            "idx_usage_logs_user",
        } <= indexes


async def test_name_is_unique_per_owner(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        uid = await conn.fetchval("INSERT INTO users (username) VALUES ('alice') RETURNING id")
        insert = (
            "INSERT INTO shared_keys (user_id, name, base_url, api_key_encrypted, key_version, api_key_hint, "
            "available_models) VALUES ($1, 'k', 'https://x/v1', 'c', 'v', 'h', '{m}')"
        )
        await conn.execute(insert, uid)
        try:
            await conn.execute(insert, uid)
        except asyncpg.UniqueViolationError:
            pass
        else:
            raise AssertionError("UNIQUE(user_id, name) must hold")
