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

import dataclasses
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection

from gateway.config import Redis as RedisConfig
from gateway.net.redisline import ScriptLine

MAX_CONNECTIONS = 512


def tls_options_without_tls(url: str) -> list[str]:
    """The `ssl_*` options of a URL that connects without TLS (`redis://`, `unix://`). redis-py
    would refuse them at its first connection and this line ignores them: either way no TLS, which
    the operator who wrote them most likely meant to have (`rediss://`). Names only, never values."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "rediss":
        return []
    return sorted({k for k, _ in parse_qsl(parts.query, keep_blank_values=True) if k.startswith("ssl_")})


def without_tls_options(url: str) -> str:
    """The URL with its `ssl_*` options removed (for a `redis://` URL, where they mean nothing)."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not k.startswith("ssl_")]
    return urlunsplit(parts._replace(query=urlencode(query)))


def sentinel_addresses(cfg: RedisConfig) -> list[tuple[str, int]]:
    """`redis.sentinels` as (host, port) pairs (the configuration has checked their form)."""
    return [(host.strip("[]"), int(port)) for host, _, port in (a.rpartition(":") for a in cfg.sentinels)]


def client(cfg: RedisConfig, *, timeout: float | None = None) -> Any:
    """redis-py's client for this deployment. A blocking pool (one server, Sentinel) makes a burst
    wait briefly for a connection instead of failing past the cap. `ssl_*` options on a URL
    without TLS are dropped (redis-py would refuse them at its first connection; the line ignores
    them): the app names them in its log at start-up."""
    if tls_options_without_tls(cfg.url):
        cfg = dataclasses.replace(cfg, url=without_tls_options(cfg.url))
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
