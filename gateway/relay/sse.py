"""Server-sent events from upstreams, read with as little parsing as possible.

The proxy forwards whole events as they arrive. It parses JSON only where it must: the event
that carries `usage` (found by a byte search first), and the first event of a stream, to tell
content from an error before the commit point.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import orjson

EVENT_END = re.compile(rb"\r?\n\r?\n")


class Scanner:
    """Feed raw chunks, get back whole events (a chunk's complete part, as one bytes object).

    Only the boundary of the last complete event is searched for; a chunk is split into single
    events only by `events()`, which the proxy calls just for chunks that mention usage. An
    event that arrives in many chunks is collected in a list, not re-joined at every chunk, and
    `size` says how large the unfinished event has grown (the proxy caps it).
    """

    __slots__ = ("_parts", "size")

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.size = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._parts:
            # A boundary may straddle the last part and this chunk: look at both sides of the seam.
            seam = self._parts[-1][-3:] + chunk
            if not end_of_events(seam, len(seam)):
                self._parts.append(chunk)
                self.size += len(chunk)
                return b""
            data = b"".join(self._parts) + chunk
            self._parts = []
        else:
            data = chunk
        end = end_of_events(data, len(data))
        if end == len(data):
            self.size = 0
            return data
        tail = data[end:]
        self._parts = [tail]
        self.size = len(tail)
        return data[:end]

    @property
    def pending(self) -> bytes:
        return b"".join(self._parts)


def events(complete: bytes) -> Iterator[bytes]:
    """Split whole events apart, each keeping its terminating blank line; lazily, so a caller
    that stops at the first event it wants does not split the rest."""
    if b"\r" not in complete:  # the common case: plain \n\n boundaries, no regex needed
        start = 0
        while (end := complete.find(b"\n\n", start)) >= 0:
            yield complete[start : end + 2]
            start = end + 2
        return
    if complete.count(b"\n") == complete.count(b"\r\n"):
        # Every line ends in CRLF, as Google's streams do: every boundary is \r\n\r\n.
        start = 0
        while (end := complete.find(b"\r\n\r\n", start)) >= 0:
            yield complete[start : end + 4]
            start = end + 4
        return
    start = 0
    for m in EVENT_END.finditer(complete):
        yield complete[start : m.end()]
        start = m.end()


def split_at(complete: bytes, needle: bytes) -> tuple[bytes, bytes]:
    """(the whole events before the first one that contains `needle`, that event and the rest);
    (complete, b"") when none does. Lets the proxy look at one event instead of every one."""
    i = complete.find(needle)
    if i < 0:
        return complete, b""
    start = end_of_events(complete, i)
    return complete[:start], complete[start:]


def end_of_events(data: bytes, stop: int) -> int:
    """Where the last whole event that ends before `stop` ends; 0 when none does."""
    lf, crlf = data.rfind(b"\n\n", 0, stop), data.rfind(b"\r\n\r\n", 0, stop)
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def data_of(event: bytes) -> bytes | None:
    """The `data:` payload of an event (multi-line data joined), or None if it has none."""
    if event.startswith(b"data:"):  # the common case: one data line and the blank line after it
        end = event.find(b"\n")
        if end < 0 or not event[end:].strip():
            payload = event[5 : end if end >= 0 else None].lstrip(b" ")
            return payload[:-1] if payload.endswith(b"\r") else payload
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    if not lines:
        return None
    return b"\n".join(line[5:].lstrip(b" ") for line in lines)


def parse(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except ValueError:
        return None


def is_error(payload: bytes) -> bool:
    if b'"error"' not in payload:
        return False
    obj = parse(payload)
    return isinstance(obj, dict) and obj.get("error") is not None and "choices" not in obj


def response_id(obj: Any) -> str | None:
    """The id of a Responses API object, or of the response a stream event (response.created …) carries."""
    if isinstance(obj, dict) and isinstance(obj.get("response"), dict):
        obj = obj["response"]
    value = obj.get("id") if isinstance(obj, dict) else None
    return value if isinstance(value, str) and value else None


def usage_only_chunk(obj: Any) -> bool:
    """The extra chunk `stream_options.include_usage` adds: usage and no choices."""
    return isinstance(obj, dict) and obj.get("usage") is not None and obj.get("choices") == []


def error_event(message: str, code: str = "upstream_error") -> bytes:
    body = {"error": {"message": message, "type": "upstream_error", "code": code}}
    return b"data: " + json.dumps(body).encode() + b"\n\n"
