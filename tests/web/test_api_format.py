"""A donor key's `api_format` (issue #13): `openai` (the default) or `anthropic`, through the API,
the live test, the health checks, the command line and the /keys page.

An `anthropic` key is called with `x-api-key` and `anthropic-version`, never as a bearer token:
the fake upstream answers in Anthropic's shapes when `anthropic-version` is sent.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.net import h1, keytest
from gateway.net.keytest import ProbeResult
from gateway.ops.keychecks import HealthChecks
from gateway.store import users
from tests.support import fake_linuxdo
from tests.support.clirun import sharekey
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import Failure, FakeUpstream, Recorded
from tests.support.seed import add_key
from tests.web import test_keys_api
from tests.web.test_keys_api import DONOR_KEY, OTHER_KEY, Api, api_config

people, make_api, api = test_keys_api.people, test_keys_api.make_api, test_keys_api.api  # fixtures
provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures

CLAUDE = ["claude-sonnet-4-5", "claude-haiku-4-5"]


def headers_of(sent: Recorded) -> dict[str, str]:
    return {k.lower(): v for k, v in sent.headers.items()}


def spoke_anthropic(sent: Recorded, key: str = DONOR_KEY) -> bool:
    headers = headers_of(sent)
    return (
        headers.get("x-api-key") == key
        and headers.get("anthropic-version") == "2023-06-01"
        and "authorization" not in headers
    )


async def stored_format(api: Api, key_id: str) -> str:
    async with api.pool.acquire() as conn:
        return str(await conn.fetchval("SELECT api_format FROM shared_keys WHERE id = $1", uuid.UUID(key_id)))


# --- the API -------------------------------------------------------------------------------------


async def test_an_anthropic_key_is_tested_in_its_format_and_stored_with_it(
    api: Api, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.models = CLAUDE
    reply = await api.add(fake_upstream, api_format="anthropic", available_models=["claude-haiku-4-5"])
    assert reply.status == 201, reply
    assert reply.body["api_format"] == "anthropic"
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"]
    assert all(spoke_anthropic(r) for r in fake_upstream.requests)
    assert fake_upstream.calls("/v1/messages")[0].body["max_tokens"] == 1
    assert await stored_format(api, reply.body["id"]) == "anthropic"
    [item] = await api.keys()
    assert item == reply.body
    assert DONOR_KEY not in "".join(api.seen)


async def test_a_key_is_openai_unless_it_says_otherwise(api: Api, fake_upstream: FakeUpstream) -> None:
    reply = await api.add(fake_upstream)
    assert (reply.status, reply.body["api_format"]) == (201, "openai")
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/chat/completions"]
    assert headers_of(fake_upstream.requests[1])["authorization"] == f"Bearer {DONOR_KEY}"
    explicit = await api.add(fake_upstream, name="second", api_format="openai", api_key=OTHER_KEY)
    assert (explicit.status, explicit.body["api_format"]) == (201, "openai")
    assert {k["api_format"] for k in await api.keys()} == {"openai"}


@pytest.mark.parametrize("value", ["grpc", "OpenAI", "", None, 1, ["anthropic"]])
async def test_an_unknown_format_is_refused_by_name(api: Api, fake_upstream: FakeUpstream, value: Any) -> None:
    reply = await api.add(fake_upstream, api_format=value)
    assert (reply.status, reply.body["error"]["code"], reply.body["error"]["field"]) == (
        422,
        "invalid_field",
        "api_format",
    )
    assert reply.body["error"]["message"] == "api_format must be openai, anthropic or gemini"
    assert fake_upstream.requests == [], "refused before any live test"
    assert await api.rows() == 0

    key_id = (await api.add(fake_upstream)).body["id"]
    fake_upstream.requests.clear()
    edit = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_format": value})
    assert (edit.status, edit.body["error"]["field"]) == (422, "api_format")
    test = {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY, "api_format": value}
    tested = await api.call("POST", "/api/shared-keys/test", test)
    assert (tested.status, tested.body["error"]["field"]) == (422, "api_format")
    assert fake_upstream.requests == []
    assert await stored_format(api, key_id) == "openai"


async def test_changing_the_format_tests_the_stored_key_again(api: Api, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = ["gpt-4o-mini", *CLAUDE]
    key_id = (await api.add(fake_upstream)).body["id"]

    fake_upstream.requests.clear()
    fake_upstream.fail_next(401)  # the upstream refuses the key in the new format
    refused = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_format": "anthropic", "name": "c"})
    assert (refused.status, refused.body["error"]["code"], refused.body["error"]["field"]) == (
        422,
        "key_test_failed",
        "api_key",
    )
    assert spoke_anthropic(fake_upstream.requests[0]), "tested in the new format"
    [item] = await api.keys()
    assert (item["api_format"], item["name"]) == ("openai", "main"), "a failed test changes nothing"

    fake_upstream.requests.clear()
    changed = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_format": "anthropic"})
    assert (changed.status, changed.body["api_format"]) == (200, "anthropic"), changed
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"]
    assert all(spoke_anthropic(r) for r in fake_upstream.requests), "with the stored key, in its new format"
    assert await stored_format(api, key_id) == "anthropic"

    fake_upstream.requests.clear()
    same = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_format": "anthropic", "daily_limit": 9})
    assert (same.status, same.body["api_format"], same.body["daily_limit"]) == (200, "anthropic", 9)
    assert fake_upstream.requests == [], "no test when the format does not change"
    kept = await api.call("PUT", "/api/shared-keys", {"id": key_id, "name": "renamed"})
    assert kept.body["api_format"] == "anthropic", "fields not given are kept"

    back = await api.call("PUT", "/api/shared-keys", {"id": key_id, "api_format": "openai"})
    assert (back.status, back.body["api_format"]) == (200, "openai")
    assert fake_upstream.requests[-1].path == "/v1/chat/completions"


async def test_the_test_endpoint_speaks_the_format_asked_for(api: Api, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = CLAUDE
    body = {"base_url": fake_upstream.base_url, "api_key": DONOR_KEY, "api_format": "anthropic"}
    reply = await api.call("POST", "/api/shared-keys/test", body)
    assert (reply.status, reply.body["ok"], reply.body["models"]) == (200, True, CLAUDE)
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"]
    assert all(spoke_anthropic(r) for r in fake_upstream.requests)
    unknown = await api.call("POST", "/api/shared-keys/test", {**body, "model": "claude-opus-9"})
    assert (unknown.body["ok"], unknown.body["error"]) == (False, "the upstream does not offer: claude-opus-9")
    fake_upstream.valid_keys = {"sk-ant-another-key-0000"}
    wrong = await api.call("POST", "/api/shared-keys/test", body)
    assert (wrong.body["ok"], wrong.body["error"]) == (False, "the upstream rejected the key")


# --- the health checks ---------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["models", "completion"])
async def test_the_health_check_probes_an_anthropic_key_in_its_format(
    make_api: test_keys_api.MakeApi,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
    redis: aioredis.Redis,
    method: str,
) -> None:
    api = await make_api(api_config(config).replace("health", method=method))
    fake_upstream.models = CLAUDE
    key_id = (await api.add(fake_upstream, api_format="anthropic", available_models=["claude-haiku-4-5"])).body["id"]
    checks = HealthChecks(api.app)

    fake_upstream.requests.clear()
    assert await checks.run() == {ProbeResult.OK: 1}
    (sent,) = fake_upstream.requests
    assert sent.path == ("/v1/models" if method == "models" else "/v1/messages")
    assert spoke_anthropic(sent), "the format is read from the row"
    if method == "completion":
        assert sent.body == {
            "model": "claude-haiku-4-5",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}],
        }

    fake_upstream.valid_keys = {"sk-ant-not-the-stored-one-0"}
    assert await checks.run() == {ProbeResult.REJECTED: 1}
    async with api.pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, disabled_by FROM shared_keys WHERE id = $1", uuid.UUID(key_id))
    assert (row["status"], row["disabled_by"]) == ("disabled", "health")

    fake_upstream.valid_keys = None
    await redis.delete(checks.backoff_key)  # due again now, not after its back-off
    assert await checks.run() == {ProbeResult.OK: 1}
    [item] = await api.keys()
    assert (item["status"], item["api_format"]) == ("active", "anthropic")


async def test_the_probe_speaks_anthropic(config: config_mod.Config, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = CLAUDE
    pool = h1.create_pool(config)
    try:

        async def check(method: str, model: str = "claude-haiku-4-5") -> keytest.Probe:
            return await keytest.probe(
                pool, fake_upstream.base_url, DONOR_KEY, model, method=method, timeout=5, api_format="anthropic"
            )

        assert await check("models") == keytest.Probe(ProbeResult.OK, 200)
        assert await check("completion") == keytest.Probe(ProbeResult.OK, 200)
        assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"]
        assert all(spoke_anthropic(r) for r in fake_upstream.requests)
        fake_upstream.fail_next(403)
        assert await check("completion") == keytest.Probe(
            ProbeResult.REJECTED, 403, None, "the upstream rejected the key (HTTP 403)"
        )
        fake_upstream.fail_next(Failure(status=429, retry_after="7"))
        assert await check("models") == keytest.Probe(
            ProbeResult.RATE_LIMITED, 429, 7.0, "rate limited by the upstream"
        )
        fake_upstream.fail_next(Failure(status=404, path="/v1/models"))  # no model list: the message decides
        assert await check("models") == keytest.Probe(ProbeResult.OK, 200)
        assert fake_upstream.requests[-1].path == "/v1/messages"
        # The same upstream asked as an openai key is asked at /chat/completions, as a bearer token.
        found = await keytest.probe(
            pool, fake_upstream.base_url, DONOR_KEY, "claude-haiku-4-5", method="completion", timeout=5
        )
        assert found.result == ProbeResult.OK
        assert headers_of(fake_upstream.requests[-1])["authorization"] == f"Bearer {DONOR_KEY}"
        assert fake_upstream.requests[-1].path == "/v1/chat/completions"
    finally:
        await pool.close()


# --- the command line ----------------------------------------------------------------------------


async def test_cli_api_format(cli_env: dict[str, str], pool: asyncpg.Pool, fake_upstream: FakeUpstream) -> None:
    env = cli_env
    fake_upstream.models = CLAUDE
    assert (await asyncio.to_thread(sharekey, "users", "add", "dora", env=env)).code == 0
    base = ["keys", "add", "--user", "dora", "--api-key", DONOR_KEY]

    # Tested live in its format (the fake upstream runs on this loop: the CLI runs in a thread).
    added = await asyncio.to_thread(
        sharekey,
        *base,
        "--name",
        "claude",
        "--base-url",
        fake_upstream.base_url,
        "--models",
        "claude-sonnet-4-5",
        "--api-format",
        "anthropic",
        env=env,
    )
    assert added.code == 0, added.err
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"]
    assert all(spoke_anthropic(r) for r in fake_upstream.requests)
    other = [*base[:-1], OTHER_KEY]  # the same key is never stored twice
    plain = await asyncio.to_thread(
        sharekey, *other, "--name", "gpt", "--base-url", "https://a.example", "--models", "m", "--no-test", env=env
    )
    assert plain.code == 0, plain.err
    async with pool.acquire() as conn:
        rows = {r["name"]: r["api_format"] for r in await conn.fetch("SELECT name, api_format FROM shared_keys")}
    assert rows == {"claude": "anthropic", "gpt": "openai"}

    listed = await asyncio.to_thread(sharekey, "keys", "list", env=env)
    assert listed.code == 0, listed.err
    header, *lines = listed.out.strip().splitlines()
    assert header.split()[:5] == ["OWNER", "NAME", "UPSTREAM", "FORMAT", "MODELS"]
    assert sorted(line.split()[1:4:2] for line in lines) == [["claude", "anthropic"], ["gpt", "openai"]]

    for bad in ("grpc", "Anthropic", ""):
        refused = await asyncio.to_thread(
            sharekey, *base, "--name", "x", "--base-url", "https://a.example", "--models", "m", "--no-test",
            "--api-format", bad, env=env,
        )  # fmt: skip
        assert refused.code == 2, refused  # an option's value refused: a usage error
        assert refused.err.strip().splitlines()[-1] == "sharekey: --api-format: must be openai, anthropic or gemini"
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shared_keys") == 2, "nothing stored when refused"

    fake_upstream.requests.clear()
    test = ["keys", "test", "--base-url", fake_upstream.base_url, "--api-key", DONOR_KEY]
    ok = await asyncio.to_thread(sharekey, *test, "--api-format", "anthropic", env=env)
    assert ok.code == 0, ok.err
    assert (json.loads(ok.out)["ok"], json.loads(ok.out)["models"]) == (True, CLAUDE)
    assert fake_upstream.requests[-1].path == "/v1/messages" and spoke_anthropic(fake_upstream.requests[-1])
    missing = await asyncio.to_thread(sharekey, *test, "--api-format", "anthropic", "--model", "claude-9", env=env)
    assert missing.code == 1
    assert missing.err.strip().splitlines()[-1] == (
        "sharekey: the key failed its live test: the upstream does not offer: claude-9"
    )
    wrong = await asyncio.to_thread(sharekey, *test, "--api-format", "grpc", env=env)
    assert (wrong.code, wrong.err.strip().splitlines()[-1]) == (
        2,
        "sharekey: --api-format: must be openai, anthropic or gemini",
    )
    assert DONOR_KEY not in added.out + added.err + ok.out + ok.err + listed.out


# --- the /keys page ------------------------------------------------------------------------------


async def test_the_keys_page_has_a_format_select_and_shows_each_keys_format(
    site: Site, fake_upstream: FakeUpstream
) -> None:
    assert (await site.sign_in("alice")).status == 303
    async with site.pool.acquire() as conn:
        me = await users.get_by_username(conn, "alice")
    assert me is not None
    claude = await add_key(site.pool, site.config, me, fake_upstream.base_url, name="claude", api_format="anthropic")
    gpt = await add_key(site.pool, site.config, me, fake_upstream.base_url, name="gpt")

    html = await (await site.client.get("/keys")).text()
    # The add form, both edit forms and the import form have the select; the add form starts at openai.
    assert html.count('name="api_format"') == 4
    assert '<select id="new-api_format" name="api_format">' in html
    add_form = html.split('id="add-key"')[1].split("</form>")[0]
    assert '<option value="openai" selected>OpenAI-compatible</option>' in add_form
    assert '<option value="anthropic">Anthropic</option>' in add_form
    assert '<option value="gemini">Gemini (Google AI Studio)</option>' in add_form
    claude_item = html.split(f'data-key-id="{claude.id}"')[1].split("</article>")[0]
    gpt_item = html.split(f'data-key-id="{gpt.id}"')[1].split("</article>")[0]
    assert '<dd data-api-format="anthropic">Anthropic</dd>' in claude_item
    assert '<option value="anthropic" selected>Anthropic</option>' in claude_item
    assert "&#34;api_format&#34;: &#34;anthropic&#34;" in claude_item or '"api_format": "anthropic"' in claude_item
    assert '<dd data-api-format="openai">OpenAI-compatible</dd>' in gpt_item
    assert '<option value="openai" selected>OpenAI-compatible</option>' in gpt_item
    assert "API format" in html

    zh = await (await site.client.get("/keys", headers={"Accept-Language": "zh-CN"})).text()
    assert "接口格式" in zh and "OpenAI 兼容" in zh

    # What the page's script sends: the form's api_format, through the session.
    headers = await site.write_headers("/keys")
    fake_upstream.models = CLAUDE
    new = {
        "name": "from the page",
        "base_url": fake_upstream.base_url,
        "api_key": DONOR_KEY,
        "available_models": ["claude-sonnet-4-5"],
        "api_format": "anthropic",
    }
    added = await site.client.post("/api/shared-keys", json=new, headers=headers)
    assert added.status == 201, await added.text()
    assert (await added.json())["api_format"] == "anthropic"
