"""A lean, pipelined Redis connection for the hot path's one script call per request.

redis-py spends about a quarter of the gateway's CPU per request on its command machinery
(connection pool, retry wrapper, argument encoding) around a single EVALSHA; see bench/. This
line writes each call straight onto one shared connection and matches replies to callers in
order, which Redis guarantees, so any number of requests in flight share one socket with no
pool and no locks. Everything else keeps using redis-py.

Failure is loud and fast: a lost connection or a reply later than `timeout` fails every call
in flight with redis-py's ConnectionError / TimeoutError (the proxy answers 503, fail closed),
and the next call reconnects. A NOSCRIPT reply (Redis restarted, or SCRIPT FLUSH) loads the
script and retries that call once.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
from collections import deque
from typing import Any

import redis.exceptions
from redis.asyncio.connection import parse_url

CRLF = b"\r\n"


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
    def __init__(self, timeout: float) -> None:
        self.transport: asyncio.Transport | None = None
        self.pending: deque[tuple[asyncio.Future[Any], float]] = deque()
        self.buf = b""
        self.timeout = timeout
        self.lost = False
        self._watch: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, payload: bytes) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        if self.lost or self.transport is None:
            fut.set_exception(redis.exceptions.ConnectionError("connection to Redis lost"))
            return fut
        self.pending.append((fut, time.monotonic()))
        self.transport.write(payload)
        if self._watch is None:
            self._watch = loop.call_later(self.timeout, self._check)
        return fut

    def _check(self) -> None:
        """Replies come in order: if the oldest is overdue, the connection is stuck."""
        self._watch = None
        if not self.pending:
            return
        age = time.monotonic() - self.pending[0][1]
        if age >= self.timeout:
            self._fail(redis.exceptions.TimeoutError("Redis did not answer in time"))
            if self.transport is not None:
                self.transport.abort()
            return
        self._watch = asyncio.get_running_loop().call_later(self.timeout - age, self._check)

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
            self._fail(redis.exceptions.InvalidResponse("unexpected reply from Redis"))
            if self.transport is not None:
                self.transport.abort()
            return
        self.buf = buf[pos:]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(redis.exceptions.ConnectionError("connection to Redis lost"))

    def _fail(self, error: Exception) -> None:
        self.lost = True
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self.pending:
            fut, _ = self.pending.popleft()
            if not fut.done():
                fut.set_exception(error)


class ScriptLine:
    """`await line(keys=[...], args=[...])` runs the script, like redis-py's registered script."""

    def __init__(self, url: str, script: str, *, timeout: float = 2.0) -> None:
        self._params = parse_url(url)
        self._script = script.encode()
        self._sha = hashlib.sha1(self._script).hexdigest().encode()
        self._timeout = timeout
        self._proto: _Protocol | None = None
        self._connecting: asyncio.Lock | None = None

    async def __call__(self, *, keys: list[str], args: list[Any]) -> Any:
        payload = encode([b"EVALSHA", self._sha, len(keys), *keys, *args])
        proto = self._proto
        if proto is None or proto.lost:
            proto = await self._connect()
        try:
            return await proto.send(payload)
        except redis.exceptions.NoScriptError:
            await self._command(b"SCRIPT", b"LOAD", self._script)
            return await (await self._connect()).send(payload)

    async def _command(self, *args: bytes | str | int) -> Any:
        return await (await self._connect()).send(encode(list(args)))

    async def _connect(self) -> _Protocol:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self._proto is not None and not self._proto.lost:
                return self._proto
            self._proto = await self._open()
            return self._proto

    async def _open(self) -> _Protocol:
        p = self._params
        loop = asyncio.get_running_loop()
        timeout = self._timeout
        try:
            async with asyncio.timeout(timeout):
                if p.get("path"):
                    _, proto = await loop.create_unix_connection(lambda: _Protocol(timeout), p["path"])
                else:
                    secure = getattr(p.get("connection_class"), "__name__", "").startswith("SSL")
                    tls = ssl.create_default_context() if secure else None
                    _, proto = await loop.create_connection(
                        lambda: _Protocol(timeout), p.get("host", "localhost"), p.get("port", 6379), ssl=tls
                    )
                setup = []
                if p.get("password"):
                    auth = [b"AUTH", p["username"], p["password"]] if p.get("username") else [b"AUTH", p["password"]]
                    setup.append(proto.send(encode(auth)))
                if p.get("db"):
                    setup.append(proto.send(encode([b"SELECT", p["db"]])))
                for reply in setup:
                    value = await reply
                    if isinstance(value, Exception):
                        raise value
        except TimeoutError:
            raise redis.exceptions.TimeoutError("timed out connecting to Redis") from None
        except OSError as e:
            raise redis.exceptions.ConnectionError(f"cannot connect to Redis: {e.strerror or e}") from None
        return proto

    async def close(self) -> None:
        proto, self._proto = self._proto, None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
