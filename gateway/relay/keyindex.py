"""The in-process key index: which keys serve which model, decrypted, ready for the hot path
(`poolkey`: the keys and their load), and the balancer's pools of them, per audience where keys
have one.

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

from gateway.apiformat import ApiFormat
from gateway.errors import POSTGRES_DOWN
from gateway.relay.picks import Pool
from gateway.relay.poolkey import PoolKey, admits, candidate, load, load_aliases
from gateway.relay.rules import Ruled, folded
from gateway.store.crypto import KeyRing
from gateway.store.tokens import Caller

log = structlog.get_logger(__name__)

REFRESH_SECONDS = 30.0  # a full reload at least this often: the safety net for lost events
MAX_PARTIAL = 100  # more keys announced than this between two reloads: reload them all

# What a client asks for that a key of any format can serve (the relay translates the rest),
# what only a key of one format answers; every other endpoint is OpenAI's alone.
EITHER_FORMAT = frozenset({"/chat/completions", "/messages", "/generateContent"})
ONE_FORMAT = {"/messages/count_tokens": ApiFormat.ANTHROPIC, "/countTokens": ApiFormat.GEMINI}


def family(endpoint: str) -> ApiFormat | None:
    """Which keys serve a client's endpoint: those of one format, or of any (None)."""
    if endpoint in EITHER_FORMAT:
        return None
    return ONE_FORMAT.get(endpoint, ApiFormat.OPENAI)


@dataclass(slots=True)
class Snapshot:
    by_id: dict[str, PoolKey]
    pooled: dict[str, list[PoolKey]]  # model -> shared keys serving it, of either format
    openai: dict[str, list[PoolKey]]  # model -> the `openai`-format ones (for OpenAI-only endpoints)
    private: dict[str, list[PoolKey]]  # owner id -> their private fallback keys
    # (name asked for, key id) -> the name that key's upstream gets, where it differs
    rename: dict[tuple[str, str], str] = field(default_factory=dict)
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # (model, family) -> the balancer's pool (None: a model served, but by no key of the family;
    # RULED: some key has an audience, see `audiences`), built on first use, once per snapshot
    pools: dict[tuple[str, ApiFormat | None], Pool | None | Ruled] = field(default_factory=dict)
    # (model, family, trust level, folded username or "", features) -> the pool of the keys that
    # admit such a caller (None: none does): a pool per audience, shared by every caller in it
    audiences: dict[tuple[str, ApiFormat | None, int, str, frozenset[str]], Pool | None] = field(default_factory=dict)
    visible: dict[tuple[int, str], list[str]] = field(default_factory=dict)  # /v1/models per audience
    everyone: bool | None = None  # no key has an audience (None: not looked yet)

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
        snap.audiences = {k: v for k, v in self.audiences.items() if k[0] not in touched}
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
        if kind is None or kind == ApiFormat.OPENAI:
            return (self.snapshot.pooled if kind is None else self.snapshot.openai).get(model, [])
        return [k for k in self.snapshot.pooled.get(model, ()) if k.api_format == kind]

    def pool(
        self,
        model: str,
        endpoint: str = "/chat/completions",
        caller: Caller | None = None,
        features: frozenset[str] = frozenset(),
    ) -> Pool | None:
        """`pooled(model, endpoint)` as the balancer's pool: its candidate list, fingerprint and
        Redis id prepared once per snapshot, so a request sends neither the list nor its size.
        Where keys have an audience (`min_trust_level`, `allowed_users`) or the request uses paid
        `features`, only the keys that admit `caller` and allow them: one pool per audience."""
        kind = family(endpoint)
        snap = self.snapshot
        try:
            entry = snap.pools[(model, kind)]
        except KeyError:
            entry = self._open_pool(model, endpoint, kind)
        if not isinstance(entry, Ruled) and not features:
            return entry
        trust, user = (caller.trust_level, caller.username) if caller is not None else (-1, "")
        lists = isinstance(entry, Ruled) and entry.lists
        tag = (model, kind, trust, folded(user) if lists else "", features)
        try:
            return snap.audiences[tag]
        except KeyError:
            pass
        keys = [k for k in self.pooled(model, endpoint) if admits(k, trust, user, features)]
        pool = Pool.of([candidate(k, model, snap.aliases) for k in keys]) if keys else None
        snap.audiences[tag] = pool
        return pool

    def _open_pool(self, model: str, endpoint: str, kind: ApiFormat | None) -> Pool | None | Ruled:
        snap = self.snapshot
        keys = self.pooled(model, endpoint)
        entry: Pool | None | Ruled
        if any(not k.rules.open_to_all for k in keys):
            entry = Ruled(lists=any(k.rules.allowed_users for k in keys))
        elif keys:
            entry = Pool.of([candidate(k, model, snap.aliases) for k in keys], f"{kind or 'any'}\0{model}")
        else:
            entry = None
        if entry is not None or model in snap.pooled:  # a name no key serves is not kept
            snap.pools[(model, kind)] = entry
        return entry

    def why_not(self, model: str, endpoint: str, caller: Caller, features: frozenset[str]) -> str | None:
        """Why no key serving `model` may serve this caller: "features" (no donor allows them),
        "trust_level", "not_on_list"; None when one may (or none serves the model at all)."""
        keys = self.pooled(model, endpoint)
        if not keys or any(admits(k, caller.trust_level, caller.username, features) for k in keys):
            return None
        if not any(features <= k.rules.allowed_features for k in keys):
            return "features"
        reasons = {k.rules.refuses(caller.trust_level, caller.username) for k in keys}
        return "trust_level" if "trust_level" in reasons else "not_on_list"

    def min_trust(self, model: str, endpoint: str) -> int:
        return min((k.rules.min_trust_level for k in self.pooled(model, endpoint)), default=0)

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

    def models(self, caller: Caller | None = None) -> list[str]:
        """Public names and aliases that some shared key serves (to `caller`: that admits it)."""
        snap = self.snapshot
        if snap.everyone is None:
            snap.everyone = all(k.rules.open_to_all for k in snap.by_id.values())
        if caller is None or snap.everyone:
            return sorted(snap.pooled)
        tag = (caller.trust_level, folded(caller.username))
        names = snap.visible.get(tag)
        if names is None:
            names = snap.visible[tag] = sorted(
                m
                for m, keys in snap.pooled.items()
                if any(admits(k, caller.trust_level, caller.username) for k in keys)
            )
        return names

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
