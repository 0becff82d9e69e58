"""Validating the fields of `/api/shared-keys` bodies: each rule names its field (422).

`validate(body, KEY_FIELDS)` checks and cleans a body, refusing unknown and missing fields by
name; `checked_base_url` adds the SSRF registration check of the configured policy. `sharekey
keys add` builds its input through the same two, so the CLI stores nothing the API would refuse.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from aiohttp import web

from gateway.apiformat import API_FORMATS, ApiFormat
from gateway.config import Config
from gateway.errors import ApiError, invalid
from gateway.net import ssrf
from gateway.store import modelnames


async def read_object(request: web.Request) -> dict[str, Any]:
    raw = await request.read()  # over limits.max_body_bytes: aiohttp raises 413, rendered by the middleware
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the parser's stack
        raise ApiError(400, "invalid_json", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise ApiError(400, "invalid_json", "The request body must be a JSON object.")
    return body


CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SENDABLE_KEY = re.compile(r"[\x21-\x7e]{1,512}")  # what can go in an Authorization header


def _text(field: str, value: Any, *, low: int, high: int) -> str:
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    value = value.strip()
    if not low <= len(value) <= high:
        raise invalid(field, f"{field} must be {low} to {high} characters" if low else f"{field} is too long")
    if CONTROL.search(value):
        raise invalid(field, f"{field} must not contain control characters")
    return value


def _name(field: str, value: Any) -> str:
    return _text(field, value, low=1, high=64)


def _base_url(field: str, value: Any) -> str:
    # Only the shape here; `checked_base_url` applies the SSRF policy once the config is at hand.
    return _text(field, value, low=1, high=2048)


def _api_key(field: str, value: Any) -> str:
    # Never echo the value: the messages name the rule only.
    if not isinstance(value, str):
        raise invalid(field, f"{field} must be a string")
    value = value.strip()
    if not SENDABLE_KEY.fullmatch(value):
        raise invalid(field, f"{field} must be 1 to 512 printable characters, without spaces")
    return value


def _list(field: str, value: Any, *, low: int, high: int, item_max: int) -> list[str]:
    """Strings trimmed, empty ones refused, duplicates dropped (first one kept)."""
    if not isinstance(value, list):
        raise invalid(field, f"{field} must be a list of strings")
    if not low <= len(value) <= high:
        raise invalid(field, f"{field} must have {low} to {high} entries" if low else f"{field} has too many entries")
    out: list[str] = []
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise invalid(field, f"every entry of {field} must be a non-empty string")
        item = item.strip()
        if len(item) > item_max:
            raise invalid(field, f"every entry of {field} must be at most {item_max} characters")
        if CONTROL.search(item):
            raise invalid(field, f"{field} must not contain control characters")
        if item not in out:
            out.append(item)
    return out


def _models(field: str, value: Any) -> list[str]:
    """Names, or `public=upstream` pairs (see `modelnames`); a public name at most once."""
    out: list[str] = []
    seen: set[str] = set()
    for entry in _list(field, value, low=1, high=100, item_max=2 * modelnames.MAX_NAME + 1):
        why = modelnames.problem(entry)
        if why:
            raise invalid(field, why)
        public, upstream = modelnames.split(entry)
        if public in seen:
            raise invalid(field, f"{field} names {public!r} more than once")
        seen.add(public)
        out.append(modelnames.join(public, upstream))
    return out


def _tags(field: str, value: Any) -> list[str]:
    return [] if value is None else _list(field, value, low=0, high=10, item_max=32)


def _description(field: str, value: Any) -> str | None:
    return None if value is None else (_text(field, value, low=0, high=500) or None)


def _whole(field: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):  # bool is an int in Python; not in JSON
        raise invalid(field, f"{field} must be a whole number")
    if not low <= value <= high:
        raise invalid(field, f"{field} must be between {low} and {high}")
    return value


def _daily_limit(field: str, value: Any) -> int:
    return _whole(field, value, 1, 1_000_000)


# A donor's rules (store/keyrules.py stores and shows them; the balancer keeps the caps).


def _cap(field: str, value: Any) -> int | None:
    return None if value is None else _whole(field, value, 1, 10_000_000)


def _trust_level(field: str, value: Any) -> int:
    return _whole(field, value, 0, 4)


def _per_model(field: str, value: Any) -> dict[str, int]:
    """{model: calls a day}; whether the key serves each model is checked with its models."""
    if value is None:
        return {}
    if not isinstance(value, dict) or len(value) > 100:
        raise invalid(field, f"{field} must be an object of at most 100 models and their daily calls")
    return {str(m): _whole(field, n, 1, 1_000_000) for m, n in value.items()}


def _names(field: str, value: Any) -> list[str]:
    return [] if value is None else _list(field, value, low=0, high=500, item_max=64)


def _upstream_kind(field: str, value: Any) -> str:
    if value not in ("provider", "relay"):
        raise invalid(field, f"{field} must be provider or relay (the base URL is another pool or gateway)")
    return value


def _budget(field: str, value: Any) -> Decimal | None:
    """USD a day, or null for none: more than 0, at most 1,000,000, whole cents."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise invalid(field, f"{field} must be a number of dollars, or null for none")
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise invalid(field, f"{field} must be a number of dollars, or null for none") from None
    if not amount.is_finite() or not 0 < amount <= 1_000_000:
        raise invalid(field, f"{field} must be more than 0 and at most 1000000")
    if amount != amount.quantize(Decimal("0.01")):
        raise invalid(field, f"{field} must have at most 2 decimals")
    return amount.quantize(Decimal("0.01"))


def _flag(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(field, f"{field} must be true or false")
    return value


def _model(field: str, value: Any) -> str:
    return _text(field, value, low=1, high=200)


def _api_format(field: str, value: Any) -> str:
    if not isinstance(value, str) or value.strip() not in API_FORMATS:
        raise invalid(field, f"{field} must be openai, anthropic or gemini")
    return value.strip()


Validator = Callable[[str, Any], Any]
KEY_FIELDS: dict[str, Validator] = {
    "name": _name,
    "base_url": _base_url,
    "api_key": _api_key,
    "available_models": _models,
    "daily_limit": _daily_limit,
    "daily_budget_usd": _budget,  # null: none
    "description": _description,
    "tags": _tags,
    "is_private": _flag,
    "stream_usage": _flag,
    "api_format": _api_format,  # default openai
    # the donor's caps and audience; null clears a cap (store/keyrules.py)
    "rpm_limit": _cap,
    "tpm_limit": _cap,
    "max_concurrent": _cap,
    "model_daily_limits": _per_model,
    "min_trust_level": _trust_level,
    "allowed_users": _names,
    "allowed_features": _names,
    "upstream_kind": _upstream_kind,  # provider (default) | relay
}
KEY_REQUIRED = ("name", "base_url", "api_key", "available_models")  # of a new key
IMPORT_MAX = 500  # keys in one bulk import


def _name_prefix(field: str, value: Any) -> str:
    return _text(field, value, low=1, high=48)  # room for "-<n>" within a name's 64


def _keys(field: str, value: Any) -> list[Any]:
    """Only the list here: each entry is checked on its own (`key_entry`), and a bad one fails alone."""
    if not isinstance(value, list) or not 1 <= len(value) <= IMPORT_MAX:
        raise invalid(field, f"{field} must be a list of 1 to {IMPORT_MAX} keys")
    return value


def key_entry(value: Any) -> str:
    """One key of a bulk import, by the api_key rule (the message names the rule, never the value)."""
    return _api_key("key", value)


# A bulk import: the fields of a new key that all its keys share, a name prefix, and the keys.
IMPORT_FIELDS: dict[str, Validator] = {
    **{name: check for name, check in KEY_FIELDS.items() if name not in ("name", "api_key")},
    "name_prefix": _name_prefix,  # default "imported": names imported-1, imported-2, …
    "keys": _keys,
}
IMPORT_REQUIRED = ("base_url", "available_models", "keys")
EDIT_FIELDS: dict[str, Validator] = {**KEY_FIELDS, "is_active": _flag}
TEST_FIELDS: dict[str, Validator] = {
    "base_url": _base_url,
    "api_key": _api_key,
    "model": _model,
    "api_format": _api_format,
}


def validate(body: dict[str, Any], fields: dict[str, Validator], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The body's fields, checked and cleaned; unknown and missing fields are refused by name."""
    for name in body:
        if name not in fields:
            shown = name if len(name) <= 64 else name[:64] + "…"
            raise invalid(shown, f"unknown field {shown!r}")
    for name in required:
        if name not in body:
            raise invalid(name, f"{name} is required")
    return {name: check(name, body[name]) for name, check in fields.items() if name in body}


def checked_base_url(
    config: Config, url: str, *, allow_private: bool | None = None, api_format: str = ApiFormat.OPENAI
) -> str:
    """The normalised URL, or a 422 naming base_url; `allow_private` overrides the configuration.
    A bare origin gets its format's path: /v1, or /v1beta for a `gemini` key."""
    security = config.security
    if allow_private is None:
        allow_private = security.allow_private_upstreams
    bare = "/v1beta" if api_format == ApiFormat.GEMINI else "/v1"
    try:
        return ssrf.check_base_url(
            url, allow_http=security.allow_http_upstreams, allow_private=allow_private, bare=bare
        )
    except ssrf.UnsafeUpstream as e:
        raise invalid("base_url", e.message) from None
