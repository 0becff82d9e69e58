"""The application factory and every cleanup context: the one place where everything is wired.

`create_app(config)` is synchronous and does no I/O; every connection and background task is
opened by a cleanup context below. aiohttp tears contexts down in reverse order, so they are
listed in dependency order: the usage flusher drains while PostgreSQL and Redis are still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import aiohttp_jinja2
import jinja2
import structlog
from aiohttp import web, web_response

from gateway import appkeys, tracing
from gateway.config import Config
from gateway.errors import POSTGRES_DOWN, error_middleware
from gateway.inbound import BODY_BUDGET, BodyBudget, body_middleware
from gateway.log import request_context
from gateway.net import events, h1, redisclient
from gateway.net.events import BUS
from gateway.net.h1 import UPSTREAM_POOL
from gateway.ops import jobs
from gateway.relay import balancer, balances, cors, gemini_api, handlers, messages
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX, KeyIndex
from gateway.relay.keystate import KEY_STATES, KeyStates
from gateway.relay.overlimit import OVER_LIMIT, OverLimit
from gateway.relay.prices import PRICES, Price, Prices
from gateway.relay.usage import USAGE, UsageLog
from gateway.resources import data_dir
from gateway.store import db
from gateway.store.crypto import KEYRING, KeyRing
from gateway.store.tokens import TOKEN_CACHE, TokenCache, touch_forever
from gateway.tasks import background
from gateway.web import frame, health, pages
from gateway.web.api import aliases_api, keys_api, keys_import, prices_api, tokens_api
from gateway.web.board import thanks
from gateway.web.board.cache import BOARD, Board
from gateway.web.board.thanks import VISITORS, Visitors
from gateway.web.signin import flow, provider_calls

log = structlog.get_logger(__name__)

TEMPLATES_DIR = data_dir("templates")


def create_app(config: Config) -> web.Application:
    app = web.Application(
        middlewares=[request_context, *tracing_middleware(config), error_middleware, body_middleware],
        client_max_size=config.limits.max_body_bytes,
    )
    app[appkeys.config] = config
    app[BODY_BUDGET] = BodyBudget(config.limits.max_inflight_body_bytes)
    app[OVER_LIMIT] = OverLimit(config.redis.key_prefix)
    app[appkeys.draining] = asyncio.Event()
    app[KEYRING] = KeyRing(config.security.key_encryption_secret, config.security.old_key_encryption_secrets)
    aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True)
    # Dependency order; teardown runs in reverse, so usage drains while PostgreSQL and Redis are open.
    app.cleanup_ctx.extend(
        [
            tracing_ctx,
            pg_pool,
            redis_client,
            upstream_pool,
            oauth_session,
            event_bus,
            token_cache,
            key_index,
            balancer_ctx,
            prices_ctx,
            usage_log,
            cluster_jobs,
            thanks_board,
        ]
    )
    app.add_routes(
        [
            *handlers.routes,
            *messages.routes,
            *gemini_api.routes,
            *balances.routes,
            *keys_api.routes,
            *keys_import.routes,
            *aliases_api.routes,
            *prices_api.routes,
            *tokens_api.routes,
            *pages.routes,
            *thanks.routes,
            *flow.routes,
            *health.routes,
        ]
    )
    app.router.add_static("/static/", frame.STATIC_DIR, name="static")
    app.on_response_prepare.append(v1_headers)
    cors.setup(app, config.server.cors_origins)
    return app


def tracing_middleware(config: Config) -> list[Any]:
    """The request span's middleware, only where tracing is on: off, it costs nothing at all."""
    return [tracing.middleware] if config.tracing.otlp_endpoint else []


async def tracing_ctx(app: web.Application) -> AsyncIterator[None]:
    shutdown = tracing.start(app[appkeys.config].tracing, worker=str(os.getpid()))
    yield
    if shutdown is not None:
        await asyncio.to_thread(shutdown)  # the last export, off the event loop


# Say what answers, not which aiohttp and Python versions: aiohttp's default for every response,
# its own answers to bad requests (a bad request line, an over-long URL) included, which no
# middleware or signal of ours sees. tests/test_server_guards.py pins it.
web_response.SERVER_SOFTWARE = "sharekey"


async def v1_headers(request: web.Request, response: web.StreamResponse) -> None:
    """/v1 answers carry the content type the gateway set (JSON or an event stream, never an
    upstream's), and browsers must not guess another."""
    if request.path.startswith("/v1/"):
        response.headers["X-Content-Type-Options"] = "nosniff"


async def balancer_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.config]
    line = redisclient.line(config.redis, balancer.SCRIPT)
    app[BALANCER] = balancer.Balancer(
        app[appkeys.redis],
        prefix=config.redis.key_prefix,
        timezone=config.balancer.timezone,
        stream_lease_seconds=config.upstream.total_timeout,
        failures_before_cooldown=config.balancer.failures_before_cooldown,
        line=line,
        counts_today=lambda day: app[USAGE].counts_today(day),  # started after this context; asked later
    )
    states = app[KEY_STATES] = KeyStates(app[appkeys.pg], app[appkeys.redis], config.redis.key_prefix)
    yield
    await states.wait()
    await line.close()


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    config = app[appkeys.config]
    if ignored := redisclient.tls_options_without_tls(config.redis.url):
        log.warning(
            "redis_tls_options_ignored",
            options=ignored,
            reason="redis.url is redis://, which connects without TLS; for TLS write rediss://",
        )
    client = app[appkeys.redis] = redisclient.client(config.redis)
    yield
    await redisclient.close(client)


async def pg_pool(app: web.Application) -> AsyncIterator[None]:
    database = app[appkeys.config].database
    async with db.create_pool(database.url, statement_cache_size=database.statement_cache_size) as pool:
        app[appkeys.pg] = pool
        yield


async def upstream_pool(app: web.Application) -> AsyncIterator[None]:
    """The one client toward donor upstreams (`/v1`, key tests, health checks)."""
    pool = app[UPSTREAM_POOL] = h1.create_pool(app[appkeys.config])
    try:
        yield
    finally:
        await pool.close()


async def oauth_session(app: web.Application) -> AsyncIterator[None]:
    """The client session for the sign-in provider (no cookies, no redirects)."""
    async with provider_calls.create_session() as session:
        app[appkeys.oauth_http] = session
        yield


async def event_bus(app: web.Application) -> AsyncIterator[None]:
    """The subscriber task. A context that registers a handler later loads its own state after
    registering, so an event published in between is never missed."""
    bus = app[BUS] = events.Bus(app[appkeys.redis], app[appkeys.config].redis.key_prefix)
    async with background(bus.run()):
        yield


async def token_cache(app: web.Application) -> AsyncIterator[None]:
    per_minute = app[appkeys.config].limits.unknown_token_lookups_per_minute
    cache = app[TOKEN_CACHE] = TokenCache(app[appkeys.pg], lookups_per_minute=per_minute)
    bus = app[BUS]
    bus.on("token", cache.drop_token)
    bus.on("user", cache.drop_user)
    bus.on_resync(cache.clear)
    async with background(touch_forever(cache)):
        yield
    with contextlib.suppress(*POSTGRES_DOWN):
        await cache.touch()


async def key_index(app: web.Application) -> AsyncIterator[None]:
    aliases = app[appkeys.config].models.aliases
    timezone = app[appkeys.config].balancer.timezone
    index = app[KEY_INDEX] = KeyIndex(app[appkeys.pg], app[KEYRING], aliases, timezone)
    bus = app[BUS]
    bus.on("keys", index.invalidate)
    bus.on("aliases", index.invalidate)
    bus.on_resync(index.invalidate)
    await index.reload()
    async with background(index.run()):
        yield


async def prices_ctx(app: web.Application) -> AsyncIterator[None]:
    """Prices for the usage flusher's costs: admins' set reloaded on a `prices` event."""
    config = app[appkeys.config]
    configured = {model: Price.configured(p) for model, p in config.prices.items()}
    table = app[PRICES] = Prices(app[appkeys.pg], configured)
    bus = app[BUS]
    bus.on("prices", table.invalidate)
    bus.on_resync(table.invalidate)
    with contextlib.suppress(*POSTGRES_DOWN):
        await table.reload()
    async with background(table.run()):
        yield


async def usage_log(app: web.Application) -> AsyncIterator[None]:
    prefix = app[appkeys.config].redis.key_prefix
    usage = app[USAGE] = UsageLog(app[appkeys.pg], app[appkeys.redis], prefix, app[PRICES])
    async with background(usage.run()):
        yield
    await usage.drain()


async def cluster_jobs(app: web.Application) -> AsyncIterator[None]:
    async with jobs.running(app):
        yield


async def thanks_board(app: web.Application) -> AsyncIterator[None]:
    """The board's cache and the visitor cache; after the pool, the balancer and the key index,
    so that teardown cancels a refresh in flight before they close."""
    config = app[appkeys.config]
    board = app[BOARD] = Board(app[appkeys.pg], app[BALANCER], app[KEY_INDEX], config.oauth_linuxdo)
    app[VISITORS] = Visitors(app[appkeys.pg])
    yield
    await board.close()
