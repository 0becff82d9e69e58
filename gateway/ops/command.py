"""Running one `sharekey` command: the error it may end with, and what several commands share.

`command(fn)` runs `fn` with a migrated PostgreSQL connection, the stores opened (or the
embedded servers started) around it. A `CliError` ends the command with one line on stderr and
exit code 1, a `UsageError` (an option's value refused) with exit code 2 (see `cli.main`).
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable

import asyncpg
import structlog

from gateway.config import Config
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.net import events, redisclient
from gateway.ops.stores import open_stores
from gateway.store import db, users

logger = structlog.get_logger(__name__)


class CliError(Exception):
    """A command failed for a reason the user can act on; printed as one line."""


class UsageError(CliError):
    """An option's value was refused (the message names the option): exit code 2, as argparse's
    own usage errors."""


Runner = Callable[[Config, argparse.Namespace, asyncpg.Connection], Awaitable[int | None]]


def command(fn: Runner) -> Callable[[Config, argparse.Namespace], int]:
    """Run `fn` with a migrated database connection, the stores opened (or embedded) around it."""

    def run(config: Config, args: argparse.Namespace) -> int:
        config, emb = open_stores(config)
        try:
            return asyncio.run(_with_connection(config, args, fn)) or 0
        finally:
            if emb is not None:
                emb.stop()

    return run


async def _with_connection(config: Config, args: argparse.Namespace, fn: Runner) -> int | None:
    conn = await connect(config)
    try:
        await db.migrate(conn)
        return await fn(config, args, conn)
    finally:
        await conn.close()


async def connect(config: Config) -> asyncpg.Connection:
    try:
        return await db.connect(config.database.url, statement_cache_size=config.database.statement_cache_size)
    except POSTGRES_DOWN as e:
        raise CliError(f"cannot connect to PostgreSQL: {reason(e)}") from None


def reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0]


async def find_user(conn: asyncpg.Connection, name: str) -> users.User:
    user = await users.get_by_username(conn, name)
    if user is None:
        raise CliError(f"no user named {name!r} (add one with: sharekey users add {name})")
    return user


async def announce(config: Config, kind: str, arg: str = "") -> None:
    """Tell running gateways to reload what changed; they also reload on their own every 30 s."""
    client = redisclient.client(config.redis, timeout=5)
    try:
        await events.publish(client, config.redis.key_prefix, kind, arg)
    except REDIS_DOWN as e:
        logger.warning("announce_failed", kind=kind, error=reason(e))
    finally:
        await redisclient.close(client)
