"""The table of directions: which module serves a call on a key, by the client's format and the
key's (gateway/relay/formats/__init__.py lists them). One row per `Mode`; a call is planned once
per key it is tried on, and the plan carries its mode to the two later steps (a stream's adapter,
a non-streamed answer) without asking again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

from gateway.apiformat import ApiFormat
from gateway.relay.call import Call
from gateway.relay.formats import (
    Mode,
    anthropic,
    anthropic_on_openai,
    composed,
    gemini,
    gemini_on_openai,
    openai,
    openai_on_anthropic,
    openai_on_gemini,
)
from gateway.relay.formats.shared import Adapter, Plan
from gateway.relay.formats.usage import Usage
from gateway.relay.keyindex import PoolKey


@dataclass(frozen=True, slots=True)
class Direction:
    """One row: how a call in `client`'s format reaches a key in `key`'s."""

    mode: Mode
    client: ApiFormat
    key: ApiFormat
    plan: Callable[[Call, PoolKey, str], Plan]  # URL, header lines and body for one key
    adapter: Callable[[Plan, Call], Adapter]  # how a stream comes back
    answer: Callable[[Call, bytes], tuple[bytes, Usage | None]]  # a non-streamed answer, and its usage


def row(mode: Mode, client: ApiFormat, key: ApiFormat, module: ModuleType | type) -> Direction:
    """A direction module's three entries as a row of the table (or a class's: `composed`)."""
    return Direction(mode, client, key, module.plan, module.adapter, module.answer)


OPENAI, ANTHROPIC, GEMINI = ApiFormat.OPENAI, ApiFormat.ANTHROPIC, ApiFormat.GEMINI
TABLE = (
    row(Mode.OPENAI, OPENAI, OPENAI, openai),
    row(Mode.ANTHROPIC, ANTHROPIC, ANTHROPIC, anthropic),
    row(Mode.ANTHROPIC_ON_OPENAI, ANTHROPIC, OPENAI, anthropic_on_openai),
    row(Mode.OPENAI_ON_ANTHROPIC, OPENAI, ANTHROPIC, openai_on_anthropic),
    row(Mode.GEMINI, GEMINI, GEMINI, gemini),
    row(Mode.GEMINI_ON_OPENAI, GEMINI, OPENAI, gemini_on_openai),
    row(Mode.OPENAI_ON_GEMINI, OPENAI, GEMINI, openai_on_gemini),
    row(Mode.GEMINI_ON_ANTHROPIC, GEMINI, ANTHROPIC, composed.GeminiOnAnthropic),
    row(Mode.ANTHROPIC_ON_GEMINI, ANTHROPIC, GEMINI, composed.AnthropicOnGemini),
)
BY_FORMATS = {(d.client, d.key): d for d in TABLE}
BY_MODE = {d.mode: d for d in TABLE}


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    """`model`: what the key's upstream calls the model asked for. Raises
    `formats.shared.TranslationError` for a body the key's format cannot carry."""
    return BY_FORMATS[(call.client, key.api_format)].plan(call, key, model)


def adapter(route: Plan, call: Call) -> Adapter:
    """How the planned call's stream comes back (see `stream.relay`)."""
    return BY_MODE[route.mode].adapter(route, call)


def answer(route: Plan, call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """A non-stream answer for the client, and its usage. ValueError when the answer is not the
    JSON object its format promises (the attempt then fails: nothing was sent yet)."""
    return BY_MODE[route.mode].answer(call, raw)
