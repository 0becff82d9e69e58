"""The thanks board's cache: one snapshot per process, rebuilt at most every `TTL_SECONDS` from one
query (`snapshot.fetch`) and the balancer's live state, served stale while its successor is built.
"""

from __future__ import annotations

import asyncio
import time
from datetime import date

import asyncpg
import structlog
from aiohttp import web

from gateway.config import LinuxDo
from gateway.errors import POSTGRES_DOWN
from gateway.relay.balancer import Balancer
from gateway.relay.keyindex import KeyIndex
from gateway.web.board import snapshot
from gateway.web.board.snapshot import LIVE_STATE_ERRORS, RETRY_SECONDS, TTL_SECONDS, BoardUnavailable, Live, Snapshot

log = structlog.get_logger(__name__)


class Board:
    def __init__(
        self, pool: asyncpg.Pool, balancer: Balancer, index: KeyIndex, avatars: LinuxDo, *, ttl: float = TTL_SECONDS
    ) -> None:
        self._pool, self._balancer, self._index, self._avatars = pool, balancer, index, avatars
        self.ttl = ttl
        self._snapshot: Snapshot | None = None
        self._live = Live({}, frozenset())
        self._fresh_until = 0.0
        self._task: asyncio.Task[Snapshot] | None = None

    async def get(self) -> Snapshot:
        """The current snapshot. Once there is one, nobody waits: an expired snapshot is served
        while its successor is built in the background."""
        current = self._snapshot
        now = time.monotonic()
        if current is not None and now < self._fresh_until:
            return current
        if current is None and now < self._fresh_until:
            raise BoardUnavailable("the last refresh failed; retrying shortly")
        task = self._task
        if task is None:
            task = self._task = asyncio.create_task(self._refresh())
            task.add_done_callback(_retrieve)
        if current is not None:
            return current
        return await asyncio.shield(task)

    async def refresh(self) -> Snapshot:
        """A snapshot built after this call (waits for the refresh in flight, then another)."""
        while self._task is not None:
            await asyncio.shield(self._task)
        task = self._task = asyncio.create_task(self._refresh())
        task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    def invalidate(self) -> None:
        """The next reader starts a refresh (and is itself served the current snapshot)."""
        self._fresh_until = 0.0

    async def _refresh(self) -> Snapshot:
        try:
            today = date.fromisoformat(self._balancer.today())
            try:
                rows = await snapshot.fetch(self._pool, today)
            except POSTGRES_DOWN as e:
                self._fresh_until = time.monotonic() + RETRY_SECONDS
                log.warning("board_refresh_failed", error=str(e))
                if self._snapshot is None:
                    raise BoardUnavailable(str(e)) from None
                return self._snapshot
            pooled = [k for k in self._index.snapshot.by_id.values() if not k.is_private]
            try:
                self._live = await snapshot.live_state(self._balancer, pooled)
            except LIVE_STATE_ERRORS as e:  # capacity and cooldowns as last seen; the counts are current
                log.warning("board_live_state_unavailable", error=str(e))
            built = snapshot.build(today, rows, pooled, self._live, self._avatars)
            self._snapshot = built
            self._fresh_until = time.monotonic() + self.ttl
            return built
        finally:
            self._task = None

    async def close(self) -> None:
        task = self._task
        if task is not None:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, BoardUnavailable):
                pass


def _retrieve(task: asyncio.Task[Snapshot]) -> None:
    """A refresh nobody awaited any more (its readers went away) must not log 'never retrieved'."""
    if not task.cancelled():
        task.exception()


BOARD: web.AppKey[Board] = web.AppKey("board", Board)
