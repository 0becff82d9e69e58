"""Server-sent events from upstreams, read with as little parsing as possible.

The proxy forwards whole events as they arrive. It parses JSON only where it must: the event
that carries `usage` (found by a byte search first), and the first event of a stream, to tell
content from an error before the commit point.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

EVENT_END = re.compile(rb"\r?\n\r?\n")


@dataclass(slots=True)
class Usage:
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class Scanner:
    """Feed raw chunks, get back complete events (each with its terminating blank line)."""

    __slots__ = ("_tail",)

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        data = self._tail + chunk if self._tail else chunk
        events = []
        start = 0
        for m in EVENT_END.finditer(data):
            events.append(data[start : m.end()])
            start = m.end()
        self._tail = data[start:]
        return events

    @property
    def pending(self) -> bytes:
        return self._tail


def data_of(event: bytes) -> bytes | None:
    """The `data:` payload of an event (multi-line data joined), or None if it has none."""
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)


def parse(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return None


def is_error(payload: bytes) -> bool:
    if b'"error"' not in payload:
        return False
    obj = parse(payload)
    return isinstance(obj, dict) and obj.get("error") is not None and "choices" not in obj


def usage_of(obj: Any) -> Usage | None:
    """Usage from a chat/completions chunk or body, or from a Responses API object/event."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if u is None and isinstance(obj.get("response"), dict):  # Responses API: response.completed
        u = obj["response"].get("usage")
    if not isinstance(u, dict):
        return None
    prompt = u.get("prompt_tokens", u.get("input_tokens"))
    completion = u.get("completion_tokens", u.get("output_tokens"))
    return Usage(prompt if isinstance(prompt, int) else None, completion if isinstance(completion, int) else None)


def usage_only_chunk(obj: Any) -> bool:
    """The extra chunk `stream_options.include_usage` adds: usage and no choices."""
    return isinstance(obj, dict) and obj.get("usage") is not None and obj.get("choices") == []


def error_event(message: str, code: str = "upstream_error") -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
