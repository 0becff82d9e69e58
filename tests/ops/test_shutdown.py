"""Real `sharekey serve` processes: SIGTERM drains (streams finish, usage is written, exit 0) and a
worker that dies is replaced. Also the process helpers the other operations tests use."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from tests.ops.test_embedded import free_port
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token


@dataclass
class Served:
    """One `sharekey serve` process (the parent, with its workers)."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        found = []
        for line in self.log_path.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if name is None or event.get("event") == name:
                found.append(event)
        return found

    def workers(self) -> list[int]:
        return children(self.proc.pid)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, …
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return sorted(found)


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Any]:
    """Start gateways; every one still running at the end is stopped by its pid."""
    started: list[Served] = []

    def start(env: dict[str, str], *, workers: int = 1, port: int | None = None) -> Served:
        port = port or free_port()
        log_path = tmp_path / f"serve-{port}-{len(started)}.log"
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", str(workers)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        started.append(Served(proc, port, log_path))
        return started[-1]

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()


async def wait_ready(served: Served, within: float = 30) -> None:
    deadline = time.monotonic() + within
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            assert served.proc.poll() is None, served.log_path.read_text()[-3000:]
            try:
                async with session.get(served.url + "/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"the gateway on {served.port} did not become ready:\n{served.log_path.read_text()[-3000:]}")


@pytest.fixture
def env(cli_env: dict[str, str]) -> dict[str, str]:
    return {
        **cli_env,
        "SHAREKEY_LIMITS_USER_DAILY_REQUESTS": "0",
        "SHAREKEY_LIMITS_USER_REQUESTS_PER_MINUTE": "0",
        "SHAREKEY_LIMITS_USER_CONCURRENT_STREAMS": "0",
    }


async def read_stream(resp: aiohttp.ClientResponse, first: asyncio.Event) -> bytes:
    body = b""
    async for chunk in resp.content.iter_any():
        body += chunk
        first.set()
    return body


async def test_sigterm_lets_a_long_stream_finish_then_writes_its_usage_and_exits_0(
    serve: Any, env: dict[str, str], pool: asyncpg.Pool, fake_upstream: FakeUpstream, config: Any
) -> None:
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    fake_upstream.chunks, fake_upstream.chunk_delay = 12, 0.15  # about two seconds
    gw = serve({**env, "SHAREKEY_SERVER_SHUTDOWN_GRACE_SECONDS": "15"}, workers=2)
    await wait_ready(gw)
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
            assert resp.status == 200
            request_id = resp.headers["X-Request-Id"]
            first = asyncio.Event()
            reading = asyncio.create_task(read_stream(resp, first))
            await first.wait()
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5)
            with pytest.raises(aiohttp.ClientConnectionError):  # no new connections while draining
                async with aiohttp.ClientSession() as other:
                    await other.get(gw.url + "/healthz")
            streamed = await reading
    assert streamed.endswith(b"data: [DONE]\n\n"), streamed[-200:]
    assert streamed.count(b'"content"') >= 12
    code = await asyncio.to_thread(gw.proc.wait, 20)
    assert code == 0, gw.log_path.read_text()[-3000:]
    assert time.monotonic() - signalled < 10
    assert gw.workers() == []
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, committed FROM key_usage_logs WHERE request_id = $1", request_id)
    assert [(r["status"], r["committed"]) for r in rows] == [("ok", True)], "flushed before the exit"


async def test_a_stream_longer_than_the_grace_is_cut_and_still_accounted(
    serve: Any, env: dict[str, str], pool: asyncpg.Pool, fake_upstream: FakeUpstream, config: Any
) -> None:
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    fake_upstream.chunks, fake_upstream.chunk_delay = 20, 0.25  # five seconds
    gw = serve({**env, "SHAREKEY_SERVER_SHUTDOWN_GRACE_SECONDS": "1"})
    await wait_ready(gw)
    body = {"model": "gpt-4o-mini", "messages": [], "stream": True}
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        async with session.post(gw.url + "/v1/chat/completions", json=body) as resp:
            request_id = resp.headers["X-Request-Id"]
            first = asyncio.Event()
            reading = asyncio.create_task(read_stream(resp, first))
            await first.wait()
            signalled = time.monotonic()
            gw.proc.send_signal(signal.SIGTERM)
            with pytest.raises(aiohttp.ClientPayloadError):
                await reading
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert time.monotonic() - signalled < 4, "the grace period bounds the drain"
    async with pool.acquire() as conn:
        row = await conn.fetchrow("SELECT status, committed FROM key_usage_logs WHERE request_id = $1", request_id)
    assert (row["status"], row["committed"]) == ("cancelled", True)


async def test_a_crashed_worker_is_replaced_and_sigterm_stops_them_all(
    serve: Any, env: dict[str, str], pool: asyncpg.Pool, fake_upstream: FakeUpstream, config: Any
) -> None:
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    gw = serve(env, workers=2)
    await wait_ready(gw)
    before = gw.workers()
    assert len(before) == 2
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (now := gw.workers()) == before or len(now) < 2:
        assert time.monotonic() < deadline, f"no replacement worker: {now}"
        await asyncio.sleep(0.1)
    assert before[1] in now and before[0] not in now
    await wait_ready(gw)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for _ in range(10):
            async with session.post(gw.url + "/v1/chat/completions", json={"model": "gpt-4o-mini"}) as resp:
                assert resp.status == 200
    assert [e["code"] for e in gw.events("worker_exited")] == [-signal.SIGKILL]
    assert await asyncio.to_thread(gw.stop) == 0
    assert gw.workers() == []
