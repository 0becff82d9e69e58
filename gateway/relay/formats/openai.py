"""OpenAI clients on `openai` keys (`Mode.OPENAI`): the hot path, the body as it came.

The body goes out as the client sent it, under the key's own name for the model where it has one
(`Call.renamed`), with `stream_options.include_usage` spliced into a stream that did not ask for
it on a key that reports usage that way (the usage-only chunk is dropped again on the way back).
A stream's chunks are forwarded whole; only the event that carries usage is parsed.

Also owns what the translations for OpenAI clients (openai_on_anthropic*.py, openai_on_gemini*.py)
share: `completion`, the chat.completion a non-streamed answer becomes; `ChunkWriter`, the
chat.completion.chunk framing their stream translators write in; and `ChunkAdapter`, the adapter
around such a translator.
"""

from __future__ import annotations

import time
from typing import Any

import orjson

from gateway.relay import features, sse
from gateway.relay.call import Call
from gateway.relay.formats import Mode
from gateway.relay.formats.shared import ENDED_EARLY, STREAM_ONLY_ERROR, EventAdapter, Plan, new_id, openai_data
from gateway.relay.formats.usage import Usage, openai_usage, openai_usage_dict
from gateway.relay.keyindex import PoolKey

# Endpoints whose streams understand `stream_options.include_usage`.
USAGE_OPTION_ENDPOINTS = frozenset({"/chat/completions", "/completions"})
USAGE_OPTION = b'"stream_options":{"include_usage":true},'
DONE = b"data: [DONE]\n\n"


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    raw = call.raw if model == call.model else call.renamed(model)
    url = key.urls[call.endpoint]
    head = key.head[call.stream]
    if not (call.stream and key.stream_usage and call.endpoint in USAGE_OPTION_ENDPOINTS) or call.client_wants_usage:
        return Plan(Mode.OPENAI, url, head, raw)
    if model != call.model:
        return Plan(Mode.OPENAI, url, head, with_usage(raw, {**call.body, "model": model}), True)
    if call.with_usage is None:
        call.with_usage = with_usage(call.raw, call.body)
    return Plan(Mode.OPENAI, url, head, call.with_usage, True)


def with_usage(raw: bytes, body: dict[str, Any]) -> bytes:
    """`raw` asking for the usage chunk of a stream."""
    if "stream_options" not in body:
        # The common case, spliced in rather than re-serialised: a long conversation is copied,
        # not encoded again. `raw` parsed as an object with a model, so its first `{` opens it
        # and a member follows the comma.
        start = raw.index(b"{") + 1
        return raw[:start] + USAGE_OPTION + raw[start:]
    options = body["stream_options"]
    options = dict(options) if isinstance(options, dict) else {}
    options["include_usage"] = True
    return orjson.dumps({**body, "stream_options": options})


def adapter(route: Plan, call: Call) -> Passthrough:
    return Passthrough(strip_usage=route.strip_usage)


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as it came, and its usage (a Responses answer's built-in tool calls counted)."""
    if b'"usage"' not in raw:
        return raw, None
    parsed = sse.parse(raw)
    usage = usage_of(parsed)
    if usage is not None and call.endpoint == "/responses":
        usage.tool_calls = features.response_calls(parsed)
    return raw, usage


def completion(answer_id: str, model: str, text: str, calls: list[dict], finish: str, usage: Usage | None) -> dict:
    """A translated answer as an OpenAI chat.completion with one choice (content null when the
    answer is only tool calls)."""
    message: dict[str, Any] = {"role": "assistant", "content": text or (None if calls else ""), "refusal": None}
    if calls:
        message["tool_calls"] = calls
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "usage": openai_usage_dict(usage),
    }


def usage_of(obj: Any) -> Usage | None:
    """Usage from a chat/completions chunk or body, or from a Responses API object or event."""
    if not isinstance(obj, dict):
        return None
    u = obj.get("usage")
    if u is None and isinstance(obj.get("response"), dict):  # Responses API: response.completed
        u = obj["response"].get("usage")
    return openai_usage(u)


class Passthrough:
    """An `openai` key's stream to an OpenAI client: chunks are forwarded as they came; only the
    event that carries usage is parsed, and the usage-only chunk we asked for is dropped again."""

    content_type = "text/event-stream"

    def __init__(self, *, strip_usage: bool) -> None:
        self.strip_usage = strip_usage
        self.committed = False
        self.failed: str | None = None
        self.broken = False  # an error after the commit point is the upstream's to tell
        self.chunks = 0
        self.usage: Usage | None = None

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
                usage = usage_of(obj)
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

    def recorded_usage(self) -> Usage | None:
        return self.usage


class ChunkWriter:
    """A translated stream as an OpenAI client reads it: every chunk under one id, model and
    creation time; the `role: assistant` chunk once, first; one finish chunk; at the end the
    usage-only chunk (`choices: []`, only if the client asked: `include_usage`) and `[DONE]`."""

    def __init__(self, *, include_usage: bool, model: str | None) -> None:
        self.include_usage = include_usage
        self.id = new_id("chatcmpl-")
        self.model = model or ""
        self.created = int(time.time())
        self.usage = Usage()
        self.done = False
        self._role_sent = False
        self._finish_sent = False

    def feed(self, obj: dict) -> bytes:
        raise NotImplementedError

    def close(self) -> bytes:
        """The end of the stream: the role and finish chunks if they were not sent, the usage
        chunk if asked for, `[DONE]`; nothing the second time."""
        if self.done:
            return b""
        self.done = True
        return self._role() + self._finish() + self._end()

    def _finish(self) -> bytes:
        raise NotImplementedError

    def _chunk(self, delta: dict, finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return openai_data(self._frame([choice]))

    def _frame(self, choices: list) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }

    def _role(self) -> bytes:
        if self._role_sent:
            return b""
        self._role_sent = True
        return self._chunk({"role": "assistant", "content": ""})

    def _finish_chunk(self, finish: str) -> bytes:
        if self._finish_sent:
            return b""
        self._finish_sent = True
        return self._chunk({}, finish)

    def _end(self) -> bytes:
        """The usage-only chunk where it was asked for, and `[DONE]`."""
        if not self.include_usage:
            return DONE
        return openai_data({**self._frame([]), "usage": openai_usage_dict(self.usage)}) + DONE


class ChunkAdapter(EventAdapter):
    """A translated stream to an OpenAI client: each event's `data:` object goes through the
    translator; one the upstream marks as an error (`is_error`) fails the attempt or breaks the
    stream, and the first that carries content (`commits`) is the commit point. Its `usage` is
    the translator's once an event has gone through it (read when asked for, not per event)."""

    def __init__(self, stream: ChunkWriter) -> None:
        self._stream = stream
        self._fed = False
        super().__init__()

    @property
    def usage(self) -> Usage | None:  # type: ignore[override]
        return self._stream.usage if self._fed else None

    @usage.setter
    def usage(self, value: Usage | None) -> None:
        if value is not None:
            raise AttributeError("a ChunkAdapter's usage is its translator's")

    def is_error(self, obj: dict) -> bool:
        raise NotImplementedError

    def commits(self, obj: dict) -> bool:
        raise NotImplementedError

    def event(self, event: bytes) -> bytes:
        data = sse.data_of(event)
        if data is None:
            return b""
        obj = sse.parse(data)
        if not isinstance(obj, dict):
            return b""
        if self.is_error(obj):
            return self.upstream_error()
        if not self.committed and self.commits(obj):
            self.committed = True
        out = self._stream.feed(obj)
        self._fed = True
        return out

    def close(self, pending: bytes) -> bytes:
        out = self._stream.close()
        self._fed = True
        return out

    def error(self, message: str) -> bytes:
        return sse.error_event(message)
