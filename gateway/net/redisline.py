"""A lean, pipelined Redis connection for the hot path's one script call per request.

redis-py spends about a quarter of the gateway's CPU per request on its command machinery
(connection pool, retry wrapper, argument encoding) around a single EVALSHA; see bench/. This
line writes each call straight onto one shared connection and matches replies to callers in
order, which Redis guarantees, so any number of requests in flight share one socket with no
pool and no locks. Everything else keeps using redis-py.

Failure is loud and fast. Every call answers or fails within `timeout` (connect, send, reply and
a NOSCRIPT reload together) with redis-py's ConnectionError / TimeoutError, so the proxy answers
503 (fail closed). The common case, a connected line, costs no timer of its own: one watchdog per
connection fails every call in flight once the oldest reply is late. Only a call that must wait
for a connection (or reload the script) sets a deadline of its own. A reconnect is one shared
task that every waiting call joins with its own deadline, so an outage costs each call at most
`timeout`, never one reconnect after another. A line that has sent nothing for `idle` seconds
sends a PING, so a dead connection is found before a request meets it.

The URL means what it means to redis-py: `parse_url` reads it, and TLS options
(`ssl_cert_reqs`, `ssl_ca_certs`, ...) become an SSL context through redis-py's own
`SSLConnection`/`RedisSSLContext`, so the line and the redis-py client never disagree.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.exceptions
from redis.asyncio.connection import RedisSSLContext, SSLConnection, parse_url

CRLF = b"\r\n"
PING = b"*1\r\n$4\r\nPING\r\n"
IDLE_SECONDS = 5.0  # a line quiet this long pings Redis


class _Incomplete(Exception):
    pass


def encode(args: list[bytes | str | int]) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def _parse(buf: bytes, pos: int) -> tuple[Any, int]:
    """One RESP2 value from buf at pos; raises _Incomplete when more bytes are needed."""
    end = buf.find(CRLF, pos)
    if end < 0:
        raise _Incomplete
    kind, line = buf[pos : pos + 1], buf[pos + 1 : end]
    pos = end + 2
    if kind == b":":
        return int(line), pos
    if kind == b"$":
        n = int(line)
        if n < 0:
            return None, pos
        if len(buf) < pos + n + 2:
            raise _Incomplete
        return buf[pos : pos + n], pos + n + 2
    if kind == b"*":
        n = int(line)
        if n < 0:
            return None, pos
        items = []
        for _ in range(n):
            item, pos = _parse(buf, pos)
            items.append(item)
        return items, pos
    if kind == b"+":
        return line, pos
    if kind == b"-":
        text = line.decode(errors="replace")
        cls = redis.exceptions.NoScriptError if text.startswith("NOSCRIPT") else redis.exceptions.ResponseError
        return cls(text), pos
    raise redis.exceptions.InvalidResponse(f"unexpected reply type {kind!r}")


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float, idle: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buf = b""
        self.timeout = timeout
        self.idle = idle
        self.lost = False
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
        self.transport.write(payload)
        if self._watch is None:
            self._watch = self._loop.call_later(self.timeout, self._check)
        return fut

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
            self.send(PING).add_done_callback(_ignore)
            quiet = 0.0
        self._idle_timer = self._loop.call_later(max(0.01, self.idle - quiet), self._idle_check)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        pos = 0
        try:
            while pos < len(buf):
                value, pos = _parse(buf, pos)
                fut, _ = self.pending.popleft()
                if not fut.done():
                    if isinstance(value, Exception):
                        fut.set_exception(value)
                    else:
                        fut.set_result(value)
        except _Incomplete:
            pass
        except IndexError:  # a reply nobody asked for: the stream is out of step
            self.abort(redis.exceptions.InvalidResponse("unexpected reply from Redis"))
            return
        self.buf = buf[pos:]

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


def _ignore(fut: asyncio.Future[Any]) -> None:
    """Mark a failure nobody awaits as seen (an idle PING's, a set-up reply after an earlier refusal):
    the connection has already failed because of it, or will."""
    if not fut.cancelled():
        fut.exception()


def tls_options_without_tls(url: str) -> list[str]:
    """The `ssl_*` options of a URL that connects without TLS (`redis://`, `unix://`). redis-py
    would refuse them at its first connection and this line ignores them: either way no TLS, which
    the operator who wrote them most likely meant to have (`rediss://`). Names only, never values."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "rediss":
        return []
    return sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k.startswith("ssl_")})


def without_tls_options(url: str) -> str:
    """The URL with its `ssl_*` options removed (for a `redis://` URL, where they mean nothing)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.startswith("ssl_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def _ssl_context(params: dict[str, Any]) -> RedisSSLContext | None:
    """redis-py's own context for a rediss:// URL, built from the same options and defaults."""
    cls = params.get("connection_class")
    if not (isinstance(cls, type) and issubclass(cls, SSLConnection)):
        return None
    return SSLConnection(**{k: v for k, v in params.items() if k.startswith("ssl_")}).ssl_context


class ScriptLine:
    """`await line(keys=[...], args=[...])` runs the script, like redis-py's registered script."""

    def __init__(self, url: str, script: str, *, timeout: float = 2.0, idle: float = IDLE_SECONDS) -> None:
        self._params: dict[str, Any] = dict(parse_url(url))
        self._ssl = _ssl_context(self._params)
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._timeout = timeout
        self._idle = idle
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Task[_Protocol] | None = None
        self._closed = False

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        payload = encode([b"EVALSHA", self._sha, len(keys), *keys, *args])
        start = time.monotonic()
        proto = self._proto
        if proto is not None and not proto.lost:
            try:
                return await proto.send(payload)  # the connection's watchdog bounds this
            except redis.exceptions.NoScriptError:
                pass
        return await self._within(start, self._slow(payload))

    async def _slow(self, payload: bytes) -> Any:
        proto = await self._connected()
        try:
            return await proto.send(payload)
        except redis.exceptions.NoScriptError:
            await proto.send(encode([b"SCRIPT", b"LOAD", self._script]))
            return await proto.send(payload)

    async def ping(self) -> None:
        """One PING over the line (connecting if need be), within `timeout`: is the line usable?"""
        await self._within(time.monotonic(), self._ping())

    async def _ping(self) -> None:
        await (await self._connected()).send(PING)

    async def _within(self, start: float, work: Any) -> Any:
        try:
            async with asyncio.timeout(start + self._timeout - time.monotonic()):
                return await work
        except TimeoutError:
            raise redis.exceptions.TimeoutError("Redis did not answer in time") from None

    async def _connected(self) -> _Protocol:
        """The live connection, or a share in the one reconnect under way."""
        proto = self._proto
        if proto is not None and not proto.lost:
            return proto
        if self._closed:
            raise redis.exceptions.ConnectionError("the Redis line is closed")
        task = self._connecting
        if task is None:
            task = self._connecting = asyncio.get_running_loop().create_task(self._open())
            task.add_done_callback(self._opened)
        # shield: a waiter that gives up (its deadline, a cancelled request) leaves the connect to the others.
        return await asyncio.shield(task)

    def _opened(self, task: asyncio.Task[_Protocol]) -> None:
        if self._connecting is task:
            self._connecting = None
        if task.cancelled() or task.exception() is not None:
            return
        proto = task.result()
        if self._closed:
            proto.abort(redis.exceptions.ConnectionError("the Redis line is closed"))
        else:
            self._proto = proto

    async def _open(self) -> _Protocol:
        p = self._params
        loop = asyncio.get_running_loop()
        timeout, idle = self._timeout, self._idle
        transport: asyncio.BaseTransport | None = None
        try:
            async with asyncio.timeout(timeout):
                if p.get("path"):
                    transport, proto = await loop.create_unix_connection(lambda: _Protocol(timeout, idle), p["path"])
                else:
                    transport, proto = await loop.create_connection(
                        lambda: _Protocol(timeout, idle),
                        p.get("host", "localhost"),
                        p.get("port", 6379),
                        ssl=self._ssl.get() if self._ssl is not None else None,
                    )
                setup = []
                if p.get("password"):
                    auth = [b"AUTH", p["username"], p["password"]] if p.get("username") else [b"AUTH", p["password"]]
                    setup.append((b"AUTH", proto.send(encode(auth))))
                if p.get("db"):
                    setup.append((b"SELECT", proto.send(encode([b"SELECT", p["db"]]))))
                for _, reply in setup:
                    reply.add_done_callback(_ignore)  # after a refused AUTH, nobody awaits SELECT's reply
                for command, reply in setup:
                    try:
                        await reply
                    except redis.exceptions.ResponseError as e:
                        if command == b"AUTH":
                            raise redis.exceptions.AuthenticationError(f"Redis refused AUTH: {e}") from None
                        raise redis.exceptions.ConnectionError(f"Redis refused SELECT: {e}") from None
        except BaseException as e:
            # Whatever failed after the connect (AUTH, SELECT, the deadline, a cancel), the socket goes.
            if transport is not None:
                transport.abort()
            if isinstance(e, TimeoutError):
                raise redis.exceptions.TimeoutError("timed out connecting to Redis") from None
            if isinstance(e, OSError):  # ssl.SSLError included: a certificate the URL's options reject
                raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {e.strerror or e}") from None
            raise
        return proto

    async def close(self) -> None:
        self._closed = True
        task, self._connecting = self._connecting, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
            proto.fail(redis.exceptions.ConnectionError("the Redis line is closed"))
