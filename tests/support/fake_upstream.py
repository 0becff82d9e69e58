"""A fake OpenAI-compatible upstream: a real aiohttp server speaking JSON and SSE.

Behaviour is scripted per test: `fail_next(...)` queues failures that the next requests meet
(an HTTP status, a hang, a redirect, a stream dropped after N chunks, a 200 stream carrying only
an error); `delay` holds every request that long before answering. Every request is recorded
(path, headers, JSON body, and when it arrived and ended on `time.monotonic()`) so tests can
assert on what the gateway sent and on how many calls were in flight at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support import fake_anthropic

STARTED = web.RequestKey("started", float)


@dataclass
class Failure:
    status: int = 500
    retry_after: str | None = None
    hang: float = 0.0  # seconds to wait before answering anything
    location: str | None = None  # with a 3xx status
    drop_after: int | None = None  # streams: send this many chunks, then cut the connection
    error_stream: bool = False  # 200 text/event-stream whose only event is an error
    body: dict[str, Any] | None = None
    path: str | None = None  # only requests to this path meet the failure (None: any)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    query: str = ""  # the query string as it arrived
    started: float = 0.0  # time.monotonic() when the request arrived
    ended: float | None = None  # its handler returned (a JSON answer is sent just after); None: in flight


RECORDED = web.RequestKey("recorded", Recorded)


@dataclass
class FakeUpstream:
    models: list[str] = field(default_factory=lambda: ["gpt-4o-mini", "text-embedding-3-small"])
    valid_keys: set[str] | None = None  # None: any bearer key is accepted
    chunks: int = 4  # content chunks per stream
    chunk_delay: float = 0.0
    reply: str = "Hello from the fake upstream"
    usage: bool = True  # report usage (JSON, and in streams when stream_options asks)
    reject_stream_options: bool = False  # behave like upstreams that 400 on stream_options
    reject_max_tokens: bool = False  # behave like reasoning models: max_completion_tokens only
    call_tools: bool = True  # a user turn offering tools gets a call to the first (False: text, no call)
    server_tool_use: dict[str, int] | None = None  # Anthropic answers report it in usage ({"web_search_requests": 3})
    response_items: list[dict[str, Any]] = field(default_factory=list)  # Responses output items before the message
    requests: list[Recorded] = field(default_factory=list)
    disconnects: int = 0  # streams the gateway hung up on before the end
    failures: deque[Failure] = field(default_factory=deque)
    delay: float = 0.0  # seconds every request is held before it is answered (read when it arrives)
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.app = web.Application(middlewares=[self._timed])
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/completions", self._completions)
        self.app.router.add_post("/v1/embeddings", self._embeddings)
        self.app.router.add_post("/v1/responses", self._responses)
        self.app.router.add_post("/v1/messages", self._messages)
        self.app.router.add_post("/v1/messages/count_tokens", self._count_tokens)

    # --- control ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1"))

    def fail_next(self, failure: Failure | int, times: int = 1) -> None:
        f = Failure(status=failure) if isinstance(failure, int) else failure
        self.failures.extend([f] * times)

    def calls(self, path: str) -> list[Recorded]:
        return [r for r in self.requests if r.path == path]

    # --- handlers -----------------------------------------------------------------------

    @web.middleware
    async def _timed(self, request: web.Request, handler: Any) -> web.StreamResponse:
        request[STARTED] = time.monotonic()
        try:
            return await handler(request)
        finally:
            recorded = request.get(RECORDED)
            if recorded is not None:
                recorded.ended = time.monotonic()

    async def _begin(self, request: web.Request) -> tuple[Any, Failure | None, web.StreamResponse | None]:
        delay = self.delay
        body: Any = None
        if request.can_read_body:
            raw = await request.read()
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        recorded = Recorded(request.method, request.path, dict(request.headers), body, request.query_string)
        recorded.started = request.get(STARTED, time.monotonic())
        request[RECORDED] = recorded
        self.requests.append(recorded)
        if delay:
            await asyncio.sleep(delay)
        auth = request.headers.get("Authorization", "")
        key = auth.removeprefix("Bearer ") if auth.startswith("Bearer ") else request.headers.get("x-api-key")
        anthropic = request.path.startswith("/v1/messages") or "anthropic-version" in request.headers
        if key is None or (self.valid_keys is not None and key not in self.valid_keys):
            if anthropic:
                return body, None, fake_anthropic.error(401, "authentication_error", "invalid x-api-key")
            return body, None, _error(401, "Incorrect API key provided", "invalid_api_key")
        next_failure = self.failures[0] if self.failures else None
        failure = None
        if next_failure is not None and next_failure.path in (None, request.path):
            failure = self.failures.popleft()
        if failure is None:
            return body, None, None
        if failure.hang:
            await asyncio.sleep(failure.hang)
        if failure.location:
            raise web.HTTPFound(failure.location)
        if failure.drop_after is not None or failure.error_stream:
            return body, failure, None
        headers = {"Retry-After": failure.retry_after} if failure.retry_after else {}
        if anthropic and failure.body is None:
            return body, failure, fake_anthropic.error(failure.status, "api_error", "fake failure", headers)
        return body, failure, _error(failure.status, "fake failure", "fake", headers, failure.body)

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body, failure, early = await self._begin(request)
        return early or await fake_anthropic.messages(self, request, body, failure)

    async def _count_tokens(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._begin(request)
        return early or fake_anthropic.count_tokens(self, body)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        _, _, early = await self._begin(request)
        if early:
            return early
        if "anthropic-version" in request.headers:
            return fake_anthropic.models(self)
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake"} for m in self.models]
        return web.json_response({"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, failure, early = await self._begin(request)
        if early:
            return early
        model = body.get("model") if isinstance(body, dict) else None
        if model not in self.models:
            return _error(404, f"The model {model} does not exist", "model_not_found")
        if self.reject_max_tokens and "max_tokens" in body:
            message = (
                "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens'."
            )
            return _error(400, message, "unsupported_parameter")
        if body.get("stream"):
            if self.reject_stream_options and "stream_options" in body:
                return _error(400, "Unrecognized request argument supplied: stream_options", None)
            return await self._stream_chat(request, body, failure)
        usage = {"prompt_tokens": 9, "completion_tokens": 12, "total_tokens": 21}
        message = _chat_reply(self.reply, body, self.call_tools)
        return web.json_response(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": message,
                        "finish_reason": "tool_calls" if message.get("tool_calls") else "stop",
                    }
                ],
                **({"usage": usage} if self.usage else {}),
            }
        )

    async def _stream_chat(
        self, request: web.Request, body: dict[str, Any], failure: Failure | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        if failure is not None and failure.error_stream:
            await resp.write(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
            await resp.write_eof()
            return resp
        base = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": body["model"],
        }
        message = _chat_reply(self.reply, body, self.call_tools)
        words = _split(message["content"] or "-", self.chunks)
        events = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}
        ]
        if message.get("tool_calls"):
            [call] = message["tool_calls"]
            arguments = call["function"]["arguments"]
            head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"]}}
            pieces = [{**head, "function": {**head["function"], "arguments": ""}}]
            pieces += [{"index": 0, "function": {"arguments": a}} for a in (arguments[:5], arguments[5:])]
            events += [{**base, "choices": [{"index": 0, "delta": {"tool_calls": [p]}}]} for p in pieces]
            events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
        else:
            delta = [{**base, "choices": [{"index": 0, "delta": {"content": w}, "finish_reason": None}]} for w in words]
            events += delta
            events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if self.usage and (body.get("stream_options") or {}).get("include_usage"):
            events.append(
                {
                    **base,
                    "choices": [],
                    "usage": {"prompt_tokens": 9, "completion_tokens": len(words), "total_tokens": 9 + len(words)},
                }
            )
        try:
            for i, event in enumerate(events):
                if failure is not None and failure.drop_after is not None and i >= failure.drop_after:
                    assert request.transport is not None
                    request.transport.close()  # cut the connection mid-stream, no terminating chunk
                    return resp
                if self.chunk_delay:
                    await asyncio.sleep(self.chunk_delay)
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            await resp.write(b"data: [DONE]\n\n")
        except (ConnectionError, asyncio.CancelledError):
            self.disconnects += 1
            raise
        await resp.write_eof()
        return resp

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._begin(request)
        if early:
            return early
        return web.json_response(
            {
                "id": "cmpl-fake",
                "object": "text_completion",
                "created": int(time.time()),
                "model": body.get("model"),
                "choices": [{"text": self.reply, "index": 0, "logprobs": None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            }
        )

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._begin(request)
        if early:
            return early
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        data = [{"object": "embedding", "index": i, "embedding": [0.1, 0.2, 0.3]} for i in range(len(items))]
        return web.json_response(
            {
                "object": "list",
                "data": data,
                "model": body.get("model"),
                "usage": {"prompt_tokens": 4, "total_tokens": 4},
            }
        )

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, _, early = await self._begin(request)
        if early:
            return early
        message = {
            "type": "message",
            "id": "msg_fake",
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": self.reply, "annotations": []}],
        }
        response = {
            "id": "resp_fake",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model"),
            "output": [*self.response_items, message],
            "usage": {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12},
        }
        if not body.get("stream"):
            return web.json_response(response)
        # Streamed: response.created (no output, no usage yet), text deltas, response.completed.
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        events = [{"type": "response.created", "response": {**response, "status": "in_progress", "output": [],
                                                            "usage": None}}]  # fmt: skip
        events += [{"type": "response.output_text.delta", "delta": w} for w in _split(self.reply, self.chunks)]
        events.append({"type": "response.completed", "response": response})
        for event in events:
            await resp.write(f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode())
        await resp.write_eof()
        return resp


def _chat_reply(reply: str, body: dict[str, Any], call_tools: bool = True) -> dict[str, Any]:
    """Like a model: tools offered to a user turn get a call; tool results get text repeating them."""
    messages = body.get("messages") or [{}]
    last = messages[-1] if isinstance(messages[-1], dict) else {}
    if last.get("role") == "tool":
        said = " ".join(str(m.get("content")) for m in messages if isinstance(m, dict) and m.get("role") == "tool")
        return {"role": "assistant", "content": f"tool said: {said}"}
    tools = body.get("tools")
    if call_tools and tools and last.get("role") == "user":
        name = tools[0]["function"]["name"]
        call = {"id": "call_fake1", "type": "function", "function": {"name": name, "arguments": '{"city": "Paris"}'}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": reply}


def _split(text: str, n: int) -> list[str]:
    """Exactly n pieces (for n <= len(text)) that join back to the text."""
    n = max(1, min(n, len(text)))
    return [text[i * len(text) // n : (i + 1) * len(text) // n] for i in range(n)]


def _error(
    status: int,
    message: str,
    code: str | None,
    headers: dict[str, str] | None = None,
    body: dict[str, Any] | None = None,
) -> web.Response:
    payload = body or {"error": {"message": message, "type": "invalid_request_error", "code": code}}
    return web.json_response(payload, status=status, headers=headers)
