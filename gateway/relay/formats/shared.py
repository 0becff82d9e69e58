"""What every direction shares: the pieces of translation, and the shapes the relay sees.

Owns: `TranslationError`; the stop-reason tables (Gemini's: gemini_shared.py); ids (`message_id`,
`new_id`); SSE framing (`anthropic_event`, `anthropic_error_event`, `openai_data`,
`STREAM_ERROR`); small helpers that read loosely typed JSON without raising; the local
`estimate_input_tokens`; and the two shapes a direction hands the relay: `Plan` (what to send one
key) and `Adapter` (how its stream comes back), with `EventAdapter`, the base of every adapter
that looks at each event, and `OpenAIChunks` over it for those that read an `openai` key's chunks.
Token usage is gateway/relay/formats/usage.py.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from yarl import URL

from gateway.relay import sse
from gateway.relay.call import Call
from gateway.relay.formats import Mode
from gateway.relay.formats.usage import Usage


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


def anthropic_event(type_: str, data: dict) -> bytes:
    return b"event: " + type_.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def anthropic_error_event(message: str, type_: str = "api_error") -> bytes:
    """The Anthropic SSE `error` event that ends a stream that broke off after the commit point."""
    return anthropic_event("error", {"type": "error", "error": {"type": type_, "message": message}})


def openai_data(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


def data_url(url: str, where: str) -> tuple[str, str]:
    """(media type, base64 data) of a `data:` URL; only base64 ones can be carried."""
    header, _, data = url[5:].partition(",")
    if not header.endswith(";base64") or not data:
        raise TranslationError(f"{where}: only base64 data URLs can be sent to this model", where)
    return header[: -len(";base64")], data


def file_data(file: Any, where: str) -> tuple[str, str]:
    """(media type, base64 data) of an OpenAI `file` part's inline `file_data`; a file id cannot
    be carried to another format."""
    url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(url, str) or not url.startswith("data:"):
        raise TranslationError(f"{where}: only inline file_data can be sent to this model", where)
    return data_url(url, f"{where}.file_data")


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


def openai_choice(body: dict) -> tuple[dict, dict, str]:
    """A chat completion's first choice, its message and the message's text ({} and "" for what
    is missing), read without raising."""
    choices = body.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    text = message.get("content")
    return choice, message, text if isinstance(text, str) else text_of(text, "")


def openai_tool_calls(message: dict) -> list[tuple[dict, dict]]:
    """(call, its function) for each tool call of a chat completion message, a legacy
    `function_call` last; calls without a function object are left out."""
    calls = message.get("tool_calls")
    calls = list(calls) if isinstance(calls, list) else []
    if isinstance(message.get("function_call"), dict):
        calls.append({"function": message["function_call"]})
    return [(c, c["function"]) for c in calls if isinstance(c, dict) and isinstance(c.get("function"), dict)]


def message_id(value: Any) -> str:
    """An OpenAI id as an Anthropic message id: `msg_` prefixed; a fresh one when there is none."""
    if not isinstance(value, str) or not value:
        return new_id("msg_")
    return value if value.startswith("msg_") else "msg_" + value


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


# --- what a direction hands the relay


@dataclass(slots=True)
class Plan:
    """One attempt's request to one key: where, the header lines, the body."""

    mode: Mode
    url: URL
    head: bytes
    body: bytes
    strip_usage: bool = False  # OPENAI: we asked for include_usage and drop that chunk again


def translated(call: Call, model: str, translate: Callable[[dict], dict], *, named: bool = True) -> bytes:
    """The call's body in the key's format under the key's name for the model: translated once
    per call and kept for every key of that format it is tried on (a call that moves on to a key
    of a third format is translated again; `translate` is a module's function, the same every
    time). A body that comes without a model (Gemini's names it in its URL) gets the call's.
    `named=False`: the body carries no model (Gemini's is in the URL), so one body serves every
    name."""
    if call.translated_obj is None or call.translated_by is not translate:
        obj = translate(call.body)
        call.translated_obj = {"model": call.model, **obj} if named and "model" not in obj else obj
        call.translated = orjson.dumps(call.translated_obj)
        call.translated_by = translate
    if (not named or model == call.model) and call.translated is not None:
        return call.translated
    return orjson.dumps({**call.translated_obj, "model": model})


def json_object(raw: bytes) -> dict[str, Any]:
    """A non-streamed answer as the object it must be; ValueError (the attempt fails) if not."""
    obj = orjson.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    return obj


STREAM_ONLY_ERROR = "stream carried only an error"
ENDED_EARLY = "stream ended before any content"
BROKE = "The upstream stream broke off (the upstream reported an error)."


class Adapter(Protocol):
    """A stream as the relay sees it (`stream.relay`): each run of whole SSE events of the
    upstream in, what the client gets for it out (possibly nothing yet); and what the relay
    decides on: whether a content event has been seen (`committed`, the commit point), whether
    the upstream said it failed (`failed` before the commit point, `broken` after it), how many
    events it relayed, and the usage reported."""

    committed: bool
    failed: str | None
    broken: bool
    chunks: int  # content events relayed (the usage estimate when the upstream reports none)
    content_type: str  # what the client gets: text/event-stream, but for Gemini's JSON array

    def take(self, complete: bytes) -> bytes: ...
    def close(self, pending: bytes) -> bytes: ...
    def error(self, message: str) -> bytes: ...
    def recorded_usage(self) -> Usage | None: ...


class EventAdapter:
    """Adapters that look at every event: `event()` for each, until one fails or breaks."""

    content_type = "text/event-stream"

    def __init__(self) -> None:
        self.committed = False
        self.failed: str | None = None
        self.broken = False
        self.chunks = 0
        self.usage: Usage | None = None

    def take(self, complete: bytes) -> bytes:
        out = []
        for event in sse.events(complete):
            self.chunks += 1
            converted = self.event(event)
            if converted:
                out.append(converted)
            if self.failed or self.broken:
                break
        return b"".join(out)

    def event(self, event: bytes) -> bytes:
        raise NotImplementedError

    def close(self, pending: bytes) -> bytes:
        return b""  # an unterminated last event is not an event

    def error(self, message: str) -> bytes:
        raise NotImplementedError

    def recorded_usage(self) -> Usage | None:
        return self.usage

    def upstream_error(self) -> bytes:
        if not self.committed:
            self.failed = STREAM_ONLY_ERROR
            return b""
        self.broken = True
        return self.error(BROKE)


class OpenAIChunks(EventAdapter):
    """Adapters that read an `openai` key's stream of chat.completion.chunk objects: `[DONE]`
    ends it (`finish`), an error object without choices is the upstream's failure, and the first
    text or tool call is the commit point; every chunk goes to `chunk`."""

    def event(self, event: bytes) -> bytes:
        data = sse.data_of(event)
        if data is None:
            return b""
        if data == b"[DONE]":
            return self.finish()
        chunk = sse.parse(data)
        if not isinstance(chunk, dict):
            return b""
        if chunk.get("error") is not None and not chunk.get("choices"):
            return self.upstream_error()
        if not self.committed:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
                    self.committed = True
        return self.chunk(chunk)

    def close(self, pending: bytes) -> bytes:
        return self.finish()

    def chunk(self, chunk: dict) -> bytes:
        raise NotImplementedError

    def finish(self) -> bytes:
        """The end of the stream, at `[DONE]` or when the upstream stops (called at most twice)."""
        raise NotImplementedError
