"""Gemini clients on `gemini` keys (`Mode.GEMINI`): the body as it came, to the model's URL.

Google names the model in the path (`/models/{model}:generateContent`), so the body needs no
renaming: it goes out as the client sent it, under the key's own name for the model in the URL
(`PoolKey.model_url`). A stream is always asked for as SSE (`?alt=sse`); a client that did not
ask for SSE gets what Google sends it then, one JSON array written piece by piece (`Framing`).
Only the events that carry `usageMetadata` are parsed; Google's counts there are cumulative, so
the last one wins. Grounding with Google Search (`groundingMetadata.webSearchQueries`) is counted
as one `web_search` call per answer.
"""

from __future__ import annotations

from typing import Any

from gateway.relay import sse
from gateway.relay.call import Call
from gateway.relay.formats import Mode
from gateway.relay.formats.gemini_shared import Framing
from gateway.relay.formats.shared import EventAdapter, Plan, json_object
from gateway.relay.formats.usage import Usage, gemini_usage
from gateway.relay.keyindex import PoolKey

MODEL_METHODS = ["generateContent", "streamGenerateContent", "countTokens"]


def model_entry(name: str) -> dict[str, Any]:
    """A model as Google's `models.get` and `models.list` describe it."""
    return {
        "name": f"models/{name}",
        "baseModelId": name,
        "version": "sharekey",
        "displayName": name,
        "description": "Served by the keys this gateway's donors share.",
        "supportedGenerationMethods": MODEL_METHODS,
    }


def models_list(names: list[str]) -> dict[str, Any]:
    """Google's model list, in one page (no `nextPageToken`)."""
    return {"models": [model_entry(m) for m in names]}


def method(call: Call) -> str:
    return "streamGenerateContent" if call.stream else "generateContent"


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    return Plan(Mode.GEMINI, key.model_url(model, method(call)), key.head[call.stream], call.raw)


def adapter(route: Plan, call: Call) -> Passthrough:
    return Passthrough(sse=call.gemini_sse)


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as it came, and its usage. ValueError when it is not a JSON object."""
    return raw, usage_of(json_object(raw))


def usage_of(chunk: Any) -> Usage | None:
    """The usage of a GenerateContentResponse (or of a stream chunk, cumulative so far), with a
    grounded answer's search counted as a `web_search` call."""
    if not isinstance(chunk, dict):
        return None
    usage = gemini_usage(chunk.get("usageMetadata"))
    if usage is not None and grounded(chunk):
        usage.tool_calls = {"web_search": 1}
    return usage


def grounded(chunk: dict[str, Any]) -> bool:
    for candidate in chunk.get("candidates") or ():
        meta = candidate.get("groundingMetadata") if isinstance(candidate, dict) else None
        if isinstance(meta, dict) and meta.get("webSearchQueries"):
            return True
    return False


def has_content(chunk: Any) -> bool:
    """Whether a stream chunk carries a part of the answer (the commit point)."""
    if not isinstance(chunk, dict):
        return False
    for candidate in chunk.get("candidates") or ():
        content = candidate.get("content") if isinstance(candidate, dict) else None
        if isinstance(content, dict) and content.get("parts"):
            return True
    return False


class Passthrough(EventAdapter):
    """A `gemini` key's SSE stream to a Gemini client: events passed on whole, or their data as
    array elements; only events mentioning usageMetadata or an error are parsed, and the first
    ones until content shows."""

    def __init__(self, *, sse: bool) -> None:
        super().__init__()
        self.framing = Framing(sse=sse)
        self.content_type = self.framing.content_type

    def event(self, event: bytes) -> bytes:
        data = sse.data_of(event)
        if data is None:
            return b""
        if not self.committed or b'"usageMetadata"' in data or b'"error"' in data:
            chunk = sse.parse(data)
            if isinstance(chunk, dict) and chunk.get("error") is not None and not chunk.get("candidates"):
                return self.upstream_error()
            self.committed = self.committed or has_content(chunk)
            self.usage = usage_of(chunk) or self.usage
        return self.framing.chunk(data)

    def close(self, pending: bytes) -> bytes:
        return self.framing.close()

    def error(self, message: str) -> bytes:
        return self.framing.error(message)
