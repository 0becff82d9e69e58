"""Paid features: what an upstream bills beyond tokens is refused unless the operator allows it
(400 feature_not_allowed naming the field, nothing sent upstream); allowed ones are counted where
they ran and priced per call into the row's cost, which budgets add up; anthropic-beta values
pass only when they match `[upstream] anthropic_betas`; a budget on a key with an unpriced model
is refused."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.usage import USAGE
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.rawserver import Server, read_request
from tests.support.seed import add_key, user_with_token

MSG = {"model": "gpt-4o-mini", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
RESP = {"model": "gpt-4o-mini", "input": "hi"}


class Gw:
    def __init__(self, client: Any, token: str, pool: asyncpg.Pool) -> None:
        self.client, self.token, self.pool = client, token, pool

    async def post(self, path: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        h = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        resp = await self.client.post(path, data=json.dumps(body), headers=h)
        text = await resp.text()
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text

    async def rows(self) -> list[asyncpg.Record]:
        await self.client.app[USAGE].flush_once()
        async with self.pool.acquire() as conn:
            return await conn.fetch("SELECT * FROM key_usage_logs ORDER BY created_at")


Make = Callable[..., Awaitable[Gw]]


@pytest.fixture
async def make(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> AsyncIterator[Make]:
    async def start(base_url: str, *, api_format: str = "openai", budget: float | None = None, **upstream: Any) -> Gw:
        cfg = gateway_config(config)
        cfg = cfg.replace("upstream", **upstream) if upstream else cfg
        cfg = dataclasses.replace(cfg, prices=PRICES)
        donor, _ = await user_with_token(pool, "donor")
        _, token = await user_with_token(pool, "caller")
        allowed = {"allowed_features": list(upstream["allowed_features"])} if upstream.get("allowed_features") else {}
        key = await add_key(pool, cfg, donor, base_url, api_format=api_format, models=["gpt-4o-mini"], rules=allowed)
        if budget is not None:
            async with pool.acquire() as conn:
                await conn.execute("UPDATE shared_keys SET daily_budget_usd = $1 WHERE id = $2", budget, key.id)
        app = create_app(cfg)
        client = await aiohttp_client(app)
        await app[KEY_INDEX].reload()
        return Gw(client, token, pool)

    yield start


# Tokens cost nothing here, so a row's cost is its calls': web_search at $0.02 a call (configured).
PRICES = {"gpt-4o-mini": {"input": 0.0, "output": 0.0, "cache_read": None, "cache_write": None,
                          "web_search_call": 0.02}}  # fmt: skip
FUNCTION = {"name": "f", "input_schema": {"type": "object"}}
MCP = {"type": "url", "url": "https://mcp.example", "name": "x"}


def msg(**extra: Any) -> dict[str, Any]:
    return {**MSG, **extra}


def resp(*tools: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**RESP, **({"tools": list(tools)} if tools else {}), **extra}


REFUSED = [
    (
        "/v1/messages",
        msg(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 100}]),
        "tools[0].type",
    ),
    (
        "/v1/messages",
        msg(tools=[FUNCTION, {"type": "code_execution_20250825", "name": "code_execution"}]),
        "tools[1].type",
    ),
    ("/v1/messages", msg(tools=[{"type": "web_fetch_20250910", "name": "web_fetch"}]), "tools[0].type"),
    ("/v1/messages", msg(mcp_servers=[MCP]), "mcp_servers"),
    ("/v1/messages", msg(container="container_123"), "container"),
    ("/v1/messages", msg(service_tier="priority"), "service_tier"),
    ("/v1/responses", resp({"type": "web_search"}), "tools[0].type"),
    ("/v1/responses", resp({"type": "file_search", "vector_store_ids": ["vs_1"]}), "tools[0].type"),
    ("/v1/responses", resp({"type": "function", "name": "f"}, {"type": "code_interpreter"}), "tools[1].type"),
    ("/v1/responses", resp({"type": "image_generation"}), "tools[0].type"),
    ("/v1/responses", resp({"type": "mcp", "server_label": "x", "server_url": "https://mcp.example"}), "tools[0].type"),
    ("/v1/responses", resp({"type": "computer_use_preview"}), "tools[0].type"),
    ("/v1/responses", resp({"type": "teleporter_2031"}), "tools[0].type"),
    ("/v1/responses", resp(background=True), "background"),
    ("/v1/responses", resp(service_tier="priority"), "service_tier"),
    ("/v1/chat/completions", {**CHAT, "web_search_options": {}}, "web_search_options"),
    ("/v1/chat/completions", {**CHAT, "service_tier": "flex"}, "service_tier"),
]


@pytest.mark.parametrize(
    ("path", "body", "field"), REFUSED, ids=[f"{p} {f} {i}" for i, (p, _, f) in enumerate(REFUSED)]
)
async def test_paid_features_are_refused_by_default_naming_the_field(
    make: Make, fake_upstream: FakeUpstream, path: str, body: dict[str, Any], field: str
) -> None:
    shape = "anthropic" if path == "/v1/messages" else "openai"
    gw = await make(fake_upstream.base_url, api_format=shape)
    status, answer = await gw.post(path, body)
    assert status == 400, answer
    if shape == "anthropic":
        assert answer["type"] == "error" and answer["error"]["type"] == "invalid_request_error"
        message = answer["error"]["message"]
    else:
        assert answer["error"]["code"] == "feature_not_allowed"
        message = answer["error"]["message"]
    assert f"'{field}'" in message
    assert fake_upstream.requests == []  # nothing reached the donor's key
    assert await gw.rows() == []


async def test_tools_the_caller_runs_itself_pass(make: Make, fake_upstream: FakeUpstream) -> None:
    gw = await make(fake_upstream.base_url, api_format="anthropic")
    tools = [
        {"name": "f", "description": "d", "input_schema": {"type": "object"}},
        {"type": "bash_20250124", "name": "bash"},
        {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
    ]
    status, answer = await gw.post("/v1/messages", {**MSG, "tools": tools, "service_tier": "auto"})
    assert status == 200, answer
    [sent] = fake_upstream.calls("/v1/messages")
    assert [t.get("type") for t in sent.body["tools"]] == [None, "bash_20250124", "text_editor_20250728"]


async def test_an_unknown_allowed_feature_is_a_configuration_error() -> None:
    with pytest.raises(config_mod.ConfigError, match="upstream.allowed_features"):
        config_mod.load(env={"SHAREKEY_UPSTREAM_ALLOWED_FEATURES": "web_search,free_lunch"})


async def test_anthropic_betas_pass_only_when_allowed(make: Make, fake_upstream: FakeUpstream) -> None:
    gw = await make(fake_upstream.base_url, api_format="anthropic")
    beta = "claude-code-20250219,code-execution-2025-08-25,interleaved-thinking-2025-05-14,context-1m-2025-08-07"
    status, _ = await gw.post("/v1/messages", MSG, {"anthropic-beta": beta})
    assert status == 200
    [sent] = fake_upstream.calls("/v1/messages")
    assert sent.headers["anthropic-beta"] == "claude-code-20250219,interleaved-thinking-2025-05-14"
    fake_upstream.requests.clear()
    status, _ = await gw.post("/v1/messages", MSG, {"anthropic-beta": "context-1m-2025-08-07"})
    assert status == 200
    [sent] = fake_upstream.calls("/v1/messages")
    assert "anthropic-beta" not in sent.headers


def _anthropic_answer(stream: bool) -> bytes:
    usage = {"input_tokens": 10, "output_tokens": 5, "server_tool_use": {"web_search_requests": 3}}
    if not stream:
        return json.dumps(
            {
                "id": "msg_1", "type": "message", "role": "assistant", "model": "gpt-4o-mini",
                "content": [{"type": "text", "text": "searched"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": usage,
            }
        ).encode()  # fmt: skip

    def ev(kind: str, data: dict[str, Any]) -> str:
        return f"event: {kind}\ndata: {json.dumps({'type': kind, **data})}\n\n"

    start = {"id": "msg_1", "type": "message", "role": "assistant", "model": "gpt-4o-mini", "content": [],
             "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 10, "output_tokens": 1}}  # fmt: skip
    return (
        ev("message_start", {"message": start})
        + ev("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        + ev("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": "searched"}})
        + ev("content_block_stop", {"index": 0})
        + ev("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None}, "usage": usage})
        + ev("message_stop", {})
    ).encode()


async def _upstream(serve: Any, answers: Callable[[bytes], tuple[str, bytes]]) -> Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            kind, body = answers(request)
            writer.write(
                f"HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
            )
            await writer.drain()

    return await serve(answer)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
async def test_an_allowed_server_tool_is_priced_per_call_and_counts_toward_the_budget(
    make: Make, serve: Any, pool: asyncpg.Pool, stream: bool
) -> None:
    def answers(request: bytes) -> tuple[str, bytes]:
        return ("text/event-stream" if stream else "application/json"), _anthropic_answer(stream)

    up = await _upstream(serve, answers)
    gw = await make(f"http://127.0.0.1:{up.port}/v1", api_format="anthropic", allowed_features=("web_search",),
                    budget=1.0)  # fmt: skip
    tool = {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
    status, answer = await gw.post("/v1/messages", {**MSG, "tools": [tool], "stream": stream})
    assert status == 200, answer
    [row] = await gw.rows()
    assert json.loads(row["server_tool_calls"]) == {"web_search": 3}
    assert float(row["cost_estimate"]) == pytest.approx(3 * 0.02)  # tokens are free here
    async with pool.acquire() as conn:
        spent = await conn.fetchval("SELECT spend_today_usd FROM shared_keys")
    assert float(spent) == pytest.approx(0.06)  # the budget sees the calls


async def test_responses_built_in_tool_calls_are_counted(make: Make, serve: Any) -> None:
    body = {
        "id": "resp_1", "object": "response", "model": "gpt-4o-mini", "status": "completed",
        "output": [
            {"type": "web_search_call", "id": "ws_1", "status": "completed"},
            {"type": "web_search_call", "id": "ws_2", "status": "completed"},
            {"type": "message", "id": "m_1", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]},
        ],
        "usage": {"input_tokens": 10, "output_tokens": 3, "total_tokens": 13},
    }  # fmt: skip
    up = await _upstream(serve, lambda _: ("application/json", json.dumps(body).encode()))
    gw = await make(f"http://127.0.0.1:{up.port}/v1", allowed_features=("web_search",))
    status, answer = await gw.post("/v1/responses", {**RESP, "tools": [{"type": "web_search"}]})
    assert status == 200, answer
    [row] = await gw.rows()
    assert json.loads(row["server_tool_calls"]) == {"web_search": 2}
    assert float(row["cost_estimate"]) == pytest.approx(0.04)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt-4o-mini", "input": "hi", "tool\\u0073": [{"type": "web_search"}]}',
        b'{"model": "gpt-4o-mini", "input": "hi", "service_tie\\u0072": "priority"}',
        b'{"model": "gpt-4o-mini", "input": "hi", "\\u0062ackground": true}',
    ],
    ids=["tools", "service_tier", "background"],
)
async def test_a_field_name_written_with_escapes_is_still_seen(
    make: Make, fake_upstream: FakeUpstream, raw: bytes
) -> None:
    """JSON decoders read `"tool\\u0073"` as `tools`, the upstream's as ours: the check must too."""
    gw = await make(fake_upstream.base_url)
    resp = await gw.client.post("/v1/responses", data=raw, headers={"Authorization": f"Bearer {gw.token}"})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "feature_not_allowed", answer
    assert fake_upstream.requests == []


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "gpt-4o-mini", "input": "hi", "tools": [{"type": "web_search"}], "tools": []}',
        b'{"model": "gpt-4o-mini", "input": "hi", "background": true, "background": false}',
        b'{"model": "gpt-4o-mini", "input": "hi", "service_tier": "priority", "service_tier": "auto"}',
    ],
    ids=["tools", "background", "service_tier"],
)
async def test_a_feature_field_given_twice_is_refused(make: Make, fake_upstream: FakeUpstream, raw: bytes) -> None:
    """We read the last of two equal names; an upstream that keeps the first would run the paid one."""
    gw = await make(fake_upstream.base_url)
    resp = await gw.client.post("/v1/responses", data=raw, headers={"Authorization": f"Bearer {gw.token}"})
    answer = await resp.json()
    assert resp.status == 400 and answer["error"]["code"] == "duplicate_field", answer
    assert "more than once" in answer["error"]["message"]
    assert fake_upstream.requests == []


# What Claude Code 2.1.332 sends as anthropic-beta for claude-opus-4-1 (the longest list it sends;
# for the other current models it is a subset), recorded by running `claude -p` against a probe.
CLAUDE_CODE_OPUS_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,context-management-2025-06-27,"
    "per-turn-control-2026-07-01,mid-conversation-tool-changes-2026-07-01,thinking-token-count-2026-05-13,"
    "advanced-tool-use-2025-11-20,effort-2025-11-24"
)


async def test_claude_codes_betas_for_every_model_pass_unchanged(make: Make, fake_upstream: FakeUpstream) -> None:
    gw = await make(fake_upstream.base_url, api_format="anthropic")
    status, _ = await gw.post("/v1/messages", MSG, {"anthropic-beta": CLAUDE_CODE_OPUS_BETAS})
    assert status == 200
    [sent] = fake_upstream.calls("/v1/messages")
    assert sent.headers["anthropic-beta"] == CLAUDE_CODE_OPUS_BETAS


async def test_a_streamed_responses_answer_counts_its_calls_too(make: Make, fake_upstream: FakeUpstream) -> None:
    fake_upstream.response_items = [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "web_search_call", "id": "ws_2", "status": "completed"},
    ]
    gw = await make(fake_upstream.base_url, allowed_features=("web_search",))
    resp = await gw.client.post(
        "/v1/responses",
        json={**RESP, "tools": [{"type": "web_search"}], "stream": True},
        headers={"Authorization": f"Bearer {gw.token}"},
    )
    text = await resp.text()
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    assert text.startswith("event: response.created") and "event: response.completed" in text
    [row] = await gw.rows()
    assert json.loads(row["server_tool_calls"]) == {"web_search": 2}
    assert float(row["cost_estimate"]) == pytest.approx(2 * 0.02)


async def test_the_dropped_betas_are_named_in_the_request_log_line(make: Make, fake_upstream: FakeUpstream) -> None:
    gw = await make(fake_upstream.base_url, api_format="anthropic")
    beta = "claude-code-20250219,context-1m-2025-08-07,oauth-2025-04-20"
    with capture_logs() as logs:
        status, _ = await gw.post("/v1/messages", MSG, {"anthropic-beta": beta})
    assert status == 200
    [line] = [e for e in logs if e["event"] == "request"]
    assert line["betas_dropped"] == "context-1m-2025-08-07,oauth-2025-04-20"
    assert fake_upstream.calls("/v1/messages")[0].headers["anthropic-beta"] == "claude-code-20250219"
