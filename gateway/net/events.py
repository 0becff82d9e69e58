"""Cross-process cache invalidation over one Redis pub/sub channel.

Every gateway process keeps in-memory copies of what the hot path needs (the key index, the
token cache). When a process (or the CLI) changes the underlying rows it publishes a short event
— `keys`, `token <sha256 hex>`, `user <id>` — and every process drops or reloads what it holds.
A subscriber that loses its connection resubscribes and resynchronises everything, because
messages published while it was away are lost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
import structlog
from aiohttp import web

from gateway.errors import REDIS_DOWN
from gateway.net import redisnames

log = structlog.get_logger(__name__)

Handler = Callable[[str], Awaitable[None] | None]
RETRY_SECONDS = 1.0


async def publish(client: aioredis.Redis, prefix: str, kind: str, arg: str = "") -> None:
    await client.publish(redisnames.events(prefix), f"{kind} {arg}".strip())


class Bus:
    """Dispatches events to handlers by kind; `on_resync` handlers run after every (re)subscribe."""

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self._client = client
        self._channel = redisnames.events(prefix)
        self._handlers: dict[str, list[Handler]] = {}
        self._resync: list[Callable[[], Awaitable[None] | None]] = []
        self.subscribed = asyncio.Event()

    def on(self, kind: str, handler: Handler) -> None:
        self._handlers.setdefault(kind, []).append(handler)

    def on_resync(self, handler: Callable[[], Awaitable[None] | None]) -> None:
        """`handler()` after every (re)subscribe: what was missed while away is forgotten."""
        self._resync.append(handler)

    async def run(self) -> None:
        while True:
            try:
                await self._listen()
            except asyncio.CancelledError:
                raise
            except REDIS_DOWN as e:
                self.subscribed.clear()
                log.warning("events_disconnected", error=str(e))
                await asyncio.sleep(RETRY_SECONDS)

    async def _listen(self) -> None:
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self._channel)
            self.subscribed.set()
            for resync in self._resync:
                result = resync()
                if result is not None:
                    await _safely(result)
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                data = message["data"]
                text = data.decode() if isinstance(data, bytes) else str(data)
                kind, _, arg = text.partition(" ")
                for handler in self._handlers.get(kind, ()):
                    result = handler(arg)
                    if result is not None:
                        await _safely(result)
        finally:
            await pubsub.aclose()


async def _safely(awaitable: Awaitable[None]) -> None:
    try:
        await awaitable
    except Exception:
        log.exception("event_handler_failed")


BUS: web.AppKey[Bus] = web.AppKey("bus", Bus)
