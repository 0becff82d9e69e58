"""How one call reaches one key, by the client's format and the key's: the URL, the header lines
and the body to send, and how the answer comes back.

    client      key         mode
    openai      openai      OPENAI               the body as it came (+ include_usage spliced in)
    anthropic   anthropic   ANTHROPIC            the body as it came, the caller's anthropic-version/-beta
                                                 and `?beta=true` (nothing else of the query)
    anthropic   openai      ANTHROPIC_ON_OPENAI  translated to /chat/completions and back
    openai      anthropic   OPENAI_ON_ANTHROPIC  /chat/completions translated to /messages and back

A translated body is built once per call and kept for every key of that format it is tried on.
A key that serves the model under another name (`public=upstream`, or an alias's target) gets
that name in the body's top-level `model` (never a nested one), spliced in where it can be.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson
from aiohttp import web
from yarl import URL

from gateway import appkeys
from gateway.log import request_fields
from gateway.net import h1
from gateway.relay import adapters, features, sse, translate
from gateway.relay.call import Call
from gateway.relay.keyindex import PoolKey

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_VERSION_LINE = h1.header_lines({"anthropic-version": ANTHROPIC_VERSION})
VERSION = re.compile(r"[0-9A-Za-z._-]{1,40}")
BETA_QUERY = {"beta": "true"}  # what Claude Code sends; nothing else of a caller's query goes upstream
BETAS = re.compile(r"[0-9A-Za-z._-]{1,100}(\s*,\s*[0-9A-Za-z._-]{1,100}){0,63}")


class Mode(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    ANTHROPIC_ON_OPENAI = "anthropic_on_openai"
    OPENAI_ON_ANTHROPIC = "openai_on_anthropic"


MODES = {
    ("openai", "openai"): Mode.OPENAI,
    ("anthropic", "anthropic"): Mode.ANTHROPIC,
    ("anthropic", "openai"): Mode.ANTHROPIC_ON_OPENAI,
    ("openai", "anthropic"): Mode.OPENAI_ON_ANTHROPIC,
}


@dataclass(slots=True)
class Plan:
    mode: Mode
    url: URL
    head: bytes
    body: bytes
    strip_usage: bool  # OPENAI: we asked for include_usage and drop that chunk again


def anthropic_lines(request: web.Request) -> bytes:
    """The caller's `anthropic-version` (else 2023-06-01) and the `anthropic-beta` values that
    match `[upstream] anthropic_betas` (the others are named in the log line), as header lines;
    a value that is not plainly a version or a list of beta names is left out."""
    version = request.headers.get("anthropic-version", "").strip()
    headers = {"anthropic-version": version if VERSION.fullmatch(version) else ANTHROPIC_VERSION}
    beta = request.headers.get("anthropic-beta", "").strip()
    if beta and BETAS.fullmatch(beta):
        kept, dropped = features.betas(beta, request.app[appkeys.config].upstream.anthropic_betas)
        if kept:
            headers["anthropic-beta"] = ",".join(kept)
        if dropped:
            request_fields(request)["betas_dropped"] = ",".join(dropped)
    return h1.header_lines(headers)


def anthropic_url(url: URL, request: web.Request) -> URL:
    """An `anthropic` key's URL with the one part of the caller's query it may get: `beta=true`."""
    return url.with_query(BETA_QUERY) if request.query.get("beta") == "true" else url


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    """`model`: what the key's upstream calls the model asked for. Raises
    `translate.TranslationError` for a body the key's format cannot carry."""
    mode = MODES[(call.client, key.api_format)]
    head = key.head[call.stream]
    if mode is Mode.OPENAI:
        body, strip = call.payload(key, model)
        return Plan(mode, key.urls[call.endpoint], head, body, strip)
    if mode is Mode.ANTHROPIC:
        raw = call.raw if model == call.model else call.renamed(model)
        return Plan(mode, anthropic_url(key.urls["/messages"], call.request), head + call.anthropic_lines, raw, False)
    if mode is Mode.ANTHROPIC_ON_OPENAI:
        return Plan(mode, key.urls["/chat/completions"], head, _translated(call, mode, model), False)
    return Plan(mode, key.urls["/messages"], head + DEFAULT_VERSION_LINE, _translated(call, mode, model), False)


def _translated(call: Call, mode: Mode, model: str) -> bytes:
    if call.translated_obj is None:
        if mode is Mode.ANTHROPIC_ON_OPENAI:
            call.translated_obj = translate.anthropic_request_to_openai(call.body)
        else:
            call.translated_obj = translate.openai_request_to_anthropic(call.body)
        call.translated = orjson.dumps(call.translated_obj)
    if model == call.model and call.translated is not None:
        return call.translated
    return orjson.dumps({**call.translated_obj, "model": model})


def adapter(route: Plan, call: Call) -> adapters.Adapter:
    """How a stream comes back (see `stream.relay`)."""
    mode = route.mode
    if mode is Mode.OPENAI:
        return adapters.OpenAIPassthrough(strip_usage=route.strip_usage)
    if mode is Mode.ANTHROPIC:
        return adapters.AnthropicPassthrough()
    if mode is Mode.ANTHROPIC_ON_OPENAI:
        return adapters.OpenAIToAnthropic(model=call.model)
    return adapters.AnthropicToOpenAI(model=call.model, include_usage=call.client_wants_usage)


def answer(mode: Mode, call: Call, raw: bytes) -> tuple[bytes, sse.Usage | None]:
    """A non-stream answer for the client, and its usage. ValueError when a translated answer is
    not the JSON object it must be (the attempt then fails: nothing was sent yet)."""
    if mode is Mode.OPENAI:
        if b'"usage"' not in raw:
            return raw, None
        parsed = sse.parse(raw)
        usage = sse.usage_of(parsed)
        if usage is not None and call.endpoint == "/responses":
            usage.tool_calls = features.response_calls(parsed)
        return raw, usage
    obj: Any = orjson.loads(raw)
    if not isinstance(obj, dict):
        raise ValueError("not a JSON object")
    if mode is Mode.ANTHROPIC:
        return raw, _usage(translate.anthropic_usage(obj.get("usage")), obj.get("usage"))
    if mode is Mode.ANTHROPIC_ON_OPENAI:
        converted = translate.openai_response_to_anthropic(obj, model=call.model)
        return orjson.dumps(converted), _usage(translate.openai_usage(obj.get("usage")))
    converted = translate.anthropic_response_to_openai(obj, model=call.model)
    return orjson.dumps(converted), _usage(translate.anthropic_usage(obj.get("usage")), obj.get("usage"))


def _usage(u: translate.TokenUsage | None, anthropic: Any = None) -> sse.Usage | None:
    """The record's usage; `anthropic`: the Anthropic usage object it came from (server tool calls)."""
    if u is None:
        return None
    calls = features.anthropic_calls(anthropic)
    return sse.Usage(
        u.prompt_tokens, u.output_tokens, u.cache_read_tokens or None, u.cache_creation_tokens or None, calls
    )
