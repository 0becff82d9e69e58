"""A donated key as the relay holds it (`PoolKey`): decrypted, its URLs parsed and its upstream
header lines built once per load; and the load of the serving keys from PostgreSQL.

A key whose ciphertext does not open for its row is left out (fail closed) and logged, never sent
anywhere; so is one whose key or URL cannot be sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

import asyncpg
import structlog
from yarl import URL

from gateway.apiformat import ApiFormat
from gateway.net.h1 import header_lines
from gateway.net.upstream import upstream_headers
from gateway.relay.picks import Candidate
from gateway.relay.rules import NO_RULES, KeyRules
from gateway.store import modelnames
from gateway.store.crypto import KeyRing, SealError
from gateway.store.sharedkeys import open_row

log = structlog.get_logger(__name__)

ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/responses")
ANTHROPIC_ENDPOINTS = ("/messages", "/messages/count_tokens")


@dataclass(frozen=True, slots=True, eq=False)
class PoolKey:
    id: str
    owner_id: str
    provider: str  # the name credited in X-Sharekey-Provider ("anonymous" for anonymous donors)
    base_url: str
    api_key: str = field(repr=False)
    models: tuple[str, ...]
    daily_limit: int
    stream_usage: bool
    is_private: bool
    api_format: ApiFormat = ApiFormat.OPENAI  # how the upstream is called
    upstream_names: dict[str, str] = field(default_factory=dict, repr=False)  # public -> upstream, where they differ
    rules: KeyRules = field(default_factory=lambda: NO_RULES)  # the donor's caps and audience
    # Built once per load, not per request: parsed URLs and the complete upstream header lines.
    urls: dict[str, URL] = field(default_factory=dict, repr=False)
    head: dict[bool, bytes] = field(default_factory=dict, repr=False)  # stream? -> header lines
    candidate: Candidate = field(init=False, repr=False)
    _model_urls: dict[tuple[str, str], URL] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidate", Candidate(self.id, self.daily_limit))
        endpoints = {ApiFormat.ANTHROPIC: ANTHROPIC_ENDPOINTS, ApiFormat.GEMINI: ()}.get(self.api_format, ENDPOINTS)
        self.urls.update({e: URL(self.base_url + e) for e in endpoints})
        for stream, accept in ((False, "application/json"), (True, "text/event-stream")):
            headers = upstream_headers(self.api_key, accept=accept, api_format=self.api_format)
            self.head[stream] = header_lines({**headers, "Accept-Encoding": "identity"})

    def model_url(self, model: str, method: str) -> URL:
        """A `gemini` key's URL for one model and method (`generateContent`,
        `streamGenerateContent`, `countTokens`): Google names the model in the path. Streams ask
        for SSE (`?alt=sse`). Built once per model and method."""
        url = self._model_urls.get((model, method))
        if url is None:
            query = "?alt=sse" if method == "streamGenerateContent" else ""
            name = quote(model.removeprefix("models/"), safe="")  # the prefix is Google's own spelling
            url = self._model_urls[(model, method)] = URL(
                f"{self.base_url}/models/{name}:{method}{query}", encoded=True
            )
        return url


def admits(key: PoolKey, trust_level: int, username: str, features: frozenset[str] = frozenset()) -> bool:
    return key.rules.admits(trust_level, username, features)


def candidate(key: PoolKey, model: str, aliases: Mapping[str, tuple[str, ...]]) -> Candidate:
    """The key as a candidate of `model`'s pool: its daily limit and, where it has any, its caps."""
    caps = key.rules.caps_for(model, key.models, aliases)
    return Candidate(key.id, key.daily_limit, caps) if caps else key.candidate


SELECT_SERVING_KEYS = """
SELECT k.id, k.user_id, k.base_url, k.api_key_encrypted, k.available_models, k.daily_limit,
       k.stream_usage, k.is_private, k.api_format, u.username, u.anonymous,
       k.rpm_limit, k.tpm_limit, k.max_concurrent, k.model_daily_limits, k.min_trust_level,
       k.allowed_users, k.allowed_features, k.upstream_kind, k.auth_cooldowns
FROM shared_keys k JOIN users u ON u.id = k.user_id
WHERE k.is_active AND k.status <> 'disabled' AND (k.spent_until IS NULL OR k.spent_until <= now())
  AND (k.daily_budget_usd IS NULL OR k.spend_today_usd < k.daily_budget_usd
       OR k.spend_day IS DISTINCT FROM (now() AT TIME ZONE $1)::date)
"""


async def load(
    pool: asyncpg.Pool, keyring: KeyRing, key_ids: list[str] | None = None, *, timezone: str = "UTC"
) -> list[PoolKey]:
    """Every serving key, or (with `key_ids`) those of them that still serve. A key whose flushed
    spend today (in `timezone`, the balancer's day) reached its `daily_budget_usd` does not serve
    until tomorrow: the flusher announces it when it gets there, the periodic reload brings it back.
    So does a key whose account said it is out of quota (`spent_until`, see `keystate.spent`)."""
    async with pool.acquire() as conn:
        if key_ids is None:
            rows = await conn.fetch(SELECT_SERVING_KEYS, timezone)
        else:
            rows = await conn.fetch(SELECT_SERVING_KEYS + " AND k.id = ANY($2::text[]::uuid[])", timezone, key_ids)
    keys = []
    for r in rows:
        key_id, owner_id = str(r["id"]), str(r["user_id"])
        try:
            api_key = open_row(keyring, r)
        except SealError as e:
            log.error("key_unsealable", key_id=key_id, reason=str(e))
            continue
        names = [modelnames.split(entry) for entry in r["available_models"]]
        try:
            key = PoolKey(
                id=key_id,
                owner_id=owner_id,
                provider="anonymous" if r["anonymous"] else r["username"],
                base_url=r["base_url"],
                api_key=api_key,
                models=tuple(public for public, _ in names),
                daily_limit=r["daily_limit"],
                stream_usage=r["stream_usage"],
                is_private=r["is_private"],
                api_format=ApiFormat(r["api_format"]),
                upstream_names={public: upstream for public, upstream in names if public != upstream},
                rules=KeyRules.of_row(r),
            )
        except ValueError as e:  # a key or URL that cannot be sent: left out, like one that does not open
            log.error("key_unusable", key_id=key_id, reason=str(e))
            continue
        keys.append(key)
    return keys


SELECT_ALIASES = "SELECT public_name, targets FROM model_aliases"


async def load_aliases(pool: asyncpg.Pool) -> dict[str, tuple[str, ...]]:
    """The aliases admins set (`/api/models/aliases`); they win over the configured ones."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(SELECT_ALIASES)
    return {r["public_name"]: tuple(r["targets"]) for r in rows}
