"""`Mode.ANTHROPIC_ON_OPENAI`, streamed: OpenAI chat.completion.chunk objects in, Anthropic SSE
events out (`Translator`), and the `Adapter` the relay drives it through. The mapping decisions
are listed in gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from gateway.relay.formats.shared import (
    STREAM_ERROR,
    OpenAIChunks,
    anthropic_error_event,
    anthropic_event,
    matched_stop,
    message_id,
    new_id,
    stop_reason,
)
from gateway.relay.formats.usage import Usage, anthropic_usage_dict, openai_usage


class Translator:
    """OpenAI chat.completion.chunk objects in, Anthropic SSE bytes out.

    `feed(chunk)` for every parsed `data:` object, `close()` at `[DONE]` or the end of the
    upstream stream (idempotent). Each returns the bytes to send, possibly b"". Content blocks
    are opened and closed one at a time, as Anthropic does: text, then each tool call in the
    order OpenAI's `tool_calls[].index` first appears. `message_delta` and `message_stop` wait
    for `close()`, since the usage-only chunk comes after `finish_reason`.
    """

    def __init__(self, *, model: str | None = None, input_tokens: int = 0) -> None:
        self.model = model
        self.input_tokens = input_tokens  # for message_start, when the caller knows (an estimate)
        self.usage: Usage | None = None  # the upstream's, once reported
        self.finish_reason: str | None = None
        self.stop_sequence: str | None = None
        self.started = False
        self.closed = False
        self._index = -1  # Anthropic index of the open block, -1 when none is open
        self._blocks = 0
        self._open_tool: int | None = None  # OpenAI tool index of the open tool_use block
        self._tools: dict[int, int] = {}  # OpenAI tool index -> Anthropic block index

    def _start(self, chunk: dict) -> bytes:
        self.started = True
        model = chunk.get("model") or self.model or ""
        message = {
            "id": message_id(chunk.get("id")),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": 0},
        }
        return anthropic_event("message_start", {"type": "message_start", "message": message})

    def _stop_block(self) -> bytes:
        if self._index < 0:
            return b""
        out = anthropic_event("content_block_stop", {"type": "content_block_stop", "index": self._index})
        self._index, self._open_tool = -1, None
        return out

    def _open(self, block: dict) -> bytes:
        out = self._stop_block()
        self._index = self._blocks
        self._blocks += 1
        event = {"type": "content_block_start", "index": self._index, "content_block": block}
        return out + anthropic_event("content_block_start", event)

    def _delta(self, delta: dict) -> bytes:
        return anthropic_event(
            "content_block_delta", {"type": "content_block_delta", "index": self._index, "delta": delta}
        )

    def feed(self, chunk: dict) -> bytes:
        if self.closed or not isinstance(chunk, dict):
            return b""
        out = b"" if self.started else self._start(chunk)
        error = chunk.get("error")
        if error is not None:  # a failure reported inside the stream; our words, never the upstream's
            self.closed = True
            return out + self._stop_block() + anthropic_error_event(STREAM_ERROR)
        usage = openai_usage(chunk.get("usage"))
        if usage is not None:
            self.usage = usage
        choices = chunk.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            return out
        choice = choices[0]
        delta = choice.get("delta")
        if isinstance(delta, dict):
            text = delta.get("content")
            if isinstance(text, str) and text:
                if self._index < 0 or self._open_tool is not None:
                    out += self._open({"type": "text", "text": ""})
                out += self._delta({"type": "text_delta", "text": text})
            calls = delta.get("tool_calls")
            for call in calls if isinstance(calls, list) else ():
                if isinstance(call, dict):
                    out += self._tool_delta(call)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
            self.stop_sequence = matched_stop(choice) if self.finish_reason == "stop" else None
            out += self._stop_block()
        return out

    def _tool_delta(self, call: dict) -> bytes:
        index = call.get("index") if isinstance(call.get("index"), int) else len(self._tools)
        function = call.get("function") if isinstance(call.get("function"), dict) else {}
        out = b""
        if index not in self._tools:
            call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else new_id("toolu_")
            block = {"type": "tool_use", "id": call_id, "name": function.get("name") or "", "input": {}}
            out = self._open(block)
            self._tools[index], self._open_tool = self._index, index
        arguments = function.get("arguments")
        # Fragments for a call whose block was already closed (an upstream interleaving parallel
        # calls) cannot be placed any more: Anthropic blocks are sequential. They are dropped.
        if isinstance(arguments, str) and arguments and self._open_tool == index:
            out += self._delta({"type": "input_json_delta", "partial_json": arguments})
        return out

    def close(self) -> bytes:
        """The end of the message: `message_delta` (stop reason, usage) and `message_stop`."""
        if self.closed:
            return b""
        out = b"" if self.started else self._start({})
        out += self._stop_block()
        self.closed = True
        reason = stop_reason(self.finish_reason, bool(self._tools))
        sequence = self.stop_sequence if reason == "end_turn" and self.stop_sequence else None
        if sequence is not None:
            reason = "stop_sequence"
        usage = {"output_tokens": 0} if self.usage is None else anthropic_usage_dict(self.usage)
        event = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        out += anthropic_event("message_delta", event)
        return out + anthropic_event("message_stop", {"type": "message_stop"})


class Adapter(OpenAIChunks):
    """An `openai` key's stream to an Anthropic client, converted chunk by chunk."""

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self._stream = Translator(model=model)

    def chunk(self, chunk: dict) -> bytes:
        out = self._stream.feed(chunk)
        self.usage = self._stream.usage or self.usage
        return out

    def finish(self) -> bytes:
        out = self._stream.close()
        self.usage = self._stream.usage or self.usage
        return out

    def error(self, message: str) -> bytes:
        return anthropic_error_event(message)
