"""A donor's rules from the command line (`keys add`/`keys edit` flags, README "Donors' rules"):
stored as the API stores them, changed one at a time, cleared with `none`, and every bad value
refused by the API's own rule, naming the flag, with exit code 2 and nothing written."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway import config as config_mod
from tests.support.clirun import Result, rows, sharekey

ADD = [
    "keys",
    "add",
    "--user",
    "erin",
    "--name",
    "free-tier",
    "--base-url",
    "https://api.example.com",
    "--api-key",
    "sk-abcdefghijklmnop",
    "--models",
    "gemini-2.5-pro,gemini-2.5-flash",
    "--no-test",
]
RULES = (
    "SELECT rpm_limit, tpm_limit, max_concurrent, model_daily_limits, min_trust_level, allowed_users,"
    " allowed_features, daily_limit, name FROM shared_keys"
)


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    assert sharekey("users", "add", "erin", env=cli_env).code == 0
    return cli_env


async def stored(config: config_mod.Config) -> list[dict[str, Any]]:
    found = await rows(config, RULES)
    for row in found:
        row["model_daily_limits"] = json.loads(row["model_daily_limits"])
    return found


def added(env: dict[str, str], *flags: str) -> str:
    r = sharekey(*ADD, *flags, env=env)
    assert r.code == 0, r.err
    return r.out.strip()


def refused(r: Result, message: str) -> None:
    assert (r.code, r.out) == (2, ""), r
    assert "Traceback" not in r.err
    assert r.err.strip().splitlines() == [f"sharekey: {message}"]


async def test_add_stores_every_rule_and_list_shows_them(env: dict[str, str], config: config_mod.Config) -> None:
    added(
        env,
        "--rpm-limit",
        "10",
        "--tpm-limit",
        "40000",
        "--max-concurrent",
        "2",
        "--model-daily-limit",
        "gemini-2.5-pro=50",
        "--model-daily-limit",
        "gemini-2.5-flash=500",
        "--min-trust-level",
        "2",
        "--allowed-users",
        "alice, Bob",
    )
    [row] = await stored(config)
    assert row == {
        "rpm_limit": 10,
        "tpm_limit": 40000,
        "max_concurrent": 2,
        "model_daily_limits": {"gemini-2.5-pro": 50, "gemini-2.5-flash": 500},
        "min_trust_level": 2,
        "allowed_users": ["alice", "Bob"],
        "allowed_features": [],
        "daily_limit": 150,
        "name": "free-tier",
    }
    listed = sharekey("keys", "list", env=env)
    assert listed.code == 0, listed.err
    header, line = listed.out.strip().splitlines()
    assert header.split()[-1] == "RULES"
    assert line.endswith(
        "rpm-limit=10 tpm-limit=40000 max-concurrent=2 min-trust-level=2"
        " gemini-2.5-flash=500/day gemini-2.5-pro=50/day allowed-users=alice,Bob"
    ), line


async def test_edit_changes_only_what_is_given(env: dict[str, str], config: config_mod.Config) -> None:
    key_id = added(
        env,
        "--rpm-limit",
        "10",
        "--max-concurrent",
        "2",
        "--model-daily-limit",
        "gemini-2.5-pro=50",
        "--tpm-limit",
        "9",
    )
    r = sharekey("keys", "edit", key_id, "--rpm-limit", "20", env=env)
    assert (r.code, r.out.strip()) == (0, key_id), r.err
    [row] = await stored(config)
    assert (row["rpm_limit"], row["max_concurrent"], row["tpm_limit"]) == (20, 2, 9)
    assert row["model_daily_limits"] == {"gemini-2.5-pro": 50} and row["name"] == "free-tier"

    r = sharekey(
        "keys",
        "edit",
        key_id,
        "--max-concurrent",
        "none",
        "--model-daily-limit",
        "gemini-2.5-flash=7",
        "--allowed-users",
        "carol",
        "--name",
        "renamed",
        "--daily-limit",
        "80",
        env=env,
    )
    assert r.code == 0, r.err
    [row] = await stored(config)
    assert (row["rpm_limit"], row["max_concurrent"], row["tpm_limit"]) == (20, None, 9)
    assert row["model_daily_limits"] == {"gemini-2.5-pro": 50, "gemini-2.5-flash": 7}  # one model added
    assert (row["allowed_users"], row["name"], row["daily_limit"]) == (["carol"], "renamed", 80)

    r = sharekey("keys", "edit", key_id, "--model-daily-limit", "gemini-2.5-pro=none", "--allowed-users", "", env=env)
    assert r.code == 0, r.err
    [row] = await stored(config)
    assert row["model_daily_limits"] == {"gemini-2.5-flash": 7} and row["allowed_users"] == []
    assert (row["rpm_limit"], row["tpm_limit"]) == (20, 9)


BAD = [
    ("--rpm-limit", "0", "--rpm-limit: must be between 1 and 10000000"),
    ("--rpm-limit", "ten", "--rpm-limit: must be a whole number"),
    ("--tpm-limit", "1.5", "--tpm-limit: must be a whole number"),
    ("--max-concurrent", "-1", "--max-concurrent: must be between 1 and 10000000"),
    ("--min-trust-level", "5", "--min-trust-level: must be between 0 and 4"),
    ("--min-trust-level", "none", "--min-trust-level: must be a whole number"),
    ("--model-daily-limit", "gemini-2.5-pro=0", "--model-daily-limit: must be between 1 and 1000000"),
    ("--model-daily-limit", "gpt-4o=5", "--model-daily-limit: names 'gpt-4o', which the key does not serve"),
    (
        "--model-daily-limit",
        "gemini-2.5-pro",
        "--model-daily-limit: 'gemini-2.5-pro' is not MODEL=N (N a whole number, or none)",
    ),
    ("--allowed-features", "web_search", "--allowed-features: 'web_search' is not a paid feature this gateway allows"),
    ("--allowed-users", "a," + "u" * 65, "--allowed-users: every entry must be at most 64 characters"),
]


@pytest.mark.parametrize(("flag", "value", "message"), BAD)
async def test_a_bad_rule_is_refused_naming_its_flag(
    env: dict[str, str], config: config_mod.Config, flag: str, value: str, message: str
) -> None:
    refused(sharekey(*ADD, flag, value, env=env), message)
    assert await stored(config) == []

    key_id = added(env, "--rpm-limit", "10")
    before = await stored(config)
    refused(sharekey("keys", "edit", key_id, flag, value, env=env), message)
    assert await stored(config) == before, "nothing changed"


async def test_edit_needs_a_change_and_a_key(env: dict[str, str], config: config_mod.Config) -> None:
    key_id = added(env)
    refused(
        sharekey("keys", "edit", key_id, env=env),
        "nothing to change: give at least one option (sharekey keys edit --help)",
    )
    refused(sharekey("keys", "edit", key_id, "--daily-limit", "none", env=env), "--daily-limit: must be a whole number")
    missing = sharekey("keys", "edit", "00000000-0000-0000-0000-000000000000", "--rpm-limit", "5", env=env)
    assert (missing.code, missing.err.strip()) == (1, "sharekey: no key with id '00000000-0000-0000-0000-000000000000'")
    # Dropping a model that a per-model limit names is refused like the API refuses it.
    added_limit = sharekey("keys", "edit", key_id, "--model-daily-limit", "gemini-2.5-pro=3", env=env)
    assert added_limit.code == 0, added_limit.err
    refused(
        sharekey("keys", "edit", key_id, "--models", "gemini-2.5-flash", env=env),
        "--model-daily-limit: names 'gemini-2.5-pro', which the key does not serve",
    )
    [row] = await stored(config)
    assert row["model_daily_limits"] == {"gemini-2.5-pro": 3}
