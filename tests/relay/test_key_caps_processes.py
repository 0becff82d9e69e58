"""Donors' caps and audience across real gateway processes (issue #22, DESIGN.md "Donors' rules
for their keys"): each claim is read off what the fake upstream saw, with its arrival and end times.

* rpm_limit: no 60 s span holds more starts on a key than its cap; the callers beyond get 503
  `pool_busy` with Retry-After = the seconds until the earliest start leaves the window.
* max_concurrent: at no instant are more calls in flight on the key than its cap; every caller
  that retries after Retry-After is served in the end.
* A killed process's slots run out after `upstream.total_timeout`, and only then.
* min_trust_level and allowed_users for members who signed in through (a fake) Linux.do and made
  their token on /api/tokens, as a member does.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import redis.asyncio as aioredis

from gateway import config as config_mod
from gateway.net import redisnames
from gateway.relay.keyindex import KEY_INDEX
from tests.ops.test_cluster import env, wait_ready  # noqa: F401 (fixtures)
from tests.ops.test_embedded import free_port
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream, Recorded
from tests.support.seed import add_key, user_with_token

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures

BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
WINDOW = 60.0


@dataclass
class Answer:
    sent: float  # time.monotonic() when the request was sent
    got: float  # and when its answer came back
    status: int
    code: str | None  # error.code of a refusal
    message: str
    retry_after: str | None


@dataclass
class Process:
    port: int
    proc: subprocess.Popen[bytes]


@pytest.fixture
def spawn(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[[], Process]]:  # noqa: F811
    """`sharekey serve` processes on the test's stores (as tests/ops/test_cluster.py `start`,
    handing back the process too, so that a test can kill it)."""
    procs: list[subprocess.Popen[bytes]] = []

    def run() -> Process:
        port = free_port()
        with (tmp_path / f"gw-{port}.log").open("w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "serve", "--port", str(port), "--workers", "1"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return Process(port, proc)

    yield run
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def ready(session: aiohttp.ClientSession, *procs: Process) -> None:
    await asyncio.gather(*[wait_ready(session, p.port) for p in procs])


async def post(session: aiohttp.ClientSession, port: int, token: str, model: str = "gpt-4o-mini") -> Answer:
    sent = time.monotonic()
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    async with session.post(url, json={**BODY, "model": model}, headers={"Authorization": f"Bearer {token}"}) as resp:
        body = await resp.json()
        got = time.monotonic()
        error = body.get("error") or {} if isinstance(body, dict) else {}
        return Answer(
            sent, got, resp.status, error.get("code"), error.get("message", ""), resp.headers.get("Retry-After")
        )


def key_of(request: Recorded) -> str:
    return request.headers["Authorization"].removeprefix("Bearer ")


def most_in_a_window(starts: list[float], window: float = WINDOW) -> int:
    """The most starts any span of `window` seconds holds (a sliding window, not fixed minutes)."""
    starts = sorted(starts)
    most, first = 0, 0
    for last, t in enumerate(starts):
        while t - starts[first] >= window:
            first += 1
        most = max(most, last - first + 1)
    return most


def most_at_once(spans: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (one that ends as another starts: not both)."""
    events = sorted([(end, -1) for _, end in spans] + [(start, 1) for start, _ in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_the_helpers_count_what_they_say() -> None:
    assert most_in_a_window([0, 1, 2, 59.9, 60.0, 61]) == 4  # 0..59.9; 60.0 starts a new span past 0
    assert most_in_a_window([0, 30, 60, 90]) == 2
    assert most_at_once([(0, 1), (0.5, 1.5), (1, 2)]) == 2
    assert most_at_once([(0, 1), (0.2, 0.8), (0.5, 1.5)]) == 3


async def test_rpm_caps_hold_across_two_processes(
    spawn: Callable[[], Process], config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream
) -> None:
    """Two keys, rpm_limit 3 and 2, and 24 callers at once through two processes: 3 + 2 calls
    reach the upstream, on the right keys; every other caller gets 503 pool_busy, told to come
    back when the earliest start leaves its minute window."""
    donor, _ = await user_with_token(pool, "donor")
    caps = {"sk-rpm-three-0000000001": 3, "sk-rpm-two-000000000002": 2}
    for i, (api_key, rpm) in enumerate(caps.items()):
        await add_key(
            pool, config, donor, fake_upstream.base_url, name=f"rpm{i}", api_key=api_key,
            models=["gpt-4o-mini"], rules={"rpm_limit": rpm},
        )  # fmt: skip
    tokens = [(await user_with_token(pool, f"caller{i}"))[1] for i in range(4)]
    procs = [spawn(), spawn()]
    async with aiohttp.ClientSession() as session:
        await ready(session, *procs)

        async def client(i: int) -> list[Answer]:
            return [await post(session, procs[(i + j) % 2].port, tokens[i % 4]) for j in range(2)]

        answers = [a for mine in await asyncio.gather(*[client(i) for i in range(24)]) for a in mine]

    served = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status != 200]
    assert len(served) == sum(caps.values()) == 5 and len(refused) == 48 - 5
    starts: dict[str, list[float]] = {}
    for request in fake_upstream.calls("/v1/chat/completions"):
        starts.setdefault(key_of(request), []).append(request.started)
    assert {k: len(v) for k, v in starts.items()} == caps  # each key took exactly its cap, no more
    for api_key, rpm in caps.items():
        assert most_in_a_window(starts[api_key]) <= rpm
    earliest = min(t for ts in starts.values() for t in ts)
    for a in refused:
        assert (a.status, a.code) == (503, "pool_busy"), a
        assert a.retry_after is not None and 55 <= int(a.retry_after) <= 60, a
        # The earliest start (on the upstream, just after its pick) leaves the window 60 s on.
        assert WINDOW - (a.got - earliest) - 1.0 <= int(a.retry_after) <= WINDOW - (a.sent - earliest) + 1.0, a


async def test_max_concurrent_holds_across_two_processes(
    spawn: Callable[[], Process],
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,
    redis: aioredis.Redis,
) -> None:
    """max_concurrent 2, each call held 0.5 s upstream, 10 callers at once through two processes,
    each retrying after the Retry-After it is given: never more than 2 in flight on the upstream,
    all 10 served in the end, and every slot given back."""
    fake_upstream.delay = 0.5
    donor, _ = await user_with_token(pool, "donor")
    key = await add_key(
        pool, config, donor, fake_upstream.base_url, models=["gpt-4o-mini"], rules={"max_concurrent": 2}
    )
    _, token = await user_with_token(pool, "caller")
    procs = [spawn(), spawn()]
    refusals: list[Answer] = []
    async with aiohttp.ClientSession() as session:
        await ready(session, *procs)
        began = time.monotonic()

        async def client(i: int) -> Answer:
            while time.monotonic() - began < 20:
                answer = await post(session, procs[i % 2].port, token)
                if answer.status == 200:
                    return answer
                refusals.append(answer)
                await asyncio.sleep(float(answer.retry_after or 1))
            raise AssertionError(f"client {i} was never served")

        served = await asyncio.gather(*[client(i) for i in range(10)])
        took = time.monotonic() - began

    assert len(served) == 10
    calls = fake_upstream.calls("/v1/chat/completions")
    assert len(calls) == 10 and all(c.ended is not None for c in calls)
    spans = [(c.started, c.ended) for c in calls if c.ended is not None]
    assert most_at_once(spans) == 2  # the cap was used, and never passed
    assert took >= 10 * 0.5 / 2
    assert len(refusals) >= 8  # 10 at once against 2 slots
    for a in refusals:
        # A concurrency slot frees when a call ends, which no clock says: "soon", 1 s.
        assert (a.status, a.code, a.retry_after) == (503, "pool_busy", "1"), a
    fly = redisnames.key_in_flight(config.redis.key_prefix, key.id)
    assert await redis.zcard(fly) == 0  # every call's slot was freed by its finish


async def test_a_killed_process_holds_its_slots_until_total_timeout(
    spawn: Callable[[], Process],
    env: dict[str, str],  # noqa: F811
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,
) -> None:
    """Process A starts 2 calls on a max_concurrent 2 key (the upstream holds them) and is
    SIGKILLed: it never frees the slots. Process B answers 503 pool_busy until the leases run
    out, upstream.total_timeout (3 s) after the picks, then serves, both slots again."""
    env["SHAREKEY_UPSTREAM_TOTAL_TIMEOUT"] = "3"
    lease = 3.0
    donor, _ = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url, models=["gpt-4o-mini"], rules={"max_concurrent": 2})
    _, token = await user_with_token(pool, "caller")
    a, b = spawn(), spawn()
    async with aiohttp.ClientSession() as session:
        await ready(session, a, b)
        fake_upstream.delay = 5.0  # past the lease: only its expiry can free the slots
        held = [asyncio.ensure_future(post(session, a.port, token)) for _ in range(2)]
        deadline = time.monotonic() + 5
        while len(fake_upstream.requests) < 2:
            assert time.monotonic() < deadline, "the held calls did not reach the upstream"
            await asyncio.sleep(0.01)
        fake_upstream.delay = 0.0
        a.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(a.proc.wait, 10)
        outcomes = await asyncio.gather(*held, return_exceptions=True)
        assert all(isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes
        first_start = min(r.started for r in fake_upstream.requests)

        answers: list[Answer] = []
        while not answers or answers[-1].status != 200:
            assert time.monotonic() - first_start < lease + 5, "B never served"
            answers.append(await post(session, b.port, token))
            await asyncio.sleep(0.05)
        both = await asyncio.gather(post(session, b.port, token), post(session, b.port, token))

    refused, ok = answers[:-1], answers[-1]
    assert len(refused) >= 10  # B polled for the seconds the dead process's slots were held
    for r in refused:
        assert (r.status, r.code, r.retry_after) == (503, "pool_busy", "1"), r
    assert refused[0].sent - first_start < 1.0  # the refusals began right after the kill
    # Served once a lease taken at the first pick (just before the first upstream start) ran out.
    assert lease - 0.3 <= ok.got - first_start <= lease + 1.0, ok.got - first_start
    assert refused[-1].sent - first_start <= lease + 0.1
    assert [x.status for x in both] == [200, 200]  # the second slot came back too
    assert len(fake_upstream.requests) == 2 + 1 + 2


async def test_trust_level_and_allowed_users_for_linuxdo_members(
    site: Site, spawn: Callable[[], Process], fake_upstream: FakeUpstream
) -> None:
    """alice (trust level 3), bob (1) and carol (3) sign in through Linux.do and each makes a
    token on /api/tokens. gpt-4o-mini's key needs trust level 2; gpt-4o's is shared with alice
    only. On the signed-in site's process and on a second `sharekey serve`: each is served what
    the keys allow, refused the rest with 403 model_not_permitted saying why, and /v1/models
    lists only what they may use."""
    fake_upstream.models.append("gpt-4o")
    donor, _ = await user_with_token(site.pool, "donor", trust_level=4)
    await add_key(
        site.pool, site.config, donor, fake_upstream.base_url, name="trusted", api_key="sk-trusted-000000000001",
        models=["gpt-4o-mini"], rules={"min_trust_level": 2},
    )  # fmt: skip
    await add_key(
        site.pool, site.config, donor, fake_upstream.base_url, name="friends", api_key="sk-friends-000000000002",
        models=["gpt-4o"], rules={"allowed_users": ["alice"]},
    )  # fmt: skip
    await site.app[KEY_INDEX].reload()
    tokens: dict[str, str] = {}
    for name, level in (("alice", 3), ("bob", 1), ("carol", 3)):
        signed = await site.sign_in(name, trust_level=level)
        assert signed.status == 303, await signed.text()
        listed = await (await site.client.get("/api/tokens")).json()
        assert listed == {"tokens": []}, f"{name} is signed in as someone else"
        made = await site.client.post("/api/tokens", json={"label": "sdk"}, headers=await site.write_headers())
        assert made.status == 201, await made.text()
        tokens[name] = (await made.json())["token"]
    async with site.pool.acquire() as conn:
        levels = dict(await conn.fetch("SELECT username, trust_level FROM users WHERE linux_do_id IS NOT NULL"))
    assert levels == {"alice": 3, "bob": 1, "carol": 3}

    other = spawn()
    allowed = {"alice": ["gpt-4o", "gpt-4o-mini"], "bob": [], "carol": ["gpt-4o-mini"]}
    async with aiohttp.ClientSession() as session:
        await ready(session, other)
        for port in (site.client.port, other.port):
            for name, token in tokens.items():
                async with session.get(
                    f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {token}"}
                ) as resp:
                    assert resp.status == 200
                    assert sorted(m["id"] for m in (await resp.json())["data"]) == allowed[name], (port, name)
                for model in ("gpt-4o-mini", "gpt-4o"):
                    calls = len(fake_upstream.requests)
                    answer = await post(session, port, token, model)
                    if model in allowed[name]:
                        assert answer.status == 200, (port, name, model, answer)
                        assert len(fake_upstream.requests) == calls + 1
                        continue
                    assert (answer.status, answer.code) == (403, "model_not_permitted"), (port, name, model, answer)
                    assert len(fake_upstream.requests) == calls  # no key was asked
                    if model == "gpt-4o-mini":
                        assert "trust level 2 or more (yours: 1)" in answer.message, answer
                    else:
                        assert "shared with named members only" in answer.message, answer
    used: dict[str, Any] = {}
    for r in fake_upstream.calls("/v1/chat/completions"):
        used.setdefault(key_of(r), []).append(r.body["model"])
    # alice twice on each key, carol twice on the trusted one (two processes each).
    assert sorted(used["sk-trusted-000000000001"]) == ["gpt-4o-mini"] * 4
    assert sorted(used["sk-friends-000000000002"]) == ["gpt-4o"] * 2
