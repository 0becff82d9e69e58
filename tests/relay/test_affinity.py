"""Conversation affinity: a conversation goes back to the key that last served it while that key can
serve (upstream prompt caches are per account), and a previous_response_id to the key that made it."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import openai
import pytest

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import user_with_token

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


async def make(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, **balancer: Any) -> Gateway:
    config = gateway_config(config).replace("balancer", **balancer)
    app = create_app(config)
    client = await aiohttp_client(app)
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    return Gateway(client, app, token, donor, pool, config)


def served(a: FakeUpstream, b: FakeUpstream, path: str = "/v1/chat/completions") -> tuple[int, int]:
    return len(a.calls(path)), len(b.calls(path))


async def test_a_conversation_stays_on_its_key(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
) -> None:
    gw = await make(config, pool, aiohttp_client)
    await gw.add_key(fake_upstream, name="a")
    await gw.add_key(second_upstream, name="b")
    for _ in range(6):
        assert (await gw.post("/v1/chat/completions", {**CHAT, "prompt_cache_key": "conv-1"})).status == 200
    assert sorted(served(fake_upstream, second_upstream)) == [0, 6], "every turn on one key"
    for _ in range(6):
        assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
    assert served(fake_upstream, second_upstream) == (6, 6), "without a conversation: least-used evens them out"


async def test_a_conversation_moves_when_its_key_cannot_serve(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
) -> None:
    gw = await make(config, pool, aiohttp_client)
    await gw.add_key(fake_upstream, name="a", daily_limit=2)
    await gw.add_key(second_upstream, name="b", daily_limit=100)
    headers = {"X-Claude-Code-Session-Id": "session-7", "Authorization": f"Bearer {gw.token}"}
    order = []
    for _ in range(5):
        resp = await gw.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        assert resp.status == 200
        order.append(resp.headers["X-Request-Id"])
        order[-1] = "a" if served(fake_upstream, second_upstream)[0] > order.count("a") else "b"
    # On a while a can serve, then on b for good: never back and forth.
    assert order == sorted(order) and order.count("a") <= 2 and order[-1] == "b", order


async def test_a_previous_response_goes_to_the_key_that_made_it(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
) -> None:
    gw = await make(config, pool, aiohttp_client, affinity_seconds=0)
    await gw.add_key(fake_upstream, name="a")
    await gw.add_key(second_upstream, name="b")
    first = await gw.post("/v1/responses", {"model": "gpt-4o-mini", "input": "hi"})
    assert first.status == 200 and (await first.json())["id"] == "resp_fake"
    maker = fake_upstream if fake_upstream.calls("/v1/responses") else second_upstream
    await asyncio.sleep(0.2)  # remembered after the response
    for _ in range(4):
        body = {"model": "gpt-4o-mini", "input": "more", "previous_response_id": "resp_fake"}
        assert (await gw.post("/v1/responses", body)).status == 200
    assert len(maker.calls("/v1/responses")) == 5, "the response's own account, every time"


@pytest.mark.parametrize("affinity_seconds", [0])
async def test_affinity_off(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    affinity_seconds: int,
) -> None:
    gw = await make(config, pool, aiohttp_client, affinity_seconds=affinity_seconds)
    await gw.add_key(fake_upstream, name="a")
    await gw.add_key(second_upstream, name="b")
    for _ in range(6):
        assert (await gw.post("/v1/chat/completions", {**CHAT, "prompt_cache_key": "conv-1"})).status == 200
    assert served(fake_upstream, second_upstream) == (3, 3)


async def test_another_users_response_id_is_not_found_and_reaches_no_key(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
) -> None:
    gw = await make(config, pool, aiohttp_client, affinity_seconds=0)
    a, b = await gw.add_key(fake_upstream, name="a"), await gw.add_key(second_upstream, name="b")
    _, other_token = await user_with_token(pool, "other")
    async with gw.sdk() as owner, gw.sdk(api_key=other_token) as other:
        made = await owner.responses.create(model="gpt-4o-mini", input="hi")
        assert made.id == "resp_fake"
        await asyncio.sleep(0.2)  # remembered after the response
        balancer = gw.app[BALANCER]
        before = await balancer.usage_today([a, b])

        with pytest.raises(openai.NotFoundError) as refused:
            await other.responses.create(model="gpt-4o-mini", input="more", previous_response_id="resp_fake")
        assert refused.value.status_code == 404
        assert refused.value.body == {
            "message": "Response with id 'resp_fake' not found.",
            "type": "invalid_request_error",
            "code": "response_not_found",
        }
        assert served(fake_upstream, second_upstream, "/v1/responses") in ((1, 0), (0, 1)), "no upstream call"
        assert await balancer.usage_today([a, b]) == before, "nothing reserved"
        assert len(await gw.logs()) == 1, "no usage row: no key was tried"

        await owner.responses.create(model="gpt-4o-mini", input="more", previous_response_id="resp_fake")
        assert sorted(served(fake_upstream, second_upstream, "/v1/responses")) == [0, 2], "its owner continues it"
        # An id the gateway never saw (expired, or older than this version) goes to the least-used key.
        await other.responses.create(model="gpt-4o-mini", input="more", previous_response_id="resp_unknown")
        assert sorted(served(fake_upstream, second_upstream, "/v1/responses")) == [1, 2]


async def test_two_users_naming_the_same_conversation_do_not_steer_each_other(
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
) -> None:
    gw = await make(config, pool, aiohttp_client)
    await gw.add_key(fake_upstream, name="a")
    await gw.add_key(second_upstream, name="b")
    _, other_token = await user_with_token(pool, "other")
    for turn in range(4):
        for token in (gw.token, other_token):
            resp = await gw.post("/v1/chat/completions", {**CHAT, "prompt_cache_key": "conv-1"}, token=token)
            assert resp.status == 200
        assert served(fake_upstream, second_upstream) == (turn + 1, turn + 1), (
            "each user's conversation keeps its own key; the second one's first turn went to the least-used key"
        )
