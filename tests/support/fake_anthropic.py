"""The Anthropic side of the fake upstream: `/v1/messages` (JSON and SSE), `count_tokens`, and the
model list in Anthropic's shape. Tools are answered the way a model would: a user turn with tools
gets a `tool_use`, a turn that brings `tool_result`s gets text that repeats them."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from .fake_upstream import Failure, FakeUpstream

USAGE = {"input_tokens": 9, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 2}


def error(status: int, kind: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(
        {"type": "error", "error": {"type": kind, "message": message}}, status=status, headers=headers
    )


def models(up: FakeUpstream) -> web.Response:
    data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"} for m in up.models]
    return web.json_response({"data": data, "has_more": False, "first_id": up.models[0], "last_id": up.models[-1]})


def _reply(up: FakeUpstream, body: dict[str, Any]) -> list[dict[str, Any]]:
    last = body["messages"][-1]
    content = last.get("content")
    results = (
        [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"]
        if isinstance(content, list)
        else []
    )
    if results:
        said = " ".join(str(r.get("content")) for r in results)
        return [{"type": "text", "text": f"tool said: {said}"}]
    if up.call_tools and body.get("tools") and last.get("role") == "user":
        tool = body["tools"][0]
        return [{"type": "tool_use", "id": "toolu_fake1", "name": tool["name"], "input": {"city": "Paris"}}]
    return [{"type": "text", "text": up.reply}]


async def messages(up: FakeUpstream, request: web.Request, body: Any, failure: Failure | None) -> web.StreamResponse:
    if "anthropic-version" not in request.headers:
        return error(400, "invalid_request_error", "anthropic-version: header is required")
    if not isinstance(body, dict) or not isinstance(body.get("max_tokens"), int):
        return error(400, "invalid_request_error", "max_tokens: Field required")
    model = body.get("model")
    if model not in up.models:
        return error(404, "not_found_error", f"model: {model}")
    blocks = _reply(up, body)
    stop = "tool_use" if blocks[0]["type"] == "tool_use" else "end_turn"
    output = len(up.reply) // 4 or 1
    if body.get("stream"):
        return await _stream(up, request, model, blocks, stop, output, failure)
    return web.json_response(
        {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": blocks,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": {**USAGE, "output_tokens": output, **_server_tool_use(up)},
        }
    )


def _server_tool_use(up: FakeUpstream) -> dict[str, Any]:
    return {"server_tool_use": up.server_tool_use} if up.server_tool_use is not None else {}


def event(kind: str, data: dict[str, Any]) -> bytes:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n".encode()


async def _stream(
    up: FakeUpstream,
    request: web.Request,
    model: str,
    blocks: list[dict[str, Any]],
    stop: str,
    output: int,
    failure: Failure | None,
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    message = {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
               "stop_reason": None, "stop_sequence": None, "usage": {**USAGE, "output_tokens": 1}}  # fmt: skip
    events = [event("message_start", {"message": message}), event("ping", {})]
    if failure is not None and failure.error_stream:
        events.append(event("error", {"error": {"type": "overloaded_error", "message": "Overloaded"}}))
    else:
        for i, block in enumerate(blocks):
            if block["type"] == "text":
                events.append(event("content_block_start", {"index": i, "content_block": {"type": "text", "text": ""}}))
                from .fake_upstream import _split

                for piece in _split(block["text"], up.chunks):
                    events.append(
                        event("content_block_delta", {"index": i, "delta": {"type": "text_delta", "text": piece}})
                    )
            else:
                start = {**block, "input": {}}
                events.append(event("content_block_start", {"index": i, "content_block": start}))
                partial = json.dumps(block["input"])
                for piece in (partial[: len(partial) // 2], partial[len(partial) // 2 :]):
                    delta = {"type": "input_json_delta", "partial_json": piece}
                    events.append(event("content_block_delta", {"index": i, "delta": delta}))
            events.append(event("content_block_stop", {"index": i}))
        usage = {"output_tokens": output, **_server_tool_use(up)}  # cumulative, as Anthropic's
        delta = {"delta": {"stop_reason": stop, "stop_sequence": None}, "usage": usage}
        events += [event("message_delta", delta), event("message_stop", {})]
    try:
        for i, data in enumerate(events):
            if failure is not None and failure.drop_after is not None and i >= failure.drop_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            if up.chunk_delay:
                await asyncio.sleep(up.chunk_delay)
            await resp.write(data)
    except (ConnectionError, asyncio.CancelledError):
        up.disconnects += 1
        raise
    await resp.write_eof()
    return resp


def count_tokens(up: FakeUpstream, body: Any) -> web.Response:
    if not isinstance(body, dict) or "messages" not in body:
        return error(400, "invalid_request_error", "messages: Field required")
    if body.get("model") not in up.models:
        return error(404, "not_found_error", f"model: {body.get('model')}")
    return web.json_response({"input_tokens": 42})
