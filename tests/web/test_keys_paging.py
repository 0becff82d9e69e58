"""Keyset paging of GET /api/shared-keys and /keys at thousands of keys (issue #15): every key once,
`next` null at the end, limits enforced, `?all=1` for admins, and a page that costs the same at 5,000
keys as at 50 (`pytest -s` prints the timings)."""

from __future__ import annotations

import base64
import time
import uuid

import asyncpg

from gateway.relay.balancer import BALANCER
from gateway.store import keypages, users
from tests.support.fake_linuxdo import Site
from tests.web import test_keys_api, test_pages
from tests.web.test_keys_api import Api
from tests.web.test_pages import alice

api, make_api, people = test_keys_api.api, test_keys_api.make_api, test_keys_api.people  # fixtures
provider, site = test_pages.provider, test_pages.site  # fixtures

START = (keypages._START[0], keypages._START[1])

# A listing never opens a key: a stand-in ciphertext is enough (like test_db's rows). Every row of
# one statement shares now() as created_at, so the order rests on the id tie-break too.
BULK = """
INSERT INTO shared_keys (user_id, name, base_url, api_key_encrypted, key_version, api_key_hint, available_models)
SELECT $1, $2 || '-' || i, 'https://upstream.example/v1', 'sealed', 'v1', 'sk-…' || lpad(i::text, 4, '0'),
       '{gpt-4o-mini}'
FROM generate_series(1, $3) AS i
"""


async def bulk_keys(pool: asyncpg.Pool, owner_id: str, count: int, prefix: str = "bulk") -> None:
    async with pool.acquire() as conn:
        await conn.execute(BULK, uuid.UUID(owner_id), prefix, count)
        await conn.execute("ANALYZE shared_keys")


async def all_pages(api: Api, token: str | None = None, **params: str) -> tuple[list[str], int]:
    ids: list[str] = []
    pages = 0
    after: str | None = None
    while True:
        query = dict(params, **({"after": after} if after else {}))
        reply = await api.call("GET", "/api/shared-keys", token=token, params=query)
        assert reply.status == 200, reply
        assert set(reply.body) == {"keys", "next"}
        ids += [k["id"] for k in reply.body["keys"]]
        pages += 1
        after = reply.body["next"]
        if after is None:
            return ids, pages


async def test_paging_returns_every_key_once_in_a_stable_order(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 1200)
    await bulk_keys(pool, api.people.bob.id, 30, "bobs")
    async with pool.acquire() as conn:
        expected = [str(r["id"]) for r in await conn.fetch(
            "SELECT id FROM shared_keys WHERE user_id = $1 ORDER BY created_at, id", uuid.UUID(api.people.alice.id)
        )]  # fmt: skip

    ids, pages = await all_pages(api, limit="500")
    assert (len(ids), pages) == (1200, 3)
    assert ids == expected  # each exactly once, oldest first

    ids, pages = await all_pages(api)  # the default page: 100
    assert (ids, pages) == (expected, 12)
    ids, pages = await all_pages(api, limit="7")
    assert ids == expected and pages == 172

    # No limit: still `keys`, the first 100, and where to go on.
    reply = await api.call("GET", "/api/shared-keys")
    assert len(reply.body["keys"]) == 100 and reply.body["next"]
    assert [k["id"] for k in reply.body["keys"]] == expected[:100]
    # Exactly one page's worth: no next page.
    reply = await api.call("GET", "/api/shared-keys", params={"limit": "30"}, token=api.people.bob_token)
    assert len(reply.body["keys"]) == 30 and reply.body["next"] is None
    # ?id= is unchanged.
    reply = await api.call("GET", "/api/shared-keys", params={"id": expected[5]})
    assert [k["id"] for k in reply.body["keys"]] == [expected[5]]


async def test_a_key_added_or_deleted_between_pages_does_not_shift_the_others(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 10)
    first = await api.call("GET", "/api/shared-keys", params={"limit": "4"})
    seen = [k["id"] for k in first.body["keys"]]
    async with pool.acquire() as conn:
        await conn.execute("DELETE FROM shared_keys WHERE id = $1::uuid", seen[0])
    await bulk_keys(pool, api.people.alice.id, 1, "late")  # newer: comes last
    rest = await api.call("GET", "/api/shared-keys", params={"after": first.body["next"]})
    names = [k["name"] for k in rest.body["keys"]]
    assert len(names) == 7 and names[-1] == "late-1" and not set(seen) & {k["id"] for k in rest.body["keys"]}


async def test_limit_and_after_are_checked(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 3)
    for bad in ("0", "501", "-1", "abc", "1.5", "", " 5", "٣"):
        reply = await api.call("GET", "/api/shared-keys", params={"limit": bad})
        assert reply.status == 422, bad
        assert reply.body["error"]["field"] == "limit", reply.body
    assert (await api.call("GET", "/api/shared-keys", params={"limit": "500"})).status == 200
    assert (await api.call("GET", "/api/shared-keys", params={"limit": "1"})).status == 200
    naive = base64.urlsafe_b64encode(f"2024-01-01T00:00:00|{uuid.uuid4()}".encode()).decode()
    for bad in ("nonsense", "!!!", "MjAyNA", naive, naive + "x"):
        reply = await api.call("GET", "/api/shared-keys", params={"after": bad})
        assert reply.status == 422, bad
        assert reply.body["error"]["field"] == "after", reply.body


def _cursor(when: str) -> str:
    return base64.urlsafe_b64encode(f"{when}|{uuid.uuid4()}".encode()).decode().rstrip("=")


# Times a datetime holds only with their offset: in UTC (as PostgreSQL gets them) they fall
# before year 1 or after year 9999. Before: 500 on /api/shared-keys, a 503 page on /keys.
OUT_OF_RANGE = ("0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "0001-01-01T03:00:00+23:59")


async def test_a_cursor_dated_out_of_range_is_a_422_naming_after(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 3)
    for when in OUT_OF_RANGE:
        reply = await api.call("GET", "/api/shared-keys", params={"after": _cursor(when)})
        assert reply.status == 422, (when, reply)
        assert reply.body["error"] == {
            "message": "after must be the 'next' value of a previous page",
            "code": "invalid_field",
            "field": "after",
        }
        reply = await api.call("GET", "/api/shared-keys", params={"after": _cursor(when), "all": "1"})
        assert reply.status == 422 and reply.body["error"]["field"] == "after", reply
    # The edges themselves, in UTC, are well-formed cursors: before every key, after every key.
    reply = await api.call("GET", "/api/shared-keys", params={"after": _cursor("0001-01-01T00:00:00+00:00")})
    assert reply.status == 200 and len(reply.body["keys"]) == 3
    reply = await api.call("GET", "/api/shared-keys", params={"after": _cursor("9999-12-31T23:59:59.999999+00:00")})
    assert (reply.status, reply.body) == (200, {"keys": [], "next": None})


async def test_admins_page_through_every_key(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 250)
    await bulk_keys(pool, api.people.bob.id, 250, "bobs")
    async with pool.acquire() as conn:
        expected = [str(r["id"]) for r in await conn.fetch("SELECT id FROM shared_keys ORDER BY created_at, id")]
    ids, pages = await all_pages(api, api.people.admin_token, all="1", limit="200")
    assert (ids, pages) == (expected, 3)
    # Not an admin: ?all=1 is the caller's own keys.
    ids, _ = await all_pages(api, api.people.bob_token, all="1", limit="200")
    assert len(ids) == 250


async def test_live_state_reads_only_the_page(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 5)
    reply = await api.call("GET", "/api/shared-keys", params={"limit": "2"})
    first, second = (k["id"] for k in reply.body["keys"])
    balancer = api.app[BALANCER]
    await balancer.cool_down(second, 60)
    assert set(await balancer.cooling([first, second, str(uuid.uuid4())])) == {second}
    assert await balancer.cooling([]) == {}
    reply = await api.call("GET", "/api/shared-keys", params={"limit": "2"})
    assert [k["status"] for k in reply.body["keys"]] == ["active", "cooling"]


async def timed_page(api: Api, token: str | None = None, rounds: int = 30, **params: str) -> float:
    """Milliseconds for one page of 50 (the whole list at 50 keys), the best of `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        reply = await api.call("GET", "/api/shared-keys", token=token, params={"limit": "50", **params})
        best = min(best, time.perf_counter() - started)
        assert reply.status == 200 and len(reply.body["keys"]) == 50
    return best * 1000


async def test_a_page_costs_the_same_at_5000_keys_as_at_50(api: Api, pool: asyncpg.Pool) -> None:
    await bulk_keys(pool, api.people.alice.id, 50)
    small = await timed_page(api)
    await bulk_keys(pool, api.people.alice.id, 4950, "more")
    await bulk_keys(pool, api.people.bob.id, 5000, "bobs")
    large = await timed_page(api)
    reply = await api.call("GET", "/api/shared-keys", params={"limit": "100"})
    middle = await timed_page(api, after=reply.body["next"])  # keys 101-150 of 5,000
    everyone = await timed_page(api, token=api.people.admin_token, all="1")
    async with pool.acquire() as conn:
        owner = uuid.UUID(api.people.alice.id)
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + keypages.PAGE_OWNER, "UTC", owner, *START, 101))
        plan_all = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + keypages.PAGE_ALL, "UTC", *START, 101))
    print(
        f"\nGET /api/shared-keys?limit=50, best of 30: {small:.1f} ms at 50 keys; at 5,000 (10,000 in the table):"
        f" first page {large:.1f} ms, a later page {middle:.1f} ms, ?all=1 {everyone:.1f} ms"
    )
    assert "idx_shared_keys_user_created" in plan and "idx_shared_keys_created" in plan_all, (plan, plan_all)
    assert max(large, middle, everyone) < small * 2 + 5, (small, large, middle, everyone)


async def test_keys_page_shows_the_first_page_and_links_the_next(site: Site) -> None:
    await alice(site)
    async with site.pool.acquire() as conn:
        me = await users.get_by_username(conn, "alice")
    assert me is not None
    await bulk_keys(site.pool, me.id, 1200)
    started = time.perf_counter()
    resp = await site.client.get("/keys", headers={"Accept-Language": "en"})
    took = (time.perf_counter() - started) * 1000
    html = await resp.text()
    assert resp.status == 200
    print(f"\n/keys with 1,200 keys: {took:.0f} ms, {len(html):,} bytes")
    assert html.count('data-key-id="') == 100
    assert "Your keys (100 on this page)" in html and "More keys →" in html
    next_link = html.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert next_link.startswith("/keys?after=")
    seen = set(_ids(html))
    pages = 1
    while next_link:
        resp = await site.client.get(next_link.replace("&amp;", "&"))
        html = await resp.text()
        assert resp.status == 200 and "Back to the first page" in html
        page_ids = _ids(html)
        assert not seen & set(page_ids)
        seen |= set(page_ids)
        pages += 1
        next_link = html.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0] if 'rel="next"' in html else ""
    assert (len(seen), pages) == (1200, 12)
    # Chinese too.
    resp = await site.client.get("/keys", headers={"Accept-Language": "zh-CN"})
    html = await resp.text()
    assert resp.status == 200 and "更多密钥 →" in html and "本页 100 个" in html


async def test_keys_page_answers_a_mangled_or_out_of_range_cursor_with_a_422_page(site: Site) -> None:
    await alice(site)
    async with site.pool.acquire() as conn:
        me = await users.get_by_username(conn, "alice")
    assert me is not None
    await bulk_keys(site.pool, me.id, 3)
    for after in ("garbage", *(_cursor(when) for when in OUT_OF_RANGE)):
        resp = await site.client.get(f"/keys?after={after}", headers={"Accept-Language": "en"})
        html = await resp.text()
        assert resp.status == 422, (after, resp.status)
        assert "This page link is not valid" in html and "data-key-id" not in html
        assert resp.content_type == "text/html"
    resp = await site.client.get(f"/keys?after={_cursor(OUT_OF_RANGE[0])}", headers={"Accept-Language": "zh-CN"})
    assert resp.status == 422 and "这个分页链接无效" in await resp.text()
    resp = await site.client.get("/keys", headers={"Accept-Language": "en"})
    assert resp.status == 200 and (await resp.text()).count('data-key-id="') == 3


def _ids(html: str) -> list[str]:
    return [part.split('"', 1)[0] for part in html.split('data-key-id="')[1:]]
