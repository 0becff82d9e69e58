"""Tunnels to an upstream through the operator's egress proxy (`upstream.proxy_url`).

The gateway resolves and SSRF-checks the upstream's address itself; the proxy is then asked for a
tunnel to that exact, checked IP address and port, never to a host name, so the proxy cannot
resolve it to somewhere else. TLS to the upstream runs end to end through the tunnel with the
original host name for SNI and certificate checks.

Supported proxies:
- `http://` and `https://`: HTTP/1.1 `CONNECT ip:port` (RFC 9110 9.3.6), Basic credentials. With
  `https://` the connection to the proxy is TLS itself, so TLS to the upstream runs inside it
  (`loop.start_tls` over an SSL transport: works on asyncio (3.11+) and on uvloop 0.23).
- `socks5://`: RFC 1928 CONNECT with ATYP 1 (IPv4) or 4 (IPv6), never 3 (domain name); RFC 1929
  username/password when credentials are given, else "no authentication".

The proxy itself is not subject to the SSRF guard: the operator configured it, and it often sits on
a private network. Its credentials never appear in a repr, a log line or an exception message.
Timeouts belong to the caller (`async with asyncio.timeout(...)` around `open_tunnel`); on any
failure or cancellation everything opened here is closed.

Whose failure: everything until the tunnel is open is the proxy's, and so the gateway's, never the
upstream key's: `ProxyUnreachable` when the proxy cannot be reached at all (refused, DNS, TLS to
it), `ProxyError` when it answered with a refusal or nonsense (a 403 or 502 to CONNECT). The
caller's `Progress` says where a timeout struck. The TLS handshake with the upstream through an
open tunnel is the upstream's.
"""

from __future__ import annotations

import asyncio
import base64
import http
import ipaddress
import socket
import ssl
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Progress", "Proxy", "ProxyError", "ProxyUnreachable", "open_tunnel"]

MAX_HEAD = 16 * 1024  # the CONNECT answer's status line and headers

# Default ports when the URL names none: what curl does (CURLOPT_PROXYPORT: "443 for https proxies
# and 1080 for all others"), so a proxy_url means the same here as in `curl -x`. The config check
# requires an explicit port for socks5 anyway.
DEFAULT_PORTS = {"http": 1080, "https": 443, "socks5": 1080}

_SOCKS5_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}


class ProxyError(OSError):
    """The proxy refused the tunnel (its status or reply code is in the message) or spoke nonsense.

    Never carries the proxy's credentials."""


class ProxyUnreachable(ProxyError):
    """The proxy could not be reached: connection refused, its name not found, TLS to it failed, or
    (said by the caller, from `Progress`) no connection to it in time."""


@dataclass(slots=True)
class Progress:
    """How far `open_tunnel` got, for a caller whose timeout cut it short: "proxy" while connecting
    to the proxy, "handshake" while asking it for the tunnel, "open" once the tunnel is open."""

    step: str = ""


@dataclass(frozen=True, slots=True)
class Proxy:
    scheme: str  # "http", "https" or "socks5"
    host: str  # host name or IP address, IPv6 without brackets
    port: int
    username: str = field(default="", repr=False)
    password: str = field(default="", repr=False)

    @classmethod
    def parse(cls, url: str) -> Proxy:
        """`scheme://[user[:password]@]host[:port][/]`; user and password are percent-decoded.

        Errors never repeat the URL: it may carry credentials."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise ValueError("proxy URL: cannot parse it (bad host or port)") from None
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS:
            raise ValueError("proxy URL: the scheme must be http, https or socks5")
        if not parts.hostname:
            raise ValueError("proxy URL: no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("proxy URL: only scheme://[user:password@]host[:port] is allowed")
        username = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        if scheme == "socks5" and (len(username.encode()) > 255 or len(password.encode()) > 255):
            raise ValueError("proxy URL: SOCKS5 user names and passwords are at most 255 bytes")
        if password and not username:
            raise ValueError("proxy URL: a password needs a user name")
        return cls(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], username, password)

    @property
    def has_credentials(self) -> bool:
        return bool(self.username)


class _Buffer(asyncio.Protocol):
    """Collects what arrives during the proxy handshake (and between the handshake and the hand-over),
    so that nothing is lost when the caller's protocol takes the transport."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.data = bytearray()
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def data_received(self, data: bytes) -> None:
        self.data += data
        self._wake()

    def eof_received(self) -> None:
        # Returning a true value has no effect on SSL transports; a half-closed tunnel is closed.
        self.eof = True
        self._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.exc = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _more(self) -> None:
        if self.eof or self.lost:
            raise ProxyError("the proxy closed the connection during the tunnel handshake")
        self._waiter = self.loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def read_exactly(self, n: int) -> bytes:
        while len(self.data) < n:
            await self._more()
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    async def read_head(self, limit: int) -> bytes:
        start = 0
        while (end := self.data.find(b"\r\n\r\n", start)) < 0:
            if len(self.data) > limit:
                raise ProxyError(f"the proxy's answer to CONNECT is longer than {limit} bytes")
            start = max(0, len(self.data) - 3)
            await self._more()
        if end + 4 > limit:
            raise ProxyError(f"the proxy's answer to CONNECT is longer than {limit} bytes")
        head = bytes(self.data[: end + 4])
        del self.data[: end + 4]
        return head

    def hand_over(self, transport: asyncio.Transport, protocol: asyncio.BaseProtocol) -> None:
        """Give `transport` to `protocol`, with whatever arrived here in the meantime."""
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if self.data:
            data, self.data = bytes(self.data), bytearray()
            _feed(protocol, data)
        if self.lost:
            protocol.connection_lost(self.exc)
        elif self.eof and isinstance(protocol, asyncio.Protocol | asyncio.BufferedProtocol):
            protocol.eof_received()
            transport.close()  # our eof_received already let it close; make it explicit


def _feed(protocol: asyncio.BaseProtocol, data: bytes) -> None:
    if isinstance(protocol, asyncio.BufferedProtocol):
        view = memoryview(data)
        while view:
            buf = memoryview(protocol.get_buffer(len(view))).cast("B")
            n = min(len(buf), len(view))
            if n == 0:
                raise ProxyError("the protocol offered no buffer for the tunnel's first bytes")
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
    elif isinstance(protocol, asyncio.Protocol):
        protocol.data_received(data)
    else:
        raise TypeError("open_tunnel needs a stream protocol")


def _address(ip: str, port: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        # The whole point is that the proxy never resolves a name: refuse, do not guess.
        raise ValueError("open_tunnel needs the upstream's checked IP address, not a host name") from None
    if not 0 < port < 65536:
        raise ValueError("open_tunnel: port out of range")
    return addr


async def open_tunnel(
    proxy: Proxy,
    ip: str,
    port: int,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    *,
    tls: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    proxy_tls: ssl.SSLContext | None = None,
    progress: Progress | None = None,
) -> tuple[asyncio.Transport, asyncio.BaseProtocol]:
    """Connect to the proxy, open a tunnel to ip:port, then hand the connection to protocol_factory()'s
    protocol (after a TLS handshake with the upstream through the tunnel when `tls` is given, with
    `server_hostname` for SNI and the certificate check). Timeouts belong to the caller (it wraps this
    in asyncio.timeout; `progress` tells it where one struck). `proxy_tls` verifies an https:// proxy
    (default: the system's trust store)."""
    progress = progress if progress is not None else Progress()
    progress.step = "proxy"
    addr = _address(ip, port)
    loop = asyncio.get_running_loop()
    outer_tls: ssl.SSLContext | None = None
    if proxy.scheme == "https":
        outer_tls = proxy_tls if proxy_tls is not None else ssl.create_default_context()
    elif proxy.scheme not in ("http", "socks5"):
        raise ValueError("proxy scheme must be http, https or socks5")

    buffer: _Buffer | None = None
    transport: asyncio.Transport | None = None
    inner: asyncio.Transport | None = None
    try:
        try:
            transport, buffer = await loop.create_connection(
                lambda: _Buffer(loop),
                proxy.host,
                proxy.port,
                ssl=outer_tls,
                server_hostname=proxy.host if outer_tls is not None else None,
            )
        except OSError as e:
            raise ProxyUnreachable(f"could not connect to the proxy ({_reason(e)})") from e
        _set_nodelay(transport)
        progress.step = "handshake"
        if proxy.scheme == "socks5":
            await _socks5_connect(proxy, transport, buffer, addr, port)
        else:
            await _http_connect(proxy, transport, buffer, addr, port)
        progress.step = "open"

        if tls is None:
            protocol = protocol_factory()
            buffer.hand_over(transport, protocol)
            return transport, protocol

        # The upstream speaks TLS only after our ClientHello, which start_tls sends: anything that
        # arrived after the proxy's answer came from the proxy and is nonsense.
        if buffer.data or buffer.eof or buffer.lost:
            raise ProxyError("the proxy sent data or closed the tunnel right after its answer")
        inner_buffer = _Buffer(loop)
        inner = await loop.start_tls(
            transport, inner_buffer, tls, server_hostname=server_hostname if server_hostname is not None else ip
        )
        protocol = protocol_factory()
        inner_buffer.hand_over(inner, protocol)
        return inner, protocol
    except BaseException:
        if inner is not None:
            inner.abort()
        if transport is not None:
            transport.abort()
        raise


def _reason(exc: OSError) -> str:
    """A short reason without addresses or names (the proxy's host is the operator's business)."""
    if isinstance(exc, socket.gaierror):
        return "its name did not resolve"
    if isinstance(exc, ssl.SSLError):
        return "TLS: " + (exc.reason or type(exc).__name__).lower()
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror.lower() if exc.strerror else type(exc).__name__


def _set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def _http_connect(
    proxy: Proxy,
    transport: asyncio.Transport,
    buffer: _Buffer,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
) -> None:
    authority = f"[{addr.compressed}]:{port}" if addr.version == 6 else f"{addr.compressed}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.has_credentials:
        token = base64.b64encode(f"{proxy.username}:{proxy.password}".encode()).decode("ascii")
        lines.append(f"Proxy-Authorization: Basic {token}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("ascii"))

    head = await buffer.read_head(MAX_HEAD)
    status_line = head.split(b"\r\n", 1)[0]
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise ProxyError("the proxy's answer to CONNECT is not HTTP/1.x")
    status = int(parts[1])
    if 200 <= status < 300:
        return
    # The reason phrase comes from the proxy: name the status by its standard phrase only.
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "unknown status"
    if status in (401, 407):  # 407 is right; some proxies (tinyproxy 1.11) answer CONNECT with 401
        if proxy.has_credentials:
            raise ProxyError(f"the proxy refused the credentials ({status} {phrase})")
        raise ProxyError(f"the proxy requires credentials ({status} {phrase})")
    raise ProxyError(f"the proxy refused the tunnel: {status} {phrase}")


async def _socks5_connect(
    proxy: Proxy,
    transport: asyncio.Transport,
    buffer: _Buffer,
    addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
    port: int,
) -> None:
    method = 0x02 if proxy.has_credentials else 0x00
    transport.write(bytes((5, 1, method)))
    version, chosen = await buffer.read_exactly(2)
    if version != 5:
        raise ProxyError("the proxy is not a SOCKS5 proxy")
    if chosen == 0xFF:
        if proxy.has_credentials:
            raise ProxyError("the SOCKS5 proxy does not accept username/password authentication")
        raise ProxyError("the SOCKS5 proxy requires credentials")
    if chosen != method:
        raise ProxyError(f"the SOCKS5 proxy chose an authentication method not offered ({chosen})")
    if method == 0x02:
        user, password = proxy.username.encode(), proxy.password.encode()
        transport.write(bytes((1, len(user))) + user + bytes((len(password),)) + password)
        _, status = await buffer.read_exactly(2)
        if status != 0:
            raise ProxyError("the proxy refused the credentials (SOCKS5)")

    atyp = 1 if addr.version == 4 else 4
    transport.write(bytes((5, 1, 0, atyp)) + addr.packed + port.to_bytes(2, "big"))
    version, reply, _, bound_type = await buffer.read_exactly(4)
    if version != 5:
        raise ProxyError("the SOCKS5 proxy's answer to CONNECT is not SOCKS5")
    if reply != 0:
        reason = _SOCKS5_REPLIES.get(reply, "unknown reply")
        raise ProxyError(f"the SOCKS5 proxy refused the tunnel: {reason} ({reply})")
    if bound_type == 1:
        size = 4
    elif bound_type == 4:
        size = 16
    elif bound_type == 3:
        size = (await buffer.read_exactly(1))[0]
    else:
        raise ProxyError(f"the SOCKS5 proxy's answer has an unknown address type ({bound_type})")
    await buffer.read_exactly(size + 2)  # BND.ADDR and BND.PORT: not needed
