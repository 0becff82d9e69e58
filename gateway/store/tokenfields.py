"""Validating a gateway token's fields (`POST /api/tokens`, `sharekey tokens create`): each rule
names its field (422), and the shared rules are `keyfields`' own (a budget is a key's budget).

    label               text, at most 64 characters ('' or null: none)
    models              names or aliases the token may ask for (null or []: every model)
    expires_at          ISO 8601 with a zone, in the future; null: never
    daily_requests      calls a day, a positive whole number; null: no cap
    requests_per_minute calls in any 60 seconds; null: no cap
    daily_budget_usd    estimated USD a day (keyfields' budget rule); null: none
    allowed_ips         CIDRs or single addresses (null or []: any address)

`validate(body)` refuses an unknown field by name and returns the columns of sql/0017.
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any

from gateway.errors import invalid
from gateway.store import keyfields, modelnames

LABEL_MAX = 64
MAX_MODELS = 100
MAX_IPS = 50


def _label(field: str, value: Any) -> str:
    return "" if value is None else keyfields._text(field, value, low=0, high=LABEL_MAX)


def _models(field: str, value: Any) -> list[str]:
    if value is None:
        return []
    names = keyfields._list(field, value, low=0, high=MAX_MODELS, item_max=modelnames.MAX_NAME)
    for name in names:
        if "=" in name:
            raise invalid(field, f"{field} names models callers ask for (no '=')")
    return names


def _expires_at(field: str, value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be an ISO 8601 date and time with a zone, or null for never")
    try:
        when = datetime.fromisoformat(value.strip())
    except ValueError:
        raise invalid(field, f"{field} must be an ISO 8601 date and time with a zone, or null for never") from None
    if when.tzinfo is None:
        raise invalid(field, f"{field} needs a zone (Z or +08:00, say)")
    if when <= datetime.now(UTC):
        raise invalid(field, f"{field} is in the past")
    return when


def _per_day(field: str, value: Any) -> int | None:
    return keyfields._cap(field, value)


def _allowed_ips(field: str, value: Any) -> list[str]:
    """Each entry a network as PostgreSQL's cidr keeps it: `10.0.0.7` is `10.0.0.7/32`; host
    bits under the mask (`10.0.0.7/8`) are refused rather than silently dropped."""
    if value is None:
        return []
    out: list[str] = []
    for entry in keyfields._list(field, value, low=0, high=MAX_IPS, item_max=64):
        try:
            network = ipaddress.ip_network(entry)
        except ValueError:
            why = f"{field} entry {entry!r} is not an address or a CIDR (host bits under the mask?)"
            raise invalid(field, why) from None
        if str(network) not in out:
            out.append(str(network))
    return out


TOKEN_FIELDS: dict[str, keyfields.Validator] = {
    "label": _label,
    "models": _models,
    "expires_at": _expires_at,
    "daily_requests": _per_day,
    "requests_per_minute": _per_day,
    "daily_budget_usd": keyfields._budget,
    "allowed_ips": _allowed_ips,
}


def validate(body: dict[str, Any]) -> dict[str, Any]:
    """The body's fields checked and cleaned, every field present (missing ones at their
    'no limit' value), in `TOKEN_FIELDS` order: what `tokens.create` stores."""
    fields = keyfields.validate(body, TOKEN_FIELDS)
    return {name: fields[name] if name in fields else check(name, None) for name, check in TOKEN_FIELDS.items()}
