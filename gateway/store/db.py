"""PostgreSQL: the pool's cleanup context and the migration runner.

Migrations are the numbered files in `sql/`, applied in order, each in its own transaction and
recorded in `schema_migrations`. An advisory lock makes concurrent `migrate` runs (several
processes starting at once) wait for each other instead of racing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import structlog

from gateway.resources import data_dir

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 0x5348_4B59  # "SHKY": pg_advisory_xact_lock key for migrations

CREATE_MIGRATIONS_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    path: Path


def migrations(sql_dir: Path | None = None) -> list[Migration]:
    found = []
    sql_dir = sql_dir or data_dir("sql")
    for path in sorted(sql_dir.glob("*.sql")):
        m = re.fullmatch(r"(\d{4})_(\w+)\.sql", path.name)
        if m:
            found.append(Migration(int(m[1]), m[2], path))
    return found


async def migrate(conn: asyncpg.Connection, sql_dir: Path | None = None) -> list[Migration]:
    """Apply the migrations not yet recorded; returns those applied now."""
    applied_now = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await conn.execute(CREATE_MIGRATIONS_TABLE)
    for migration in migrations(sql_dir):
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            done = await conn.fetchval("SELECT 1 FROM schema_migrations WHERE version = $1", migration.version)
            if done:
                continue
            await conn.execute(migration.path.read_text())
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", migration.version, migration.name
            )
            log.info("migration_applied", version=migration.version, name=migration.name)
            applied_now.append(migration)
    return applied_now


def create_pool(url: str, *, statement_cache_size: int = 100, **kwargs: object) -> asyncpg.Pool:
    """The gateway's pool. `statement_cache_size` 0 (`database.statement_cache_size`) behind a
    pooler in transaction mode: asyncpg then keeps no named prepared statement on a connection."""
    return asyncpg.create_pool(  # type: ignore[call-overload]
        url, min_size=1, max_size=10, command_timeout=30, statement_cache_size=statement_cache_size, **kwargs
    )


async def connect(url: str, *, statement_cache_size: int = 100) -> asyncpg.Connection:
    """One connection for a command (migrate, users add, …), with the same statement cache rule."""
    return await asyncpg.connect(url, timeout=10, statement_cache_size=statement_cache_size)
