"""The Redis clients, shaped by the deployment: one server, a Redis Cluster (`redis.cluster`: any
node in the URL) or a master found through Sentinel (`redis.sentinels`).

    client(cfg)        -> redis-py's client: jobs, pub/sub, sessions, the usage spool, the CLI
    close(client)      -> closes it, its pool included
    line(cfg, script)  -> the hot path's script line (`redisline.ScriptLine`) on the same topology

redis-py follows the topology for everything it carries (`RedisCluster` refreshes its slot map on
`MOVED`; `Sentinel.master_for` asks the sentinels again after a failover or a `READONLY`); the line
does the same for its one script, its own way (see redisline). Short timeouts (`redis.timeout`):
Redis is on the hot path, and an outage must fail fast (503), not hang. The URL's options (TLS,
password, db) reach every connection as redis-py's `parse_url` reads them.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection

from gateway.config import Redis as RedisConfig
from gateway.net.redisline import ScriptLine

MAX_CONNECTIONS = 512


def sentinel_addresses(cfg: RedisConfig) -> list[tuple[str, int]]:
    """`redis.sentinels` as (host, port) pairs (the configuration has checked their form)."""
    return [(host.strip("[]"), int(port)) for host, _, port in (a.rpartition(":") for a in cfg.sentinels)]


def client(cfg: RedisConfig, *, timeout: float | None = None) -> Any:
    """redis-py's client for this deployment. A blocking pool (one server, Sentinel) makes a burst
    wait briefly for a connection instead of failing past the cap."""
    timeout = cfg.timeout if timeout is None else timeout
    common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if cfg.cluster:
        return RedisCluster.from_url(cfg.url, max_connections=MAX_CONNECTIONS, **common)
    if cfg.sentinels:
        options = {k: v for k, v in parse_url(cfg.url).items() if k not in ("host", "port", "connection_class")}
        if parse_url(cfg.url).get("connection_class") is SSLConnection:
            options["connection_class"] = SentinelManagedSSLConnection
        sentinel = Sentinel(
            sentinel_addresses(cfg),
            sentinel_kwargs={"password": cfg.sentinel_password or None, **common},
            **common,
        )
        return sentinel.master_for(cfg.sentinel_service, health_check_interval=30, **common, **options)
    pool = aioredis.BlockingConnectionPool.from_url(
        cfg.url, max_connections=MAX_CONNECTIONS, timeout=timeout, health_check_interval=30, **common
    )
    return aioredis.Redis(connection_pool=pool)


async def close(client: Any) -> None:
    """Close a client from `client`, its connection pool included."""
    if isinstance(client, RedisCluster):
        await client.aclose()
    else:
        await client.aclose(close_connection_pool=True)  # a pool passed in is not closed by default


def line(cfg: RedisConfig, script: str) -> ScriptLine:
    """The script line for this deployment: it follows MOVED/ASK, or asks the sentinels."""
    return ScriptLine(
        cfg.url,
        script,
        timeout=cfg.timeout,
        cluster=cfg.cluster,
        sentinels=sentinel_addresses(cfg),
        service=cfg.sentinel_service,
        sentinel_password=cfg.sentinel_password,
    )
