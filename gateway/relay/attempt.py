"""One attempt on one key: send, then either relay the answer or report why it failed.

Deadlines, on the loop's clock: the whole attempt within `total_timeout`; a non-stream answer, or
a stream's first content event, within `first_token_timeout`; then each gap of a stream within
`idle_timeout` (see `stream`). A failure puts the key in the state its cause calls for.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import orjson
import structlog
from aiohttp import web

from gateway import appkeys, metrics, tracing
from gateway.apiformat import ApiFormat
from gateway.errors import REDIS_DOWN, anthropic_body, gemini_body
from gateway.log import scrub, send
from gateway.net import h1, ssrf, tunnel
from gateway.net.h1 import UPSTREAM_POOL
from gateway.relay import plan, sse
from gateway.relay.balancer import BALANCER, Balancer
from gateway.relay.call import NOT_THE_KEYS_FAULT, Call, Failure, FailureKind, Recorder, key_secrets, provider_headers
from gateway.relay.cooling import DISABLED_FOR, RELAY_COOLDOWNS
from gateway.relay.formats.shared import TranslationError
from gateway.relay.formats.usage import Usage
from gateway.relay.keyindex import KEY_INDEX, PoolKey
from gateway.relay.keystate import KEY_STATES, KeyStates
from gateway.relay.picks import Pick
from gateway.relay.stream import relay
from gateway.relay.usage import UsageStatus
from gateway.store.sharedkeys import DisabledBy

log = structlog.get_logger(__name__)

MAX_ERROR_BODY = 64 * 1024
ERROR_BODY_WAIT = 5.0  # seconds an error status may take to send its body
CALLER_ERRORS = frozenset({400, 404, 413, 422})
# A 404 that says the key does not serve the model after all: another key may.
NOT_SERVED = frozenset({"model_not_found", "not_found_error"})
JSON_START = re.compile(rb"[ \t\r\n]*[{\[]")
# A 429 or 402 whose code or words say the account's quota or balance is gone (not a per-minute
# rate): retrying it today only costs callers latency.
EXHAUSTED_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "insufficient_balance"})
EXHAUSTED_WORDS = re.compile(r"quota|余额不足|额度|insufficient.balance|credit balance is too low", re.IGNORECASE)
PER_DAY = re.compile(r"per.?day|每日|每天", re.IGNORECASE)  # Google's quotaId ...PerDay...: gone for today
PER_MINUTE = re.compile(r"per.?minute|rate.limit|retryDelay|分钟", re.IGNORECASE)
RETRY_DELAY = re.compile(rb'"retryDelay"\s*:\s*"(\d{1,5})(?:\.\d+)?s"')  # Google's RetryInfo
GOOGLE_KEY_INVALID = b"API_KEY_INVALID"  # Google's reason for a bad key, in a 400


async def attempt(call: Call, key: PoolKey, pick: Pick | None) -> web.StreamResponse | Failure:
    """`_attempt`, in its own span when tracing is on."""
    with tracing.span("attempt", client=True, key_id=key.id, model=call.model, attempt=call.attempts) as current:
        result = await _attempt(call, key, pick)
        if isinstance(result, Failure):
            tracing.note(current, result=str(result.kind), http_status=result.http_status)
        else:
            tracing.note(current, result="ok", http_status=result.status)
        return result


async def _attempt(call: Call, key: PoolKey, pick: Pick | None) -> web.StreamResponse | Failure:
    """Forward to one key. Returns the response once committed (or a caller error to relay), or a Failure.

    Deadlines, on the loop's clock: the whole attempt within `total_timeout`; a non-stream answer,
    or a stream's first content event, within `first_token_timeout`; then each gap of a stream
    within `idle_timeout`. Every wait on the upstream carries its deadline (see `h1`)."""
    app = call.request.app
    cfg = app[appkeys.config].upstream
    pool = app[UPSTREAM_POOL]
    record = Recorder(call, key, pick)
    try:
        record.upstream_model = app[KEY_INDEX].upstream_model(call.model, key)
        route = plan.plan(call, key, record.upstream_model)
    except TranslationError as e:
        call.untranslatable = str(e)
        return record.failed(Failure(FailureKind.UNTRANSLATABLE, detail=str(e)[:200]))
    now = asyncio.get_running_loop().time()
    deadline = now + cfg.total_timeout
    first = min(deadline, now + cfg.first_token_timeout)
    t0 = time.perf_counter()
    resp: h1.Response | None = None
    try:
        resp = await pool.request(route.url, route.head, route.body, deadline=first)
        if resp.status < 200 or resp.status >= 300:
            return await failed_status(call, key, resp, record, first)
        if call.stream and "text/event-stream" in resp.headers.get("Content-Type", ""):
            return await relay(call, key, resp, record, first, deadline, plan.adapter(route, call), t0)
        raw = await resp.read(cfg.max_response_bytes, first)
        if not _is_json(raw, resp.content_type):
            # A 2xx page of HTML (a captive portal, a misrouted proxy) is not an answer to relay.
            return record.failed(Failure(FailureKind.UPSTREAM_ERROR, resp.status, detail="the answer is not JSON"))
        body, usage = plan.answer(route, call, raw)
        if call.endpoint == "/responses":
            call.response_id = sse.response_id(sse.parse(body))
    except TimeoutError:
        return record.failed(Failure(FailureKind.TIMEOUT, detail="timed out"))
    except h1.AnswerTooLarge as e:
        return record.failed(Failure(FailureKind.TOO_LARGE, detail=str(e)))
    except h1.UnsupportedEncoding as e:
        return record.failed(Failure(FailureKind.UNSUPPORTED_ENCODING, detail=str(e)))
    except ValueError:  # a translated answer that is not what its format promises
        return record.failed(Failure(FailureKind.UPSTREAM_ERROR, detail="the answer could not be translated"))
    except (aiohttp.ClientError, OSError) as e:
        return record.failed(connect_failure(e, key))
    except asyncio.CancelledError:
        record.cancelled()
        raise
    finally:
        if resp is not None:
            resp.release()
        call.upstream_ms += 0 if record.done else (time.perf_counter() - t0) * 1000
    # Sent outside the error mapping: a slow or vanished client is not the key's fault.
    return await finish_json(call, key, resp, body, usage, record)


def connect_failure(e: aiohttp.ClientError | OSError, key: PoolKey) -> Failure:
    """The Failure of an attempt that got no answer: the egress proxy's (the gateway's, see
    `tunnel`), an address the guard refused, or the upstream out of reach."""
    if isinstance(e, tunnel.ProxyUnreachable):
        return Failure(FailureKind.PROXY_UNREACHABLE, detail=str(e))
    if isinstance(e, tunnel.ProxyError):
        return Failure(FailureKind.PROXY_REFUSED, detail=str(e))
    if isinstance(e, ssrf.RefusedAddress):
        return Failure(FailureKind.UNREACHABLE, detail="refused_address")
    return Failure(FailureKind.UNREACHABLE, detail=scrub(f"{type(e).__name__}: {e}", secrets=key_secrets(key)))


async def failed_status(
    call: Call, key: PoolKey, resp: h1.Response, record: Recorder, deadline: float
) -> web.Response | Failure:
    status = resp.status
    try:
        raw = await resp.read_prefix(MAX_ERROR_BODY, min(deadline, asyncio.get_running_loop().time() + ERROR_BODY_WAIT))
    except (TimeoutError, aiohttp.ClientError):
        raw = b""  # the status decides; the body would only have explained it
    message, code = error_fields(raw)
    detail = scrub(message if message is not None else raw.decode(errors="replace"), secrets=key_secrets(key))
    if status == 400 and key.api_format == ApiFormat.GEMINI and GOOGLE_KEY_INVALID in raw:
        return record.failed(Failure(FailureKind.KEY_REJECTED, status, detail=detail))
    if status in CALLER_ERRORS and code not in NOT_SERVED:
        record.finished(UsageStatus.CLIENT_ERROR, success=False, committed=False, http_status=status, error=detail)
        # The upstream's own words when it gave them in an error shape; never a page of its HTML.
        message = (detail if message is not None else "") or f"The upstream refused the request (HTTP {status})."
        if call.client == ApiFormat.ANTHROPIC:
            body = anthropic_body(status, message)
        elif call.client == ApiFormat.GEMINI:
            body = gemini_body(status, message)
        else:
            body = {"error": {"message": message, "type": "invalid_request_error", "code": code}}
        return web.json_response(body, status=status, headers=provider_headers(call, key))
    if status in (401, 403):
        return record.failed(Failure(FailureKind.KEY_REJECTED, status, detail=detail))
    said = f"{detail}\n{raw.decode(errors='replace')}"  # the message, and the details Google keeps beside it
    if status in (402, 429) and exhausted(code, said, resp.headers.get("Retry-After")):
        return record.failed(Failure(FailureKind.QUOTA_EXHAUSTED, status, detail=detail))
    if status == 429:
        wait = _retry_after(resp, raw)
        return record.failed(Failure(FailureKind.RATE_LIMITED, status, retry_after=wait, detail=detail))
    if 300 <= status < 400:
        return record.failed(Failure(FailureKind.REDIRECT, status, detail="redirect refused"))
    return record.failed(Failure(FailureKind.UPSTREAM_ERROR, status, detail=detail))


def exhausted(code: str | None, text: str, retry_after: str | None) -> bool:
    """Whether a 429's or 402's error (`text`: its body) says the account is out of quota or
    balance for the day: its code says so, or a per-day quota does, or its words do while no
    Retry-After and no per-minute wording make it a rate limit (Google says "quota" of its
    per-minute limits too, with a `retryDelay`)."""
    if code in EXHAUSTED_CODES:
        return True
    if not EXHAUSTED_WORDS.search(text):
        return False
    return bool(PER_DAY.search(text)) or (not retry_after and not PER_MINUTE.search(text))


def _is_json(raw: bytes, content_type: str) -> bool:
    """Whether an answer is the JSON we send on as application/json. One labelled JSON is parsed
    later where its usage is read; here its first byte must open an object or an array (an HTML
    page sent as application/json fails). Anything else labelled is parsed whole."""
    if "json" in content_type:
        return JSON_START.match(raw) is not None
    try:
        orjson.loads(raw)
    except ValueError:
        return False
    return True


def error_fields(raw: bytes) -> tuple[str | None, str | None]:
    """(message, code) of an OpenAI- or Anthropic-shaped error body; (None, None) for anything
    else, which is then opaque text. orjson refuses nesting past 1,024 levels instead of recursing."""
    try:
        obj = orjson.loads(raw)
    except ValueError:
        return None, None
    err = obj.get("error") if isinstance(obj, dict) else None
    if isinstance(err, str):
        return err, None
    if not isinstance(err, dict):
        return None, None
    message, code = err.get("message"), err.get("code")
    if code is None and err.get("type") == "not_found_error":  # Anthropic's unknown model
        code = "not_found_error"
    return (message if isinstance(message, str) else None, code if isinstance(code, str) else None)


def _retry_after(resp: h1.Response, raw: bytes) -> float | None:
    """Retry-After's seconds, or Google's `retryDelay` in the body ("38s")."""
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        found = RETRY_DELAY.search(raw)
        value = float(found.group(1)) if found else 0
    return value if 0 < value <= 86400 else None


async def finish_json(
    call: Call, key: PoolKey, resp: h1.Response, body: bytes, usage: Usage | None, record: Recorder
) -> web.Response:
    """Send the upstream's answer, then account for it: the client does not wait for the record.
    The call was served whether or not the client stays to read it, so it counts either way."""
    response = web.Response(
        body=body,
        status=resp.status,
        content_type="application/json",  # what the gateway vouches for, whatever the upstream said
        headers=provider_headers(call, key),
    )
    try:
        await send(call.request, response)
    finally:
        record.finished(UsageStatus.OK, success=True, committed=True, http_status=resp.status, usage=usage)
    return response


async def note_failure(app: web.Application, key: PoolKey, failure: Failure) -> None:
    """Put the key in the state its failure calls for (Redis now, PostgreSQL in the background)."""
    balancer = app[BALANCER]
    states = app[KEY_STATES]
    cooldown = app[appkeys.config].balancer.cooldown_seconds
    log.info("attempt_failed", key_id=key.id, kind=failure.kind, http_status=failure.http_status, detail=failure.detail)
    if failure.kind in NOT_THE_KEYS_FAULT:
        return
    if failure.kind == FailureKind.KEY_REJECTED and key.rules.relay:
        await _relay_rejected(balancer, states, key, failure, cooldown)
    elif failure.kind == FailureKind.KEY_REJECTED:
        await _quietly(balancer.cool_down(key.id, DISABLED_FOR))
        states.disabled(key.id, f"the upstream rejected the key (HTTP {failure.http_status})", DisabledBy.UPSTREAM)
    elif failure.kind == FailureKind.QUOTA_EXHAUSTED:
        try:
            seconds = await balancer.spend_today(key.id)
        except REDIS_DOWN as e:
            metrics.redis_error("balancer")
            log.warning("balancer_call_failed", error=str(e))
            seconds = balancer.seconds_left_today()
        reason = f"the account is out of quota or balance (HTTP {failure.http_status}): {failure.detail}"
        states.spent(key.id, reason[:300], seconds)
    elif failure.kind == FailureKind.RATE_LIMITED:
        seconds = failure.retry_after or cooldown
        await _quietly(balancer.cool_down(key.id, seconds))
        states.cooling(key.id, f"rate limited by the upstream for {seconds:.0f}s")
    else:
        try:
            cooled = await balancer.record_failure(key.id, cooldown)
        except REDIS_DOWN:
            cooled = False
        if cooled:
            states.cooling(key.id, "repeated upstream failures", f"{failure.kind}: {failure.detail}"[:300])
        else:
            states.failed(key.id, f"{failure.kind}: {failure.detail}"[:300])


async def _relay_rejected(
    balancer: Balancer, states: KeyStates, key: PoolKey, failure: Failure, cooldown: float
) -> None:
    """A relay key's 401/403 is usually the other pool's quota or a passing error: it cools,
    doubling, and is disabled only when refused again after `RELAY_COOLDOWNS` cooldowns in a row."""
    try:
        cooldowns, disable = await balancer.reject(key.id, cooldown)
    except REDIS_DOWN as e:
        metrics.redis_error("balancer")
        log.warning("balancer_call_failed", error=str(e))
        return
    refused = f"the relay refused the key (HTTP {failure.http_status})"
    if disable:
        await _quietly(balancer.cool_down(key.id, DISABLED_FOR))
        states.disabled(key.id, f"{refused} through {cooldowns} cooldowns in a row", DisabledBy.UPSTREAM)
    else:
        states.relay_cooling(key.id, f"{refused}; cooling down ({cooldowns} of {RELAY_COOLDOWNS})", cooldowns)


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except REDIS_DOWN as e:
        metrics.redis_error("balancer")
        log.warning("balancer_call_failed", error=str(e))
