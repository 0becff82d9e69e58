"""A fast fake OpenAI-compatible (and Gemini v1beta) upstream for benchmarks: as little work per
request as possible.

    python -m bench.upstream [--host 127.0.0.1] [--port 0] [--chunks 16] [--delay-ms 0]

Prints one line `READY <port>` on stdout once it listens, then nothing more; SIGTERM/SIGINT stop
it. Every answer is built once at start-up, so its cost per request is aiohttp's own.

* `POST /v1/chat/completions`: a small completion with `usage`; with `"stream": true`, an SSE
  stream of `--chunks` content chunks (the last one carrying `finish_reason`), then a usage-only
  chunk when `stream_options.include_usage` is set, then `data: [DONE]`. Each chunk is its own
  write, as a real upstream sends them.
* `GET /v1/models`: the one model, OpenAI list shape.
* `POST /v1beta/models/{model}:generateContent`: the same answer as a Gemini
  GenerateContentResponse (`usageMetadata` with the same token counts), for any model name;
  `:streamGenerateContent?alt=sse`: the same `--chunks` text pieces as SSE events ended by CRLF
  CRLF, as Google writes them, each carrying the cumulative `usageMetadata`, the last one
  `finishReason: STOP` (without `alt=sse`: one JSON array, written piece by piece). Prebuilt
  per model name too, so a Gemini call costs what an OpenAI one does.

Any bearer key (or `x-goog-api-key`) is accepted. It listens on loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import signal
import sys
import time

from aiohttp import web

MODEL = "bench-model"
PROMPT_TOKENS = 8
GEMINI_MODELS_CACHED = 16  # model names whose Gemini answers are kept prebuilt
CRLF2 = b"\r\n\r\n"  # Google ends each SSE event so


def _sse(obj: object) -> bytes:
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


class Answers:
    """Every response body, prebuilt."""

    def __init__(self, chunks: int) -> None:
        created = int(time.time())
        ident = "chatcmpl-bench0000000000000000"
        base = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": MODEL}
        self.chunks: list[bytes] = []
        text = []
        for i in range(chunks):
            delta: dict[str, str] = {"content": f"tok{i} "}
            if i == 0:
                delta = {"role": "assistant", **delta}
            text.append(delta["content"])
            finish = "stop" if i == chunks - 1 else None
            self.chunks.append(_sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
        usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": chunks, "total_tokens": PROMPT_TOKENS + chunks}
        self.usage_chunk = _sse({**base, "choices": [], "usage": usage})
        self.done = b"data: [DONE]\n\n"
        self.completion = json.dumps(
            {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(text).strip()},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            },
            separators=(",", ":"),
        ).encode()
        self.models = json.dumps(
            {"object": "list", "data": [{"id": MODEL, "object": "model", "created": created, "owned_by": "bench"}]}
        ).encode()
        self.texts = text
        self._gemini: dict[str, GeminiAnswers] = {}

    def gemini(self, model: str) -> GeminiAnswers:
        """The Gemini answers for one model name (its `modelVersion`), built on first use."""
        answers = self._gemini.get(model)
        if answers is None:
            answers = GeminiAnswers(self.texts, model)
            if len(self._gemini) < GEMINI_MODELS_CACHED:
                self._gemini[model] = answers
        return answers


class GeminiAnswers:
    """The same answer as `Answers`, in Gemini's shapes: the same text in the same pieces, the
    same token counts (`usageMetadata`, cumulative on every stream chunk as Google sends it)."""

    def __init__(self, texts: list[str], model: str) -> None:
        ident = "bench-gemini-response-0000"

        def usage(candidates: int) -> dict[str, int]:
            return {
                "promptTokenCount": PROMPT_TOKENS,
                "candidatesTokenCount": candidates,
                "totalTokenCount": PROMPT_TOKENS + candidates,
            }

        def response(text: str, tokens: int, finish: bool) -> bytes:
            candidate: dict[str, object] = {"content": {"role": "model", "parts": [{"text": text}]}}
            if finish:
                candidate["finishReason"] = "STOP"
            candidate["index"] = 0
            body = {"candidates": [candidate], "usageMetadata": usage(tokens), "modelVersion": model}
            return json.dumps({**body, "responseId": ident}, separators=(",", ":")).encode()

        n = len(texts)
        self.completion = response("".join(texts).strip(), n, True)
        pieces = [response(t, i + 1, i == n - 1) for i, t in enumerate(texts)]
        self.events = [b"data: " + p + CRLF2 for p in pieces]
        self.array = [(b"[" if i == 0 else b",\r\n") + p for i, p in enumerate(pieces)] + [b"]"]


def create_app(chunks: int = 16, delay: float = 0.0) -> web.Application:
    """`delay`: seconds before each answer starts, as a real model thinks before its first token."""
    answers = Answers(chunks)

    async def chat(request: web.Request) -> web.StreamResponse:
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return web.json_response(
                {"error": {"message": "invalid JSON", "type": "invalid_request_error", "code": None}}, status=400
            )
        if delay:
            await asyncio.sleep(delay)
        if body.get("stream") is not True:
            return web.Response(body=answers.completion, content_type="application/json")
        options = body.get("stream_options")
        with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for chunk in answers.chunks:
            await resp.write(chunk)
        if with_usage:
            await resp.write(answers.usage_chunk)
        await resp.write(answers.done)
        await resp.write_eof()
        return resp

    async def models(request: web.Request) -> web.Response:
        return web.Response(body=answers.models, content_type="application/json")

    async def gemini(request: web.Request) -> web.StreamResponse:
        model, _, method = request.match_info["target"].rpartition(":")
        try:
            body = json.loads(await request.read())
        except ValueError:
            body = None
        if not isinstance(body, dict) or not model or method not in ("generateContent", "streamGenerateContent"):
            error = {"code": 400, "message": "invalid request", "status": "INVALID_ARGUMENT"}
            return web.json_response({"error": error}, status=400)
        if delay:
            await asyncio.sleep(delay)
        shaped = answers.gemini(model)
        if method == "generateContent":
            return web.Response(body=shaped.completion, content_type="application/json")
        sse = request.query.get("alt") == "sse"
        content_type = "text/event-stream" if sse else "application/json"
        resp = web.StreamResponse(headers={"Content-Type": content_type, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        for chunk in shaped.events if sse else shaped.array:
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1beta/models/{target}", gemini)
    return app


async def serve(host: str, port: int, chunks: int, delay: float = 0.0) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"bench.upstream: refusing to listen on {host}: loopback only")
    runner = web.AppRunner(create_app(chunks, delay), access_log=None, handle_signals=False)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        print(f"READY {runner.addresses[0][1]}", flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (printed on the READY line)")
    parser.add_argument("--chunks", type=int, default=16, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="wait before each answer (a model's thinking)")
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port, args.chunks, args.delay_ms / 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
