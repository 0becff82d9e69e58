"""OpenAI clients on `gemini` keys (`Mode.OPENAI_ON_GEMINI`): `/v1/chat/completions` translated to
`/models/{model}:generateContent` (`:streamGenerateContent?alt=sse` for a stream) and back.

Owns the direction's row (`plan`, `adapter`, `answer`), the upstream URL (`url`: Gemini names the
model in the path, never in the body), `translate_request` (the request body) and
`translate_answer` (a non-streamed answer); streams are openai_on_gemini_stream.py. The mapping
decisions are listed in gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.relay.call import Call
from gateway.relay.formats import Mode, openai, openai_on_gemini_stream, openai_request
from gateway.relay.formats.openai_on_gemini_stream import finish, parts, tool_call
from gateway.relay.formats.shared import (
    Plan,
    TranslationError,
    json_object,
    new_id,
    text_of,
    translated,
)
from gateway.relay.formats.usage import Usage, gemini_usage
from gateway.relay.keyindex import PoolKey

# reasoning_effort -> thinkingBudget: the budgets Google's own OpenAI compatibility layer uses.
THINKING_BUDGETS = {"none": 0, "minimal": 1024, "low": 1024, "medium": 8192, "high": 24576}
IMAGE_TYPES = {
    "png": "image/png",
    "jpg": "image/jpeg",
    "jpeg": "image/jpeg",
    "gif": "image/gif",
    "webp": "image/webp",
    "heic": "image/heic",
    "heif": "image/heif",
}
AUDIO_TYPES = {"wav": "audio/wav", "mp3": "audio/mp3"}
# Gemini 3 refuses a replayed functionCall without the thoughtSignature it came with, which an
# OpenAI client never keeps; this is the value Google documents for calls from another source.
SKIP_SIGNATURE = "skip_thought_signature_validator"
TOOL_CHOICES = {"auto": "AUTO", "required": "ANY", "none": "NONE"}


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    body = translated(call, model, translate_request, named=False)
    url = key.model_url(model, "streamGenerateContent" if call.stream else "generateContent")
    return Plan(Mode.OPENAI_ON_GEMINI, url, key.head[call.stream], body)


def adapter(route: Plan, call: Call) -> openai_on_gemini_stream.Adapter:
    return openai_on_gemini_stream.Adapter(model=call.model, include_usage=call.client_wants_usage)


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as a chat completion, and its usage. ValueError when it is not a JSON object."""
    obj = json_object(raw)
    return orjson.dumps(translate_answer(obj, model=call.model)), gemini_usage(obj.get("usageMetadata"))


def translate_request(body: dict) -> dict:
    """An OpenAI chat/completions request as a Gemini `GenerateContentRequest`, without the model
    (it goes in the URL). OpenAI-only fields (stream_options, logprobs, user, parallel_tool_calls,
    …) are left behind."""
    system, messages = openai_request.messages(body)
    contents: list[dict] = []
    names: dict[str, str] = {}  # tool call id -> its function's name, for the tool messages after it
    for where, role, message in messages:
        if role == "user":
            _add(contents, "user", _user_parts(message.get("content"), f"{where}.content"))
        elif role == "assistant":
            _add(contents, "model", _model_parts(message, names))
        else:  # tool
            _add(contents, "user", [_function_response(message, names, where)])
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": [{"text": system}]}
    _tools(out, body)
    config = _generation_config(body)
    if config:
        out["generationConfig"] = config
    return out


def _add(contents: list, role: str, new: list) -> None:
    """Append a turn, merged into the previous one of the same role: Gemini wants user and model
    turns to alternate (tool results and the user text after them are one user turn)."""
    if not new:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(new)
    else:
        contents.append({"role": role, "parts": new})


def _user_parts(content: Any, where: str) -> list:
    out: list[dict] = []
    for kind, value, at in openai_request.user_parts(content, where):
        if kind == "text":
            out.append({"text": value})
        elif kind in ("image_data", "file"):
            out.append({"inlineData": {"mimeType": value[0], "data": value[1]}})
        elif kind == "image_url":
            out.append({"fileData": {"mimeType": _image_type(value), "fileUri": value}})
        else:  # audio
            out.append(_audio(value, at))
    return out


def _image_type(url: str) -> str:
    """The image's media type by its file name's extension; image/jpeg when it says nothing."""
    name = url.split("?", 1)[0].split("#", 1)[0].rsplit("/", 1)[-1]
    return IMAGE_TYPES.get(name.rpartition(".")[2].lower(), "image/jpeg") if "." in name else "image/jpeg"


def _audio(audio: Any, where: str) -> dict:
    audio = audio if isinstance(audio, dict) else {}
    data, audio_format = audio.get("data"), audio.get("format")
    media = AUDIO_TYPES.get(audio_format) if isinstance(audio_format, str) else None
    if not isinstance(data, str) or not data or media is None:
        raise TranslationError(f"{where}: only base64 wav or mp3 audio can be sent to this model", where)
    return {"inlineData": {"mimeType": media, "data": data}}


def _model_parts(message: dict, names: dict[str, str]) -> list:
    out: list[dict] = [{"text": text} for text in openai_request.assistant_texts(message)]
    for call_id, name, arguments in openai_request.tool_calls(message):
        if call_id is not None:
            names[call_id] = name
        out.append({"functionCall": {"name": name, "args": arguments}, "thoughtSignature": SKIP_SIGNATURE})
    return out


def _function_response(message: dict, names: dict[str, str], where: str) -> dict:
    """A tool message as a functionResponse: Gemini matches a result to its call by the function's
    name, which the OpenAI message names only through the call's id."""
    call_id = message.get("tool_call_id")
    name = names.get(call_id) if isinstance(call_id, str) else None
    name = name or message.get("name")
    if not isinstance(name, str) or not name:
        field = f"{where}.tool_call_id"
        raise TranslationError(f"{field}: answers no tool call of an earlier assistant message", field)
    text = text_of(message.get("content"), "")
    try:
        parsed = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        parsed = None
    response = parsed if isinstance(parsed, dict) else {"content": text}
    return {"functionResponse": {"name": name, "response": response}}


def _tools(out: dict, body: dict) -> None:
    declarations = []
    for function in openai_request.functions(body):
        item: dict[str, Any] = {"name": function["name"]}
        if function.get("description"):
            item["description"] = function["description"]
        if isinstance(function.get("parameters"), dict):
            # Full JSON Schema: `parameters` is an OpenAPI subset that refuses $schema,
            # additionalProperties and the like, which OpenAI clients send.
            item["parametersJsonSchema"] = function["parameters"]
        declarations.append(item)
    if not declarations:
        return  # a tool_choice without tools says nothing
    out["tools"] = [{"functionDeclarations": declarations}]
    choice = body.get("tool_choice")
    config: dict[str, Any] | None = None
    if isinstance(choice, str) and choice in TOOL_CHOICES:
        config = {"mode": TOOL_CHOICES[choice]}
    elif isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        if not isinstance(name, str) or name not in {d["name"] for d in declarations}:
            raise TranslationError("tool_choice: names a function that is not in tools", "tool_choice")
        config = {"mode": "ANY", "allowedFunctionNames": [name]}
    if config is not None:
        out["toolConfig"] = {"functionCallingConfig": config}


# OpenAI sampling fields -> generationConfig, as they are.
SAMPLING = (
    ("temperature", "temperature"),
    ("top_p", "topP"),
    ("presence_penalty", "presencePenalty"),
    ("frequency_penalty", "frequencyPenalty"),
)


def _generation_config(body: dict) -> dict:
    config: dict[str, Any] = {}
    limit = openai_request.max_tokens(body)
    if limit is not None:
        config["maxOutputTokens"] = limit
    for name, gemini_name in SAMPLING:
        if openai_request.is_number(body.get(name)):
            config[gemini_name] = body[name]
    if isinstance(body.get("seed"), int) and not isinstance(body["seed"], bool):
        config["seed"] = body["seed"]
    stops = openai_request.stops(body)
    if stops:
        config["stopSequences"] = stops
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind in ("json_object", "json_schema"):
        config["responseMimeType"] = "application/json"
        schema = response_format.get("json_schema") if isinstance(response_format, dict) else None
        if kind == "json_schema" and isinstance(schema, dict) and isinstance(schema.get("schema"), dict):
            config["responseJsonSchema"] = schema["schema"]
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort in THINKING_BUDGETS:
        config["thinkingConfig"] = {"thinkingBudget": THINKING_BUDGETS[effort]}
    return config


def translate_answer(body: dict, *, model: str | None = None) -> dict:
    """A Gemini GenerateContentResponse as an OpenAI chat completion (`model`: used when the answer
    has no modelVersion). Only the first candidate is read: the request asked for one."""
    texts: list[str] = []
    calls: list[dict] = []
    for part in parts(body):
        if isinstance(part.get("functionCall"), dict):
            calls.append(tool_call(part))
        else:
            texts.append(part["text"])
    reason = finish(body, bool(calls)) or ("tool_calls" if calls else "stop")
    answer_id = body.get("responseId") or new_id("chatcmpl-")
    model = body.get("modelVersion") or model or ""
    return openai.completion(answer_id, model, "".join(texts), calls, reason, gemini_usage(body.get("usageMetadata")))
