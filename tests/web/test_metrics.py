"""`GET /metrics`: the contract's names, counting what happened, in one process and across workers."""

from __future__ import annotations

import asyncio
import glob
import tempfile
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from tests.ops.test_shutdown import env, serve, wait_ready  # noqa: F401 - fixtures
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token

CHAT = "/v1/chat/completions"
NAMES = {
    "sharekey_requests_total",
    "sharekey_upstream_seconds_count",
    "sharekey_time_to_first_token_seconds_count",
    "sharekey_attempts_count",
    "sharekey_keys",
    "sharekey_calls_left_today",
    "sharekey_usage_queue_depth",
    "sharekey_usage_flush_lag_seconds",
    "sharekey_usage_spool_depth",
}
DECLARED = {"sharekey_redis_errors", "sharekey_postgres_errors", "sharekey_job_runs", "sharekey_health_checks"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[Samples, set[str]]:
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, families


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(get: Any, url: str) -> tuple[Samples, set[str]]:
    async with get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return parse(await resp.text())


async def test_metrics_name_and_count_what_happened(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> None:
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url, name="a", daily_limit=10)
    await add_key(pool, config, donor, fake_upstream.base_url, name="b", daily_limit=20)
    off = await add_key(pool, config, donor, fake_upstream.base_url, name="off")
    paused = await add_key(pool, config, donor, fake_upstream.base_url, name="paused")
    async with pool.acquire() as conn:
        disable = "UPDATE shared_keys SET status = 'disabled', disabled_by = 'upstream' WHERE id = $1"
        await conn.execute(disable, uuid.UUID(off.id))
        await conn.execute("UPDATE shared_keys SET is_active = false WHERE id = $1", uuid.UUID(paused.id))
    fake_upstream.chunks = 3
    app = create_app(config)
    client = await aiohttp_client(app)
    before, _ = await scrape(client.get, "/metrics")
    auth = {"Authorization": f"Bearer {token}"}
    for _ in range(3):
        assert (await client.post(CHAT, json={"model": "gpt-4o-mini"}, headers=auth)).status == 200
    resp = await client.post(CHAT, json={"model": "gpt-4o-mini", "stream": True}, headers=auth)
    assert resp.status == 200 and (await resp.read()).endswith(b"[DONE]\n\n")
    assert (await client.post(CHAT, json={"model": "no-such-model"}, headers=auth)).status == 404
    assert (await client.post(CHAT, json={"model": "gpt-4o-mini"})).status == 401
    after, families = await scrape(client.get, "/metrics")

    assert {name for name, _ in after} >= NAMES and families >= DECLARED

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    ok = {"route": CHAT, "model": "gpt-4o-mini", "status": "200"}
    assert delta("sharekey_requests_total", **ok) == 4
    assert delta("sharekey_requests_total", route=CHAT, model="other", status="404") == 1
    assert delta("sharekey_requests_total", route=CHAT, model="other", status="401") == 1, "unbounded names: other"
    assert delta("sharekey_upstream_seconds_count") == 4
    assert delta("sharekey_time_to_first_token_seconds_count") == 1
    assert delta("sharekey_attempts_count") == 6 and delta("sharekey_attempts_sum") == 4
    assert delta("sharekey_attempts_bucket", le="0.0") == 2, "refused before any attempt"
    assert delta("sharekey_upstream_connections_total") == 1, "four calls, one kept-alive connection"
    states = {
        state: value(after, "sharekey_keys", state=state) for state in ("active", "cooling", "disabled", "paused")
    }
    assert states == {"active": 2, "cooling": 0, "disabled": 1, "paused": 1}
    assert value(after, "sharekey_calls_left_today", model="gpt-4o-mini") == 10 + 20 - 4
    assert value(after, "sharekey_usage_spool_depth") == 0

    # A cooling key shows as such (the balancer's Redis state, as its owner sees it).
    await app[BALANCER].cool_down(app[KEY_INDEX].pooled("gpt-4o-mini")[0].id, 60)
    cooled, _ = await scrape(client.get, "/metrics")
    assert value(cooled, "sharekey_keys", state="cooling") == 1 and value(cooled, "sharekey_keys", state="active") == 1


async def test_workers_share_one_view_and_the_directory_is_fresh(
    serve: Any,  # noqa: F811
    env: dict[str, str],  # noqa: F811
    pool: asyncpg.Pool,
    config: config_mod.Config,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
) -> None:
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_1.db").write_bytes(b"left over from an earlier run")
    gw = serve({**env, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}, workers=2)
    await wait_ready(gw)
    # A new connection per request, so the kernel spreads them over both workers.
    connector = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=connector, headers={"Authorization": f"Bearer {token}"}) as session:
        statuses = await asyncio.gather(
            *[session.post(gw.url + CHAT, json={"model": "gpt-4o-mini"}) for _ in range(10)]
        )
        assert [r.status for r in statuses] == [200] * 10
        for r in statuses:
            r.release()
        for _ in range(6):
            samples, _ = await scrape(session.get, gw.url + "/metrics")
            assert value(samples, "sharekey_requests_total", route=CHAT, model="gpt-4o-mini", status="200") == 10
            assert value(samples, "sharekey_keys", state="active") == 1
    assert not (multiproc / "counter_1.db").exists()
    assert await asyncio.to_thread(gw.stop) == 0
    assert multiproc.is_dir(), "an operator's directory is left in place"

    # Without one configured, a fresh temporary directory, gone after the exit.
    pattern = f"{tempfile.gettempdir()}/sharekey-metrics-*"
    before = set(glob.glob(pattern))
    gw = serve(env, workers=2)
    await wait_ready(gw)
    during = set(glob.glob(pattern)) - before
    assert len(during) == 1
    assert await asyncio.to_thread(gw.stop) == 0
    assert not set(glob.glob(pattern)) & during
