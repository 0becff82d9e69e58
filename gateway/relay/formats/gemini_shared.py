"""What the Gemini directions share: the pieces of a Gemini answer (`gemini_candidate`,
`gemini_function_call`), finish reasons both ways (`gemini_finish`, `openai_finish`), Google's
error object (`gemini_error`) and how a Gemini client gets its stream (`Framing`: SSE, or one
JSON array). The rest is gateway/relay/formats/shared.py.
"""

from __future__ import annotations

from typing import Any

import orjson

from gateway.relay.formats.shared import loads_object

# OpenAI finish_reason -> Gemini finishReason. None -> STOP; anything else -> OTHER. Gemini says
# STOP after function calls too.
TO_GEMINI = {
    "stop": "STOP",
    "length": "MAX_TOKENS",
    "content_filter": "SAFETY",
    "tool_calls": "STOP",
    "function_call": "STOP",
}


def gemini_finish(finish_reason: Any) -> str:
    """Gemini finishReason for an OpenAI finish_reason."""
    return "STOP" if finish_reason is None else TO_GEMINI.get(finish_reason, "OTHER")


# Gemini finishReason -> OpenAI finish_reason. Anything else (OTHER, LANGUAGE,
# MALFORMED_FUNCTION_CALL, unknown, none) -> stop.
FROM_GEMINI = {
    "MAX_TOKENS": "length",
    "SAFETY": "content_filter",
    "RECITATION": "content_filter",
    "BLOCKLIST": "content_filter",
    "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter",
    "IMAGE_SAFETY": "content_filter",
}


def openai_finish(reason: Any, has_tool_calls: bool) -> str:
    """OpenAI finish_reason for a Gemini finishReason: Gemini says STOP after function calls too,
    which for an OpenAI client is `tool_calls`."""
    finish = FROM_GEMINI.get(reason, "stop") if isinstance(reason, str) else "stop"
    return "tool_calls" if has_tool_calls and finish == "stop" else finish


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


SSE_END = b"\r\n\r\n"  # Google ends each event so
ARRAY_SEP = b",\r\n"  # and separates the array's elements so


class Framing:
    """How a Gemini client gets its stream: SSE events (`?alt=sse`), or the elements of one JSON
    array, opened with the first and closed exactly once (after an error too)."""

    def __init__(self, *, sse: bool) -> None:
        self.sse = sse
        self.content_type = "text/event-stream" if sse else "application/json"
        self._opened = self.ended = False

    def chunk(self, data: bytes) -> bytes:
        """One GenerateContentResponse (its JSON text) as the client gets it."""
        if self.ended:
            return b""
        if self.sse:
            return b"data: " + data + SSE_END
        if not self._opened:
            self._opened = True
            return b"[" + data
        return ARRAY_SEP + data

    def close(self) -> bytes:
        if self.sse or self.ended:
            return b""
        self.ended = True
        return b"]" if self._opened else b"[]"

    def error(self, message: str) -> bytes:
        """Google's error object as the stream's last event or element (the array closed after it)."""
        return self.chunk(orjson.dumps(gemini_error(message))) + self.close()
