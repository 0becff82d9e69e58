"""OpenAI clients on `anthropic` keys (`Mode.OPENAI_ON_ANTHROPIC`): `/v1/chat/completions`
translated to `/messages` and back.

Owns the direction's row (`plan`, `adapter`, `answer`), `translate_request` (the request body) and
`translate_answer` (a non-streamed answer); streams are openai_on_anthropic_stream.py. The
mapping decisions are listed in gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.relay.call import Call
from gateway.relay.formats import Mode, anthropic, openai, openai_on_anthropic_stream, openai_request
from gateway.relay.formats.shared import (
    Plan,
    TranslationError,
    dumps,
    finish_reason,
    json_object,
    new_id,
    text_of,
    translated,
)
from gateway.relay.formats.usage import Usage, anthropic_usage
from gateway.relay.keyindex import PoolKey

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often send none


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    body = translated(call, model, translate_request)
    head = key.head[call.stream] + anthropic.DEFAULT_VERSION_LINE
    return Plan(Mode.OPENAI_ON_ANTHROPIC, key.urls["/messages"], head, body)


def adapter(route: Plan, call: Call) -> openai_on_anthropic_stream.Adapter:
    return openai_on_anthropic_stream.Adapter(model=call.model, include_usage=call.client_wants_usage)


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as a chat completion, and its usage. ValueError when it is not a JSON object."""
    obj = json_object(raw)
    return orjson.dumps(translate_answer(obj, model=call.model)), anthropic.usage_of(obj)


def translate_request(body: dict) -> dict:
    """An OpenAI chat/completions request as an Anthropic Messages request. Only fields
    Anthropic understands are written; OpenAI-only ones (stream_options, response_format,
    logprobs, penalties, seed, user, prompt_cache_key, …) are left behind."""
    system, messages = openai_request.messages(body)
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    converted: list[dict] = []
    for where, role, message in messages:
        if role == "user":
            _add(converted, "user", _user_blocks(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            _add(converted, "assistant", _assistant_blocks(message))
        else:  # tool
            block: dict[str, Any] = {"type": "tool_result", "tool_use_id": message.get("tool_call_id") or ""}
            text = text_of(message.get("content"), "")
            if text:
                block["content"] = text
            _add(converted, "user", [block])
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
        out["system"] = system
    out["messages"] = converted

    out["max_tokens"] = openai_request.max_tokens(body) or DEFAULT_MAX_TOKENS
    stops = openai_request.stops(body)
    if stops:
        out["stop_sequences"] = stops
    if openai_request.is_number(body.get("temperature")):
        out["temperature"] = min(max(body["temperature"], 0), 1)  # OpenAI allows 0..2, Anthropic 0..1
    if openai_request.is_number(body.get("top_p")):
        out["top_p"] = body["top_p"]
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
    for kind, value, at in openai_request.user_parts(content, where):
        if kind == "text":
            blocks.append({"type": "text", "text": value})
        elif kind == "image_data":
            blocks.append({"type": "image", "source": {"type": "base64", "media_type": value[0], "data": value[1]}})
        elif kind == "image_url":
            blocks.append({"type": "image", "source": {"type": "url", "url": value}})
        elif kind == "file":
            blocks.append({"type": "document", "source": {"type": "base64", "media_type": value[0], "data": value[1]}})
        else:  # audio
            raise TranslationError(f"{at}: audio input cannot be sent to this model", at)
    return blocks


def _assistant_blocks(message: dict) -> list:
    blocks: list[dict] = [{"type": "text", "text": text} for text in openai_request.assistant_texts(message)]
    for call_id, name, arguments in openai_request.tool_calls(message):
        blocks.append({"type": "tool_use", "id": call_id or new_id("toolu_"), "name": name, "input": arguments})
    return blocks


def _tools(out: dict, body: dict) -> None:
    converted = []
    for function in openai_request.functions(body):
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


def translate_answer(body: dict, *, model: str | None = None) -> dict:
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
    answer_id = body.get("id") or new_id("chatcmpl-")
    model = body.get("model") or model or ""
    usage = anthropic_usage(body.get("usage"))
    return openai.completion(answer_id, model, "".join(texts), calls, finish_reason(body.get("stop_reason")), usage)
