"""CORS on `/v1`, for chat apps that call the gateway from the browser (NextChat, Chatbox web,
LobeChat's client mode, Open WebUI direct connections).

    OPTIONS /v1, /v1/*   -> 204, no authentication (the preflight middleware)
    every /v1 answer     -> Access-Control-Allow-Origin + Expose-Headers (on_response_prepare)
    the same on the balance paths outside /v1 (`BALANCE_PATHS`: /dashboard/billing/*, /api/usage/token)

`server.cors_origins`: ["*"] (the default) answers `*` to every origin; a list of origins echoes
the request's `Origin` when it is listed (with `Vary: Origin`); [] turns CORS off entirely.

The gateway token travels in `Authorization`, never in a cookie, so `*` is safe here and
`Access-Control-Allow-Credentials` is never sent: a page on another origin can use a token only
if it already has it. The cookie-authenticated `/api` and pages get no CORS at all (the public
board JSON sets its own `*`, in gateway/web/board/thanks.py).

Everything that can be is computed once, in `setup`; per response the signal costs a prefix
check on the path and, with listed origins, one set lookup.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

ALLOW_METHODS = "GET, POST, OPTIONS"
EXPOSE_HEADERS = "X-Request-Id, X-Sharekey-Provider, Retry-After, x-should-retry"
MAX_AGE = "86400"  # Chromium caps it at 2 hours, Firefox at 24: each asks again at most that often
MAX_ALLOW_HEADERS = 2048  # the OpenAI and Anthropic browser SDKs ask for ~400 characters of names

# RFC 9110 token characters, as a comma-separated list (with optional spaces): nothing else is echoed.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_LIST = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z, ]*")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# The balance endpoints outside /v1 (relay/balances.py): browser tools poll them with the token too.
BALANCE_PATHS = frozenset({"/dashboard/billing/subscription", "/dashboard/billing/usage", "/api/usage/token"})


def is_v1(path: str) -> bool:
    """Whether the path answers CORS: /v1 and the balance endpoints, all token-authenticated."""
    return path.startswith("/v1/") or path == "/v1" or path in BALANCE_PATHS


def allow_headers(requested: str) -> str:
    """`Access-Control-Request-Headers` made safe to echo: unchanged when it is a plain list of
    header names within the cap (what browsers send), else only its valid names, up to the cap."""
    if len(requested) <= MAX_ALLOW_HEADERS and _TOKEN_LIST.fullmatch(requested):
        return requested
    kept: list[str] = []
    size = 0
    for name in requested.split(","):
        name = name.strip()
        if not _TOKEN.fullmatch(name):
            continue
        size += len(name) + 1
        if size > MAX_ALLOW_HEADERS + 1:
            break
        kept.append(name)
    return ",".join(kept)


class Cors:
    def __init__(self, origins: Iterable[str]) -> None:
        origins = tuple(origins)
        self.any_origin = "*" in origins
        # Browsers send the serialised origin: lower-case, no trailing slash, no default port.
        self.origins = frozenset(o.strip().rstrip("/").lower() for o in origins if o != "*")

    def allowed_origin(self, request: web.Request) -> str | None:
        if self.any_origin:
            return "*"
        origin = request.headers.get("Origin")
        return origin if origin in self.origins else None

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every /v1 answer, whatever produced it (a handler, the error middleware, aiohttp's own
        404/405, a stream the relay prepared): the signal runs just before the headers go out."""
        if not is_v1(request.path):
            return
        headers = response.headers
        if self.any_origin:
            headers["Access-Control-Allow-Origin"] = "*"
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
            return
        vary = headers.get("Vary")  # the answer depends on Origin: shared caches must keep them apart
        if vary is None:
            headers["Vary"] = "Origin"
        elif "origin" not in vary.lower():
            headers["Vary"] = vary + ", Origin"
        origin = request.headers.get("Origin")
        if origin in self.origins:
            headers["Access-Control-Allow-Origin"] = origin
            headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS

    @web.middleware
    async def preflight(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """OPTIONS on any /v1 path, known or not, before authentication.

        An origin that is not listed still gets a 204, only without any Access-Control-* header.
        The Fetch standard fails a preflight that lacks the header exactly as one with a 4xx (the
        page sees the same TypeError either way), so a 403 would add nothing but an answer that
        depends on who asks; rs/cors (Go) and Express's `cors` answer this way too, while
        Starlette (400) and Spring (403) refuse instead."""
        if request.method != "OPTIONS" or not is_v1(request.path):
            return await handler(request)
        response = web.Response(status=204)
        if self.allowed_origin(request) is not None:
            response.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                response.headers["Access-Control-Allow-Headers"] = allow_headers(requested)
            response.headers["Access-Control-Max-Age"] = MAX_AGE
        return response  # Allow-Origin and Vary come from the signal, as on every /v1 answer


def setup(app: web.Application, origins: Iterable[str]) -> None:
    """Wire CORS into the app (before it starts); nothing at all when `origins` is empty, so
    OPTIONS then gets the same 405 as any other method a route does not take."""
    origins = tuple(origins)
    if not origins:
        return
    cors = Cors(origins)
    app.middlewares.append(cors.preflight)
    app.on_response_prepare.append(cors.on_response_prepare)
