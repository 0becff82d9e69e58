"""/api/tokens: create (shown once), list, revoke — and a revoked token stops working everywhere."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.app import create_app
from gateway.net.events import BUS
from gateway.store import tokens
from gateway.web.api import tokens_api
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.seed import user_with_token

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures


async def signed_in(site: Site, username: str = "alice") -> dict[str, str]:
    assert (await site.sign_in(username)).status == 303
    return await site.write_headers()


async def models(client: TestClient, token: str) -> int:
    resp = await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})
    await resp.read()
    return resp.status


async def test_create_list_revoke(site: Site) -> None:
    headers = await signed_in(site)
    created = await site.client.post("/api/tokens", json={"label": "  laptop  "}, headers=headers)
    assert created.status == 201
    assert created.headers["Cache-Control"] == "no-store"
    body = await created.json()
    assert tokens.well_formed(body["token"])
    assert body["label"] == "laptop" and body["hint"] == tokens.hint(body["token"])
    assert body["last_used_at"] is None and body["created_at"]

    listed = await (await site.client.get("/api/tokens")).json()
    assert listed == {"tokens": [{k: v for k, v in body.items() if k != "token"}]}
    page = await (await site.client.get("/tokens")).text()
    assert "laptop" in page and body["hint"] in page and body["token"] not in page

    revoked = await site.client.delete("/api/tokens", params={"id": body["id"]}, headers=headers)
    assert revoked.status == 204
    assert await (await site.client.get("/api/tokens")).json() == {"tokens": []}
    again = await site.client.delete("/api/tokens", params={"id": body["id"]}, headers=headers)
    assert again.status == 404
    async with site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT revoked_at IS NOT NULL FROM api_tokens WHERE id = $1::uuid", body["id"])


async def test_a_revoked_token_stops_working_on_every_process_within_a_second(site: Site, aiohttp_client: Any) -> None:
    other = await aiohttp_client(create_app(site.config))  # a second gateway process on the same stores
    headers = await signed_in(site)
    token = (await (await site.client.post("/api/tokens", json={"label": "sdk"}, headers=headers)).json())["token"]
    body_id = (await (await site.client.get("/api/tokens")).json())["tokens"][0]["id"]
    assert await models(site.client, token) == 200
    assert await models(other, token) == 200  # now cached in the other process
    await asyncio.wait_for(other.app[BUS].subscribed.wait(), 5)

    await site.client.delete("/api/tokens", params={"id": body_id}, headers=headers)
    assert await models(site.client, token) == 401  # this process: at once
    deadline = time.monotonic() + 1.0
    while await models(other, token) != 401:
        assert time.monotonic() < deadline, "the other process still accepts the revoked token"
        await asyncio.sleep(0.05)


async def test_other_users_tokens_are_not_found(site: Site) -> None:
    _, bobs_token = await user_with_token(site.pool, "bob")
    async with site.pool.acquire() as conn:
        bobs_id = str(await conn.fetchval("SELECT id FROM api_tokens"))
    headers = await signed_in(site)
    assert await (await site.client.get("/api/tokens")).json() == {"tokens": []}
    for token_id in (bobs_id, "not-a-uuid", ""):
        resp = await site.client.delete("/api/tokens", params={"id": token_id}, headers=headers)
        assert resp.status == 404
        assert (await resp.json())["error"]["code"] == "not_found"
    assert await models(site.client, bobs_token) == 200


async def test_invalid_input(site: Site) -> None:
    headers = await signed_in(site)
    cases: list[tuple[Any, int, str | None]] = [
        ({"label": "x" * 65}, 422, "label"),
        ({"label": 7}, 422, "label"),
        ({"label": "a\x00b"}, 422, "label"),
        ({"owner": "bob"}, 422, "owner"),
        ([1, 2], 400, None),
    ]
    for body, status, field in cases:
        resp = await site.client.post("/api/tokens", json=body, headers=headers)
        assert resp.status == status, body
        assert (await resp.json())["error"].get("field") == field
    bad_json = await site.client.post(
        "/api/tokens", data=b"{nope", headers={**headers, "Content-Type": "application/json"}
    )
    assert bad_json.status == 400
    assert (await site.client.post("/api/tokens", json={"label": None}, headers=headers)).status == 201


async def test_a_cap_on_live_tokens(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokens_api, "MAX_TOKENS", 2)
    headers = await signed_in(site)
    statuses = [(await site.client.post("/api/tokens", json={}, headers=headers)).status for _ in range(3)]
    assert statuses == [201, 201, 422]


async def test_only_a_browser_session_manages_tokens(site: Site) -> None:
    _, token = await user_with_token(site.pool, "bob")
    bearer = {"Authorization": f"Bearer {token}"}
    for method in ("GET", "POST", "DELETE"):
        resp = await site.client.request(method, "/api/tokens", headers=bearer, json={} if method == "POST" else None)
        assert resp.status == 401, method
        assert (await resp.json())["error"]["code"] == "unauthorized"
