"""Shared fixtures: real PostgreSQL and Redis, one clean schema and key prefix per test.

`DATABASE_URL` / `REDIS_URL` point the tests at running servers; without them the embedded
servers are started once for the session under a temporary directory.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.app import create_app
from gateway.ops import embedded
from gateway.store import db
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.rawserver import Handler, Server
from tests.support.seed import user_with_token

TEST_SECRET = "test-secret-" + "x" * 32


@pytest.fixture(scope="session")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    database_url = os.environ.get("DATABASE_URL", "")
    redis_url = os.environ.get("REDIS_URL", "")
    emb = None
    if not database_url or not redis_url:
        emb = embedded.start(tmp_path_factory.mktemp("embedded"), postgres=not database_url, redis=not redis_url)
        database_url = database_url or emb.database_url
        redis_url = redis_url or emb.redis_url
    yield database_url, redis_url
    if emb is not None:
        emb.stop()


def with_search_path(url: str, schema: str) -> str:
    """asyncpg passes unknown DSN query parameters on as server settings."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query)
    query = [(k, v) for k, v in query if k != "search_path"] + [("search_path", schema)]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query, safe="/")))


@pytest.fixture
async def schema(servers: tuple[str, str]) -> AsyncIterator[str]:
    base_url = servers[0]
    name = "t_" + secrets.token_hex(6)
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f"CREATE SCHEMA {name}")
    finally:
        await conn.close()
    yield name
    conn = await asyncpg.connect(base_url)
    try:
        await conn.execute(f"DROP SCHEMA {name} CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def database_url(servers: tuple[str, str], schema: str) -> str:
    return with_search_path(servers[0], schema)


@pytest.fixture
async def redis_prefix(servers: tuple[str, str]) -> AsyncIterator[str]:
    prefix = "t" + secrets.token_hex(5)
    yield prefix
    client = aioredis.from_url(servers[1])
    try:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
async def redis(servers: tuple[str, str], redis_prefix: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(servers[1])
    yield client
    await client.aclose()


@pytest.fixture
def config(servers: tuple[str, str], database_url: str, redis_prefix: str, tmp_path: Path) -> config_mod.Config:
    """A test configuration: real stores, a private schema and key prefix, loopback upstreams allowed."""
    return config_mod.load(
        env={
            "DATABASE_URL": database_url,
            "REDIS_URL": servers[1],
            "KEY_ENCRYPTION_SECRET": TEST_SECRET,
            "SHAREKEY_REDIS_KEY_PREFIX": redis_prefix,
            "SHAREKEY_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "SHAREKEY_SECURITY_ALLOW_PRIVATE_UPSTREAMS": "true",
            "SHAREKEY_SECURITY_ALLOW_HTTP_UPSTREAMS": "true",
            "SHAREKEY_LOGGING_FORMAT": "json",
        }
    )


@pytest.fixture
def cli_env(config: config_mod.Config, redis_prefix: str) -> dict[str, str]:
    """The environment for running the real `sharekey` command against this test's stores."""
    from tests.support.clirun import clean_env

    return clean_env(
        DATABASE_URL=config.database.url,
        REDIS_URL=config.redis.url,
        KEY_ENCRYPTION_SECRET=TEST_SECRET,
        SHAREKEY_REDIS_KEY_PREFIX=redis_prefix,
        SHAREKEY_LOGGING_FORMAT="json",
        SHAREKEY_SECURITY_ALLOW_HTTP_UPSTREAMS="true",
        SHAREKEY_SECURITY_ALLOW_PRIVATE_UPSTREAMS="true",
    )


@pytest.fixture
async def pool(config: config_mod.Config) -> AsyncIterator[asyncpg.Pool]:
    """A migrated database in the test's own schema."""
    async with asyncpg.create_pool(config.database.url, min_size=1, max_size=4) as p:
        async with p.acquire() as conn:
            await db.migrate(conn)
        yield p


@pytest.fixture
async def fake_upstream(aiohttp_server) -> FakeUpstream:  # type: ignore[no-untyped-def]
    upstream = FakeUpstream()
    upstream.server = await aiohttp_server(upstream.app)
    return upstream


@pytest.fixture
async def second_upstream(aiohttp_server) -> FakeUpstream:  # type: ignore[no-untyped-def]
    upstream = FakeUpstream(reply="Hello from the second upstream")
    upstream.server = await aiohttp_server(upstream.app)
    return upstream


@pytest.fixture
async def fake_gemini(aiohttp_server) -> FakeGemini:  # type: ignore[no-untyped-def]
    upstream = FakeGemini()
    upstream.server = await aiohttp_server(upstream.app)
    return upstream


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[Server]]]:
    servers: list[asyncio.base_events.Server] = []

    async def start(handler: Handler) -> Server:
        state = Server(0)

        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            state.connections += 1
            try:
                await handler(reader, writer)
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                state.closed.set()

        server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        servers.append(server)
        state.port = server.sockets[0].getsockname()[1]
        return state

    yield start
    for server in servers:
        server.close()


@pytest.fixture
async def gw(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client) -> AsyncIterator[Gateway]:  # type: ignore[no-untyped-def]
    config = gateway_config(config, max_output_tokens=4096)
    app = create_app(config)
    client = await aiohttp_client(app)
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    gateway = Gateway(client, app, token, donor, pool, config)
    yield gateway
    for sdk in gateway.clients:
        await sdk.close()
