"""`sharekey rotate-secret`: interrupted and run again, every key opens under the new secret alone;
a running gateway keeps serving; a gateway that lacks the new secret stops it from starting."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.app import create_app
from gateway.net import redisnames
from gateway.relay.keyindex import KEY_INDEX
from gateway.store.crypto import KeyRing
from tests.conftest import TEST_SECRET
from tests.support.clirun import sharekey
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token

OLD = "the-old-secret-" + "o" * 32
NEW = TEST_SECRET
UNKNOWN = "a-secret-nobody-has-" + "u" * 32
KEYS = 40


def sealed_under(config: config_mod.Config, secret: str) -> config_mod.Config:
    return config.replace("security", key_encryption_secret=secret, old_key_encryption_secrets=())


async def opened(pool: asyncpg.Pool, ring: KeyRing) -> dict[str, str]:
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, user_id, base_url, api_key_encrypted FROM shared_keys")
    return {
        str(r["id"]): ring.open(
            r["api_key_encrypted"], key_id=str(r["id"]), owner_id=str(r["user_id"]), base_url=r["base_url"]
        )
        for r in rows
    }


async def under_new(pool: asyncpg.Pool) -> int:
    async with pool.acquire() as conn:
        return int(
            await conn.fetchval(
                "SELECT count(*) FROM shared_keys WHERE key_version = $1 AND api_key_encrypted LIKE $1 || ':%'",
                KeyRing(NEW).current_kid,
            )
        )


async def test_interrupted_then_rerun_leaves_every_key_under_the_new_secret(
    pool: asyncpg.Pool, config: config_mod.Config, cli_env: dict[str, str]
) -> None:
    donor, _ = await user_with_token(pool, "donor")
    old = sealed_under(config, OLD)
    for i in range(KEYS):
        await add_key(pool, old, donor, "https://api.example.com/v1", name=f"k{i:02d}", api_key=f"sk-donor-{i:012d}")
    plain = await opened(pool, KeyRing(OLD))
    env = {**cli_env, "KEY_ENCRYPTION_SECRET": NEW, "KEY_ENCRYPTION_OLD_SECRETS": OLD}

    proc = subprocess.Popen(  # noqa: ASYNC220 - started, then watched and killed from here
        [sys.executable, "-m", "gateway", "rotate-secret", "--batch-size", "3", "--pause", "0.1"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while await under_new(pool) < 9:
            assert proc.poll() is None and time.monotonic() < deadline
            await asyncio.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up
    finally:
        proc.kill()
        proc.wait()
    moved = await under_new(pool)
    assert 9 <= moved < KEYS
    assert await opened(pool, KeyRing(NEW, [OLD])) == plain, "half-way, the ring opens every key"

    again = await asyncio.to_thread(sharekey, "rotate-secret", env=env)
    assert again.code == 0, again.err
    kid = KeyRing(NEW).current_kid
    assert again.out.strip() == f"re-encrypted {KEYS - moved} key(s); {KEYS} of {KEYS} are under key id {kid}"
    assert await opened(pool, KeyRing(NEW)) == plain, "the new secret alone opens every key"
    third = await asyncio.to_thread(sharekey, "rotate-secret", env=env)
    assert third.code == 0 and third.out.startswith("re-encrypted 0 key(s)")


async def test_a_serving_gateway_keeps_every_key_and_stops_a_rotation_it_could_not_follow(
    pool: asyncpg.Pool,
    config: config_mod.Config,
    cli_env: dict[str, str],
    aiohttp_client: Any,
    fake_upstream: FakeUpstream,
    redis: aioredis.Redis,
    redis_prefix: str,
) -> None:
    donor, token = await user_with_token(pool, "donor")
    old = sealed_under(config, OLD)
    for i in range(12):
        await add_key(pool, old, donor, fake_upstream.base_url, name=f"k{i:02d}", api_key=f"sk-donor-{i:012d}")
    lost = await add_key(pool, sealed_under(config, UNKNOWN), donor, fake_upstream.base_url, name="lost")
    env = {**cli_env, "KEY_ENCRYPTION_SECRET": NEW, "KEY_ENCRYPTION_OLD_SECRETS": OLD}

    # A gateway process that only knows the old secret announces its ring: rotating would lock it out.
    now = int(time.time() * 1000)
    await redis.hset(redisnames.keyrings(redis_prefix), "old-host:1", f"{now + 30_000} {KeyRing(OLD).current_kid}")
    refused = await asyncio.to_thread(sharekey, "rotate-secret", env=env)
    assert refused.code == 1 and "do not have the new secret yet (old-host:1)" in refused.err
    await redis.hset(redisnames.keyrings(redis_prefix), "old-host:1", f"{now - 1} {KeyRing(OLD).current_kid}")

    serving = config.replace("security", key_encryption_secret=NEW, old_key_encryption_secrets=(OLD,))
    app = create_app(serving.replace("limits", user_daily_requests=0, user_requests_per_minute=0))
    client = await aiohttp_client(app)
    assert len(app[KEY_INDEX].snapshot.by_id) == 12, "the unopenable key is left out"
    me = f"{socket.gethostname()}:{os.getpid()}".encode()
    for _ in range(100):  # this process announces its ring (current first) as soon as it serves
        if me in (ring := await redis.hgetall(redisnames.keyrings(redis_prefix))):
            break
        await asyncio.sleep(0.01)
    assert ring[me].decode().split(" ")[1] == f"{KeyRing(NEW).current_kid},{KeyRing(OLD).current_kid}"

    async def traffic() -> list[int]:
        statuses = []
        while not done.is_set():
            resp = await client.post(
                "/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers={"Authorization": f"Bearer {token}"}
            )
            statuses.append(resp.status)
            await asyncio.sleep(0.01)
        return statuses

    done = asyncio.Event()
    load = asyncio.create_task(traffic())
    result = await asyncio.to_thread(sharekey, "rotate-secret", "--batch-size", "2", "--pause", "0.05", env=env)
    await asyncio.sleep(0.3)  # the `keys` event: the index reloads what was just re-sealed
    done.set()
    statuses = await load
    assert result.code == 1 and f"1 key(s) open under no secret in the ring and were left as they are: {lost.id}" in (
        result.err
    )
    assert result.out.startswith("re-encrypted 12 key(s); 12 of 13")
    assert len(statuses) > 10 and set(statuses) == {200}
    await app[KEY_INDEX].reload()
    index = app[KEY_INDEX].snapshot.by_id
    assert sorted(k.api_key for k in index.values()) == [f"sk-donor-{i:012d}" for i in range(12)]
    async with pool.acquire() as conn:
        stale = await conn.fetchval("SELECT key_version FROM shared_keys WHERE id = $1", uuid.UUID(lost.id))
    assert stale == KeyRing(UNKNOWN).current_kid
