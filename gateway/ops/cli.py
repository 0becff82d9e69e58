"""The `sharekey` command line.

Every command reads the same configuration. Commands other than `serve` attach to the embedded
servers when `serve` is running them under the same data_dir, and otherwise start them for the
length of the command. Errors end with one line on stderr and a non-zero exit: 2 for bad
configuration or usage, 1 for everything else. Only results go to stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import redis.asyncio
import redis.exceptions
import structlog

from gateway import log
from gateway.config import Config, ConfigError, load
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN, ApiError
from gateway.net import events, ssrf
from gateway.ops import server
from gateway.ops.embedded import EmbeddedError
from gateway.ops.stores import open_stores
from gateway.store import db, keyfields, sharedkeys, tokens, users
from gateway.store.crypto import KeyRing

logger = structlog.get_logger(__name__)


class CliError(Exception):
    """A command failed for a reason the user can act on; printed as one line."""


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
        log.configure(log_level(config, args), config.logging.format)
        return args.func(config, args) or 0
    except ConfigError as e:
        print(f"sharekey: {e}", file=sys.stderr)
        return 2
    except (CliError, EmbeddedError, server.ServeError) as e:
        print(f"sharekey: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def log_level(config: Config, args: argparse.Namespace) -> str:
    """`serve` logs at `logging.level`; every other command at warning, so that only its result
    and its problems show, unless -v (info) or -vv (debug) asks for more."""
    if args.command == "serve":
        return config.logging.level
    return ("warning", "info", "debug")[min(args.verbose, 2)]


API_KEY_HELP = "the key; - reads it from standard input (keeps it out of ps and shell history)"
VERBOSE_HELP = "log info lines (-vv: debug); commands other than serve log only warnings and errors by default"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sharekey", description="A community shared-key gateway.")
    parser.add_argument("--config", help="configuration file (default: $SHAREKEY_CONFIG or ./config.toml)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help=VERBOSE_HELP)
    # Also accepted after the command (`sharekey keys list -v`); SUPPRESS keeps a -v given before it.
    verbose = argparse.ArgumentParser(add_help=False)
    verbose.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="run the gateway (embedded PostgreSQL and Redis when no URLs are set)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--workers", type=int, help="worker processes (0: one per CPU)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply the database migrations", parents=[verbose])
    p.set_defaults(func=command(run_migrate))

    users_p = sub.add_parser("users", help="manage users").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = users_p.add_parser("add", help="add a user; prints its id", parents=[verbose])
    p.add_argument("name")
    p.add_argument("--admin", action="store_true")
    p.add_argument("--avatar-url")
    p.add_argument("--trust-level", type=int, default=0)
    p.set_defaults(func=command(run_users_add))

    tokens_p = sub.add_parser("tokens", help="manage gateway tokens").add_subparsers(
        dest="action", required=True, metavar="ACTION"
    )
    p = tokens_p.add_parser(
        "create", help="create a gateway token for a user; prints only the token", parents=[verbose]
    )
    p.add_argument("name", help="the user's name")
    p.add_argument("--label", default="")
    p.set_defaults(func=command(run_tokens_create))

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
    p.add_argument("--description")
    p.add_argument("--tags", default="", help="comma-separated")
    p.add_argument("--private", action="store_true", help="the owner's own fallback key, never shared")
    p.add_argument("--no-stream-usage", action="store_true", help="the upstream rejects stream_options")
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
    p.set_defaults(func=run_keys_test)

    p = keys_p.add_parser("disable", help="take a key out of the pool until its owner resumes it", parents=[verbose])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the key's id")
    which.add_argument("--name", help="the key's name (with --user)")
    p.add_argument("--user", help="the owner's name (with --name)")
    p.add_argument("--reason", default="disabled by an administrator", help="shown to the key's owner")
    p.set_defaults(func=command(run_keys_disable))

    p = sub.add_parser(
        "reset-daily",
        help="reset usage_count_today of keys not yet counted today (the midnight job)",
        parents=[verbose],
    )
    p.set_defaults(func=command(run_reset_daily))

    p = sub.add_parser(
        "rotate-secret", help="re-encrypt every key under the current key_encryption_secret", parents=[verbose]
    )
    p.add_argument("--batch-size", type=int, default=100, help="keys per transaction (default 100)")
    p.add_argument("--pause", type=float, default=0.0, help="seconds to wait between batches (default 0)")
    p.add_argument("--force", action="store_true", help="rotate even if a running gateway lacks the new secret")
    p.set_defaults(func=command(run_rotate_secret))
    return parser


Runner = Callable[[Config, argparse.Namespace, asyncpg.Connection], Awaitable[int | None]]


def command(fn: Runner) -> Callable[[Config, argparse.Namespace], int]:
    """Run `fn` with a migrated database connection, the stores opened (or embedded) around it."""

    def run(config: Config, args: argparse.Namespace) -> int:
        config, emb = open_stores(config)
        try:
            return asyncio.run(_with_connection(config, args, fn)) or 0
        finally:
            if emb is not None:
                emb.stop()

    return run


async def _with_connection(config: Config, args: argparse.Namespace, fn: Runner) -> int | None:
    conn = await connect(config)
    try:
        await db.migrate(conn)
        return await fn(config, args, conn)
    finally:
        await conn.close()


async def connect(config: Config) -> asyncpg.Connection:
    try:
        return await asyncpg.connect(config.database.url, timeout=10)
    except POSTGRES_DOWN as e:
        raise CliError(f"cannot connect to PostgreSQL: {_reason(e)}") from None


def _reason(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    return text.splitlines()[0]


# --- serve ----------------------------------------------------------------------------------


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = {
        k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v is not None
    }
    if changes:
        config = config.replace("server", **changes)
        if not 0 <= config.server.port <= 65535:
            raise ConfigError(f"--port: {config.server.port} is not a port number (0-65535)")
        if config.server.workers < 0:
            raise ConfigError("--workers: must be 0 (one per CPU) or more")
    server.ensure_port_free(config.server.host, config.server.port)  # before starting anything
    config, emb = open_stores(config)
    try:
        asyncio.run(_prepare(config))
        server.run(config)
    finally:
        if emb is not None:
            emb.stop()
    return 0


async def _prepare(config: Config) -> None:
    conn = await connect(config)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    client = redis.asyncio.from_url(config.redis.url, socket_connect_timeout=5)
    try:
        await client.ping()
    except REDIS_DOWN as e:
        raise CliError(f"cannot connect to Redis: {_reason(e)}") from None
    finally:
        await client.aclose()


# --- migrate, users, tokens -----------------------------------------------------------------


async def run_migrate(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    # `command` has already migrated; say what the database is at.
    version = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    print(f"database at migration {version:04d}")


async def run_users_add(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    name = args.name.strip()
    if not name or len(name) > 64:
        raise CliError("a user name must be 1 to 64 characters")
    try:
        user = await users.add_user(
            conn, name, admin=args.admin, avatar_url=args.avatar_url, trust_level=args.trust_level
        )
    except users.UserExists as e:
        raise CliError(str(e)) from None
    print(user.id)


async def run_tokens_create(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    user = await _user(conn, args.name)
    token, _ = await tokens.create(conn, user.id, args.label)
    print(token)


def _checked_base_url(config: Config, url: str) -> str:
    try:
        return ssrf.check_base_url(
            url,
            allow_http=config.security.allow_http_upstreams,
            allow_private=config.security.allow_private_upstreams,
        )
    except ssrf.UnsafeUpstream as e:
        raise CliError(f"--base-url: {e.message}") from None


async def _user(conn: asyncpg.Connection, name: str) -> users.User:
    user = await users.get_by_username(conn, name)
    if user is None:
        raise CliError(f"no user named {name!r} (add one with: sharekey users add {name})")
    return user


# --- keys ------------------------------------------------------------------------------------


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
    "description": "--description",
    "tags": "--tags",
    "is_private": "--private",
    "stream_usage": "--no-stream-usage",
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
    try:
        fields = keyfields.validate(body, keyfields.KEY_FIELDS, keyfields.KEY_REQUIRED)
        fields["base_url"] = keyfields.checked_base_url(config, fields["base_url"])
    except ApiError as e:
        raise CliError(_option_error(e)) from None
    return fields


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
    user = await _user(conn, args.user)
    if not args.no_test:
        from gateway.net import h1, keytest  # only this command needs an HTTP client

        pool = h1.create_pool(config)
        try:
            result = await keytest.test_key(pool, base_url, api_key, models, timeout=config.upstream.test_timeout)
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
        description=fields.get("description"),
        tags=fields["tags"],
        is_private=fields["is_private"],
        stream_usage=fields["stream_usage"],
    )
    try:
        key = await sharedkeys.insert_key(conn, keyring, new, timezone=config.balancer.timezone)
    except sharedkeys.KeyNameTaken as e:
        raise CliError(str(e)) from None
    await announce(config, "keys", key.id)
    print(key.id)


async def announce(config: Config, kind: str, arg: str = "") -> None:
    """Tell running gateways to reload what changed; they also reload on their own every 30 s."""
    client = redis.asyncio.from_url(config.redis.url, socket_connect_timeout=5)
    try:
        await events.publish(client, config.redis.key_prefix, kind, arg)
    except REDIS_DOWN as e:
        logger.warning("announce_failed", kind=kind, error=_reason(e))
    finally:
        await client.aclose()


async def run_keys_list(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    keys = await sharedkeys.list_keys(conn, timezone=config.balancer.timezone)
    header = ("OWNER", "NAME", "UPSTREAM", "MODELS", "LIMIT", "TODAY", "TOTAL", "STATUS", "KEY")
    rows = [
        (
            k.owner,
            k.name,
            k.host,
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
    api_key = given_api_key(args)
    models = [args.model.strip()] if args.model and args.model.strip() else None

    async def test() -> keytest.KeyTestResult:
        pool = h1.create_pool(config)
        try:
            return await keytest.test_key(pool, base_url, api_key, models, timeout=config.upstream.test_timeout)
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


# --- reset-daily, rotate-secret --------------------------------------------------------------


async def run_reset_daily(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    """What the rollover job does at midnight, by hand. Redis' counters are left alone: they are
    per day already, and clearing today's would let every key exceed its donor's daily limit."""
    from gateway.ops import jobs

    today = await conn.fetchval("SELECT (now() AT TIME ZONE $1)::date", config.balancer.timezone)
    reset = await jobs.roll_over(conn, today)
    print(f"reset the daily count of {reset} key(s); today is {today} in {config.balancer.timezone}")


async def run_rotate_secret(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    from gateway.ops import rotation

    if args.batch_size < 1:
        raise CliError("--batch-size: must be at least 1")
    keyring = KeyRing(config.security.key_encryption_secret, config.security.old_key_encryption_secrets)
    if not args.force:
        client = redis.asyncio.from_url(config.redis.url, socket_connect_timeout=5)
        try:
            behind = await rotation.gateways_without(client, config.redis.key_prefix, keyring.current_kid)
        except REDIS_DOWN as e:
            raise CliError(f"cannot check the gateways' secrets (Redis: {_reason(e)}); --force skips it") from None
        finally:
            await client.aclose()
        if behind:
            raise CliError(
                f"{len(behind)} running gateway process(es) do not have the new secret yet ({', '.join(behind[:3])}): "
                "restart them with it as KEY_ENCRYPTION_SECRET and the old one in KEY_ENCRYPTION_OLD_SECRETS first"
            )
    done = await rotation.rotate(conn, keyring, batch=args.batch_size, pause=args.pause)
    await announce(config, "keys")
    print(f"re-encrypted {done.resealed} key(s); {done.current} of {done.total} are under key id {done.kid}")
    if done.unopenable:
        raise CliError(
            f"{len(done.unopenable)} key(s) open under no secret in the ring and were left as they are: "
            + ", ".join(done.unopenable[:10])
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
