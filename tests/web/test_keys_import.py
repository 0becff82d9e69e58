"""POST /api/shared-keys/import, and the keyed fingerprint behind "the same key is never stored
twice" (POST and PUT too): real PostgreSQL and Redis, fake upstreams; no key in any answer or log."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.store.crypto import KeyRing
from tests.conftest import TEST_SECRET
from tests.support.clirun import sharekey
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_upstream import FakeUpstream
from tests.web import test_keys_api
from tests.web.test_keys_api import DONOR_KEY, OTHER_KEY, Api, MakeApi, api_config

people, make_api, api = test_keys_api.people, test_keys_api.make_api, test_keys_api.api  # fixtures

GOOD = ["sk-import-good-key-aaaa1111", "sk-import-good-key-bbbb2222", "sk-import-good-key-cccc3333"]
BAD = "sk-import-rejected-key-dddd4444"
DUPLICATE = "this key is already shared on this gateway"


async def import_keys(api: Api, upstream: Any, keys: Any, *, token: str | None = None, **fields: Any) -> Any:
    body = {"base_url": upstream.base_url, "available_models": ["gpt-4o-mini"], **fields, "keys": keys}
    return await api.call("POST", "/api/shared-keys/import", body, token=token)


async def fingerprints(api: Api) -> dict[str, str | None]:
    async with api.pool.acquire() as conn:
        rows = await conn.fetch("SELECT name, key_fingerprint FROM shared_keys")
    return {r["name"]: r["key_fingerprint"] for r in rows}


def statuses(reply: Any) -> list[tuple[int, str, str]]:
    return [(r["index"], r["hint"], r["status"]) for r in reply.body["results"]]


async def test_an_import_adds_the_keys_that_pass_and_says_why_the_others_did_not(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.valid_keys = {GOOD[0], GOOD[1]}
    entries: list[Any] = [GOOD[0], BAD, f"  {GOOD[0]} ", "has a space", 42, GOOD[1]]
    with capture_logs() as logs:
        reply = await import_keys(api, fake_upstream, entries, daily_limit=40, tags=["bulk"], rpm_limit=5)
    assert reply.status == 200, reply
    assert statuses(reply) == [
        (0, "sk-…1111", "added"),
        (1, "sk-…4444", "failed"),
        (2, "sk-…1111", "duplicate"),
        (3, "…", "failed"),
        (4, "…", "failed"),
        (5, "sk-…2222", "added"),
    ]
    results = reply.body["results"]
    assert results[1]["error"] == "the key failed its live test: the upstream rejected the key"
    assert results[2]["error"] == "the same key as entry 0 of this list"
    assert results[3]["error"] == "key must be 1 to 512 printable characters, without spaces"
    assert results[4]["error"] == "key must be a string"
    assert {k: reply.body[k] for k in ("added", "duplicate", "failed")} == {"added": 2, "duplicate": 1, "failed": 3}
    assert "id" not in results[1] and "error" not in results[0]

    keys = {k["id"]: k for k in await api.keys()}
    assert set(keys) == {results[0]["id"], results[5]["id"]}
    first, second = keys[results[0]["id"]], keys[results[5]["id"]]
    assert (first["name"], second["name"]) == ("imported-1", "imported-2")
    assert (first["daily_limit"], first["tags"], first["rpm_limit"], first["api_key_masked"]) == (
        40,
        ["bulk"],
        5,
        "sk-…1111",
    )
    assert second["rpm_limit"] == 5 and second["available_models"] == ["gpt-4o-mini"]
    tested = [r.headers["Authorization"] for r in fake_upstream.calls("/v1/models")]
    assert sorted(tested) == sorted(f"Bearer {k}" for k in (GOOD[0], BAD, GOOD[1])), "each distinct key tested once"
    ring = KeyRing(TEST_SECRET)
    assert await fingerprints(api) == {"imported-1": ring.fingerprint(GOOD[0]), "imported-2": ring.fingerprint(GOOD[1])}

    again = await import_keys(api, fake_upstream, [GOOD[1], GOOD[2]], name_prefix="more")
    fake_upstream.valid_keys.add(GOOD[2])
    assert [r["status"] for r in again.body["results"]] == ["duplicate", "failed"]
    assert again.body["results"][0]["error"] == DUPLICATE
    third = await import_keys(api, fake_upstream, [GOOD[2]])
    assert [(r["status"], r["hint"]) for r in third.body["results"]] == [("added", "sk-…3333")]
    assert {k["name"] for k in await api.keys()} == {"imported-1", "imported-2", "imported-3"}, "names go on"

    shown = "".join(api.seen) + "".join(str(e) for e in logs)
    assert not [k for k in (*GOOD, BAD) if k in shown]
    [line] = [e for e in logs if e["event"] == "keys_imported"]
    assert (line["added"], line["duplicate"], line["failed"]) == (2, 1, 3)


async def test_google_ai_studio_keys_are_imported_on_a_bare_origin(api: Api, fake_gemini: FakeGemini) -> None:
    keys = ["AIzaSy-import-one-000000000001", "AIzaSy-import-two-000000000002", "AIzaSy-not-valid-000000000003"]
    fake_gemini.keys = set(keys[:2])
    body = {
        "base_url": fake_gemini.origin,
        "api_format": "gemini",
        "available_models": ["gemini-2.5-flash"],
        "daily_limit": 250,
        "name_prefix": "studio",
        "keys": keys,
    }
    reply = await api.call("POST", "/api/shared-keys/import", body)
    assert reply.status == 200, reply
    assert [(r["hint"], r["status"]) for r in reply.body["results"]] == [
        ("…0001", "added"),
        ("…0002", "added"),
        ("…0003", "failed"),
    ]
    assert reply.body["results"][2]["error"] == "the key failed its live test: the upstream rejected the key"
    stored = sorted(await api.keys(), key=lambda k: k["name"])
    assert [(k["name"], k["api_format"], k["base_url"], k["daily_limit"]) for k in stored] == [
        ("studio-1", "gemini", fake_gemini.base_url, 250),
        ("studio-2", "gemini", fake_gemini.base_url, 250),
    ]
    assert {r.headers["x-goog-api-key"] for r in fake_gemini.requests} == set(keys)
    assert not [k for k in keys if k in "".join(api.seen)]


async def test_a_key_another_donor_shares_is_a_duplicate_that_names_no_one(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    alice = await api.add(fake_upstream, name="alice-secret-name")
    assert alice.status == 201
    bob = api.people.bob_token
    reply = await import_keys(api, fake_upstream, [DONOR_KEY, OTHER_KEY], token=bob)
    assert reply.status == 200, reply
    duplicate, added = reply.body["results"]
    assert duplicate == {"index": 0, "hint": "sk-…9a2c", "status": "duplicate", "error": DUPLICATE}
    assert added == {"index": 1, "hint": "sk-…1d4e", "status": "added", "id": added["id"]}
    text = str(reply.body)
    for revealing in ("alice", alice.body["id"], api.people.alice.id, DONOR_KEY, OTHER_KEY):
        assert revealing not in text
    assert [k["name"] for k in await api.keys(token=bob)] == ["imported-1"]
    assert [k["name"] for k in await api.keys()] == ["alice-secret-name"], "alice's key is as it was"
    assert len(fake_upstream.calls("/v1/models")) == 2, "the duplicate cost no live test"


async def test_the_list_and_the_shared_fields_are_checked_before_anything_is_stored(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    too_many = [f"sk-many-keys-{i:010d}" for i in range(501)]
    refused = [
        (await import_keys(api, fake_upstream, too_many), "keys"),
        (await import_keys(api, fake_upstream, []), "keys"),
        (await import_keys(api, fake_upstream, "k"), "keys"),
        (await import_keys(api, fake_upstream, GOOD, daily_limit=0), "daily_limit"),
        (await import_keys(api, fake_upstream, GOOD, available_models=[]), "available_models"),
        (await import_keys(api, fake_upstream, GOOD, model_daily_limits={"gpt-5": 3}), "model_daily_limits"),
        (await import_keys(api, fake_upstream, GOOD, name_prefix=""), "name_prefix"),
        (await import_keys(api, fake_upstream, GOOD, name="one"), "name"),
        (await import_keys(api, fake_upstream, GOOD, base_url="ftp://example.com"), "base_url"),
    ]
    for reply, field in refused:
        assert (reply.status, reply.body["error"]["field"]) == (422, field), reply
    no_models = await api.call("POST", "/api/shared-keys/import", {"base_url": fake_upstream.base_url, "keys": GOOD})
    assert (no_models.status, no_models.body["error"]["field"]) == (422, "available_models")
    assert refused[0][0].body["error"]["message"] == "keys must be a list of 1 to 500 keys"
    assert await api.rows() == 0 and fake_upstream.requests == []
    assert (await import_keys(api, fake_upstream, GOOD, token="")).status == 401


async def test_the_keys_are_tested_a_few_at_a_time(api: Api, fake_upstream: FakeUpstream) -> None:
    fake_upstream.delay = 0.1
    keys = [f"sk-a-few-at-a-time-{i:010d}" for i in range(24)]
    loop = asyncio.get_running_loop()
    started = loop.time()
    reply = await import_keys(api, fake_upstream, keys)
    took = loop.time() - started
    assert (reply.body["added"], reply.body["failed"]) == (24, 0)
    # 24 tests of two 100 ms calls: 8 at a time is 3 rounds (0.6 s); one at a time would be 4.8 s,
    # all at once 0.2 s.
    assert 0.55 < took < 2.5, took
    assert len({k["name"] for k in await api.keys()}) == 24


async def test_the_same_key_is_refused_by_post_and_put_with_409(api: Api, fake_upstream: FakeUpstream) -> None:
    first = await api.add(fake_upstream)
    assert first.status == 201
    calls = len(fake_upstream.requests)
    for token in (api.people.bob_token, None):
        again = await api.add(fake_upstream, name="again", token=token, api_key=f" {DONOR_KEY}")
        assert again.status == 409, again
        assert again.body == {"error": {"message": DUPLICATE, "code": "duplicate_key", "field": "api_key"}}
    assert len(fake_upstream.requests) == calls, "no live test spent on a duplicate"
    second = await api.add(fake_upstream, name="second", api_key=OTHER_KEY)
    put = await api.call("PUT", "/api/shared-keys", {"id": second.body["id"], "api_key": DONOR_KEY})
    assert (put.status, put.body["error"]["code"], put.body["error"]["field"]) == (409, "duplicate_key", "api_key")
    own = await api.call("PUT", "/api/shared-keys", {"id": first.body["id"], "api_key": DONOR_KEY})
    assert own.status == 200, "its own key entered again is no duplicate"
    moved = await api.call("PUT", "/api/shared-keys", {"id": second.body["id"], "api_key": "sk-a-third-key-00000003"})
    assert moved.status == 200
    ring = KeyRing(TEST_SECRET)
    assert await fingerprints(api) == {
        "main": ring.fingerprint(DONOR_KEY),
        "second": ring.fingerprint("sk-a-third-key-00000003"),
    }
    freed = await api.add(fake_upstream, name="third", api_key=OTHER_KEY)
    assert freed.status == 201, "a key replaced by another may be shared again"
    assert DONOR_KEY not in "".join(api.seen) and OTHER_KEY not in "".join(api.seen)


OLD = "the-old-secret-" + "o" * 32


async def test_fingerprints_follow_rotate_secret_and_older_keys_get_one(
    make_api: MakeApi,
    config: config_mod.Config,
    cli_env: dict[str, str],
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,
) -> None:
    before = await make_api(api_config(config, key_encryption_secret=OLD, old_key_encryption_secrets=()))
    assert (await before.add(fake_upstream)).status == 201
    assert (await before.add(fake_upstream, name="older", api_key=OTHER_KEY)).status == 201
    async with pool.acquire() as conn:  # a key stored before sql/0016: no fingerprint
        await conn.execute("UPDATE shared_keys SET key_fingerprint = NULL WHERE name = 'older'")
    assert await fingerprints(before) == {"main": KeyRing(OLD).fingerprint(DONOR_KEY), "older": None}

    # Gateways restarted with the new secret, the old one kept: the old fingerprint still counts.
    during = await make_api(api_config(config, old_key_encryption_secrets=(OLD,)))
    refused = await during.add(fake_upstream, name="copy", token=during.people.bob_token)
    assert (refused.status, refused.body["error"]["code"]) == (409, "duplicate_key")

    env = {**cli_env, "KEY_ENCRYPTION_OLD_SECRETS": OLD}
    done = await asyncio.to_thread(sharekey, "rotate-secret", "--force", env=env)
    assert done.code == 0, done.err
    assert done.out.splitlines() == [
        f"re-encrypted 2 key(s); 2 of 2 are under key id {KeyRing(TEST_SECRET).current_kid}",
    ]
    new = KeyRing(TEST_SECRET)
    assert await fingerprints(during) == {"main": new.fingerprint(DONOR_KEY), "older": new.fingerprint(OTHER_KEY)}

    after = await make_api(api_config(config))  # the old secret gone
    for key in (DONOR_KEY, OTHER_KEY):
        reply = await after.add(fake_upstream, name="copy", token=after.people.bob_token, api_key=key)
        assert (reply.status, reply.body["error"]["code"]) == (409, "duplicate_key")
    imported = await import_keys(after, fake_upstream, [DONOR_KEY], token=after.people.bob_token)
    assert [r["status"] for r in imported.body["results"]] == ["duplicate"]

    async with pool.acquire() as conn:  # under the current secret already, but never fingerprinted
        await conn.execute("UPDATE shared_keys SET key_fingerprint = NULL WHERE name = 'older'")
    backfill = await asyncio.to_thread(sharekey, "rotate-secret", "--force", env=cli_env)
    assert backfill.code == 0, backfill.err
    assert backfill.out.splitlines()[1] == "fingerprinted 1 key(s) stored before fingerprints"
    assert (await fingerprints(after))["older"] == new.fingerprint(OTHER_KEY)
