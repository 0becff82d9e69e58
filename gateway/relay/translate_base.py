"""What both translation directions share (see gateway/relay/translate.py for the whole API).

Owns: `TranslationError`, the stop-reason tables, token usage read from and written in either
format (`TokenUsage`, `openai_usage`, `anthropic_usage`, `openai_usage_dict`,
`anthropic_usage_dict`), ids (`message_id`, `new_id`), SSE framing (`anthropic_event`,
`anthropic_error_event`, `openai_data`, `STREAM_ERROR`), the local `estimate_input_tokens`, and
small helpers that read loosely typed JSON without raising.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import orjson


class TranslationError(ValueError):
    """A request that cannot be expressed in the other format. The route answers 400
    (`invalid_request_error`) with `message`; `field` names the offending part (a JSON path such
    as `messages[2].content[0].source`), or is None."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# A failure reported inside an upstream stream, in our words (never the upstream's).
STREAM_ERROR = "The upstream reported an error in the middle of the stream."

# OpenAI finish_reason -> Anthropic stop_reason. Anything else (None, unknown) -> end_turn.
# content_filter -> refusal: Anthropic's own stop reason for a response the model declined.
STOP_REASONS = {
    "stop": "end_turn",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "function_call": "tool_use",
    "content_filter": "refusal",
}

# Anthropic stop_reason -> OpenAI finish_reason. Anything else (None, unknown) -> stop.
FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "pause_turn": "stop",
}


def finish_reason(stop_reason: Any) -> str:
    """OpenAI finish_reason for an Anthropic stop_reason."""
    return FINISH_REASONS.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def stop_reason(finish_reason: Any, has_tool_calls: bool) -> str:
    """Anthropic stop_reason for an OpenAI finish. Upstreams that say `stop` (or nothing) after
    emitting tool calls still mean "run the tools": that is `tool_use`."""
    reason = STOP_REASONS.get(finish_reason, "end_turn") if isinstance(finish_reason, str) else "end_turn"
    if has_tool_calls and reason == "end_turn":
        return "tool_use"
    return reason


def matched_stop(choice: dict) -> str | None:
    """The stop sequence that ended an OpenAI choice, where the upstream says so: vLLM's
    `stop_reason` and SGLang's `matched_stop` carry the matched string (an int there is a token
    id, not a sequence). OpenAI itself never says."""
    for key in ("stop_reason", "matched_stop"):
        value = choice.get(key)
        if isinstance(value, str) and value:
            return value
    return None


@dataclass(slots=True)
class TokenUsage:
    """Token counts in Anthropic's terms: `input_tokens` excludes the cached part, so the whole
    prompt is `prompt_tokens` = input + cache read + cache creation."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(usage: Any) -> TokenUsage | None:
    """An OpenAI `usage` object, or None when there is none. `prompt_tokens` includes cached
    tokens (`prompt_tokens_details.cached_tokens`; DeepSeek: `prompt_cache_hit_tokens`), which
    are split off into `cache_read_tokens`."""
    if not isinstance(usage, dict):
        return None
    prompt = as_int(usage.get("prompt_tokens"))
    details = usage.get("prompt_tokens_details")
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = cached or as_int(usage.get("prompt_cache_hit_tokens"))
    cached = min(cached, prompt)
    return TokenUsage(prompt - cached, as_int(usage.get("completion_tokens")), cached, 0)


def anthropic_usage(usage: Any) -> TokenUsage | None:
    """An Anthropic `usage` object (a Message's, or a stream's message_start/message_delta), or None."""
    if not isinstance(usage, dict):
        return None
    return TokenUsage(
        as_int(usage.get("input_tokens")),
        as_int(usage.get("output_tokens")),
        as_int(usage.get("cache_read_input_tokens")),
        as_int(usage.get("cache_creation_input_tokens")),
    )


def anthropic_event(type_: str, data: dict) -> bytes:
    return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_error_event(message: str, type_: str = "api_error") -> bytes:
    """The Anthropic SSE `error` event that ends a stream that broke off after the commit point."""
    return anthropic_event("error", {"type": "error", "error": {"type": type_, "message": message}})


def openai_data(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def dumps(value: Any) -> str:
    """JSON text for tool arguments; never raises (a value orjson cannot encode becomes {})."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return "{}"


def loads_object(text: Any) -> dict:
    """Tool arguments (a JSON string) as an object. Empty -> {}; anything that is not a JSON
    object -> {"_raw": text}, so the tool sees what the model wrote and can report it."""
    if isinstance(text, dict):
        return text
    if not isinstance(text, str) or not text.strip():
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"_raw": text}
    return value if isinstance(value, dict) else {"_raw": text}


def text_of(content: Any, sep: str = "\n\n") -> str:
    """The text of a string or a list of content blocks/parts (`text` fields of text blocks);
    everything else in the list is ignored."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return sep.join([b["text"] for b in content if _is_text(b)])


def _is_text(block: Any) -> bool:
    return (
        isinstance(block, dict)
        and block.get("type") == "text"
        and isinstance(block.get("text"), str)
        and block["text"] != ""
    )


def message_id(value: Any) -> str:
    """An OpenAI id as an Anthropic message id: `msg_` prefixed; a fresh one when there is none."""
    if not isinstance(value, str) or not value:
        return new_id("msg_")
    return value if value.startswith("msg_") else "msg_" + value


def anthropic_usage_dict(usage: TokenUsage | None) -> dict:
    """Anthropic `usage` for an answer; cache reads only when there are any."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    out = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        out["cache_read_input_tokens"] = usage.cache_read_tokens
    return out


def openai_usage_dict(usage: TokenUsage | None) -> dict:
    """OpenAI `usage`: prompt_tokens counts the cached and cache-written tokens too."""
    usage = usage or TokenUsage()
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return out


# One image costs Anthropic about (width * height) / 750 tokens, at most ~1,600 after its resizing.
IMAGE_TOKENS = 1600
PER_MESSAGE_TOKENS = 4


def _chars(text: Any) -> int:
    # UTF-8 bytes: ASCII counts 1 per char (~4 chars a token), CJK 3 (closer to its ~1 token a char).
    if not isinstance(text, str):
        return 0
    return len(text) if text.isascii() else len(text.encode(errors="replace"))


def _block_chars(block: Any) -> tuple[int, int]:
    """(characters, images) in one content block, recursing into tool results."""
    if isinstance(block, str):
        return _chars(block), 0
    if not isinstance(block, dict):
        return 0, 0
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return _chars(block["text"]), 0
    if kind in ("image", "document"):
        return 0, 1
    if kind == "tool_use":
        return _chars(block.get("name")) + len(dumps(block.get("input"))), 0
    if kind == "tool_result":
        content = block.get("content")
        if not isinstance(content, list):
            return _block_chars(content)
        chars = images = 0
        for inner in content:
            c, i = _block_chars(inner)
            chars, images = chars + c, images + i
        return chars, images
    return 0, 0  # thinking from earlier turns is not counted as input by Anthropic either


def estimate_input_tokens(body: dict) -> int:
    """A local estimate of an Anthropic request's input tokens, for `count_tokens` when no
    `anthropic` key can answer: UTF-8 bytes / 4 over the system prompt, message text, tool
    calls and results and the tools' JSON, plus IMAGE_TOKENS per image or document and
    PER_MESSAGE_TOKENS per message. An estimate, not the model's tokenizer: expect ±25 %."""
    chars = images = 0
    system = body.get("system")
    for block in system if isinstance(system, list) else [system]:
        c, i = _block_chars(block)
        chars, images = chars + c, images + i
    messages = body.get("messages")
    messages = messages if isinstance(messages, list) else []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else [content]:
            c, i = _block_chars(block)
            chars, images = chars + c, images + i
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        chars += len(dumps(tools))
    return max(1, (chars + 3) // 4 + images * IMAGE_TOKENS + PER_MESSAGE_TOKENS * len(messages))
