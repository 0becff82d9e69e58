"""Liveness and readiness: `/healthz` says the process is up, `/readyz` that it can serve.

Ready means PostgreSQL and Redis both answer within a second and the process is not draining
for shutdown; otherwise 503, so a load balancer stops sending new requests here.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from . import appkeys

routes = web.RouteTableDef()
CHECK_TIMEOUT = 1.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks = {"postgres": await _check(_pg(app)), "redis": await _check(_redis(app))}
    draining = app[appkeys.draining].is_set()
    ok = all(checks.values()) and not draining
    body = {
        "status": "ready" if ok else "unavailable",
        "draining": draining,
        **{k: "ok" if v else "down" for k, v in checks.items()},
    }
    return web.json_response(body, status=200 if ok else 503)


async def _pg(app: web.Application) -> None:
    async with app[appkeys.pg].acquire(timeout=CHECK_TIMEOUT) as conn:
        await conn.fetchval("SELECT 1")


async def _redis(app: web.Application) -> None:
    await app[appkeys.redis].ping()


async def _check(probe: object) -> bool:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)  # type: ignore[arg-type]
    except Exception:
        return False
    return True
