"""One pipelined connection to Redis (`RedisConnection`): calls written in order, those of one turn
of the event loop in one write, and replies matched to them in the order Redis sends them.

A watchdog per connection (not a timer per call) fails every call in flight once the oldest reply
is `timeout` late; a connection that has sent nothing for `idle` seconds sends a PING, so a dead
one is found before a request meets it. `retire()` closes it once its calls in flight are
answered (a line that moved to another node); `abort()` fails them all at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import Any

import redis.exceptions

from gateway.net.resp import PING, Incomplete, parse

IDLE_SECONDS = 5.0  # a line quiet this long pings Redis


class RedisConnection(asyncio.Protocol):
    """One connection: calls written in order, replies matched to them in order."""

    def __init__(self, timeout: float, idle: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buf = b""
        self._out: list[bytes] = []  # calls not yet written (see _flush)
        self.timeout = timeout
        self.idle = idle
        self.lost = False
        self.retired = False  # left for another node: closes once its calls in flight are answered
        self.last_write = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._watch: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if self.idle > 0:
            self._idle_timer = self._loop.call_later(self.idle, self._idle_check)

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self.lost or self.transport is None:
            fut.set_exception(redis.exceptions.ConnectionError("connection to Redis lost"))
            return fut
        now = self.last_write = time.monotonic()
        self.pending.append((fut, now))
        if not self._out:  # calls made in one turn of the loop go out in one write
            self._loop.call_soon(self._flush)
        self._out.append(payload)
        if self._watch is None:
            self._watch = self._loop.call_later(self.timeout, self._check)
        return fut

    def _flush(self) -> None:
        out, self._out = self._out, []
        if not self.lost and self.transport is not None:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def _check(self) -> None:
        """Replies come in order: if the oldest is overdue, the connection is stuck."""
        self._watch = None
        if not self.pending:
            return
        age = time.monotonic() - self.pending[0][1]
        if age >= self.timeout:
            self.abort(redis.exceptions.TimeoutError("Redis did not answer in time"))
            return
        self._watch = self._loop.call_later(self.timeout - age, self._check)

    def _idle_check(self) -> None:
        """A quiet line pings, and the watchdog then finds a dead connection within `timeout`."""
        self._idle_timer = None
        if self.lost:
            return
        quiet = time.monotonic() - self.last_write
        if quiet >= self.idle and not self.pending:
            self.send(PING).add_done_callback(ignore)
            quiet = 0.0
        self._idle_timer = self._loop.call_later(max(0.01, self.idle - quiet), self._idle_check)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        try:
            while pos < len(buf):
                value, pos = parse(buf, pos)
                fut, _ = self.pending.popleft()
                if not fut.done():
                    if isinstance(value, Exception):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except Incomplete:
            pass
        except IndexError:  # a reply nobody asked for: the stream is out of step
            self.abort(redis.exceptions.InvalidResponse("unexpected reply from Redis"))
            return
        self.buf = buf[pos:]
        if self.retired and not self.pending:
            self.close()

    def retire(self) -> None:
        self.retired = True
        if not self.pending:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.fail(redis.exceptions.ConnectionError("the Redis line moved on"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis.exceptions.ConnectionError("connection to Redis lost"))

    def abort(self, error: Exception) -> None:
        self.fail(error)
        if self.transport is not None:
            self.transport.abort()

    def fail(self, error: Exception) -> None:
        self.lost = True
        for timer in (self._watch, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self._watch = self._idle_timer = None
        while self.pending:
            fut, _ = self.pending.popleft()
            if not fut.done():
                fut.set_exception(error)


def ignore(fut: asyncio.Future[Any]) -> None:
    """Mark a failure nobody awaits as seen (an idle PING's, a set-up reply after an earlier refusal):
    the connection has already failed because of it, or will."""
    if not fut.cancelled():
        fut.exception()
