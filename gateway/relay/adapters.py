"""How a stream looks to the relay (`stream.relay`), one adapter per pair of formats: the OpenAI
pass-through (the hot path: whole chunks forwarded, only the event carrying usage parsed), an
Anthropic stream passed on as it is, and streams translated between the two formats (event by
event).

An adapter takes each run of whole SSE events of the upstream and returns what the client gets
for it (possibly nothing yet), and keeps what the relay decides on: whether a content event has
been seen (`committed`, the commit point), whether the upstream said it failed (`failed` before
the commit point, `broken` after it), how many events it relayed, and the usage reported.
"""

from __future__ import annotations

from typing import Any, Protocol

from gateway.relay import features, sse, translate
from gateway.relay.translate_base import TokenUsage

STREAM_ONLY_ERROR = "stream carried only an error"
ENDED_EARLY = "stream ended before any content"
BROKE = "The upstream stream broke off (the upstream reported an error)."


class Adapter(Protocol):
    committed: bool
    failed: str | None
    broken: bool
    chunks: int  # content events relayed (the usage estimate when the upstream reports none)

    def take(self, complete: bytes) -> bytes: ...
    def close(self, pending: bytes) -> bytes: ...
    def error(self, message: str) -> bytes: ...
    def recorded_usage(self) -> sse.Usage | None: ...


class OpenAIPassthrough:
    """An `openai` key's stream to an OpenAI client: chunks are forwarded as they came; only the
    event that carries usage is parsed, and the usage-only chunk we asked for is dropped again."""

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.committed = False
        self.failed: str | None = None
        self.broken = False  # an error after the commit point is the upstream's to tell
        self.chunks = 0
        self.usage: sse.Usage | None = None

    def take(self, complete: bytes) -> bytes:
        if not self.committed:
            for event in sse.events(complete):
                data = sse.data_of(event)
                if data is None:
                    continue
                if data == b"[DONE]" or sse.is_error(data):
                    self.failed = STREAM_ONLY_ERROR if data != b"[DONE]" else ENDED_EARLY
                    return b""
                self.committed = True
                break
        self.chunks += complete.count(b"data:") - complete.count(b"data: [DONE]")
        before, rest = sse.split_at(complete, b'"usage"')
        if not rest:
            return complete  # the common case: forwarded as it came, nothing parsed
        out = [before]
        for event in sse.events(rest):
            data = sse.data_of(event)
            if data is not None and b'"usage"' in data:
                obj = sse.parse(data)
                usage = sse.usage_of(obj)
                if usage is not None and isinstance(obj, dict) and "response" in obj:  # response.completed
                    usage.tool_calls = features.response_calls(obj)
                self.usage = usage or self.usage
                if self.strip_usage and sse.usage_only_chunk(obj):
                    continue
            out.append(event)
        return b"".join(out)

    def close(self, pending: bytes) -> bytes:
        return pending  # an unterminated last event goes out as it came

    def error(self, message: str) -> bytes:
        return sse.error_event(message)

    def recorded_usage(self) -> sse.Usage | None:
        return self.usage


def _type_of(event: bytes) -> bytes:
    """An Anthropic event's type from its `event:` line (every Anthropic event has one)."""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b""


class _Base:
    """Adapters that look at every event: `event()` for each, until one fails or breaks."""

    def __init__(self) -> None:
        self.committed = False
        self.failed: str | None = None
        self.broken = False
        self.chunks = 0
        self.usage: TokenUsage | None = None
        self.tool_calls: dict[str, int] | None = None  # an Anthropic upstream's server tool calls

    def take(self, complete: bytes) -> bytes:
        out = []
        for event in sse.events(complete):
            self.chunks += 1
            converted = self.event(event)
            if converted:
                out.append(converted)
            if self.failed or self.broken:
                break
        return b"".join(out)

    def event(self, event: bytes) -> bytes:
        raise NotImplementedError

    def close(self, pending: bytes) -> bytes:
        return b""  # an unterminated last event is not an event

    def error(self, message: str) -> bytes:
        raise NotImplementedError

    def recorded_usage(self) -> sse.Usage | None:
        u = self.usage
        if u is None:
            return None
        # As a non-stream answer's (plan._usage): no cache tokens is NULL, not 0.
        return sse.Usage(
            u.prompt_tokens,
            u.output_tokens,
            u.cache_read_tokens or None,
            u.cache_creation_tokens or None,
            self.tool_calls,
        )

    def _upstream_error(self) -> bytes:
        if not self.committed:
            self.failed = STREAM_ONLY_ERROR
            return b""
        self.broken = True
        return self.error(BROKE)


class AnthropicPassthrough(_Base):
    """An `anthropic` key's stream to an Anthropic client: events pass as they are; only the
    ones carrying usage are parsed (`message_start`, `message_delta`)."""

    def event(self, event: bytes) -> bytes:
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
        self.tool_calls = features.anthropic_calls(raw) or self.tool_calls  # cumulative, like the counts
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

    def error(self, message: str) -> bytes:
        return translate.anthropic_error_event(message)


class OpenAIToAnthropic(_Base):
    """An `openai` key's stream to an Anthropic client, converted chunk by chunk."""

    def __init__(self, *, model: str) -> None:
        super().__init__()
        self._stream = translate.OpenAIToAnthropicStream(model=model)

    def event(self, event: bytes) -> bytes:
        data = sse.data_of(event)
        if data is None:
            return b""
        if data == b"[DONE]":
            return self._finish()
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

    def close(self, pending: bytes) -> bytes:
        return self._finish()

    def _finish(self) -> bytes:
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

    def event(self, event: bytes) -> bytes:
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

    def close(self, pending: bytes) -> bytes:
        out = self._stream.close()
        self.usage = self._stream.usage
        return out

    def error(self, message: str) -> bytes:
        return sse.error_event(message)
