"""A donor's rules for their key as `/api/shared-keys` takes, stores and shows them (DESIGN.md
"Donors' rules for their keys"); `keyfields` checks each field (422 naming it).

The relay reads the same columns (`relay/rules.py`); the balancer enforces the caps.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from gateway.errors import invalid
from gateway.store import modelnames

DEFAULTS: dict[str, Any] = {  # every rule, and its value on a key that sets none
    "rpm_limit": None,
    "tpm_limit": None,
    "max_concurrent": None,
    "model_daily_limits": {},
    "min_trust_level": 0,
    "allowed_users": [],
    "allowed_features": [],
    "upstream_kind": "provider",
}


def of_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The rules of a stored key, as `GET /api/shared-keys` items carry them."""
    rules = {name: row[name] for name in DEFAULTS}
    limits = rules["model_daily_limits"]
    rules["model_daily_limits"] = json.loads(limits) if isinstance(limits, str) else dict(limits or {})
    rules["allowed_users"], rules["allowed_features"] = list(rules["allowed_users"]), list(rules["allowed_features"])
    return rules


def merged(
    fields: Mapping[str, Any], current: Mapping[str, Any], models: Sequence[str], allowed: Sequence[str]
) -> dict:
    """The rules after an edit (or of a new key, `current` = DEFAULTS), checked against the key's
    models (public names) and the operator's `upstream.allowed_features`."""
    rules = {name: fields.get(name, current[name]) for name in DEFAULTS}
    public = {modelnames.split(m)[0] for m in models}
    for model in rules["model_daily_limits"]:
        if model not in public:
            raise invalid(
                "model_daily_limits", f"model_daily_limits names {model[:64]!r}, which the key does not serve"
            )
    for feature in rules["allowed_features"]:
        if feature not in allowed:
            raise invalid("allowed_features", f"{feature[:64]!r} is not a paid feature this gateway allows")
    return rules


SET_RULES = """
UPDATE shared_keys
SET rpm_limit = $2, tpm_limit = $3, max_concurrent = $4, model_daily_limits = $5::jsonb,
    min_trust_level = $6, allowed_users = $7, allowed_features = $8, upstream_kind = $9,
    auth_cooldowns = CASE WHEN upstream_kind = $9 THEN auth_cooldowns ELSE 0 END
WHERE id = $1
"""


async def store(conn: asyncpg.Connection, key_id: str, rules: Mapping[str, Any]) -> None:
    await conn.execute(
        SET_RULES,
        uuid.UUID(key_id),
        rules["rpm_limit"],
        rules["tpm_limit"],
        rules["max_concurrent"],
        json.dumps(rules["model_daily_limits"]),
        rules["min_trust_level"],
        rules["allowed_users"],
        rules["allowed_features"],
        rules["upstream_kind"],
    )
