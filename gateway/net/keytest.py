"""The live key test: is this key, at this base URL, a working upstream of its `api_format`?

Used when a key is registered or changed, by `POST /api/shared-keys/test`, `sharekey keys add`
and the health checks. Two requests: `GET {base}/models` (what the upstream says it offers) and a
one-token answer (whether the key really works): a chat completion for an `openai` key, a message
(`POST {base}/messages`, `x-api-key` and `anthropic-version`) for an `anthropic` one, a
`generateContent` (`x-goog-api-key`) for a `gemini` one. Google answers a bad key with a 400 whose
body says `API_KEY_INVALID`: that is a rejected key, like a 401. The result
speaks in our words only: never the key, the base URL or anything the upstream sent, except the
model names it lists.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import quote

import orjson
import structlog

from gateway.apiformat import ApiFormat
from gateway.net import h1, upstream
from gateway.net.upstream import UpstreamError

log = structlog.get_logger(__name__)

MAX_BODY = 16 * 1024 * 1024  # model lists of large aggregators run to a few MB; refuse a firehose
MAX_MISSING_SHOWN = 5

INVALID_KEY = "the upstream rejected the key"
RATE_LIMITED = "the upstream is rate-limiting this key or its quota is used up; try again later"
NOT_COMPATIBLE = "the upstream does not answer like an OpenAI-compatible API"
NOT_ANTHROPIC = "the upstream does not answer like the Anthropic API"
NOT_GEMINI = "the upstream does not answer like the Gemini API"
GEMINI_PAGE = 1000  # Google lists 50 models a page unless asked; 1000 is its largest page
KEY_INVALID = b"API_KEY_INVALID"  # Google's reason for a bad key, in a 400
ANTHROPIC_PAGE = 1000  # Anthropic lists 20 models a page unless asked; 1000 is its largest page
NO_MODEL = "the upstream lists no models; name the models this key serves"
BAD_KEY_TEXT = "the key contains characters that are not allowed"


@dataclass(frozen=True, slots=True)
class KeyTestResult:
    ok: bool
    latency_ms: int  # wall time of the whole test, failures included
    models: list[str]  # what GET /models listed; empty if it listed nothing
    error: str | None  # our words, fit to show to the key's owner
    reason: str | None  # invalid_key | model_not_offered | unreachable | not_openai_compatible
    #                     | rate_limited | upstream_error  (not_openai_compatible also stands for
    #                     "not Anthropic-compatible" on an `anthropic` key: one code per failure kind)
    #                     | proxy_unavailable: the gateway's egress proxy failed, the key is not judged


class _Failed(Exception):
    def __init__(self, reason: str, error: str, cause: str | None = None) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.cause = cause


async def test_key(
    pool: h1.Pool,
    base_url: str,
    api_key: str,
    models: list[str] | None,
    *,
    timeout: float,  # noqa: ASYNC109 - part of the contract: the whole test's budget
    api_format: ApiFormat = ApiFormat.OPENAI,
) -> KeyTestResult:
    """Test a key against its (already checked) base URL, within `timeout` seconds in total."""
    start = time.monotonic()
    listed: list[str] = []
    try:
        upstream.upstream_headers(api_key, accept=None)  # refuse an unsendable key before any I/O
    except ValueError:
        return _finish(start, listed, _Failed("invalid_key", BAD_KEY_TEXT))
    base = base_url.rstrip("/")
    try:
        async with asyncio.timeout(timeout):
            listed_or_none, complete = await _list_models(pool, base, api_key, api_format)
            listed = listed_or_none or []
            declared = [m for m in models or [] if m]
            if declared and listed_or_none is not None and complete:
                offered = set(listed)
                missing = [m for m in declared if m not in offered]
                if missing:
                    raise _Failed("model_not_offered", _missing_message(missing))
            model = declared[0] if declared else (listed[0] if listed else None)
            if model is None:
                raise _Failed("model_not_offered", NO_MODEL)
            await _complete(pool, base, api_key, model, api_format)
    except _Failed as failed:
        return _finish(start, listed, failed)
    except UpstreamError as e:
        reason = {"redirect": "upstream_error", "proxy": "proxy_unavailable"}.get(e.kind, "unreachable")
        return _finish(start, listed, _Failed(reason, e.message, e.cause))
    except TimeoutError:
        return _finish(start, listed, _Failed("unreachable", upstream.UNREACHABLE, "test_timeout"))
    return _finish(start, listed, None)


# pytest would otherwise collect `test_key` from any test module that imports it by name.
test_key.__test__ = False  # type: ignore[attr-defined]


def _finish(start: float, listed: list[str], failed: _Failed | None) -> KeyTestResult:
    latency_ms = round((time.monotonic() - start) * 1000)
    if failed is None:
        log.info("key_tested", ok=True, latency_ms=latency_ms, models=len(listed))
        return KeyTestResult(ok=True, latency_ms=latency_ms, models=listed, error=None, reason=None)
    log.info("key_tested", ok=False, reason=failed.reason, cause=failed.cause, latency_ms=latency_ms)
    return KeyTestResult(False, latency_ms, listed, failed.error, failed.reason)


def _missing_message(missing: list[str]) -> str:
    shown = ", ".join(missing[:MAX_MISSING_SHOWN])
    more = len(missing) - MAX_MISSING_SHOWN
    return f"the upstream does not offer: {shown}" + (f" (and {more} more)" if more > 0 else "")


def models_url(base: str, api_format: ApiFormat) -> str:
    if api_format == ApiFormat.ANTHROPIC:
        return f"{base}/models?limit={ANTHROPIC_PAGE}"
    return f"{base}/models?pageSize={GEMINI_PAGE}" if api_format == ApiFormat.GEMINI else f"{base}/models"


NOT_IN_FORMAT = {ApiFormat.OPENAI: NOT_COMPATIBLE, ApiFormat.ANTHROPIC: NOT_ANTHROPIC, ApiFormat.GEMINI: NOT_GEMINI}


def _not_compatible(api_format: ApiFormat, cause: str) -> _Failed:
    return _Failed("not_openai_compatible", NOT_IN_FORMAT[api_format], cause)


def _model_ids(body: Any, api_format: ApiFormat) -> list[str] | None:
    """The ids of a model list: OpenAI's and Anthropic's `data[].id`, Google's `models[].name`
    ("models/gemini-2.5-flash", the prefix dropped); None when it is not such a list."""
    if api_format == ApiFormat.GEMINI:
        models = body.get("models", []) if isinstance(body, dict) else None
        if not isinstance(models, list) or not all(
            isinstance(m, dict) and isinstance(m.get("name"), str) for m in models
        ):
            return None
        return [m["name"].removeprefix("models/") for m in models]
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(isinstance(m, dict) and isinstance(m.get("id"), str) for m in data):
        return None
    return [m["id"] for m in data]


async def _rejected_by_google(resp: h1.Response, api_format: ApiFormat) -> bool:
    """A `gemini` key's 400 that says the key is not valid (its first 64 KiB read)."""
    if api_format != ApiFormat.GEMINI or resp.status != 400:
        return False
    with upstream.map_errors():
        return KEY_INVALID in await resp.read_prefix(64 * 1024)


async def _list_models(pool: h1.Pool, base: str, api_key: str, api_format: ApiFormat) -> tuple[list[str] | None, bool]:
    """The model ids the upstream lists, or None when it has no model list (404/405/501); and
    whether that is the whole list (an Anthropic page with `has_more` is not)."""
    url = models_url(base, api_format)
    async with upstream.request(pool, "GET", url, api_key=api_key, api_format=api_format) as resp:
        if resp.status in (404, 405, 501):
            return None, False
        _check_status(401 if await _rejected_by_google(resp, api_format) else resp.status)
        body = await _read_json(resp, api_format=api_format)
    ids = _model_ids(body, api_format)
    if ids is None:
        raise _not_compatible(api_format, "models_shape")
    return ids, body.get("has_more") is not True and not body.get("nextPageToken")


@asynccontextmanager
async def one_token_completion(
    pool: h1.Pool, base: str, api_key: str, model: str, api_format: ApiFormat = ApiFormat.OPENAI
) -> AsyncIterator[h1.Response]:
    """A one-token chat completion (an `anthropic` key: a one-token message); yields the answer
    whatever its status, its body unread (but for a 400, whose first 64 KiB were read to look
    for `max_tokens`).

    Reasoning models refuse `max_tokens` and ask for `max_completion_tokens` instead: a 400 that
    names `max_tokens` is tried once more with it. The key test and the health checks both ask
    through here, so a key that passes one passes the other. No deadline of its own: callers
    bound it (`asyncio.timeout`)."""
    messages = [{"role": "user", "content": "ping"}]
    if api_format == ApiFormat.GEMINI:
        payload = {
            "contents": [{"role": "user", "parts": [{"text": "ping"}]}],
            "generationConfig": {"maxOutputTokens": 1},
        }
        url = f"{base}/models/{quote(model, safe='-._~')}:generateContent"
        async with upstream.request(pool, "POST", url, api_key=api_key, json=payload, api_format=api_format) as resp:
            yield resp
        return
    if api_format == ApiFormat.ANTHROPIC:
        payload = {"model": model, "max_tokens": 1, "messages": messages}
        async with upstream.request(
            pool, "POST", f"{base}/messages", api_key=api_key, json=payload, api_format=api_format
        ) as resp:
            yield resp
        return
    url = f"{base}/chat/completions"
    for field in ("max_tokens", "max_completion_tokens"):
        payload = {"model": model, "messages": messages, field: 1}
        async with upstream.request(pool, "POST", url, api_key=api_key, json=payload) as resp:
            if field == "max_tokens" and resp.status == 400:
                with upstream.map_errors():
                    objection = await resp.read_prefix(64 * 1024)
                if b"max_tokens" in objection:
                    continue
            yield resp
            return


async def _complete(pool: h1.Pool, base: str, api_key: str, model: str, api_format: ApiFormat) -> None:
    anthropic = api_format == ApiFormat.ANTHROPIC
    async with one_token_completion(pool, base, api_key, model, api_format) as resp:
        status = 401 if await _rejected_by_google(resp, api_format) else resp.status
        if status == 404:
            # OpenAI and Anthropic answer 404 for an unknown model (Anthropic: a `not_found_error`);
            # anything not shaped like their error is most likely no such endpoint at all.
            body = await _read_json(resp, strict=False)
            if _unknown_model(body, anthropic=anthropic):
                raise _Failed("model_not_offered", f"the upstream does not offer: {model}", "http_404")
            raise _not_compatible(api_format, "http_404")
        _check_status(status)
        body = await _read_json(resp, api_format=api_format)
    if api_format == ApiFormat.GEMINI:
        if not isinstance(body, dict) or not isinstance(
            body.get("candidates", body.get("promptFeedback")), list | dict
        ):
            raise _not_compatible(api_format, "generate_shape")
    elif anthropic:
        if not isinstance(body, dict) or body.get("type") != "message":
            raise _not_compatible(api_format, "message_shape")
    elif not isinstance(body, dict) or not isinstance(body.get("choices"), list):
        raise _not_compatible(api_format, "completion_shape")


def _unknown_model(body: Any, *, anthropic: bool) -> bool:
    if not isinstance(body, dict):
        return False
    if not anthropic:
        return "error" in body
    error = body.get("error")
    return body.get("type") == "error" and isinstance(error, dict) and error.get("type") == "not_found_error"


def _check_status(status: int) -> None:
    if status in (401, 403):
        raise _Failed("invalid_key", INVALID_KEY, f"http_{status}")
    if status == 429:
        raise _Failed("rate_limited", RATE_LIMITED, "http_429")
    if not 200 <= status < 300:
        raise _Failed("upstream_error", f"the upstream answered with an error (HTTP {status})", f"http_{status}")


async def _read_json(resp: h1.Response, *, strict: bool = True, api_format: ApiFormat = ApiFormat.OPENAI) -> Any:
    """The body as JSON, read with a size cap; a non-JSON body fails the test (or is None if not strict).

    orjson refuses nesting deeper than 1024 levels with a `JSONDecodeError` (a `ValueError`), so a
    hostile body cannot raise `RecursionError` here the way the standard library's parser can."""
    try:
        with upstream.map_errors():
            raw = await resp.read(MAX_BODY)
    except h1.AnswerTooLarge:
        raise _not_compatible(api_format, "body_too_large") from None
    try:
        return orjson.loads(raw)
    except ValueError:
        if not strict:
            return None
        raise _not_compatible(api_format, "not_json") from None


# --- the health checks' probe: one cheap request, judged by its status -----------------------


class ProbeResult(StrEnum):
    OK = "ok"  # a 2xx
    REJECTED = "rejected"  # 401/403: the upstream refuses the key
    RATE_LIMITED = "rate_limited"  # 429
    FAILED = "failed"  # anything else: unreachable, timed out, another status
    PROXY_UNAVAILABLE = "proxy_unavailable"  # the gateway's egress proxy failed: nothing known of the key


@dataclass(frozen=True, slots=True)
class Probe:
    result: ProbeResult
    http_status: int | None = None
    retry_after: float | None = None
    detail: str = ""


async def probe(
    pool: h1.Pool,
    base_url: str,
    api_key: str,
    model: str,
    *,
    method: str,
    timeout: float,  # noqa: ASYNC109 - the whole probe's budget
    api_format: ApiFormat = ApiFormat.OPENAI,
) -> Probe:
    """One cheap live request: `GET /models`, or a 1-token completion (also when there is no model
    list), asked like the key test asks it (`keytest.one_token_completion`), in the key's format."""
    base = base_url.rstrip("/")
    try:
        async with asyncio.timeout(timeout):
            if method == "models":
                url = models_url(base, api_format)
                async with upstream.request(pool, "GET", url, api_key=api_key, api_format=api_format) as resp:
                    found = _judge(resp.status, resp.headers.get("Retry-After", ""))
                    if await _rejected_by_google(resp, api_format):
                        found = GOOGLE_REJECTED
                if found.http_status not in (404, 405, 501):
                    return found
            async with one_token_completion(pool, base, api_key, model, api_format) as resp:
                if await _rejected_by_google(resp, api_format):
                    return GOOGLE_REJECTED
                return _judge(resp.status, resp.headers.get("Retry-After", ""))
    except upstream.UpstreamError as e:
        return Probe(ProbeResult.PROXY_UNAVAILABLE if e.kind == "proxy" else ProbeResult.FAILED, detail=e.message)
    except TimeoutError:
        return Probe(ProbeResult.FAILED, detail=upstream.UNREACHABLE)


GOOGLE_REJECTED = Probe(ProbeResult.REJECTED, 400, detail=f"{INVALID_KEY} (HTTP 400, API_KEY_INVALID)")


def _judge(status: int, retry_after: str) -> Probe:
    if 200 <= status < 300:
        return Probe(ProbeResult.OK, status)
    if status in (401, 403):
        return Probe(ProbeResult.REJECTED, status, detail=f"{INVALID_KEY} (HTTP {status})")
    if status == 429:
        seconds = float(retry_after) if retry_after.isdigit() and 0 < int(retry_after) <= 86400 else None
        return Probe(ProbeResult.RATE_LIMITED, status, seconds, "rate limited by the upstream")
    return Probe(ProbeResult.FAILED, status, detail=f"the upstream answered with an error (HTTP {status})")
