"""One keep-alive HTTP/1.1 connection to an upstream and the answer in flight on it.

The answer is parsed by `httptools` (llhttp); its body arrives through `take(deadline)`, decoded
(gzip, zlib, raw deflate) a bounded step at a time, with flow control above `HIGH_WATER`. The
errors it raises are the client's public errors; `h1` re-exports them.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from collections import deque
from typing import Any, Protocol

import aiohttp
import httptools
from multidict import CIMultiDict


class Owner(Protocol):
    """What a connection asks of the pool that made it (`h1.Pool`)."""

    idle_seconds: float

    def put_back(self, conn: Any) -> None: ...
    def forget(self, conn: Any) -> None: ...


HIGH_WATER = 256 * 1024  # buffered body bytes before we stop reading from the upstream
DECODE_STEP = 1024 * 1024  # decoded bytes produced per read of a compressed body
MAX_HEAD = 64 * 1024  # an answer's status line and headers
KEEP_ALIVE_MARGIN = 0.5  # seconds before the server's Keep-Alive timeout that we stop reusing
IDENTITY = frozenset({"", "identity"})
INFLATE = frozenset({"gzip", "x-gzip", "deflate"})


class UpstreamClosed(aiohttp.ClientError):
    """The connection broke, or the upstream's answer was not valid HTTP/1.1."""


class StaleConnection(UpstreamClosed):
    """A reused connection ended before any byte of the answer: the server had closed it."""


class UnsupportedEncoding(UpstreamClosed):
    """The upstream compressed its answer in an encoding we did not ask for and do not decode."""


class AnswerTooLarge(aiohttp.ClientError):
    """A body (or one event of a stream) is larger than the configured cap."""


class UpstreamTimeout(TimeoutError):
    """Nothing (more) arrived before the deadline."""


class _Inflater:
    """gzip, zlib or raw deflate ("deflate" is either, in the wild), decoded a bounded step at a time."""

    __slots__ = ("_z", "_deflate", "_seen", "_tail")

    def __init__(self, encoding: str) -> None:
        self._z = zlib.decompressobj(wbits=47)  # gzip or zlib, by their headers
        self._deflate = encoding == "deflate"
        self._seen = b""  # input before the first output, to start over as raw deflate
        self._tail = b""

    @property
    def pending(self) -> bool:
        return bool(self._tail)

    def decode(self, data: bytes) -> bytes:
        data = self._tail + data if self._tail else data
        try:
            out = self._z.decompress(data, DECODE_STEP)
        except zlib.error:
            if not self._deflate:
                raise
            self._deflate = False  # not zlib-wrapped: raw deflate, from the first byte
            self._z = zlib.decompressobj(wbits=-15)
            data, self._seen = self._seen + data, b""
            out = self._z.decompress(data, DECODE_STEP)
        if self._deflate:
            if out:
                self._deflate, self._seen = False, b""
            else:
                self._seen += data[: len(data) - len(self._z.unconsumed_tail)]
        self._tail = self._z.unconsumed_tail
        return out

    def flush(self) -> bytes:
        return self._z.flush()


class Response:
    """One upstream answer: status and headers first, then the body as it arrives."""

    __slots__ = ("status", "headers", "_conn")

    def __init__(self, conn: Connection, status: int, headers: CIMultiDict[str]) -> None:
        self.status, self.headers, self._conn = status, headers, conn

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def readany(self, deadline: float | None = None) -> bytes:
        """What has arrived since the last read (waiting for something), or b"" at the end."""
        return await self._conn.take(deadline)

    async def read(self, limit: int = 64 * 1024 * 1024, deadline: float | None = None) -> bytes:
        """The whole body; `AnswerTooLarge` once it grows past `limit` bytes."""
        parts = []
        size = 0
        while part := await self._conn.take(deadline):
            size += len(part)
            if size > limit:
                raise AnswerTooLarge(f"the answer is larger than {limit} bytes")
            parts.append(part)
        return b"".join(parts)

    async def read_prefix(self, limit: int, deadline: float | None = None) -> bytes:
        """At most `limit` bytes of the body (an error page, say); the rest is not read."""
        parts = []
        size = 0
        while size < limit and (part := await self._conn.take(deadline)):
            parts.append(part)
            size += len(part)
        return b"".join(parts)[:limit]

    def release(self) -> None:
        """Back to the pool after a complete answer; closed otherwise (the upstream sees it)."""
        self._conn.release()


class Connection(asyncio.Protocol):
    """One keep-alive connection and the answer in flight on it."""

    def __init__(self, pool: Owner, origin: tuple[str, str, int]) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.reuse_until = 0.0  # monotonic; the server's Keep-Alive timeout, less a margin
        self.exchanges = 0
        self.busy = False
        self.closed = False
        self._head: asyncio.Future[Response] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._head_bytes = 0
        self._answered = False  # a byte of this exchange's answer arrived
        self._complete = False
        self._keep_alive = False
        self._keep_alive_for: float | None = None
        self._paused = False
        self._error: BaseException | None = None
        self._delimited = False  # Content-Length or chunked: else the body ends with the connection
        self._inflater: _Inflater | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if not self.busy or self._complete:
            # Nothing asked for, or bytes after a complete answer: the answer stands, but a
            # server talking out of turn is not reused.
            self._keep_alive = False
            if not self.busy:
                self.close()
            return
        self._answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            if self._complete:
                self._keep_alive = False  # garbage after a complete answer: drop the connection only
            else:
                self._fail(UpstreamClosed(f"invalid HTTP answer: {e}"))
            return
        if self._head is not None:  # still no status line and headers: an endless head is refused
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD:
                self._fail(UpstreamClosed("the upstream's answer head is too large"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.busy and not self._complete:
            if not self._answered and self.exchanges > 1:
                self._fail(StaleConnection("the upstream had closed the kept-alive connection"))
            elif self._head is None and not self._delimited and self._error is None:
                self._finish()  # an answer without a length ends with its connection
            else:
                self._fail(UpstreamClosed("the upstream closed the connection"))

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._complete:
            self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        if self._complete or self._error is not None:
            return  # a second answer to one request: ignored, and the connection is not reused
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._headers = CIMultiDict()  # an interim answer (100 Continue …): the real one follows
            return
        headers = self._headers
        self._delimited = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding not in IDENTITY:
            if encoding not in INFLATE:
                self._fail(UnsupportedEncoding(f"unsupported content encoding {encoding[:40]!r}"))
                return
            self._inflater = _Inflater(encoding)
        keep_alive = headers.get("Keep-Alive")
        if keep_alive:
            self._keep_alive_for = _keep_alive_timeout(keep_alive)
        if self._head is not None and not self._head.done():
            self._head.set_result(Response(self, status, headers))
        self._head = None

    def on_body(self, body: bytes) -> None:
        if self._error is not None or self._complete:
            return  # the rest of a data block the answer already failed on, or that follows it
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._complete or self.parser.get_status_code() < 200:
            return
        self._keep_alive = self.parser.should_keep_alive() and self._keep_alive_for != 0  # asked now: llhttp resets
        self._finish()

    # --- the request side ---

    async def exchange(self, head: bytes, body: bytes, deadline: float | None) -> Response:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise StaleConnection("the kept-alive connection is closed")
        self.busy = True
        self.exchanges += 1
        self._reset()
        head_future = self._head = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        try:
            return await self._wait(head_future, deadline)
        except BaseException:
            self.close()
            raise

    async def take(self, deadline: float | None = None) -> bytes:
        while True:
            inflater = self._inflater
            if self._chunks or (inflater is not None and inflater.pending):
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0] if self._chunks else b""
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                if inflater is not None:
                    try:
                        data = inflater.decode(data)
                    except zlib.error:
                        self._fail(UpstreamClosed("the upstream's compressed body is corrupt"))
                        raise self._error from None  # type: ignore[misc]
                if data:
                    return data
                continue
            if self._error is not None:
                raise self._error
            if self._complete:
                if inflater is not None:
                    self._inflater = None
                    try:
                        tail = inflater.flush()
                    except zlib.error:
                        tail = b""
                    if tail:
                        return tail
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._wait(waiter, deadline)
            finally:
                self._waiter = None

    async def _wait(self, future: asyncio.Future[Any], deadline: float | None) -> Any:
        if deadline is None:
            return await future
        timer = asyncio.get_running_loop().call_at(deadline, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def release(self) -> None:
        if not self.busy:
            return  # released already: a second put_back would hand it to two requests at once
        if self._complete and self._keep_alive and not self.closed:
            self.busy = False
            now = time.monotonic()
            self.idle_since = now
            keep_for = self.pool.idle_seconds
            if self._keep_alive_for is not None:
                keep_for = min(keep_for, self._keep_alive_for - KEEP_ALIVE_MARGIN)
            if keep_for <= 0:
                self.close()
                return
            self.reuse_until = now + keep_for
            self.pool.put_back(self)
        else:
            self.close()

    def close(self) -> None:
        self.busy = False
        if not self.closed:
            self.closed = True
            self.pool.forget(self)
            if self.transport is not None:
                self.transport.close()

    def _finish(self) -> None:
        self._complete = True
        self._wake()

    def _fail(self, error: BaseException) -> None:
        self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
        self._head = None
        self._wake()
        if self.transport is not None:
            self.transport.close()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(UpstreamTimeout("the upstream did not answer in time"))


def _keep_alive_timeout(value: str) -> float | None:
    """`Keep-Alive: timeout=5, max=100` -> 5.0; `max=1` (this was the last request) -> 0."""
    timeout: float | None = None
    for part in value.split(","):
        name, _, number = part.strip().partition("=")
        try:
            n = float(number)
        except ValueError:
            continue
        if name.strip().lower() == "timeout" and n >= 0:
            timeout = n if timeout is None else min(timeout, n)
        elif name.strip().lower() == "max" and n <= 1:
            timeout = 0.0
    return timeout
