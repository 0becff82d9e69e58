"""The `/metrics` scrape: this process' counters (or every worker's, with `--workers N`) and the
cluster-wide gauges read at scrape time from PostgreSQL and Redis: keys by state, calls left today
per model, records in the usage spool (see `metrics` for the counters and the README's table).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import REGISTRY as DEFAULT_REGISTRY
from prometheus_client import CollectorRegistry, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.metrics import KEY_STATES, MULTIPROC_ENV, SCRAPE_TIMEOUT, postgres_error, redis_error, usage_observed
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.usage import USAGE

SELECT_KEY_STATES = """
SELECT id::text, CASE WHEN status = 'disabled' THEN 'disabled' WHEN NOT is_active THEN 'paused' ELSE 'active' END
FROM shared_keys
"""


class _ClusterFacts:
    """The last known cluster-wide gauges; a collector over them for one scrape."""

    def __init__(self) -> None:
        self.states: dict[str, int] = dict.fromkeys(KEY_STATES, 0)
        self.calls_left: dict[str, int] = {}
        self.spooled = 0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        keys = GaugeMetricFamily("sharekey_keys", "Donated keys by state, as their owners see it.", labels=["state"])
        for state, n in self.states.items():
            keys.add_metric([state], n)
        yield keys
        left = GaugeMetricFamily(
            "sharekey_calls_left_today",
            "Calls the pooled keys serving each model can still make today.",
            labels=["model"],
        )
        for model, n in sorted(self.calls_left.items()):
            left.add_metric([model], n)
        yield left
        yield GaugeMetricFamily(
            "sharekey_usage_spool_depth", "Usage records waiting in the Redis spool for PostgreSQL.", value=self.spooled
        )


async def _refresh(app: web.Application, facts: _ClusterFacts) -> None:
    index, balancer = app[KEY_INDEX], app[BALANCER]
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            async with app[appkeys.pg].acquire() as conn:
                rows = await conn.fetch(SELECT_KEY_STATES)
            stored = {r[0]: r[1] for r in rows}
    except POSTGRES_DOWN:
        postgres_error("metrics")
        stored = None
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT):
            cooling = await balancer.cooling()
            pooled = {k.id: k for keys in index.snapshot.pooled.values() for k in keys}
            used = await balancer.usage_today(list(pooled))
            facts.spooled = int(await app[appkeys.redis].llen(app[USAGE].spool_key))
    except REDIS_DOWN:
        redis_error("metrics")
        return
    facts.calls_left = {
        model: sum(max(0, k.daily_limit - used.get(k.id, 0)) for k in keys)
        for model, keys in index.snapshot.pooled.items()
    }
    if stored is not None:
        states = dict.fromkeys(KEY_STATES, 0)
        for key_id, state in stored.items():
            states["cooling" if state == "active" and key_id in cooling else state] += 1
        facts.states = states


_facts = _ClusterFacts()  # one app per process; its last known answers


async def render(app: web.Application) -> bytes:
    usage = app[USAGE]
    usage_observed(usage.depth, usage.lag)  # this process' view is fresh; the others' is at most one flush old
    await _refresh(app, _facts)
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        own = generate_latest(registry)
    else:
        own = generate_latest(DEFAULT_REGISTRY)
    cluster = CollectorRegistry(auto_describe=False)
    cluster.register(_facts)  # type: ignore[arg-type]
    return own + generate_latest(cluster)
