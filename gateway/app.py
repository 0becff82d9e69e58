"""The application factory: the one place where everything is wired together.

`create_app(config)` is synchronous and does no I/O; every connection is opened by a cleanup
context. aiohttp tears contexts down in reverse order, so they are listed in dependency order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import redis.asyncio as aioredis
from aiohttp import web

from . import appkeys, health, upstream
from .config import Config
from .crypto import KeyRing
from .db import pg_pool
from .errors import error_middleware
from .log import request_context

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[request_context, error_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    app[appkeys.config] = config
    app[appkeys.draining] = asyncio.Event()
    app[appkeys.keyring] = KeyRing(config.security.key_encryption_secret, config.security.old_key_encryption_secrets)
    # Dependency order; teardown runs in reverse.
    app.cleanup_ctx.extend([pg_pool, redis_client, upstream.http_session])
    app.add_routes(health.routes)
    return app


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    client = create_redis(app[appkeys.config].redis.url)
    app[appkeys.redis] = client
    yield
    await client.aclose()


def create_redis(url: str) -> aioredis.Redis:
    # Short timeouts: Redis is on the hot path, and an outage must fail fast (503), not hang.
    return aioredis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0, health_check_interval=30)
