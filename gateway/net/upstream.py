"""Talking to donor upstreams: the connect-time SSRF guard, the header allow-list, one request as
an async context manager on the gateway's own HTTP/1.1 client (`h1.Pool`), and the boundary
that turns that client's errors into `UpstreamError`.

Every upstream call (the `/v1` hot path, key tests, health checks) goes through one `h1.Pool`,
so one SSRF guard and one egress proxy serve them all. The guard's parts live here, `h1` uses
them:

* `GuardedResolver` wraps aiohttp's default resolver and drops every refused address, so a
  name that resolves to public and private addresses is only ever tried on the public ones,
  and a name with nothing left fails like a DNS failure. The pool connects to exactly these
  addresses, so DNS rebinding cannot slip an address in between.
* `AddressGuard.socket` is the socket factory: every address, literal (`http://127.0.0.1/`,
  `http://[::ffff:7f00:1]/`) or resolved, reaches it before `connect()`; it checks the exact
  sockaddr and raises instead of creating a socket, so a refused address never gets a SYN.

`h1` never follows redirects, keeps no cookies and reads no proxy settings from the
environment; `request` refuses every 3xx as an error all the same.

Errors. Refused, unreachable and timed-out upstreams all read the same (`UNREACHABLE`), so the
key test cannot be used to scan ports; `UpstreamError.cause` keeps the real reason for the log.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import re
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import aiohttp
import orjson
from yarl import URL

from gateway.apiformat import ApiFormat
from gateway.net import tunnel
from gateway.net.connection import AnswerTooLarge, StaleConnection, UnsupportedEncoding, UpstreamClosed
from gateway.net.h1 import Pool, Response, header_lines
from gateway.net.ssrf import RefusedAddress

try:
    VERSION = importlib.metadata.version("sharekey")
except importlib.metadata.PackageNotFoundError:  # running from a source tree that was never installed
    VERSION = "0"
USER_AGENT = f"sharekey/{VERSION}"

ANTHROPIC_VERSION = "2023-06-01"  # sent to an `anthropic` key when the caller names no version
UNREACHABLE = "could not reach the upstream"
PROXY_UNAVAILABLE = (
    "the gateway's egress proxy failed, so the upstream was not reached; this says nothing about the key"
)
REDIRECTED = "the upstream answered with a redirect, which the gateway does not follow"
# Printable ASCII only: anything else in a header is an injection attempt or a copy-paste accident.
SENDABLE_KEY = re.compile(r"[\x21-\x7e]+")


class UpstreamError(Exception):
    """A request to an upstream failed below HTTP (or was redirected).

    `kind` drives the gateway's decisions: "unreachable" (refused by policy, DNS, connect, TLS),
    "timeout", "broken" (the connection failed mid-exchange), "redirect", "proxy" (the egress
    proxy failed: the gateway's failure, never the key's). `message` is the only
    thing a caller may see. `cause` is a short code for the log ("refused_address", "dns" …).
    """

    def __init__(self, kind: str, cause: str, message: str = UNREACHABLE) -> None:
        super().__init__(message)
        self.kind = kind
        self.cause = cause
        self.message = message


def upstream_headers(api_key: str, *, accept: str | None, api_format: ApiFormat = ApiFormat.OPENAI) -> dict[str, str]:
    """The complete set of request headers sent upstream; nothing from the caller is added (the
    Anthropic route adds the caller's `anthropic-version` and `anthropic-beta`, checked)."""
    if not SENDABLE_KEY.fullmatch(api_key):
        raise ValueError("the key contains characters that cannot be sent in a header")
    if api_format == ApiFormat.ANTHROPIC:
        auth = {"x-api-key": api_key}
    elif api_format == ApiFormat.GEMINI:
        auth = {"x-goog-api-key": api_key}
    else:
        auth = {"Authorization": f"Bearer {api_key}"}
    accepts = accept or "application/json"
    return {"Content-Type": "application/json", "Accept": accepts, **auth, "User-Agent": USER_AGENT}


@contextmanager
def map_errors() -> Iterator[None]:
    """The one boundary: `h1`'s exceptions in, `UpstreamError` out.

    `h1.AnswerTooLarge` passes through unchanged: whether a large answer is a failure, and
    whose, is the caller's to say. Wrap only upstream I/O with it.
    """

    try:
        yield
    except (UpstreamError, AnswerTooLarge):
        raise
    except tunnel.ProxyError as e:  # before TimeoutError and OSError: a timeout at the proxy included
        raise UpstreamError(
            "proxy",
            "proxy_unreachable" if isinstance(e, tunnel.ProxyUnreachable) else "proxy_refused",
            PROXY_UNAVAILABLE,
        ) from e
    except TimeoutError as e:  # h1.UpstreamTimeout: past a deadline or connect_timeout
        raise UpstreamError("timeout", "timeout") from e
    except OSError as e:  # while connecting: the guard, DNS, TCP, TLS, the egress proxy
        raise UpstreamError("unreachable", _connect_cause(e)) from e
    except UpstreamClosed as e:
        raise UpstreamError("broken", _broken_cause(e)) from e
    except aiohttp.ClientError as e:  # nothing else in h1 raises these; kept for the boundary's sake
        raise UpstreamError("broken", type(e).__name__) from e


def _connect_cause(exc: OSError) -> str:
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in seen:  # aiohappyeyeballs may wrap several attempts' errors
        seen.append(e)
        if isinstance(e, RefusedAddress) or RefusedAddress.MARK in str(e):
            return "refused_address"
        e = e.__cause__ or e.__context__
    if isinstance(exc, socket.gaierror):
        return "dns"
    if isinstance(exc, ssl.SSLError):
        return "tls"
    return "connect"


def _broken_cause(exc: BaseException) -> str:

    match exc:
        case UnsupportedEncoding():
            return "encoding"
        case StaleConnection():
            return "disconnected"
    return "broken"


@asynccontextmanager
async def request(
    pool: Pool,
    method: str,
    url: str,
    *,
    api_key: str,
    accept: str | None = None,
    json: Any = None,
    timeout: float | None = None,  # noqa: ASYNC109 - bounds the wait for the answer's head only
    api_format: ApiFormat = ApiFormat.OPENAI,
) -> AsyncIterator[Response]:
    """Send one request upstream and yield the answer, whatever its status except 3xx.

    `api_format` "anthropic" sends the key as `x-api-key` with `anthropic-version: 2023-06-01`
    (the key test and health checks; the relay builds its own header lines).

    Errors up to the answer's head become `UpstreamError` (a 3xx too: kind "redirect"); reading
    the body is the caller's I/O, to wrap in `map_errors()` and bound by a deadline or an outer
    `asyncio.timeout`. On exit the connection goes back to the pool if the answer was read to
    its end, and is closed otherwise (an error mid-body included).
    """

    headers = upstream_headers(api_key, accept=accept, api_format=api_format)
    if api_format == ApiFormat.ANTHROPIC:
        headers["anthropic-version"] = ANTHROPIC_VERSION
    headers["Accept-Encoding"] = "identity"
    body = orjson.dumps(json) if json is not None else b""
    try:
        target = URL(url)
    except ValueError:
        raise UpstreamError("unreachable", "invalid_url") from None
    if target.scheme not in ("http", "https") or not target.raw_host:
        raise UpstreamError("unreachable", "invalid_url")
    deadline = asyncio.get_running_loop().time() + timeout if timeout is not None else None
    with map_errors():
        resp = await pool.request(target, header_lines(headers), body, method=method, deadline=deadline)
    try:
        if 300 <= resp.status < 400:
            raise UpstreamError("redirect", f"http_{resp.status}", REDIRECTED)
        yield resp
    finally:
        resp.release()  # reused only after a complete answer; closed otherwise
