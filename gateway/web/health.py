"""Liveness, readiness and metrics: `/healthz`, `/readyz`, `/metrics`.

`/healthz` says the process is up. `/readyz` says whether to send it traffic: 503 while it drains
for shutdown or cannot reach Redis (the balancer needs Redis for every request: fail closed),
through redis-py or through the balancer's script line (see redisline), which can differ.
PostgreSQL down alone leaves it ready but `degraded`: `/v1` keeps serving from the in-process
key index and token cache while usage records wait, so a load balancer must not pull every
gateway out of service because of the database. `/metrics` is Prometheus text (see `metrics`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import appkeys, metrics
from gateway.relay.balancer import BALANCER
from gateway.web import scrape

routes = web.RouteTableDef()
CHECK_TIMEOUT = 1.0


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get("/readyz")
async def readyz(request: web.Request) -> web.Response:
    app = request.app
    postgres, redis = await asyncio.gather(_check(_pg(app)), _check(_redis(app)))
    if not postgres:
        metrics.postgres_error("readyz")
    if not redis:
        metrics.redis_error("readyz")
    draining = app[appkeys.draining].is_set()
    ok = redis and not draining
    status = "unavailable" if not ok else "ready" if postgres else "degraded"
    body = {
        "status": status,
        "draining": draining,
        "postgres": "ok" if postgres else "down",
        "redis": "ok" if redis else "down",
    }
    return web.json_response(body, status=200 if ok else 503)


@routes.get("/metrics")
async def metrics_text(request: web.Request) -> web.Response:
    body = await scrape.render(request.app)
    return web.Response(body=body, headers={"Content-Type": metrics.CONTENT_TYPE})


async def _pg(app: web.Application) -> None:
    async with app[appkeys.pg].acquire(timeout=CHECK_TIMEOUT) as conn:
        await conn.fetchval("SELECT 1")


async def _redis(app: web.Application) -> None:
    """Both ways to Redis must work: redis-py's pool, and the balancer's line that every request uses."""
    await asyncio.gather(app[appkeys.redis].ping(), app[BALANCER].ping())


async def _check(probe: object) -> bool:
    try:
        await asyncio.wait_for(probe, CHECK_TIMEOUT)  # type: ignore[arg-type]
    except Exception:
        return False
    return True
