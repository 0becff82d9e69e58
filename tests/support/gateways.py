"""A gateway app built by the real factory around the test's stores, with helpers to call it,
add keys and read back the usage rows: shared by the /v1 test modules (the `gw` fixture is in
conftest.py)."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import openai
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway import config as config_mod
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.keystate import KEY_STATES
from gateway.relay.usage import USAGE
from gateway.store.users import User
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key

DONOR_KEY = "sk-donor-SECRET-key-000111"


@dataclass
class Gateway:
    client: TestClient
    app: web.Application
    token: str
    donor: User
    pool: asyncpg.Pool
    config: config_mod.Config
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return str(self.client.make_url("/v1"))

    def sdk(self, **kw: Any) -> openai.AsyncOpenAI:
        client = openai.AsyncOpenAI(base_url=self.base_url, api_key=kw.pop("api_key", self.token), max_retries=0, **kw)
        self.clients.append(client)
        return client

    async def post(self, path: str, body: Any, token: str | None = None, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        data = body if isinstance(body, bytes | str | io.BytesIO) else json.dumps(body)
        return await self.client.post(path, data=data, headers=headers, **kw)

    async def add_key(self, upstream: FakeUpstream, **kw: Any) -> str:
        key = await add_key(self.pool, self.config, self.donor, upstream.base_url, **kw)
        await self.app[KEY_INDEX].reload()
        return key.id

    async def flush(self) -> None:
        await self.app[KEY_STATES].wait()
        assert await self.app[USAGE].flush_once()

    async def logs(self) -> list[asyncpg.Record]:
        await self.flush()
        async with self.pool.acquire() as conn:
            return await conn.fetch("SELECT * FROM key_usage_logs ORDER BY created_at, attempt")

    async def key_row(self, key_id: str) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            return await conn.fetchrow("SELECT * FROM shared_keys WHERE id = $1::uuid", key_id)


def gateway_config(config: config_mod.Config, **limits: Any) -> config_mod.Config:
    config = config.replace("limits", **{"user_daily_requests": 0, "user_requests_per_minute": 0, **limits})
    return config.replace("upstream", first_token_timeout=0.8, idle_timeout=1.0, connect_timeout=2.0)
