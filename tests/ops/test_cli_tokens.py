"""`sharekey tokens create` with scopes: stored as `POST /api/tokens` stores them, and every bad
value refused by the API's own rule, naming the flag, with exit code 2 and no token created."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from gateway import config as config_mod
from gateway.store import tokens
from tests.ops import test_cli_key_rules
from tests.support.clirun import rows, sharekey

env = test_cli_key_rules.env  # fixture: the user erin

SCOPE = (
    "SELECT label, models, expires_at, daily_requests, requests_per_minute, daily_budget_usd,"
    " allowed_ips::text[] AS allowed_ips FROM api_tokens"
)


async def stored(config: config_mod.Config) -> list[dict[str, Any]]:
    return await rows(config, SCOPE)


async def test_every_flag_is_stored_and_only_the_token_is_printed(
    env: dict[str, str], config: config_mod.Config
) -> None:
    before = datetime.now(UTC)
    r = sharekey(
        *("tokens", "create", "erin", "--label", "ci", "--models", "gpt-4o-mini, fast"),
        *("--expires", "30d", "--daily-requests", "100", "--rpm", "6", "--daily-budget-usd", "1.5"),
        *("--allow-ip", "10.1.0.0/16", "--allow-ip", "192.0.2.7"),
        env=env,
    )
    assert r.code == 0, r.err
    assert tokens.well_formed(r.out.strip()) and r.out.count("\n") == 1
    (row,) = await stored(config)
    expires = row.pop("expires_at")
    assert before + timedelta(days=30) <= expires <= datetime.now(UTC) + timedelta(days=30)
    assert row == {
        "label": "ci",
        "models": ["gpt-4o-mini", "fast"],
        "daily_requests": 100,
        "requests_per_minute": 6,
        "daily_budget_usd": Decimal("1.50"),
        "allowed_ips": ["10.1.0.0/16", "192.0.2.7/32"],
    }

    assert sharekey("tokens", "create", "erin", "--expires", "2040-01-02T03:04:05+08:00", env=env).code == 0
    assert sharekey("tokens", "create", "erin", "--expires", "12h", env=env).code == 0
    rows = await stored(config)
    assert datetime(2040, 1, 1, 19, 4, 5, tzinfo=UTC) in [row["expires_at"] for row in rows]
    plain = [row for row in rows if row["label"] == "" and row["expires_at"].year == 2040]
    assert plain[0]["models"] == [] and plain[0]["allowed_ips"] == [] and plain[0]["daily_requests"] is None


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--daily-requests", "0"], "--daily-requests"),
        (["--daily-requests", "ten"], "--daily-requests"),
        (["--rpm", "-3"], "--rpm"),
        (["--daily-budget-usd", "0.001"], "--daily-budget-usd"),
        (["--daily-budget-usd", "free"], "--daily-budget-usd"),
        (["--expires", "2001-01-01T00:00:00Z"], "--expires"),
        (["--expires", "soon"], "--expires"),
        (["--allow-ip", "10.0.0.0/8", "--allow-ip", "10.0.0.1/8"], "--allow-ip"),
        (["--allow-ip", "localhost"], "--allow-ip"),
        (["--models", "a=b"], "--models"),
        (["--label", "x" * 65], "--label"),
    ],
)
async def test_a_bad_flag_is_exit_2_naming_it_and_nothing_is_created(
    env: dict[str, str], config: config_mod.Config, flags: list[str], flag: str
) -> None:
    r = sharekey("tokens", "create", "erin", *flags, env=env)
    assert (r.code, r.out) == (2, ""), r
    assert "Traceback" not in r.err
    (line,) = r.err.strip().splitlines()
    assert line.startswith(f"sharekey: {flag}: "), line
    assert await stored(config) == []
