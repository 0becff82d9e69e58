"""The /v1 proxy end to end: the openai SDK -> gateway (real PostgreSQL, Redis) -> fake upstreams."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

import asyncpg
import openai
import pytest
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.balancer import BALANCER
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.picks import Candidate, UserLimits
from gateway.store.users import User
from tests.support.fake_upstream import Failure, FakeUpstream
from tests.support.gateways import DONOR_KEY, Gateway, gateway_config
from tests.support.seed import add_key, user_with_token

# --- the SDK sees what it would see from OpenAI --------------------------------------------------


async def test_chat_completion_through_the_sdk(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    key_id = await gw.add_key(fake_upstream, api_key=DONOR_KEY)
    raw = await gw.sdk().chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
    )
    completion = raw.parse()
    assert completion.choices[0].message.content == fake_upstream.reply
    assert completion.usage is not None and completion.usage.total_tokens == 21
    assert raw.headers["x-sharekey-provider"] == "donor"
    assert len(raw.headers["x-request-id"]) == 32
    sent = fake_upstream.calls("/v1/chat/completions")[0]
    assert sent.headers["Authorization"] == f"Bearer {DONOR_KEY}"
    assert gw.token not in json.dumps(sent.headers)
    assert sent.body == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

    [row] = await gw.logs()
    assert (row["status"], row["success"], row["committed"], row["attempt"]) == ("ok", True, True, 1)
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_used"]) == (9, 12, 21)
    assert row["request_id"] == raw.headers["x-request-id"]
    key = await gw.key_row(key_id)
    assert (key["usage_count_today"], key["total_usage_count"], key["total_tokens"]) == (1, 1, 21)
    assert key["last_used_at"] is not None


async def test_stream_strips_the_usage_chunk_it_asked_for(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream)
    stream = await gw.sdk().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    chunks = [c async for c in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == fake_upstream.reply
    assert all(c.usage is None for c in chunks), "the client did not ask for usage"
    assert fake_upstream.calls("/v1/chat/completions")[0].body["stream_options"] == {"include_usage": True}
    [row] = await gw.logs()
    assert row["status"] == "ok" and row["usage_estimated"] is False
    assert (row["prompt_tokens"], row["completion_tokens"]) == (9, fake_upstream.chunks)
    assert row["ttft_ms"] is not None


@pytest.mark.parametrize(
    "raw",
    [
        b' \n {"stream": true, "model": "gpt-4o-mini", "messages": [{"role": "user", "content": "{\\"hi\\"}"}]}',
        b'{"model":"gpt-4o-mini","stream":true,"stream_options":{"x":1},"messages":[]}',
        b'{"model":"gpt-4o-mini","stream":true,"stream_options":null,"messages":[]}',
    ],
)
async def test_usage_is_asked_for_without_changing_the_rest(
    gw: Gateway, fake_upstream: FakeUpstream, raw: bytes
) -> None:
    await gw.add_key(fake_upstream)
    resp = await gw.post("/v1/chat/completions", raw)
    assert resp.status == 200
    text = await resp.text()
    assert text.endswith("data: [DONE]\n\n") and '"usage"' not in text
    sent = fake_upstream.calls("/v1/chat/completions")[0].body
    original = json.loads(raw)
    assert sent["stream_options"] == {**(original.get("stream_options") or {}), "include_usage": True}
    assert {k: v for k, v in sent.items() if k != "stream_options"} == {
        k: v for k, v in original.items() if k != "stream_options"
    }


async def test_stream_keeps_usage_when_the_client_asks(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream)
    stream = await gw.sdk().chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    assert chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens == 9


async def test_stream_without_stream_options_for_keys_that_reject_it(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    fake_upstream.reject_stream_options = True
    await gw.add_key(fake_upstream, stream_usage=False)
    stream = await gw.sdk().chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices]) == fake_upstream.reply
    assert "stream_options" not in fake_upstream.calls("/v1/chat/completions")[0].body
    [row] = await gw.logs()
    # Without reported usage the gateway estimates: one token per content event.
    assert (
        row["usage_estimated"] is True and fake_upstream.chunks <= row["completion_tokens"] <= fake_upstream.chunks + 2
    )


async def test_models_embeddings_completions_responses(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream, models=["gpt-4o-mini", "text-embedding-3-small"])
    sdk = gw.sdk()
    models = await sdk.models.list()
    assert sorted(m.id for m in models.data) == ["gpt-4o-mini", "text-embedding-3-small"]
    emb = await sdk.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert [d.index for d in emb.data] == [0, 1] and emb.data[0].embedding == [0.1, 0.2, 0.3]
    comp = await sdk.completions.create(model="gpt-4o-mini", prompt="hi")
    assert comp.choices[0].text == fake_upstream.reply
    resp = await sdk.responses.create(model="gpt-4o-mini", input="hi")
    assert resp.output_text == fake_upstream.reply
    rows = await gw.logs()
    assert [r["api_endpoint"] for r in rows] == ["/v1/embeddings", "/v1/completions", "/v1/responses"]
    assert [r["tokens_used"] for r in rows] == [4, 8, 12]


# --- bad input: right status, no key chosen, nobody's limit touched ------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        ({"messages": []}, 400, "missing_model"),
        ({"model": "", "messages": []}, 400, "missing_model"),
        ({"model": "nobody-serves-this", "messages": []}, 404, "model_not_found"),
        ({"model": "gpt-4o-mini", "messages": [], "n": 2}, 400, "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [], "max_tokens": 5000}, 400, "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [], "max_tokens": "many"}, 400, "invalid_value"),
        ({"model": "gpt-4o-mini", "messages": [], "stream": "yes"}, 400, "invalid_value"),
        (io.BytesIO(b'{"model": "gpt-4o-mini", "pad": "' + b"x" * 33_600_000 + b'"}'), 413, "request_too_large"),
    ],
)
async def test_bad_requests(gw: Gateway, fake_upstream: FakeUpstream, body: Any, status: int, code: str) -> None:
    await gw.add_key(fake_upstream)
    resp = await gw.post("/v1/chat/completions", body)
    assert resp.status == status
    error = (await resp.json())["error"]
    assert error["code"] == code and error["message"] and error["type"]
    assert fake_upstream.requests == []
    assert await gw.app[BALANCER].usage_today() == {}


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer shk_garbled", "Basic abc", "Bearer shk_" + "A" * 38])
async def test_bad_tokens_get_the_same_401(gw: Gateway, fake_upstream: FakeUpstream, header: str | None) -> None:
    await gw.add_key(fake_upstream)
    headers = {"Authorization": header} if header else {}
    resp = await gw.client.post("/v1/chat/completions", json={"model": "gpt-4o-mini"}, headers=headers)
    assert resp.status == 401
    assert (await resp.json())["error"] == {
        "message": "Invalid or missing gateway token. Pass it as 'Authorization: Bearer <token>'.",
        "type": "invalid_request_error",
        "code": "invalid_api_key",
    }
    assert fake_upstream.requests == []


async def test_sdk_raises_the_right_errors(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream)
    with pytest.raises(openai.NotFoundError):
        await gw.sdk().chat.completions.create(model="unknown", messages=[])
    with pytest.raises(openai.AuthenticationError):
        await gw.sdk(api_key="nope").models.list()


# --- failover and key states ---------------------------------------------------------------------


async def reserve(gw: Gateway, key_id: str) -> None:
    pick = await gw.app[BALANCER].pick(
        [Candidate(key_id, 1000)],
        user_id="x",
        limits=UserLimits(0, 0, 0),
        request_id="r",
        stream=False,
        count_user=False,
    )
    assert pick.outcome == "ok" and pick.key_id == key_id


@pytest.mark.parametrize(
    ("failure", "state"),
    [
        (Failure(status=500), "failing"),
        (Failure(status=429, retry_after="120"), "cooling"),
        (Failure(status=401), "disabled"),
        (Failure(status=403), "disabled"),
        (Failure(hang=1.2), "failing"),
        (Failure(status=302, location="http://127.0.0.1:9/elsewhere"), "failing"),
        (Failure(error_stream=True), "failing"),
    ],
)
async def test_failover_to_another_key(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream, failure: Failure, state: str
) -> None:
    bad = await gw.add_key(fake_upstream, name="bad", api_key="sk-bad-key-0000000001")
    good = await gw.add_key(second_upstream, name="good", api_key="sk-good-key-000000002")
    fake_upstream.fail_next(failure, times=5)
    await reserve(gw, good)  # the failing key is now the least used: it is tried first
    stream = failure.error_stream
    resp = await gw.post(
        "/v1/chat/completions",
        {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": stream},
    )
    assert resp.status == 200
    text = await resp.text()
    assert "second upstream" in text or "second" in text
    assert resp.headers["X-Sharekey-Provider"] == "donor"
    assert len(fake_upstream.requests) == 1, "the failing key is tried once"
    assert len(second_upstream.requests) == 1

    await gw.flush()
    cooling = await gw.app[BALANCER].cooling()
    row = await gw.key_row(bad)
    if state == "disabled":
        assert row["status"] == "disabled" and "rejected the key" in row["status_reason"]
        assert gw.app[KEY_INDEX].get(bad) is None or True  # reload is asynchronous
        assert bad in cooling
    elif state == "cooling":
        assert row["status"] == "cooling" and 100 < cooling[bad] <= 120
    else:
        assert row["status"] == "active" and row["last_error"]
        assert bad not in cooling, "one failure does not cool a key"
    rows = await gw.logs()
    assert [(r["attempt"], r["committed"]) for r in rows] == [(1, False), (2, True)]
    assert (await gw.app[BALANCER].usage_today()).get(bad, 0) == 0, "the failed reservation is given back"


async def test_all_attempts_fail_is_502_without_retrying_a_key(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    await gw.add_key(fake_upstream, name="a")
    await gw.add_key(second_upstream, name="b")
    fake_upstream.fail_next(500, times=5)
    second_upstream.fail_next(503, times=5)
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    assert resp.status == 502
    body = await resp.json()
    assert body["error"]["type"] == "upstream_error"
    assert "fake failure" not in json.dumps(body), "upstream bodies are not relayed"
    assert len(fake_upstream.requests) == 1 and len(second_upstream.requests) == 1


async def test_caller_errors_are_relayed_and_do_not_hurt_the_key(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    key = await gw.add_key(fake_upstream)
    fake_upstream.fail_next(
        Failure(status=400, body={"error": {"message": f"bad messages for {DONOR_KEY}", "code": "bad"}})
    )
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    assert resp.status == 400
    body = await resp.json()
    assert body["error"]["code"] == "bad" and "bad messages" in body["error"]["message"]
    assert DONOR_KEY not in json.dumps(body)
    assert len(fake_upstream.requests) == 1
    assert await gw.app[BALANCER].cooling() == {}
    row = await gw.key_row(key)
    assert row["status"] == "active"
    [log_row] = await gw.logs()
    assert log_row["status"] == "client_error" and log_row["committed"] is False


async def test_a_dropped_stream_ends_with_an_error_event(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    await gw.add_key(fake_upstream, name="a")
    await gw.add_key(second_upstream, name="b")
    fake_upstream.fail_next(Failure(drop_after=3))
    second_upstream.fail_next(Failure(drop_after=3))
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [], "stream": True})
    assert resp.status == 200
    text = await resp.text()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert len(events) == 4, events  # three chunks, then our error event
    assert json.loads(events[-1].removeprefix("data: "))["error"]["code"] == "upstream_error"
    assert "[DONE]" not in text
    assert len(fake_upstream.requests) + len(second_upstream.requests) == 1, "no second stream spliced in"
    [row] = await gw.logs()
    assert row["status"] == "stream_error" and row["committed"] is True


# --- limits are exact ------------------------------------------------------------------------------


async def test_daily_limits_hold_exactly_under_concurrency(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    for i in range(3):
        await gw.add_key(fake_upstream, name=f"k{i}", api_key=f"sk-limit-key-{i:012d}", daily_limit=50)
    body = json.dumps({"model": "gpt-4o-mini", "messages": []})

    async def one() -> int:
        resp = await gw.post("/v1/chat/completions", body)
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*[one() for _ in range(300)])
    assert statuses.count(200) == 150 and statuses.count(429) == 150
    usage = await gw.app[BALANCER].usage_today()
    assert sorted(usage.values()) == [50, 50, 50]
    resp = await gw.post("/v1/chat/completions", body)
    assert resp.status == 429
    assert resp.headers["x-should-retry"] == "false" and int(resp.headers["Retry-After"]) > 0
    assert (await resp.json())["error"]["code"] == "daily_limit_reached"


async def test_user_limits(
    config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream, aiohttp_client
) -> None:  # type: ignore[no-untyped-def]
    config = gateway_config(config).replace("limits", user_daily_requests=1000, user_requests_per_minute=3)
    app = create_app(config)
    client = await aiohttp_client(app)
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    await app[KEY_INDEX].reload()
    headers = {"Authorization": f"Bearer {token}"}
    statuses = []
    for _ in range(4):
        resp = await client.post("/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": []}, headers=headers)
        statuses.append(resp.status)
        last = resp
    assert statuses == [200, 200, 200, 429]
    assert (await last.json())["error"]["code"] == "user_rate_limit"
    assert 0 < int(last.headers["Retry-After"]) <= 60
    assert len(fake_upstream.requests) == 3


# --- secrets ----------------------------------------------------------------------------------------


async def test_donor_key_and_url_never_leave(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    await gw.add_key(fake_upstream, name="a", api_key=DONOR_KEY)
    fake_upstream.fail_next(
        Failure(status=500, body={"error": {"message": f"boom {DONOR_KEY} at {fake_upstream.base_url}"}}), 9
    )
    second_upstream.fail_next(401, 9)
    await gw.add_key(second_upstream, name="b", api_key="sk-other-SECRET-999999")
    with capture_logs() as logs:
        resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
        body = await resp.text()
        await gw.flush()
    assert resp.status == 502
    everything = body + json.dumps(dict(resp.headers)) + json.dumps(logs, default=str)
    for secret in (DONOR_KEY, "sk-other-SECRET-999999", fake_upstream.base_url, second_upstream.base_url):
        assert secret not in everything
    async with gw.pool.acquire() as conn:
        rows = await conn.fetch("SELECT error_message, last_error FROM key_usage_logs, shared_keys")
    assert DONOR_KEY not in json.dumps([dict(r) for r in rows], default=str)


# --- streams the client abandons, the caller's own fallback, day roll-over ---------------------------


async def test_client_disconnect_cancels_the_upstream(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    fake_upstream.chunks, fake_upstream.chunk_delay = 20, 0.2
    key = await gw.add_key(fake_upstream)
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": [], "stream": True})
    assert resp.status == 200
    first = await resp.content.readany()
    assert first.startswith(b"data: ")
    resp.close()  # the client goes away mid-stream
    for _ in range(40):
        if fake_upstream.disconnects:
            break
        await asyncio.sleep(0.05)
    assert fake_upstream.disconnects == 1, "the upstream request is cancelled within two seconds"
    for _ in range(40):
        rows = await gw.logs()
        if rows:
            break
        await asyncio.sleep(0.05)
    [row] = rows
    assert (row["status"], row["committed"]) == ("cancelled", True)
    assert (await gw.key_row(key))["usage_count_today"] == 1, "a committed call counts"


async def test_private_fallback_only_for_its_owner(
    gw: Gateway, fake_upstream: FakeUpstream, second_upstream: FakeUpstream
) -> None:
    # The caller's own private key; the pool has nothing for this model.
    async with gw.pool.acquire() as conn:
        caller_id = await conn.fetchval("SELECT id::text FROM users WHERE username = 'caller'")
    caller = User(caller_id, "caller", None, None, 0, False, False)
    await add_key(
        gw.pool, gw.config, caller, second_upstream.base_url, name="mine", private=True, models=["gpt-4o-mini"]
    )
    await gw.app[KEY_INDEX].reload()
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []})
    assert resp.status == 200 and "second upstream" in await resp.text()
    models = await (await gw.client.get("/v1/models", headers={"Authorization": f"Bearer {gw.token}"})).json()
    assert models["data"] == [], "private keys are not in the pool"
    _, other = await user_with_token(gw.pool, "someone-else")
    resp = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": []}, token=other)
    assert resp.status == 404, "nobody else's request reaches a private key"
    assert len(second_upstream.requests) == 1


async def test_yesterdays_counts_do_not_limit_today(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    await gw.add_key(fake_upstream, daily_limit=2)
    body = {"model": "gpt-4o-mini", "messages": []}
    assert [(await gw.post("/v1/chat/completions", body)).status for _ in range(3)] == [200, 200, 429]
    gw.app[BALANCER]._offset_ms = 86_400_000  # the next day, by the balancer's clock
    assert [(await gw.post("/v1/chat/completions", body)).status for _ in range(3)] == [200, 200, 429]
    rows = await gw.logs()
    assert len({r["request_id"] for r in rows}) == 4


async def test_daily_limit_by_trust_level(
    config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream, aiohttp_client
) -> None:  # type: ignore[no-untyped-def]
    config = gateway_config(config).replace("limits", user_daily_requests_by_trust_level=(1, 2))
    app = create_app(config)
    client = await aiohttp_client(app)
    donor, _ = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    await app[KEY_INDEX].reload()
    body = {"model": "gpt-4o-mini", "messages": []}
    for level, allowed in ((0, 1), (1, 2), (3, 2)):  # beyond the list: its last entry
        _, token = await user_with_token(pool, f"member{level}", trust_level=level)
        headers = {"Authorization": f"Bearer {token}"}
        statuses = [(await client.post("/v1/chat/completions", json=body, headers=headers)).status for _ in range(3)]
        assert statuses == [200] * allowed + [429] * (3 - allowed), level


async def test_concurrent_stream_limit_and_its_release(
    config: config_mod.Config, pool: asyncpg.Pool, fake_upstream: FakeUpstream, aiohttp_client
) -> None:  # type: ignore[no-untyped-def]
    config = gateway_config(config, user_concurrent_streams=1)
    app = create_app(config)
    client = await aiohttp_client(app)
    donor, token = await user_with_token(pool, "donor")
    await add_key(pool, config, donor, fake_upstream.base_url)
    await app[KEY_INDEX].reload()
    fake_upstream.chunks, fake_upstream.chunk_delay = 5, 0.1
    headers = {"Authorization": f"Bearer {token}"}
    body = {"model": "gpt-4o-mini", "messages": [], "stream": True}
    first = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert first.status == 200
    second = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert second.status == 429 and (await second.json())["error"]["code"] == "user_stream_limit"
    assert (await client.post("/v1/chat/completions", json={**body, "stream": False}, headers=headers)).status == 200
    assert "[DONE]" in await first.text()
    for _ in range(40):  # the slot is freed right after the stream ends
        third = await client.post("/v1/chat/completions", json=body, headers=headers)
        if third.status == 200:
            break
        await asyncio.sleep(0.05)
    assert third.status == 200
    await third.read()
