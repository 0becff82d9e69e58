"""`Mode.OPENAI_ON_GEMINI`, streamed: Gemini `GenerateContentResponse` chunks in (each SSE `data:`
of `:streamGenerateContent?alt=sse`), OpenAI `data:` chunks out (`Translator`), and the `Adapter`
the relay drives it through. Also owns reading a Gemini answer's first candidate (`parts`,
`tool_call`, `finish`), which the non-streamed answer shares. The mapping decisions are listed in
gateway/relay/formats/__init__.py.
"""

from __future__ import annotations

from gateway.relay import sse
from gateway.relay.formats.gemini_shared import openai_finish
from gateway.relay.formats.openai import ChunkAdapter, ChunkWriter
from gateway.relay.formats.shared import STREAM_ERROR, dumps, new_id
from gateway.relay.formats.usage import Usage, gemini_usage


def candidate(answer: dict) -> dict:
    """The first candidate of a Gemini answer or chunk ({} when there is none)."""
    candidates = answer.get("candidates")
    first = candidates[0] if isinstance(candidates, list) and candidates else None
    return first if isinstance(first, dict) else {}


def parts(answer: dict) -> list[dict]:
    """The parts of the first candidate that carry something for an OpenAI client: text (not
    thoughts) and function calls; other parts (thoughts, code execution, …) are left out."""
    return _parts(candidate(answer))


def _parts(first: dict) -> list[dict]:
    content = first.get("content")
    found = content.get("parts") if isinstance(content, dict) else None
    out = []
    for part in found if isinstance(found, list) else ():
        if not isinstance(part, dict) or part.get("thought") is True:
            continue
        if isinstance(part.get("text"), str) and part["text"] or isinstance(part.get("functionCall"), dict):
            out.append(part)
    return out


def tool_call(part: dict) -> dict:
    """A `functionCall` part as an OpenAI tool call: Gemini's id where it gives one."""
    call = part["functionCall"]
    call_id = call.get("id") if isinstance(call.get("id"), str) and call["id"] else new_id("call_")
    args = call.get("args")
    function = {"name": call.get("name") or "", "arguments": dumps(args if isinstance(args, dict) else {})}
    return {"id": call_id, "type": "function", "function": function}


def finish(answer: dict, has_tool_calls: bool, first: dict | None = None) -> str | None:
    """The finish_reason an answer (or chunk) ends with; None while it goes on. A prompt Gemini
    blocked has no candidates, only `promptFeedback.blockReason`: content_filter. `first`: its
    first candidate, when the caller has it already."""
    first = candidate(answer) if first is None else first
    if first.get("finishReason"):
        return openai_finish(first["finishReason"], has_tool_calls)
    feedback = answer.get("promptFeedback")
    if not first and isinstance(feedback, dict) and feedback.get("blockReason"):
        return "content_filter"
    return None


class Translator(ChunkWriter):
    """Gemini chunks (parsed `data:` objects) in, OpenAI `data: {chunk}` bytes out.

    `feed(chunk)` for every chunk, `close()` when the upstream stream ends (idempotent). The first
    chunk carries `role: assistant`; text parts become `content`, each functionCall part (Gemini
    sends a call whole) one `tool_calls` entry with its full arguments; the chunk with
    `finishReason` gives the finish_reason chunk; `close()` the usage-only chunk (only if
    `include_usage`) and `data: [DONE]`. `usageMetadata` is cumulative: the last one counts. An
    `error` object becomes one `data: {"error": …}` and no `[DONE]`. Google repeats it on every
    chunk, so only the last one is kept (`_meta`) and read when `usage` is asked for.
    """

    def __init__(self, *, include_usage: bool = False, model: str | None = None) -> None:
        self._meta: dict | None = None  # the last usageMetadata, not read into `usage` yet
        super().__init__(include_usage=include_usage, model=model)
        self.finish_reason: str | None = None
        self._tool_count = 0

    @property
    def usage(self) -> Usage:
        if self._meta is not None:
            self._usage = gemini_usage(self._meta) or self._usage
            self._meta = None
        return self._usage

    @usage.setter
    def usage(self, value: Usage) -> None:
        self._usage, self._meta = value, None

    def feed(self, chunk: dict) -> bytes:
        if self.done or not isinstance(chunk, dict):
            return b""
        if chunk.get("error") is not None:
            self.done = True
            return sse.error_event(STREAM_ERROR)
        if not self._role_sent:
            if isinstance(chunk.get("responseId"), str) and chunk["responseId"]:
                self.id = chunk["responseId"]
            self.model = chunk.get("modelVersion") or self.model
        meta = chunk.get("usageMetadata")
        if isinstance(meta, dict):
            self._meta = meta
        first = candidate(chunk)
        out = [self._role()]
        for part in _parts(first):
            if isinstance(part.get("functionCall"), dict):
                call = {"index": self._tool_count, **tool_call(part)}
                self._tool_count += 1
                out.append(self._chunk({"tool_calls": [call]}))
            else:
                out.append(self._chunk({"content": part["text"]}))
        reason = finish(chunk, self._tool_count > 0, first)
        if reason is not None:
            self.finish_reason = reason
            out.append(self._finish())
        return b"".join(out)

    def _finish(self) -> bytes:
        return self._finish_chunk(self.finish_reason or ("tool_calls" if self._tool_count else "stop"))


class Adapter(ChunkAdapter):
    """A `gemini` key's stream to an OpenAI client, converted chunk by chunk."""

    def __init__(self, *, model: str, include_usage: bool) -> None:
        super().__init__(Translator(include_usage=include_usage, model=model))

    def is_error(self, obj: dict) -> bool:
        return obj.get("error") is not None

    def commits(self, obj: dict) -> bool:
        return bool(parts(obj))
