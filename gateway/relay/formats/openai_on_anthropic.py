"""OpenAI clients on `anthropic` keys (`Mode.OPENAI_ON_ANTHROPIC`): `/v1/chat/completions`
translated to `/messages` and back.

Owns the direction's row (`plan`, `adapter`, `answer`), `translate_request` (the request body) and
`translate_answer` (a non-streamed answer); streams are openai_on_anthropic_stream.py. The
mapping decisions are listed in gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.relay.call import Call
from gateway.relay.formats import Mode, anthropic, openai_on_anthropic_stream
from gateway.relay.formats.shared import (
    Plan,
    TranslationError,
    dumps,
    finish_reason,
    json_object,
    loads_object,
    new_id,
    text_of,
    translated,
)
from gateway.relay.formats.usage import Usage, anthropic_usage, openai_usage_dict
from gateway.relay.keyindex import PoolKey

DEFAULT_MAX_TOKENS = 4096  # Anthropic requires max_tokens; OpenAI clients often send none
SEP = "\n\n"  # between system messages joined into Anthropic's one `system`


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
    text = "".join(texts)
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    finish = finish_reason(body.get("stop_reason"))
    return {
        "id": body.get("id") or new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or model or "",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": openai_usage_dict(anthropic_usage(body.get("usage"))),
    }
