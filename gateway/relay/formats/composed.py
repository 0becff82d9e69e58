"""Gemini and Anthropic, each on the other's keys (`Mode.GEMINI_ON_ANTHROPIC`,
`Mode.ANTHROPIC_ON_GEMINI`): two translations through OpenAI's shape, composed.

Each step is a direction that exists on its own (Gemini <-> OpenAI, OpenAI <-> Anthropic), so
these two rows add no mapping of their own: every decision is the two steps' (listed in
gateway/relay/formats/__init__.py). Requests go through both `translate_request`s, answers back
through both `translate_answer`s, and streams through both adapters (`Chain`): the key's
events become OpenAI chunks, which become the client's events, one run of whole events at a
time, nothing held back. The cost is a second translation; these pairs are the rare ones (a
Gemini client on a Claude key, Claude Code on a Gemini key).
"""

from __future__ import annotations

import orjson

from gateway.relay.call import Call
from gateway.relay.formats import (
    Mode,
    anthropic,
    anthropic_on_openai,
    anthropic_on_openai_stream,
    gemini_on_openai,
    gemini_on_openai_stream,
    openai_on_anthropic,
    openai_on_anthropic_stream,
    openai_on_gemini,
    openai_on_gemini_stream,
)
from gateway.relay.formats.shared import Adapter, Plan, json_object, translated
from gateway.relay.formats.usage import Usage, gemini_usage
from gateway.relay.keyindex import PoolKey


class Chain:
    """Two stream adapters in a row: `key_side` turns the key's events into OpenAI chunks (asked
    for their usage chunk), `client_side` turns those into the client's events. The key's own
    usage is what is recorded; the commit point is the client side's (its first content)."""

    def __init__(self, key_side: Adapter, client_side: Adapter) -> None:
        self.key_side, self.client_side = key_side, client_side
        self.content_type = client_side.content_type

    @property
    def committed(self) -> bool:
        return self.client_side.committed

    @property
    def failed(self) -> str | None:
        return self.key_side.failed or self.client_side.failed

    @property
    def broken(self) -> bool:
        return self.key_side.broken or self.client_side.broken

    @property
    def chunks(self) -> int:
        return self.key_side.chunks

    def take(self, complete: bytes) -> bytes:
        return self.client_side.take(self.key_side.take(complete))

    def close(self, pending: bytes) -> bytes:
        return self.client_side.take(self.key_side.close(pending)) + self.client_side.close(b"")

    def error(self, message: str) -> bytes:
        return self.client_side.error(message)

    def recorded_usage(self) -> Usage | None:
        return self.key_side.recorded_usage() or self.client_side.recorded_usage()


# --- a Gemini client on an `anthropic` key


def _gemini_to_anthropic(body: dict) -> dict:
    return openai_on_anthropic.translate_request(gemini_on_openai.translate_request(body))


def _gemini_to_anthropic_streamed(body: dict) -> dict:
    return openai_on_anthropic.translate_request(gemini_on_openai.translate_request(body, stream=True))


class GeminiOnAnthropic:
    """The row's three entries (`plan.row` reads them off the module-like namespace)."""

    @staticmethod
    def plan(call: Call, key: PoolKey, model: str) -> Plan:
        body = translated(call, model, _gemini_to_anthropic_streamed if call.stream else _gemini_to_anthropic)
        head = key.head[call.stream] + anthropic.DEFAULT_VERSION_LINE
        return Plan(Mode.GEMINI_ON_ANTHROPIC, key.urls["/messages"], head, body)

    @staticmethod
    def adapter(route: Plan, call: Call) -> Chain:
        return Chain(
            openai_on_anthropic_stream.Adapter(model=call.model, include_usage=True),
            gemini_on_openai_stream.Adapter(model=call.model, sse=call.gemini_sse),
        )

    @staticmethod
    def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
        obj = json_object(raw)
        chat = openai_on_anthropic.translate_answer(obj, model=call.model)
        return orjson.dumps(gemini_on_openai.translate_answer(chat, model=call.model)), anthropic.usage_of(obj)


# --- an Anthropic client on a `gemini` key


def _anthropic_to_gemini(body: dict) -> dict:
    return openai_on_gemini.translate_request(anthropic_on_openai.translate_request(body))


class AnthropicOnGemini:
    @staticmethod
    def plan(call: Call, key: PoolKey, model: str) -> Plan:
        body = translated(call, model, _anthropic_to_gemini, named=False)
        url = key.model_url(model, "streamGenerateContent" if call.stream else "generateContent")
        return Plan(Mode.ANTHROPIC_ON_GEMINI, url, key.head[call.stream], body)

    @staticmethod
    def adapter(route: Plan, call: Call) -> Chain:
        return Chain(
            openai_on_gemini_stream.Adapter(model=call.model, include_usage=True),
            anthropic_on_openai_stream.Adapter(model=call.model),
        )

    @staticmethod
    def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
        obj = json_object(raw)
        chat = openai_on_gemini.translate_answer(obj, model=call.model)
        answer = anthropic_on_openai.translate_answer(chat, model=call.model)
        return orjson.dumps(answer), gemini_usage(obj.get("usageMetadata"))
