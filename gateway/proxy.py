"""The `/v1` surface: authenticate, validate, pick a key, forward, stream back, fail over.

    token cache -> body checks -> balancer.pick (one Redis call) -> upstream -> client

Until the commit point (a 2xx answer, or a stream's first content event) a failed attempt gives
its reservation back and the next attempt goes to a key not yet tried. After it there is no
retry: a stream that breaks ends with one error event and no `[DONE]`. Usage goes to the
in-process queue; nothing here waits for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import aiohttp
import asyncpg
import orjson
import redis.exceptions
import structlog
from aiohttp import web

from . import appkeys, h1, metrics, sse, upstream
from .balancer import Balancer, Pick, UserLimits
from .errors import BadRequest, GatewayError, InvalidToken, LimitReached, NoKeyForModel, NotConfigured, UpstreamFailed
from .keyindex import PoolKey
from .log import request_fields, scrub, send
from .tokens import Caller
from .usage import UsageRecord

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

BAD_TOKEN = "Invalid or missing gateway token. Pass it as 'Authorization: Bearer <token>'."
MAX_ERROR_BODY = 64 * 1024
ERROR_BODY_WAIT = 5.0  # seconds an error status may take to send its body
CALLER_ERRORS = frozenset({400, 404, 413, 422})
TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Endpoints whose streams understand `stream_options.include_usage`.
USAGE_OPTION_ENDPOINTS = frozenset({"/chat/completions", "/completions"})
USAGE_OPTION = b'"stream_options":{"include_usage":true},'
REDIS_ERRORS = (redis.exceptions.RedisError, OSError)
# Fields the gateway decides on. An upstream whose JSON parser keeps the first of two equal keys
# would run something else than what was routed, limited and credited (we read the last one).
DECISION_FIELDS = ("model", "stream", "n", *TOKEN_FIELDS, "stream_options")
DECISION_KEY = re.compile(rb'"(?:' + b"|".join(f.encode() for f in DECISION_FIELDS) + rb')"')
ESCAPED_LETTER = re.compile(rb"\\u00[4-7]")  # "mod\u0065l": encoders never escape ASCII letters
ROUTES = {e: "/v1" + e for e in ("/chat/completions", "/completions", "/embeddings", "/responses")}  # metric labels
_after_response: set[asyncio.Task[None]] = set()


@dataclass(slots=True)
class Call:
    """One client request as it moves through its attempts."""

    request: web.Request
    caller: Caller
    endpoint: str  # "/chat/completions"
    model: str
    stream: bool
    raw: bytes
    body: dict[str, Any]
    client_wants_usage: bool
    started: float
    attempts: int = 0
    upstream_ms: float = 0.0
    _with_usage: bytes | None = None

    def payload(self, key: PoolKey) -> tuple[bytes, bool]:
        """The body for this key, and whether we added include_usage (and must strip its chunk)."""
        if not (self.stream and key.stream_usage and self.endpoint in USAGE_OPTION_ENDPOINTS):
            return self.raw, False
        if self.client_wants_usage:
            return self.raw, False
        if self._with_usage is None:
            if "stream_options" not in self.body:
                # The common case, spliced in rather than re-serialised: a long conversation is
                # copied, not encoded again. `raw` parsed as an object with a model, so its first
                # `{` opens it and a member follows the comma.
                start = self.raw.index(b"{") + 1
                self._with_usage = self.raw[:start] + USAGE_OPTION + self.raw[start:]
            else:
                options = self.body["stream_options"]
                options = dict(options) if isinstance(options, dict) else {}
                options["include_usage"] = True
                self._with_usage = orjson.dumps({**self.body, "stream_options": options})
        return self._with_usage, True


# An answer too large for our caps (a caller can ask for a huge one) or in an encoding we do not
# decode fails the attempt, but says nothing about the key's health.
NOT_THE_KEYS_FAULT = frozenset({"too_large", "unsupported_encoding"})


@dataclass(slots=True)
class Failure:
    """An attempt that failed before its commit point."""

    kind: str  # unreachable | timeout | key_rejected | rate_limited | redirect | upstream_error | bad_stream
    #            | too_large | unsupported_encoding
    http_status: int | None = None
    retry_after: float | None = None
    detail: str = ""  # for logs only, already scrubbed


# --- handlers ----------------------------------------------------------------------------------


@routes.post("/v1/chat/completions")
async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await proxy(request, "/chat/completions")


@routes.post("/v1/completions")
async def completions(request: web.Request) -> web.StreamResponse:
    return await proxy(request, "/completions")


@routes.post("/v1/embeddings")
async def embeddings(request: web.Request) -> web.StreamResponse:
    return await proxy(request, "/embeddings")


@routes.post("/v1/responses")
async def responses(request: web.Request) -> web.StreamResponse:
    return await proxy(request, "/responses")


@routes.get("/v1/models")
async def list_models(request: web.Request) -> web.Response:
    await authenticate(request)
    data = [
        {"id": m, "object": "model", "created": 0, "owned_by": "sharekey"}
        for m in request.app[appkeys.key_index].models()
    ]
    return web.json_response({"object": "list", "data": data})


# --- the steps ---------------------------------------------------------------------------------


async def authenticate(request: web.Request) -> Caller:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise InvalidToken(BAD_TOKEN)
    try:
        caller = await request.app[appkeys.token_cache].lookup(token.strip())
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        metrics.postgres_error("tokens")
        raise NotConfigured("The gateway cannot verify tokens right now; try again shortly.", retry_after=5) from None
    if caller is None:
        raise InvalidToken(BAD_TOKEN)
    request_fields(request)["user_id"] = caller.user_id
    return caller


async def read_call(request: web.Request, caller: Caller, endpoint: str) -> Call:
    config = request.app[appkeys.config]
    raw = await request.read()  # over limits.max_body_bytes: aiohttp raises 413, rendered by the middleware
    try:
        body = orjson.loads(raw)  # UTF-8 only, as OpenAI's API; several times faster than json
    except ValueError:
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    refuse_duplicates(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("You must provide a model parameter.", code="missing_model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", code="invalid_value")
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= config.limits.max_n):
        raise BadRequest(
            f"'n' must be an integer from 1 to {config.limits.max_n} on this gateway.", code="invalid_value"
        )
    cap = config.limits.max_output_tokens
    for name in TOKEN_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"'{name}' must be a positive integer.", code="invalid_value")
        if cap and value > cap:
            raise BadRequest(f"'{name}' may be at most {cap} on this gateway.", code="invalid_value")
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    fields = request_fields(request)
    fields["model"] = model
    fields["stream"] = stream
    return Call(request, caller, endpoint, model, stream, raw, body, wants_usage, time.perf_counter())


def refuse_duplicates(raw: bytes) -> None:
    """400 for a decision field given twice at the top level. One byte scan decides whether to
    look closer: a field's name appearing twice, or an ASCII letter written as an escape."""
    names = DECISION_KEY.findall(raw)
    if len(names) == len(set(names)) and (raw.find(b"\\") < 0 or ESCAPED_LETTER.search(raw) is None):
        return
    try:
        pairs = json.loads(raw, object_pairs_hook=_pairs_at_top)
    except RecursionError:
        raise BadRequest("The request body is nested too deeply.", code="invalid_json") from None
    seen: set[str] = set()
    for name, _ in pairs:
        if name in DECISION_FIELDS:
            if name in seen:
                raise BadRequest(f"The request body gives '{name}' more than once.", code="duplicate_field")
            seen.add(name)


def _pairs_at_top(pairs: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return pairs  # every object stays a list of pairs: the outermost one is what we look at


def user_limits(request: web.Request, caller: Caller) -> UserLimits:
    limits = request.app[appkeys.config].limits
    daily = limits.user_daily_requests
    by_level = limits.user_daily_requests_by_trust_level
    if by_level:
        daily = by_level[min(max(caller.trust_level, 0), len(by_level) - 1)]
    return UserLimits(daily=daily, per_minute=limits.user_requests_per_minute, streams=limits.user_concurrent_streams)


async def proxy(request: web.Request, endpoint: str) -> web.StreamResponse:
    """Serve one /v1 request, and count it by route, model and status however it ends."""
    status = 500
    try:
        response = await _proxy(request, endpoint)
        status = response.status
        return response
    except (GatewayError, web.HTTPException) as e:
        status = e.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    finally:
        fields = request_fields(request)
        model = metrics.model_label(request.app[appkeys.key_index], fields.get("model"))
        metrics.request_done(ROUTES[endpoint], model, status, fields.get("attempts", 0))


async def _proxy(request: web.Request, endpoint: str) -> web.StreamResponse:
    caller = await authenticate(request)
    call = await read_call(request, caller, endpoint)
    app = request.app
    config = app[appkeys.config]
    index = app[appkeys.key_index]
    balancer = app[appkeys.balancer]
    keys = index.pooled(call.model)
    fields = request_fields(request)
    tried: set[str] = set()
    last_failure: Failure | None = None
    refusal: GatewayError | None = None
    stream_slot = False
    limits = user_limits(request, caller)
    try:
        while call.attempts < config.balancer.max_attempts:
            candidates = [k for k in keys if k.id not in tried]
            if not candidates:
                break
            try:
                pick = await balancer.pick(
                    [k.candidate for k in candidates],
                    user_id=caller.user_id,
                    limits=limits,
                    request_id=request[appkeys.request_id],
                    stream=call.stream,
                    count_user=call.attempts == 0,
                )
            except REDIS_ERRORS as e:
                metrics.redis_error("balancer")
                log.error("balancer_unreachable", error=str(e))
                raise NotConfigured(
                    "The gateway cannot reach its state store; try again shortly.", retry_after=5
                ) from None
            if pick.outcome != "ok":
                refusal = refusal_for(pick, call.model)
                if pick.outcome.startswith("user_"):
                    raise refusal
                break
            if call.stream and call.attempts == 0 and limits.streams:
                stream_slot = True  # the script holds a concurrent-stream slot for us
            key = index.get(pick.key_id or "")
            call.attempts += 1
            if key is None:  # removed from the index since the pick
                await _release(balancer, pick)
                continue
            tried.add(key.id)
            fields["key_id"] = key.id
            result = await attempt(call, key, pick)
            if isinstance(result, web.StreamResponse):
                if pick.trial:
                    await _quietly(balancer.trial_passed(key.id))
                return result
            last_failure = result
            await _release(balancer, pick)
            await note_failure(app, key, result)

        fallback = [k for k in index.private(caller.user_id, call.model) if k.id not in tried]
        if fallback:
            key = fallback[0]
            call.attempts += 1
            fields["key_id"] = key.id
            result = await attempt(call, key, None)
            if isinstance(result, web.StreamResponse):
                return result
            last_failure = result
        if last_failure is not None:
            raise UpstreamFailed(
                f"The upstream failed on all {call.attempts} attempt(s); try again.", code="upstream_failed"
            )
        if refusal is not None:
            raise refusal
        if not keys:
            raise NoKeyForModel(f"No key on this gateway serves the model '{call.model}'.")
        raise NotConfigured("No key for this model can be tried right now; try again shortly.", retry_after=5)
    finally:
        fields["attempts"] = call.attempts
        fields["upstream_ms"] = round(call.upstream_ms, 1)
        if stream_slot:
            # After the response: the client is not kept waiting for this second round trip.
            task = asyncio.create_task(_quietly(balancer.end_stream(caller.user_id, request[appkeys.request_id])))
            _after_response.add(task)  # a strong reference until it is done
            task.add_done_callback(_after_response.discard)


def refusal_for(pick: Pick, model: str) -> GatewayError:
    if pick.outcome == "user_daily":
        return LimitReached(
            "You have used your requests for today.", code="user_daily_limit", retry_after=pick.retry_after
        )
    if pick.outcome == "user_rpm":
        return LimitReached("Too many requests this minute.", code="user_rate_limit", retry_after=pick.retry_after)
    if pick.outcome == "user_streams":
        return LimitReached("Too many streams at once.", code="user_stream_limit", retry_after=pick.retry_after)
    if pick.outcome == "exhausted":
        return LimitReached(
            f"Every key serving '{model}' has reached its daily limit.",
            code="daily_limit_reached",
            retry_after=pick.retry_after,
        )
    # Capped: a disabled key cools "for years" until every index drops it, moments later.
    return NotConfigured(
        f"Every key serving '{model}' is cooling down; try again shortly.",
        retry_after=min(max(1, pick.retry_after), 60),
    )


async def _release(balancer: Balancer, pick: Pick) -> None:
    if pick.key_id:
        await _quietly(balancer.release(pick.key_id, pick.day))


async def _quietly(awaitable: Any) -> None:
    try:
        await awaitable
    except REDIS_ERRORS as e:
        metrics.redis_error("balancer")
        log.warning("balancer_call_failed", error=str(e))


# --- one attempt ------------------------------------------------------------------------------


async def attempt(call: Call, key: PoolKey, pick: Pick | None) -> web.StreamResponse | Failure:
    """Forward to one key. Returns the response once committed (or a caller error to relay), or a Failure.

    Deadlines, on the loop's clock: the whole attempt within `total_timeout`; a non-stream answer,
    or a stream's first content event, within `first_token_timeout`; then each gap of a stream
    within `idle_timeout`. Every wait on the upstream carries its deadline (see `h1`)."""
    app = call.request.app
    cfg = app[appkeys.config].upstream
    pool = app[appkeys.upstream_pool]
    payload, strip_usage = call.payload(key)
    record = Recorder(call, key, pick)
    now = asyncio.get_running_loop().time()
    deadline = now + cfg.total_timeout
    first = min(deadline, now + cfg.first_token_timeout)
    t0 = time.perf_counter()
    resp: h1.Response | None = None
    try:
        resp = await pool.request(key.urls[call.endpoint], key.head[call.stream], payload, deadline=first)
        if resp.status < 200 or resp.status >= 300:
            return await failed_status(call, key, resp, record, first)
        if call.stream and "text/event-stream" in resp.headers.get("Content-Type", ""):
            return await relay_stream(call, key, resp, record, first, deadline, strip_usage, t0)
        body = await resp.read(cfg.max_response_bytes, first)
    except TimeoutError:
        return record.failed(Failure("timeout", detail="timed out"))
    except h1.AnswerTooLarge as e:
        return record.failed(Failure("too_large", detail=str(e)))
    except h1.UnsupportedEncoding as e:
        return record.failed(Failure("unsupported_encoding", detail=str(e)))
    except upstream.RefusedAddress:
        return record.failed(Failure("unreachable", detail="refused_address"))
    except (aiohttp.ClientError, OSError) as e:
        detail = scrub(f"{type(e).__name__}: {e}", secrets=key_secrets(key))
        return record.failed(Failure("unreachable", detail=detail))
    except asyncio.CancelledError:
        record.cancelled()
        raise
    finally:
        if resp is not None:
            resp.release()
        call.upstream_ms += 0 if record.done else (time.perf_counter() - t0) * 1000
    # Sent outside the error mapping: a slow or vanished client is not the key's fault.
    return await finish_json(call, key, resp, body, record)


def key_secrets(key: PoolKey) -> tuple[str, ...]:
    host = urllib.parse.urlsplit(key.base_url).hostname or ""
    return (key.api_key, key.base_url, host)


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
    if status in CALLER_ERRORS and code != "model_not_found":
        record.finished("client_error", success=False, committed=False, http_status=status, error=detail)
        message = detail or "The upstream refused the request."
        return web.json_response(
            {"error": {"message": message, "type": "invalid_request_error", "code": code}},
            status=status,
            headers=provider_headers(call, key),
        )
    if status in (401, 403):
        return record.failed(Failure("key_rejected", status, detail=detail))
    if status == 429:
        return record.failed(Failure("rate_limited", status, retry_after=_retry_after(resp), detail=detail))
    if 300 <= status < 400:
        return record.failed(Failure("redirect", status, detail="redirect refused"))
    return record.failed(Failure("upstream_error", status, detail=detail))


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
    return (message if isinstance(message, str) else None, code if isinstance(code, str) else None)


def _retry_after(resp: h1.Response) -> float | None:
    try:
        value = float(resp.headers.get("Retry-After", ""))
    except ValueError:
        return None
    return value if 0 < value <= 86400 else None


def provider_headers(call: Call, key: PoolKey) -> dict[str, str]:
    provider = key.provider if key.provider.isascii() else urllib.parse.quote(key.provider)
    return {"X-Request-Id": call.request[appkeys.request_id], "X-Sharekey-Provider": provider}


async def finish_json(call: Call, key: PoolKey, resp: h1.Response, body: bytes, record: Recorder) -> web.Response:
    """Send the upstream's answer, then account for it: the client does not wait for the record.
    The call was served whether or not the client stays to read it, so it counts either way."""
    response = web.Response(
        body=body,
        status=resp.status,
        content_type=resp.content_type or "application/json",
        headers=provider_headers(call, key),
    )
    try:
        await send(call.request, response)
    finally:
        usage = sse.usage_of(sse.parse(body)) if b'"usage"' in body else None
        record.finished("ok", success=True, committed=True, http_status=resp.status, usage=usage)
    return response


async def relay_stream(
    call: Call,
    key: PoolKey,
    resp: h1.Response,
    record: Recorder,
    first: float,
    deadline: float,
    strip_usage: bool,
    t0: float,
) -> web.StreamResponse | Failure:
    """Hold events until the first one with content (errors before it propagate: a failed
    attempt), then commit and relay. After the commit nothing propagates but the client's
    cancellation: an upstream that breaks, stalls or floods ends the stream with one error event."""
    loop = asyncio.get_running_loop()
    cfg = call.request.app[appkeys.config].upstream
    idle, max_event = cfg.idle_timeout, cfg.max_event_bytes
    scanner = sse.Scanner()
    held: list[bytes] = []  # whole events received before the commit point
    held_size = 0
    usage: sse.Usage | None = None
    chunks = 0

    def take(complete: bytes) -> bytes:
        """Count content events, note usage, drop the usage-only chunk we asked for."""
        nonlocal usage, chunks
        chunks += complete.count(b"data:") - complete.count(b"data: [DONE]")
        before, rest = sse.split_at(complete, b'"usage"')
        if not rest:
            return complete  # the common case: forwarded as it came, nothing parsed
        out = [before]
        for event in sse.events(rest):
            data = sse.data_of(event)
            if data is not None and b'"usage"' in data:
                obj = sse.parse(data)
                usage = sse.usage_of(obj) or usage
                if strip_usage and sse.usage_only_chunk(obj):
                    continue
            out.append(event)
        return b"".join(out)

    committed = False
    while not committed:
        chunk = await resp.readany(first)
        if not chunk:
            return record.failed(Failure("bad_stream", resp.status, detail="stream ended before any content"))
        complete = scanner.feed(chunk)
        if complete:
            held.append(complete)
            held_size += len(complete)
        for event in sse.events(complete):
            data = sse.data_of(event)
            if data is None:
                continue
            if data == b"[DONE]" or sse.is_error(data):
                detail = "stream carried only an error" if data != b"[DONE]" else "stream ended before any content"
                return record.failed(Failure("bad_stream", resp.status, detail=detail))
            committed = True
            break
        if not committed and (scanner.size > max_event or held_size > max_event):
            raise h1.AnswerTooLarge(f"a stream event is larger than {max_event} bytes")

    ttft = (time.perf_counter() - t0) * 1000
    out = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **provider_headers(call, key),
        },
    )
    await out.prepare(call.request)
    record.committed(ttft)
    broke: str | None = None
    try:
        data = take(b"".join(held))
        while True:
            if data:
                await out.write(data)
            if scanner.size > max_event:
                broke = "an event was too large"
                break
            chunk = await resp.readany(min(deadline, loop.time() + idle))
            if not chunk:
                break
            data = take(scanner.feed(chunk))
    except (ConnectionError, RuntimeError):  # the client went away (before anything upstream broke)
        record.finished("cancelled", success=False, committed=True, http_status=200, usage=usage, chunks=chunks)
        call.upstream_ms += (time.perf_counter() - t0) * 1000
        return out
    except TimeoutError:
        broke = "timed out"
    except (aiohttp.ClientError, OSError):
        broke = "connection lost"
    except asyncio.CancelledError:
        record.finished("cancelled", success=False, committed=True, http_status=200, usage=usage, chunks=chunks)
        raise
    call.upstream_ms += (time.perf_counter() - t0) * 1000
    if broke is not None:
        record.finished(
            "stream_error", success=False, committed=True, http_status=200, usage=usage, chunks=chunks, error=broke
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await out.write(sse.error_event(f"The upstream stream broke off ({broke})."))
            await out.write_eof()
        return out
    try:
        if scanner.pending:
            await out.write(scanner.pending)
        await out.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # every event reached the client's connection but the last: the call was served
    finally:
        record.finished("ok", success=True, committed=True, http_status=200, usage=usage, chunks=chunks)
    return out


# --- accounting and key state -----------------------------------------------------------------


class Recorder:
    """Builds the usage record of one attempt and hands it to the queue exactly once."""

    __slots__ = ("call", "key", "pick", "t0", "ttft_ms", "done")

    def __init__(self, call: Call, key: PoolKey, pick: Pick | None) -> None:
        self.call, self.key, self.pick = call, key, pick
        self.t0 = time.perf_counter()
        self.ttft_ms: float | None = None
        self.done = False

    def committed(self, ttft_ms: float) -> None:
        self.ttft_ms = ttft_ms
        metrics.first_token(ttft_ms / 1000)

    def failed(self, failure: Failure) -> Failure:
        self.finished(
            "upstream_error" if failure.kind != "timeout" else "timeout",
            success=False,
            committed=False,
            http_status=failure.http_status,
            error=f"{failure.kind}: {failure.detail}"[:300],
        )
        return failure

    def cancelled(self) -> None:
        self.finished("cancelled", success=False, committed=self.ttft_ms is not None)

    def finished(
        self,
        status: str,
        *,
        success: bool,
        committed: bool,
        http_status: int | None = None,
        usage: sse.Usage | None = None,
        chunks: int = 0,
        error: str | None = None,
    ) -> None:
        if self.done:
            return
        self.done = True
        elapsed = time.perf_counter() - self.t0
        metrics.attempt_done(elapsed)
        call = self.call
        estimated = False
        prompt = completion = None
        if usage is not None:
            prompt, completion = usage.prompt_tokens, usage.completion_tokens
        elif committed:
            estimated = True
            prompt, completion = len(call.raw) // 4, chunks
        day = date.fromisoformat(self.pick.day) if self.pick else _today(call)
        call.request.app[appkeys.usage].add(
            UsageRecord(
                request_id=call.request[appkeys.request_id],
                attempt=call.attempts,
                day=day,
                created_at=datetime.now(UTC),
                shared_key_id=self.key.id,
                user_id=call.caller.user_id,
                donor_id=self.key.owner_id,
                api_endpoint="/v1" + call.endpoint,
                model=call.model,
                status=status,
                success=success,
                committed=committed,
                http_status=http_status,
                prompt_tokens=prompt,
                completion_tokens=completion,
                usage_estimated=estimated,
                latency_ms=round(elapsed * 1000),
                ttft_ms=round(self.ttft_ms) if self.ttft_ms is not None else None,
                error_message=error,
            )
        )


def _today(call: Call) -> date:
    return date.fromisoformat(call.request.app[appkeys.balancer].today())


async def note_failure(app: web.Application, key: PoolKey, failure: Failure) -> None:
    """Put the key in the state its failure calls for (Redis now, PostgreSQL in the background)."""
    balancer = app[appkeys.balancer]
    states = app[appkeys.key_states]
    cooldown = app[appkeys.config].balancer.cooldown_seconds
    log.info("attempt_failed", key_id=key.id, kind=failure.kind, http_status=failure.http_status, detail=failure.detail)
    if failure.kind in NOT_THE_KEYS_FAULT:
        return
    if failure.kind == "key_rejected":
        await _quietly(balancer.cool_down(key.id, 10 * 365 * 86400))
        states.disabled(key.id, f"the upstream rejected the key (HTTP {failure.http_status})")
    elif failure.kind == "rate_limited":
        seconds = failure.retry_after or cooldown
        await _quietly(balancer.cool_down(key.id, seconds))
        states.cooling(key.id, f"rate limited by the upstream for {seconds:.0f}s")
    else:
        try:
            cooled = await balancer.record_failure(key.id, cooldown)
        except REDIS_ERRORS:
            cooled = False
        if cooled:
            states.cooling(key.id, "repeated upstream failures", f"{failure.kind}: {failure.detail}"[:300])
        else:
            states.failed(key.id, f"{failure.kind}: {failure.detail}"[:300])
