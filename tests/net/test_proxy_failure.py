"""The egress proxy failing is the gateway's failure, never a donor key's (issue #20): a dead
proxy port, a proxy that answers CONNECT with 502 (ours) or 403 (a real tinyproxy that only
allows port 1), and one that never answers. Each time: 503 `proxy_unavailable` in the route's
shape, nothing reached the upstream, and every key is as it was: not cooling in Redis, `active`
with no error in PostgreSQL, no health-check back-off; key tests judge nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import asyncpg
import openai
import pytest

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.net import redisnames
from gateway.ops.keychecks import HealthChecks
from gateway.relay.balancer import BALANCER
from gateway.relay.keystate import KEY_STATES
from tests.net.test_tunnel import Tiny, free_port, tinyproxy  # noqa: F401 - fixture
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import user_with_token

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


class ConnectAnswer:
    """A proxy that reads each CONNECT and answers `answer` (None: never answers), counting them."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer, self.connects = answer, 0
        self.server: asyncio.base_events.Server | None = None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"CONNECT 127.0.0.1:")
            self.connects += 1
            if self.answer is None:
                await reader.read()  # until the gateway gives up
            else:
                writer.write(self.answer)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"


@pytest.fixture
async def answering() -> AsyncIterator[Callable[[bytes | None], Awaitable[tuple[ConnectAnswer, str]]]]:
    """Start `ConnectAnswer` proxies: (the proxy, its URL); all closed at the end, whatever happened."""
    started: list[ConnectAnswer] = []

    async def start(answer: bytes | None) -> tuple[ConnectAnswer, str]:
        proxy = ConnectAnswer(answer)
        started.append(proxy)
        return proxy, await proxy.start()

    yield start
    for proxy in started:
        if proxy.server is not None:
            proxy.server.close()
            await proxy.server.wait_closed()


MakeGateway = Callable[[str], Awaitable[Gateway]]
Answering = Callable[[bytes | None], Awaitable[tuple[ConnectAnswer, str]]]


@pytest.fixture
async def proxied(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, fake_upstream: FakeUpstream
) -> AsyncIterator[MakeGateway]:
    """A gateway whose every upstream call goes through `proxy_url`, with three keys."""
    made: list[Gateway] = []

    async def make(proxy_url: str) -> Gateway:
        cfg = gateway_config(config).replace("upstream", proxy_url=proxy_url, connect_timeout=1.0, test_timeout=5.0)
        cfg = cfg.replace("limits", key_tests_per_minute=1000)
        app = create_app(cfg)
        client = await aiohttp_client(app)
        donor, _ = await user_with_token(pool, "donor")
        _, token = await user_with_token(pool, "caller")
        gw = Gateway(client, app, token, donor, pool, cfg)
        for i in range(3):
            await gw.add_key(fake_upstream, name=f"k{i}", api_key=f"sk-donor-key-{i:04d}")
        made.append(gw)
        return gw

    yield make
    for gw in made:
        for sdk in gw.clients:
            await sdk.close()


async def untouched(gw: Gateway) -> None:
    """Every key as it was: not cooling, `active`, no reason or error, no failure counted."""
    await gw.app[KEY_STATES].wait()
    assert await gw.app[BALANCER].cooling() == {}
    async with gw.pool.acquire() as conn:
        rows = await conn.fetch("SELECT status, status_reason, last_error, last_error_at FROM shared_keys")
    assert rows and [tuple(r) for r in rows] == [("active", None, None, None)] * len(rows)
    redis = gw.app[appkeys.redis]
    assert not await redis.hgetall(redisnames.health_backoff(gw.config.redis.key_prefix))


async def openai_503(gw: Gateway) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as e:
        await gw.sdk().chat.completions.create(**CHAT)
    assert e.value.status_code == 503, e.value
    body: Any = e.value.body
    assert body["code"] == "proxy_unavailable" and body["type"] == "service_unavailable", body
    assert "egress proxy" in body["message"]
    assert e.value.response.headers["Retry-After"] == "5"
    return e.value


async def test_a_dead_proxy_port_is_503_proxy_unavailable_and_no_key_is_cooled(
    proxied: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    gw = await proxied(f"http://127.0.0.1:{free_port()}")
    for _ in range(6):  # twice `balancer.failures_before_cooldown` on every key: still nobody's fault
        await openai_503(gw)
    with pytest.raises(anthropic.APIStatusError) as e:
        async with anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), api_key=gw.token, max_retries=0) as a:
            await a.messages.create(model="gpt-4o-mini", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 503
    assert e.value.body["type"] == "error" and "egress proxy" in e.value.body["error"]["message"]  # type: ignore[index]
    assert fake_upstream.requests == []
    logs = await gw.logs()
    # One attempt per call: a proxy that cannot be reached cannot reach another key either.
    assert len(logs) == 7 and {r["attempt"] for r in logs} == {1}
    assert all(r["error_message"].startswith("proxy_unreachable: could not connect to the proxy") for r in logs)
    await untouched(gw)


async def test_a_proxy_answering_502_tries_each_key_then_503_and_blames_none(
    proxied: MakeGateway, fake_upstream: FakeUpstream, answering: Answering
) -> None:
    proxy, url = await answering(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
    gw = await proxied(url)
    for _ in range(4):
        await openai_503(gw)
    # The proxy may refuse one destination only: the other keys were tried (max_attempts = 3).
    assert proxy.connects == 4 * 3 and fake_upstream.requests == []
    logs = await gw.logs()
    assert {r["error_message"] for r in logs} == {"proxy_refused: the proxy refused the tunnel: 502 Bad Gateway"}
    await untouched(gw)


async def test_tinyproxy_refusing_connect_with_403_is_503(
    proxied: MakeGateway,
    fake_upstream: FakeUpstream,
    tinyproxy: Tiny,  # noqa: F811
) -> None:
    gw = await proxied(f"http://127.0.0.1:{tinyproxy.restricted}")
    for _ in range(4):
        await openai_503(gw)
    assert fake_upstream.requests == []
    assert {r["error_message"] for r in await gw.logs()} == {
        "proxy_refused: the proxy refused the tunnel: 403 Forbidden"
    }
    await untouched(gw)


async def test_a_proxy_that_never_answers_times_out_as_the_proxys_failure(
    proxied: MakeGateway, fake_upstream: FakeUpstream, answering: Answering
) -> None:
    _, url = await answering(None)
    gw = await proxied(url)
    started = time.monotonic()
    await openai_503(gw)
    assert 0.9 < time.monotonic() - started < 6  # connect_timeout (1 s) on each of the three keys
    assert {r["error_message"] for r in await gw.logs()} == {"proxy_refused: the proxy did not open the tunnel in time"}
    assert fake_upstream.requests == []
    await untouched(gw)


async def test_a_working_proxy_still_serves(
    proxied: MakeGateway,
    fake_upstream: FakeUpstream,
    tinyproxy: Tiny,  # noqa: F811
) -> None:
    gw = await proxied(f"http://127.0.0.1:{tinyproxy.open}")
    reply = await gw.sdk().chat.completions.create(**CHAT)
    assert reply.choices[0].message.content == fake_upstream.reply and len(fake_upstream.requests) == 1


@pytest.mark.parametrize("kind", ["dead", "502"])
async def test_key_tests_and_health_checks_judge_nothing_when_the_proxy_fails(
    proxied: MakeGateway, fake_upstream: FakeUpstream, answering: Answering, kind: str
) -> None:
    url = (
        f"http://127.0.0.1:{free_port()}"
        if kind == "dead"
        else (await answering(b"HTTP/1.1 502 Bad Gateway\r\n\r\n"))[1]
    )
    gw = await proxied(url)
    headers = {"Authorization": f"Bearer {gw.token}"}
    key = {"base_url": fake_upstream.base_url, "api_key": "sk-new-donor-key-0001"}

    resp = await gw.client.post("/api/shared-keys/test", json=key, headers=headers)
    body = await resp.json()
    assert resp.status == 503 and body["error"]["code"] == "proxy_unavailable", body
    assert resp.headers["Retry-After"] == "5" and "sk-new-donor-key" not in await resp.text()
    resp = await gw.client.post(
        "/api/shared-keys", json={**key, "name": "new", "available_models": ["m"]}, headers=headers
    )
    assert resp.status == 503 and (await resp.json())["error"]["code"] == "proxy_unavailable"

    assert await HealthChecks(gw.app).run() == {"proxy_unavailable": 3}
    assert fake_upstream.requests == []
    async with gw.pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shared_keys") == 3  # the new key was not stored
        assert await conn.fetchval("SELECT count(*) FROM shared_keys WHERE last_checked_at IS NOT NULL") == 0
    await untouched(gw)


async def test_count_tokens_through_a_dead_proxy_is_estimated_and_blames_no_key(
    proxied: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    gw = await proxied(f"http://127.0.0.1:{free_port()}")
    for i in range(2):
        await gw.add_key(fake_upstream, name=f"a{i}", api_format="anthropic", models=["claude-fake-1"])
    async with anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), api_key=gw.token, max_retries=0) as a:
        for _ in range(4):
            counted = await a.messages.count_tokens(
                model="claude-fake-1", messages=[{"role": "user", "content": "x" * 400}]
            )
            assert counted.input_tokens == 104  # estimated locally: no key could be asked
    assert fake_upstream.requests == []
    logs = await gw.logs()
    assert len(logs) == 4 and all(r["error_message"].startswith("proxy_unreachable:") for r in logs)
    await untouched(gw)
