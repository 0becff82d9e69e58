"""The options of `sharekey keys add` and `keys edit` as the `/api/shared-keys` fields they fill.

Each option's text becomes the JSON value the API would take (`none` for a cap's null, commas for
a list, one `MODEL=N` per model) and is checked by the API's own rules (`store.keyfields`,
`store.keyrules`), so the command line stores nothing the API would refuse. A refusal names the
option and ends the command with exit code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from gateway.config import Config
from gateway.errors import ApiError
from gateway.ops.command import UsageError
from gateway.store import keyfields

# The options by the field of `/api/shared-keys` they fill.
KEY_OPTIONS = {
    "name": "--name",
    "base_url": "--base-url",
    "api_key": "--api-key",
    "available_models": "--models",
    "daily_limit": "--daily-limit",
    "daily_budget_usd": "--daily-budget-usd",
    "description": "--description",
    "tags": "--tags",
    "is_private": "--private",
    "stream_usage": "--no-stream-usage",
    "api_format": "--api-format",
    "rpm_limit": "--rpm-limit",
    "tpm_limit": "--tpm-limit",
    "max_concurrent": "--max-concurrent",
    "model_daily_limits": "--model-daily-limit",
    "min_trust_level": "--min-trust-level",
    "allowed_users": "--allowed-users",
    "allowed_features": "--allowed-features",
    "name_prefix": "--name-prefix",
    "keys": "standard input",
}
CAPS = ("rpm_limit", "tpm_limit", "max_concurrent", "min_trust_level")  # one whole number each
LISTS = ("allowed_users", "allowed_features")
NONE = "none"  # a cap's null: no such cap
WHOLE = re.compile(r"[+-]?\d{1,18}")


def add_rule_options(p: argparse.ArgumentParser) -> None:
    """The donor's rules (README "Donors' rules"), the same on `keys add` and `keys edit`."""
    rules = p.add_argument_group("the donor's rules", 'README "Donors\' rules"; none clears a cap')
    rules.add_argument("--rpm-limit", metavar="N|none", help="calls started in any 60 seconds, at most")
    rules.add_argument("--tpm-limit", metavar="N|none", help="tokens used in any 60 seconds, at most")
    rules.add_argument("--max-concurrent", metavar="N|none", help="calls in flight at once, at most")
    rules.add_argument(
        "--model-daily-limit",
        metavar="MODEL=N",
        action="append",
        default=[],
        help="calls a day for one of the key's models (repeatable; MODEL=none drops it)",
    )
    rules.add_argument("--min-trust-level", metavar="0-4", help="callers of a lower trust level are not served")
    rules.add_argument("--allowed-users", metavar="A,B", help="serve only these usernames ('' : everyone)")
    rules.add_argument("--allowed-features", metavar="X,Y", help="paid features the key may serve ('' : none)")


@contextmanager
def options_named(options: Mapping[str, str] = KEY_OPTIONS) -> Iterator[None]:
    """An `/api/shared-keys` refusal (a 422 naming its field) as a usage error naming the option:
    `--models: must have 1 to 100 entries` for the API's `available_models must have …`.
    `options`: the fields' options (`tokenoptions` passes those of `tokens create`)."""
    try:
        yield
    except ApiError as e:
        field = e.field or ""
        option = options.get(field, field)
        message = e.message.removeprefix(f"{field} ").replace(f"every entry of {field} ", "every entry ")
        raise UsageError(f"{option}: {message}") from None


def comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def whole(text: str) -> Any:
    """`none` is null; a whole number is that number; anything else goes on as text, for the
    API's rule to refuse by name ("must be a whole number")."""
    text = text.strip()
    if text.lower() == NONE:
        return None
    return int(text) if WHOLE.fullmatch(text) else text


def given_api_key(args: argparse.Namespace) -> str:
    """`--api-key KEY`, or `--api-key -`: the first line of standard input."""
    key = sys.stdin.readline() if args.api_key == "-" else args.api_key
    key = key.strip()
    if not key:
        piped = " (nothing on standard input)" if args.api_key == "-" else ""
        raise UsageError(f"--api-key: the key is empty{piped}")
    return key


def rules_given(args: argparse.Namespace, limits: Mapping[str, int]) -> dict[str, Any]:
    """The rule options given, as a JSON body carries them. `--model-daily-limit` changes only
    the models it names in `limits` (the key's, or {} for a new key)."""
    body: dict[str, Any] = {}
    for field in CAPS:
        if getattr(args, field) is not None:
            body[field] = whole(getattr(args, field))
    for field in LISTS:
        if getattr(args, field) is not None:
            body[field] = comma_list(getattr(args, field))
    if args.model_daily_limit:
        per_model: dict[str, Any] = dict(limits)
        for entry in args.model_daily_limit:
            model, equals, calls = (part.strip() for part in entry.partition("="))
            if not equals or not model:
                raise UsageError(f"--model-daily-limit: {entry!r} is not MODEL=N (N a whole number, or none)")
            per_model[model] = whole(calls)
            if per_model[model] is None:
                del per_model[model]
        body["model_daily_limits"] = per_model
    return body


def _new_key_body(args: argparse.Namespace) -> dict[str, Any]:
    """The options of a new key that `keys add` and `keys import` share, as a JSON body."""
    body: dict[str, Any] = {
        "base_url": args.base_url,
        "available_models": comma_list(args.models),
        "daily_limit": args.daily_limit,
        "tags": comma_list(args.tags),
        "is_private": args.private,
        "stream_usage": not args.no_stream_usage,
        **rules_given(args, {}),
    }
    for field in ("description", "api_format", "daily_budget_usd"):
        if getattr(args, field) is not None:
            body[field] = getattr(args, field)
    return body


def _checked(config: Config, body: dict[str, Any], fields: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    with options_named():
        checked = keyfields.validate(body, fields, required)
        checked.setdefault("api_format", "openai")
        checked["base_url"] = keyfields.checked_base_url(config, checked["base_url"], api_format=checked["api_format"])
    return checked


def new_key_fields(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """The options of `keys add`, checked and cleaned as `POST /api/shared-keys` checks its body."""
    body = {"name": args.name, "api_key": given_api_key(args), **_new_key_body(args)}
    return _checked(config, body, keyfields.KEY_FIELDS, keyfields.KEY_REQUIRED)


def import_fields(config: Config, args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    """The options of `keys import` and the keys read, checked as `POST /api/shared-keys/import`
    checks its body (the keys as a list only: each is checked on its own)."""
    body = {**_new_key_body(args), "keys": keys}
    if args.name_prefix is not None:
        body["name_prefix"] = args.name_prefix
    return _checked(config, body, keyfields.IMPORT_FIELDS, keyfields.IMPORT_REQUIRED)


def edit_fields(args: argparse.Namespace, limits: Mapping[str, int]) -> dict[str, Any]:
    """The options of `keys edit` that were given, checked as `PUT /api/shared-keys` checks them."""
    body: dict[str, Any] = rules_given(args, limits)
    if args.name is not None:
        body["name"] = args.name
    if args.models is not None:
        body["available_models"] = comma_list(args.models)
    if args.daily_limit is not None:
        body["daily_limit"] = whole(args.daily_limit)
    if args.daily_budget_usd is not None:
        budget = args.daily_budget_usd.strip()
        body["daily_budget_usd"] = None if budget.lower() == NONE else budget
    if args.description is not None:
        body["description"] = args.description
    if args.tags is not None:
        body["tags"] = comma_list(args.tags)
    if not body:
        raise UsageError("nothing to change: give at least one option (sharekey keys edit --help)")
    with options_named():
        return keyfields.validate(body, keyfields.KEY_FIELDS)


def given_api_format(args: argparse.Namespace) -> str:
    """`--api-format`, checked by the API's rule; openai when not given."""
    if args.api_format is None:
        return "openai"
    with options_named():
        checked = keyfields.validate({"api_format": args.api_format}, keyfields.TEST_FIELDS)
    return str(checked["api_format"])
