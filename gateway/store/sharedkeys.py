"""Donated keys in PostgreSQL: storing them sealed, and reading them back for their owners.

The key itself only ever exists here as ciphertext bound to its row (see `crypto`); what owners
and operators see is `api_key_hint`, the `sk-…abcd` mask computed when the key was stored.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from gateway.store import keyrules
from gateway.store.crypto import KeyRing, mask


class KeyNameTaken(Exception):
    pass


class DuplicateKey(Exception):
    """The key (by its fingerprint) is already stored, by this donor or another: whose is not said."""


def _unique_violation(e: asyncpg.UniqueViolationError, name: str) -> Exception:
    if e.constraint_name == FINGERPRINT_INDEX:
        return DuplicateKey(DUPLICATE)
    return KeyNameTaken(f"you already have a key named {name!r}")


FINGERPRINT_INDEX = "shared_keys_key_fingerprint"  # sql/0016
DUPLICATE = "this key is already shared on this gateway"


class KeyStatus(StrEnum):
    """A key's state as its owner sees it. The column holds active | cooling | disabled; `paused`
    is `is_active = false` on a key that is not disabled."""

    ACTIVE = "active"
    PAUSED = "paused"
    COOLING = "cooling"
    DISABLED = "disabled"


class DisabledBy(StrEnum):
    """Who took a disabled key out of the pool (`shared_keys.disabled_by`, NULL unless disabled).
    It alone decides what a health check may revive; `status_reason` is prose for the owner."""

    OWNER = "owner"  # reserved: owners pause (is_active = false) rather than disable
    OPERATOR = "operator"  # `sharekey keys disable`: only the owner's resume (a live test) brings it back
    UPSTREAM = "upstream"  # the proxy got a 401/403
    HEALTH = "health"  # a health check got a 401/403


# A passing health check brings these back: the upstream refused the key, and may accept it again.
REVIVABLE = frozenset({DisabledBy.UPSTREAM, DisabledBy.HEALTH})


@dataclass(frozen=True, slots=True)
class NewKey:
    owner_id: str
    name: str
    base_url: str  # already normalised and checked
    api_key: str
    available_models: list[str]
    daily_limit: int = 150
    description: str | None = None
    daily_budget_usd: Decimal | None = None
    tags: list[str] | None = None
    is_private: bool = False
    stream_usage: bool = True
    api_format: str = "openai"  # openai | anthropic: how the upstream is called


@dataclass(frozen=True, slots=True)
class SharedKey:
    """A key as its owner sees it: never the key, only its mask."""

    id: str
    owner_id: str
    owner: str
    name: str
    base_url: str
    available_models: list[str]
    daily_limit: int
    description: str | None
    tags: list[str]
    is_active: bool
    is_private: bool
    stream_usage: bool
    api_format: str  # openai | anthropic
    status: KeyStatus
    status_reason: str | None
    disabled_by: DisabledBy | None  # set exactly when the stored status is disabled
    api_key_masked: str
    usage_count_today: int
    total_usage_count: int
    total_tokens: int
    last_used_at: datetime | None
    last_error: str | None
    created_at: datetime
    updated_at: datetime
    daily_budget_usd: Decimal | None = None  # USD a day; reached, the key rests until tomorrow
    spend_today_usd: Decimal = Decimal(0)  # the estimated cost of its flushed calls today
    rules: dict[str, Any] = field(default_factory=lambda: dict(keyrules.DEFAULTS))  # the donor's caps, audience

    @property
    def host(self) -> str:
        return urlsplit(self.base_url).hostname or ""

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> SharedKey:
        status = KeyStatus(r["status"])
        if not r["is_active"] and status != KeyStatus.DISABLED:
            status = KeyStatus.PAUSED
        return cls(
            id=str(r["id"]),
            owner_id=str(r["user_id"]),
            owner=r["username"],
            name=r["name"],
            base_url=r["base_url"],
            available_models=list(r["available_models"]),
            daily_limit=r["daily_limit"],
            description=r["description"],
            tags=list(r["tags"] or []),
            is_active=r["is_active"],
            is_private=r["is_private"],
            stream_usage=r["stream_usage"],
            api_format=r["api_format"],
            status=status,
            status_reason=r["status_reason"],
            disabled_by=DisabledBy(r["disabled_by"]) if r["disabled_by"] else None,
            api_key_masked=r["api_key_hint"],
            usage_count_today=r["used_today"],
            total_usage_count=r["total_usage_count"],
            total_tokens=r["total_tokens"],
            last_used_at=r["last_used_at"],
            last_error=r["last_error"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
            daily_budget_usd=r["daily_budget_usd"],
            spend_today_usd=r["spend_today"],
            rules=keyrules.of_row(r),
        )

    def to_json(self) -> dict[str, Any]:
        """The item shape of `GET /api/shared-keys`."""
        return {
            "id": self.id,
            "name": self.name,
            "base_url": self.base_url,
            "available_models": self.available_models,
            "daily_limit": self.daily_limit,
            "daily_budget_usd": float(self.daily_budget_usd) if self.daily_budget_usd is not None else None,
            "spend_today_usd": round(float(self.spend_today_usd), 6),
            "description": self.description,
            "tags": self.tags,
            "is_active": self.is_active,
            "is_private": self.is_private,
            "stream_usage": self.stream_usage,
            "api_format": self.api_format,
            "status": self.status,
            "status_reason": self.status_reason,
            "disabled_by": self.disabled_by,
            "api_key_masked": self.api_key_masked,
            "usage_count_today": self.usage_count_today,
            "total_usage_count": self.total_usage_count,
            "total_tokens": self.total_tokens,
            "last_used_at": _iso(self.last_used_at),
            "last_error": self.last_error,
            "created_at": _iso(self.created_at),
            "updated_at": _iso(self.updated_at),
            **self.rules,
        }


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


INSERT_KEY = """
INSERT INTO shared_keys (id, user_id, name, base_url, api_key_encrypted, key_version, api_key_hint,
                         available_models, daily_limit, description, tags, is_private, stream_usage,
                         api_format, daily_budget_usd, key_fingerprint)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
"""


async def insert_key(conn: asyncpg.Connection, keyring: KeyRing, key: NewKey, *, timezone: str) -> SharedKey:
    """Seal and store a key with its fingerprint; its row id is chosen first because the ciphertext
    is bound to it. Raises `KeyNameTaken`, or `DuplicateKey` when the key is stored already."""
    key_id = uuid.uuid4()
    sealed = keyring.seal(key.api_key, key_id=str(key_id), owner_id=key.owner_id, base_url=key.base_url)
    try:
        await conn.execute(
            INSERT_KEY,
            key_id,
            uuid.UUID(key.owner_id),
            key.name,
            key.base_url,
            sealed,
            keyring.current_kid,
            mask(key.api_key),
            key.available_models,
            key.daily_limit,
            key.description,
            key.tags or [],
            key.is_private,
            key.stream_usage,
            key.api_format,
            key.daily_budget_usd,
            keyring.fingerprint(key.api_key),
        )
    except asyncpg.UniqueViolationError as e:
        raise _unique_violation(e, key.name) from None
    found = await list_keys(conn, timezone=timezone, key_id=str(key_id))
    return found[0]


SELECT_KEYS = """
SELECT k.*, u.username,
       CASE WHEN k.usage_day = (now() AT TIME ZONE $1)::date THEN k.usage_count_today ELSE 0 END AS used_today,
       CASE WHEN k.spend_day = (now() AT TIME ZONE $1)::date THEN k.spend_today_usd ELSE 0 END AS spend_today
FROM shared_keys k JOIN users u ON u.id = k.user_id
WHERE ($2::uuid IS NULL OR k.user_id = $2) AND ($3::uuid IS NULL OR k.id = $3)
ORDER BY u.username, k.created_at
"""


async def list_keys(
    conn: asyncpg.Connection, *, timezone: str, owner_id: str | None = None, key_id: str | None = None
) -> list[SharedKey]:
    rows = await conn.fetch(
        SELECT_KEYS, timezone, uuid.UUID(owner_id) if owner_id else None, uuid.UUID(key_id) if key_id else None
    )
    return [SharedKey.from_record(r) for r in rows]


async def get_key(
    conn: asyncpg.Connection, key_id: str, *, timezone: str, owner_id: str | None = None
) -> SharedKey | None:
    """One key; None when there is no such key or (with `owner_id`) it is someone else's. A
    malformed id is simply not found, so it answers like any other missing key."""
    try:
        key_id = str(uuid.UUID(key_id))
    except (ValueError, TypeError, AttributeError):
        return None
    found = await list_keys(conn, timezone=timezone, owner_id=owner_id, key_id=key_id)
    return found[0] if found else None


NAME_TAKEN = "SELECT EXISTS (SELECT 1 FROM shared_keys WHERE user_id = $1 AND name = $2)"


async def name_taken(conn: asyncpg.Connection, owner_id: str, name: str) -> bool:
    """Checked before a live test so a duplicate name does not cost one; the UNIQUE index decides."""
    return bool(await conn.fetchval(NAME_TAKEN, uuid.UUID(owner_id), name))


SELECT_SEALED = "SELECT id, user_id, base_url, api_key_encrypted FROM shared_keys WHERE id = $1"


def open_row(keyring: KeyRing, row: asyncpg.Record) -> str:
    """The key of a `shared_keys` row (id, user_id, base_url, api_key_encrypted) in the clear.

    Raises `SealError` when the ciphertext does not open for its row (fail closed)."""
    return keyring.open(
        row["api_key_encrypted"], key_id=str(row["id"]), owner_id=str(row["user_id"]), base_url=row["base_url"]
    )


async def open_key(conn: asyncpg.Connection, keyring: KeyRing, key_id: str) -> str | None:
    """The stored key in the clear, to test it again; None when the row is gone.

    Raises `SealError` when the ciphertext does not open for its row (fail closed)."""
    row = await conn.fetchrow(SELECT_SEALED, uuid.UUID(key_id))
    if row is None:
        return None
    return open_row(keyring, row)


@dataclass(frozen=True, slots=True)
class KeyEdit:
    """Every editable column's new value (unchanged ones carried over by the caller)."""

    name: str
    base_url: str  # already normalised and checked
    available_models: list[str]
    daily_limit: int
    description: str | None
    tags: list[str]
    is_active: bool
    is_private: bool
    stream_usage: bool
    api_format: str  # openai | anthropic; a change is tested live, like a new key
    daily_budget_usd: Decimal | None = None
    api_key: str | None = field(default=None, repr=False)  # None: keep the sealed key as it is
    reactivate: bool = False  # the key just passed a live test: back to `active`, reason cleared


# The last condition refuses a new base URL under the old ciphertext: that ciphertext is bound
# to the old URL's origin, and the contract asks for the key again whenever the URL changes.
UPDATE_KEY = """
UPDATE shared_keys
SET name = $3, base_url = $4, available_models = $5, daily_limit = $6, description = $7, tags = $8,
    is_active = $9, is_private = $10, stream_usage = $11, api_format = $16, daily_budget_usd = $17,
    api_key_encrypted = coalesce($12, api_key_encrypted),
    key_version = coalesce($13, key_version),
    api_key_hint = coalesce($14, api_key_hint),
    key_fingerprint = coalesce($18, key_fingerprint),
    status = CASE WHEN $15 THEN 'active' ELSE status END,
    status_reason = CASE WHEN $15 THEN NULL ELSE status_reason END,
    disabled_by = CASE WHEN $15 THEN NULL ELSE disabled_by END,
    spent_until = CASE WHEN $15 THEN NULL ELSE spent_until END,
    auth_cooldowns = CASE WHEN $15 THEN 0 ELSE auth_cooldowns END,
    updated_at = now()
WHERE id = $1 AND user_id = $2 AND ($12::text IS NOT NULL OR base_url = $4)
RETURNING id
"""


async def update_key(
    conn: asyncpg.Connection, keyring: KeyRing, key_id: str, owner_id: str, edit: KeyEdit, *, timezone: str
) -> SharedKey | None:
    """Write an edit; a new key is sealed again for this row, its owner and its (new) base URL.

    None when the row is gone, is not the owner's, or the base URL changed without a new key.
    Raises `KeyNameTaken`, or `DuplicateKey` when the new key is another row's."""
    sealed = kid = hint = fingerprint = None
    if edit.api_key is not None:
        sealed = keyring.seal(edit.api_key, key_id=key_id, owner_id=owner_id, base_url=edit.base_url)
        kid, hint, fingerprint = keyring.current_kid, mask(edit.api_key), keyring.fingerprint(edit.api_key)
    try:
        updated = await conn.fetchval(
            UPDATE_KEY,
            uuid.UUID(key_id),
            uuid.UUID(owner_id),
            edit.name,
            edit.base_url,
            edit.available_models,
            edit.daily_limit,
            edit.description,
            edit.tags,
            edit.is_active,
            edit.is_private,
            edit.stream_usage,
            sealed,
            kid,
            hint,
            edit.reactivate,
            edit.api_format,
            edit.daily_budget_usd,
            fingerprint,
        )
    except asyncpg.UniqueViolationError as e:
        raise _unique_violation(e, edit.name) from None
    if updated is None:
        return None
    return await get_key(conn, key_id, timezone=timezone)


# Usage rows stay: key_usage_logs.shared_key_id is ON DELETE SET NULL and donor_id keeps the credit.
DELETE_KEY = "DELETE FROM shared_keys WHERE id = $1 AND user_id = $2"


async def delete_key(conn: asyncpg.Connection, key_id: str, owner_id: str) -> bool:
    """Delete the row, and its ciphertext with it; False when there was nothing of the owner's to delete."""
    result = await conn.execute(DELETE_KEY, uuid.UUID(key_id), uuid.UUID(owner_id))
    return result != "DELETE 0"


FIND_KEY_ID = """
SELECT k.id FROM shared_keys k JOIN users u ON u.id = k.user_id WHERE u.username = $1 AND k.name = $2
"""


async def find_key_id(conn: asyncpg.Connection, username: str, name: str) -> str | None:
    key_id = await conn.fetchval(FIND_KEY_ID, username, name)
    return str(key_id) if key_id else None


DISABLE_KEY = """
UPDATE shared_keys SET status = 'disabled', status_reason = $2, disabled_by = $3, updated_at = now()
WHERE id = $1
RETURNING id
"""


async def disable_key(
    conn: asyncpg.Connection, key_id: str, reason: str, *, by: DisabledBy = DisabledBy.OPERATOR
) -> bool:
    """An operator's stop (by default): out of the pool until its owner resumes it and it passes a
    live test; no health check revives it, whatever `reason` says."""
    return await conn.fetchval(DISABLE_KEY, uuid.UUID(key_id), reason, by) is not None
