"""The gateway's HTTP/1.1 client toward donor upstreams: pooled keep-alive connections, nothing else.

Every `/v1` request makes one upstream call, and aiohttp's `ClientSession` spends about 95 µs of
CPU on each (request objects, header merging, timers, traces, cookie and redirect machinery we
switch off anyway); this client spends about 30 µs, which is most of the gateway's added latency
at low concurrency (see the README's benchmark notes). Key tests and health checks use it too, so
one client, one SSRF guard and one egress proxy serve every upstream call.

* A request is a prebuilt header block and a body, written at once.
* The answer goes through `httptools` (llhttp, the parser Node.js uses): status, headers, a body
  delimited by Content-Length, chunked encoding or the end of the connection. gzip, zlib and raw
  deflate bodies are decoded on demand, a bounded step at a time (we ask for `identity`, but a
  server may not listen; a small bomb never becomes a large allocation). Other encodings fail
  with `UnsupportedEncoding`, which is not the key's fault.
* Bytes after a complete answer do not spoil it: the answer stands, the connection is dropped.
* Connections are pooled per origin and reused only after a complete answer the server agreed
  to keep alive, within its `Keep-Alive: timeout` and our `idle_seconds`. A request on a reused
  connection that the server had closed meanwhile (no byte of an answer came back) is sent once
  more on a fresh connection, as HTTP libraries do: that is not the key's failure.
* Connecting resolves the name, keeps the addresses the SSRF guard allows (`ssrf.AddressGuard`
  checks every sockaddr before a socket exists for it) and races them with Happy Eyeballs
  (RFC 8305, `aiohappyeyeballs`). With an egress proxy (`upstream.proxy_url`) the proxy is asked
  for a tunnel to the checked address itself, never to the name, and TLS runs through it.

Timeouts are deadlines on the loop's clock (`loop.time()`), passed with each wait: the answer's
head, and each read of its body. A wait past its deadline raises `UpstreamTimeout`. Connecting is
bounded by `connect_timeout` (and the deadline). Errors: `OSError` (`RefusedAddress` among them)
while connecting (`tunnel.ProxyError` when the egress proxy failed, a timeout at it included),
`UpstreamClosed` (an `aiohttp.ClientError`) when the connection breaks or the answer is not HTTP,
`AnswerTooLarge` past a read's limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from typing import Any

import aiohappyeyeballs
from aiohttp import web
from yarl import URL

from gateway import metrics
from gateway.net import tunnel
from gateway.net.connection import (  # noqa: F401 - the client's public errors and constants
    HIGH_WATER,
    AnswerTooLarge,
    Connection,
    Response,
    StaleConnection,
    UnsupportedEncoding,
    UpstreamClosed,
    UpstreamTimeout,
)
from gateway.net.ssrf import AddressGuard, GuardedResolver, RefusedAddress

HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's recommended "connection attempt delay"
DEFAULT_PORTS = {"http": 80, "https": 443}


def header_lines(headers: dict[str, str]) -> bytes:
    """`Name: value\r\n` lines for `Pool.request`; a CR or LF in a value would forge headers."""
    lines = []
    for name, value in headers.items():
        if any(c in name or c in value for c in "\r\n"):
            raise ValueError(f"header {name!r} contains a line break")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("latin-1")


class Pool:
    """Keep-alive connections per origin (scheme, host, port), checked by the SSRF guard."""

    def __init__(
        self,
        *,
        allow_private: bool,
        connect_timeout: float,
        idle_seconds: float = 30.0,
        tls: ssl.SSLContext | None = None,  # default: the system's trust store, hostnames checked
        proxy_url: str = "",
        resolver: Any = None,  # default: aiohttp's resolver behind the guard
    ) -> None:
        self.guard = AddressGuard(allow_private=allow_private)
        self.resolver = resolver or GuardedResolver(self.guard)
        self.connect_timeout = connect_timeout
        self.idle_seconds = idle_seconds
        self.proxy = tunnel.Proxy.parse(proxy_url) if proxy_url else None
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._all: set[Connection] = set()
        self._tls = tls

    async def request(
        self, url: URL, head_fields: bytes, body: bytes, *, method: str = "POST", deadline: float | None = None
    ) -> Response:
        """Send one request; the answer's status and headers, by `deadline` (loop time). `head_fields`
        are complete header lines (`Name: value\\r\\n` …) without Host and Content-Length."""
        origin = (url.scheme, url.raw_host or "", url.port or DEFAULT_PORTS.get(url.scheme, 80))
        head = (
            f"{method} {url.raw_path_qs} HTTP/1.1\r\nHost: {url.host_port_subcomponent}\r\n"
            f"Content-Length: {len(body)}\r\n".encode("latin-1")
            + head_fields
            + b"\r\n"
        )
        conn = self._reuse(origin)
        if conn is not None:
            try:
                return await conn.exchange(head, body, deadline)
            except StaleConnection:
                pass  # closed by the server while idle: once more, on a fresh connection
        conn = await self._connect(origin, deadline)
        return await conn.exchange(head, body, deadline)

    def put_back(self, conn: Connection) -> None:
        idle = self._idle.setdefault(conn.origin, [])
        idle.append(conn)
        # The oldest wait at the bottom (reuse takes from the top): close those idle too long,
        # so a burst of connections does not stay open until the upstream hangs up.
        now = conn.idle_since
        while idle and idle[0].reuse_until < now:
            idle.pop(0).close()

    def forget(self, conn: Connection) -> None:
        self._all.discard(conn)
        idle = self._idle.get(conn.origin)
        if idle and conn in idle:
            idle.remove(conn)

    def _reuse(self, origin: tuple[str, str, int]) -> Connection | None:
        idle = self._idle.get(origin)
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed
            if conn.closed or conn.transport is None or conn.transport.is_closing():
                continue
            if conn.reuse_until < now:
                conn.close()
                continue
            return conn
        return None

    async def _connect(self, origin: tuple[str, str, int], deadline: float | None) -> Connection:
        scheme, host, port = origin
        loop = asyncio.get_running_loop()
        when = loop.time() + self.connect_timeout
        if deadline is not None and deadline < when:
            when = deadline
        tls = self._tls_context() if scheme == "https" else None
        progress = tunnel.Progress()
        try:
            async with asyncio.timeout_at(when):
                addresses = await self._addresses(host, port)
                if self.proxy is not None:
                    transport, conn = await self._through_proxy(origin, addresses, tls, progress)
                else:
                    sock = await aiohappyeyeballs.start_connection(
                        addresses, happy_eyeballs_delay=HAPPY_EYEBALLS_DELAY, socket_factory=self.guard.socket
                    )
                    try:
                        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        transport, conn = await loop.create_connection(
                            lambda: Connection(self, origin), sock=sock, ssl=tls, server_hostname=host if tls else None
                        )
                    except BaseException:
                        sock.close()
                        raise
        except TimeoutError:
            if progress.step == "proxy":  # the proxy's failure, not the upstream's (see `tunnel`)
                raise tunnel.ProxyUnreachable("timed out connecting to the proxy") from None
            if progress.step == "handshake":
                raise tunnel.ProxyError("the proxy did not open the tunnel in time") from None
            raise UpstreamTimeout("timed out connecting to the upstream") from None
        self._all.add(conn)
        metrics.upstream_connected()
        return conn

    async def _through_proxy(
        self,
        origin: tuple[str, str, int],
        addresses: list[tuple[Any, ...]],
        tls: ssl.SSLContext | None,
        progress: tunnel.Progress,
    ) -> tuple[asyncio.Transport, Connection]:
        """A tunnel to the first address the guard allows that the proxy reaches. The proxy out of
        reach is not tried again for the next address."""
        assert self.proxy is not None
        _, host, port = origin
        last: OSError = RefusedAddress()
        for family, _, _, _, sockaddr in addresses:
            scope = sockaddr[3] if family == socket.AF_INET6 and len(sockaddr) > 3 else 0
            if not self.guard.allowed(sockaddr[0], scope):
                continue
            try:
                transport, conn = await tunnel.open_tunnel(
                    self.proxy,
                    sockaddr[0],
                    port,
                    lambda: Connection(self, origin),
                    tls=tls,
                    server_hostname=host if tls else None,
                    progress=progress,
                )
            except tunnel.ProxyUnreachable:
                raise
            except OSError as e:
                last = e
                continue
            return transport, conn  # type: ignore[return-value]
        raise last

    async def _addresses(self, host: str, port: int) -> list[tuple[Any, ...]]:
        """addrinfo tuples for `aiohappyeyeballs`; an address literal is judged by the guard when
        its socket is made, a name's addresses already by the resolver."""
        try:
            literal = socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        except OSError:
            literal = None
        if literal is not None:
            if ":" in host:
                return [(socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))]
            return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]
        results = await self.resolver.resolve(host, port, family=socket.AF_UNSPEC)
        out: list[tuple[Any, ...]] = []
        for r in results:
            if r["family"] == socket.AF_INET6:
                sockaddr: tuple[Any, ...] = (r["host"], r["port"], 0, 0)
                out.append((socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (r["host"], r["port"])))
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


def create_pool(config: Any) -> Pool:
    up = config.upstream
    return Pool(
        allow_private=config.security.allow_private_upstreams,
        connect_timeout=up.connect_timeout,
        proxy_url=up.proxy_url,
    )


UPSTREAM_POOL: web.AppKey[Pool] = web.AppKey("upstream_pool", Pool)
