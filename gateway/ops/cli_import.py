"""`sharekey keys import`: a donor's many keys at once, one a line on standard input.

The options are `keys add`'s (checked by the API's rules, `keyoptions`) with `--name-prefix`
instead of `--name`; the per-key work (duplicates, live tests a few at a time, names `<prefix>-<n>`)
is `store/keyimport.py`'s, the same as `POST /api/shared-keys/import`. Prints one line a key, with
its mask only, then a summary; exit 1 when no key was added and some failed.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from gateway.config import Config
from gateway.net.keytest import KeyTestResult
from gateway.ops import keyoptions
from gateway.ops.cli_keys import add_new_key_options, checked_rules, keyring_of, require_prices
from gateway.ops.command import CliError, UsageError, announce, command, find_user
from gateway.store import keyimport, keyrules, modelnames
from gateway.store.keyimport import KeyResult, Outcome


def add_parser(keys_p: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser) -> None:
    p = keys_p.add_parser(
        "import",
        help="add many keys, one a line on standard input (each tested live unless --no-test)",
        parents=[verbose],
    )
    p.add_argument("--user", required=True, help="the owner's name")
    p.add_argument("--base-url", required=True)
    p.add_argument(
        "--name-prefix", help=f"the keys are named PREFIX-1, PREFIX-2, … (default {keyimport.DEFAULT_PREFIX})"
    )
    add_new_key_options(p)
    p.set_defaults(func=command(run_keys_import))


def read_keys() -> list[str]:
    """One key a line; blank lines and lines starting with # are skipped."""
    lines = (line.strip() for line in sys.stdin)
    keys = [line for line in lines if line and not line.startswith("#")]
    if not keys:
        raise UsageError("standard input: no keys (one a line; blank lines and # comments are skipped)")
    return keys


def shown(result: KeyResult) -> str:
    if result.status == Outcome.ADDED:
        return f"added {result.key_id} {result.hint}"
    if result.status == Outcome.DUPLICATE:
        return f"duplicate {result.hint}"
    return f"failed {result.hint}: {result.error}"


async def run_keys_import(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    fields = keyoptions.import_fields(config, args, read_keys())
    entries = fields.pop("keys")
    models, base_url, api_format = fields["available_models"], fields["base_url"], fields["api_format"]
    rules = checked_rules(config, fields, keyrules.DEFAULTS, models)
    user = await find_user(conn, args.user)
    if fields.get("daily_budget_usd") is not None:
        await require_prices(config, conn, models)

    @asynccontextmanager
    async def acquire() -> AsyncIterator[asyncpg.Connection]:
        yield conn  # the command's one connection, used by one step at a time

    from gateway.net import h1, keytest  # only the commands that test keys need an HTTP client

    pool = h1.create_pool(config)
    names = modelnames.upstream_names(models)

    async def test(api_key: str) -> KeyTestResult:
        timeout = config.upstream.test_timeout
        return await keytest.test_key(pool, base_url, api_key, names, timeout=timeout, api_format=api_format)

    try:
        results = await keyimport.import_keys(
            acquire,
            keyring_of(config),
            user.id,
            fields,
            rules,
            entries,
            None if args.no_test else test,
            timezone=config.balancer.timezone,
        )
    finally:
        await pool.close()
    for result in results:
        print(shown(result))
    summary = keyimport.counts(results)
    print(", ".join(f"{n} {outcome}" for outcome, n in summary.items()))
    if summary["added"]:
        await announce(config, "keys")
    elif summary["failed"]:
        raise CliError(f"no key was added: {summary['failed']} of {len(results)} failed")
