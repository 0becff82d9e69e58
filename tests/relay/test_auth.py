"""One gateway-token check for `/v1` and `/api`, each surface answering in its own shape."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.web.api import keys_api
from tests.support.seed import user_with_token
from tests.web.test_metrics import scrape, value

V1_REFUSED = {
    "message": "Invalid or missing gateway token. Pass it as 'Authorization: Bearer <token>'.",
    "type": "invalid_request_error",
    "code": "invalid_api_key",
}
API_REFUSED = {"message": keys_api.NOT_SIGNED_IN, "code": "unauthorized"}


@pytest.fixture
async def site(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> tuple[Any, str]:
    _, token = await user_with_token(pool, "alice")
    return await aiohttp_client(create_app(config)), token


@pytest.mark.parametrize(
    "header", ["Bearer", "Bearer   ", "Bearer shk_garbled", "Basic abc", "Token shk_x", "Bearer shk_" + "A" * 38]
)
async def test_a_bad_token_is_refused_in_each_surface_s_own_words(site: tuple[Any, str], header: str) -> None:
    client, _ = site
    v1 = await client.get("/v1/models", headers={"Authorization": header})
    assert (v1.status, await v1.json()) == (401, {"error": V1_REFUSED})
    api = await client.get("/api/shared-keys", headers={"Authorization": header})
    assert (api.status, await api.json()) == (401, {"error": API_REFUSED})


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_a_good_token_opens_both_surfaces(site: tuple[Any, str], scheme: str) -> None:
    client, token = site
    auth = {"Authorization": f"{scheme} {token} "}
    v1 = await client.get("/v1/models", headers=auth)
    assert v1.status == 200 and (await v1.json())["object"] == "list"
    api = await client.get("/api/shared-keys", headers=auth)
    assert (api.status, await api.json()) == (200, {"keys": [], "next": None})


async def test_postgresql_down_is_each_surface_s_503_and_counted(site: tuple[Any, str], pool: asyncpg.Pool) -> None:
    client, token = site
    _, unseen = await user_with_token(pool, "bob")  # not in the cache: it cannot be checked
    before, _ = await scrape(client.get, "/metrics")
    await client.app[appkeys.pg].close()  # PostgreSQL is gone for this gateway
    auth = {"Authorization": f"Bearer {unseen}"}

    v1 = await client.get("/v1/models", headers=auth)
    assert v1.status == 503 and v1.headers["Retry-After"] == "5"
    assert await v1.json() == {
        "error": {
            "message": "The gateway cannot verify tokens right now; try again shortly.",
            "type": "service_unavailable",
            "code": "service_unavailable",
        }
    }
    api = await client.get("/api/shared-keys", headers=auth)
    assert (api.status, await api.json()) == (
        503,
        {"error": {"message": "Cannot verify sign-ins right now; try again shortly.", "code": "service_unavailable"}},
    )
    after, _ = await scrape(client.get, "/metrics")
    failed = value(after, "sharekey_postgres_errors_total", source="tokens")
    assert failed - value(before, "sharekey_postgres_errors_total", source="tokens") == 2
