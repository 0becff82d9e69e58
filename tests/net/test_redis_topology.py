"""The gateway on the Redis its users grow into, started for real on loopback: a three-master
Redis Cluster (the gateway pointed at a node that does not own the balancer's slot, and the slot
resharded while it serves) and a master + replica watched by three sentinels (the master killed,
and a graceful failover that demotes it under the gateway's connections)."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.usage import USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.redis_servers import RedisServer, free_port
from tests.support.seed import add_key, user_with_token

REDIS_CLI = shutil.which("redis-cli")
pytestmark = pytest.mark.skipif(REDIS_CLI is None, reason="redis-cli is not installed (Debian package redis-tools)")
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def _cli(port: int, *args: str) -> str:
    assert REDIS_CLI is not None
    done = subprocess.run([REDIS_CLI, "-p", str(port), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


@dataclasses.dataclass
class Cluster:
    nodes: list[RedisServer]
    ids: dict[int, str]  # port -> node id

    def owner(self, slot: int) -> RedisServer:
        for line in _cli(self.nodes[0].port, "cluster", "nodes").splitlines():
            parts = line.split()
            for part in parts[8:]:
                lo, _, hi = part.partition("-")
                if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                    port = int(parts[1].split(":")[1].split("@")[0])
                    return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no node owns slot {slot}")

    def move(self, slot: int, target: RedisServer) -> None:
        """A live reshard of one slot, as `redis-cli --cluster reshard` does it: importing and
        migrating marks, every key moved with MIGRATE, then the slot given to the target."""
        source = self.owner(slot)
        _cli(target.port, "cluster", "setslot", str(slot), "importing", self.ids[source.port])
        _cli(source.port, "cluster", "setslot", str(slot), "migrating", self.ids[target.port])
        while True:
            keys = _cli(source.port, "cluster", "getkeysinslot", str(slot), "100").split()
            if not keys:
                break
            _cli(source.port, "migrate", "127.0.0.1", str(target.port), "", "0", "5000", "keys", *keys)
        for node in self.nodes:
            _cli(node.port, "cluster", "setslot", str(slot), "node", self.ids[target.port])


def _cluster_port() -> int:
    """A free port whose cluster bus port (10,000 higher) is free too."""
    while True:
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    nodes = []
    try:
        for i in range(3):
            folder = tmp_path / f"node{i}"
            folder.mkdir()
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                     "--cluster-node-timeout", "2000")  # fmt: skip
            nodes.append(RedisServer(folder, port=_cluster_port(), extra=extra))
        _cli(nodes[0].port, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in nodes), "--cluster-yes")
        deadline = time.monotonic() + 20
        while not all("cluster_state:ok" in _cli(n.port, "cluster", "info") for n in nodes):
            assert time.monotonic() < deadline, "the cluster did not come up"
            time.sleep(0.1)
        ids = {n.port: _cli(n.port, "cluster", "myid").strip() for n in nodes}
        yield Cluster(nodes, ids)
    finally:
        for n in nodes:
            n.stop()


async def _gateway(config: config_mod.Config, pool: asyncpg.Pool, upstream: FakeUpstream, aiohttp_client: Any) -> Any:
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    await add_key(pool, config, donor, upstream.base_url, daily_limit=1_000_000)
    app = create_app(gateway_config(config))
    client = await aiohttp_client(app)
    await app[KEY_INDEX].reload()
    client.headers_ = {"Authorization": f"Bearer {token}"}
    return client


async def _call(client: Any) -> tuple[int, float]:
    start = time.monotonic()
    resp = await client.post("/v1/chat/completions", json=BODY, headers=client.headers_)
    await resp.read()
    return resp.status, time.monotonic() - start


async def _used_today(client: Any) -> int:
    used = await client.app[BALANCER].usage_today()
    return sum(used.values())


async def test_a_cluster_node_without_the_slot_serves_and_a_reshard_costs_at_most_the_timeout(
    cluster: Cluster,
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,
    aiohttp_client: Any,
) -> None:
    prefix = config.redis.key_prefix
    slot = int(_cli(cluster.nodes[0].port, "cluster", "keyslot", f"{{{prefix}}}"))
    owner = cluster.owner(slot)
    other = next(n for n in cluster.nodes if n is not owner)
    cfg = config.replace("redis", url=other.url(), cluster=True, timeout=2.0)
    client = await _gateway(cfg, pool, fake_upstream, aiohttp_client)

    resp = await client.get("/readyz")
    assert (resp.status, (await resp.json())["redis"]) == (200, "ok")
    results = [await _call(client) for _ in range(5)]
    assert [s for s, _ in results] == [200] * 5
    assert await _used_today(client) == 5  # the balancer's counts, wherever the slot lives

    # The slot moves to the third node while calls keep coming.
    third = next(n for n in cluster.nodes if n not in (owner, other))
    running = True

    async def load() -> list[tuple[int, float]]:
        out = []
        while running:
            out.append(await _call(client))
            await asyncio.sleep(0.005)
        return out

    tasks = [asyncio.create_task(load()) for _ in range(4)]
    await asyncio.sleep(0.3)
    await asyncio.to_thread(cluster.move, slot, third)
    await asyncio.sleep(0.5)
    running = False
    during = [r for t in tasks for r in await t]
    assert cluster.owner(slot) is third
    assert during and all(status == 200 for status, _ in during), {s for s, _ in during}
    assert max(seconds for _, seconds in during) < cfg.redis.timeout + 0.5
    assert await _used_today(client) == 5 + len(during)  # nothing lost, nothing counted twice
    resp = await client.get("/readyz")
    assert resp.status == 200


def test_a_node_list_or_a_cluster_option_in_the_url_is_a_configuration_error() -> None:
    for url, words in (
        ("redis://127.0.0.1:7000,127.0.0.1:7001/0", "one node per URL"),
        ("redis://127.0.0.1:7000/0?cluster=true", "redis.cluster = true"),
    ):
        with pytest.raises(config_mod.ConfigError, match="redis.url") as e:
            config_mod.load(env={"REDIS_URL": url})
        assert words in str(e.value)
    with pytest.raises(config_mod.ConfigError, match="redis.sentinel_service"):
        config_mod.load(env={"SHAREKEY_REDIS_SENTINELS": "127.0.0.1:26379"})


@dataclasses.dataclass
class Sentinels:
    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisServer]

    def master_port(self) -> int:
        reply = _cli(self.sentinels[0].port, "sentinel", "get-master-addr-by-name", "sk-master").split()
        return int(reply[1])


@pytest.fixture
def sentinels(tmp_path: Path) -> Iterator[Sentinels]:
    started: list[RedisServer] = []
    try:
        master = RedisServer(tmp_path)
        started.append(master)
        replica_dir = tmp_path / "replica"
        replica_dir.mkdir()
        replica = RedisServer(replica_dir, extra=("--replicaof", "127.0.0.1", str(master.port)))
        started.append(replica)
        watchers = []
        for i in range(3):
            folder = tmp_path / f"sentinel{i}"
            folder.mkdir()
            conf = folder / "sentinel.conf"
            conf.write_text(
                f"sentinel monitor sk-master 127.0.0.1 {master.port} 2\n"
                "sentinel down-after-milliseconds sk-master 500\n"
                "sentinel failover-timeout sk-master 3000\n"
                "sentinel parallel-syncs sk-master 1\n"
            )
            watchers.append(RedisServer(folder, conf=conf, extra=("--sentinel",)))
            started.append(watchers[-1])
        deadline = time.monotonic() + 20
        while "slaves=1" not in _cli(watchers[0].port, "info", "sentinel") or "sentinels=3" not in _cli(
            watchers[0].port, "info", "sentinel"
        ):
            assert time.monotonic() < deadline, "the sentinels did not see the replica and each other"
            time.sleep(0.1)
        yield Sentinels(master, replica, watchers)
    finally:
        for s in started:
            s.stop()


@pytest.fixture
async def sentinel_client(
    sentinels: Sentinels,
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,
    aiohttp_client: Any,
) -> AsyncIterator[Any]:
    cfg = config.replace(
        "redis",
        url="redis://127.0.0.1:1/0",  # the host is the sentinels' to say; the db and options are the URL's
        sentinels=tuple(f"127.0.0.1:{s.port}" for s in sentinels.sentinels),
        sentinel_service="sk-master",
        timeout=2.0,
    )
    yield await _gateway(cfg, pool, fake_upstream, aiohttp_client)


async def _until_served(client: Any, limit: float) -> float:
    """Seconds until a call is served again (every call answers within the timeout meanwhile)."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        status, seconds = await _call(client)
        assert seconds < 2.5, "a call took longer than redis.timeout"
        if status == 200:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not served again within {limit}s")


async def _until_ready(client: Any, limit: float) -> bool:
    """/readyz says ready within `limit` seconds (redis-py asks the sentinels its own way: right
    after a promotion they may not yet vouch for the new master)."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        resp = await client.get("/readyz")
        if resp.status == 200 and (await resp.json())["redis"] == "ok":
            return True
        await asyncio.sleep(0.1)
    return False


async def test_the_master_found_through_sentinels_and_found_again_after_it_dies(
    sentinels: Sentinels, sentinel_client: Any
) -> None:
    client = sentinel_client
    assert [(await _call(client))[0] for _ in range(3)] == [200] * 3
    resp = await client.get("/readyz")
    assert resp.status == 200
    sentinels.master.stop()
    killed = time.monotonic()
    deadline = killed + 30
    while sentinels.master_port() != sentinels.replica.port:
        assert time.monotonic() < deadline, "the sentinels did not promote the replica"
        await asyncio.sleep(0.05)
    back = await _until_served(client, 20)
    assert back <= client.app[appkeys.config].redis.timeout + 5  # seconds after the promotion
    assert await _until_ready(client, 5), "not ready again within 5 s of serving again"
    new_master = aioredis.Redis(port=sentinels.replica.port)
    try:
        assert (await new_master.info("replication"))["role"] == "master"
    finally:
        await new_master.aclose()


async def test_a_graceful_failover_demotes_the_master_under_the_gateway_and_it_follows(
    sentinels: Sentinels, sentinel_client: Any
) -> None:
    """The old master stays up as a replica: connections to it may stay open and answer READONLY."""
    client = sentinel_client
    assert [(await _call(client))[0] for _ in range(3)] == [200] * 3
    before = await _used_today(client)
    _cli(sentinels.sentinels[0].port, "sentinel", "failover", "sk-master")
    deadline = time.monotonic() + 30
    while sentinels.master_port() != sentinels.replica.port:
        assert time.monotonic() < deadline, "the failover did not happen"
        await asyncio.sleep(0.05)
    await _until_served(client, 20)
    statuses = [(await _call(client))[0] for _ in range(5)]
    assert statuses == [200] * 5
    assert await _until_ready(client, 5), "not ready again within 5 s of serving again"
    assert await _used_today(client) >= before + 6  # counted on the new master


async def test_redis_restarted_empty_does_not_reopen_a_spent_key(
    tmp_path: Path, config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream, aiohttp_client: Any
) -> None:
    """Today's counts come back from PostgreSQL before the next pick: a key at its daily limit of
    6 serves nothing more after its Redis restarts without its data (it served 6 more before)."""
    folder = tmp_path / "redis"
    folder.mkdir()
    server = RedisServer(folder)
    try:
        cfg = gateway_config(config.replace("redis", url=server.url()))
        donor, _ = await user_with_token(pool, "donor")
        _, token = await user_with_token(pool, "caller")
        await add_key(pool, cfg, donor, fake_upstream.base_url, daily_limit=6)
        app = create_app(cfg)
        client = await aiohttp_client(app)
        await app[KEY_INDEX].reload()
        client.headers_ = {"Authorization": f"Bearer {token}"}
        assert [(await _call(client))[0] for _ in range(7)] == [200] * 6 + [429]
        assert await app[USAGE].flush_once()

        port = server.port
        server.stop()
        server = RedisServer(folder, port=port)  # the same address, nothing in it
        deadline = time.monotonic() + 10
        statuses: list[int] = []
        while time.monotonic() < deadline:
            status, _ = await _call(client)
            if status != 503:  # the line reconnecting
                statuses.append(status)
            if len(statuses) == 6:
                break
            await asyncio.sleep(0.05)
        assert statuses == [429] * 6
        assert len(fake_upstream.calls("/v1/chat/completions")) == 6
        await app[USAGE].flush_once()
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM key_usage_logs WHERE committed") == 6
    finally:
        server.stop()
