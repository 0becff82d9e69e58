"""Adding donated keys, one or many: what `POST /api/shared-keys`, `sharekey keys add` and the bulk
import (`POST /api/shared-keys/import`, `sharekey keys import`) share.

    entries -> each by the api_key rule (a bad one fails alone) -> the same key twice in the list,
    or already stored (keyed fingerprint, any donor): duplicate -> tested live, a few at a time
    -> stored under `<prefix>-<n>`, a name the donor does not use yet -> one result per entry

The callers validate the fields every key shares (`keyfields.IMPORT_FIELDS`, the rules) and bring
the live test; this module never sees a request or a command line. A result carries the key's
mask and our own words, never the key, and says nothing of whose key a duplicate is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import asyncpg

from gateway.errors import ApiError
from gateway.net.keytest import KeyTestResult
from gateway.store import keyfields, keyrules, sharedkeys
from gateway.store.crypto import KeyRing, mask
from gateway.store.sharedkeys import DUPLICATE, DuplicateKey, KeyNameTaken, NewKey, SharedKey

CONCURRENCY = 8  # live tests in flight at once for one import
DEFAULT_PREFIX = "imported"

Tester = Callable[[str], Awaitable[KeyTestResult]]
Acquire = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


class Outcome(StrEnum):
    ADDED = "added"
    DUPLICATE = "duplicate"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class KeyResult:
    """What became of one entry of an import: its index in the list, its mask, and why."""

    index: int
    hint: str
    status: Outcome
    key_id: str | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"index": self.index, "hint": self.hint, "status": str(self.status)}
        if self.key_id is not None:
            out["id"] = self.key_id
        if self.error is not None:
            out["error"] = self.error
        return out


def counts(results: Sequence[KeyResult]) -> dict[str, int]:
    """`{"added": n, "duplicate": n, "failed": n}`."""
    found = Counter(r.status for r in results)
    return {str(outcome): found[outcome] for outcome in Outcome}


def new_key(owner_id: str, name: str, api_key: str, fields: Mapping[str, Any]) -> NewKey:
    """A key to store from the checked fields of a new key (its base URL already normalised)."""
    return NewKey(
        owner_id=owner_id,
        name=name,
        base_url=fields["base_url"],
        api_key=api_key,
        available_models=fields["available_models"],
        daily_limit=fields.get("daily_limit", 150),
        daily_budget_usd=fields.get("daily_budget_usd"),
        description=fields.get("description"),
        tags=fields.get("tags", []),
        is_private=fields.get("is_private", False),
        stream_usage=fields.get("stream_usage", True),
        api_format=fields.get("api_format", "openai"),
    )


async def add_key(
    conn: asyncpg.Connection, keyring: KeyRing, new: NewKey, rules: Mapping[str, Any], *, timezone: str
) -> SharedKey:
    """The key and its rules in one transaction. Raises `KeyNameTaken` or `DuplicateKey`."""
    async with conn.transaction():
        key = await sharedkeys.insert_key(conn, keyring, new, timezone=timezone)
        if rules != keyrules.DEFAULTS:
            await keyrules.store(conn, key.id, rules)
            key = dataclasses.replace(key, rules=dict(rules))
    return key


SHARED = """
SELECT key_fingerprint FROM shared_keys
WHERE key_fingerprint = ANY($1::text[]) AND ($2::uuid IS NULL OR id <> $2)
"""


async def already_shared(
    conn: asyncpg.Connection, keyring: KeyRing, texts: Sequence[str], *, except_id: str | None = None
) -> set[str]:
    """The keys among `texts` that some row (other than `except_id`) stores, by their fingerprint
    under every secret of the ring. Checked before a live test so a duplicate costs none; the
    UNIQUE index on the fingerprint decides a race."""
    prints = {fp: text for text in texts for fp in keyring.fingerprints(text)}
    if not prints:
        return set()
    rows = await conn.fetch(SHARED, list(prints), uuid.UUID(except_id) if except_id else None)
    return {prints[r["key_fingerprint"]] for r in rows}


NAMES = "SELECT name FROM shared_keys WHERE user_id = $1 AND starts_with(name, $2)"


def failure(result: KeyTestResult) -> str:
    if result.reason == "proxy_unavailable":
        return f"the key was not tested: {result.error}"
    return f"the key failed its live test: {result.error}"


async def import_keys(
    acquire: Acquire,
    keyring: KeyRing,
    owner_id: str,
    fields: Mapping[str, Any],
    rules: Mapping[str, Any],
    entries: Sequence[Any],
    test: Tester | None,
    *,
    timezone: str,
    concurrency: int = CONCURRENCY,
) -> list[KeyResult]:
    """One result per entry, in order. `fields` are the checked shared fields (`name_prefix`
    included or not); `test` None stores without the live test (`keys import --no-test`)."""
    results: dict[int, KeyResult] = {}
    todo: dict[int, str] = {}
    first: dict[str, int] = {}
    for i, entry in enumerate(entries):
        try:
            text = keyfields.key_entry(entry)
        except ApiError as e:
            results[i] = KeyResult(i, mask(entry if isinstance(entry, str) else ""), Outcome.FAILED, error=e.message)
            continue
        if text in first:
            error = f"the same key as entry {first[text]} of this list"
            results[i] = KeyResult(i, mask(text), Outcome.DUPLICATE, error=error)
            continue
        first[text] = i
        todo[i] = text

    async with acquire() as conn:
        stored = await already_shared(conn, keyring, list(todo.values()))
    for i in [i for i, text in todo.items() if text in stored]:
        results[i] = KeyResult(i, mask(todo.pop(i)), Outcome.DUPLICATE, error=DUPLICATE)

    if test is not None and todo:
        gate = asyncio.Semaphore(concurrency)

        async def tested(text: str) -> KeyTestResult:
            async with gate:
                return await test(text)

        outcomes = await asyncio.gather(*(tested(text) for text in todo.values()))
        for i, result in zip(list(todo), outcomes, strict=True):
            if not result.ok:
                results[i] = KeyResult(i, mask(todo.pop(i)), Outcome.FAILED, error=failure(result))

    prefix = fields.get("name_prefix", DEFAULT_PREFIX)
    async with acquire() as conn:
        taken = {r["name"] for r in await conn.fetch(NAMES, uuid.UUID(owner_id), f"{prefix}-")}
        n = 0
        for i, text in todo.items():
            while True:
                n += 1
                name = f"{prefix}-{n}"
                if name in taken:
                    continue
                try:
                    key = await add_key(conn, keyring, new_key(owner_id, name, text, fields), rules, timezone=timezone)
                except KeyNameTaken:  # the donor added that name meanwhile: the next one
                    taken.add(name)
                    continue
                except DuplicateKey:  # stored meanwhile, by someone
                    results[i] = KeyResult(i, mask(text), Outcome.DUPLICATE, error=DUPLICATE)
                    n -= 1
                else:
                    results[i] = KeyResult(i, key.api_key_masked, Outcome.ADDED, key_id=key.id)
                break
    return [results[i] for i in range(len(entries))]
