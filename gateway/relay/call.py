"""One `/v1` request as it moves through its attempts, and the accounting of each attempt.

`Call` holds what was read from the client; `Recorder` builds an attempt's usage record and hands
it to the queue exactly once; `Failure` is an attempt that failed before its commit point.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Any

import orjson
import structlog
from aiohttp import web

from gateway import appkeys, metrics
from gateway.apiformat import ApiFormat
from gateway.relay import scopes
from gateway.relay.balancer import BALANCER
from gateway.relay.formats.usage import Usage
from gateway.relay.keyindex import PoolKey
from gateway.relay.picks import Pick
from gateway.relay.usage import USAGE, UsageRecord, UsageStatus
from gateway.store.tokens import Caller

log = structlog.get_logger(__name__)


TOKEN_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
MODEL_MEMBER = re.compile(rb'"model"\s*:\s*')
ESCAPED_LETTER = re.compile(rb"\\u00[4-7]")  # "mod\u0065l": encoders never escape ASCII letters


@dataclass(slots=True)
class Call:
    """One client request as it moves through its attempts."""

    request: web.Request
    caller: Caller
    endpoint: str  # "/chat/completions"
    model: str
    stream: bool
    raw: bytes
    body: dict[str, Any]
    client_wants_usage: bool
    started: float
    attempts: int = 0
    upstream_ms: float = 0.0
    client: ApiFormat = ApiFormat.OPENAI  # decided once, by the route (`apiformat.spoken_on`)
    anthropic_lines: bytes = b""  # the caller's anthropic-version/-beta, for an anthropic key
    gemini_sse: bool = False  # a Gemini client's stream: SSE (?alt=sse) or one JSON array
    untranslatable: str | None = None  # why the body could not go to a key of the other format
    response_id: str | None = None  # a Responses API answer's id, remembered with its key
    features: frozenset[str] = frozenset()  # paid features it uses: keys whose donors allow them
    # The bodies built for keys, once per call (gateway/relay/formats): kept for every key of a kind.
    with_usage: bytes | None = None  # OPENAI: the body asking for a stream's usage chunk
    translated: bytes | None = None  # the body in the other format
    translated_obj: dict[str, Any] | None = None
    translated_by: Callable[[dict], dict] | None = None  # which translation they are: one per key format
    _renamed: dict[str, bytes] | None = None

    def renamed(self, model: str) -> bytes:
        """The client's body with `model` instead of the name it asked for (a key serving it under
        another name, or an alias): the value is spliced in where the name is unambiguous."""
        if self._renamed is None:
            self._renamed = {}
        if model not in self._renamed:
            self._renamed[model] = rename_model(self.raw, self.body, self.model, model)
        return self._renamed[model]


def rename_model(raw: bytes, body: dict[str, Any], old: str, new: str) -> bytes:
    """`raw` with the top-level `model` (`old`) replaced by `new`, never a nested one. Spliced in
    when `"model":` appears once and no ASCII letter is written as an escape (the top-level name
    is then that one member) and its value is written as `old` encodes; else encoded again."""
    members = list(MODEL_MEMBER.finditer(raw))
    if len(members) == 1 and (raw.find(b"\\") < 0 or ESCAPED_LETTER.search(raw) is None):
        start, end = members[0].span()
        value = orjson.dumps(old)
        if raw.startswith(value, end):
            return raw[:start] + b'"model":' + orjson.dumps(new) + raw[end + len(value) :]
    return orjson.dumps({**body, "model": new})


class FailureKind(StrEnum):
    """Why an attempt failed before its commit point (logged, and the prefix of its error message)."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    KEY_REJECTED = "key_rejected"  # 401/403: the key is disabled (a relay key cools, see `cooling.reject`)
    RATE_LIMITED = "rate_limited"  # 429: the key cools for Retry-After
    QUOTA_EXHAUSTED = "quota_exhausted"  # 429/402 saying the account is out of quota: spent until the day ends
    REDIRECT = "redirect"
    UPSTREAM_ERROR = "upstream_error"
    BAD_STREAM = "bad_stream"
    TOO_LARGE = "too_large"
    UNSUPPORTED_ENCODING = "unsupported_encoding"
    UNTRANSLATABLE = "untranslatable"  # the body cannot be carried in this key's format
    PROXY_UNREACHABLE = "proxy_unreachable"  # the egress proxy cannot be reached: no key can be tried
    PROXY_REFUSED = "proxy_refused"  # the egress proxy refused this tunnel (403, 502, …): another key may pass


# An answer too large for our caps (a caller can ask for a huge one) or in an encoding we do not
# decode fails the attempt, but says nothing about the key's health; nor does the egress proxy's
# failure, which is the gateway's (503 proxy_unavailable).
PROXY_FAILED = frozenset({FailureKind.PROXY_UNREACHABLE, FailureKind.PROXY_REFUSED})
NOT_THE_KEYS_FAULT = frozenset(
    {FailureKind.TOO_LARGE, FailureKind.UNSUPPORTED_ENCODING, FailureKind.UNTRANSLATABLE, *PROXY_FAILED}
)


@dataclass(slots=True)
class Failure:
    """An attempt that failed before its commit point."""

    kind: FailureKind
    http_status: int | None = None
    retry_after: float | None = None
    detail: str = ""  # for logs only, already scrubbed


def key_secrets(key: PoolKey) -> tuple[str, ...]:
    host = urllib.parse.urlsplit(key.base_url).hostname or ""
    return (key.api_key, key.base_url, host)


def provider_headers(call: Call, key: PoolKey) -> dict[str, str]:
    provider = key.provider if key.provider.isascii() else urllib.parse.quote(key.provider)
    request_id = call.request[appkeys.request_id]
    if call.client == ApiFormat.ANTHROPIC:  # the name Anthropic's clients read
        return {"X-Request-Id": request_id, "request-id": request_id, "X-Sharekey-Provider": provider}
    return {"X-Request-Id": request_id, "X-Sharekey-Provider": provider}


class Recorder:
    """Builds the usage record of one attempt and hands it to the queue exactly once."""

    __slots__ = ("call", "key", "pick", "t0", "ttft_ms", "done", "upstream_model")

    def __init__(self, call: Call, key: PoolKey, pick: Pick | None) -> None:
        self.call, self.key, self.pick = call, key, pick
        self.upstream_model: str | None = None  # the name this key's upstream is asked for
        self.t0 = time.perf_counter()
        self.ttft_ms: float | None = None
        self.done = False

    def committed(self, ttft_ms: float) -> None:
        self.ttft_ms = ttft_ms
        metrics.first_token(ttft_ms / 1000)

    def failed(self, failure: Failure) -> Failure:
        self.finished(
            UsageStatus.TIMEOUT if failure.kind == FailureKind.TIMEOUT else UsageStatus.UPSTREAM_ERROR,
            success=False,
            committed=False,
            http_status=failure.http_status,
            error=f"{failure.kind}: {failure.detail}"[:300],
        )
        return failure

    def cancelled(self) -> None:
        self.finished(UsageStatus.CANCELLED, success=False, committed=self.ttft_ms is not None)

    def finished(
        self,
        status: UsageStatus,
        *,
        success: bool,
        committed: bool,
        http_status: int | None = None,
        usage: Usage | None = None,
        chunks: int = 0,
        error: str | None = None,
    ) -> None:
        if self.done:
            return
        self.done = True
        elapsed = time.perf_counter() - self.t0
        metrics.attempt_done(elapsed)
        call = self.call
        estimated = False
        prompt = completion = None
        cache_read = cache_creation = None
        if usage is not None:
            prompt, completion, cache_read, cache_creation = usage.stored()
        elif committed:
            estimated = True
            prompt, completion = len(call.raw) // 4, chunks
        if self.pick is not None and self.pick.held:  # a slot in flight to free, tokens to count
            tokens = (prompt or 0) + (completion or 0)
            call.request.app[BALANCER].finish_later(self.pick, call.request[appkeys.request_id], tokens)
        day = date.fromisoformat(self.pick.day) if self.pick else _today(call)
        record = UsageRecord(
            request_id=call.request[appkeys.request_id],
            attempt=call.attempts,
            day=day,
            created_at=datetime.now(UTC),
            shared_key_id=self.key.id,
            user_id=call.caller.user_id,
            donor_id=self.key.owner_id,
            api_endpoint=route_of(call.endpoint),
            model=call.model,
            status=status,
            success=success,
            committed=committed,
            http_status=http_status,
            prompt_tokens=prompt,
            completion_tokens=completion,
            usage_estimated=estimated,
            latency_ms=round(elapsed * 1000),
            ttft_ms=round(self.ttft_ms) if self.ttft_ms is not None else None,
            error_message=error,
            cache_read_tokens=cache_read,
            cache_creation_tokens=cache_creation,
            upstream_model=self.upstream_model,
            server_tool_calls=usage.tool_calls if usage is not None else None,
            token_id=call.caller.token_id,
        )
        call.request.app[USAGE].add(record)
        scopes.note_spend(call.request.app, call.caller, record)


GEMINI_METHODS = frozenset({"/generateContent", "/countTokens"})


def route_of(endpoint: str) -> str:
    """The route a usage row names: `/v1/chat/completions`, or Gemini's `/v1beta/models:generateContent`."""
    return "/v1beta/models:" + endpoint[1:] if endpoint in GEMINI_METHODS else "/v1" + endpoint


def _today(call: Call) -> date:
    return date.fromisoformat(call.request.app[BALANCER].today())
