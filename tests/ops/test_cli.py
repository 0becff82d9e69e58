"""The command line against real PostgreSQL and Redis: users, tokens, keys; bad input."""

from __future__ import annotations

import uuid

import asyncpg
import pytest

from gateway import config as config_mod
from gateway.ops import cli
from gateway.store import db, tokens
from tests.support.clirun import Result, sharekey


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return cli_env


def fails_cleanly(r: Result, *words: str, code: int = 1) -> None:
    """One line on stderr, no traceback; exit code 1, or 2 for an option's value refused."""
    assert r.code == code, r
    lines = r.err.strip().splitlines()
    assert "Traceback" not in r.err
    assert lines and lines[-1].startswith("sharekey: "), r.err
    for w in words:
        assert w in lines[-1], (w, lines[-1])


async def test_users_tokens_keys_round_trip(env: dict[str, str], config: config_mod.Config) -> None:
    r = sharekey("users", "add", "alice", "--admin", env=env)
    assert r.code == 0, r.err
    alice_id = uuid.UUID(r.out.strip())

    r = sharekey("tokens", "create", "alice", "--label", "laptop", env=env)
    assert r.code == 0, r.err
    assert r.out.count("\n") == 1 and tokens.well_formed(r.out.strip()), "stdout holds only the token"
    token = r.out.strip()

    secret_key = "sk-live-THISISTHESECRET-9z8y"
    r = sharekey(
        "keys",
        "add",
        "--user",
        "alice",
        "--name",
        "main",
        "--base-url",
        "https://api.example.com",
        "--api-key",
        secret_key,
        "--models",
        "gpt-4o-mini, gpt-4o",
        "--daily-limit",
        "70",
        "--no-test",
        env=env,
    )
    assert r.code == 0, r.err
    assert secret_key not in r.out + r.err

    r = sharekey("keys", "list", env=env)
    assert r.code == 0, r.err
    header, row = r.out.strip().splitlines()
    assert header.split() == [
        "OWNER",
        "NAME",
        "UPSTREAM",
        "FORMAT",
        "MODELS",
        "LIMIT",
        "TODAY",
        "TOTAL",
        "STATUS",
        "KEY",
        "RULES",
    ]
    assert row.split() == [
        "alice",
        "main",
        "api.example.com",
        "openai",
        "gpt-4o-mini,gpt-4o",
        "70",
        "0",
        "0",
        "active",
        "sk-…9z8y",
        "-",
    ]
    assert secret_key not in r.out + r.err

    conn = await asyncpg.connect(config.database.url)
    try:
        key = await conn.fetchrow("SELECT * FROM shared_keys")
        assert key["user_id"] == alice_id and key["base_url"] == "https://api.example.com/v1"
        assert secret_key not in str(dict(key))
        assert key["api_key_encrypted"].startswith(key["key_version"] + ":")
        stored = await conn.fetchrow("SELECT * FROM api_tokens")
        assert stored["token_hash"] == tokens.token_hash(token) and stored["label"] == "laptop"
        assert token not in str(dict(stored))
        assert (await conn.fetchval("SELECT is_admin FROM users WHERE username = 'alice'")) is True
    finally:
        await conn.close()


async def test_bad_input_ends_with_one_line_and_writes_nothing(env: dict[str, str], config: config_mod.Config) -> None:
    assert sharekey("users", "add", "bob", env=env).code == 0
    fails_cleanly(sharekey("users", "add", "bob", env=env), "already exists")
    fails_cleanly(sharekey("tokens", "create", "nobody", env=env), "no user named 'nobody'")
    base = ["keys", "add", "--name", "k", "--api-key", "sk-abcdefghijklmnop", "--no-test"]
    fails_cleanly(
        sharekey(*base, "--user", "nobody", "--base-url", "https://a.example", "--models", "m", env=env), "nobody"
    )
    fails_cleanly(
        sharekey(*base, "--user", "bob", "--base-url", "https://a.example", "--models", " , ", env=env),
        "--models",
        code=2,
    )
    fails_cleanly(
        sharekey(*base, "--user", "bob", "--base-url", "ftp://a.example", "--models", "m", env=env),
        "--base-url",
        code=2,
    )
    fails_cleanly(
        sharekey(
            *base, "--user", "bob", "--base-url", "https://a.example", "--models", "m", "--daily-limit", "0", env=env
        ),
        "--daily-limit",
        code=2,
    )
    conn = await asyncpg.connect(config.database.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM shared_keys") == 0
        assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 0
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--name", "red\x1b[31malert", "--name: must not contain control characters"),
        ("--name", "n" * 65, "--name: must be 1 to 64 characters"),
        ("--models", ",".join(f"model-{i}" for i in range(1000)), "--models: must have 1 to 100 entries"),
        ("--models", "m," + "x" * 201, "--models: every model name must be at most 200 characters"),
        ("--description", "d" * 501, "--description: is too long"),
        ("--description", "line one\nline two", "--description: must not contain control characters"),
        ("--tags", ",".join(f"t{i}" for i in range(11)), "--tags: has too many entries"),
        ("--api-key", "sk-with space", "--api-key: must be 1 to 512 printable characters, without spaces"),
        ("--base-url", "https://a.example/\x7f", "--base-url: must not contain control characters"),
    ],
)
async def test_keys_add_refuses_what_the_api_refuses(
    env: dict[str, str], config: config_mod.Config, option: str, value: str, message: str
) -> None:
    """The same rules as POST /api/shared-keys (store.keyfields), each refusal naming the option."""
    assert sharekey("users", "add", "dora", env=env).code == 0
    args = {
        "--name": "k",
        "--base-url": "https://a.example",
        "--api-key": "sk-abcdefghijklmnop",
        "--models": "m",
        option: value,
    }
    r = sharekey("keys", "add", "--user", "dora", "--no-test", *(x for kv in args.items() for x in kv), env=env)
    fails_cleanly(r, code=2)
    assert r.err.strip().splitlines()[-1] == f"sharekey: {message}"
    assert r.out == ""
    conn = await asyncpg.connect(config.database.url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM shared_keys") == 0
    finally:
        await conn.close()


async def test_the_key_can_come_from_standard_input(env: dict[str, str], config: config_mod.Config) -> None:
    assert sharekey("users", "add", "carol", env=env).code == 0
    args = ["keys", "add", "--user", "carol", "--base-url", "https://a.example", "--models", "m", "--no-test"]
    added = sharekey(*args, "--name", "piped", "--api-key", "-", env=env, input="sk-from-stdin-0123456789wxyz\n")
    assert added.code == 0, added.err
    assert "sk-from-stdin" not in added.out + added.err
    fails_cleanly(
        sharekey(*args, "--name", "empty", "--api-key", "-", env=env, input=""), "nothing on standard input", code=2
    )
    conn = await asyncpg.connect(config.database.url)
    try:
        rows = await conn.fetch("SELECT name, api_key_hint FROM shared_keys")
    finally:
        await conn.close()
    assert [(r["name"], r["api_key_hint"]) for r in rows] == [("piped", "sk-…wxyz")]


def test_unreachable_database_is_one_line(env: dict[str, str]) -> None:
    r = sharekey("migrate", env={**env, "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none"})
    fails_cleanly(r, "cannot connect to PostgreSQL")


def test_external_database_requires_a_secret(env: dict[str, str]) -> None:
    r = sharekey("migrate", env={k: v for k, v in env.items() if k != "KEY_ENCRYPTION_SECRET"})
    assert r.code == 2 and "KEY_ENCRYPTION_SECRET" in r.err and "Traceback" not in r.err


def test_migrate_reports_version(env: dict[str, str]) -> None:
    r = sharekey("migrate", env=env)
    assert r.code == 0 and r.out.strip() == f"database at migration {db.migrations()[-1].version:04d}"


def info_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if '"level":"info"' in line]


def test_commands_log_only_warnings_unless_verbose(env: dict[str, str]) -> None:
    # A fresh schema: this first run applies every migration, which logs at info.
    r = sharekey("migrate", env=env)
    assert r.code == 0, r.err
    assert info_lines(r.err) == [], r.err
    assert r.err == ""

    # `keys test` logs its result at info on every run (here: nothing listens on port 1).
    test = ["keys", "test", "--base-url", "http://127.0.0.1:1/v1", "--api-key", "sk-abcdefghijklmnop"]
    quiet = sharekey(*test, env=env)
    assert quiet.code == 1 and info_lines(quiet.err) == [], quiet.err
    for verbose in (["-v", *test], [*test, "--verbose"]):
        loud = sharekey(*verbose, env=env)
        assert loud.code == 1
        assert any('"event":"key_tested"' in line for line in info_lines(loud.err)), loud.err
        assert '"level":"debug"' not in loud.err


def test_verbose_shows_what_a_command_did(env: dict[str, str]) -> None:
    r = sharekey("migrate", "-v", env=env)
    assert r.code == 0, r.err
    assert any('"event":"migration_applied"' in line for line in info_lines(r.err)), r.err
    assert sharekey("-vv", "users", "add", "dave", env=env).code == 0


def test_log_level_by_command(config: config_mod.Config) -> None:
    parser = cli.build_parser()
    debug_config = config.replace("logging", level="debug")
    for argv, level in [
        (["keys", "list"], "warning"),
        (["-v", "keys", "list"], "info"),
        (["keys", "list", "-v"], "info"),
        (["users", "add", "x", "-vv"], "debug"),
        (["-v", "tokens", "create", "x", "-vvv"], "debug"),
    ]:
        assert cli.log_level(debug_config, parser.parse_args(argv)) == level, argv
    assert cli.log_level(debug_config, parser.parse_args(["serve"])) == "debug"  # serve: logging.level
    assert cli.log_level(config.replace("logging", level="error"), parser.parse_args(["-v", "serve"])) == "error"
