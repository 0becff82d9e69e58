"""Anthropic clients on `anthropic` keys (`Mode.ANTHROPIC`): the body as it came.

The body goes out as the client sent it (under the key's own name for the model where it has
one), with the caller's `anthropic-version` and the `anthropic-beta` values the operator allows
(`[upstream] anthropic_betas`; the others are named in the log line), and of the caller's query
only `beta=true` (what Claude Code sends). A stream's events pass as they are; only the ones
carrying usage are parsed (`message_start`, `message_delta`).
"""

from __future__ import annotations

import re
from typing import Any

from aiohttp import web
from yarl import URL

from gateway import appkeys
from gateway.log import request_fields
from gateway.net import h1
from gateway.relay import features, sse
from gateway.relay.call import Call
from gateway.relay.formats import Mode
from gateway.relay.formats.shared import EventAdapter, Plan, anthropic_error_event, json_object
from gateway.relay.formats.usage import Usage, anthropic_usage
from gateway.relay.keyindex import PoolKey

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_VERSION_LINE = h1.header_lines({"anthropic-version": ANTHROPIC_VERSION})
VERSION = re.compile(r"[0-9A-Za-z._-]{1,40}")
BETA_QUERY = {"beta": "true"}  # what Claude Code sends; nothing else of a caller's query goes upstream
BETAS = re.compile(r"[0-9A-Za-z._-]{1,100}(\s*,\s*[0-9A-Za-z._-]{1,100}){0,63}")


def header_lines(request: web.Request) -> bytes:
    """The caller's `anthropic-version` (else 2023-06-01) and the `anthropic-beta` values that
    match `[upstream] anthropic_betas`, as header lines; a value that is not plainly a version or
    a list of beta names is left out."""
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


def url(key_url: URL, request: web.Request) -> URL:
    """An `anthropic` key's URL with the one part of the caller's query it may get: `beta=true`."""
    return key_url.with_query(BETA_QUERY) if request.query.get("beta") == "true" else key_url


def plan(call: Call, key: PoolKey, model: str) -> Plan:
    raw = call.raw if model == call.model else call.renamed(model)
    head = key.head[call.stream] + call.anthropic_lines
    return Plan(Mode.ANTHROPIC, url(key.urls["/messages"], call.request), head, raw)


def adapter(route: Plan, call: Call) -> Passthrough:
    return Passthrough()


def answer(call: Call, raw: bytes) -> tuple[bytes, Usage | None]:
    """The answer as it came, and its usage. ValueError when it is not a JSON object."""
    return raw, usage_of(json_object(raw))


def usage_of(message: dict[str, Any]) -> Usage | None:
    """A Message's usage, its server tool calls counted."""
    raw = message.get("usage")
    usage = anthropic_usage(raw)
    if usage is not None:
        usage.tool_calls = features.anthropic_calls(raw)
    return usage


def type_of(event: bytes) -> bytes:
    """An Anthropic event's type from its `event:` line (every Anthropic event has one)."""
    for line in event.splitlines():
        if line.startswith(b"event:"):
            return line[6:].strip()
    return b""


class Passthrough(EventAdapter):
    """An `anthropic` key's stream to an Anthropic client, events passed on as they are."""

    def event(self, event: bytes) -> bytes:
        kind = type_of(event)
        if kind in (b"content_block_start", b"content_block_delta"):
            self.committed = True
        elif kind in (b"message_start", b"message_delta"):
            data = sse.parse(sse.data_of(event) or b"")
            if isinstance(data, dict):
                holder = data.get("message") if kind == b"message_start" else data
                self.usage = noted(self.usage, holder.get("usage") if isinstance(holder, dict) else None)
        elif kind == b"error":
            return self.upstream_error()
        return event

    def error(self, message: str) -> bytes:
        return anthropic_error_event(message)


def noted(usage: Usage | None, raw: Any) -> Usage | None:
    """`usage` updated by a stream's message_start or message_delta usage object: its counts are
    cumulative and message_delta may omit the input side; server tool calls likewise."""
    new = anthropic_usage(raw)
    calls = features.anthropic_calls(raw)
    if new is None:
        return usage
    if usage is None:
        new.tool_calls = calls
        return new
    usage.output_tokens = new.output_tokens or usage.output_tokens
    usage.input_tokens = new.input_tokens or usage.input_tokens
    usage.cache_read_tokens = new.cache_read_tokens or usage.cache_read_tokens
    usage.cache_creation_tokens = new.cache_creation_tokens or usage.cache_creation_tokens
    usage.tool_calls = calls or usage.tool_calls
    return usage
