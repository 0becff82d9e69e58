"""One pool under common names: a key's `public=upstream` names, gateway-wide aliases (config and
the admin API), and `/v1/models` listing public names in both shapes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from gateway import config as config_mod
from gateway.app import create_app
from gateway.net.events import BUS
from gateway.relay.call import rename_model
from gateway.relay.keyindex import KEY_INDEX
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import user_with_token

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


async def make(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, **aliases: list[str]) -> Gateway:
    config = gateway_config(config).replace("models", aliases={k: tuple(v) for k, v in aliases.items()})
    app = create_app(config)
    client: TestClient = await aiohttp_client(app)
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    return Gateway(client, app, token, donor, pool, config)


@pytest.fixture
async def gw(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    yield await make(config, pool, aiohttp_client, **{"sonnet": ["claude-sonnet-4-5-20250929", "claude-4.5-sonnet"]})


async def test_a_key_serves_a_public_name_under_its_own(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = ["openai/gpt-4o"]
    await gw.add_key(fake_upstream, models=["gpt-4o=openai/gpt-4o"])
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o", **CHAT})
    assert resp.status == 200
    assert (await resp.json())["model"] == "openai/gpt-4o", "the answer's model is left as the upstream wrote it"
    sent = fake_upstream.calls("/v1/chat/completions")[0]
    assert sent.body == {"model": "openai/gpt-4o", **CHAT}
    [row] = await gw.logs()
    assert row["model_used"] == "gpt-4o"
    resp = await gw.post("/v1/chat/completions", {"model": "openai/gpt-4o", **CHAT})
    assert resp.status == 404, "callers ask for the public name"


async def test_an_alias_reaches_keys_serving_any_target_each_under_its_name(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    fake_upstream.models = ["claude-sonnet-4-5-20250929"]
    second_upstream.models = ["anthropic/claude-sonnet-4.5"]
    await gw.add_key(fake_upstream, name="a", models=["claude-sonnet-4-5-20250929"])
    await gw.add_key(second_upstream, name="b", models=["claude-4.5-sonnet=anthropic/claude-sonnet-4.5"])
    for _ in range(6):
        resp = await gw.post("/v1/chat/completions", {"model": "sonnet", **CHAT, "stream": True})
        assert resp.status == 200 and b"[DONE]" in await resp.read()
    names = {r.body["model"] for r in fake_upstream.requests + second_upstream.requests}
    assert names == {"claude-sonnet-4-5-20250929", "anthropic/claude-sonnet-4.5"}, "least-used spreads over both"
    assert {r["model_used"] for r in await gw.logs()} == {"sonnet"}


async def test_models_lists_public_names_and_aliases_in_both_shapes(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream, models=["gpt-4o=openai/gpt-4o", "claude-4.5-sonnet"])
    headers = {"Authorization": f"Bearer {gw.token}"}
    listed = await (await gw.client.get("/v1/models", headers=headers)).json()
    assert [m["id"] for m in listed["data"]] == ["claude-4.5-sonnet", "gpt-4o", "sonnet"]
    anthropic_shape = await (
        await gw.client.get("/v1/models", headers={"x-api-key": gw.token, "anthropic-version": "2023-06-01"})
    ).json()
    assert [m["id"] for m in anthropic_shape["data"]] == ["claude-4.5-sonnet", "gpt-4o", "sonnet"]
    assert anthropic_shape["data"][0]["type"] == "model" and anthropic_shape["has_more"] is False


@pytest.mark.parametrize(
    ("models", "needle"),
    [(["=x"], "both names"), (["a="], "both names"), (["a=b=c"], "one '='"), (["a", "a=b"], "more than once")],
)
async def test_bad_model_names_are_refused_naming_the_field(
    gw: Gateway, fake_upstream: FakeUpstream, models: list[str], needle: str
) -> None:
    body = {"name": "k", "base_url": fake_upstream.base_url, "api_key": "sk-x-0000000001", "available_models": models}
    resp = await gw.client.post("/api/shared-keys", json=body, headers={"Authorization": f"Bearer {gw.token}"})
    error = (await resp.json())["error"]
    assert resp.status == 422 and error["field"] == "available_models" and needle in error["message"]


async def test_admins_set_aliases_for_every_process(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    one = await make(config, pool, aiohttp_client)
    two = Gateway(await aiohttp_client(create_app(one.config)), None, one.token, one.donor, pool, one.config)  # type: ignore[arg-type]
    two.app = two.client.app
    async with pool.acquire() as conn:
        from gateway.store import tokens, users

        admin = await users.add_user(conn, "root", admin=True)
        admin_token, _ = await tokens.create(conn, admin.id, "t")
    fake_upstream.models = ["gpt-4o-2024-08-06"]
    await one.add_key(fake_upstream, models=["gpt-4o-2024-08-06"])
    await two.app[KEY_INDEX].reload()
    await asyncio.wait_for(two.app[BUS].subscribed.wait(), 5)

    put = {"aliases": {"gpt-4o": ["gpt-4o-2024-08-06"]}}
    refused = await one.client.put("/api/models/aliases", json=put, headers={"Authorization": f"Bearer {one.token}"})
    assert refused.status == 403
    bad = await one.client.put(
        "/api/models/aliases", json={"aliases": {"x": []}}, headers={"Authorization": f"Bearer {admin_token}"}
    )
    assert bad.status == 422 and (await bad.json())["error"]["field"] == "aliases"
    ok = await one.client.put("/api/models/aliases", json=put, headers={"Authorization": f"Bearer {admin_token}"})
    assert ok.status == 200 and (await ok.json())["aliases"] == {"gpt-4o": ["gpt-4o-2024-08-06"]}
    assert (await one.post("/v1/chat/completions", {"model": "gpt-4o", **CHAT})).status == 200
    for _ in range(20):  # the other process, through the event
        if "gpt-4o" in two.app[KEY_INDEX].models():
            break
        await asyncio.sleep(0.05)
    assert (await two.post("/v1/chat/completions", {"model": "gpt-4o", **CHAT})).status == 200
    assert [r.body["model"] for r in fake_upstream.requests if r.path == "/v1/chat/completions"] == [
        "gpt-4o-2024-08-06"
    ] * 2
    got = await one.client.get("/api/models/aliases", headers={"Authorization": f"Bearer {admin_token}"})
    assert (await got.json())["aliases"] == {"gpt-4o": ["gpt-4o-2024-08-06"]}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b'{"model":"a","messages":[]}', b'{"model":"b","messages":[]}'),
        (b'{"messages": [], "model" : "a"}', b'{"messages": [], "model":"b"}'),
        (b'{"model":"a","tools":[{"model":"a"}]}', None),  # ambiguous: encoded again
        (b'{"model":"\\u0061","metadata":{"model":"a"}}', None),  # the top-level one written otherwise
        (b'{"mod\\u0065l":"a","metadata":{"model":"a"}}', None),
        (b'{"model":"\\/a","metadata":{"model":"/a"}}', None),
    ],
)
def test_the_model_is_spliced_in_where_it_is_unambiguous(raw: bytes, expected: bytes | None) -> None:
    body = json.loads(raw)
    out = rename_model(raw, body, body["model"], "b")
    assert json.loads(out) == {**body, "model": "b"}
    if expected is not None:
        assert out == expected


async def test_only_the_top_level_model_is_renamed_however_it_is_written(
    gw: Gateway, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.models = ["up-model"]
    await gw.add_key(fake_upstream, models=["pub-model=up-model"])
    raw = b'{"model":"pub-mod\\u0065l","messages":[{"role":"user","content":"hi"}],"metadata":{"model":"pub-model"}}'
    resp = await gw.post("/v1/chat/completions", raw)
    assert resp.status == 200, await resp.text()
    [sent] = fake_upstream.calls("/v1/chat/completions")
    assert (sent.body["model"], sent.body["metadata"]) == ("up-model", {"model": "pub-model"})
    [row] = await gw.logs()
    assert (row["model_used"], row["status"]) == ("pub-model", "ok")


async def test_the_live_test_asks_the_upstream_about_its_own_names(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = ["openai/gpt-4o"]
    body = {
        "name": "k",
        "base_url": fake_upstream.base_url,
        "api_key": "sk-x-0000000001",
        "available_models": ["gpt-4o = openai/gpt-4o"],
    }
    resp = await gw.client.post("/api/shared-keys", json=body, headers={"Authorization": f"Bearer {gw.token}"})
    assert resp.status == 201, await resp.text()
    assert (await resp.json())["available_models"] == ["gpt-4o=openai/gpt-4o"]
    assert fake_upstream.calls("/v1/chat/completions")[0].body["model"] == "openai/gpt-4o"
