"""`Mode.GEMINI_ON_OPENAI`, streamed: OpenAI chat.completion.chunk objects in, Gemini
GenerateContentResponse chunks out (`Translator`), and the `Adapter` the relay drives it through,
which frames them the way the client asked: `?alt=sse` as SSE events (`data: <json>` and
"\\r\\n\\r\\n", as Google writes them), else one JSON array streamed piece by piece (`[`, the
chunks separated by ",\\r\\n", `]`). The mapping decisions are listed in
gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.relay.formats.gemini_shared import (
    Framing,
    gemini_candidate,
    gemini_error,
    gemini_finish,
    gemini_function_call,
)
from gateway.relay.formats.shared import (
    STREAM_ERROR,
    OpenAIChunks,
    new_id,
)
from gateway.relay.formats.usage import Usage, gemini_usage_dict, openai_usage


class Translator:
    """OpenAI chat.completion.chunk objects in, Gemini response chunks (dicts) out.

    `feed(chunk)` for every parsed `data:` object, `close()` at `[DONE]` or the end of the
    upstream stream (idempotent). Each returns the chunks to send, possibly none. Text goes out as
    it arrives; a tool call's arguments come in fragments and Gemini sends a functionCall whole,
    so the calls are collected and sent in one chunk at `finish_reason` (or at `close()` when none
    came). The last chunk, with finishReason and usageMetadata, waits for `close()`: the
    usage-only chunk comes after `finish_reason`.
    """

    def __init__(self, *, model: str | None = None) -> None:
        self.model = model
        self.usage: Usage | None = None  # the upstream's, once reported
        self.finish_reason: str | None = None
        self.response_id: str | None = None
        self.closed = False
        self._calls: dict[int, list[Any]] = {}  # OpenAI tool index -> [name, argument fragments]

    def _chunk(self, candidate: dict) -> dict:
        return {"candidates": [candidate], "modelVersion": self.model or "", "responseId": self._id()}

    def _id(self) -> str:
        if self.response_id is None:
            self.response_id = new_id("")
        return self.response_id

    def feed(self, chunk: Any) -> list[dict]:
        if self.closed or not isinstance(chunk, dict):
            return []
        if chunk.get("error") is not None:  # a failure reported inside the stream; our words, never the upstream's
            self.closed = True
            return [gemini_error(STREAM_ERROR)]
        if self.response_id is None and isinstance(chunk.get("id"), str) and chunk["id"]:
            self.response_id = chunk["id"]
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        usage = openai_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return []
        choice, out = choices[0], []
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._chunk(gemini_candidate([{"text": text}])))
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    self._collect(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            if self._calls:
                out.append(self._chunk(gemini_candidate(self._call_parts())))
        return out

    def _collect(self, call: dict) -> None:
        index = call.get("index") if isinstance(call.get("index"), int) else len(self._calls)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        slot = self._calls.setdefault(index, ["", []])
        if not slot[0] and isinstance(function.get("name"), str):
            slot[0] = function["name"]
        if isinstance(function.get("arguments"), str) and function["arguments"]:
            slot[1].append(function["arguments"])

    def _call_parts(self) -> list[dict]:
        parts = [gemini_function_call(name, "".join(args)) for _, (name, args) in sorted(self._calls.items())]
        self._calls = {}
        return parts

    def close(self) -> list[dict]:
        """The last chunk: calls not sent yet, the finish reason and the usage."""
        if self.closed:
            return []
        self.closed = True
        candidate = gemini_candidate(self._call_parts(), gemini_finish(self.finish_reason))
        return [
            {
                "candidates": [candidate],
                "usageMetadata": gemini_usage_dict(self.usage),
                "modelVersion": self.model or "",
                "responseId": self._id(),
            }
        ]


class Adapter(OpenAIChunks):
    """An `openai` key's stream to a Gemini client, converted chunk by chunk, framed as the client
    asked (`gemini_shared.Framing`: `?alt=sse`, or one JSON array)."""

    def __init__(self, *, model: str, sse: bool) -> None:
        super().__init__()
        self._stream = Translator(model=model)
        self.framing = Framing(sse=sse)
        self.content_type = self.framing.content_type

    def chunk(self, chunk: dict) -> bytes:
        out = self._frame(self._stream.feed(chunk))
        self.usage = self._stream.usage or self.usage
        return out

    def finish(self) -> bytes:
        out = self._frame(self._stream.close()) + self.framing.close()
        self.usage = self._stream.usage or self.usage
        return out

    def _frame(self, chunks: list[dict]) -> bytes:
        return b"".join(self.framing.chunk(orjson.dumps(c)) for c in chunks)

    def error(self, message: str) -> bytes:
        """Google's error object, as the stream's last SSE event or the array's last element."""
        self._stream.closed = True  # nothing follows an error
        return self.framing.error(message)
