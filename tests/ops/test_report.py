"""`sharekey report`: per donor, key and model; totals equal the board's; CSV and JSON; bad options."""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import pytest

from gateway import config as config_mod
from tests.support.clirun import sharekey
from tests.support.seed import add_key, user_with_token
from tests.web.test_board import Gateway, board_app, board_config, credit, donor


@pytest.fixture
async def gw(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> Gateway:
    cfg = board_config(config)
    app = board_app(cfg)
    return Gateway(await aiohttp_client(app), app, pool, cfg)


async def _seed(gw: Gateway) -> None:
    today = gw.today
    _, alice_key = await donor(gw, "alice", daily_limit=100)
    alice = await gw.pool.fetchrow("SELECT id FROM users WHERE username = 'alice'")
    assert alice is not None
    _, bob_key = await donor(gw, "bob", daily_limit=40)
    erin, _ = await user_with_token(gw.pool, "erin")
    erins_own = await add_key(gw.pool, gw.config, erin, "https://e.example.com/v1", name="mine", private=True)
    for key, days_ago, calls, tokens in [
        (alice_key, 0, 3, 1000), (alice_key, 6, 2, 2000), (alice_key, 7, 4, 10), (alice_key, 29, 1, 500),
        (alice_key, 30, 5, 10), (bob_key, 0, 5, 3000), (bob_key, 1, 1, 40), (erins_own, 0, 4, 100),
    ]:  # fmt: skip
        await credit(gw.app, key, today - timedelta(days=days_ago), calls, tokens=tokens)
    await credit(gw.app, bob_key, today, 2, committed=False)  # failed attempts are not in it


@pytest.mark.parametrize("period", ["today", "7d", "30d", "all"])
async def test_the_reports_totals_equal_the_boards(gw: Gateway, cli_env: dict[str, str], period: str) -> None:
    await _seed(gw)
    board = await gw.board(period)
    r = sharekey("report", "--period", period, "--format", "json", env=cli_env)
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["period"] == period
    calls = sum(d["calls"] for d in board["donors"])
    tokens = sum(d["tokens"] for d in board["donors"])
    value = sum(d["value_usd"] for d in board["donors"])
    if period == "all":  # the board lists only donors with a key serving or calls in the period: all of them here
        assert {d["username"] for d in board["donors"]} == {"alice", "bob"}
    assert report["totals"]["calls"] == calls
    assert report["totals"]["tokens"] == tokens
    assert report["totals"]["cost_usd"] == pytest.approx(value, abs=1e-6)
    assert value > 0, "gpt-4o-mini has a price"
    if period == "today":
        assert report["totals"]["cost_usd"] == pytest.approx(board["totals"]["value_usd_today"], abs=1e-6)
    assert {row["donor"] for row in report["rows"]} <= {"alice", "bob"}, "never a private key's calls"


async def test_csv_and_json_shapes(gw: Gateway, cli_env: dict[str, str]) -> None:
    await _seed(gw)
    r = sharekey("report", "--period", "7d", env=cli_env)  # csv by default
    assert r.code == 0, r.err
    rows = list(csv.reader(io.StringIO(r.out)))
    assert rows[0] == ["donor", "donor_id", "key", "key_id", "model", "calls", "prompt_tokens",
                       "completion_tokens", "tokens", "cost_usd"]  # fmt: skip
    body, total = rows[1:-1], rows[-1]
    assert sorted((row[0], row[2], row[4], int(row[5])) for row in body) == [
        ("alice", "alice-1", "gpt-4o-mini", 5),
        ("bob", "bob-1", "gpt-4o-mini", 6),
    ]
    assert total[0] == "TOTAL" and int(total[5]) == 11 and int(total[8]) == 3 * 1000 + 2 * 2000 + 5 * 3000 + 40
    assert float(total[9]) == pytest.approx(sum(float(row[9]) for row in body), abs=1e-5)

    j = json.loads(sharekey("report", "--period", "7d", "--format", "json", env=cli_env).out)
    assert set(j) == {"period", "from", "rows", "totals"}
    assert set(j["rows"][0]) == set(rows[0])
    assert j["totals"]["calls"] == 11 and j["from"] is not None
    assert json.loads(sharekey("report", "--period", "all", "--format", "json", env=cli_env).out)["from"] is None
    # The period starts at local midnight six days ago, in the balancer's zone.
    start = datetime.fromisoformat(j["from"])
    tz = gw.config.balancer.timezone
    local = await gw.pool.fetchval("SELECT ($1::timestamptz AT TIME ZONE $2)", start, tz)
    assert local.time().isoformat() == "00:00:00" and local.date() == gw.today - timedelta(days=6)


@pytest.mark.parametrize(
    ("args", "word"),
    [(("--period", "2w"), "--period"), (("--format", "xml"), "--format")],
)
def test_a_bad_option_is_one_line(cli_env: dict[str, str], args: tuple[str, ...], word: str) -> None:
    r = sharekey("report", *args, env=cli_env)
    assert r.code == 1 and r.out == ""
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sharekey: ") and word in lines[0], r.err
