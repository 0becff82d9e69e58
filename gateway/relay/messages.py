"""The Anthropic Messages API on the same pool: `POST /v1/messages` and `/v1/messages/count_tokens`.

Claude Code and the `anthropic` SDKs call these. The request runs through the same steps as an
OpenAI one (`handlers.proxy`): token, checks, one pick, failover, accounting. An `anthropic` key
gets the body as it came; an `openai` key gets it translated (`formats`). Errors answer in
Anthropic's shape (`errors.anthropic_error`), with `request-id`.

`count_tokens` goes through the same pick without a reservation (`reserve=False`): it counts
toward the caller's requests per minute, never toward a key's daily limit; only `anthropic` keys
that could serve now are asked, each under its own name for the model; every attempt leaves a
usage row that is never committed and bills no tokens.

The body is checked before any key is chosen (`anthropic_body`), naming the field Anthropic would name.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
from aiohttp import web

from gateway import appkeys
from gateway.apiformat import ApiFormat
from gateway.log import request_fields
from gateway.net import h1
from gateway.net.h1 import UPSTREAM_POOL
from gateway.relay import handlers, refusals, scopes
from gateway.relay.anthropic_body import check
from gateway.relay.attempt import _quietly, connect_failure, failed_status, note_failure
from gateway.relay.balancer import BALANCER
from gateway.relay.call import Call, Failure, FailureKind, Recorder
from gateway.relay.formats import anthropic
from gateway.relay.formats.shared import estimate_input_tokens
from gateway.relay.keyindex import KEY_INDEX, PoolKey
from gateway.relay.picks import USER_OUTCOMES, Pick, PickOutcome, Pool
from gateway.relay.usage import UsageStatus

routes = web.RouteTableDef()

COUNT = "/messages/count_tokens"
COUNT_TIMEOUT = 10.0
MAX_COUNT_ANSWER = 64 * 1024


@routes.post("/v1/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    return await handlers.proxy(request, "/messages")


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """Asked of the least-used `anthropic` key serving the model that could serve now, failed over
    like a call; estimated locally when none can (or every one failed)."""
    caller = await handlers.authenticate(request)
    raw, body = await handlers.read_json(request, caller)
    check(body, counting=True)
    model = body["model"]
    scopes.admit_model(request, caller, model)
    fields = request_fields(request)
    fields["model"] = model
    call = Call(request, caller, COUNT, model, False, raw, body, False, time.perf_counter())
    call.client, call.anthropic_lines = ApiFormat.ANTHROPIC, anthropic.header_lines(request)
    counted = await count(call, request.app[KEY_INDEX].pool(model, COUNT, caller))
    if isinstance(counted, web.Response):
        return counted
    return web.json_response({"input_tokens": estimate_input_tokens(body) if counted is None else counted})


async def count(call: Call, pool: Pool | None) -> int | web.Response | None:
    """`_count`, its attempts and upstream time in the request's log line; None without a pool."""
    fields = request_fields(call.request)
    try:
        return await _count(call, pool) if pool is not None else None
    finally:
        fields["attempts"] = call.attempts
        fields["upstream_ms"] = round(call.upstream_ms, 1)


async def _count(call: Call, pool: Pool) -> int | web.Response | None:
    """The count of the first key that answers, the upstream's refusal of the request itself, or
    None when no key could serve or every attempt failed. Anthropic's count_tokens, and Gemini's
    countTokens (`call.client`), the same way."""
    request = call.request
    app = request.app
    balancer, index = app[BALANCER], app[KEY_INDEX]
    limits = scopes.user_limits(request, call.caller)
    tried: set[str] = set()
    while call.attempts < app[appkeys.config].balancer.max_attempts and len(tried) < pool.size:
        pick = await handlers.pick_key(
            balancer,
            pool,
            exclude=tried,
            user_id=call.caller.user_id,
            limits=limits,
            request_id=request[appkeys.request_id],
            stream=False,
            count_user=call.attempts == 0,
            reserve=False,
            token=scopes.token_limits(call.caller),
        )
        if pick.outcome in USER_OUTCOMES:
            raise refusals.user_refusal(request, call.caller, pick, refusals.refusal_for(pick, call.model))
        if pick.outcome != PickOutcome.OK:
            return None
        key = index.get(pick.key_id or "")
        call.attempts += 1
        if key is None:  # removed from the index since the pick
            await handlers.release(app[BALANCER], pick, request[appkeys.request_id])
            continue
        tried.add(key.id)
        request_fields(request)["key_id"] = key.id
        result = await _ask(call, key, pick)
        if not isinstance(result, Failure):
            if pick.trial:
                await _quietly(balancer.trial_passed(key.id))
            return result
        await note_failure(app, key, result)
        if result.kind == FailureKind.PROXY_UNREACHABLE:
            return None  # no key can be reached: estimated locally
    return None


async def _ask(call: Call, key: PoolKey, pick: Pick) -> int | web.Response | Failure:
    """One count on one key, under the key's own name for the model: the count, the upstream's
    refusal of the request itself (relayed), or a Failure. Its usage row is not committed."""
    app = call.request.app
    record = Recorder(call, key, pick)
    name = record.upstream_model = app[KEY_INDEX].upstream_model(call.model, key)
    if call.client == ApiFormat.GEMINI:  # Gemini's countTokens: the model in the URL, as it came
        url, head, body, counted = key.model_url(name, "countTokens"), key.head[False], call.raw, "totalTokens"
    else:
        url, head = anthropic.url(key.urls[COUNT], call.request), key.head[False] + call.anthropic_lines
        body, counted = call.raw if name == call.model else call.renamed(name), "input_tokens"
    deadline = asyncio.get_running_loop().time() + COUNT_TIMEOUT
    t0 = time.perf_counter()
    resp: h1.Response | None = None
    try:
        resp = await app[UPSTREAM_POOL].request(url, head, body, deadline=deadline)
        if resp.status != 200:
            return await failed_status(call, key, resp, record, deadline)
        answer = orjson.loads(await resp.read(MAX_COUNT_ANSWER, deadline))
    except TimeoutError:
        return record.failed(Failure(FailureKind.TIMEOUT, detail="timed out"))
    except (h1.AnswerTooLarge, ValueError):  # not JSON, or far larger than a count
        return record.failed(Failure(FailureKind.UPSTREAM_ERROR, 200, detail="the answer is not a count"))
    except h1.UnsupportedEncoding as e:
        return record.failed(Failure(FailureKind.UNSUPPORTED_ENCODING, detail=str(e)))
    except (aiohttp.ClientError, OSError) as e:  # the proxy's failure among them: not the key's
        return record.failed(connect_failure(e, key))
    except asyncio.CancelledError:
        record.cancelled()
        raise
    finally:
        if resp is not None:
            resp.release()
        call.upstream_ms += (time.perf_counter() - t0) * 1000
    tokens = answer.get(counted) if isinstance(answer, dict) else None
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
        return record.failed(Failure(FailureKind.UPSTREAM_ERROR, 200, detail="the answer is not a count"))
    record.finished(UsageStatus.OK, success=True, committed=False, http_status=200)
    return tokens
