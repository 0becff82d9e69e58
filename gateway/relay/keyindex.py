"""The in-process key index: which keys serve which model, decrypted, ready for the hot path.

Loaded from PostgreSQL at start, reloaded when a `keys` event arrives (any process changed a key)
and every `REFRESH_SECONDS` as a safety net. The hot path only reads it: it never waits for
PostgreSQL. A key whose ciphertext does not open for its row is left out (fail closed) and
logged, never sent anywhere. Reloads are coalesced: a burst of events causes at most one reload
in flight and one after it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field

import asyncpg
import structlog
from aiohttp import web
from yarl import URL

from gateway.apiformat import ApiFormat
from gateway.errors import POSTGRES_DOWN
from gateway.net.h1 import header_lines
from gateway.net.upstream import upstream_headers
from gateway.relay.picks import Candidate, Pool
from gateway.relay.rules import NO_RULES, KeyRules
from gateway.store import modelnames
from gateway.store.crypto import KeyRing, SealError
from gateway.store.sharedkeys import open_row

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 30.0  # a full reload at least this often: the safety net for lost events
MAX_PARTIAL = 100  # more keys announced than this between two reloads: reload them all


ENDPOINTS = ("/chat/completions", "/completions", "/embeddings", "/responses")
ANTHROPIC_ENDPOINTS = ("/messages", "/messages/count_tokens")
# What a client asks for that a key of either format can serve (the relay translates the rest),
# what only an `anthropic` key answers; every other endpoint is OpenAI's alone.
EITHER_FORMAT = frozenset({"/chat/completions", "/messages"})
ANTHROPIC_ONLY = frozenset({"/messages/count_tokens"})


def family(endpoint: str) -> ApiFormat | None:
    """Which keys serve a client's endpoint: those of one format, or of either (None)."""
    if endpoint in EITHER_FORMAT:
        return None
    return ApiFormat.ANTHROPIC if endpoint in ANTHROPIC_ONLY else ApiFormat.OPENAI


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

    def __post_init__(self) -> None:
        object.__setattr__(self, "candidate", Candidate(self.id, self.daily_limit))
        endpoints = ANTHROPIC_ENDPOINTS if self.api_format == ApiFormat.ANTHROPIC else ENDPOINTS
        self.urls.update({e: URL(self.base_url + e) for e in endpoints})
        for stream, accept in ((False, "application/json"), (True, "text/event-stream")):
            headers = upstream_headers(self.api_key, accept=accept, api_format=self.api_format)
            self.head[stream] = header_lines({**headers, "Accept-Encoding": "identity"})


@dataclass(slots=True)
class Snapshot:
    by_id: dict[str, PoolKey]
    pooled: dict[str, list[PoolKey]]  # model -> shared keys serving it, of either format
    openai: dict[str, list[PoolKey]]  # model -> the `openai`-format ones (for OpenAI-only endpoints)
    private: dict[str, list[PoolKey]]  # owner id -> their private fallback keys
    # (name asked for, key id) -> the name that key's upstream gets, where it differs
    rename: dict[tuple[str, str], str] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # (model, family) -> the balancer's pool (None: a model served, but by no key of the family),
    # built on first use, once per snapshot
    pools: dict[tuple[str, ApiFormat | None], Pool | None] = field(default_factory=dict)

    @classmethod
    def build(cls, keys: list[PoolKey], aliases: Mapping[str, tuple[str, ...]] | None = None) -> Snapshot:
        snap = cls({}, {}, {}, {}, {}, dict(aliases or {}))
        for key in keys:
            snap.by_id[key.id] = key
            for model, upstream in key.upstream_names.items():
                snap.rename[(model, key.id)] = upstream
            if key.is_private:
                snap.private.setdefault(key.owner_id, []).append(key)
                continue
            for model in key.models:
                snap._add(model, key)
        for alias, targets in snap.aliases.items():
            served = {k.id for k in snap.pooled.get(alias, ())}
            for target in targets:
                for key in list(snap.pooled.get(target, ())):
                    if key.id not in served:
                        served.add(key.id)
                        snap._add(alias, key)
                        snap.rename[(alias, key.id)] = key.upstream_names.get(target, target)
        return snap

    def _add(self, model: str, key: PoolKey) -> None:
        self.pooled.setdefault(model, []).append(key)
        if key.api_format == ApiFormat.OPENAI:
            self.openai.setdefault(model, []).append(key)

    def with_keys(self, changed: Mapping[str, PoolKey | None]) -> Snapshot:
        """This snapshot with some keys replaced (None: gone). Only the lists of the models they
        serve before or after are rebuilt, and only those models' balancer pools dropped; the rest
        is shared with this snapshot. A change under an alias rebuilds the whole index from
        memory (no database, no decryption)."""
        olds = [k for k in (self.by_id.get(i) for i in changed) if k is not None]
        news = [k for k in changed.values() if k is not None]
        touched = {m for k in (*olds, *news) for m in k.models}
        by_id = {i: k for i, k in self.by_id.items() if i not in changed}
        by_id.update((k.id, k) for k in news)
        if any(a in touched or not touched.isdisjoint(t) for a, t in self.aliases.items()):
            return Snapshot.build(list(by_id.values()), self.aliases)
        snap = Snapshot(by_id, dict(self.pooled), dict(self.openai), dict(self.private), aliases=self.aliases)
        snap.rename = {k: v for k, v in self.rename.items() if k[1] not in changed}
        snap.pools = {k: v for k, v in self.pools.items() if k[0] not in touched}
        for model in touched:
            for lists in (snap.pooled, snap.openai):
                kept = [k for k in lists.get(model, ()) if k.id not in changed]
                if kept:
                    lists[model] = kept
                else:
                    lists.pop(model, None)
        for owner in {k.owner_id for k in (*olds, *news) if k.is_private}:
            snap.private[owner] = [k for k in snap.private.get(owner, ()) if k.id not in changed]
        for key in news:
            snap.rename.update(((m, key.id), u) for m, u in key.upstream_names.items())
            if key.is_private:
                snap.private.setdefault(key.owner_id, []).append(key)
            else:
                for model in key.models:
                    snap._add(model, key)
        return snap


SELECT_SERVING_KEYS = """
SELECT k.id, k.user_id, k.base_url, k.api_key_encrypted, k.available_models, k.daily_limit,
       k.stream_usage, k.is_private, k.api_format, u.username, u.anonymous,
       k.rpm_limit, k.tpm_limit, k.max_concurrent, k.model_daily_limits, k.min_trust_level,
       k.allowed_users, k.allowed_features, k.upstream_kind, k.auth_cooldowns
FROM shared_keys k JOIN users u ON u.id = k.user_id
WHERE k.is_active AND k.status <> 'disabled'
  AND (k.daily_budget_usd IS NULL OR k.spend_today_usd < k.daily_budget_usd
       OR k.spend_day IS DISTINCT FROM (now() AT TIME ZONE $1)::date)
"""


async def load(
    pool: asyncpg.Pool, keyring: KeyRing, key_ids: list[str] | None = None, *, timezone: str = "UTC"
) -> list[PoolKey]:
    """Every serving key, or (with `key_ids`) those of them that still serve. A key whose flushed
    spend today (in `timezone`, the balancer's day) reached its `daily_budget_usd` does not serve
    until tomorrow: the flusher announces it when it gets there, the periodic reload brings it back."""
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


class KeyIndex:
    def __init__(
        self,
        pool: asyncpg.Pool,
        keyring: KeyRing,
        aliases: Mapping[str, tuple[str, ...]] | None = None,
        timezone: str = "UTC",  # the balancer's: the day a key's budget is counted on
    ) -> None:
        self._pool = pool
        self._keyring = keyring
        self._timezone = timezone
        self.configured_aliases = dict(aliases or {})
        self.snapshot = Snapshot({}, {}, {}, {})
        self.loaded = asyncio.Event()
        self._dirty = asyncio.Event()
        self._changed: set[str] = set()  # key ids announced since the last (re)load
        self._everything = False
        self._started = 0  # reloads started, numbered
        self._applied = 0  # the number of the newest reload whose result is the snapshot

    def pooled(self, model: str, endpoint: str = "/chat/completions") -> list[PoolKey]:
        """The shared keys that can serve `model` at the client's `endpoint`."""
        kind = family(endpoint)
        if kind == ApiFormat.ANTHROPIC:
            return [k for k in self.snapshot.pooled.get(model, ()) if k.api_format == ApiFormat.ANTHROPIC]
        return (self.snapshot.pooled if kind is None else self.snapshot.openai).get(model, [])

    def pool(self, model: str, endpoint: str = "/chat/completions") -> Pool | None:
        """`pooled(model, endpoint)` as the balancer's pool: its candidate list, fingerprint and
        Redis id prepared once per snapshot, so a request sends neither the list nor its size."""
        kind = family(endpoint)
        snap = self.snapshot
        try:
            return snap.pools[(model, kind)]
        except KeyError:
            pass
        keys = self.pooled(model, endpoint)
        pool = Pool.of([k.candidate for k in keys], f"{kind or 'any'}\0{model}") if keys else None
        if pool is not None or model in snap.pooled:  # a name no key serves is not kept
            snap.pools[(model, kind)] = pool
        return pool

    def private(self, owner_id: str, model: str, endpoint: str = "/chat/completions") -> list[PoolKey]:
        kind = family(endpoint)
        names = {model, *self.snapshot.aliases.get(model, ())}
        keys = self.snapshot.private.get(owner_id, [])
        return [k for k in keys if not names.isdisjoint(k.models) and kind in (None, k.api_format)]

    def upstream_model(self, model: str, key: PoolKey) -> str:
        """The name `key`'s upstream gets for a request that asked for `model`."""
        name = self.snapshot.rename.get((model, key.id))
        if name is not None:
            return name
        for target in self.snapshot.aliases.get(model, ()):  # a private key reached through an alias
            if target in key.models:
                return key.upstream_names.get(target, target)
        return model

    def get(self, key_id: str) -> PoolKey | None:
        return self.snapshot.by_id.get(key_id)

    def models(self) -> list[str]:
        """Public names and aliases that some shared key serves."""
        return sorted(self.snapshot.pooled)

    def invalidate(self, key_id: str = "") -> None:
        """A `keys <id>` event reloads that key alone; anything else (a resync, aliases) all."""
        if key_id and len(self._changed) < MAX_PARTIAL:
            self._changed.add(key_id)
        else:
            self._everything = True
        self._dirty.set()

    async def reload_keys(self, key_ids: list[str]) -> None:
        """Reload some keys: one query for their rows, and only their models' lists rebuilt."""
        number = self._start()
        fresh = {k.id: k for k in await load(self._pool, self._keyring, key_ids, timezone=self._timezone)}
        if not self._current(number, key_ids):
            return
        self.snapshot = self.snapshot.with_keys({i: fresh.get(i) for i in key_ids})
        log.debug("key_index_updated", keys=len(key_ids))

    async def reload(self) -> None:
        number = self._start()
        keys = await load(self._pool, self._keyring, timezone=self._timezone)
        aliases = {**self.configured_aliases, **await load_aliases(self._pool)}
        if not self._current(number):
            return
        self.snapshot = Snapshot.build(keys, aliases)
        self.loaded.set()
        log.debug("key_index_loaded", keys=len(keys))

    def _start(self) -> int:
        self._started += 1
        return self._started

    def _current(self, number: int, key_ids: list[str] | None = None) -> bool:
        """Whether a reload's result may become the snapshot: not when a reload that started after
        it (and so read newer rows) was applied first. Then it is simply asked for again."""
        if number < self._applied:
            for key_id in key_ids or ():
                self.invalidate(key_id)
            if key_ids is None:
                self.invalidate()
            return False
        self._applied = number
        return True

    async def run(self) -> None:
        """Reload on demand (coalesced) and periodically; a failed reload keeps the last snapshot."""
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), REFRESH_SECONDS)
            except TimeoutError:
                pass
            self._dirty.clear()
            changed, everything = list(self._changed), self._everything or not self._changed
            self._changed, self._everything = set(), False
            try:
                if everything:
                    await self.reload()
                else:
                    await self.reload_keys(changed)
            except POSTGRES_DOWN as e:
                log.warning("key_index_reload_failed", error=str(e))
                await asyncio.sleep(1.0)


KEY_INDEX: web.AppKey[KeyIndex] = web.AppKey("key_index", KeyIndex)
