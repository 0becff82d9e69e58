"""A fake Gemini upstream (Google AI Studio's v1beta API): a real aiohttp server.

Speaks what Google speaks: `GET /v1beta/models` (`models[].name` = "models/<id>"),
`POST /v1beta/models/{model}:generateContent` (JSON), `:streamGenerateContent` (SSE with
`?alt=sse`, events ended by CRLF CRLF; without it one JSON array), `:countTokens`; the key as
`x-goog-api-key` (a wrong one: Google's 400 `API_KEY_INVALID`); function calls when the last
turn offers tools and is not a function response (unless `call_tools` is off); `usageMetadata` with thoughts and cached
counts; Google's error bodies. `fail_next` queues failures; every request is recorded.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.support.fake_upstream import Recorded

KEY = "AIzaSy-fake-gemini-key-0000000000000"
STATUSES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}


def google_error(status: int, message: str, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"code": status, "message": message, "status": STATUSES.get(status, "INTERNAL")}
    if reason:
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason}]
    error.update(extra)
    return {"error": error}


@dataclass
class GeminiFailure:
    status: int
    body: dict[str, Any] | None = None
    drop_after: int | None = None  # streams: this many chunks, then the connection is cut


@dataclass
class FakeGemini:
    models: list[str] = field(default_factory=lambda: ["gemini-2.5-flash", "gemini-2.5-pro"])
    keys: set[str] = field(default_factory=lambda: {KEY})
    reply: str = "Hello from the fake Gemini"
    chunks: int = 3
    thoughts: int = 5  # thoughtsTokenCount reported
    cached: int = 0  # cachedContentTokenCount reported
    grounded: bool = False  # answers carry groundingMetadata.webSearchQueries
    call_tools: bool = True  # a turn offering tools gets a call to the first (False: text, no call)
    requests: list[Recorded] = field(default_factory=list)
    failures: deque[GeminiFailure] = field(default_factory=deque)
    server: TestServer | None = None

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_get("/v1beta/models", self._models)
        self.app.router.add_post("/v1beta/models/{target}", self._method)

    @property
    def base_url(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("/v1beta"))

    @property
    def origin(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    def fail_next(self, failure: GeminiFailure | int, times: int = 1) -> None:
        self.failures.extend([GeminiFailure(failure) if isinstance(failure, int) else failure] * times)

    async def _record(self, request: web.Request) -> tuple[Any, web.Response | None]:
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append(Recorded(request.method, request.path, dict(request.headers), body, request.query_string))
        if request.headers.get("x-goog-api-key") not in self.keys:
            return body, web.json_response(
                google_error(400, "API key not valid. Please pass a valid API key.", "API_KEY_INVALID"), status=400
            )
        return body, None

    async def _models(self, request: web.Request) -> web.Response:
        _, refused = await self._record(request)
        if refused is not None:
            return refused
        models = [
            {"name": f"models/{m}", "displayName": m, "supportedGenerationMethods": ["generateContent"]}
            for m in self.models
        ]
        return web.json_response({"models": models})

    async def _method(self, request: web.Request) -> web.StreamResponse:
        body, refused = await self._record(request)
        if refused is not None:
            return refused
        model, _, method = request.match_info["target"].rpartition(":")
        if model not in self.models:
            return web.json_response(
                google_error(404, f"models/{model} is not found for API version v1beta"), status=404
            )
        failure = self.failures.popleft() if self.failures else None
        if failure is not None and failure.drop_after is None:
            body_out = failure.body or google_error(failure.status, "fake failure")
            return web.json_response(body_out, status=failure.status)
        if method == "countTokens":
            return web.json_response({"totalTokens": 7})
        answer = self.answer(body or {}, model)
        if method == "generateContent":
            return web.json_response(answer)
        return await self._stream(request, answer, failure)

    def answer(self, body: dict[str, Any], model: str) -> dict[str, Any]:
        contents = body.get("contents") or []
        last = contents[-1] if contents else {}
        tools = [d for t in body.get("tools") or [] for d in t.get("functionDeclarations", [])]
        responded = any("functionResponse" in p for p in last.get("parts", []))
        if self.call_tools and tools and not responded:
            parts: list[dict[str, Any]] = [{"functionCall": {"name": tools[0]["name"], "args": {"city": "Paris"}}}]
        elif responded:
            result = next(p["functionResponse"] for p in last["parts"] if "functionResponse" in p)
            parts = [{"text": f"The tool said: {json.dumps(result.get('response'))}"}]
        else:
            parts = [{"text": self.reply}]
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        if self.grounded:
            candidate["groundingMetadata"] = {"webSearchQueries": ["weather paris"]}
        usage = {
            "promptTokenCount": 11 + self.cached,
            "candidatesTokenCount": 8,
            "totalTokenCount": 19 + self.cached + self.thoughts,
            "thoughtsTokenCount": self.thoughts,
        }
        if self.cached:
            usage["cachedContentTokenCount"] = self.cached
        return {"candidates": [candidate], "usageMetadata": usage, "modelVersion": model, "responseId": "resp-fake-1"}

    def pieces(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """The answer as Google streams it: the text in `chunks` pieces, usage on every chunk
        (cumulative), the finish reason on the last."""
        candidate = answer["candidates"][0]
        parts = candidate["content"]["parts"]
        texts = [parts[0]["text"]] if "text" in parts[0] else []
        if texts:
            size = max(1, len(texts[0]) // self.chunks + 1)
            texts = [texts[0][i : i + size] for i in range(0, len(texts[0]), size)]
        out = []
        for i, piece in enumerate(texts or [None]):
            part_list = [{"text": piece}] if piece is not None else parts
            chunk_candidate: dict[str, Any] = {"content": {"role": "model", "parts": part_list}, "index": 0}
            if i == len(texts or [None]) - 1:
                chunk_candidate["finishReason"] = "STOP"
                if "groundingMetadata" in candidate:
                    chunk_candidate["groundingMetadata"] = candidate["groundingMetadata"]
            out.append(
                {
                    "candidates": [chunk_candidate],
                    "usageMetadata": answer["usageMetadata"],
                    "modelVersion": answer["modelVersion"],
                    "responseId": answer["responseId"],
                }
            )
        return out

    async def _stream(
        self, request: web.Request, answer: dict[str, Any], failure: GeminiFailure | None
    ) -> web.StreamResponse:
        sse = request.query.get("alt") == "sse"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream" if sse else "application/json"})
        await resp.prepare(request)
        pieces = self.pieces(answer)
        for i, chunk in enumerate(pieces):
            if failure is not None and failure.drop_after is not None and i >= failure.drop_after:
                assert request.transport is not None
                request.transport.close()
                return resp
            data = json.dumps(chunk).encode()
            if sse:
                await resp.write(b"data: " + data + b"\r\n\r\n")
            else:
                await resp.write((b"[" if i == 0 else b",\r\n") + data)
            await asyncio.sleep(0)
        if not sse:
            await resp.write(b"]")
        await resp.write_eof()
        return resp
