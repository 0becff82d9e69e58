"""The application factory: the one place where everything is wired together.

`create_app(config)` is synchronous and does no I/O; every connection is opened by a cleanup
context. aiohttp tears contexts down in reverse order, so they are listed in dependency order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp_jinja2
import jinja2
import redis.asyncio as aioredis
from aiohttp import web

from . import appkeys, balancer, h1, health, keys_api, oauth, pages, proxy, thanks, tokens_api
from .config import Config
from .crypto import KeyRing
from .db import pg_pool
from .errors import error_middleware
from .events import event_bus
from .jobs import cluster_jobs
from .keyindex import key_index
from .keystate import KeyStates
from .log import request_context
from .redisline import ScriptLine
from .tokens import token_cache
from .usage import usage_log

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[request_context, error_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    app[appkeys.config] = config
    app[appkeys.draining] = asyncio.Event()
    app[appkeys.keyring] = KeyRing(config.security.key_encryption_secret, config.security.old_key_encryption_secrets)
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    # Dependency order; teardown runs in reverse, so usage drains while PostgreSQL and Redis are open.
    app.cleanup_ctx.extend(
        [
            pg_pool,
            redis_client,
            h1.upstream_pool,
            oauth.http_session,
            event_bus,
            token_cache,
            key_index,
            balancer_ctx,
            usage_log,
            cluster_jobs,
            thanks.thanks_ctx,
        ]
    )
    app.add_routes(
        [
            *proxy.routes,
            *keys_api.routes,
            *tokens_api.routes,
            *pages.routes,
            *thanks.routes,
            *oauth.routes,
            *health.routes,
        ]
    )
    app.router.add_static("/static/", pages.STATIC_DIR, name="static")
    app.on_response_prepare.append(server_header)
    return app


async def server_header(request: web.Request, response: web.StreamResponse) -> None:
    """Say what answers, not which aiohttp and Python versions (aiohttp's default)."""
    response.headers["Server"] = "sharekey"


async def balancer_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.config]
    line = ScriptLine(config.redis.url, balancer.SCRIPT, timeout=config.redis.timeout)
    app[appkeys.balancer] = balancer.Balancer(
        app[appkeys.redis],
        prefix=config.redis.key_prefix,
        timezone=config.balancer.timezone,
        stream_lease_seconds=config.upstream.total_timeout,
        failures_before_cooldown=config.balancer.failures_before_cooldown,
        line=line,
    )
    states = app[appkeys.key_states] = KeyStates(app[appkeys.pg], app[appkeys.redis], config.redis.key_prefix)
    yield
    await states.wait()
    await line.close()


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.config]
    client = create_redis(config.redis.url, timeout=config.redis.timeout)
    app[appkeys.redis] = client
    yield
    await client.aclose(close_connection_pool=True)  # a pool passed in is not closed by default


def create_redis(url: str, *, timeout: float = 2.0) -> aioredis.Redis:
    """Short timeouts (`redis.timeout`): Redis is on the hot path, and an outage must fail fast
    (503), not hang. A blocking pool makes a burst wait briefly for a connection instead of failing
    past the cap. The URL's TLS options (`rediss://…?ssl_cert_reqs=…&ssl_ca_certs=…`) reach the
    connections through `from_url`, as they reach the script line (see redisline)."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=512,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=30,
    )
    return aioredis.Redis(connection_pool=pool)
