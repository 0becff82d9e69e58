"""Liveness, readiness and the error surfaces of routes that do not exist."""

from __future__ import annotations

import asyncpg

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app


async def test_health_and_readiness(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client) -> None:  # type: ignore[no-untyped-def]
    app = create_app(config)
    client = await aiohttp_client(app)
    resp = await client.get("/healthz")
    assert resp.status == 200 and await resp.json() == {"status": "ok"}
    resp = await client.get("/readyz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ready", "draining": False, "postgres": "ok", "redis": "ok"}
    app[appkeys.draining].set()
    resp = await client.get("/readyz")
    assert resp.status == 503 and (await resp.json())["draining"] is True


async def test_unknown_routes_answer_in_their_surface_shape(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client
) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(config))
    resp = await client.get("/v1/nothing")
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "code"}
    resp = await client.post("/readyz", headers={"Accept": "application/json"})
    assert resp.status == 405 and (await resp.json())["error"]["code"] == "method_not_allowed"
    resp = await client.get("/api/nothing")
    assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    assert len(resp.headers["X-Request-Id"]) == 32


async def test_the_server_header_names_no_versions(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client
) -> None:  # type: ignore[no-untyped-def]
    client = await aiohttp_client(create_app(config))
    for path in ("/healthz", "/v1/models", "/no/such/page", "/static/app.css"):
        resp = await client.get(path)
        assert resp.headers["Server"] == "sharekey", path
        assert "aiohttp" not in str(resp.headers) and "Python" not in str(resp.headers)
