"""Errors and the one middleware that renders them.

    GatewayError(status, type, code, message)        OpenAI shape on /v1
    ├── BadRequest            400  invalid_request_error
    ├── InvalidToken          401  invalid_api_key
    ├── Forbidden             403  model_not_permitted  (no key serving the model admits the caller)
    ├── NoKeyForModel         404  model_not_found
    ├── NotFound              404  not_found  (e.g. response_not_found)
    ├── RequestTimeout        408  request_timeout  (a body slower than server.body_timeout)
    ├── PayloadTooLarge       413  request_too_large
    ├── LimitReached          429  rate_limit_exceeded  (retry_after; x-should-retry: false)
    ├── UpstreamFailed        502  upstream_error
    ├── NotConfigured         503  service_unavailable  (retry_after)
    ├── ServerBusy            503  server_busy  (retry_after: too many bodies being read at once)
    └── (503 pool_busy: every key for the model is at a per-minute or concurrency cap)
    ApiError(status, code, message, field)           {"error": {...}} on /api and pages  (retry_after)

On `/v1/messages…` (the Anthropic route) a GatewayError renders in Anthropic's shape instead,
`{"type": "error", "error": {"type", "message"}}`, with the same status and Retry-After; on
`/v1beta/…` (Gemini's routes) in Google's, `{"error": {"code", "message", "status"}}`.

Handlers raise; `error_middleware` renders by surface. Anything else is logged with its traceback
and answered with a generic 500 that reveals nothing. Messages are always our own words: never an
upstream body, a base URL or a key.

`POSTGRES_DOWN` and `REDIS_DOWN` are what a store that is down, restarting or unreachable raises:
the one definition every `except` about an outage uses.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.exceptions
import structlog
from aiohttp import web

from gateway.apiformat import ApiFormat, spoken_on

log = structlog.get_logger(__name__)

# "PostgreSQL is down" (or unreachable, restarting, refusing connections).
POSTGRES_DOWN: tuple[type[Exception], ...] = (
    OSError,  # connect refused or reset, DNS, TLS: asyncpg lets socket errors through
    TimeoutError,  # connect, pool acquire or a query past its timeout (an OSError too; named for the reader)
    asyncpg.PostgresError,  # the server answered with an error: shutting down, too many connections, …
    asyncpg.InterfaceError,  # the client side gave up: connection closed mid-call, pool closing
    asyncpg.InternalClientError,  # a call on a connection the server has just terminated (a restart)
)

# "Redis is down" (or unreachable, loading, a read-only replica after a failover).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.exceptions.RedisError,  # redis-py's and our line's ConnectionError / TimeoutError, error replies
    OSError,  # socket and TLS errors that reach us unwrapped
    TimeoutError,  # asyncio.timeout() around a call (an OSError too; named for the reader)
)


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code or self.code
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}


class BadRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class InvalidToken(GatewayError):
    status, type, code = 401, "invalid_request_error", "invalid_api_key"


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "model_not_permitted"


class NoKeyForModel(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class NotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "not_found"


class RequestTimeout(GatewayError):
    status, type, code = 408, "invalid_request_error", "request_timeout"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class LimitReached(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"

    def headers(self) -> dict[str, str]:
        return {**super().headers(), "x-should-retry": "false"}


class UpstreamFailed(GatewayError):
    status, type, code = 502, "upstream_error", "upstream_error"


class NotConfigured(GatewayError):
    status, type, code = 503, "service_unavailable", "service_unavailable"


class ServerBusy(NotConfigured):
    code = "server_busy"


class ApiError(Exception):
    """An error of the /api surface: `{"error": {"message", "code", "field"?}}`."""

    def __init__(
        self, status: int, code: str, message: str, field: str | None = None, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"message": self.message, "code": self.code}
        if self.field:
            error["field"] = self.field
        return {"error": error}


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid_field", message, field)


def openai_error(err: GatewayError) -> web.Response:
    body = {"error": {"message": err.message, "type": err.type, "code": err.code}}
    return web.json_response(body, status=err.status, headers=err.headers())


# Anthropic's error types by status (its API reference, "Errors").
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "overloaded_error",
}


def anthropic_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}


def anthropic_error(err: GatewayError) -> web.Response:
    """The same error on the Anthropic route (`/v1/messages…`): Anthropic's shape, `request-id`
    added by the request-context middleware."""
    return web.json_response(anthropic_body(err.status, err.message), status=err.status, headers=err.headers())


# Google's canonical error status names by HTTP status (Gemini's API, "Troubleshooting").
GOOGLE_STATUSES = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    405: "INVALID_ARGUMENT",
    408: "DEADLINE_EXCEEDED",
    413: "INVALID_ARGUMENT",
    429: "RESOURCE_EXHAUSTED",
    499: "CANCELLED",
    500: "INTERNAL",
    502: "UNAVAILABLE",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}


def gemini_body(status: int, message: str) -> dict[str, Any]:
    return {"error": {"code": status, "message": message, "status": GOOGLE_STATUSES.get(status, "UNKNOWN")}}


def gemini_error(err: GatewayError) -> web.Response:
    """The same error on Gemini's routes (`/v1beta/…`): Google's shape."""
    return web.json_response(gemini_body(err.status, err.message), status=err.status, headers=err.headers())


RENDER: dict[ApiFormat, Callable[[GatewayError], web.Response]] = {
    ApiFormat.OPENAI: openai_error,
    ApiFormat.ANTHROPIC: anthropic_error,
    ApiFormat.GEMINI: gemini_error,
}


_HTTP_TO_GATEWAY: dict[int, type[GatewayError]] = {400: BadRequest, 401: InvalidToken, 413: PayloadTooLarge}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    on_v1 = request.path.startswith(("/v1/", "/v1beta/")) or request.path in ("/v1", "/v1beta")
    render = RENDER[spoken_on(request.path)]
    try:
        return await handler(request)
    except GatewayError as e:
        return render(e) if on_v1 else _api_json(e.status, e.code or "error", e.message, e.headers())
    except ApiError as e:
        return web.json_response(e.body(), status=e.status, headers=e.headers())
    except web.HTTPException as e:
        if e.status < 400 or e.empty_body:
            raise
        message = _HTTP_MESSAGES.get(e.status, e.reason)
        if on_v1:
            cls = _HTTP_TO_GATEWAY.get(e.status)
            err = cls(message) if cls else GatewayError(message, code=_slug(e.reason))
            if cls is None:
                err.status, err.type = e.status, "invalid_request_error"
            return render(err)
        if request.path.startswith("/api/") or "application/json" in request.headers.get("Accept", ""):
            return _api_json(e.status, _slug(e.reason), message)
        raise
    except Exception:
        log.exception("unhandled_error", path=request.path)
        message = "The gateway hit an internal error; the request id identifies it in the logs."
        if on_v1:
            return render(GatewayError(message))
        return _api_json(500, "internal_error", message)


_HTTP_MESSAGES = {
    404: "Not found.",
    405: "Method not allowed.",
    413: "The request body is too large.",
}


def _api_json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"message": message, "code": code}}, status=status, headers=headers)


def _slug(reason: str) -> str:
    return reason.lower().replace(" ", "_")
