"""Talking to donor upstreams: the connect-time SSRF guard (also used by the hot path's client,
`h1.py`), the header allow-list, the aiohttp session for key tests and health checks, and the
boundary that turns aiohttp's errors into `UpstreamError`.

How the guard works. `ssrf.check_base_url` only sees the URL; what matters is the address a
socket is about to connect to. aiohttp offers two public hooks on `TCPConnector`, and we use both:

* `resolver=`: `GuardedResolver` wraps the default resolver and drops every refused address, so
  a name that resolves to public and private addresses is only ever tried on the public ones,
  and a name with nothing left fails like a DNS failure. The connector connects to exactly
  these addresses (and caches only them), so DNS rebinding cannot slip an address in between.
* `socket_factory=`: aiohttp skips the resolver for IP-literal hosts (`http://127.0.0.1/`,
  `http://[::ffff:7f00:1]/`), but every address, literal or resolved, reaches the socket
  factory before `connect()`. `AddressGuard.socket` checks the exact sockaddr there and raises
  instead of creating a socket, so a refused address never gets a socket, let alone a SYN.

Both are documented constructor arguments; nothing private is patched. A client middleware
refuses every 3xx before aiohttp could follow it, in case a caller forgets `allow_redirects`.

Errors. Refused, unreachable and timed-out upstreams all read the same (`UNREACHABLE`), so the
key test cannot be used to scan ports; `UpstreamError.cause` keeps the real reason for the log.
"""

from __future__ import annotations

import importlib.metadata
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.client_middlewares import ClientHandlerType
from aiohttp.resolver import DefaultResolver

from . import appkeys, ssrf
from .config import Config

try:
    VERSION = importlib.metadata.version("sharekey")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0"
USER_AGENT = f"sharekey/{VERSION}"

UNREACHABLE = "could not reach the upstream"
REDIRECTED = "the upstream answered with a redirect, which the gateway does not follow"
# Printable ASCII only: anything else in a header is an injection attempt or a copy-paste accident.
SENDABLE_KEY = re.compile(r"[\x21-\x7e]+")


class UpstreamError(Exception):
    """A request to an upstream failed below HTTP (or was redirected).

    `kind` drives the gateway's decisions: "unreachable" (refused by policy, DNS, connect, TLS),
    "timeout", "broken" (the connection failed mid-exchange), "redirect". `message` is the only
    thing a caller may see. `cause` is a short code for the log ("refused_address", "dns" …).
    """

    def __init__(self, kind: str, cause: str, message: str = UNREACHABLE) -> None:
        super().__init__(message)
        self.kind = kind
        self.cause = cause
        self.message = message


class RefusedAddress(OSError):
    """Raised inside the connector for an address the SSRF policy refuses (never shown to callers)."""

    MARK = "address refused by policy"

    def __init__(self) -> None:
        super().__init__(self.MARK)


class AddressGuard:
    """Applies `ssrf.address_allowed` to resolver answers and to the sockaddr of every connect."""

    def __init__(self, *, allow_private: bool) -> None:
        self.allow_private = allow_private

    def allowed(self, host: str, scope_id: int = 0) -> bool:
        try:
            ip = ipaddress.ip_address(host if not scope_id else f"{host.partition('%')[0]}%{scope_id}")
        except ValueError:
            return False  # not an address we can judge: fail closed
        return ssrf.address_allowed(ip, allow_private=self.allow_private)

    def socket(self, addr_info: tuple[Any, ...]) -> socket.socket:
        family, type_, proto, _, sockaddr = addr_info
        if family not in (socket.AF_INET, socket.AF_INET6):
            raise RefusedAddress()
        scope_id = sockaddr[3] if family == socket.AF_INET6 and len(sockaddr) > 3 else 0
        if not self.allowed(sockaddr[0], scope_id):
            raise RefusedAddress()
        return socket.socket(family=family, type=type_, proto=proto)


class GuardedResolver(AbstractResolver):
    """The default resolver, minus the addresses the guard refuses; nothing left is a failure."""

    def __init__(self, guard: AddressGuard) -> None:
        self._guard = guard
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._guard.allowed(r["host"])]
        if not allowed:
            raise RefusedAddress()
        return allowed

    async def close(self) -> None:
        await self._inner.close()


class GuardedConnector(aiohttp.TCPConnector):
    """A TCPConnector wired to the guard; it owns its resolver, so it closes it too."""

    def __init__(self, *, allow_private: bool, **kwargs: Any) -> None:
        guard = AddressGuard(allow_private=allow_private)
        self._guarded_resolver = GuardedResolver(guard)
        super().__init__(resolver=self._guarded_resolver, socket_factory=guard.socket, **kwargs)

    async def close(self, *, abort_ssl: bool = False) -> None:
        try:
            await super().close(abort_ssl=abort_ssl)
        finally:
            await self._guarded_resolver.close()


async def _refuse_redirects(req: aiohttp.ClientRequest, handler: ClientHandlerType) -> aiohttp.ClientResponse:
    # Runs for each response before aiohttp's redirect loop looks at it: raising here means a
    # Location header is never followed, whatever the caller passed as allow_redirects.
    resp = await handler(req)
    if 300 <= resp.status < 400:
        resp.close()
        raise UpstreamError("redirect", f"http_{resp.status}", REDIRECTED)
    return resp


def create_session(config: Config) -> aiohttp.ClientSession:
    """The shared session: pooled keep-alive connections, guarded connects, no cookies, no env proxies."""
    up = config.upstream
    connector = GuardedConnector(
        allow_private=config.security.allow_private_upstreams,
        limit=0,  # no global cap: the balancer and per-user limits bound concurrency
        limit_per_host=0,
        keepalive_timeout=30,
    )
    return aiohttp.ClientSession(
        connector=connector,
        # sock_read covers both the wait for the first byte and each gap between chunks; the
        # proxy passes tighter per-request timeouts where it needs them.
        timeout=aiohttp.ClientTimeout(
            total=up.total_timeout,
            sock_connect=up.connect_timeout,
            sock_read=max(up.first_token_timeout, up.idle_timeout),
        ),
        headers={"User-Agent": USER_AGENT},
        # Donors share hosts (api.openai.com …): a cookie set for one donor's key must never
        # ride along with another's.
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
        middlewares=(_refuse_redirects,),
    )


async def http_session(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context: the shared session lives as long as the application."""
    async with create_session(app[appkeys.config]) as session:
        app[appkeys.http] = session
        yield


def upstream_headers(api_key: str, *, accept: str | None) -> dict[str, str]:
    """The complete set of request headers sent upstream; nothing from the caller is added."""
    if not SENDABLE_KEY.fullmatch(api_key):
        raise ValueError("the key contains characters that cannot be sent in a header")
    return {
        "Content-Type": "application/json",
        "Accept": accept or "application/json",
        "Authorization": f"Bearer {api_key}",
        "User-Agent": USER_AGENT,
    }


@contextmanager
def map_errors() -> Iterator[None]:
    """The one boundary: aiohttp's exceptions and timeouts in, `UpstreamError` out.

    Wrap only upstream I/O with it: aiohttp's server raises some of the same exception types
    when a *downstream* client goes away.
    """
    try:
        yield
    except UpstreamError:
        raise
    except TimeoutError as e:  # includes aiohttp's ServerTimeoutError family
        raise UpstreamError("timeout", _cause(e)) from e
    except (aiohttp.ClientConnectorError, aiohttp.InvalidURL) as e:
        raise UpstreamError("unreachable", _cause(e)) from e
    except aiohttp.ClientError as e:
        raise UpstreamError("broken", _cause(e)) from e


def _cause(exc: BaseException) -> str:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:
        seen.append(e)
        if isinstance(e, RefusedAddress) or RefusedAddress.MARK in str(e):
            return "refused_address"
        e = getattr(e, "os_error", None) or e.__cause__ or e.__context__
    match exc:
        case aiohttp.ConnectionTimeoutError():
            return "connect_timeout"
        case aiohttp.SocketTimeoutError():
            return "read_timeout"
        case TimeoutError():
            return "timeout"
        case aiohttp.ClientConnectorDNSError():
            return "dns"
        case aiohttp.ClientSSLError():
            return "tls"
        case aiohttp.ClientConnectorError():
            return "connect"
        case aiohttp.InvalidURL():
            return "invalid_url"
        case aiohttp.ServerDisconnectedError():
            return "disconnected"
        case aiohttp.ClientPayloadError():
            return "payload"
        case aiohttp.ClientResponseError():
            return "bad_response"
    return type(exc).__name__


@asynccontextmanager
async def request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    api_key: str,
    accept: str | None = None,
    json: Any = None,
    data: bytes | None = None,
    client_timeout: aiohttp.ClientTimeout | None = None,
) -> AsyncIterator[aiohttp.ClientResponse]:
    """Send one request upstream and yield the response, whatever its status except 3xx.

    Errors up to the response headers become `UpstreamError`; reading the body is the caller's
    I/O, to wrap in `map_errors()`.
    """
    headers = upstream_headers(api_key, accept=accept)
    with map_errors():
        resp = await session.request(
            method,
            url,
            headers=headers,
            json=json,
            data=data,
            allow_redirects=False,
            **({"timeout": client_timeout} if client_timeout is not None else {}),
        )
    try:
        if 300 <= resp.status < 400:  # the middleware already refuses these; belt and braces
            raise UpstreamError("redirect", f"http_{resp.status}", REDIRECTED)
        yield resp
    except BaseException:
        resp.close()  # the body may be half read: this connection cannot be reused
        raise
    else:
        resp.release()  # back to the pool if the body was read to the end, closed otherwise
