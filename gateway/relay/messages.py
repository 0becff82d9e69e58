"""The Anthropic Messages API on the same pool: `POST /v1/messages` and `/v1/messages/count_tokens`.

Claude Code and the `anthropic` SDKs call these. The request runs through the same steps as an
OpenAI one (`handlers.proxy`): token, checks, one pick, failover, accounting. An `anthropic` key
gets the body as it came; an `openai` key gets it translated (`translate`). Errors answer in
Anthropic's shape (`errors.anthropic_error`), with `request-id`.

The body is checked before any key is chosen (`anthropic_body`), naming the field Anthropic would name.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import orjson
from aiohttp import web

from gateway import appkeys
from gateway.log import request_fields
from gateway.net import h1
from gateway.relay import handlers, plan, translate
from gateway.relay.anthropic_body import check

routes = web.RouteTableDef()

COUNT_TIMEOUT = 10.0


@routes.post("/v1/messages")
async def messages(request: web.Request) -> web.StreamResponse:
    return await handlers.proxy(request, "/messages")


@routes.post("/v1/messages/count_tokens")
async def count_tokens(request: web.Request) -> web.Response:
    """Asked of an `anthropic` key serving the model when there is one (not counted against its
    daily limit: no pick, a key chosen at random), else estimated locally."""
    await handlers.authenticate(request)
    _, body = await handlers.read_json(request)
    check(body, counting=True)
    index = request.app[appkeys.key_index]
    keys = [k for k in index.pooled(body["model"], "/messages") if k.api_format == "anthropic"]
    if keys:
        counted = await _ask(request, random.choice(keys), body)
        if counted is not None:
            return web.json_response({"input_tokens": counted})
    return web.json_response({"input_tokens": translate.estimate_input_tokens(body)})


async def _ask(request: web.Request, key: Any, body: dict[str, Any]) -> int | None:
    pool = request.app[appkeys.upstream_pool]
    deadline = asyncio.get_running_loop().time() + COUNT_TIMEOUT
    head = key.head[False] + plan.anthropic_lines(request)
    started = time.perf_counter()
    try:
        resp = await pool.request(key.urls["/messages/count_tokens"], head, orjson.dumps(body), deadline=deadline)
        try:
            if resp.status != 200:
                return None
            answer = orjson.loads(await resp.read(64 * 1024, deadline))
        finally:
            resp.release()
    except (OSError, ValueError, h1.UpstreamClosed, h1.AnswerTooLarge):
        return None
    finally:
        request_fields(request)["upstream_ms"] = round((time.perf_counter() - started) * 1000, 1)
    tokens = answer.get("input_tokens") if isinstance(answer, dict) else None
    return tokens if isinstance(tokens, int) and tokens >= 0 else None
