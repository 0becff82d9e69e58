"""The hot path's HTTP/1.1 client toward donor upstreams: pooled keep-alive connections, nothing else.

Every `/v1` request makes one upstream call, and aiohttp's `ClientSession` spends about 95 µs of
CPU on each (request objects, header merging, timers, traces, cookie and redirect machinery we
switch off anyway); this client spends about 30 µs, which is most of the gateway's added latency
at low concurrency (see the README's benchmark notes). It does only what the proxy needs:

* `POST` (or any method) with a prebuilt header block and a body, one write.
* The answer through `httptools` (llhttp, the parser Node.js uses): status, headers, a body
  delimited by Content-Length, chunked encoding or the end of the connection; gzip/deflate
  bodies decoded (we ask for `identity`, but a server may not listen).
* Connections pooled per origin, reused only after a complete answer the server agreed to keep
  alive, dropped after `idle_seconds` unused or when the server closes them.
* The same SSRF guard as the aiohttp session (`upstream.AddressGuard`/`GuardedResolver`): every
  address is checked before a socket exists for it. Redirects are answers like any other; the
  proxy refuses 3xx.

Timeouts belong to the caller (`asyncio.timeout` around the call and each read), except
connecting, which is bounded here. Errors: `OSError`/`RefusedAddress` while connecting,
`UpstreamClosed` (an `aiohttp.ClientError`) when the connection breaks or the answer is not HTTP.
Key tests and health checks still use the aiohttp session (`upstream.py`): they are not on the
hot path, and they want its conveniences (JSON bodies, GET, per-call timeouts).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
import zlib
from collections import deque
from collections.abc import AsyncIterator

import aiohttp
import httptools
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from . import appkeys, metrics
from .upstream import AddressGuard, GuardedResolver, RefusedAddress

HIGH_WATER = 256 * 1024  # buffered body bytes before we stop reading from the upstream
DEFAULT_PORTS = {"http": 80, "https": 443}


def header_lines(headers: dict[str, str]) -> bytes:
    """`Name: value\r\n` lines for `Pool.request`; a CR or LF in a value would forge headers."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n"):
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class UpstreamClosed(aiohttp.ClientError):
    """The connection broke, or the upstream's answer was not valid HTTP/1.1."""


class Response:
    """One upstream answer: status and headers first, then the body as it arrives."""

    __slots__ = ("status", "headers", "_conn")

    def __init__(self, conn: Connection, status: int, headers: CIMultiDict[str]) -> None:
        self.status, self.headers, self._conn = status, headers, conn

    @property
    def content_type(self) -> str:
        return self.headers.get("Content-Type", "").partition(";")[0].strip().lower()

    async def readany(self) -> bytes:
        """What has arrived since the last read (waiting for something), or b"" at the end."""
        return await self._conn.take()

    async def read(self, limit: int = 0) -> bytes:
        """The whole body, or (with a limit) at most `limit` bytes of it."""
        parts = []
        size = 0
        while not limit or size < limit:
            part = await self._conn.take()
            if not part:
                break
            parts.append(part)
            size += len(part)
        body = b"".join(parts)
        return body[:limit] if limit else body

    def release(self) -> None:
        """Back to the pool after a complete answer; closed otherwise (the upstream sees it)."""
        self._conn.release()


class Connection(asyncio.Protocol):
    """One keep-alive connection and the answer in flight on it."""

    def __init__(self, pool: Pool, origin: tuple[str, str, int]) -> None:
        self.pool, self.origin = pool, origin
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.idle_since = 0.0
        self.busy = False
        self.closed = False
        self._head: asyncio.Future[Response] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reset()

    def _reset(self) -> None:
        self._headers: CIMultiDict[str] = CIMultiDict()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._paused = False
        self._error: BaseException | None = None
        self._delimited = False  # Content-Length or chunked: else the body ends with the connection
        self._decoder: zlib._Decompress | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing asked for: a server talking out of turn is not reused
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(UpstreamClosed(f"invalid HTTP answer: {e}"))

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        if self.busy and not self._complete:
            if self._head is None and not self._delimited and self._error is None:
                self._finish()  # an answer without a length ends with its connection
            else:
                self._fail(UpstreamClosed("the upstream closed the connection"))

    # --- httptools callbacks ---

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.add(name.decode("latin-1"), value.decode("latin-1"))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if 100 <= status < 200:
            self._headers = CIMultiDict()  # an interim answer (100 Continue …): the real one follows
            return
        headers = self._headers
        self._delimited = "Content-Length" in headers or "chunked" in headers.get("Transfer-Encoding", "").lower()
        encoding = headers.get("Content-Encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip", "deflate"):
            self._decoder = zlib.decompressobj(wbits=47)  # gzip or zlib, by their headers
        elif encoding != "identity":
            self._fail(UpstreamClosed(f"unsupported content encoding {encoding!r}"))
            return
        if self._head is not None and not self._head.done():
            self._head.set_result(Response(self, status, headers))
            self._head = None

    def on_body(self, body: bytes) -> None:
        if self._error is not None:
            return  # the rest of a data block the answer already failed on
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error:
                self._fail(UpstreamClosed("the upstream's compressed body is corrupt"))
                return
            if not body:
                return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200:
            return
        self._keep_alive = self.parser.should_keep_alive()  # asked now: llhttp resets after this
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._chunks.append(tail)
        self._finish()

    # --- the request side ---

    async def exchange(self, head: bytes, body: bytes) -> Response:
        assert self.transport is not None
        self.busy = True
        self._reset()
        self._head = asyncio.get_running_loop().create_future()
        self.transport.writelines((head, body))
        try:
            return await self._head
        except BaseException:
            self.close()
            raise

    async def take(self) -> bytes:
        while True:
            if self._chunks:
                data = b"".join(self._chunks) if len(self._chunks) > 1 else self._chunks[0]
                self._chunks.clear()
                self._buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                return data
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def release(self) -> None:
        if not self.busy:
            return  # released already: a second put_back would hand it to two requests at once
        if self._complete and self._keep_alive and not self.closed:
            self.busy = False
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


class Pool:
    """Keep-alive connections per origin (scheme, host, port), checked by the SSRF guard."""

    def __init__(
        self,
        *,
        allow_private: bool,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        tls: ssl.SSLContext | None = None,  # default: the system's trust store, hostnames checked
    ) -> None:
        self.guard = AddressGuard(allow_private=allow_private)
        self.resolver = GuardedResolver(self.guard)
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._tls = tls

    async def request(self, url: URL, head_fields: bytes, body: bytes, method: str = "POST") -> Response:
        """Send one request; the answer's status and headers. `head_fields` are complete header
        lines (`Name: value\\r\\n` …) without Host and Content-Length, which are added here."""
        origin = (url.scheme, url.raw_host or "", url.port or DEFAULT_PORTS.get(url.scheme, 80))
        head = (
            f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
            f"Content-Length: {len(body)}\r\n".encode("latin-1")
            + head_fields
            + b"\r\n"
        )
        conn = self._reuse(origin) or await self._connect(origin)
        return await conn.exchange(head, body)

    def put_back(self, conn: Connection) -> None:
        conn.idle_since = now = time.monotonic()
        idle = self._idle.setdefault(conn.origin, [])
        idle.append(conn)
        # The oldest wait at the bottom (reuse takes from the top): close those idle too long,
        # so a burst of connections does not stay open until the upstream hangs up.
        while idle and idle[0].idle_since < now - self.idle_seconds:
            idle.pop(0).close()

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _reuse(self, origin: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(origin)
        oldest = time.monotonic() - self.idle_seconds
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.idle_since < oldest:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, origin: tuple[str, str, int]) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.connect_timeout):
            addresses = await self._addresses(host, port)
            last: OSError = OSError("no address to connect to")
            for family, sockaddr in addresses:
                try:
                    sock = self.guard.socket((family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
                except RefusedAddress as e:
                    last = e
                    continue
                try:
                    sock.setblocking(False)
                    await loop.sock_connect(sock, sockaddr)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    tls = self._tls_context() if scheme == "https" else None
                    _, conn = await loop.create_connection(
                        lambda: Connection(self, origin), sock=sock, ssl=tls, server_hostname=host if tls else None
                    )
                except OSError as e:  # ssl.SSLError is one too
                    sock.close()
                    last = e
                    continue
                except BaseException:  # timed out or cancelled: no socket is left behind
                    sock.close()
                    raise
                self._all.add(conn)
                metrics.upstream_connected()
                return conn
            raise last

    async def _addresses(self, host: str, port: int) -> list[tuple[int, tuple[object, ...]]]:
        try:
            literal = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            literal = None
        if literal is not None:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sockaddr: tuple[object, ...] = (host, port, 0, 0) if family == socket.AF_INET6 else (host, port)
            return [(family, sockaddr)]  # the guard judges it when the socket is made
        results = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
        out: list[tuple[int, tuple[object, ...]]] = []
        for r in results:
            if r["family"] == socket.AF_INET6:
                out.append((socket.AF_INET6, (r["host"], r["port"], 0, 0)))
            else:
                out.append((socket.AF_INET, (r["host"], r["port"])))
        return out

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    async def close(self) -> None:
        for conn in list(self._all):
            conn.close()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await self.resolver.close()


async def upstream_pool(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the hot path's connection pool lives as long as the application."""
    config = app[appkeys.config]
    pool = Pool(allow_private=config.security.allow_private_upstreams, connect_timeout=config.upstream.connect_timeout)
    app[appkeys.upstream_pool] = pool
    try:
        yield
    finally:
        await pool.close()
