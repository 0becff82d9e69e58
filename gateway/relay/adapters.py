"""How a stream looks event by event, for the streams the fast OpenAI pass-through does not cover:
an Anthropic stream passed on as it is, and streams translated between the two formats.

An adapter takes each whole SSE event of the upstream and returns what the client gets for it
(possibly nothing yet), and keeps what the relay decides on: whether a content event has been
seen (`committed`, the commit point), whether the upstream said it failed (`failed` before the
commit point, `broken` after it), and the usage it reported.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.relay import sse, translate
from gateway.relay.translate_base import TokenUsage

STREAM_ONLY_ERROR = "stream carried only an error"
BROKE = "The upstream stream broke off (the upstream reported an error)."


class Adapter(Protocol):
    committed: bool
    failed: str | None
    broken: bool
    usage: TokenUsage | None

    def take(self, event: bytes) -> bytes: ...
    def close(self) -> bytes: ...
    def error(self, message: str) -> bytes: ...


def _type_of(event: bytes) -> bytes:
    """An Anthropic event's type from its `event:` line (every Anthropic event has one)."""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b""


class _Base:
    def __init__(self) -> None:
        self.committed = False
        self.failed: str | None = None
        self.broken = False
        self.usage: TokenUsage | None = None

    def _upstream_error(self) -> bytes:
        if not self.committed:
            self.failed = STREAM_ONLY_ERROR
            return b""
        self.broken = True
        return self.error(BROKE)


class AnthropicPassthrough(_Base):
    """An `anthropic` key's stream to an Anthropic client: events pass as they are; only the
    ones carrying usage are parsed (`message_start`, `message_delta`)."""

    def take(self, event: bytes) -> bytes:
        kind = _type_of(event)
        if kind in (b"content_block_start", b"content_block_delta"):
            self.committed = True
        elif kind in (b"message_start", b"message_delta"):
            data = sse.parse(sse.data_of(event) or b"")
            if isinstance(data, dict):
                holder = data.get("message") if kind == b"message_start" else data
                self._note(holder.get("usage") if isinstance(holder, dict) else None)
        elif kind == b"error":
            return self._upstream_error()
        return event

    def _note(self, raw: Any) -> None:
        new = translate.anthropic_usage(raw)
        if new is None:
            return
        if self.usage is None:
            self.usage = new
            return
        # message_delta's counts are cumulative and may omit the input side
        self.usage.output_tokens = new.output_tokens or self.usage.output_tokens
        for name in ("input_tokens", "cache_read_tokens", "cache_creation_tokens"):
            setattr(self.usage, name, getattr(new, name) or getattr(self.usage, name))

    def close(self) -> bytes:
        return b""

    def error(self, message: str) -> bytes:
        return translate.anthropic_error_event(message)


class OpenAIToAnthropic(_Base):
    """An `openai` key's stream to an Anthropic client, converted chunk by chunk."""

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self._stream = translate.OpenAIToAnthropicStream(model=model)

    def take(self, event: bytes) -> bytes:
        data = sse.data_of(event)
        if data is None:
            return b""
        if data == b"[DONE]":
            return self.close()
        chunk = sse.parse(data)
        if not isinstance(chunk, dict):
            return b""
        if chunk.get("error") is not None and not chunk.get("choices"):
            return self._upstream_error()
        if not self.committed:
            for choice in chunk.get("choices") or ():
                delta = choice.get("delta") if isinstance(choice, dict) else None
                if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
                    self.committed = True
        out = self._stream.feed(chunk)
        self.usage = self._stream.usage or self.usage
        return out

    def close(self) -> bytes:
        out = self._stream.close()
        self.usage = self._stream.usage or self.usage
        return out

    def error(self, message: str) -> bytes:
        return translate.anthropic_error_event(message)


class AnthropicToOpenAI(_Base):
    """An `anthropic` key's stream to an OpenAI client, converted event by event."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__()
        self._stream = translate.AnthropicToOpenAIStream(include_usage=include_usage, model=model)

    def take(self, event: bytes) -> bytes:
        data = sse.data_of(event)
        if data is None:
            return b""
        obj = sse.parse(data)
        if not isinstance(obj, dict):
            return b""
        kind = obj.get("type")
        if kind == "error":
            return self._upstream_error()
        if kind in ("content_block_start", "content_block_delta"):
            self.committed = True
        out = self._stream.feed(obj)
        self.usage = self._stream.usage
        return out

    def close(self) -> bytes:
        out = self._stream.close()
        self.usage = self._stream.usage
        return out

    def error(self, message: str) -> bytes:
        return sse.error_event(message)
