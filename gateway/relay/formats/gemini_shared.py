"""What the Gemini directions share: the pieces of a Gemini answer (`gemini_candidate`,
`gemini_function_call`), its finishReason for an OpenAI finish (`gemini_finish_reason`) and
Google's error object (`gemini_error`). The rest is gateway/relay/formats/shared.py.
"""

from __future__ import annotations

from typing import Any

from gateway.relay.formats.shared import loads_object

# OpenAI finish_reason -> Gemini finishReason. None -> STOP; anything else -> OTHER. Gemini says
# STOP after function calls too.
GEMINI_FINISH_REASONS = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
    "function_call": "STOP",
}


def gemini_finish_reason(finish_reason: Any) -> str:
    """Gemini finishReason for an OpenAI finish_reason."""
    return "STOP" if finish_reason is None else GEMINI_FINISH_REASONS.get(finish_reason, "OTHER")


def gemini_function_call(name: Any, arguments: Any) -> dict:
    """A Gemini functionCall part for an OpenAI tool call (arguments: JSON text, see `loads_object`)."""
    return {"functionCall": {"name": name if isinstance(name, str) else "", "args": loads_object(arguments)}}


def gemini_candidate(parts: list, reason: str | None = None) -> dict:
    """A Gemini response's one candidate; no parts is one empty text part, as Google sends it."""
    out: dict[str, Any] = {"content": {"role": "model", "parts": parts or [{"text": ""}]}}
    if reason is not None:
        out["finishReason"] = reason
    out["index"] = 0
    return out


def gemini_error(message: str, code: int = 500, status: str = "INTERNAL") -> dict:
    """Google's error object, for a stream that broke off after the commit point."""
    return {"error": {"code": code, "message": message, "status": status}}
