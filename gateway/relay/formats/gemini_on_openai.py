"""Gemini clients on `openai` keys (`Mode.GEMINI_ON_OPENAI`): `:generateContent` and
`:streamGenerateContent` translated to `/chat/completions` and back.

Owns the direction's row (`plan`, `adapter`, `answer`), `translate_request` (the request body) and
`translate_answer` (a non-streamed answer); streams are gemini_on_openai_stream.py. The mapping
decisions are listed in gateway/relay/formats/__init__.py. Google accepts every request field in
camelCase and in snake_case (`systemInstruction`, `system_instruction`); so does `field`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

from gateway.relay.call import Call
from gateway.relay.formats import Mode, gemini_on_openai_stream
from gateway.relay.formats.gemini_shared import gemini_candidate, gemini_finish, gemini_function_call
from gateway.relay.formats.shared import (
    Plan,
    TranslationError,
    dumps,
    json_object,
    new_id,
    openai_choice,
    openai_tool_calls,
    translated,
)
from gateway.relay.formats.usage import Usage, gemini_usage_dict, openai_usage
from gateway.relay.keyindex import PoolKey

SEP = "\n\n"  # between a user turn's (or the system instruction's) text parts, as one OpenAI string
ROLES = {"user": "user", "function": "user", "model": "assistant"}  # `function`: the old name of a result turn
CHOICES = {"AUTO": "auto", "VALIDATED": "auto", "ANY": "required", "NONE": "none"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".heic", ".heif")
# Where a JSON schema holds schemas: one, a list of them, or a map of names to them.
SUBSCHEMAS = ("items", "additionalProperties", "not", "anyOf", "oneOf", "allOf", "prefixItems")
SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    # A Gemini body names neither its model nor whether it streams (its URL does): both are added.
    body = translated(call, model, _streamed if call.stream else translate_request)
    return Plan(Mode.GEMINI_ON_OPENAI, key.urls["/chat/completions"], key.head[call.stream], body)


def _streamed(body: dict) -> dict:
    return translate_request(body, stream=True)


def adapter(route: Plan, call: Call) -> gemini_on_openai_stream.Adapter:
    return gemini_on_openai_stream.Adapter(model=call.model, sse=call.gemini_sse)


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as a Gemini GenerateContentResponse, and its usage. ValueError when it is not a
    JSON object."""
    obj = json_object(raw)
    return orjson.dumps(translate_answer(obj, model=call.model)), openai_usage(obj.get("usage"))


@functools.cache
def _snake(name: str) -> str:
    return re.sub(r"[A-Z]", lambda m: "_" + m.group().lower(), name)


def field(obj: dict, name: str) -> Any:
    """A Gemini request field by its camelCase `name`, or by its snake_case spelling."""
    value = obj.get(name)
    return obj.get(_snake(name)) if value is None else value


def _object(obj: dict, name: str, where: str) -> dict:
    """An optional object field: {} when absent, TranslationError when it is not an object."""
    value = field(obj, name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TranslationError(f"{where}: must be an object", where)
    return value


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def translate_request(body: dict, *, stream: bool = False) -> dict:
    """A Gemini GenerateContentRequest as an OpenAI chat/completions request, without `model`
    (Gemini names it in the URL; the caller adds it). Only fields OpenAI understands are
    written: safetySettings, cachedContent, labels, topK, thinkingConfig, … are left behind.
    Large values (text, base64 data, schemas) are shared with `body`, not copied."""
    contents = body.get("contents")
    if not isinstance(contents, list):
        raise TranslationError("contents: must be a list", "contents")
    chat: list[dict] = []
    system = _object(body, "systemInstruction", "systemInstruction")
    text = SEP.join(_texts(system.get("parts")))
    if text:
        chat.append({"role": "system", "content": text})
    calls = _Calls()
    for i, content in enumerate(contents):
        _content(chat, content, calls, f"contents[{i}]")
    out: dict[str, Any] = {"messages": chat}
    _generation(out, _object(body, "generationConfig", "generationConfig"))
    _tools(out, body)
    if stream:
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _texts(parts: Any) -> list[str]:
    """The texts of text parts, thoughts left out."""
    if not isinstance(parts, list):
        return []
    return [
        p["text"]
        for p in parts
        if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"] and not p.get("thought")
    ]


class _Calls:
    """The function calls of the model turns so far, for the responses that answer them."""

    def __init__(self) -> None:
        self.count = 0
        self.pending: dict[str, list[str]] = {}  # function name -> ids of its calls not answered yet

    def add(self, name: str, given: Any) -> str:
        """The call's id: its own, else call_<n> (its place in the request: the same every time)."""
        self.count += 1
        call_id = given if isinstance(given, str) and given else f"call_{self.count}"
        self.pending.setdefault(name, []).append(call_id)
        return call_id

    def answer(self, name: str, given: Any) -> str | None:
        """The id of the call a response answers: by its id when it has one, else the first call
        of that name not answered yet; None when there is none."""
        if isinstance(given, str) and given:
            for ids in self.pending.values():
                if given in ids:
                    ids.remove(given)
                    return given
        ids = self.pending.get(name)
        return ids.pop(0) if ids else None


def _content(chat: list, content: Any, calls: _Calls, where: str) -> None:
    if not isinstance(content, dict):
        raise TranslationError(f"{where}: must be an object", where)
    role = ROLES.get(content.get("role") or "user")
    if role is None:
        raise TranslationError(f"{where}.role: must be 'user' or 'model'", f"{where}.role")
    parts = content.get("parts")
    if parts is None:
        return
    if not isinstance(parts, list):
        raise TranslationError(f"{where}.parts: must be a list", f"{where}.parts")
    for j, part in enumerate(parts):
        if not isinstance(part, dict):
            raise TranslationError(f"{where}.parts[{j}]: must be an object", f"{where}.parts[{j}]")
    if role == "assistant":
        _model(chat, parts, calls)
    else:
        _user(chat, parts, calls, f"{where}.parts")


def _model(chat: list, parts: list, calls: _Calls) -> None:
    """A model turn as an assistant message. Consecutive model turns are one message: the SDKs'
    chat history keeps a streamed answer as one turn per chunk, its text in pieces."""
    texts = _texts(parts)
    tool_calls = []
    for part in parts:
        call = field(part, "functionCall")
        if not isinstance(call, dict):
            continue  # text is taken above; thoughts, images and unknown kinds are dropped
        name = call.get("name") if isinstance(call.get("name"), str) else ""
        call_id = calls.add(name, call.get("id"))
        arguments = dumps(call["args"]) if call.get("args") is not None else "{}"
        tool_calls.append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
    if not texts and not tool_calls:
        return
    text = "".join(texts)
    if chat and chat[-1]["role"] == "assistant":
        previous = chat[-1]
        previous["content"] = (previous["content"] or "") + text or None
        if tool_calls:
            previous.setdefault("tool_calls", []).extend(tool_calls)
        return
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    chat.append(message)


def _user(chat: list, parts: list, calls: _Calls, where: str) -> None:
    """A user turn: its function responses as `tool` messages first (straight after the
    assistant's tool_calls), then one user message with the rest."""
    items: list[dict] = []
    for j, part in enumerate(parts):
        if isinstance(part.get("text"), str):
            if part["text"] and not part.get("thought"):
                items.append({"type": "text", "text": part["text"]})
        elif field(part, "inlineData") is not None:
            items.append(_inline(field(part, "inlineData"), f"{where}[{j}].inlineData"))
        elif field(part, "fileData") is not None:
            items.append(_file_uri(field(part, "fileData"), f"{where}[{j}].fileData"))
        elif field(part, "functionResponse") is not None:
            chat.append(_tool_message(field(part, "functionResponse"), calls, f"{where}[{j}].functionResponse"))
        # functionCall (a model's part), executableCode and unknown kinds are dropped
    if not items:
        return
    if all(p["type"] == "text" for p in items):  # plain strings suit every OpenAI-compatible upstream
        chat.append({"role": "user", "content": SEP.join(p["text"] for p in items)})
    else:
        chat.append({"role": "user", "content": items})


def _inline(blob: Any, where: str) -> dict:
    if not isinstance(blob, dict) or not isinstance(blob.get("data"), str):
        raise TranslationError(f"{where}.data: must be base64 text", f"{where}.data")
    mime = field(blob, "mimeType")
    if not isinstance(mime, str) or "/" not in mime:
        raise TranslationError(f"{where}.mimeType: a media type is required", f"{where}.mimeType")
    url = f"data:{mime};base64,{blob['data']}"
    if mime.startswith("image/"):
        return {"type": "image_url", "image_url": {"url": url}}
    if mime.startswith(("audio/", "video/")):
        raise TranslationError(f"{where}: {mime} cannot be sent to this model", where)
    name = field(blob, "displayName")
    name = name if isinstance(name, str) and name else "document.pdf" if mime == "application/pdf" else "file"
    return {"type": "file", "file": {"filename": name, "file_data": url}}


def _file_uri(data: Any, where: str) -> dict:
    uri = field(data, "fileUri") if isinstance(data, dict) else None
    mime = field(data, "mimeType") if isinstance(data, dict) else None
    is_image = (
        mime.startswith("image/")
        if isinstance(mime, str)
        else isinstance(uri, str) and uri.lower().endswith(IMAGE_SUFFIXES)
    )
    if isinstance(uri, str) and uri.startswith(("https://", "http://")) and is_image:
        return {"type": "image_url", "image_url": {"url": uri}}
    raise TranslationError(f"{where}: only http(s) image URLs can be sent to this model", where)


def _tool_message(response: Any, calls: _Calls, where: str) -> dict:
    if not isinstance(response, dict):
        raise TranslationError(f"{where}: must be an object", where)
    name = response.get("name") if isinstance(response.get("name"), str) else ""
    call_id = calls.answer(name, response.get("id"))
    if call_id is None:  # OpenAI has no tool message without the call it answers
        raise TranslationError(f"{where}: no earlier functionCall of {name!r} to answer", where)
    result = response.get("response")
    return {"role": "tool", "tool_call_id": call_id, "content": dumps(result if result is not None else {})}


def _generation(out: dict, config: dict) -> None:
    count = field(config, "candidateCount")
    if count is not None and count != 1:
        raise TranslationError(
            "generationConfig.candidateCount: only one candidate can be served by this model",
            "generationConfig.candidateCount",
        )
    limit = field(config, "maxOutputTokens")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        out["max_tokens"] = limit
    for name, openai in (
        ("temperature", "temperature"),
        ("topP", "top_p"),
        ("presencePenalty", "presence_penalty"),
        ("frequencyPenalty", "frequency_penalty"),
    ):
        if _number(field(config, name)):
            out[openai] = field(config, name)
    seed = field(config, "seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        out["seed"] = seed
    stops = field(config, "stopSequences")
    if isinstance(stops, list) and stops:
        out["stop"] = stops
    if field(config, "responseMimeType") == "application/json":
        schema = field(config, "responseJsonSchema")
        schema = schema if isinstance(schema, dict) else lower_types(field(config, "responseSchema"))
        if isinstance(schema, dict):
            out["response_format"] = {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}
        else:
            out["response_format"] = {"type": "json_object"}


def _tools(out: dict, body: dict) -> None:
    tools = field(body, "tools")
    if tools is not None and not isinstance(tools, list):
        raise TranslationError("tools: must be a list", "tools")
    functions = []
    for i, tool in enumerate(tools or ()):
        declarations = field(tool, "functionDeclarations") if isinstance(tool, dict) else None
        # googleSearch, codeExecution, urlContext, …: only Google runs them, so they are left out.
        for j, declaration in enumerate(declarations if isinstance(declarations, list) else ()):
            if not isinstance(declaration, dict) or not isinstance(declaration.get("name"), str):
                raise TranslationError(
                    f"tools[{i}].functionDeclarations[{j}]: a name is required", f"tools[{i}].functionDeclarations[{j}]"
                )
            function: dict[str, Any] = {"name": declaration["name"]}
            if isinstance(declaration.get("description"), str) and declaration["description"]:
                function["description"] = declaration["description"]
            schema = field(declaration, "parametersJsonSchema")
            schema = schema if isinstance(schema, dict) else lower_types(declaration.get("parameters"))
            function["parameters"] = schema if isinstance(schema, dict) else {"type": "object", "properties": {}}
            functions.append({"type": "function", "function": function})
    if not functions:
        return  # OpenAI refuses `tools: []` and a tool_choice without tools
    out["tools"] = functions
    config = field(_object(body, "toolConfig", "toolConfig"), "functionCallingConfig")
    if not isinstance(config, dict):
        return
    mode = config.get("mode")
    choice = CHOICES.get(mode.upper()) if isinstance(mode, str) else None
    names = field(config, "allowedFunctionNames")
    if choice == "required" and isinstance(names, list) and names:
        # Only these may be called: the others are not offered at all.
        known = {f["function"]["name"] for f in functions}
        for name in names:
            if name not in known:
                where = "toolConfig.functionCallingConfig.allowedFunctionNames"
                raise TranslationError(f"{where}: {name!r} is not among the declared functions", where)
        out["tools"] = [f for f in functions if f["function"]["name"] in names]
        if len(out["tools"]) == 1:
            out["tool_choice"] = {"type": "function", "function": {"name": out["tools"][0]["function"]["name"]}}
            return
    if choice is not None:
        out["tool_choice"] = choice


def lower_types(schema: Any) -> Any:
    """A Gemini (OpenAPI) schema with its `type`s in JSON Schema's lower case ("OBJECT" ->
    "object"), through every nested schema. What needs no change is shared, not copied."""
    if isinstance(schema, list):
        items = [lower_types(s) for s in schema]
        return schema if all(a is b for a, b in zip(items, schema, strict=True)) else items
    if not isinstance(schema, dict):
        return schema
    changed: dict[str, Any] = {}
    kind = schema.get("type")
    if isinstance(kind, str) and kind != kind.lower():
        changed["type"] = kind.lower()
    elif isinstance(kind, list) and any(isinstance(k, str) and k != k.lower() for k in kind):
        changed["type"] = [k.lower() if isinstance(k, str) else k for k in kind]
    for key in SUBSCHEMAS:
        if key in schema and (inner := lower_types(schema[key])) is not schema[key]:
            changed[key] = inner
    for key in SCHEMA_MAPS:
        named = schema.get(key)
        if isinstance(named, dict):
            lowered = {name: lower_types(s) for name, s in named.items()}
            if any(lowered[name] is not s for name, s in named.items()):
                changed[key] = lowered
    return {**schema, **changed} if changed else schema


def translate_answer(body: dict, *, model: str | None = None) -> dict:
    """An OpenAI chat completion as a Gemini GenerateContentResponse (`model`: used when the answer
    names none)."""
    choice, message, text = openai_choice(body)
    parts: list[dict] = []
    if not text and isinstance(message.get("refusal"), str):
        text = message["refusal"]
    if text:
        parts.append({"text": text})
    for _, function in openai_tool_calls(message):
        parts.append(gemini_function_call(function.get("name"), function.get("arguments")))
    response_id = body.get("id")
    return {
        "candidates": [gemini_candidate(parts, gemini_finish(choice.get("finish_reason")))],
        "usageMetadata": gemini_usage_dict(openai_usage(body.get("usage"))),
        "modelVersion": body.get("model") or model or "",
        "responseId": response_id if isinstance(response_id, str) and response_id else new_id(""),
    }
