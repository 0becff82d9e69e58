"""`sharekey keys …`: add, edit, list, test and disable donated keys.

`keys add` and `keys edit` take their options by the API's own rules (`keyoptions`), so the
command line stores nothing that `/api/shared-keys` would refuse; a refusal names the option.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from gateway.config import Config
from gateway.net import ssrf
from gateway.ops import keyoptions
from gateway.ops.command import CliError, UsageError, announce, command, find_user
from gateway.ops.keyoptions import given_api_format, given_api_key
from gateway.relay import prices
from gateway.store import keyimport, keyrules, modelnames, sharedkeys
from gateway.store.crypto import KeyRing, SealError

API_KEY_HELP = "the key; - reads it from standard input (keeps it out of ps and shell history)"
API_FORMAT_HELP = (
    "how the upstream is called: openai (the default; Bearer, /chat/completions), anthropic (x-api-key, /messages)"
    " or gemini (x-goog-api-key, /models/{model}:generateContent)"
)
BUDGET_HELP = "USD a day at most (estimated from the models' prices); reached, the key rests"


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """The `keys` command and its actions, under the top-level parser's subcommands; returns the
    actions' subparsers, where `cli_import` adds `keys import`."""
    keys_p = sub.add_parser("keys", help="manage donated keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = keys_p.add_parser("add", help="add a key (tested live first unless --no-test)", parents=[verbose])
    p.add_argument("--user", required=True, help="the owner's name")
    p.add_argument("--name", required=True, help="a name for the key, unique per owner")
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True, help=API_KEY_HELP)
    add_new_key_options(p)
    p.set_defaults(func=command(run_keys_add))

    p = keys_p.add_parser(
        "edit", help="change a key's settings or rules; only the options given change", parents=[verbose]
    )
    p.add_argument("key_id", metavar="KEY_ID", help="the key's id (keys add prints it)")
    p.add_argument("--name", help="a new name, unique per owner")
    p.add_argument("--models", help="comma-separated model names (new ones are tested live unless --no-test)")
    p.add_argument("--daily-limit", metavar="N")
    p.add_argument("--daily-budget-usd", metavar="USD|none", help=BUDGET_HELP)
    p.add_argument("--description", help="'' clears it")
    p.add_argument("--tags", help="comma-separated ('' clears them)")
    p.add_argument("--no-test", action="store_true", help="store new models without the live test")
    keyoptions.add_rule_options(p)
    p.set_defaults(func=command(run_keys_edit))

    p = keys_p.add_parser("list", help="list every key, masked", parents=[verbose])
    p.set_defaults(func=command(run_keys_list))

    p = keys_p.add_parser(
        "test", help="test a base URL and key live; prints {ok, latency_ms, models, error}", parents=[verbose]
    )
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True, help=API_KEY_HELP)
    p.add_argument("--model", help="the model to try (default: the first the upstream lists)")
    p.add_argument("--api-format", metavar="openai|anthropic|gemini", help=API_FORMAT_HELP)
    p.set_defaults(func=run_keys_test)

    p = keys_p.add_parser("disable", help="take a key out of the pool until its owner resumes it", parents=[verbose])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the key's id")
    which.add_argument("--name", help="the key's name (with --user)")
    p.add_argument("--user", help="the owner's name (with --name)")
    p.add_argument("--reason", default="disabled by an administrator", help="shown to the key's owner")
    p.set_defaults(func=command(run_keys_disable))
    return keys_p


def add_new_key_options(p: argparse.ArgumentParser) -> None:
    """What a new key is given besides its name and key: `keys add` and `keys import` alike."""
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--daily-limit", type=int, default=150)
    p.add_argument("--daily-budget-usd", help=BUDGET_HELP)
    p.add_argument("--description")
    p.add_argument("--tags", default="", help="comma-separated")
    p.add_argument("--private", action="store_true", help="the owner's own fallback key, never shared")
    p.add_argument("--no-stream-usage", action="store_true", help="the upstream rejects stream_options")
    p.add_argument("--api-format", metavar="openai|anthropic|gemini", help=API_FORMAT_HELP)
    p.add_argument("--no-test", action="store_true", help="store without the live test")
    keyoptions.add_rule_options(p)


def _checked_base_url(config: Config, url: str, api_format: str) -> str:
    try:
        return ssrf.check_base_url(
            url,
            allow_http=config.security.allow_http_upstreams,
            allow_private=config.security.allow_private_upstreams,
            bare="/v1beta" if api_format == "gemini" else "/v1",
        )
    except ssrf.UnsafeUpstream as e:
        raise UsageError(f"--base-url: {e.message}") from None


async def require_prices(config: Config, conn: asyncpg.Connection, models: Sequence[str]) -> None:
    """A budget is kept in money: a model of the key without a price would never count toward it."""
    known = prices.Prices(None, {m: prices.Price.configured(p) for m, p in config.prices.items()})
    known.admin = await prices.admin_prices(conn)
    name = prices.unpriced(known, list(models))
    if name is not None:
        raise UsageError(f"--daily-budget-usd: no price is known for the model {name!r}, so a budget cannot be kept")


async def live_test(config: Config, base_url: str, api_key: str, models: Sequence[str], api_format: str) -> None:
    """The live test of `keys add` (and of new models in `keys edit`): a failure ends the command."""
    from gateway.net import h1, keytest  # only these commands need an HTTP client

    pool = h1.create_pool(config)
    try:
        result = await keytest.test_key(
            pool,
            base_url,
            api_key,
            modelnames.upstream_names(list(models)),
            timeout=config.upstream.test_timeout,
            api_format=api_format,
        )
    finally:
        await pool.close()
    if not result.ok:
        raise CliError(f"the key failed its live test: {result.error}")
    print(f"live test passed in {result.latency_ms} ms", file=sys.stderr)


def checked_rules(
    config: Config, fields: Mapping[str, Any], current: Mapping[str, Any], models: Sequence[str]
) -> dict[str, Any]:
    """The key's rules after the options given, checked against its models as the API checks them."""
    with keyoptions.options_named():
        return keyrules.merged(fields, current, models, config.upstream.allowed_features)


def keyring_of(config: Config) -> KeyRing:
    return KeyRing(config.security.key_encryption_secret, config.security.old_key_encryption_secrets)


async def run_keys_add(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    fields = keyoptions.new_key_fields(config, args)
    base_url, api_key, models = fields["base_url"], fields["api_key"], fields["available_models"]
    api_format = fields["api_format"]
    rules = checked_rules(config, fields, keyrules.DEFAULTS, models)
    user = await find_user(conn, args.user)
    if fields.get("daily_budget_usd") is not None:
        await require_prices(config, conn, models)
    keyring = keyring_of(config)
    if await keyimport.already_shared(conn, keyring, [api_key]):  # before a live test: it would cost one
        raise CliError(f"--api-key: {sharedkeys.DUPLICATE}")
    if not args.no_test:
        await live_test(config, base_url, api_key, models, api_format)
    new = keyimport.new_key(user.id, fields["name"], api_key, fields)
    try:
        key = await keyimport.add_key(conn, keyring, new, rules, timezone=config.balancer.timezone)
    except sharedkeys.KeyNameTaken as e:
        raise CliError(str(e)) from None
    except sharedkeys.DuplicateKey as e:
        raise CliError(f"--api-key: {e}") from None
    await announce(config, "keys", key.id)
    print(key.id)


async def run_keys_edit(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    """Only the options given change; the rest of the key, its rules included, stays as it is."""
    key = await sharedkeys.get_key(conn, args.key_id, timezone=config.balancer.timezone)
    if key is None:
        raise CliError(f"no key with id {args.key_id!r}")
    fields = keyoptions.edit_fields(args, key.rules["model_daily_limits"])
    models = fields.get("available_models", key.available_models)
    rules = checked_rules(config, fields, key.rules, models)
    budget = fields.get("daily_budget_usd", key.daily_budget_usd)
    if budget is not None and {"daily_budget_usd", "available_models"} & set(fields):
        await require_prices(config, conn, models)
    keyring = keyring_of(config)
    if set(models) - set(key.available_models) and not args.no_test:  # as PUT /api/shared-keys does
        try:
            stored = await sharedkeys.open_key(conn, keyring, key.id)
        except SealError:
            raise CliError("the stored key can no longer be read; add it again") from None
        await live_test(config, key.base_url, stored or "", models, key.api_format)
    edit = sharedkeys.KeyEdit(
        name=fields.get("name", key.name),
        base_url=key.base_url,
        available_models=models,
        daily_limit=fields.get("daily_limit", key.daily_limit),
        daily_budget_usd=budget,
        description=fields["description"] if "description" in fields else key.description,
        tags=fields.get("tags", key.tags),
        is_active=key.is_active,
        is_private=key.is_private,
        stream_usage=key.stream_usage,
        api_format=key.api_format,
    )
    try:
        async with conn.transaction():
            updated = await sharedkeys.update_key(
                conn, keyring, key.id, key.owner_id, edit, timezone=config.balancer.timezone
            )
            if updated is not None and rules != key.rules:
                await keyrules.store(conn, key.id, rules)
    except sharedkeys.KeyNameTaken:
        raise CliError(f"--name: {key.owner} already has a key named {edit.name!r}") from None
    if updated is None:
        raise CliError("the key was deleted in the meantime")
    await announce(config, "keys", key.id)
    print(key.id)


def rules_text(rules: Mapping[str, Any]) -> str:
    """A key's rules in one cell of `keys list`, named as the options that set them; - for none."""
    parts = [f"{name.replace('_', '-')}={rules[name]}" for name in keyoptions.CAPS if rules[name]]
    parts += [f"{model}={n}/day" for model, n in sorted(rules["model_daily_limits"].items())]
    parts += [f"{name.replace('_', '-')}={','.join(rules[name])}" for name in keyoptions.LISTS if rules[name]]
    return " ".join(parts) or "-"


async def run_keys_list(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    keys = await sharedkeys.list_keys(conn, timezone=config.balancer.timezone)
    header = ("OWNER", "NAME", "UPSTREAM", "FORMAT", "MODELS", "LIMIT", "TODAY", "TOTAL", "STATUS", "KEY", "RULES")
    rows = [
        (
            k.owner,
            k.name,
            k.host,
            k.api_format,
            ",".join(k.available_models),
            str(k.daily_limit),
            str(k.usage_count_today),
            str(k.total_usage_count),
            k.status + (" (private)" if k.is_private else ""),
            k.api_key_masked,
            rules_text(k.rules),
        )
        for k in keys
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


def run_keys_test(config: Config, args: argparse.Namespace) -> int:
    """The live test alone: needs no database, so it starts no embedded servers."""
    import json

    from gateway.net import h1, keytest  # only this command and `keys add` need an HTTP client

    api_format = given_api_format(args)
    base_url = _checked_base_url(config, args.base_url, api_format)
    api_key = given_api_key(args)
    models = [args.model.strip()] if args.model and args.model.strip() else None

    async def test() -> keytest.KeyTestResult:
        pool = h1.create_pool(config)
        try:
            return await keytest.test_key(
                pool, base_url, api_key, models, timeout=config.upstream.test_timeout, api_format=api_format
            )
        finally:
            await pool.close()

    result = asyncio.run(test())
    shown = {"ok": result.ok, "latency_ms": result.latency_ms, "models": result.models, "error": result.error}
    print(json.dumps(shown))
    if not result.ok:
        raise CliError(f"the key failed its live test: {result.error}")
    return 0


async def run_keys_disable(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    if args.id:
        key = await sharedkeys.get_key(conn, args.id, timezone=config.balancer.timezone)
        if key is None:
            raise CliError(f"no key with id {args.id!r}")
        key_id = key.id
    else:
        if not args.user:
            raise CliError("--name needs --user (the owner's name)")
        found = await sharedkeys.find_key_id(conn, args.user, args.name)
        if found is None:
            raise CliError(f"{args.user!r} has no key named {args.name!r}")
        key_id = found
    if not await sharedkeys.disable_key(conn, key_id, args.reason.strip() or "disabled by an administrator"):
        raise CliError("the key was deleted in the meantime")
    await announce(config, "keys", key_id)
    print(key_id)
