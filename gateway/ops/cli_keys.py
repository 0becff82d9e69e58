"""`sharekey keys …`: add, list, test and disable donated keys.

`keys add` checks its options by the API's own rules (`store.keyfields`), so the command line
stores nothing that `POST /api/shared-keys` would refuse; a refusal names the option.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from gateway.config import Config
from gateway.errors import ApiError
from gateway.net import ssrf
from gateway.ops.command import CliError, announce, command, find_user
from gateway.relay import prices
from gateway.store import keyfields, modelnames, sharedkeys
from gateway.store.crypto import KeyRing

API_KEY_HELP = "the key; - reads it from standard input (keeps it out of ps and shell history)"
API_FORMAT_HELP = (
    "how the upstream is called: openai (the default; Bearer, /chat/completions) or anthropic (x-api-key, /messages)"
)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser) -> None:
    """The `keys` command and its actions, under the top-level parser's subcommands."""
    keys_p = sub.add_parser("keys", help="manage donated keys").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = keys_p.add_parser("add", help="add a key (tested live first unless --no-test)", parents=[verbose])
    p.add_argument("--user", required=True, help="the owner's name")
    p.add_argument("--name", required=True, help="a name for the key, unique per owner")
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True, help=API_KEY_HELP)
    p.add_argument("--models", required=True, help="comma-separated model names")
    p.add_argument("--daily-limit", type=int, default=150)
    p.add_argument(
        "--daily-budget-usd", help="USD a day at most (estimated from the models' prices); reached, the key rests"
    )
    p.add_argument("--description")
    p.add_argument("--tags", default="", help="comma-separated")
    p.add_argument("--private", action="store_true", help="the owner's own fallback key, never shared")
    p.add_argument("--no-stream-usage", action="store_true", help="the upstream rejects stream_options")
    p.add_argument("--api-format", metavar="openai|anthropic", help=API_FORMAT_HELP)
    p.add_argument("--no-test", action="store_true", help="store without the live test")
    p.set_defaults(func=command(run_keys_add))

    p = keys_p.add_parser("list", help="list every key, masked", parents=[verbose])
    p.set_defaults(func=command(run_keys_list))

    p = keys_p.add_parser(
        "test", help="test a base URL and key live; prints {ok, latency_ms, models, error}", parents=[verbose]
    )
    p.add_argument("--base-url", required=True)
    p.add_argument("--api-key", required=True, help=API_KEY_HELP)
    p.add_argument("--model", help="the model to try (default: the first the upstream lists)")
    p.add_argument("--api-format", metavar="openai|anthropic", help=API_FORMAT_HELP)
    p.set_defaults(func=run_keys_test)

    p = keys_p.add_parser("disable", help="take a key out of the pool until its owner resumes it", parents=[verbose])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the key's id")
    which.add_argument("--name", help="the key's name (with --user)")
    p.add_argument("--user", help="the owner's name (with --name)")
    p.add_argument("--reason", default="disabled by an administrator", help="shown to the key's owner")
    p.set_defaults(func=command(run_keys_disable))


def _checked_base_url(config: Config, url: str) -> str:
    try:
        return ssrf.check_base_url(
            url,
            allow_http=config.security.allow_http_upstreams,
            allow_private=config.security.allow_private_upstreams,
        )
    except ssrf.UnsafeUpstream as e:
        raise CliError(f"--base-url: {e.message}") from None


def given_api_key(args: argparse.Namespace) -> str:
    """`--api-key KEY`, or `--api-key -`: the first line of standard input."""
    key = sys.stdin.readline() if args.api_key == "-" else args.api_key
    key = key.strip()
    if not key:
        raise CliError("--api-key: the key is empty" + (" (nothing on standard input)" if args.api_key == "-" else ""))
    return key


# The options of `keys add` by the field of `/api/shared-keys` they fill.
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
}


def key_fields(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    """The options of `keys add`, checked by the API's own rules (`store.keyfields`): the CLI
    stores nothing that `POST /api/shared-keys` would refuse. A refusal names the option."""
    body: dict[str, Any] = {
        "name": args.name,
        "base_url": args.base_url,
        "api_key": given_api_key(args),
        "available_models": _comma_list(args.models),
        "daily_limit": args.daily_limit,
        "tags": _comma_list(args.tags),
        "is_private": args.private,
        "stream_usage": not args.no_stream_usage,
    }
    if args.description is not None:
        body["description"] = args.description
    if args.api_format is not None:
        body["api_format"] = args.api_format
    if args.daily_budget_usd is not None:
        body["daily_budget_usd"] = args.daily_budget_usd
    try:
        fields = keyfields.validate(body, keyfields.KEY_FIELDS, keyfields.KEY_REQUIRED)
        fields["base_url"] = keyfields.checked_base_url(config, fields["base_url"])
    except ApiError as e:
        raise CliError(_option_error(e)) from None
    fields.setdefault("api_format", "openai")
    return fields


def given_api_format(args: argparse.Namespace) -> str:
    """`--api-format`, checked by the API's rule; openai when not given."""
    if args.api_format is None:
        return "openai"
    try:
        checked = keyfields.validate({"api_format": args.api_format}, keyfields.TEST_FIELDS)
    except ApiError as e:
        raise CliError(_option_error(e)) from None
    return str(checked["api_format"])


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def _option_error(e: ApiError) -> str:
    """`--models: must have 1 to 100 entries` for the API's `available_models must have …`."""
    field = e.field or ""
    option = KEY_OPTIONS.get(field, field)
    message = e.message.removeprefix(f"{field} ").replace(f"every entry of {field} ", "every entry ")
    return f"{option}: {message}"


async def run_keys_add(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    fields = key_fields(config, args)
    base_url, api_key, models = fields["base_url"], fields["api_key"], fields["available_models"]
    api_format = fields["api_format"]
    user = await find_user(conn, args.user)
    if fields.get("daily_budget_usd") is not None:
        known = prices.Prices(None, {m: prices.Price.configured(p) for m, p in config.prices.items()})
        known.admin = await prices.admin_prices(conn)
        name = prices.unpriced(known, models)
        if name is not None:
            raise CliError(f"--daily-budget-usd: no price is known for the model {name!r}, so a budget cannot be kept")
    if not args.no_test:
        from gateway.net import h1, keytest  # only this command needs an HTTP client

        pool = h1.create_pool(config)
        try:
            result = await keytest.test_key(
                pool,
                base_url,
                api_key,
                modelnames.upstream_names(models),
                timeout=config.upstream.test_timeout,
                api_format=api_format,
            )
        finally:
            await pool.close()
        if not result.ok:
            raise CliError(f"the key failed its live test: {result.error}")
        print(f"live test passed in {result.latency_ms} ms", file=sys.stderr)
    keyring = KeyRing(config.security.key_encryption_secret, config.security.old_key_encryption_secrets)
    new = sharedkeys.NewKey(
        owner_id=user.id,
        name=fields["name"],
        base_url=base_url,
        api_key=api_key,
        available_models=models,
        daily_limit=fields["daily_limit"],
        daily_budget_usd=fields.get("daily_budget_usd"),
        description=fields.get("description"),
        tags=fields["tags"],
        is_private=fields["is_private"],
        stream_usage=fields["stream_usage"],
        api_format=api_format,
    )
    try:
        key = await sharedkeys.insert_key(conn, keyring, new, timezone=config.balancer.timezone)
    except sharedkeys.KeyNameTaken as e:
        raise CliError(str(e)) from None
    await announce(config, "keys", key.id)
    print(key.id)


async def run_keys_list(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    keys = await sharedkeys.list_keys(conn, timezone=config.balancer.timezone)
    header = ("OWNER", "NAME", "UPSTREAM", "FORMAT", "MODELS", "LIMIT", "TODAY", "TOTAL", "STATUS", "KEY")
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

    base_url = _checked_base_url(config, args.base_url)
    api_format = given_api_format(args)
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
