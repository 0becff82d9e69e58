"""Every web.AppKey the application uses, and nothing else (so no module imports another for a key)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import asyncpg
import redis.asyncio as aioredis
from aiohttp import ClientSession, web

if TYPE_CHECKING:
    from gateway.config import Config
    from gateway.inbound import BodyBudget
    from gateway.net.events import Bus
    from gateway.net.h1 import Pool
    from gateway.relay.balancer import Balancer
    from gateway.relay.keyindex import KeyIndex
    from gateway.relay.keystate import KeyStates
    from gateway.relay.overlimit import OverLimit
    from gateway.relay.prices import Prices
    from gateway.relay.usage import UsageLog
    from gateway.store.crypto import KeyRing
    from gateway.store.tokens import TokenCache
    from gateway.web.boardcache import Board
    from gateway.web.thanks import Visitors

config: web.AppKey[Config] = web.AppKey("config")
pg: web.AppKey[asyncpg.Pool] = web.AppKey("pg")
redis: web.AppKey[aioredis.Redis] = web.AppKey("redis")
oauth_http: web.AppKey[ClientSession] = web.AppKey("oauth_http")  # toward the configured OAuth provider
upstream_pool: web.AppKey[Pool] = web.AppKey("upstream_pool")  # every upstream call: /v1, key tests, health
keyring: web.AppKey[KeyRing] = web.AppKey("keyring")
bus: web.AppKey[Bus] = web.AppKey("bus")
key_index: web.AppKey[KeyIndex] = web.AppKey("key_index")
token_cache: web.AppKey[TokenCache] = web.AppKey("token_cache")
usage: web.AppKey[UsageLog] = web.AppKey("usage")
balancer: web.AppKey[Balancer] = web.AppKey("balancer")
key_states: web.AppKey[KeyStates] = web.AppKey("key_states")
board: web.AppKey[Board] = web.AppKey("board")
visitors: web.AppKey[Visitors] = web.AppKey("visitors")
prices: web.AppKey[Prices] = web.AppKey("prices")
body_budget: web.AppKey[BodyBudget] = web.AppKey("body_budget")  # request bodies being read (inbound)
over_limit: web.AppKey[OverLimit] = web.AppKey("over_limit")  # callers refused for rpm this minute

request_id: web.RequestKey[str] = web.RequestKey("request_id")
log_fields: web.RequestKey[dict[str, Any]] = web.RequestKey("log_fields")
draining: web.AppKey[asyncio.Event] = web.AppKey("draining")
