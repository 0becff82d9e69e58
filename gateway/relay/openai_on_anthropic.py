"""OpenAI chat/completions clients served by `anthropic`-format keys (`POST /v1/chat/completions`).

Owns: `openai_request_to_anthropic` (request body), `anthropic_response_to_openai` (a
non-streamed answer), `AnthropicToOpenAIStream` (a streamed answer, event by event) and
`wants_usage` (did the client ask for the usage chunk). The mapping decisions are listed in
gateway/relay/translate.py.
"""

from __future__ import annotations

import time
from typing import Any

from gateway.relay.translate_base import (
    FINISH_REASONS,
    TokenUsage,
    TranslationError,
    anthropic_usage,
    dumps,
    loads_object,
    new_id,
    openai_data,
    text_of,
)

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often send none
SEP = "\n\n"  # between system messages joined into Anthropic's one `system`
DONE = b"data: [DONE]\n\n"
STREAM_ERROR = "The upstream reported an error in the middle of the stream."


def wants_usage(body: dict) -> bool:
    """Whether an OpenAI streaming request asked for the final usage chunk."""
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def openai_request_to_anthropic(body: dict) -> dict:
    """An OpenAI chat/completions request as an Anthropic Messages request. Only fields
    Anthropic understands are written; OpenAI-only ones (stream_options, response_format,
    logprobs, penalties, seed, user, prompt_cache_key, …) are left behind."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("messages: must be a list", "messages")
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("n: only one choice (n = 1) can be served by this model", "n")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    system: list[str] = []
    converted: list[dict] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where}: must be an object", where)
        role, content = message.get("role"), message.get("content")
        if role in ("system", "developer"):
            text = text_of(content, SEP)
            if text:
                system.append(text)
        elif role == "user":
            _add(converted, "user", _user_blocks(content, f"{where}.content"))
        elif role == "assistant":
            _add(converted, "assistant", _assistant_blocks(message))
        elif role == "tool":
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id") or ""}
            text = text_of(content, "")
            if text:
                block["content"] = text
            _add(converted, "user", [block])
        else:
            raise TranslationError(f"{where}.role: {role!r} cannot be sent to this model", f"{where}.role")
    if converted and converted[-1]["role"] == "assistant":
        # A prefill: Anthropic refuses a final assistant text that ends in whitespace.
        last = converted[-1]["content"][-1]
        if last["type"] == "text":
            last["text"] = last["text"].rstrip()
            if not last["text"]:
                converted[-1]["content"].pop()
                if not converted[-1]["content"]:
                    converted.pop()
    if system:
        out["system"] = SEP.join(system)
    out["messages"] = converted

    limit = body.get("max_completion_tokens")
    limit = limit if isinstance(limit, int) and limit > 0 else body.get("max_tokens")
    out["max_tokens"] = limit if isinstance(limit, int) and limit > 0 else DEFAULT_MAX_TOKENS
    stop = body.get("stop")
    stops = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    stops = [s for s in stops if isinstance(s, str) and s]
    if stops:
        out["stop_sequences"] = stops
    temperature = body.get("temperature")
    if isinstance(temperature, int | float) and not isinstance(temperature, bool):
        out["temperature"] = min(max(temperature, 0), 1)  # OpenAI allows 0..2, Anthropic 0..1
    top_p = body.get("top_p")
    if isinstance(top_p, int | float) and not isinstance(top_p, bool):
        out["top_p"] = top_p
    _tools(out, body)
    if body.get("stream") is True:
        out["stream"] = True
    return out


def _add(messages: list, role: str, blocks: list | str) -> None:
    """Append a message, merging it into the previous one of the same role (tool results and
    the user text after them become one user turn, as Anthropic wants)."""
    if not blocks:
        return
    if messages and messages[-1]["role"] == role:
        previous = messages[-1]
        if isinstance(previous["content"], str):
            previous["content"] = [{"type": "text", "text": previous["content"]}]
        previous["content"].extend([{"type": "text", "text": blocks}] if isinstance(blocks, str) else blocks)
    else:
        messages.append({"role": role, "content": blocks})


def _user_blocks(content: Any, where: str) -> list | str:
    if isinstance(content, str):
        return content
    blocks: list[dict] = []
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(part, dict):
            continue
        kind = part.get("type")
        if kind == "text":
            if isinstance(part.get("text"), str) and part["text"]:
                blocks.append({"type": "text", "text": part["text"]})
        elif kind == "image_url":
            blocks.append(_image(part.get("image_url"), f"{where}[{j}].image_url"))
        elif kind == "file":
            blocks.append(_file(part.get("file"), f"{where}[{j}].file"))
        elif kind == "input_audio":
            raise TranslationError(f"{where}[{j}]: audio input cannot be sent to this model", f"{where}[{j}]")
        # unknown part types are dropped
    return blocks


def _data_url(url: str, where: str) -> tuple[str, str]:
    header, _, data = url[5:].partition(",")
    if not header.endswith(";base64") or not data:
        raise TranslationError(f"{where}: only base64 data URLs can be sent to this model", where)
    return header[: -len(";base64")], data


def _image(image: Any, where: str) -> dict:
    url = image.get("url") if isinstance(image, dict) else image
    if isinstance(url, str) and url.startswith("data:"):
        media, data = _data_url(url, f"{where}.url")
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    if isinstance(url, str) and url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise TranslationError(f"{where}.url: must be an http(s) or base64 data URL", f"{where}.url")


def _file(file: Any, where: str) -> dict:
    data_url = file.get("file_data") if isinstance(file, dict) else None
    if not isinstance(data_url, str) or not data_url.startswith("data:"):
        raise TranslationError(f"{where}: only inline file_data can be sent to this model", where)
    media, data = _data_url(data_url, f"{where}.file_data")
    return {"type": "document", "source": {"type": "base64", "media_type": media, "data": data}}


def _assistant_blocks(message: dict) -> list:
    blocks: list[dict] = []
    content = message.get("content")
    if isinstance(content, str):
        if content:
            blocks.append({"type": "text", "text": content})
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
                text = part.get("text") if part["type"] == "text" else part.get("refusal")
                if isinstance(text, str) and text:
                    blocks.append({"type": "text", "text": text})
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else new_id("toolu_")
        name = function.get("name") or ""
        blocks.append(
            {"type": "tool_use", "id": call_id, "name": name, "input": loads_object(function.get("arguments"))}
        )
    return blocks


def _tools(out: dict, body: dict) -> None:
    tools = body.get("tools")
    converted = []
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(function, dict) or not function.get("name"):
            continue  # OpenAI's custom (free-form) tools have no Anthropic counterpart: left out
        item: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            item["description"] = function["description"]
        schema = function.get("parameters")
        item["input_schema"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        converted.append(item)
    if not converted:
        return
    out["tools"] = converted
    choice = body.get("tool_choice")
    result: dict[str, Any] | None = None
    if choice == "auto":
        result = {"type": "auto"}
    elif choice == "required":
        result = {"type": "any"}
    elif choice == "none":
        result = {"type": "none"}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        result = {"type": "tool", "name": choice["function"].get("name")}
    if body.get("parallel_tool_calls") is False and (result is None or result["type"] != "none"):
        result = result or {"type": "auto"}
        result["disable_parallel_tool_use"] = True
    if result is not None:
        out["tool_choice"] = result


def _openai_usage(usage: TokenUsage | None) -> dict:
    usage = usage or TokenUsage()
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return out


def anthropic_response_to_openai(body: dict, *, model: str | None = None) -> dict:
    """An Anthropic Message as an OpenAI chat completion (`model`: used when the answer has none)."""
    texts: list[str] = []
    calls: list[dict] = []
    content = body.get("content")
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text" and isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif block.get("type") == "tool_use":
            function = {"name": block.get("name") or "", "arguments": dumps(block.get("input") or {})}
            calls.append({"id": block.get("id") or new_id("call_"), "type": "function", "function": function})
        # thinking, server tool blocks and unknown types are dropped
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = FINISH_REASONS.get(body.get("stop_reason"), "stop")
    return {
        "id": body.get("id") or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model or "",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": _openai_usage(anthropic_usage(body.get("usage"))),
    }


class AnthropicToOpenAIStream:
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
        self.include_usage = include_usage
        self.id = new_id("chatcmpl-")
        self.model = model or ""
        self.created = int(time.time())
        self.usage = TokenUsage()
        self.stop_reason: str | None = None
        self.done = False
        self._role_sent = False
        self._finish_sent = False
        self._tool_count = 0
        self._blocks: dict[int, int] = {}  # Anthropic index of a tool_use block -> OpenAI tool index

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }
        return openai_data(chunk)

    def _role(self) -> bytes:
        if self._role_sent:
            return b""
        self._role_sent = True
        return self._chunk({"role": "assistant", "content": ""})

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
            tool = self._blocks.get(event.get("index"))  # type: ignore[arg-type]
            if tool is not None:
                return self._chunk({"tool_calls": [{"index": tool, "function": {"arguments": delta["partial_json"]}}]})
        return b""  # thinking_delta, signature_delta, citations_delta, …

    def _finish(self) -> bytes:
        if self._finish_sent:
            return b""
        self._finish_sent = True
        return self._chunk({}, FINISH_REASONS.get(self.stop_reason, "stop"))  # type: ignore[arg-type]

    def close(self) -> bytes:
        if self.done:
            return b""
        self.done = True
        out = self._role() + self._finish()
        if self.include_usage:
            chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": _openai_usage(self.usage),
            }
            out += openai_data(chunk)
        return out + DONE


__all__ = ["AnthropicToOpenAIStream", "anthropic_response_to_openai", "openai_request_to_anthropic", "wants_usage"]
