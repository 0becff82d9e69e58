"""What the admins' tables share (`/api/models/aliases`, `/api/prices`): the admin check, and
replacing a table whole, then telling every gateway process.

The change is written in one transaction, this process reloads at once, and an event tells the
others; if Redis is away they pick it up at their next periodic reload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN, ApiError
from gateway.net import events
from gateway.web.api.keys_api import owner


async def require_admin(request: web.Request, refusal: str) -> None:
    caller = await owner(request)
    if not caller.is_admin:
        raise ApiError(403, "forbidden", refusal)


async def replace_table(
    app: web.Application,
    *,
    table: str,
    insert: str,
    rows: Iterable[tuple[Any, ...]],
    reload: Callable[[], Awaitable[None]],
    event: str,
    what: str,
) -> None:
    """Replace every row of `table` (a constant of the caller) with `rows`, by `insert`."""
    try:
        async with app[appkeys.pg].acquire() as conn, conn.transaction():
            await conn.execute(f"DELETE FROM {table}")
            await conn.executemany(insert, list(rows))
    except POSTGRES_DOWN:
        raise ApiError(503, "unavailable", f"The gateway cannot store {what} right now; try again shortly.") from None
    await reload()  # this process at once; the others on the event
    try:
        await events.publish(app[appkeys.redis], app[appkeys.config].redis.key_prefix, event)
    except REDIS_DOWN:
        pass  # the other processes pick it up at their next periodic reload
