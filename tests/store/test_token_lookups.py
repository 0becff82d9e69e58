"""Forged tokens against the token cache: what they cost PostgreSQL, and that they never push a
known token out (which must then keep working while PostgreSQL is unreachable).

PostgreSQL's own counters are the measure: each test gets a database of its own, so
`pg_stat_database` counts its transactions and nobody else's, and "unreachable" is that database
refusing connections (`ALLOW_CONNECTIONS false`, its sessions terminated)."""

from __future__ import annotations

import asyncio
import random
import secrets
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import anthropic
import asyncpg
import openai
import pytest

from gateway import config as config_mod
from gateway.app import create_app
from gateway.errors import POSTGRES_DOWN
from gateway.store import db, tokens
from gateway.store.lookuplimit import LookupLimit, client_key
from gateway.store.tokens import TokenCache, TooManyLookups
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.seed import add_key, user_with_token

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def forge(n: int) -> list[str]:
    """`n` distinct well-formed tokens nobody issued: the checksum is public, so anyone can."""
    out = []
    for _ in range(n):
        body = tokens.PREFIX + "".join(random.choices(tokens.BASE62, k=tokens.BODY_LEN))
        crc, check = zlib.crc32(body.encode()), []
        for _ in range(tokens.CHECK_LEN):
            crc, r = divmod(crc, 62)
            check.append(tokens.BASE62[r])
        out.append(body + "".join(reversed(check)))
    return out


@dataclass
class OwnDatabase:
    """A database of the test's own on the test server: its transactions are the test's alone."""

    admin_url: str  # the shared test database, to watch and switch this one from
    name: str
    url: str

    async def transactions(self) -> int:
        """Commits and rollbacks so far, once every session of this database has ended (a backend
        reports its counts when it exits, at the latest)."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            deadline = time.monotonic() + 15
            while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1", self.name):
                assert time.monotonic() < deadline, "sessions of the test database did not end"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            return await conn.fetchval(
                "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1", self.name
            )
        finally:
            await conn.close()

    async def refuse_connections(self) -> None:
        """PostgreSQL becomes unreachable for this database: new sessions refused, open ones ended."""
        conn = await asyncpg.connect(self.admin_url)
        try:
            await conn.execute(f'ALTER DATABASE "{self.name}" ALLOW_CONNECTIONS false')
            await conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", self.name)
        finally:
            await conn.close()


@pytest.fixture
async def own_db(servers: tuple[str, str]) -> AsyncIterator[OwnDatabase]:
    admin_url = servers[0]
    name = "tk_" + secrets.token_hex(6)
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urllib.parse.urlsplit(admin_url)
    own = OwnDatabase(admin_url, name, urllib.parse.urlunsplit(parts._replace(path="/" + name)))
    conn = await asyncpg.connect(own.url)
    try:
        await db.migrate(conn)
    finally:
        await conn.close()
    yield own
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


async def test_a_hundred_thousand_forged_tokens_cost_a_few_queries_and_leave_the_known_token_working(
    own_db: OwnDatabase,
) -> None:
    async with asyncpg.create_pool(own_db.url, min_size=1, max_size=2) as seed_pool:
        user, token = await user_with_token(seed_pool, "alice")
    before = await own_db.transactions()
    pool = await asyncpg.create_pool(own_db.url, min_size=1, max_size=4)
    cache = TokenCache(pool, lookups_per_minute=30)
    caller = await cache.lookup(token, "198.51.100.7")
    assert caller is not None and caller.user_id == user.id

    refused = answered = 0
    for forged in forge(100_000):
        try:
            assert await cache.lookup(forged, "198.51.100.7") is None
            answered += 1
        except TooManyLookups as e:
            assert 0 < e.retry_after <= 2.5
            refused += 1
    assert answered <= 31 and refused >= 100_000 - 31  # the bucket, and what refilled meanwhile

    await own_db.refuse_connections()  # PostgreSQL unreachable from here on
    assert await cache.lookup(token, "198.51.100.7") == caller  # still known: nothing pushed it out
    assert await cache.lookup(token, "203.0.113.9") == caller  # from any address
    with pytest.raises(POSTGRES_DOWN):
        await cache.lookup(forge(1)[0], "203.0.113.9")  # a new address's unknown token: cannot be checked
    pool.terminate()
    # Each look-up is two transactions (the query, the pool's reset): the known token's and the
    # few forged ones the bucket let through. Before: one look-up per forged token, 200,000+.
    assert await own_db.transactions() - before <= 2 * (answered + 1) + 20  # + the pool's own


async def test_misses_never_evict_a_known_token_and_known_tokens_leave_least_recently_used_first(
    own_db: OwnDatabase,
) -> None:
    async with asyncpg.create_pool(own_db.url, min_size=1, max_size=2) as seed_pool:
        known = [await user_with_token(seed_pool, f"user{i}") for i in range(4)]
    pool = await asyncpg.create_pool(own_db.url, min_size=1, max_size=4)
    cache = TokenCache(pool, max_entries=3, max_misses=50, lookups_per_minute=0)  # no look-up limit here
    a, b, c, d = (tok for _, tok in known)
    for tok in (a, b, c):
        assert await cache.lookup(tok) is not None
    for forged in forge(2_000):  # each one a query: misses fill their own cache, over and over
        assert await cache.lookup(forged) is None
    assert await cache.lookup(a) is not None  # a is now the most recently used; b the least
    assert await cache.lookup(d) is not None  # the fourth known token: b leaves, and only b

    await own_db.refuse_connections()
    for tok in (a, c, d):
        assert (await cache.lookup(tok)) is not None
    with pytest.raises(POSTGRES_DOWN):
        await cache.lookup(b)  # the one pushed out must be asked about, and PostgreSQL is away
    pool.terminate()


async def test_a_miss_is_remembered_and_a_found_token_gives_its_look_up_back(own_db: OwnDatabase) -> None:
    async with asyncpg.create_pool(own_db.url, min_size=1, max_size=2) as seed_pool:
        tokens_of = [(await user_with_token(seed_pool, f"u{i}"))[1] for i in range(5)]
    pool = await asyncpg.create_pool(own_db.url, min_size=1, max_size=2)
    cache = TokenCache(pool, lookups_per_minute=3)
    for tok in tokens_of:  # five real tokens from one address under a limit of three: all found
        assert await cache.lookup(tok, "192.0.2.1") is not None
    forged = forge(1)[0]
    for _ in range(20):  # the same unknown token again and again: one look-up, then the miss cache
        assert await cache.lookup(forged, "192.0.2.1") is None
    assert await cache.lookup(forge(1)[0], "192.0.2.1") is None
    assert await cache.lookup(forge(1)[0], "192.0.2.1") is None
    with pytest.raises(TooManyLookups):
        await cache.lookup(forge(1)[0], "192.0.2.1")
    assert await cache.lookup(forge(1)[0], "192.0.2.2") is None  # another address: its own bucket
    await pool.close()


def test_addresses_count_per_ipv4_address_and_per_ipv6_64() -> None:
    assert client_key("192.0.2.1") == "192.0.2.1"
    assert client_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert client_key("2001:db8:1:3::1") != client_key("2001:db8:1:2::1")
    assert client_key(None) == client_key("") == client_key("not an address") == ""
    limit = LookupLimit(2, max_addresses=3)
    assert [limit.take("2001:db8::1", 0.0), limit.take("2001:db8::2", 0.0)] == [0.0, 0.0]
    assert limit.take("2001:db8::3", 0.0) == pytest.approx(30.0)  # one more a 30 s from now
    assert limit.take("2001:db8::3", 30.0) == 0.0
    for i in range(5):  # more addresses than it keeps: the least recently seen are forgotten
        limit.take(f"192.0.2.{i}", 31.0)
    assert len(limit._buckets) == 3


@pytest.fixture
async def forged_gateway(own_db: OwnDatabase, config: config_mod.Config, fake_upstream: FakeUpstream, aiohttp_client):  # type: ignore[no-untyped-def]
    config = gateway_config(config.replace("database", url=own_db.url), unknown_token_lookups_per_minute=20)
    async with asyncpg.create_pool(own_db.url, min_size=1, max_size=2) as seed_pool:
        donor, _ = await user_with_token(seed_pool, "donor")
        user, token = await user_with_token(seed_pool, "caller")
        await add_key(seed_pool, config, donor, fake_upstream.base_url)
    before = await own_db.transactions()
    client = await aiohttp_client(create_app(config))
    return client, token, before


async def test_forged_tokens_through_the_gateway_get_429_without_a_query_and_the_known_token_serves_through_an_outage(
    forged_gateway: tuple[Any, str, int], own_db: OwnDatabase, fake_upstream: FakeUpstream
) -> None:
    client, token, before = forged_gateway
    base = str(client.make_url("/v1"))
    sdk = openai.AsyncOpenAI(base_url=base, api_key=token, max_retries=0)
    try:
        await sdk.chat.completions.create(**CHAT)  # the caller's token is known from here on
        served = len(fake_upstream.requests)
        statuses: dict[int, int] = {}
        for forged in forge(300):
            resp = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {forged}"})
            body = await resp.json()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if resp.status == 429:
                assert body["error"]["code"] == "too_many_token_lookups" and body["error"]["type"] == "rate_limit_error"
                assert 1 <= int(resp.headers["Retry-After"]) <= 3
            else:
                assert resp.status == 401 and body["error"]["code"] == "invalid_api_key", body
        assert statuses[401] <= 22 and statuses[401] + statuses[429] == 300, statuses
        assert len(fake_upstream.requests) == served  # nothing of theirs went upstream

        # The same refusal in the other routes' shapes.
        forged = forge(1)[0]
        with pytest.raises(anthropic.RateLimitError) as e:
            async with anthropic.AsyncAnthropic(base_url=base.removesuffix("/v1"), api_key=forged, max_retries=0) as a:
                await a.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
        assert e.value.body["type"] == "error" and e.value.body["error"]["type"] == "rate_limit_error"
        resp = await client.get("/api/shared-keys", headers={"Authorization": f"Bearer {forged}"})
        assert resp.status == 429 and resp.headers["Retry-After"]
        assert (await resp.json())["error"]["code"] == "too_many_token_lookups"

        await own_db.refuse_connections()  # PostgreSQL unreachable: the known token still serves
        reply = await sdk.chat.completions.create(**CHAT)
        assert reply.choices[0].message.content and len(fake_upstream.requests) == served + 1
    finally:
        await sdk.close()
    await client.close()
    # 300 forged tokens, yet only the ~20 the bucket let through (plus start-up and the two calls'
    # accounting) reached PostgreSQL; each look-up is two transactions (the query, the reset).
    assert await own_db.transactions() - before < 120
