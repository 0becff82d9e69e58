"""`Mode.OPENAI_ON_ANTHROPIC`, streamed: Anthropic stream events in, OpenAI `data:` chunks out
(`Translator`), and the `Adapter` the relay drives it through. The mapping decisions are listed in
gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from typing import Any

from gateway.relay import features
from gateway.relay.formats.openai import ChunkAdapter, ChunkWriter
from gateway.relay.formats.shared import STREAM_ERROR, dumps, finish_reason, new_id, openai_data
from gateway.relay.formats.usage import anthropic_usage


class Translator(ChunkWriter):
    """Anthropic stream events (parsed `data:` objects, each with its `type`) in, OpenAI
    `data: {chunk}` bytes out.

    `feed(event)` for every event, `close()` when the upstream stream ends (idempotent; after
    `message_stop` it adds nothing). The first chunk carries `role: assistant`; text deltas
    become `content`, each tool_use block a `tool_calls` entry (index, id, name, then argument
    fragments); `message_delta` gives the finish_reason chunk; `message_stop` the usage-only
    chunk (`choices: []`, only if `include_usage`) and `data: [DONE]`. An `error` event becomes
    one `data: {"error": …}` and no `[DONE]`. A stream that ends without `message_stop` is
    finished as if it had (`stop`); a caller that calls that a failure sends its error instead.
    """

    def __init__(self, *, include_usage: bool = False, model: str | None = None) -> None:
        super().__init__(include_usage=include_usage, model=model)
        self.stop_reason: str | None = None
        self._tool_count = 0
        self._blocks: dict[int, int] = {}  # Anthropic index of a tool_use block -> OpenAI tool index

    def _merge_usage(self, usage: Any) -> None:
        """Anthropic's counts are cumulative: a later event's value replaces an earlier one."""
        if not isinstance(usage, dict):
            return
        new = anthropic_usage(usage)
        if "input_tokens" in usage:
            self.usage.input_tokens = new.input_tokens
        if "output_tokens" in usage:
            self.usage.output_tokens = new.output_tokens
        if "cache_read_input_tokens" in usage:
            self.usage.cache_read_tokens = new.cache_read_tokens
        if "cache_creation_input_tokens" in usage:
            self.usage.cache_creation_tokens = new.cache_creation_tokens
        self.usage.tool_calls = features.anthropic_calls(usage) or self.usage.tool_calls

    def feed(self, event: dict) -> bytes:
        if self.done or not isinstance(event, dict):
            return b""
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") if isinstance(event.get("message"), dict) else {}
            if isinstance(message.get("id"), str) and message["id"]:
                self.id = message["id"]
            self.model = message.get("model") or self.model
            self._merge_usage(message.get("usage"))
            return self._role()
        if kind == "content_block_start":
            return self._block_start(event)
        if kind == "content_block_delta":
            return self._block_delta(event)
        if kind == "message_delta":
            delta = event.get("delta") if isinstance(event.get("delta"), dict) else {}
            self._merge_usage(event.get("usage"))
            if delta.get("stop_reason"):
                self.stop_reason = delta["stop_reason"]
            return self._role() + self._finish()
        if kind == "message_stop":
            return self.close()
        if kind == "error":
            self.done = True
            error = {"message": STREAM_ERROR, "type": "upstream_error", "code": "upstream_error"}
            return openai_data({"error": error})
        return b""  # ping, content_block_stop, unknown events

    def _block_start(self, event: dict) -> bytes:
        block = event.get("content_block")
        if not isinstance(block, dict):
            return b""
        out = self._role()
        if block.get("type") == "text":
            if isinstance(block.get("text"), str) and block["text"]:
                out += self._chunk({"content": block["text"]})
        elif block.get("type") == "tool_use" and isinstance(event.get("index"), int):
            tool = self._tool_count
            self._tool_count += 1
            self._blocks[event["index"]] = tool
            initial = block.get("input")
            arguments = dumps(initial) if isinstance(initial, dict) and initial else ""
            function = {"name": block.get("name") or "", "arguments": arguments}
            call = {"index": tool, "id": block.get("id") or new_id("call_"), "type": "function", "function": function}
            out += self._chunk({"tool_calls": [call]})
        return out  # thinking, server tool blocks and unknown types: nothing

    def _block_delta(self, event: dict) -> bytes:
        delta = event.get("delta")
        if not isinstance(delta, dict):
            return b""
        kind = delta.get("type")
        if kind == "text_delta" and isinstance(delta.get("text"), str) and delta["text"]:
            return self._role() + self._chunk({"content": delta["text"]})
        if kind == "input_json_delta" and isinstance(delta.get("partial_json"), str) and delta["partial_json"]:
            index = event.get("index")
            tool = self._blocks.get(index) if isinstance(index, int) else None
            if tool is not None:
                return self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": delta["partial_json"]}}]})
        return b""  # thinking_delta, signature_delta, citations_delta, …

    def _finish(self) -> bytes:
        return self._finish_chunk(finish_reason(self.stop_reason))


class Adapter(ChunkAdapter):
    """An `anthropic` key's stream to an OpenAI client, converted event by event."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__(Translator(include_usage=include_usage, model=model))

    def is_error(self, obj: dict) -> bool:
        return obj.get("type") == "error"

    def commits(self, obj: dict) -> bool:
        return obj.get("type") in ("content_block_start", "content_block_delta")
