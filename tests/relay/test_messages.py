"""The Anthropic Messages API end to end, with the real SDKs: the `anthropic` SDK against
`anthropic` keys (passed through) and `openai` keys (translated), and the `openai` SDK against
`anthropic` keys. Real PostgreSQL and Redis; the fake upstream speaks both formats."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import asyncpg
import pytest

from gateway import appkeys
from gateway.relay.keyindex import KEY_INDEX
from tests.support.fake_upstream import Failure, FakeUpstream
from tests.support.gateways import DONOR_KEY, Gateway

MODEL = "claude-fake-1"
TOOLS = [{"name": "weather", "description": "The weather in a city", "input_schema": {"type": "object"}}]


@pytest.fixture
def upstream(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.models = [MODEL, "gpt-4o-mini"]
    return fake_upstream


async def add(gw: Gateway, up: FakeUpstream, api_format: str, name: str = "k1") -> str:
    key = DONOR_KEY if name == "k1" else f"{DONOR_KEY}-{name}"  # the same key is never stored twice
    key_id = await gw.add_key(up, api_key=key, models=[MODEL, "gpt-4o-mini"], name=name)
    async with gw.pool.acquire() as conn:
        # The donor allows what the operator allows (paid features go only to keys that allow them).
        allowed = list(gw.app[appkeys.config].upstream.allowed_features)
        await conn.execute(
            "UPDATE shared_keys SET api_format = $2, allowed_features = $3 WHERE id = $1::uuid",
            key_id,
            api_format,
            allowed,
        )
    await gw.app[KEY_INDEX].reload()
    return key_id


def claude(gw: Gateway, **kw: Any) -> anthropic.AsyncAnthropic:
    kw.setdefault("auth_token", gw.token)
    sdk = anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), max_retries=0, **kw)
    gw.clients.append(sdk)  # type: ignore[arg-type]
    return sdk


async def rows(gw: Gateway) -> list[asyncpg.Record]:
    return list(await gw.logs())


# --- an anthropic key: the body passes as it came ------------------------------------------------


async def test_the_anthropic_sdk_on_an_anthropic_key(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "anthropic")
    sdk = claude(gw, default_headers={"anthropic-beta": "prompt-caching-2024-07-31", "anthropic-version": "2023-06-01"})
    raw = await sdk.messages.with_raw_response.create(
        model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}], metadata={"user_id": "u1"}
    )
    message = await raw.parse()
    assert message.content[0].text == upstream.reply and message.stop_reason == "end_turn"
    assert raw.headers["x-sharekey-provider"] == "donor" and len(raw.headers["request-id"]) == 32
    sent = upstream.calls("/v1/messages")[0]
    assert sent.headers["x-api-key"] == DONOR_KEY and "Authorization" not in sent.headers
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["anthropic-beta"] == "prompt-caching-2024-07-31"
    assert sent.body["metadata"] == {"user_id": "u1"}, "the body passes unchanged to an anthropic key"
    [row] = await rows(gw)
    assert (row["status"], row["api_endpoint"], row["prompt_tokens"], row["completion_tokens"]) == (
        "ok",
        "/v1/messages",
        14,
        message.usage.output_tokens,
    )
    assert (row["cache_read_tokens"], row["cache_creation_tokens"]) == (3, 2)


async def test_a_stream_on_an_anthropic_key_and_the_beta_query(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "anthropic")
    resp = await gw.client.post(
        "/v1/messages?beta=true",
        json={"model": MODEL, "max_tokens": 50, "stream": True, "messages": [{"role": "user", "content": "hi"}]},
        headers={"x-api-key": gw.token, "anthropic-version": "2023-06-01"},
    )
    body = (await resp.read()).decode()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
    kinds = [line[7:] for line in body.splitlines() if line.startswith("event: ")]
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert upstream.calls("/v1/messages")[0].query == "beta=true"
    [row] = await rows(gw)
    assert (row["status"], row["prompt_tokens"], row["cache_read_tokens"]) == ("ok", 14, 3)


async def test_an_error_event_before_content_fails_over(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "anthropic", name="a")
    await add(gw, upstream, "anthropic", name="b")
    upstream.fail_next(Failure(error_stream=True))  # whichever key goes first meets it
    sdk = claude(gw)
    async with sdk.messages.stream(model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "hi"}]) as s:
        text = await s.get_final_text()
    assert text == upstream.reply
    statuses = sorted(r["status"] for r in await rows(gw))
    assert statuses == ["ok", "upstream_error"]


@pytest.mark.parametrize(
    ("query", "sent"),
    [("beta=true&api_key=x&foo=bar", "beta=true"), ("foo=bar&beta=true", "beta=true"), ("foo=bar", ""),
     ("beta=false", ""), ("beta=true&beta=yes", "beta=true")],
)  # fmt: skip
async def test_only_beta_true_of_the_callers_query_reaches_an_anthropic_key(
    gw: Gateway, upstream: FakeUpstream, query: str, sent: str
) -> None:
    await add(gw, upstream, "anthropic")
    headers = {"x-api-key": gw.token}
    chat = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    assert (await gw.client.post(f"/v1/messages?{query}", json=chat, headers=headers)).status == 200
    count = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert (await gw.client.post(f"/v1/messages/count_tokens?{query}", json=count, headers=headers)).status == 200
    assert [r.query for r in upstream.requests] == [sent, sent]


# --- an openai key: translated there and back -----------------------------------------------------


async def test_the_anthropic_sdk_on_an_openai_key(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "openai")
    sdk = claude(gw)
    message = await sdk.messages.create(
        model=MODEL,
        max_tokens=50,
        system=[{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "hi"}],
        metadata={"user_id": "u1"},
        extra_body={"thinking": {"type": "adaptive"}, "output_config": {"effort": "low"}},
    )
    assert message.content[0].text == upstream.reply and message.usage.input_tokens == 9
    sent = upstream.calls("/v1/chat/completions")[0]
    assert sent.headers["Authorization"] == f"Bearer {DONOR_KEY}"
    assert sent.body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert not {"metadata", "thinking", "output_config", "system"} & set(sent.body)

    async with sdk.messages.stream(model=MODEL, max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        text = await s.get_final_text()
        final = await s.get_final_message()
    assert text == upstream.reply and final.stop_reason == "end_turn"
    assert upstream.calls("/v1/chat/completions")[1].body["stream_options"] == {"include_usage": True}
    logged = await rows(gw)
    assert [r["status"] for r in logged] == ["ok", "ok"] and logged[1]["completion_tokens"] == upstream.chunks


@pytest.mark.parametrize("stream", [False, True])
async def test_a_tool_round_trip_through_an_openai_key(gw: Gateway, upstream: FakeUpstream, stream: bool) -> None:
    await add(gw, upstream, "openai")
    sdk = claude(gw)
    history: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]

    async def ask() -> anthropic.types.Message:
        if not stream:
            return await sdk.messages.create(model=MODEL, max_tokens=100, tools=TOOLS, messages=history)
        async with sdk.messages.stream(model=MODEL, max_tokens=100, tools=TOOLS, messages=history) as s:
            return await s.get_final_message()

    first = await ask()
    [call] = [b for b in first.content if b.type == "tool_use"]
    assert first.stop_reason == "tool_use" and call.name == "weather" and call.input == {"city": "Paris"}
    history += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]},
    ]
    second = await ask()
    assert second.content[0].text == "tool said: sunny"
    sent = upstream.calls("/v1/chat/completions")[-1].body["messages"]
    assert sent[-1] == {"role": "tool", "tool_call_id": call.id, "content": "sunny"}


# --- the openai SDK on an anthropic key -----------------------------------------------------------


async def test_the_openai_sdk_on_an_anthropic_key(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "anthropic")
    sdk = gw.sdk()
    completion = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    )
    assert completion.choices[0].message.content == upstream.reply
    assert completion.usage is not None and completion.usage.prompt_tokens == 14
    sent = upstream.calls("/v1/messages")[0]
    assert sent.body["system"] == "Be brief." and sent.body["max_tokens"] == 4096
    assert sent.headers["anthropic-version"] == "2023-06-01" and sent.headers["x-api-key"] == DONOR_KEY

    stream = await sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True, stream_options={"include_usage": True}
    )
    pieces, usage = [], None
    async for chunk in stream:
        pieces += [c.delta.content or "" for c in chunk.choices]
        usage = chunk.usage or usage
    assert "".join(pieces) == upstream.reply and usage is not None and usage.prompt_tokens == 14
    assert [r["status"] for r in await rows(gw)] == ["ok", "ok"]


async def test_other_openai_endpoints_never_reach_an_anthropic_key(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "anthropic")
    resp = await gw.post("/v1/embeddings", {"model": MODEL, "input": "x"})
    assert resp.status == 404 and upstream.requests == []


# --- count_tokens ---------------------------------------------------------------------------------


async def test_count_tokens_asks_an_anthropic_key_else_estimates(gw: Gateway, upstream: FakeUpstream) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 400}]}
    await add(gw, upstream, "openai")
    estimated = await claude(gw).messages.count_tokens(**body)
    assert estimated.input_tokens == 100 + 4 and upstream.calls("/v1/messages/count_tokens") == []
    async with gw.pool.acquire() as conn:
        await conn.execute("UPDATE shared_keys SET api_format = 'anthropic'")
    await gw.app[KEY_INDEX].reload()
    asked = await claude(gw).messages.count_tokens(**body)
    assert asked.input_tokens == 42 and len(upstream.calls("/v1/messages/count_tokens")) == 1
    [row] = await rows(gw)
    assert (row["api_endpoint"], row["status"], row["committed"]) == ("/v1/messages/count_tokens", "ok", False)
    assert (await gw.key_row(str(row["shared_key_id"])))["usage_count_today"] == 0, "not against the daily limit"
    # (more in test_count_tokens.py)


# --- bad input and errors, in Anthropic's shape ---------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}, 400, "max_tokens"),
        ({"max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, 400, "model"),
        ({"model": MODEL, "max_tokens": 5}, 400, "messages"),
        ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [{"type": "blob"}]}]}, 400,
         "messages.0.content.0.type"),
        ({"model": MODEL, "max_tokens": 5, "messages": "hi"}, 400, "messages"),
        ({"model": MODEL, "max_tokens": 5, "stream": "yes", "messages": [{"role": "user", "content": "hi"}]}, 400,
         "stream"),
        ({"model": "nope", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}, 404, "nope"),
    ],
)  # fmt: skip
async def test_bad_requests_get_anthropic_errors_and_touch_no_key(
    gw: Gateway, upstream: FakeUpstream, body: dict[str, Any], status: int, needle: str
) -> None:
    await add(gw, upstream, "anthropic")
    resp = await gw.client.post("/v1/messages", data=json.dumps(body), headers={"x-api-key": gw.token})
    assert resp.status == status
    error = await resp.json()
    assert error["type"] == "error" and needle in error["error"]["message"]
    assert error["error"]["type"] == ("invalid_request_error" if status == 400 else "not_found_error")
    assert resp.headers["request-id"] and upstream.requests == []


async def test_a_bad_token_is_an_authentication_error(gw: Gateway) -> None:
    with pytest.raises(anthropic.AuthenticationError) as e:
        await claude(gw, api_key="shk_wrong", auth_token=None).messages.create(
            model=MODEL, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.status_code == 401 and e.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]


async def test_a_body_an_openai_key_cannot_carry_is_a_clear_400(gw: Gateway, upstream: FakeUpstream) -> None:
    await add(gw, upstream, "openai")
    image = {"type": "image", "source": {"type": "file", "file_id": "file_123"}}
    resp = await gw.client.post(
        "/v1/messages",
        json={"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [image]}]},
        headers={"x-api-key": gw.token},
    )
    error = await resp.json()
    assert (
        resp.status == 400 and error["error"]["type"] == "invalid_request_error" and "file" in error["error"]["message"]
    )
    assert upstream.requests == []
    [row] = await rows(gw)
    assert row["status"] == "upstream_error" and not row["committed"]


@pytest.mark.parametrize("api_format", ["anthropic", "openai"])
async def test_a_streamed_answer_stores_the_same_usage_as_a_non_streamed_one(
    gw: Gateway, fake_upstream: FakeUpstream, api_format: str
) -> None:
    """No cache tokens is NULL in both (the stream used to store 0 where the answer stored NULL)."""
    await add(gw, fake_upstream, api_format)
    sdk = claude(gw)
    await sdk.messages.create(model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}])
    async with sdk.messages.stream(
        model="gpt-4o-mini", max_tokens=20, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        await stream.get_final_message()
    whole, streamed = await gw.logs()
    columns = ("prompt_tokens", "cache_read_tokens", "cache_creation_tokens", "usage_estimated")
    assert [whole[c] for c in columns] == [streamed[c] for c in columns]
