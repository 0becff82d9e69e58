"""The application's keys for what every layer shares: the configuration, the stores' clients, the
request's id and log fields, the draining flag. A component's own key lives beside it, typed by it
(`relay.balancer.BALANCER`, `web.board.cache.BOARD`, …), so this module names no type of a layer
above it and imports none.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import ClientSession, web

from gateway.config import Config

config: web.AppKey[Config] = web.AppKey("config", Config)
pg: web.AppKey[asyncpg.Pool] = web.AppKey("pg", asyncpg.Pool)
redis: web.AppKey[aioredis.Redis] = web.AppKey("redis", aioredis.Redis)  # or a RedisCluster (redisclient)
oauth_http: web.AppKey[ClientSession] = web.AppKey("oauth_http", ClientSession)  # toward OAuth providers
draining: web.AppKey[asyncio.Event] = web.AppKey("draining", asyncio.Event)

request_id: web.RequestKey[str] = web.RequestKey("request_id", str)
log_fields: web.RequestKey[dict[str, Any]] = web.RequestKey("log_fields", dict)
