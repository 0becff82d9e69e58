"""A token's scope checked in process, before any pick (issue #25, DESIGN.md "Callers' tokens and
balances"): its expiry (401 token_expired, compared at request time, so one that passes while the
token is cached still stops it), its models (403 model_not_permitted; /v1/models lists only them)
and its allowed_ips (403 ip_not_allowed), from the connection's peer or, behind a trusted proxy,
X-Forwarded-For. Each refusal in the route's error shape; nothing reaches an upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway import config as config_mod
from gateway.app import create_app
from gateway.store.tokens import TOKEN_CACHE
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import scope_token, user_with_token

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "gpt-4o-mini", "max_tokens": 16, "messages": [{"role": "user", "content": "hi"}]}
GEMINI = {"contents": [{"parts": [{"text": "hi"}]}]}


async def test_an_expired_token_is_401_token_expired_on_every_surface(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream)
    await scope_token(gw.pool, gw.token, expires_at=datetime.now(UTC) - timedelta(seconds=1))
    chat = await gw.post("/v1/chat/completions", CHAT)
    assert chat.status == 401 and (await chat.json())["error"]["code"] == "token_expired"
    messages = await gw.post("/v1/messages", MESSAGES)
    assert messages.status == 401
    body = await messages.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error", body
    assert "expired" in body["error"]["message"]
    gemini = await gw.post("/v1beta/models/gpt-4o-mini:generateContent", GEMINI)
    assert gemini.status == 401 and (await gemini.json())["error"]["status"] == "UNAUTHENTICATED"
    listed = await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.token}"})
    assert listed.status == 401
    api = await gw.client.get("/api/shared-keys", headers={"Authorization": f"Bearer {gw.token}"})
    assert api.status == 401 and (await api.json())["error"]["code"] == "token_expired"
    assert fake_upstream.requests == []


async def test_an_expiry_that_passes_while_the_token_is_cached_still_stops_it(
    gw: Gateway, fake_upstream: FakeUpstream
) -> None:
    await gw.add_key(fake_upstream)
    await scope_token(gw.pool, gw.token, expires_at=datetime.now(UTC) + timedelta(seconds=1.5))
    before = await gw.post("/v1/chat/completions", CHAT)
    assert before.status == 200, await before.text()  # the token is now cached, with its expiry
    await asyncio.sleep(1.6)
    after = await gw.post("/v1/chat/completions", CHAT)
    assert after.status == 401 and (await after.json())["error"]["code"] == "token_expired"
    # Moved back into the future with SQL (and the cache told, as the tokens API will tell it):
    await scope_token(gw.pool, gw.token, expires_at=datetime.now(UTC) + timedelta(hours=1))
    gw.app[TOKEN_CACHE].clear()
    again = await gw.post("/v1/chat/completions", CHAT)
    assert again.status == 200
    assert len(fake_upstream.requests) == 2


async def test_a_model_outside_the_tokens_list_is_403_and_not_listed(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
    await gw.add_key(fake_upstream, models=fake_upstream.models)
    await scope_token(gw.pool, gw.token, models=["gpt-4o"])
    refused = await gw.post("/v1/chat/completions", CHAT)
    body = await refused.json()
    assert refused.status == 403 and body["error"]["code"] == "model_not_permitted", body
    assert body["error"]["message"] == "This token does not allow the model 'gpt-4o-mini'."
    served = await gw.post("/v1/chat/completions", {**CHAT, "model": "gpt-4o"})
    assert served.status == 200
    counted = await gw.post("/v1/messages/count_tokens", {k: v for k, v in MESSAGES.items() if k != "max_tokens"})
    assert counted.status == 403
    gemini = await gw.post("/v1beta/models/gpt-4o-mini:countTokens", GEMINI)
    assert gemini.status == 403 and (await gemini.json())["error"]["status"] == "PERMISSION_DENIED"
    auth = {"Authorization": f"Bearer {gw.token}"}
    openai_list = await (await gw.client.get("/v1/models", headers=auth)).json()
    assert [m["id"] for m in openai_list["data"]] == ["gpt-4o"]
    anthropic_list = await (await gw.client.get("/v1/models", headers={**auth, "anthropic-version": "1"})).json()
    assert [m["id"] for m in anthropic_list["data"]] == ["gpt-4o"]
    google = {"x-goog-api-key": gw.token}
    google_list = await (await gw.client.get("/v1beta/models", headers=google)).json()
    assert [m["name"] for m in google_list["models"]] == ["models/gpt-4o"]
    assert (await gw.client.get("/v1beta/models/gpt-4o-mini", headers=google)).status == 404
    assert len(fake_upstream.requests) == 1


async def test_an_alias_on_the_tokens_list_is_a_name_it_may_call(
    config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream, aiohttp_client: Any
) -> None:
    config = gateway_config(config).replace("models", aliases={"mini": ("gpt-4o-mini",)})
    gw = await _gateway(config, pool, aiohttp_client)
    await gw.add_key(fake_upstream)
    await scope_token(pool, gw.token, models=["mini"])
    assert (await gw.post("/v1/chat/completions", {**CHAT, "model": "mini"})).status == 200
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 403
    listed = await (await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.token}"})).json()
    assert [m["id"] for m in listed["data"]] == ["mini"]


# --- the client's address ----------------------------------------------------------------------


async def _gateway(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> Gateway:
    app = create_app(config)
    client = await aiohttp_client(app)  # listens on 127.0.0.1
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    return Gateway(client, app, token, donor, pool, config)


@pytest.fixture
async def proxied(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> AsyncIterator[Gateway]:
    """A gateway behind a trusted reverse proxy at 127.0.0.1 (127.0.0.2 is not one)."""
    yield await _gateway(
        gateway_config(config).replace("server", trusted_proxies=("127.0.0.1/32",)), pool, aiohttp_client
    )


async def _post_from(gw: Gateway, local: str, headers: dict[str, str] | None = None) -> tuple[int, str | None]:
    """A chat call from a client socket bound to `local` (another loopback address is another client)."""
    connector = aiohttp.TCPConnector(local_addr=(local, 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = str(gw.client.make_url("/v1/chat/completions"))
        auth = {"Authorization": f"Bearer {gw.token}", **(headers or {})}
        async with session.post(url, json=CHAT, headers=auth) as resp:
            body = await resp.json()
            return resp.status, (body.get("error") or {}).get("code")


async def test_allowed_ips_admit_127_0_0_1_and_refuse_127_0_0_2(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream)
    await scope_token(gw.pool, gw.token, allowed_ips=["127.0.0.1/32", "10.0.0.0/8"])
    assert await _post_from(gw, "127.0.0.2") == (403, "ip_not_allowed")
    assert await _post_from(gw, "127.0.0.1") == (200, None)
    # Without trusted proxies a forwarded address is never believed, whatever it says.
    assert await _post_from(gw, "127.0.0.2", {"X-Forwarded-For": "127.0.0.1"}) == (403, "ip_not_allowed")
    assert len(fake_upstream.requests) == 1


async def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(
    proxied: Gateway, fake_upstream: FakeUpstream
) -> None:
    gw = proxied
    await gw.add_key(fake_upstream)
    await scope_token(gw.pool, gw.token, allowed_ips=["203.0.113.0/24"])
    assert await _post_from(gw, "127.0.0.1", {"X-Forwarded-For": "203.0.113.7"}) == (200, None)
    assert await _post_from(gw, "127.0.0.1", {"X-Forwarded-For": "198.51.100.9"}) == (403, "ip_not_allowed")
    # The right-most address that is not a trusted proxy: what a client wrote before it is ignored.
    assert await _post_from(gw, "127.0.0.1", {"X-Forwarded-For": "198.51.100.9, 203.0.113.7"}) == (200, None)
    assert await _post_from(gw, "127.0.0.1", {"X-Forwarded-For": "203.0.113.7, 198.51.100.9"}) == (
        403,
        "ip_not_allowed",
    )
    assert await _post_from(gw, "127.0.0.1", {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}) == (200, None)
    # A peer that is not a trusted proxy: its header is a spoof, and the peer is the client.
    assert await _post_from(gw, "127.0.0.2", {"X-Forwarded-For": "203.0.113.7"}) == (403, "ip_not_allowed")
    assert await _post_from(gw, "127.0.0.1") == (403, "ip_not_allowed"), "the proxy itself is not the client"
    assert len(fake_upstream.requests) == 3


async def test_a_token_without_a_scope_is_served_as_before(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream)
    assert await _post_from(gw, "127.0.0.2") == (200, None)
    assert (await gw.post("/v1/chat/completions", CHAT)).status == 200
