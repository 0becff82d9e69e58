"""Gemini's API on the same pool: `/v1beta/models`, `…/{model}:generateContent`,
`:streamGenerateContent` and `:countTokens`.

Gemini CLI and the Google GenAI SDKs call these, with the gateway token as `x-goog-api-key`,
`?key=` or Bearer (`auth.bearer_token`; the query is never logged). A call runs through the same
steps as an OpenAI one (`handlers.proxy`): token, checks, one pick, failover, accounting. A
`gemini` key gets the body as it came; `openai` and `anthropic` keys get it translated
(`formats`). `streamGenerateContent` streams SSE with `?alt=sse`, else one JSON array as Google
does. `countTokens` is asked of a `gemini` key without a reservation (`messages.count`), and
estimated locally when none can answer. Errors answer in Google's shape (`errors.gemini_error`).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.apiformat import ApiFormat
from gateway.errors import BadRequest, NoKeyForModel
from gateway.log import request_fields
from gateway.relay import features, handlers, messages, scopes
from gateway.relay.call import Call
from gateway.relay.formats import gemini
from gateway.relay.formats.shared import IMAGE_TOKENS, PER_MESSAGE_TOKENS, dumps
from gateway.relay.keyindex import KEY_INDEX
from gateway.store.tokens import Caller

routes = web.RouteTableDef()

GENERATE = "/generateContent"  # the endpoint family of both generate methods (keys of any format)
COUNT = "/countTokens"
METHODS = frozenset({"generateContent", "streamGenerateContent", "countTokens"})


@routes.get("/v1beta/models")
async def list_models(request: web.Request) -> web.Response:
    """The models the caller may use, in Gemini's list shape (one page: no `nextPageToken`)."""
    return web.json_response(gemini.models_list(await _models(request)))


async def _models(request: web.Request) -> list[str]:
    """What the caller's keys serve that its token and trust level allow."""
    caller = await handlers.authenticate(request)
    return scopes.allowed_models(request, caller, request.app[KEY_INDEX].models(caller))


@routes.get("/v1beta/models/{model}")
@routes.get("/v1/models/{model}")
async def get_model(request: web.Request) -> web.Response:
    name = request.match_info["model"].removeprefix("models/")
    if name not in await _models(request):
        raise NoKeyForModel(f"models/{name} is not found on this gateway.")
    return web.json_response(gemini.model_entry(name))


@routes.post("/v1beta/models/{target}")
@routes.post("/v1/models/{target}")
async def model_method(request: web.Request) -> web.StreamResponse:
    """`{model}:{method}` — aiohttp sees one path segment; the method follows the last colon."""
    model, _, method = request.match_info["target"].rpartition(":")
    if method not in METHODS or not model:
        raise BadRequest(f"Unknown method {method!r}: use generateContent, streamGenerateContent or countTokens.")
    request_fields(request)["model"] = model
    if method == "countTokens":
        return await count_tokens(request, model)
    return await handlers.proxy(request, GENERATE, read=lambda r, c, e: read_call(r, c, model, method))


async def read_call(request: web.Request, caller: Caller, model: str, method: str) -> Call:
    """The checks a generate call passes before any key is chosen, named as Google names them."""
    config = request.app[appkeys.config]
    raw, body = await handlers.read_json(request, caller)
    _check_contents(body)
    used = features.check(body, ApiFormat.GEMINI, config.upstream.allowed_features)
    generation = body.get("generationConfig", body.get("generation_config"))
    if generation is not None and not isinstance(generation, dict):
        raise BadRequest("generationConfig must be an object.", code="invalid_value")
    generation = generation or {}
    choices = {name: generation.get(name) for name in ("candidateCount", "candidate_count")}
    tokens = {name: generation.get(name) for name in ("maxOutputTokens", "max_output_tokens")}
    handlers.check_caps(config.limits, choices, tokens, "generationConfig.{}")
    stream = method == "streamGenerateContent"
    fields = request_fields(request)
    fields["stream"] = stream
    call = Call(request, caller, GENERATE, model, stream, raw, body, False, time.perf_counter())
    call.client, call.features = ApiFormat.GEMINI, used
    call.gemini_sse = request.query.get("alt") == "sse"
    return call


def _check_contents(body: dict[str, Any]) -> None:
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise BadRequest("contents is required and must be a non-empty list.", code="invalid_value")
    for i, content in enumerate(contents):
        if not isinstance(content, dict) or not isinstance(content.get("parts", []), list):
            raise BadRequest(f"contents[{i}] must be an object with a list of parts.", code="invalid_value")


async def count_tokens(request: web.Request, model: str) -> web.Response:
    """Asked of the least-used `gemini` key serving the model that could serve now, failed over;
    estimated locally when none can. A body of `{"generateContentRequest": {...}}` is counted too."""
    caller = await handlers.authenticate(request)
    scopes.admit_model(request, caller, model)
    raw, body = await handlers.read_json(request, caller)
    counted_body = body.get("generateContentRequest") if isinstance(body.get("generateContentRequest"), dict) else body
    if counted_body.get("contents") is not None:
        _check_contents(counted_body)
    call = Call(request, caller, COUNT, model, False, raw, body, False, time.perf_counter())
    call.client = ApiFormat.GEMINI
    counted = await messages.count(call, request.app[KEY_INDEX].pool(model, COUNT, caller))
    if isinstance(counted, web.Response):
        return counted
    return web.json_response({"totalTokens": estimate_tokens(counted_body) if counted is None else counted})


def estimate_tokens(body: dict[str, Any]) -> int:
    """A local estimate of a Gemini request's prompt: UTF-8 bytes / 4 of its text, function calls
    and results, system instruction and tools, IMAGE_TOKENS per inline file. Not the model's
    tokenizer: expect ±25 %."""
    contents = body.get("contents") if isinstance(body.get("contents"), list) else []
    system = body.get("systemInstruction", body.get("system_instruction"))
    chars = len(dumps(body["tools"])) if body.get("tools") else 0
    files = 0
    for content in (*contents, system):
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else ():
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str):
                chars += len(part["text"].encode())
            elif "inlineData" in part or "inline_data" in part or "fileData" in part or "file_data" in part:
                files += 1
            else:
                chars += len(dumps(part))
    return max(1, (chars + 3) // 4 + files * IMAGE_TOKENS + PER_MESSAGE_TOKENS * len(contents))
