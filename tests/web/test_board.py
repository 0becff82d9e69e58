"""The thanks board's data and JSON: ranking and totals per period (the day boundary in the
configured zone included), anonymity, exactly-once credit, the cache under a burst, validation.

Usage is recorded through the real paths: requests through /v1 against the fake upstream, or
`UsageLog.add` + `flush_once` with chosen days. The helpers here (`wire`, `board_app`, `credit`)
are shared by the page and browser tests.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.keystate import KEY_STATES
from gateway.relay.picks import Candidate, UserLimits
from gateway.relay.usage import USAGE, UsageRecord
from gateway.store.sharedkeys import SharedKey
from gateway.store.users import User
from gateway.web.board import cache as boardcache
from gateway.web.board import charts
from gateway.web.board import snapshot as board
from gateway.web.board.cache import BOARD
from gateway.web.board.snapshot import ModelCapacity
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token

_request_ids = itertools.count()


def board_app(config: config_mod.Config) -> web.Application:
    return create_app(config)


def board_config(config: config_mod.Config, timezone: str = "Asia/Shanghai") -> config_mod.Config:
    config = config.replace("limits", user_daily_requests=0, user_requests_per_minute=0)
    return config.replace("balancer", timezone=timezone)


@dataclass
class Gateway:
    client: TestClient
    app: web.Application
    pool: asyncpg.Pool
    config: config_mod.Config

    @property
    def today(self) -> date:
        return date.fromisoformat(self.app[BALANCER].today())

    async def board(self, period: str | None = None, limit: int | None = None, *, fresh: bool = True) -> Any:
        if fresh:
            await self.app[BOARD].refresh()
        params = {k: str(v) for k, v in (("period", period), ("limit", limit)) if v is not None}
        resp = await self.client.get("/api/shared-keys/thanks-board", params=params)
        assert resp.status == 200, await resp.text()
        return await resp.json()


@pytest.fixture
async def gw(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> Gateway:
    cfg = board_config(config)
    app = board_app(cfg)
    return Gateway(await aiohttp_client(app), app, pool, cfg)


async def credit(
    app: web.Application,
    key: SharedKey,
    day: date,
    calls: int,
    *,
    tokens: int = 10,
    at: datetime | None = None,
    committed: bool = True,
) -> list[UsageRecord]:
    """`calls` calls served by `key` on `day`, recorded through the usage log and flushed. They
    happened now if `day` is today, else at noon that day (local time), unless `at` says when."""
    config = app[appkeys.config]
    if at is None and day != date.fromisoformat(app[BALANCER].today()):
        at = datetime.combine(day, datetime.min.time(), ZoneInfo(config.balancer.timezone)) + timedelta(hours=12)
    records = [
        UsageRecord(
            request_id=f"board-{next(_request_ids)}-{uuid.uuid4().hex[:8]}",
            attempt=1,
            day=day,
            created_at=at or datetime.now(UTC),
            shared_key_id=key.id,
            user_id=key.owner_id,
            donor_id=key.owner_id,
            api_endpoint="/v1/chat/completions",
            model="gpt-4o-mini",
            status="ok" if committed else "upstream_error",
            success=committed,
            committed=committed,
            prompt_tokens=tokens // 2,
            completion_tokens=tokens - tokens // 2,
        )
        for _ in range(calls)
    ]
    usage = app[USAGE]
    for r in records:
        usage.add(r)
    assert await usage.flush_once()
    return records


async def donor(gw: Gateway, name: str, **kw: Any) -> tuple[User, SharedKey]:
    user, _ = await user_with_token(gw.pool, name)
    key = await add_key(gw.pool, gw.config, user, "https://api.example.com/v1", name=f"{name}-1", **kw)
    return user, key


async def set_user(pool: asyncpg.Pool, user: User, **fields: Any) -> None:
    sets = ", ".join(f"{name} = ${i}" for i, name in enumerate(fields, 2))
    async with pool.acquire() as conn:
        await conn.execute(f"UPDATE users SET {sets} WHERE id = $1", uuid.UUID(user.id), *fields.values())


def ranking(body: dict[str, Any]) -> list[tuple[str | None, int]]:
    return [(d["username"], d["calls"]) for d in body["donors"]]


# --- ranking and totals ----------------------------------------------------------------------------


async def test_ranking_and_totals_for_each_period(gw: Gateway) -> None:
    today = gw.today
    _, alice_key = await donor(gw, "alice", daily_limit=100)
    alice_2 = await add_key(gw.pool, gw.config, await _user(gw, "alice"), "https://b.example.com/v1", name="a2",
                            daily_limit=50, models=["gpt-4o"])  # fmt: skip
    _, bob_key = await donor(gw, "bob", daily_limit=40)
    dave, dave_key = await donor(gw, "dave")
    erin, _ = await user_with_token(gw.pool, "erin")
    erins_own = await add_key(gw.pool, gw.config, erin, "https://e.example.com/v1", name="mine", private=True)
    async with gw.pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET is_active = false WHERE id = $1", uuid.UUID(dave_key.id))
    await gw.app[KEY_INDEX].reload()

    for key, days_ago, calls in [
        (alice_key, 0, 3), (alice_2, 6, 2), (alice_key, 7, 4), (alice_key, 29, 1), (alice_key, 30, 5),
        (bob_key, 0, 5), (bob_key, 1, 1), (dave_key, 40, 7), (erins_own, 0, 4),
    ]:  # fmt: skip
        await credit(gw.app, key, today - timedelta(days=days_ago), calls, tokens=10)
    await credit(gw.app, bob_key, today, 2, committed=False)  # failed attempts are not credited

    today_board = await gw.board()
    assert today_board["period"] == "today"
    assert ranking(today_board) == [("bob", 5), ("alice", 3)], "dave has no key serving, erin only a private one"
    assert ranking(await gw.board("7d")) == [("bob", 6), ("alice", 5)]
    assert ranking(await gw.board("30d")) == [("alice", 10), ("bob", 6)]
    assert ranking(await gw.board("all")) == [("alice", 15), ("dave", 7), ("bob", 6)]
    assert ranking(await gw.board("all", 2)) == [("alice", 15), ("dave", 7)]

    alice = (await gw.board("7d"))["donors"][1]
    assert alice == {
        "rank": 2,
        "username": "alice",
        "display_name": "alice",
        "avatar_url": None,
        "anonymous": False,
        "active_keys": 2,
        "calls": 5,
        "tokens": 50,
        "calls_today": 3,
        "calls_total": 15,
        "value_usd": alice["value_usd"],
        "value_usd_total": alice["value_usd_total"],
        "share_today": 0.375,
        "last_served_at": alice["last_served_at"],
        "healthy": True,
    }
    assert datetime.fromisoformat(alice["last_served_at"]) <= datetime.now(UTC)
    all_time = await gw.board("all")
    assert all_time["donors"][1]["active_keys"] == 0 and all_time["donors"][1]["healthy"] is False

    # Today's reservations come from the balancer (Redis), the authority for limits.
    for _ in range(3):
        pick = await gw.app[BALANCER].pick(
            [Candidate(bob_key.id, 40)], user_id=str(uuid.uuid4()), limits=UserLimits(0, 0, 0),
            request_id=uuid.uuid4().hex, stream=False,
        )  # fmt: skip
        assert pick.outcome == "ok"
    totals = (await gw.board())["totals"]
    # 100 + 50 + 37, less the 8 calls credited in PostgreSQL today that seeded the day's counts.
    assert totals == {"donors": 2, "active_keys": 3, "models": 3, "calls_today": 8, "calls_left_today": 179,
                      "value_usd_today": totals["value_usd_today"]}  # fmt: skip


async def _user(gw: Gateway, name: str) -> User:
    from gateway.store import users

    async with gw.pool.acquire() as conn:
        user = await users.get_by_username(conn, name)
    assert user is not None
    return user


async def test_pool_health_and_capacity(gw: Gateway, redis: aioredis.Redis) -> None:
    _, a = await donor(gw, "alice", daily_limit=10, models=["gpt-4o-mini", "gpt-4o"])
    bob, b = await donor(gw, "bob", daily_limit=5, models=["gpt-4o-mini"])
    broken = await add_key(gw.pool, gw.config, bob, "https://x.example.com/v1", name="broken")
    async with gw.pool.acquire() as conn:
        disable = "UPDATE shared_keys SET status = 'disabled', disabled_by = 'upstream' WHERE id = $1"
        await conn.execute(disable, uuid.UUID(broken.id))
    await gw.app[KEY_INDEX].reload()
    balancer = gw.app[BALANCER]
    await balancer.cool_down(a.id, 60)
    for _ in range(7):
        await balancer.pick([Candidate(b.id, 5), Candidate(a.id, 10)], user_id="u", limits=UserLimits(0, 0, 0),
                            request_id=uuid.uuid4().hex, stream=False)  # fmt: skip

    snapshot = await gw.app[BOARD].refresh()
    assert snapshot.keys == board.KeyCounts(active=1, cooling=1, disabled=1, paused=0)
    assert snapshot.capacity == (
        ModelCapacity("gpt-4o", keys=1, limit=10, used=0),
        ModelCapacity("gpt-4o-mini", keys=2, limit=15, used=5),  # bob's key is spent; alice's is cooling
    )
    body = await gw.board()
    assert {d["username"]: d["healthy"] for d in body["donors"]} == {"alice": False, "bob": False}
    assert body["totals"]["calls_left_today"] == 10
    await balancer.clear(a.id)
    async with gw.pool.acquire() as conn:
        await conn.execute("DELETE FROM shared_keys WHERE id = $1", uuid.UUID(broken.id))
    assert {d["username"]: d["healthy"] for d in (await gw.board())["donors"]} == {"alice": True, "bob": True}


async def test_the_day_boundary_is_local_midnight_in_the_configured_zone(
    gw: Gateway, fake_upstream: FakeUpstream, redis: aioredis.Redis
) -> None:
    """Calls 3 s before and after midnight in Asia/Shanghai (16:00 UTC, the same UTC date) land on two days."""
    user, token = await user_with_token(gw.pool, "caller")
    owner, _ = await user_with_token(gw.pool, "donor")
    await add_key(gw.pool, gw.config, owner, fake_upstream.base_url)
    await gw.app[KEY_INDEX].reload()
    zone = ZoneInfo("Asia/Shanghai")
    midnight = datetime.combine(datetime.now(zone).date() + timedelta(days=2), datetime.min.time(), zone)
    balancer = gw.app[BALANCER]

    async def chat() -> None:
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
        resp = await gw.client.post("/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"})
        assert resp.status == 200, await resp.text()
        assert resp.headers["X-Sharekey-Provider"] == "donor"

    balancer._offset_ms = await offset_to(redis, midnight - timedelta(seconds=3))
    await chat()
    await chat()
    balancer._offset_ms = await offset_to(redis, midnight + timedelta(seconds=3))
    for _ in range(3):
        await chat()
    await gw.app[KEY_STATES].wait()
    assert await gw.app[USAGE].flush_once()

    assert gw.today == midnight.date()
    today = await gw.board()
    assert ranking(today) == [("donor", 3)]
    assert today["totals"]["calls_today"] == 3
    assert today["donors"][0]["tokens"] == 3 * 21 and today["donors"][0]["calls_total"] == 5
    assert ranking(await gw.board("7d")) == [("donor", 5)]
    async with gw.pool.acquire() as conn:
        days = await conn.fetch("SELECT day, calls FROM donor_usage_daily ORDER BY day")
    assert [(r["day"], r["calls"]) for r in days] == [(midnight.date() - timedelta(days=1), 2), (midnight.date(), 3)]


async def offset_to(client: aioredis.Redis, instant: datetime) -> int:
    """A clock offset that puts Redis' 'now' (as the balancer reads it) at `instant`."""
    seconds, micros = await client.time()
    return round(instant.timestamp() * 1000) - (seconds * 1000 + micros // 1000)


async def test_credit_is_written_exactly_once(gw: Gateway) -> None:
    today = gw.today
    _, key = await donor(gw, "alice")
    records = await credit(gw.app, key, today, 4, tokens=7)
    usage = gw.app[USAGE]
    for r in records:  # the same batch again (a retry after a lost answer): nothing changes
        usage.add(r)
    assert await usage.flush_once()
    async with gw.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT calls, tokens FROM donor_usage_daily")
        await conn.execute("DELETE FROM shared_keys WHERE id = $1", uuid.UUID(key.id))
    assert (row["calls"], row["tokens"]) == (4, 28)
    await gw.app[KEY_INDEX].reload()
    await credit(gw.app, key, today, 1)  # a call that finished after its key was deleted still counts
    body = await gw.board("all")
    assert ranking(body) == [("alice", 5)] and body["donors"][0]["active_keys"] == 0


async def test_anonymous_donors_are_counted_but_not_named(gw: Gateway) -> None:
    today = gw.today
    carol, carol_key = await donor(gw, "carol-secret-name")
    await set_user(gw.pool, carol, anonymous=True, display_name="Carol Q. Secret",
                   avatar_url=gw.config.oauth_linuxdo.avatar_base_url + "/user_avatar/carol/48/1.png")  # fmt: skip
    _, bob_key = await donor(gw, "bob")
    await credit(gw.app, carol_key, today, 6)
    await credit(gw.app, bob_key, today, 2)
    await gw.app[KEY_INDEX].reload()

    body = await gw.board()
    assert body["donors"][0] == {
        **body["donors"][0],
        "rank": 1,
        "username": None,
        "display_name": None,
        "avatar_url": None,
        "anonymous": True,
        "calls": 6,
    }
    assert body["totals"]["calls_today"] == 8 and body["totals"]["donors"] == 2
    text = json.dumps(body)
    assert "carol" not in text.lower() and "secret" not in text.lower()
    for path in ("/", "/thanks", "/thanks?period=all"):
        html = await (await gw.client.get(path)).text()
        assert "carol" not in html.lower() and "secret" not in html.lower(), path
    assert gw.app[KEY_INDEX].get(carol_key.id).provider == "anonymous"  # type: ignore[union-attr]


async def test_the_donor_sets_the_anonymous_flag(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    alice, token = await user_with_token(gw.pool, "alice")
    await add_key(gw.pool, gw.config, alice, fake_upstream.base_url)
    await credit(gw.app, (await _keys(gw))[0], gw.today, 1)
    auth = {"Authorization": f"Bearer {token}"}

    resp = await gw.client.put("/api/me", json={"anonymous": True}, headers=auth)
    assert resp.status == 200 and await resp.json() == {"username": "alice", "anonymous": True}
    assert (await gw.board())["donors"][0]["username"] is None
    # Every process reloads its key index: the provider header follows.
    for _ in range(100):
        key = gw.app[KEY_INDEX].get((await _keys(gw))[0].id)
        if key is not None and key.provider == "anonymous":
            break
        await asyncio.sleep(0.02)
    else:
        pytest.fail("the key index was not reloaded")
    assert (await gw.client.put("/api/me", json={"anonymous": False}, headers=auth)).status == 200
    assert (await gw.board())["donors"][0]["username"] == "alice"

    for body, field in (
        ({"anonymous": "yes"}, "anonymous"),
        ({}, "anonymous"),
        ({"anonymous": True, "name": 1}, "name"),
    ):
        resp = await gw.client.put("/api/me", json=body, headers=auth)
        assert resp.status == 422 and (await resp.json())["error"]["field"] == field
    assert (await gw.client.put("/api/me", data="{", headers=auth)).status == 400
    assert (await gw.client.put("/api/me", json={"anonymous": True})).status == 401


async def _keys(gw: Gateway) -> list[SharedKey]:
    from gateway.store import sharedkeys

    async with gw.pool.acquire() as conn:
        return await sharedkeys.list_keys(conn, timezone=gw.config.balancer.timezone)


# --- the cache ---------------------------------------------------------------------------------------


async def test_a_burst_of_visitors_costs_one_query(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = await donor(gw, "alice")
    await credit(gw.app, key, gw.today, 3)
    await gw.app[KEY_INDEX].reload()
    acquired: list[str] = []
    real_acquire = asyncpg.pool.Pool.acquire

    def counting_acquire(self: asyncpg.Pool, *args: Any, **kw: Any) -> Any:
        acquired.append("acquire")
        return real_acquire(self, *args, **kw)

    monkeypatch.setattr(asyncpg.pool.Pool, "acquire", counting_acquire)
    gw.app[BOARD].ttl = 1.0
    paths = [
        "/api/shared-keys/thanks-board",
        "/",
        "/thanks",
        "/thanks?period=all",
        "/api/shared-keys/thanks-board?period=7d",
    ]

    async def burst() -> None:
        responses = await asyncio.gather(*(gw.client.get(paths[i % len(paths)]) for i in range(150)))
        for resp in responses:
            assert resp.status == 200
            await resp.read()

    await burst()  # cold: everyone waits for the one refresh
    assert len(acquired) == 1
    await burst()  # fresh: from the cache
    assert len(acquired) == 1
    await asyncio.sleep(1.1)
    await burst()  # expired: served the last snapshot while one refresh runs
    await asyncio.sleep(0.05)
    assert len(acquired) == 2
    body = await gw.board(fresh=False)
    assert ranking(body) == [("alice", 3)]


async def test_a_database_outage_serves_the_last_board(gw: Gateway, monkeypatch: pytest.MonkeyPatch) -> None:
    _, key = await donor(gw, "alice")
    await credit(gw.app, key, gw.today, 2)
    await gw.app[KEY_INDEX].reload()
    assert ranking(await gw.board()) == [("alice", 2)]

    async def refused(*args: Any) -> list[asyncpg.Record]:
        raise ConnectionRefusedError("PostgreSQL is away")

    monkeypatch.setattr(board, "fetch", refused)
    assert ranking(await gw.board()) == [("alice", 2)], "the last snapshot"
    cold = boardcache.Board(gw.pool, gw.app[BALANCER], gw.app[KEY_INDEX], gw.config.oauth_linuxdo)
    with pytest.raises(board.BoardUnavailable):
        await cold.get()
    with pytest.raises(board.BoardUnavailable):
        await cold.get()  # within the retry pause: refused at once, no query
    await cold.close()


# --- validation -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("period=week", "period"),
        ("period=", "period"),
        ("limit=0", "limit"),
        ("limit=501", "limit"),
        ("limit=abc", "limit"),
        ("limit=1.5", "limit"),
        ("limit=-3", "limit"),
        ("limit=%EF%BC%95", "limit"),  # a full-width digit
    ],
)
async def test_bad_period_or_limit_is_422(gw: Gateway, query: str, field: str) -> None:
    resp = await gw.client.get(f"/api/shared-keys/thanks-board?{query}")
    assert resp.status == 422
    assert (await resp.json())["error"]["field"] == field


async def test_the_json_is_public_and_cacheable(gw: Gateway) -> None:
    resp = await gw.client.get("/api/shared-keys/thanks-board", params={"limit": "500", "period": "all"})
    assert resp.status == 200
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Content-Type"] == "application/json; charset=utf-8"
    assert await resp.json() == {
        "period": "all",
        "donors": [],
        "totals": {"donors": 0, "active_keys": 0, "models": 0, "calls_today": 0, "calls_left_today": 0,
                   "value_usd_today": 0},
    }  # fmt: skip


# --- charts --------------------------------------------------------------------------------------------


def test_charts_escape_what_they_are_given() -> None:
    evil = '<script>alert("m")</script>'
    svg = str(charts.capacity([ModelCapacity(evil, 1, 10, 4)], "cap", "{model}: {used}/{limit}"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "style=" not in svg
    bars = str(charts.day_bars([date(2026, 1, d) for d in (1, 2, 3)], [0, 5, 12], '"label"', ["a<b", "c", "d"]))
    assert bars.count("<rect") == 3 and "a&lt;b" in bars and "&#34;label&#34;" in bars
    spark = str(charts.sparkline([0, 0, 0], "flat"))
    assert "<polyline" in spark and "nan" not in spark
    assert [charts.nice_ceiling(v) for v in (0, 1, 3, 7, 10, 11, 240, 5001)] == [1, 1, 5, 10, 10, 20, 500, 10000]
