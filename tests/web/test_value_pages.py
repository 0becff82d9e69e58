"""The value donated on `/` and `/thanks`: per donor for the period and the pool's today, in
dollars, in both languages, equal to the board JSON's `value_usd` and `totals.value_usd_today`."""

from __future__ import annotations

import dataclasses
import html as htmllib
import re
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestServer

from gateway import config as config_mod
from gateway.web.board.thanks import usd
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import ENGLISH, FakeLinuxDo, Site
from tests.support.fake_upstream import FakeUpstream
from tests.web.test_board import board_app, board_config
from tests.web.test_thanks_pages import seed_board, text

provider = fake_linuxdo.provider  # fixture

# A price that makes the seeded calls (850 tokens each) worth dollars, not fractions of a cent.
PRICES = {"gpt-4o-mini": {"input": 1000.0, "output": 2000.0, "cache_read": None, "cache_write": None}}


@pytest.fixture
async def priced_site(
    config: config_mod.Config, pool: asyncpg.Pool, provider: FakeLinuxDo, aiohttp_client: Any
) -> Site:
    port = fake_linuxdo.free_port()
    cfg = dataclasses.replace(fake_linuxdo.site_config(board_config(config), provider, port), prices=PRICES)
    app = board_app(cfg)
    client = await aiohttp_client(TestServer(app, host="127.0.0.1", port=port), headers=ENGLISH)
    return Site(client, app, cfg, pool, provider)


def test_dollars_are_shown_in_cents() -> None:
    assert usd(41.2) == "$41.20" and usd(0) == "$0.00" and usd(1234.567) == "$1,234.57" and usd(0.004) == "$0.00"


async def _board(site: Site, period: str) -> Any:
    return await (await site.client.get(f"/api/shared-keys/thanks-board?period={period}&limit=500")).json()


@pytest.mark.parametrize(
    ("lang", "label", "column"), [("en", "Value donated today", "Value"), ("zh-CN", "今日捐赠价值", "价值")]
)
async def test_the_pages_show_the_jsons_values(
    priced_site: Site, fake_upstream: FakeUpstream, lang: str, label: str, column: str
) -> None:
    await seed_board(priced_site, fake_upstream)
    headers = {"Accept-Language": lang}
    today = await _board(priced_site, "today")
    pool_today = today["totals"]["value_usd_today"]
    assert pool_today > 1, "the seeded calls are worth dollars at this price"

    home = await text(priced_site, "/", **headers)
    stat = re.search(r'data-usd="value_usd_today">([^<]+)</span><span class="stat-label">([^<]+)<', home)
    assert stat and stat[1] == usd(pool_today) and stat[2] == label
    top = re.findall(r'<span class="top-name">(.*?)</span>.*?data-field="value_usd"[^>]*>([^<]+)<', home, re.S)
    assert [v for _, v in top] == [usd(d["value_usd"]) for d in today["donors"][:5]]

    for period in ("today", "7d", "30d", "all"):
        body = await _board(priced_site, period)
        page = await text(priced_site, f"/thanks?period={period}", **headers)
        assert f">{column}</th>" in page
        shown = re.findall(r'<td class="right" data-field="value_usd">([^<]+)</td>', page)
        assert shown == [usd(d["value_usd"]) for d in body["donors"]], period
        assert re.search(r'data-usd="value_usd_today">' + re.escape(usd(pool_today)) + "<", page)
        total = usd(sum(d["value_usd"] for d in body["donors"]))
        assert total in htmllib.unescape(page), (period, total)
