"""The `/v1` surface: authenticate, validate, pick a key, forward, stream back, fail over.

    token cache -> body checks -> balancer.pick (one Redis call) -> upstream -> client

Until the commit point (a 2xx answer, or a stream's first content event) a failed attempt gives
its reservation back and the next attempt goes to a key not yet tried. After it there is no
retry: a stream that breaks ends with one error event and no `[DONE]`. Usage goes to the
in-process queue; nothing here waits for PostgreSQL.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway import appkeys, metrics, tracing
from gateway.apiformat import ApiFormat, spoken_on
from gateway.config import Balancer as BalancerConfig
from gateway.config import Limits as LimitsConfig
from gateway.errors import (
    REDIS_DOWN,
    BadRequest,
    GatewayError,
    InvalidToken,
    LimitReached,
    NoKeyForModel,
    NotConfigured,
    UpstreamFailed,
)
from gateway.inbound import read_body
from gateway.log import request_fields
from gateway.relay import anthropic_body, features, scopes
from gateway.relay.attempt import _quietly, attempt, note_failure
from gateway.relay.auth import token_caller
from gateway.relay.balancer import BALANCER, Balancer
from gateway.relay.call import ESCAPED_LETTER, PROXY_FAILED, TOKEN_FIELDS, Call, Failure, FailureKind
from gateway.relay.formats import anthropic, gemini
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.overlimit import before_body
from gateway.relay.picks import USER_OUTCOMES, Affinity, Pick, PickOutcome, Pool
from gateway.relay.refusals import refusal_for, refuse_audience, user_refusal
from gateway.relay.scopes import user_limits
from gateway.store.tokens import Caller

log = structlog.get_logger(__name__)

EPOCH = "1970-01-01T00:00:00Z"  # Anthropic's list wants a date; the pool's models have none
BAD_TOKEN = "Invalid or missing gateway token. Pass it as 'Authorization: Bearer <token>'."
PROXY_DOWN = "The gateway cannot reach the upstreams through its egress proxy right now; try again shortly."
# Fields the gateway decides on. An upstream whose JSON parser keeps the first of two equal keys
# would run something else than what was routed, limited, allowed and credited (we read the last one).
DECISION_FIELDS = ("model", "stream", "n", *TOKEN_FIELDS, "stream_options", *sorted(features.FIELDS))
DECISION_KEY = re.compile(rb'"(?:' + b"|".join(f.encode() for f in DECISION_FIELDS) + rb')"')
ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/responses", "/messages")
ROUTES = {e: "/v1" + e for e in ENDPOINTS} | {"/generateContent": "/v1beta/models:generateContent"}  # metric labels
Reader = Callable[[web.Request, Caller, str], Awaitable[Call]]
_after_response: set[asyncio.Task[None]] = set()


routes = web.RouteTableDef()


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
    """Public names and aliases the caller may use: OpenAI's list shape, Anthropic's when asked
    with anthropic-version, Google's when asked as Google's clients ask (x-goog-api-key, ?key=)."""
    google = "x-goog-api-key" in request.headers or "key" in request.query
    caller = await authenticate(request, google=google)
    names = scopes.allowed_models(request, caller, request.app[KEY_INDEX].models(caller))
    if google:
        return web.json_response(gemini.models_list(names))
    if "anthropic-version" in request.headers:
        data = [{"type": "model", "id": m, "display_name": m, "created_at": EPOCH} for m in names]
        first, last = (names[0], names[-1]) if names else (None, None)
        return web.json_response({"data": data, "has_more": False, "first_id": first, "last_id": last})
    data = [{"id": m, "object": "model", "created": 0, "owned_by": "sharekey"} for m in names]
    return web.json_response({"object": "list", "data": data})


# --- the steps


async def authenticate(request: web.Request, *, google: bool = False) -> Caller:
    """The caller of a /v1 (or /v1beta) route, its token unexpired and used from an allowed address."""
    # Anthropic's clients send the token as x-api-key (ANTHROPIC_API_KEY) or Bearer (…_AUTH_TOKEN).
    client = spoken_on(request.path)
    x_api_key = client == ApiFormat.ANTHROPIC or "anthropic-version" in request.headers
    caller = await token_caller(
        request,
        refused=_bad_token,
        unavailable=_tokens_unavailable,
        x_api_key=x_api_key,
        google=google or client == ApiFormat.GEMINI,
    )
    scopes.admit_address(request, caller)
    return caller


def _bad_token() -> GatewayError:
    return InvalidToken(BAD_TOKEN)


def _tokens_unavailable() -> GatewayError:
    return NotConfigured("The gateway cannot verify tokens right now; try again shortly.", retry_after=5)


async def read_json(request: web.Request, caller: Caller) -> tuple[bytes, dict[str, Any]]:
    """The body, once the head has passed what needs no body: a caller over the per-minute limit
    this minute is refused before a byte of it is read (see overlimit)."""
    try:
        wait = await before_body(request, caller.user_id, user_limits(request, caller).per_minute)
    except REDIS_DOWN as e:
        raise _state_store_down("rpm_peek", e) from None
    if wait is not None:
        raise LimitReached("Too many requests this minute.", code="user_rate_limit", retry_after=wait)
    raw = await read_body(request)  # within server.body_timeout; over limits.max_body_bytes: 413
    try:
        body = orjson.loads(raw)  # UTF-8 only, as OpenAI's API; several times faster than json
    except ValueError:
        raise BadRequest("The request body is not valid JSON.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.", code="invalid_json")
    refuse_duplicates(raw)
    return raw, body


async def read_call(request: web.Request, caller: Caller, endpoint: str) -> Call:
    config = request.app[appkeys.config]
    raw, body = await read_json(request, caller)
    client = spoken_on(request.path)
    if client == ApiFormat.ANTHROPIC:
        anthropic_body.check(body)
    used = features.check(body, client, config.upstream.allowed_features)
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("You must provide a model parameter.", code="missing_model")
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be true or false.", code="invalid_value")
    check_caps(config.limits, {"n": body.get("n")}, {name: body.get(name) for name in TOKEN_FIELDS}, "'{}'")
    options = body.get("stream_options")
    wants_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    fields = request_fields(request)
    fields["model"] = model
    fields["stream"] = stream
    call = Call(request, caller, endpoint, model, stream, raw, body, wants_usage, time.perf_counter())
    call.features = used
    if client == ApiFormat.ANTHROPIC:
        call.client, call.anthropic_lines = client, anthropic.header_lines(request)
    return call


def check_caps(limits: LimitsConfig, choices: dict[str, Any], tokens: dict[str, Any], named: str) -> None:
    """400 for a number of choices (`n`) or an output token cap outside the gateway's caps;
    `named` spells a field's name as the client's format does ("'{}'", "generationConfig.{}")."""
    for name, n in choices.items():
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= limits.max_n):
            raise BadRequest(
                f"{named.format(name)} must be an integer from 1 to {limits.max_n} on this gateway.",
                code="invalid_value",
            )
    cap = limits.max_output_tokens
    for name, value in tokens.items():
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise BadRequest(f"{named.format(name)} must be a positive integer.", code="invalid_value")
        if cap and value > cap:
            raise BadRequest(f"{named.format(name)} may be at most {cap} on this gateway.", code="invalid_value")


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


async def proxy(request: web.Request, endpoint: str, read: Reader | None = None) -> web.StreamResponse:
    """Serve one /v1 request, and count it by route, model and status however it ends. `read`:
    how the call is read from the request (`read_call`, OpenAI's and Anthropic's body)."""
    status = 500
    try:
        response = await _proxy(request, endpoint, read or read_call)
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
        model = metrics.model_label(request.app[KEY_INDEX].snapshot.pooled, fields.get("model"))
        metrics.request_done(ROUTES[endpoint], model, status, fields.get("attempts", 0))


async def _proxy(request: web.Request, endpoint: str, read: Reader) -> web.StreamResponse:
    caller = await authenticate(request)
    call = await read(request, caller, endpoint)
    scopes.admit_model(request, caller, call.model)
    app = request.app
    config = app[appkeys.config]
    index = app[KEY_INDEX]
    balancer = app[BALANCER]
    keys = index.pooled(call.model, call.endpoint)
    pool = index.pool(call.model, call.endpoint, caller, call.features)  # prepared once per snapshot and audience
    if pool is None and keys:
        refuse_audience(index, call, caller)
    fields = request_fields(request)
    tried: set[str] = set()
    last_failure: Failure | None = None
    refusal: GatewayError | None = None
    stream_slot = False
    limits = user_limits(request, caller)
    affinity = affinity_of(call, config.balancer)
    try:
        while call.attempts < config.balancer.max_attempts:
            if pool is None or len(tried) >= pool.size:
                break
            pick = await pick_key(
                balancer,
                pool,
                exclude=tried,
                user_id=caller.user_id,
                limits=limits,
                request_id=request[appkeys.request_id],
                stream=call.stream,
                count_user=call.attempts == 0,
                affinity=affinity,
                token=scopes.token_limits(caller),
            )
            if pick.outcome != PickOutcome.OK:
                refusal = refusal_for(pick, call.model, affinity.response if affinity else None)
                if pick.outcome in USER_OUTCOMES:
                    raise user_refusal(request, caller, pick, refusal)
                break
            if call.stream and call.attempts == 0 and limits.streams:
                stream_slot = True  # the script holds a concurrent-stream slot for us
            key = index.get(pick.key_id or "")
            call.attempts += 1
            if key is None:  # removed from the index since the pick
                await release(balancer, pick, request[appkeys.request_id])
                continue
            tried.add(key.id)
            fields["key_id"] = key.id
            result = await attempt(call, key, pick)
            if isinstance(result, web.StreamResponse):
                if pick.trial:
                    await _quietly(balancer.trial_passed(key.id))
                if call.response_id and config.balancer.response_affinity_seconds:
                    seconds = config.balancer.response_affinity_seconds
                    after_response(balancer.remember(call.response_id, key.id, seconds, user_id=caller.user_id))
                return result
            last_failure = result
            await release(balancer, pick, request[appkeys.request_id])
            await note_failure(app, key, result)
            if result.kind == FailureKind.PROXY_UNREACHABLE:
                break  # the egress proxy is down: no other key can be reached either

        fallback = [k for k in index.private(caller.user_id, call.model, call.endpoint) if k.id not in tried]
        if last_failure is not None and last_failure.kind == FailureKind.PROXY_UNREACHABLE:
            fallback = []
        if fallback:
            key = fallback[0]
            call.attempts += 1
            fields["key_id"] = key.id
            result = await attempt(call, key, None)
            if isinstance(result, web.StreamResponse):
                return result
            last_failure = result
        if last_failure is not None and last_failure.kind == FailureKind.UNTRANSLATABLE and call.untranslatable:
            raise BadRequest(f"The request cannot be served by this gateway's keys: {call.untranslatable}")
        if last_failure is not None and last_failure.kind in PROXY_FAILED:
            raise NotConfigured(PROXY_DOWN, code="proxy_unavailable", retry_after=5)
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
            after_response(balancer.end_stream(caller.user_id, request[appkeys.request_id]))


async def pick_key(balancer: Balancer, pool: Pool, **kw: Any) -> Pick:
    """`balancer.pick`, failing closed (503) when Redis cannot be reached: never unlimited."""
    with tracing.span("pick", candidates=pool.size) as current:
        try:
            pick = await balancer.pick(pool, **kw)
        except REDIS_DOWN as e:
            raise _state_store_down("balancer", e) from None
        tracing.note(current, outcome=pick.outcome, key_id=pick.key_id)
        return pick


def _state_store_down(what: str, e: Exception) -> GatewayError:
    metrics.redis_error(what)
    log.error("balancer_unreachable", error=str(e), call=what)
    return NotConfigured("The gateway cannot reach its state store; try again shortly.", retry_after=5)


def after_response(awaitable: Any) -> None:
    """A Redis call whose answer the client need not wait for, run after the response."""
    task = asyncio.create_task(_quietly(awaitable))
    _after_response.add(task)  # a strong reference until it is done
    task.add_done_callback(_after_response.discard)


def affinity_of(call: Call, config: BalancerConfig) -> Affinity | None:
    """The conversation a request names (prompt_cache_key, X-Claude-Code-Session-Id, Anthropic's
    metadata.user_id), per model asked for, and the response it continues (previous_response_id)."""
    body = call.body
    conversation = body.get("prompt_cache_key") or call.request.headers.get("X-Claude-Code-Session-Id")
    metadata = body.get("metadata")
    if not conversation and call.client == ApiFormat.ANTHROPIC and isinstance(metadata, dict):
        conversation = metadata.get("user_id")
    previous = body.get("previous_response_id") if config.response_affinity_seconds else None
    conversation = conversation if isinstance(conversation, str) and config.affinity_seconds else None
    previous = previous if isinstance(previous, str) and previous else None
    if not conversation and not previous:
        return None
    named = f"{conversation[:512]}\0{call.model}" if conversation else None
    return Affinity(named, previous, config.affinity_seconds * 1000)


async def release(balancer: Balancer, pick: Pick, request_id: str) -> None:
    """Give back what a pick took on a key (a failed attempt, a key gone from the index)."""
    if pick.key_id:
        await _quietly(balancer.release(pick.key_id, pick.day, pool_id=pick.pool_id, request_id=request_id))
