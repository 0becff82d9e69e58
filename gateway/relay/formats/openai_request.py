"""An OpenAI chat/completions request read the way every translation of it into another format
reads it (openai_on_anthropic.py, openai_on_gemini.py): the checked messages with the system text
apart, the pieces of a user message, an assistant's texts and tool calls, the function tools and
the sampling fields. Each direction writes its own format from these; none of them raises for odd
but valid input, and what cannot be carried anywhere raises `TranslationError` here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from gateway.relay.formats.shared import TranslationError, data_url, file_data, loads_object, text_of

SEP = "\n\n"  # between system messages joined into the other format's one system text
ROLES = ("user", "assistant", "tool")  # a tuple: a role may be any JSON value, unhashable too


def messages(body: dict) -> tuple[str, list[tuple[str, str, dict]]]:
    """(the system text, the other messages as (where, role, message)). System and developer
    messages, wherever they are, are joined with a blank line. Raises for messages that are not a
    list, a message that is not an object, an unknown role, and `n` other than 1 (one choice is
    all the other formats' answers are read for)."""
    found = body.get("messages")
    if not isinstance(found, list):
        raise TranslationError("messages: must be a list", "messages")
    n = body.get("n")
    if n is not None and n != 1:
        raise TranslationError("n: only one choice (n = 1) can be served by this model", "n")
    system: list[str] = []
    rest: list[tuple[str, str, dict]] = []
    for i, message in enumerate(found):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise TranslationError(f"{where}: must be an object", where)
        role = message.get("role")
        if role in ("system", "developer"):
            text = text_of(message.get("content"), SEP)
            if text:
                system.append(text)
        elif role in ROLES:
            rest.append((where, role, message))
        else:
            raise TranslationError(f"{where}.role: {role!r} cannot be sent to this model", f"{where}.role")
    return SEP.join(system), rest


def user_parts(content: Any, where: str) -> Iterator[tuple[str, Any, str]]:
    """(kind, value, where) for each part of a user message's content, a string being one text:
    ("text", text), ("image_data", (media type, base64)), ("image_url", an http(s) URL), ("file",
    (media type, base64): inline file_data) and ("audio", the input_audio object, unchecked).
    Empty texts and unknown part types are left out; other image URLs and file ids raise."""
    if isinstance(content, str):
        if content:
            yield "text", content, where
        return
    for j, part in enumerate(content if isinstance(content, list) else ()):
        if not isinstance(part, dict):
            continue
        kind, at = part.get("type"), f"{where}[{j}]"
        if kind == "text":
            if isinstance(part.get("text"), str) and part["text"]:
                yield "text", part["text"], at
        elif kind == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            at = f"{at}.image_url.url"
            if isinstance(url, str) and url.startswith("data:"):
                yield "image_data", data_url(url, at), at
            elif isinstance(url, str) and url.startswith(("https://", "http://")):
                yield "image_url", url, at
            else:
                raise TranslationError(f"{at}: must be an http(s) or base64 data URL", at)
        elif kind == "file":
            yield "file", file_data(part.get("file"), f"{at}.file"), f"{at}.file"
        elif kind == "input_audio":
            yield "audio", part.get("input_audio"), at


def assistant_texts(message: dict) -> list[str]:
    """An assistant message's non-empty texts: its content string, or its text and refusal parts."""
    content = message.get("content")
    if isinstance(content, str):
        return [content] if content else []
    texts = []
    for part in content if isinstance(content, list) else ():
        if isinstance(part, dict) and part.get("type") in ("text", "refusal"):
            text = part.get("text") if part["type"] == "text" else part.get("refusal")
            if isinstance(text, str) and text:
                texts.append(text)
    return texts


def tool_calls(message: dict) -> Iterator[tuple[str | None, str, dict]]:
    """(id or None, function name, arguments as an object: `loads_object`) for each function call
    of an assistant message."""
    calls = message.get("tool_calls")
    for call in calls if isinstance(calls, list) else ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict):
            continue
        call_id = call["id"] if isinstance(call.get("id"), str) and call["id"] else None
        name = function["name"] if isinstance(function.get("name"), str) else ""
        yield call_id, name, loads_object(function.get("arguments"))


def functions(body: dict) -> list[dict]:
    """The `function` objects of the request's function tools that have a name; OpenAI's custom
    (free-form) tools have no counterpart elsewhere and are left out."""
    tools = body.get("tools")
    found = []
    for tool in tools if isinstance(tools, list) else ():
        function = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if isinstance(function, dict) and isinstance(function.get("name"), str) and function["name"]:
            found.append(function)
    return found


def is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def max_tokens(body: dict) -> int | None:
    """`max_completion_tokens`, else `max_tokens`, when it is a positive integer."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def stops(body: dict) -> list[str]:
    """`stop` (a string or a list) as a list of its non-empty strings."""
    stop = body.get("stop")
    found = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    return [s for s in found if isinstance(s, str) and s]
