"""Several gateway processes on one PostgreSQL and one Redis behave as one gateway."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from gateway import config as config_mod
from tests.ops.test_embedded import free_port
from tests.support.clirun import sharekey
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return {
        **cli_env,
        "SHAREKEY_LOGGING_LEVEL": "warning",
        "SHAREKEY_LIMITS_USER_DAILY_REQUESTS": "0",
        "SHAREKEY_LIMITS_USER_REQUESTS_PER_MINUTE": "0",
    }


@pytest.fixture
def start(env: dict[str, str], tmp_path: Path) -> Iterator[object]:
    procs: list[subprocess.Popen[bytes]] = []

    def run() -> int:
        port = free_port()
        with (tmp_path / f"gw-{port}.log").open("w") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
        return port

    yield run
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def wait_ready(session: aiohttp.ClientSession, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            async with session.get(f"http://127.0.0.1:{port}/readyz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"gateway on port {port} did not become ready")


async def test_limits_hold_across_two_processes(
    start,
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,  # type: ignore[no-untyped-def]
) -> None:
    donor, token = await user_with_token(pool, "donor")
    for i in range(3):
        await add_key(
            pool, config, donor, fake_upstream.base_url, name=f"k{i}", api_key=f"sk-proc-{i:016d}", daily_limit=50
        )
    ports = [start(), start()]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession() as session:
        for port in ports:
            await wait_ready(session, port)

        async def one(i: int) -> int:
            url = f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions"
            async with session.post(url, json={"model": "gpt-4o-mini", "messages": []}, headers=headers) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*[one(i) for i in range(300)])
    assert statuses.count(200) == 150 and statuses.count(429) == 150
    assert len(fake_upstream.requests) == 150


async def test_a_new_key_reaches_running_processes_within_a_second(
    start,
    env: dict[str, str],
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,  # type: ignore[no-untyped-def]
) -> None:
    _, token = await user_with_token(pool, "donor")
    ports = [start(), start()]
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        for port in ports:
            await wait_ready(session, port)
        r = await asyncio.to_thread(
            sharekey,
            "keys", "add", "--user", "donor", "--name", "new", "--base-url", fake_upstream.base_url,
            "--api-key", "sk-new-key-0000000000", "--models", "fresh-model", "--no-test", env=env,
        )  # fmt: skip
        assert r.code == 0, r.err
        added = time.monotonic()
        for port in ports:
            while True:
                async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
                    ids = [m["id"] for m in (await resp.json())["data"]]
                if ids == ["fresh-model"]:
                    break
                assert time.monotonic() - added < 1.0, f"port {port} still serves {ids}"
                await asyncio.sleep(0.02)
