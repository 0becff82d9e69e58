"""/api/shared-keys end to end: real PostgreSQL and Redis, the fake upstream, the app the gateway serves.

Every upstream is on loopback. The donor key must never come back in a response or a log line.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from structlog.testing import capture_logs

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.net import ssrf, upstream
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.usage import USAGE
from gateway.store import sharedkeys
from gateway.store.crypto import KEYRING
from gateway.store.users import User
from gateway.web.api import keys_api
from tests.net.test_upstream import Listener
from tests.support.clirun import sharekey
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import user_with_token

DONOR_KEY = "sk-donor-SECRET-api-key-7f3e9a2c"
OTHER_KEY = "sk-second-SECRET-api-key-0b1d4e"


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str]


@dataclass
class Api:
    client: TestClient
    app: web.Application
    pool: asyncpg.Pool
    config: config_mod.Config
    people: People
    seen: list[str] = field(default_factory=list)  # every response body, to search for the key

    async def call(
        self, method: str, path: str, body: Any = None, *, token: str | None = None, raw: bytes | None = None, **kw: Any
    ) -> Reply:
        headers = {"Authorization": f"Bearer {token or self.people.alice_token}"} if token != "" else {}
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        async with self.client.request(method, path, data=data, headers=headers, **kw) as resp:
            text = await resp.text()
            self.seen.append(text + json.dumps(dict(resp.headers)))
            parsed = json.loads(text) if text else None
            return Reply(resp.status, parsed, dict(resp.headers))

    async def add(self, upstream_: FakeUpstream, *, token: str | None = None, **fields: Any) -> Reply:
        body = {
            "name": "main",
            "base_url": upstream_.base_url,
            "api_key": DONOR_KEY,
            "available_models": ["gpt-4o-mini"],
            **fields,
        }
        return await self.call("POST", "/api/shared-keys", body, token=token)

    async def keys(self, token: str | None = None, **params: str) -> list[dict[str, Any]]:
        reply = await self.call("GET", "/api/shared-keys", token=token, params=params)
        assert reply.status == 200, reply
        return reply.body["keys"]  # type: ignore[no-any-return]

    async def models(self) -> list[str]:
        reply = await self.call("GET", "/v1/models", token=self.people.bob_token)
        return [m["id"] for m in reply.body["data"]]

    async def rows(self) -> int:
        async with self.pool.acquire() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM shared_keys"))


@dataclass
class People:
    alice: User
    alice_token: str
    bob: User
    bob_token: str
    admin: User
    admin_token: str


def api_config(config: config_mod.Config, **security: Any) -> config_mod.Config:
    config = config.replace(
        "limits", user_daily_requests=0, user_requests_per_minute=0, key_tests_per_minute=1000
    ).replace("upstream", test_timeout=3.0, connect_timeout=2.0)
    return config.replace("security", **security) if security else config


@pytest.fixture
async def people(pool: asyncpg.Pool) -> People:
    alice, alice_token = await user_with_token(pool, "alice")
    bob, bob_token = await user_with_token(pool, "bob")
    admin, admin_token = await user_with_token(pool, "root", admin=True)
    return People(alice, alice_token, bob, bob_token, admin, admin_token)


MakeApi = Callable[[config_mod.Config], Awaitable[Api]]


@pytest.fixture
async def make_api(pool: asyncpg.Pool, people: People, aiohttp_client: Any) -> MakeApi:
    async def make(config: config_mod.Config) -> Api:
        app = create_app(config)
        client = await aiohttp_client(app)
        return Api(client, app, pool, config, people)

    return make


@pytest.fixture
async def api(make_api: MakeApi, config: config_mod.Config) -> Api:
    return await make_api(api_config(config))


@pytest.fixture
async def second_upstream(aiohttp_server: Any) -> FakeUpstream:
    other = FakeUpstream(models=["gpt-4o-mini", "o3-mini"], reply="Hello from the second upstream")
    other.server = await aiohttp_server(other.app)
    return other


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def until(check: Callable[[], Awaitable[bool]], within: float = 1.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        if await check():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)


# --- the round trip ------------------------------------------------------------------------------


async def test_crud_round_trip_never_shows_the_key(api: Api, fake_upstream: FakeUpstream) -> None:
    with capture_logs() as logs:
        reply = await api.add(
            fake_upstream,
            name="  main ",
            base_url=fake_upstream.base_url + "/",
            available_models=[" gpt-4o-mini", "gpt-4o-mini", "text-embedding-3-small"],
            daily_limit=500,
            description="my spare key",
            tags=["fast", "fast", "cheap"],
        )
        assert reply.status == 201, reply
        item = reply.body
        assert item["name"] == "main"
        assert item["base_url"] == fake_upstream.base_url  # trailing slash dropped
        assert item["available_models"] == ["gpt-4o-mini", "text-embedding-3-small"]
        assert (item["daily_limit"], item["description"], item["tags"]) == (500, "my spare key", ["fast", "cheap"])
        assert (item["is_active"], item["status"], item["status_reason"]) == (True, "active", None)
        assert item["api_key_masked"] == "sk-…9a2c"
        assert (item["usage_count_today"], item["total_usage_count"], item["total_tokens"]) == (0, 0, 0)
        expected = {"id", "name", "base_url", "available_models", "daily_limit", "description", "tags", "is_active"}
        expected |= {"status", "status_reason", "api_key_masked", "usage_count_today", "total_usage_count"}
        expected |= {"total_tokens", "last_used_at", "last_error", "created_at", "updated_at"}
        assert expected <= set(item)
        # Tested live first: the models list and a one-token completion, with the donor's key.
        assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/chat/completions"]
        assert fake_upstream.requests[1].headers["Authorization"] == f"Bearer {DONOR_KEY}"
        key_id = item["id"]

        assert await api.keys() == [item]
        assert (await api.call("GET", "/api/shared-keys", params={"id": key_id})).body == {"keys": [item]}

        async with api.pool.acquire() as conn:
            row = await conn.fetchrow("SELECT * FROM shared_keys WHERE id = $1::uuid", key_id)
        assert DONOR_KEY not in row["api_key_encrypted"]
        ring = api.app[KEYRING]
        opened = ring.open(
            row["api_key_encrypted"], key_id=key_id, owner_id=api.people.alice.id, base_url=row["base_url"]
        )
        assert opened == DONOR_KEY

        fake_upstream.requests.clear()
        reply = await api.call(
            "PUT", "/api/shared-keys", {"id": key_id, "name": "renamed", "daily_limit": 20, "description": None}
        )
        assert reply.status == 200, reply
        assert (reply.body["name"], reply.body["daily_limit"], reply.body["description"]) == ("renamed", 20, None)
        assert reply.body["tags"] == ["fast", "cheap"], "fields not given are kept"
        assert fake_upstream.requests == [], "no live test when neither the URL nor the key changed"

        reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": False})
        assert (reply.status, reply.body["is_active"], reply.body["status"]) == (200, False, "paused")
        reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": True})
        assert (reply.status, reply.body["status"]) == (200, "active")

        reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_key": OTHER_KEY})
        assert (reply.status, reply.body["api_key_masked"]) == (200, "sk-…" + OTHER_KEY[-4:])
        assert fake_upstream.requests[-1].headers["Authorization"] == f"Bearer {OTHER_KEY}", "a new key is tested"

        reply = await api.call("DELETE", "/api/shared-keys", params={"id": key_id})
        assert (reply.status, reply.body) == (204, None)
        assert await api.keys() == []
        assert await api.rows() == 0
        again = await api.call("DELETE", "/api/shared-keys", params={"id": key_id})
        assert again.status == 404

        # A failing add and a test call go through the same scrutiny.
        fake_upstream.valid_keys = {"sk-something-else-entirely"}
        assert (await api.add(fake_upstream)).status == 422
        body = {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY}
        assert (await api.call("POST", "/api/shared-keys/test", body)).body["ok"] is False

    events = [e["event"] for e in logs]
    assert {"key_added", "key_updated", "key_deleted", "key_tested", "request"} <= set(events)
    for secret in (DONOR_KEY, OTHER_KEY):
        assert not any(secret in text for text in api.seen), "a response carried the key"
        assert not any(secret in repr(e) for e in logs), "a log line carried the key"


async def test_a_new_key_serves_at_once_and_leaves_the_pool_at_once(api: Api, fake_upstream: FakeUpstream) -> None:
    assert await api.models() == []
    reply = await api.add(fake_upstream, available_models=["gpt-4o-mini"])
    key_id = reply.body["id"]
    assert await until(lambda: _lists(api, "gpt-4o-mini")), "the keys event reloads the index within a second"

    chat = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    done = await api.call("POST", "/v1/chat/completions", chat, token=api.people.bob_token)
    assert done.status == 200, done
    assert done.body["choices"][0]["message"]["content"] == fake_upstream.reply
    assert done.headers["X-Sharekey-Provider"] == "alice"
    assert fake_upstream.calls("/v1/chat/completions")[-1].headers["Authorization"] == f"Bearer {DONOR_KEY}"
    [item] = await api.keys()
    assert item["usage_count_today"] == 1, "today's count comes from the balancer"

    await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": False})
    assert await until(lambda: _gone(api, "gpt-4o-mini")), "a paused key leaves within a second"
    await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": True})
    assert await until(lambda: _lists(api, "gpt-4o-mini"))

    assert await api.app[USAGE].flush_once()
    assert (await api.call("DELETE", "/api/shared-keys", params={"id": key_id})).status == 204
    assert await until(lambda: _gone(api, "gpt-4o-mini")), "a deleted key leaves within a second"
    async with api.pool.acquire() as conn:
        log_row = await conn.fetchrow("SELECT shared_key_id, donor_id, status FROM key_usage_logs")
    assert (log_row["shared_key_id"], str(log_row["donor_id"]), log_row["status"]) == (None, api.people.alice.id, "ok")


async def _lists(api: Api, model: str) -> bool:
    return model in await api.models()


async def _gone(api: Api, model: str) -> bool:
    return model not in await api.models()


# --- a failing live test stores nothing ----------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "field", "error"),
    [
        ("bad_key", "api_key", "the upstream rejected the key"),
        ("model", "available_models", "the upstream does not offer: gpt-9"),
        ("closed_port", "base_url", upstream.UNREACHABLE),
    ],
)
async def test_a_failing_live_test_stores_nothing(
    api: Api, fake_upstream: FakeUpstream, case: str, field: str, error: str
) -> None:
    fields: dict[str, Any] = {}
    if case == "bad_key":
        fake_upstream.valid_keys = {"sk-the-only-valid-key-000"}
    elif case == "model":
        fields["available_models"] = ["gpt-4o-mini", "gpt-9"]
    else:
        fields["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
    reply = await api.add(fake_upstream, **fields)
    assert reply.status == 422
    assert reply.body == {
        "error": {"message": f"the key failed its live test: {error}", "code": "key_test_failed", "field": field}
    }
    assert await api.rows() == 0
    assert await api.keys() == []


async def test_a_failing_retest_on_edit_changes_nothing(api: Api, fake_upstream: FakeUpstream) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    fake_upstream.valid_keys = {DONOR_KEY}
    reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_key": OTHER_KEY, "name": "new"})
    assert (reply.status, reply.body["error"]["code"], reply.body["error"]["field"]) == (
        422,
        "key_test_failed",
        "api_key",
    )
    [item] = await api.keys()
    assert (item["name"], item["api_key_masked"]) == ("main", "sk-…9a2c")


async def test_adding_a_model_tests_the_stored_key_again(api: Api, fake_upstream: FakeUpstream) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    tests_before = len(fake_upstream.calls("/v1/models"))
    unserved = await api.call("PUT", "/api/shared-keys", {"id": key_id, "available_models": ["gpt-4o-mini", "gpt-9"]})
    assert (unserved.status, unserved.body["error"]["code"], unserved.body["error"]["field"]) == (
        422,
        "key_test_failed",
        "available_models",
    )
    assert "gpt-9" in unserved.body["error"]["message"]
    [item] = await api.keys()
    assert item["available_models"] == ["gpt-4o-mini"], "a failed test changes nothing"
    served = ["gpt-4o-mini", "text-embedding-3-small"]
    added = await api.call("PUT", "/api/shared-keys", {"id": key_id, "available_models": served})
    assert added.status == 200 and added.body["available_models"] == served
    removed = await api.call("PUT", "/api/shared-keys", {"id": key_id, "available_models": ["gpt-4o-mini"]})
    assert removed.status == 200 and removed.body["available_models"] == ["gpt-4o-mini"]
    assert len(fake_upstream.calls("/v1/models")) == tests_before + 2, "tested on adding, not on removing"
    sent = {c.headers.get("Authorization") for c in fake_upstream.calls("/v1/models")}
    assert sent == {f"Bearer {DONOR_KEY}"}, "the stored key was the one tested"


# --- ownership -----------------------------------------------------------------------------------


async def test_another_users_key_answers_404_like_a_missing_one(api: Api, fake_upstream: FakeUpstream) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    bob = api.people.bob_token
    assert await api.keys(token=bob) == []
    missing = "00000000-0000-4000-8000-000000000000"
    replies = []
    for some_id in (key_id, missing, "not-a-uuid", key_id.upper() + "x"):
        replies += [
            await api.call("GET", "/api/shared-keys", token=bob, params={"id": some_id}),
            await api.call("PUT", "/api/shared-keys", {"id": some_id, "is_active": False}, token=bob),
            await api.call("DELETE", "/api/shared-keys", token=bob, params={"id": some_id}),
        ]
    replies.append(await api.call("PUT", "/api/shared-keys", {"id": 12, "name": "x"}, token=bob))
    not_found = {"error": {"message": "No such key.", "code": "not_found"}}
    assert {r.status for r in replies} == {404}
    assert all(r.body == not_found for r in replies)
    [item] = await api.keys()
    assert item["is_active"] is True and await api.rows() == 1


async def test_admins_list_every_key_and_may_only_pause_others(
    api: Api, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    alice_key = (await api.add(fake_upstream)).body["id"]
    bob_key = (await api.add(second_upstream, token=api.people.bob_token, api_key=OTHER_KEY)).body["id"]
    admin = api.people.admin_token
    assert {k["id"] for k in await api.keys(token=admin, all="1")} == {alice_key, bob_key}
    assert await api.keys(token=admin) == [], "without ?all=1 an admin sees their own keys"
    assert [k["id"] for k in await api.keys(all="1")] == [alice_key], "?all=1 is for admins only"

    reply = await api.call("PUT", "/api/shared-keys", {"id": bob_key, "is_active": False}, token=admin)
    assert (reply.status, reply.body["status"]) == (200, "paused")
    reply = await api.call("PUT", "/api/shared-keys", {"id": bob_key, "name": "mine"}, token=admin)
    assert (reply.status, reply.body["error"]["code"]) == (403, "forbidden")
    reply = await api.call("DELETE", "/api/shared-keys", token=admin, params={"id": bob_key})
    assert reply.status == 403
    assert await api.rows() == 2


# --- edits ---------------------------------------------------------------------------------------


async def test_a_new_base_url_needs_the_key_again(
    api: Api, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "base_url": second_upstream.base_url})
    assert reply.status == 422
    assert reply.body["error"] == {
        "message": "enter the key again: it is bound to its base URL",
        "code": "invalid_field",
        "field": "api_key",
    }
    # The same URL spelled differently is no change.
    same = await api.call("PUT", "/api/shared-keys", {"id": key_id, "base_url": fake_upstream.base_url + "/"})
    assert same.status == 200

    body = {"id": key_id, "base_url": second_upstream.base_url, "api_key": OTHER_KEY}
    reply = await api.call("PUT", "/api/shared-keys", body)
    assert (reply.status, reply.body["base_url"]) == (200, second_upstream.base_url)
    assert second_upstream.calls("/v1/chat/completions")[0].headers["Authorization"] == f"Bearer {OTHER_KEY}"
    # Re-sealed for the new origin: the index opens it and serves from the new upstream.
    index = api.app[KEY_INDEX]
    await index.reload()
    served = index.get(key_id)
    assert served is not None and (served.base_url, served.api_key) == (second_upstream.base_url, OTHER_KEY)


async def test_names_are_unique_per_owner(api: Api, fake_upstream: FakeUpstream) -> None:
    first = (await api.add(fake_upstream, name="one")).body["id"]
    await api.add(fake_upstream, name="two", api_key=OTHER_KEY)
    reply = await api.add(fake_upstream, name="one", api_key="sk-third-SECRET-api-key-5c8e2a")
    assert (reply.status, reply.body["error"]["field"]) == (422, "name")
    reply = await api.call("PUT", "/api/shared-keys", {"id": first, "name": "two"})
    assert (reply.status, reply.body["error"]["field"]) == (422, "name")
    reply = await api.add(
        fake_upstream, name="one", token=api.people.bob_token, api_key="sk-third-SECRET-api-key-5c8e2a"
    )
    assert reply.status == 201


async def test_cooling_and_a_disabled_key_resumed_after_a_passing_test(api: Api, fake_upstream: FakeUpstream) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    balancer = api.app[BALANCER]
    await balancer.cool_down(key_id, 30)
    [item] = await api.keys()
    assert item["status"] == "cooling"

    async with api.pool.acquire() as conn:  # as the proxy does on a 401: disabled in both stores
        assert await sharedkeys.disable_key(conn, key_id, "the upstream rejected the key (HTTP 401)")
    await balancer.cool_down(key_id, 10 * 365 * 86400)
    [item] = await api.keys()
    assert (item["status"], item["status_reason"]) == ("disabled", "the upstream rejected the key (HTTP 401)")

    fake_upstream.valid_keys = {"sk-not-the-stored-one-000"}
    reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": True})
    assert (reply.status, reply.body["error"]["code"]) == (422, "key_test_failed")
    assert (await api.keys())[0]["status"] == "disabled"

    fake_upstream.valid_keys = None
    reply = await api.call("PUT", "/api/shared-keys", {"id": key_id, "is_active": True})
    assert (reply.status, reply.body["status"], reply.body["status_reason"]) == (200, "active", None)
    assert key_id not in await balancer.cooling()


# --- input ---------------------------------------------------------------------------------------

MISSING = object()
INVALID: list[tuple[dict[str, Any], str]] = [
    ({"name": MISSING}, "name"),
    ({"available_models": MISSING}, "available_models"),
    ({"name": None}, "name"),
    ({"name": ""}, "name"),
    ({"name": "   "}, "name"),
    ({"name": "n" * 65}, "name"),
    ({"name": 7}, "name"),
    ({"name": "a\nb"}, "name"),
    ({"base_url": "ftp://example.com"}, "base_url"),
    ({"base_url": "http://user:pw@127.0.0.1:9/v1"}, "base_url"),
    ({"base_url": "not a url"}, "base_url"),
    ({"base_url": "https://api.example.com/v1?x=1"}, "base_url"),
    ({"base_url": ["https://api.example.com"]}, "base_url"),
    ({"api_key": ""}, "api_key"),
    ({"api_key": "k" * 513}, "api_key"),
    ({"api_key": "sk-with space-1234"}, "api_key"),
    ({"api_key": "sk-ctrl\x01-1234"}, "api_key"),
    ({"api_key": "sk-ünïcode-1234"}, "api_key"),
    ({"api_key": 12345}, "api_key"),
    ({"available_models": []}, "available_models"),
    ({"available_models": "gpt-4o-mini"}, "available_models"),
    ({"available_models": [""]}, "available_models"),
    ({"available_models": ["  "]}, "available_models"),
    ({"available_models": [1]}, "available_models"),
    ({"available_models": ["m" * 201]}, "available_models"),
    ({"available_models": [f"m{i}" for i in range(101)]}, "available_models"),
    ({"daily_limit": 0}, "daily_limit"),
    ({"daily_limit": 1_000_001}, "daily_limit"),
    ({"daily_limit": "150"}, "daily_limit"),
    ({"daily_limit": 1.5}, "daily_limit"),
    ({"daily_limit": True}, "daily_limit"),
    ({"description": "d" * 501}, "description"),
    ({"description": 5}, "description"),
    ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
    ({"tags": ["t" * 33]}, "tags"),
    ({"tags": "fast"}, "tags"),
    ({"tags": [""]}, "tags"),
    ({"is_private": "yes"}, "is_private"),
    ({"stream_usage": 1}, "stream_usage"),
    ({"owner_id": "someone-else"}, "owner_id"),
    ({"is_active": False}, "is_active"),  # settable by PUT only
    ({"api_key_encrypted": "x"}, "api_key_encrypted"),
]


@pytest.mark.parametrize(("change", "field"), INVALID, ids=[f"{f}-{i}" for i, (_, f) in enumerate(INVALID)])
async def test_invalid_fields_are_refused_by_name(
    api: Api, fake_upstream: FakeUpstream, change: dict[str, Any], field: str
) -> None:
    body = {"name": "k", "base_url": fake_upstream.base_url, "api_key": DONOR_KEY, "available_models": ["gpt-4o-mini"]}
    body.update(change)
    body = {k: v for k, v in body.items() if v is not MISSING}
    reply = await api.call("POST", "/api/shared-keys", body)
    assert reply.status == 422, reply
    assert reply.body["error"]["code"] == "invalid_field"
    assert reply.body["error"]["field"] == field
    assert isinstance(reply.body["error"]["message"], str) and reply.body["error"]["message"]
    assert DONOR_KEY not in reply.body["error"]["message"]
    assert fake_upstream.requests == [], "refused before any live test"
    assert await api.rows() == 0


async def test_invalid_edits_and_the_test_endpoint_name_the_field(api: Api, fake_upstream: FakeUpstream) -> None:
    key_id = (await api.add(fake_upstream)).body["id"]
    cases: list[tuple[str, str, dict[str, Any], str]] = [
        ("PUT", "/api/shared-keys", {"name": "x"}, "id"),
        ("PUT", "/api/shared-keys", {"id": key_id, "daily_limit": 0}, "daily_limit"),
        ("PUT", "/api/shared-keys", {"id": key_id, "is_active": "no"}, "is_active"),
        ("PUT", "/api/shared-keys", {"id": key_id, "bogus": 1}, "bogus"),
        ("PUT", "/api/shared-keys", {"id": key_id, "available_models": []}, "available_models"),
        ("POST", "/api/shared-keys/test", {"api_key": DONOR_KEY}, "base_url"),
        ("POST", "/api/shared-keys/test", {"base_url": fake_upstream.base_url}, "api_key"),
        ("POST", "/api/shared-keys/test", {"base_url": "gopher://x", "api_key": DONOR_KEY}, "base_url"),
        ("POST", "/api/shared-keys/test", {"base_url": fake_upstream.base_url, "api_key": "a b"}, "api_key"),
        ("POST", "/api/shared-keys/test", {"base_url": fake_upstream.base_url, "api_key": "k", "model": ""}, "model"),
        ("POST", "/api/shared-keys/test", {"base_url": fake_upstream.base_url, "api_key": "k", "x": 1}, "x"),
    ]
    for method, path, body, named in cases:
        reply = await api.call(method, path, body)
        assert (reply.status, reply.body["error"]["code"], reply.body["error"]["field"]) == (
            422,
            "invalid_field",
            named,
        )
    assert (await api.call("DELETE", "/api/shared-keys")).body["error"]["field"] == "id"
    [item] = await api.keys()
    assert item["daily_limit"] == 150


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/shared-keys"), ("PUT", "/api/shared-keys"), ("POST", "/api/shared-keys/test")]
)
async def test_malformed_json_is_a_400(api: Api, method: str, path: str) -> None:
    for raw in (b"{not json", b"", b"\xff\xfe", b"[1, 2]", b'"a string"', b"[" * 100_000):
        reply = await api.call(method, path, raw=raw)
        assert reply.status == 400, (raw[:10], reply)
        assert reply.body["error"]["code"] == "invalid_json"
        assert set(reply.body["error"]) == {"message", "code"}


async def test_without_a_valid_token_everything_is_401(api: Api) -> None:
    calls = [("GET", "/api/shared-keys"), ("POST", "/api/shared-keys"), ("PUT", "/api/shared-keys")]
    calls += [("DELETE", "/api/shared-keys"), ("POST", "/api/shared-keys/test")]
    real = api.people.alice_token
    tokens = ["", "shk_nonsense", "shk_" + "A" * 38, real[:-1] + ("y" if real.endswith("x") else "x")]  # one letter off
    bodies = set()
    for method, path in calls:
        for token in tokens:
            reply = await api.call(method, path, {}, token=token)  # "": no Authorization header
            assert reply.status == 401, (method, path, token)
            bodies.add(json.dumps(reply.body))
    assert bodies == {json.dumps({"error": {"message": keys_api.NOT_SIGNED_IN, "code": "unauthorized"}})}


# --- the test endpoint ---------------------------------------------------------------------------


async def test_the_test_endpoint_reports_in_one_shape(api: Api, fake_upstream: FakeUpstream) -> None:
    body = {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY}
    reply = await api.call("POST", "/api/shared-keys/test", body)
    assert reply.status == 200
    assert set(reply.body) == {"ok", "latency_ms", "models", "error"}
    assert (reply.body["ok"], reply.body["models"], reply.body["error"]) == (True, fake_upstream.models, None)
    assert isinstance(reply.body["latency_ms"], int)

    reply = await api.call("POST", "/api/shared-keys/test", {**body, "model": "gpt-9"})
    assert (reply.status, reply.body["ok"], reply.body["error"]) == (200, False, "the upstream does not offer: gpt-9")
    fake_upstream.valid_keys = {"sk-another-key-entirely-00"}
    reply = await api.call("POST", "/api/shared-keys/test", body)
    assert (reply.status, reply.body["ok"], reply.body["error"]) == (200, False, "the upstream rejected the key")
    assert await api.rows() == 0, "a test stores nothing"


async def test_the_test_endpoint_is_rate_limited_per_user(
    make_api: MakeApi, config: config_mod.Config, fake_upstream: FakeUpstream
) -> None:
    api = await make_api(api_config(config).replace("limits", key_tests_per_minute=2))
    if time.time() % 60 > 58:  # a fixed one-minute window: do not straddle its edge
        await asyncio.sleep(60 - time.time() % 60 + 0.05)
    body = {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY}
    assert (await api.call("POST", "/api/shared-keys/test", {"api_key": DONOR_KEY})).status == 422, "not counted"
    statuses = [(await api.call("POST", "/api/shared-keys/test", body)).status for _ in range(2)]
    limited = await api.call("POST", "/api/shared-keys/test", body)
    assert statuses == [200, 200]
    assert limited.status == 429
    assert limited.body["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert len(fake_upstream.calls("/v1/models")) == 2, "the refused test reached no upstream"
    bob = await api.call("POST", "/api/shared-keys/test", body, token=api.people.bob_token)
    assert bob.status == 200, "the limit is per user"
    prefix = config.redis.key_prefix
    minute = time.strftime("%Y-%m-%dT%H:%M", time.gmtime())
    counter = f"{prefix}:v1:{{{prefix}}}:keytests:{api.people.alice.id}:{minute}"
    assert int(await api.app[appkeys.redis].get(counter)) == 3
    assert 0 < await api.app[appkeys.redis].ttl(counter) <= 120


async def test_adding_and_retesting_keys_share_the_test_limit(
    make_api: MakeApi, config: config_mod.Config, fake_upstream: FakeUpstream
) -> None:
    api = await make_api(api_config(config).replace("limits", key_tests_per_minute=2))
    if time.time() % 60 > 57:  # a fixed one-minute window: do not straddle its edge
        await asyncio.sleep(60 - time.time() % 60 + 0.05)
    first = await api.add(fake_upstream, name="one")
    assert first.status == 201
    assert (
        await api.call("POST", "/api/shared-keys/test", {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY})
    ).status == 200
    calls = len(fake_upstream.requests)
    limited = await api.add(fake_upstream, name="two", api_key=OTHER_KEY)
    assert limited.status == 429 and limited.body["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert await api.rows() == 1, "nothing stored"
    retest = await api.call("PUT", "/api/shared-keys", {"id": first.body["id"], "api_key": OTHER_KEY})
    assert retest.status == 429
    assert len(fake_upstream.requests) == calls, "no refused test reached the upstream"
    renamed = await api.call("PUT", "/api/shared-keys", {"id": first.body["id"], "name": "renamed"})
    assert renamed.status == 200 and renamed.body["name"] == "renamed", "an edit without a test is not limited"
    bobs = await api.add(fake_upstream, name="bobs", token=api.people.bob_token, api_key="sk-bobs-own-key-0000000009")
    assert bobs.status == 201, "per user"


async def test_a_refused_address_reads_like_a_closed_port(make_api: MakeApi, config: config_mod.Config) -> None:
    permissive = await make_api(api_config(config))
    strict = await make_api(api_config(config, allow_private_upstreams=False))
    listener = Listener()
    await listener.start(("127.0.0.1",))
    try:
        closed = await permissive.call(
            "POST", "/api/shared-keys/test", {"base_url": f"http://127.0.0.1:{closed_port()}/v1", "api_key": DONOR_KEY}
        )
        refused = []
        for url in (
            f"http://127.0.0.1:{listener.port}/v1",
            f"http://localhost:{listener.port}",
            "http://2130706433/v1",
        ):
            refused.append(await strict.call("POST", "/api/shared-keys/test", {"base_url": url, "api_key": DONOR_KEY}))
        # Registration refuses the same URL outright, in words (no connection either).
        body = {"name": "k", "api_key": DONOR_KEY, "available_models": ["m"]}
        registered = await strict.call(
            "POST", "/api/shared-keys", {**body, "base_url": f"http://127.0.0.1:{listener.port}/v1"}
        )
    finally:
        await listener.stop()
    assert closed.status == 200 and closed.body["ok"] is False
    for reply in refused:
        assert reply.status == 200
        assert {k: v for k, v in reply.body.items() if k != "latency_ms"} == {
            k: v for k, v in closed.body.items() if k != "latency_ms"
        }
        assert reply.body == {
            "ok": False,
            "latency_ms": reply.body["latency_ms"],
            "models": [],
            "error": upstream.UNREACHABLE,
        }
    assert registered.status == 422
    assert registered.body["error"]["field"] == "base_url"
    assert registered.body["error"]["message"] == ssrf.PRIVATE_ADDRESS_REFUSED
    assert listener.accepted == 0


# --- the command line ----------------------------------------------------------------------------


async def test_cli_keys_test_and_disable(api: Api, cli_env: dict[str, str], fake_upstream: FakeUpstream) -> None:
    env = cli_env
    # The fake upstream runs on this event loop: the CLI must run in a thread to reach it.
    args = ("keys", "test", "--base-url", fake_upstream.base_url, "--api-key", DONOR_KEY, "--model", "gpt-4o-mini")
    ok = await asyncio.to_thread(sharekey, *args, env=env)
    assert ok.code == 0, ok.err
    result = json.loads(ok.out)
    assert (result["ok"], result["models"], result["error"]) == (True, fake_upstream.models, None)

    fake_upstream.valid_keys = {"sk-only-this-one-works-00"}
    bad = await asyncio.to_thread(sharekey, *args, env=env)
    assert bad.code == 1
    assert bad.err.strip().splitlines()[-1] == "sharekey: the key failed its live test: the upstream rejected the key"
    assert DONOR_KEY not in bad.out + bad.err and DONOR_KEY not in ok.out + ok.err
    fake_upstream.valid_keys = None

    key_id = (await api.add(fake_upstream)).body["id"]
    assert await until(lambda: _lists(api, "gpt-4o-mini"))
    off = await asyncio.to_thread(
        sharekey, "keys", "disable", "--user", "alice", "--name", "main", "--reason", "abuse report", env=env
    )
    assert (off.code, off.out.strip()) == (0, key_id), off.err
    [item] = await api.keys()
    assert (item["status"], item["status_reason"]) == ("disabled", "abuse report")
    assert await until(lambda: _gone(api, "gpt-4o-mini")), "the CLI announces the change to running gateways"
    missing = await asyncio.to_thread(sharekey, "keys", "disable", "--id", "nope", env=env)
    assert missing.code == 1 and "no key with id" in missing.err
