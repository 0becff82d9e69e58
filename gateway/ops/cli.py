"""The `sharekey` command line.

Every command reads the same configuration. Commands other than `serve` attach to the embedded
servers when `serve` is running them under the same data_dir, and otherwise start them for the
length of the command. Errors end with one line on stderr and a non-zero exit: 2 for bad
configuration or usage, 1 for everything else. Only results go to stdout.

This module parses the command line and runs `serve`, `migrate`, `users`, `tokens`, `login-link`,
`reset-daily` and `rotate-secret`; the `keys` actions are in `cli_keys` (their options in
`keyoptions`), `report` in `report`, what commands share in `command`.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg

from gateway import log
from gateway.config import Config, ConfigError, load
from gateway.errors import REDIS_DOWN
from gateway.net import redisclient
from gateway.ops import cli_import, cli_keys, report, server, tokenoptions
from gateway.ops.command import CliError, UsageError, announce, command, connect, find_user, reason
from gateway.ops.embedded import EmbeddedError
from gateway.ops.stores import open_stores
from gateway.resources import MissingFiles
from gateway.store import db, tokens, users
from gateway.store.crypto import KeyRing
from gateway.web.signin import loginlink


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load(args.config)
        log.configure(log_level(config, args), config.logging.format)
        return args.func(config, args) or 0
    except (ConfigError, UsageError) as e:
        print(f"sharekey: {e}", file=sys.stderr)
        return 2
    except (CliError, EmbeddedError, server.ServeError, MissingFiles) as e:
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
    tokenoptions.add_options(p)
    p.set_defaults(func=command(run_tokens_create))

    p = sub.add_parser(
        "login-link", help="print a one-time sign-in URL for a user (single use, expires)", parents=[verbose]
    )
    p.add_argument("name", help="the user's name")
    p.add_argument(
        "--minutes", type=int, default=loginlink.DEFAULT_MINUTES, help="how long the link works (default 10)"
    )
    p.set_defaults(func=command(run_login_link))

    cli_import.add_parser(cli_keys.add_parsers(sub, verbose), verbose)
    report.add_parser(sub, verbose)

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


FIRST_ADMIN = "admin"
FIRST_LINK_MINUTES = 60


async def _prepare(config: Config) -> None:
    conn = await connect(config)
    try:
        await db.migrate(conn)
        first = await _first_admin(conn)
    finally:
        await conn.close()
    client = redisclient.client(config.redis, timeout=5)
    try:
        await client.ping()
        if first is not None:
            await _print_first_link(config, client, first)
    except REDIS_DOWN as e:
        raise CliError(f"cannot connect to Redis: {reason(e)}") from None
    finally:
        await redisclient.close(client)


async def _first_admin(conn: asyncpg.Connection) -> users.User | None:
    """On a brand-new database (no user at all) an `admin` user, so the pages work right away."""
    async with conn.transaction():
        await conn.execute("LOCK TABLE users IN SHARE ROW EXCLUSIVE MODE")  # two first starts at once
        if await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users)"):
            return None
        return await users.add_local_user(conn, FIRST_ADMIN, admin=True)


async def _print_first_link(config: Config, client: Any, user: users.User) -> None:
    token = await loginlink.issue(client, config.redis.key_prefix, user.id, FIRST_LINK_MINUTES)
    link = loginlink.url(config.server.public_url, token)
    print(
        f"First run: created the administrator {user.username!r}. Sign in within {FIRST_LINK_MINUTES} minutes at\n"
        f"  {link}\n"
        f"(a new link any time: sharekey login-link {user.username})",
        flush=True,
    )


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
    fields = tokenoptions.token_fields(args)  # a refused option: exit 2, before the user is looked up
    user = await find_user(conn, args.name)
    token, _ = await tokens.create(conn, user.id, fields["label"], fields)
    print(token)


async def run_login_link(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    if not 1 <= args.minutes <= loginlink.MAX_MINUTES:
        raise CliError(f"--minutes: must be 1 to {loginlink.MAX_MINUTES}")
    user = await find_user(conn, args.name)
    client = redisclient.client(config.redis, timeout=5)
    try:
        token = await loginlink.issue(client, config.redis.key_prefix, user.id, args.minutes)
    except REDIS_DOWN as e:
        raise CliError(f"cannot connect to Redis: {reason(e)}") from None
    finally:
        await redisclient.close(client)
    print(loginlink.url(config.server.public_url, token))


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
        client = redisclient.client(config.redis, timeout=5)
        try:
            behind = await rotation.gateways_without(client, config.redis.key_prefix, keyring.current_kid)
        except REDIS_DOWN as e:
            raise CliError(f"cannot check the gateways' secrets (Redis: {reason(e)}); --force skips it") from None
        finally:
            await redisclient.close(client)
        if behind:
            raise CliError(
                f"{len(behind)} running gateway process(es) do not have the new secret yet ({', '.join(behind[:3])}): "
                "restart them with it as KEY_ENCRYPTION_SECRET and the old one in KEY_ENCRYPTION_OLD_SECRETS first"
            )
    done = await rotation.rotate(conn, keyring, batch=args.batch_size, pause=args.pause)
    await announce(config, "keys")
    print(f"re-encrypted {done.resealed} key(s); {done.current} of {done.total} are under key id {done.kid}")
    if done.fingerprinted:
        print(f"fingerprinted {done.fingerprinted} key(s) stored before fingerprints")
    if done.unopenable:
        raise CliError(
            f"{len(done.unopenable)} key(s) open under no secret in the ring and were left as they are: "
            + ", ".join(done.unopenable[:10])
        )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
