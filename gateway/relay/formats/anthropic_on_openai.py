"""Anthropic clients on `openai` keys (`Mode.ANTHROPIC_ON_OPENAI`): `/v1/messages` translated to
`/chat/completions` and back.

Owns the direction's row (`plan`, `adapter`, `answer`), `translate_request` (the request body) and
`translate_answer` (a non-streamed answer); streams are anthropic_on_openai_stream.py. The
mapping decisions are listed in gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.relay.call import Call
from gateway.relay.formats import Mode, anthropic_on_openai_stream
from gateway.relay.formats.shared import (
    Plan,
    TranslationError,
    dumps,
    json_object,
    loads_object,
    matched_stop,
    message_id,
    new_id,
    openai_choice,
    openai_tool_calls,
    stop_reason,
    text_of,
    translated,
)
from gateway.relay.formats.usage import Usage, anthropic_usage_dict, openai_usage
from gateway.relay.keyindex import PoolKey

SEP = "\n\n"  # between text blocks that become one OpenAI string
IMAGE_IN_TOOL_RESULT = "[image: attached in the next user message]"
DOCUMENT_IN_TOOL_RESULT = "[document: attached in the next user message]"


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    body = translated(call, model, translate_request)
    return Plan(Mode.ANTHROPIC_ON_OPENAI, key.urls["/chat/completions"], key.head[call.stream], body)


def adapter(route: Plan, call: Call) -> anthropic_on_openai_stream.Adapter:
    return anthropic_on_openai_stream.Adapter(model=call.model)


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as an Anthropic Message, and its usage. ValueError when it is not a JSON object."""
    obj = json_object(raw)
    return orjson.dumps(translate_answer(obj, model=call.model)), openai_usage(obj.get("usage"))


def translate_request(body: dict) -> dict:
    """An Anthropic Messages request as an OpenAI chat/completions request. Only fields OpenAI
    understands are written; everything else (metadata, thinking, cache_control, top_k, …) is
    left behind. Large values (text, schemas) are shared with `body`, not copied."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise TranslationError("messages: must be a list", "messages")
    out: dict[str, Any] = {}
    if "model" in body:
        out["model"] = body["model"]
    chat: list[dict] = []
    system = text_of(body.get("system"), SEP)
    if system:
        chat.append({"role": "system", "content": system})
    for i, message in enumerate(messages):
        _message(chat, message, f"messages[{i}]")
    out["messages"] = chat

    if isinstance(body.get("max_tokens"), int):
        out["max_tokens"] = body["max_tokens"]
    stops = body.get("stop_sequences")
    if isinstance(stops, list) and stops:
        out["stop"] = stops
    for name in ("temperature", "top_p"):
        if isinstance(body.get(name), int | float) and not isinstance(body.get(name), bool):
            out[name] = body[name]
    _tools(out, body)
    if body.get("stream") is True:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _tools(out: dict, body: dict) -> None:
    tools = body.get("tools")
    functions = []
    for tool in tools if isinstance(tools, list) else ():
        # Server tools (web_search_…, bash_…, text_editor_…) carry a versioned `type` and no
        # schema: only Anthropic can run them, so they are left out.
        if not isinstance(tool, dict) or not tool.get("name") or tool.get("type") not in (None, "custom"):
            continue
        function: dict[str, Any] = {"name": tool["name"]}
        if tool.get("description"):
            function["description"] = tool["description"]
        schema = tool.get("input_schema")
        function["parameters"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
        functions.append({"type": "function", "function": function})
    if not functions:
        return  # OpenAI refuses `tools: []` and a tool_choice without tools
    out["tools"] = functions
    choice = body.get("tool_choice")
    if not isinstance(choice, dict):
        return
    kind = choice.get("type")
    if kind == "auto":
        out["tool_choice"] = "auto"
    elif kind == "any":
        out["tool_choice"] = "required"
    elif kind == "none":
        out["tool_choice"] = "none"
    elif kind == "tool":
        name = choice.get("name")
        if not any(f["function"]["name"] == name for f in functions):
            raise TranslationError(
                f"tool_choice: tool {name!r} is not among the tools this model can call", "tool_choice"
            )
        out["tool_choice"] = {"type": "function", "function": {"name": name}}
    if choice.get("disable_parallel_tool_use") is True and kind != "none":
        out["parallel_tool_calls"] = False


def _image_url(block: dict, where: str) -> dict:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if kind == "url" and isinstance(source.get("url"), str):
        return {"type": "image_url", "image_url": {"url": source["url"]}}
    raise TranslationError(f"{where}.source: image source {kind!r} cannot be sent to this model", f"{where}.source")


def _document(block: dict, where: str) -> dict:
    source = block.get("source")
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "text" and isinstance(source.get("data"), str):
        return {"type": "text", "text": source["data"]}
    if kind == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "application/pdf"
        name = block.get("title") if isinstance(block.get("title"), str) else "document.pdf"
        return {"type": "file", "file": {"filename": name, "file_data": f"data:{media};base64,{source['data']}"}}
    raise TranslationError(f"{where}.source: document source {kind!r} cannot be sent to this model", f"{where}.source")


def _user_parts(parts: list, content: list, where: str) -> None:
    """Text, image and document blocks as OpenAI content parts (appended to `parts`)."""
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text":
            if isinstance(block.get("text"), str) and block["text"]:
                parts.append({"type": "text", "text": block["text"]})
        elif kind == "image":
            parts.append(_image_url(block, f"{where}[{j}]"))
        elif kind == "document":
            parts.append(_document(block, f"{where}[{j}]"))
        # tool_result is handled by the caller; thinking and unknown types are dropped


def _user_content(parts: list) -> str | list | None:
    if not parts:
        return None
    if all(p["type"] == "text" for p in parts):  # plain strings suit every OpenAI-compatible upstream
        return parts[0]["text"] if len(parts) == 1 else SEP.join(p["text"] for p in parts)
    return parts


def _message(chat: list, message: Any, where: str) -> None:
    if not isinstance(message, dict):
        raise TranslationError(f"{where}: must be an object", where)
    role, content = message.get("role"), message.get("content")
    if role == "system":
        text = text_of(content, SEP)
        if text:
            chat.append({"role": "system", "content": text})
    elif role == "assistant":
        _assistant(chat, content)
    elif role == "user":
        _user(chat, content, f"{where}.content")
    else:
        raise TranslationError(f"{where}.role: must be 'user' or 'assistant'", f"{where}.role")


def _assistant(chat: list, content: Any) -> None:
    if isinstance(content, str):
        if content:
            chat.append({"role": "assistant", "content": content})
        return
    texts, calls = [], []
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str) and block["text"]:
            texts.append(block["text"])
        elif kind == "tool_use":
            call_id = block.get("id") if isinstance(block.get("id"), str) else new_id("call_")
            arguments = dumps(block["input"]) if "input" in block and block["input"] is not None else "{}"
            calls.append(
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": block.get("name") or "", "arguments": arguments},
                }
            )
        # thinking, redacted_thinking, server tool blocks and unknown types are dropped
    if not texts and not calls:
        return
    out: dict[str, Any] = {"role": "assistant", "content": SEP.join(texts) if texts else None}
    if calls:
        out["tool_calls"] = calls
    chat.append(out)


def _user(chat: list, content: Any, where: str) -> None:
    if isinstance(content, str):
        if content:
            chat.append({"role": "user", "content": content})
        return
    if not isinstance(content, list):
        return
    parts: list[dict] = []
    carried: list[dict] = []  # images from tool results, shown to the model in the user message
    for j, block in enumerate(content):
        if isinstance(block, dict) and block.get("type") == "tool_result":
            # Tool messages go first, straight after the assistant's tool_calls.
            chat.append(_tool_message(block, carried, f"{where}[{j}]"))
    _user_parts(parts, content, where)
    merged = _user_content(carried + parts)
    if merged is not None:
        chat.append({"role": "user", "content": merged})


def _tool_message(block: dict, carried: list, where: str) -> dict:
    content = block.get("content")
    if isinstance(content, list):
        texts = []
        for k, inner in enumerate(content):
            if not isinstance(inner, dict):
                continue
            kind = inner.get("type")
            if kind == "text" and isinstance(inner.get("text"), str):
                texts.append(inner["text"])
            elif kind == "image":
                carried.append(_image_url(inner, f"{where}.content[{k}]"))
                texts.append(IMAGE_IN_TOOL_RESULT)
            elif kind == "document":
                part = _document(inner, f"{where}.content[{k}]")
                if part["type"] == "text":
                    texts.append(part["text"])
                else:
                    carried.append(part)
                    texts.append(DOCUMENT_IN_TOOL_RESULT)
        content = SEP.join(t for t in texts if t)
    elif not isinstance(content, str):
        content = ""
    tool_id = block.get("tool_use_id")
    return {"role": "tool", "tool_call_id": tool_id if isinstance(tool_id, str) else "", "content": content}


def translate_answer(body: dict, *, model: str | None = None) -> dict:
    """An OpenAI chat completion as an Anthropic Message (`model`: used when the answer has none)."""
    choice, message, text = openai_choice(body)
    content: list[dict] = []
    if text:
        content.append({"type": "text", "text": text})
    elif isinstance(message.get("refusal"), str) and message["refusal"]:
        content.append({"type": "text", "text": message["refusal"]})
    for call, function in openai_tool_calls(message):
        call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else new_id("toolu_")
        content.append(
            {
                "type": "tool_use",
                "id": call_id,
                "name": function.get("name") or "",
                "input": loads_object(function.get("arguments")),
            }
        )
    has_tools = any(b["type"] == "tool_use" for b in content)
    reason = stop_reason(choice.get("finish_reason"), has_tools)
    sequence = matched_stop(choice) if choice.get("finish_reason") == "stop" and not has_tools else None
    if sequence is not None:
        reason = "stop_sequence"
    elif reason == "end_turn" and isinstance(message.get("refusal"), str) and message["refusal"] and not text:
        reason = "refusal"
    return {
        "id": message_id(body.get("id")),
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or model or "",
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": anthropic_usage_dict(openai_usage(body.get("usage"))),
    }
