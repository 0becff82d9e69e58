"""The live key test against the fake upstream and a few odd local upstreams.

Every upstream here is on loopback. The key under test must never appear in a result or a log.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog
from aiohttp import web

from gateway.net import h1, keytest, upstream
from gateway.net.keytest import KeyTestResult
from tests.net.test_upstream import Listener
from tests.support.fake_upstream import Failure, FakeUpstream

KEY = "sk-keytest-SECRET-5f3a9c1e7b2d4f60"
TIMEOUT = 5.0


@pytest.fixture
async def pools() -> AsyncIterator[Callable[[bool], h1.Pool]]:
    made: list[h1.Pool] = []

    def make(allow_private: bool) -> h1.Pool:
        pool = h1.Pool(allow_private=allow_private, connect_timeout=2)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


@pytest.fixture
async def pool(pools: Callable[[bool], h1.Pool]) -> h1.Pool:
    return pools(True)


async def odd_upstream(aiohttp_server: Any, models: web.Response | None, chat: web.Response) -> str:
    """A tiny upstream answering fixed responses; returns its base URL."""

    async def models_handler(request: web.Request) -> web.StreamResponse:
        if models is None:
            raise web.HTTPNotFound()
        return models

    async def chat_handler(request: web.Request) -> web.StreamResponse:
        return chat

    app = web.Application()
    app.router.add_get("/v1/models", models_handler)
    app.router.add_post("/v1/chat/completions", chat_handler)
    server = await aiohttp_server(app)
    return str(server.make_url("/v1"))


def chat_ok(model: str = "m1") -> web.Response:
    return web.json_response(
        {
            "id": "x",
            "object": "chat.completion",
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "p"}, "finish_reason": "length"}],
        }
    )


def assert_clean(result: KeyTestResult) -> None:
    assert KEY not in repr(result)
    assert "127.0.0.1" not in (result.error or "")


async def test_passes_against_the_fake_upstream(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.valid_keys = {KEY}
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    assert result == KeyTestResult(True, result.latency_ms, fake_upstream.models, None, None)
    assert 0 <= result.latency_ms < TIMEOUT * 1000
    (chat,) = fake_upstream.calls("/v1/chat/completions")
    assert chat.body == {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    assert chat.headers["Authorization"] == f"Bearer {KEY}"


async def test_without_declared_models_the_first_listed_is_tried(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.models = ["model-b", "model-a"]
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, None, timeout=TIMEOUT)
    assert (result.ok, result.models) == (True, ["model-b", "model-a"])
    assert fake_upstream.calls("/v1/chat/completions")[0].body["model"] == "model-b"


@pytest.mark.parametrize("status", [401, 403])
async def test_rejected_key(fake_upstream: FakeUpstream, pool: h1.Pool, status: int) -> None:
    fake_upstream.fail_next(status)
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    assert (result.ok, result.reason, result.error) == (False, "invalid_key", "the upstream rejected the key")
    assert fake_upstream.calls("/v1/chat/completions") == []
    assert_clean(result)


async def test_unknown_key(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.valid_keys = {"sk-some-other-key-000000"}
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "invalid_key")


async def test_declared_model_not_offered(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    declared = ["gpt-4o-mini", "gpt-9-imaginary", "o7-mini"]
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, declared, timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "model_not_offered")
    assert result.error == "the upstream does not offer: gpt-9-imaginary, o7-mini"
    assert result.models == fake_upstream.models
    assert fake_upstream.calls("/v1/chat/completions") == []


async def test_rate_limited_is_a_failure(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.fail_next(Failure(status=429, retry_after="20"))
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "rate_limited")
    assert result.error is not None and "rate-limiting" in result.error


async def test_completion_error_body_is_not_relayed(aiohttp_server: Any, pool: h1.Pool) -> None:
    body = {"error": {"message": f"backend db-7.internal:5432 is down; key {KEY}"}}
    base = await odd_upstream(
        aiohttp_server,
        web.json_response({"object": "list", "data": [{"id": "m1", "object": "model"}]}),
        web.json_response(body, status=503),
    )
    result = await keytest.test_key(pool, base, KEY, ["m1"], timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "upstream_error")
    assert result.error == "the upstream answered with an error (HTTP 503)"
    assert result.models == ["m1"]
    assert_clean(result)


async def test_models_404_but_completion_works(aiohttp_server: Any, pool: h1.Pool) -> None:
    base = await odd_upstream(aiohttp_server, None, chat_ok("m1"))
    result = await keytest.test_key(pool, base, KEY, ["m1"], timeout=TIMEOUT)
    assert result == KeyTestResult(True, result.latency_ms, [], None, None)


async def test_models_404_and_nothing_declared(aiohttp_server: Any, pool: h1.Pool) -> None:
    base = await odd_upstream(aiohttp_server, None, chat_ok("m1"))
    result = await keytest.test_key(pool, base, KEY, [], timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "model_not_offered")


@pytest.mark.parametrize(
    ("models", "chat"),
    [
        (lambda: web.Response(text="<html>It works!</html>", content_type="text/html"), chat_ok),
        (lambda: web.json_response({"models": ["m1"]}), chat_ok),
        (lambda: web.json_response({"data": [{"name": "m1"}]}), chat_ok),
        (lambda: web.json_response([1, 2, 3]), chat_ok),
        (lambda: None, lambda: web.Response(text="not json", content_type="text/plain")),
        (lambda: None, lambda: web.json_response({"result": "ok"})),
        (lambda: None, lambda: web.Response(status=404, text="<h1>Not Found</h1>", content_type="text/html")),
    ],
    ids=["html-models", "models-key", "no-ids", "list", "text-chat", "chat-shape", "no-chat-endpoint"],
)
async def test_not_openai_compatible(aiohttp_server: Any, pool: h1.Pool, models, chat) -> None:  # type: ignore[no-untyped-def]
    base = await odd_upstream(aiohttp_server, models(), chat())
    result = await keytest.test_key(pool, base, KEY, ["m1"], timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "not_openai_compatible")
    assert result.error == keytest.NOT_COMPATIBLE
    assert "html" not in result.error.lower() and "works" not in result.error


async def test_chat_404_with_openai_error_means_model_not_offered(aiohttp_server: Any, pool: h1.Pool) -> None:
    error = {"error": {"message": "The model `m1` does not exist", "type": "invalid_request_error"}}
    base = await odd_upstream(aiohttp_server, None, web.json_response(error, status=404))
    result = await keytest.test_key(pool, base, KEY, ["m1"], timeout=TIMEOUT)
    assert (result.ok, result.reason, result.error) == (False, "model_not_offered", "the upstream does not offer: m1")


async def test_redirect_fails_and_is_not_followed(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    target = Listener()
    await target.start(("127.0.0.1",))
    try:
        fake_upstream.fail_next(Failure(status=302, location=f"http://127.0.0.1:{target.port}/v1/models"))
        result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    finally:
        await target.stop()
    assert (result.ok, result.reason) == (False, "upstream_error")
    assert result.error == upstream.REDIRECTED
    assert target.accepted == 0


async def test_unreachable_refused_and_timeout_are_indistinguishable(
    fake_upstream: FakeUpstream, pools: Callable[[bool], h1.Pool]
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    listener = Listener()
    await listener.start(("127.0.0.1",))
    fake_upstream.fail_next(Failure(hang=1.5))
    try:
        closed = await keytest.test_key(pools(True), f"http://127.0.0.1:{closed_port}/v1", KEY, ["m"], timeout=2)
        refused = await keytest.test_key(pools(False), f"http://127.0.0.1:{listener.port}/v1", KEY, ["m"], timeout=2)
        refused_name = await keytest.test_key(
            pools(False), f"http://localhost:{listener.port}/v1", KEY, ["m"], timeout=2
        )
        timed_out = await keytest.test_key(pools(True), fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=0.4)
    finally:
        await listener.stop()
    results = [closed, refused, refused_name, timed_out]
    assert {(r.ok, r.reason, r.error, tuple(r.models)) for r in results} == {
        (False, "unreachable", "could not reach the upstream", ())
    }
    assert listener.accepted == 0
    assert 350 <= timed_out.latency_ms < 1500  # the whole test stopped at its budget


async def test_timeout_is_the_total_budget(aiohttp_server: Any, pool: h1.Pool) -> None:
    """/models and the completion each take 0.3 s: a 0.5 s budget is for both together."""

    async def slow_models(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return web.json_response({"data": [{"id": "m1"}]})

    async def slow_chat(request: web.Request) -> web.Response:
        await asyncio.sleep(0.3)
        return chat_ok()

    app = web.Application()
    app.router.add_get("/v1/models", slow_models)
    app.router.add_post("/v1/chat/completions", slow_chat)
    server = await aiohttp_server(app)
    result = await keytest.test_key(pool, str(server.make_url("/v1")), KEY, ["m1"], timeout=0.5)
    assert (result.ok, result.reason, result.models) == (False, "unreachable", ["m1"])
    assert result.latency_ms < 600


async def test_unsendable_key_fails_without_io(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    result = await keytest.test_key(pool, fake_upstream.base_url, "sk-abc\r\nX-Evil: 1", None, timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "invalid_key")
    assert "X-Evil" not in (result.error or "")
    assert fake_upstream.requests == []


async def test_the_key_never_reaches_results_or_logs(
    fake_upstream: FakeUpstream, aiohttp_server: Any, pools: Callable[[bool], h1.Pool]
) -> None:
    echo_body = {"error": {"message": f"Incorrect API key provided: {KEY}", "code": "invalid_api_key"}}
    echoing = await odd_upstream(aiohttp_server, web.json_response(echo_body, status=401), chat_ok())
    with structlog.testing.capture_logs() as logs:
        results = [
            await keytest.test_key(pools(True), fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT),
            await keytest.test_key(pools(True), echoing, KEY, ["m1"], timeout=TIMEOUT),
            await keytest.test_key(pools(False), fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT),
            await keytest.test_key(pools(True), fake_upstream.base_url, KEY, ["nope"], timeout=TIMEOUT),
        ]
    assert [r.ok for r in results] == [True, False, False, False]
    assert [r.reason for r in results] == [None, "invalid_key", "unreachable", "model_not_offered"]
    tested = [e for e in logs if e["event"] == "key_tested"]
    assert len(tested) == 4  # the capture did see the test's own log lines
    assert tested[2]["cause"] == "refused_address"  # the real cause is logged, not shown
    for r in results:
        assert_clean(r)
    assert KEY not in repr(logs)
    assert KEY[-12:] not in repr(logs)
    assert fake_upstream.base_url not in repr(logs)


def test_test_key_is_not_collected_as_a_test() -> None:
    assert keytest.test_key.__test__ is False  # type: ignore[attr-defined]


async def test_reasoning_models_get_max_completion_tokens(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.reject_max_tokens = True
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    assert result.ok, result
    bodies = [r.body for r in fake_upstream.calls("/v1/chat/completions")]
    assert [("max_tokens" in b, "max_completion_tokens" in b) for b in bodies] == [(True, False), (False, True)]


async def test_other_bad_requests_are_not_retried(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.fail_next(Failure(status=400, path="/v1/chat/completions"))
    result = await keytest.test_key(pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT)
    assert not result.ok and result.reason == "upstream_error"
    assert len(fake_upstream.calls("/v1/chat/completions")) == 1


DEEP = b"[" * 100_000 + b"]" * 100_000  # valid JSON, nested far past any parser's recursion limit


@pytest.mark.parametrize("where", ["models", "chat"])
async def test_a_deeply_nested_body_fails_cleanly(aiohttp_server: Any, pool: h1.Pool, where: str) -> None:
    with pytest.raises(RecursionError):  # what the standard library's parser would have done
        json.loads(DEEP)
    deep = web.Response(body=DEEP, content_type="application/json")
    models = deep if where == "models" else web.json_response({"data": [{"id": "m1"}]})
    base = await odd_upstream(aiohttp_server, models, deep if where == "chat" else chat_ok())
    with structlog.testing.capture_logs() as logs:
        result = await keytest.test_key(pool, base, KEY, ["m1"], timeout=TIMEOUT)
    assert (result.ok, result.reason, result.error) == (False, "not_openai_compatible", keytest.NOT_COMPATIBLE)
    assert [e["cause"] for e in logs if e["event"] == "key_tested"] == ["not_json"]


async def test_a_body_over_the_cap_fails_cleanly(
    aiohttp_server: Any, pool: h1.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keytest, "MAX_BODY", 1024)
    many = web.json_response({"data": [{"id": f"model-{i}"} for i in range(200)]})
    base = await odd_upstream(aiohttp_server, many, chat_ok())
    with structlog.testing.capture_logs() as logs:
        result = await keytest.test_key(pool, base, KEY, ["model-1"], timeout=TIMEOUT)
    assert (result.ok, result.reason, result.error) == (False, "not_openai_compatible", keytest.NOT_COMPATIBLE)
    assert [e["cause"] for e in logs if e["event"] == "key_tested"] == ["body_too_large"]


# --- an `anthropic` key: GET /models and a 1-token message, x-api-key and anthropic-version -------


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


async def test_an_anthropic_key_passes_against_the_fake_upstream(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.models = ["claude-sonnet-4-5", "claude-haiku-4-5"]
    fake_upstream.valid_keys = {KEY}
    result = await keytest.test_key(
        pool, fake_upstream.base_url, KEY, ["claude-haiku-4-5"], timeout=TIMEOUT, api_format="anthropic"
    )
    assert result == KeyTestResult(True, result.latency_ms, fake_upstream.models, None, None)
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"]
    assert fake_upstream.calls("/v1/chat/completions") == []
    (message,) = fake_upstream.calls("/v1/messages")
    assert message.body == {
        "model": "claude-haiku-4-5",
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "ping"}],
    }
    for sent in fake_upstream.requests:
        headers = lower(sent.headers)
        assert (headers["x-api-key"], headers["anthropic-version"]) == (KEY, "2023-06-01")
        assert "authorization" not in headers, "an anthropic key is never sent as a bearer token"


async def test_an_anthropic_key_the_upstream_refuses(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.valid_keys = {"sk-ant-some-other-key-000"}
    result = await keytest.test_key(
        pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT, api_format="anthropic"
    )
    assert (result.ok, result.reason, result.error) == (False, "invalid_key", "the upstream rejected the key")
    assert_clean(result)
    fake_upstream.valid_keys = None
    fake_upstream.fail_next(Failure(status=429, path="/v1/messages"))
    result = await keytest.test_key(
        pool, fake_upstream.base_url, KEY, ["gpt-4o-mini"], timeout=TIMEOUT, api_format="anthropic"
    )
    assert (result.ok, result.reason) == (False, "rate_limited")


async def test_an_anthropic_key_without_the_model(fake_upstream: FakeUpstream, pool: h1.Pool) -> None:
    fake_upstream.models = ["claude-sonnet-4-5"]
    listed = await keytest.test_key(
        pool, fake_upstream.base_url, KEY, ["claude-opus-9"], timeout=TIMEOUT, api_format="anthropic"
    )
    assert (listed.ok, listed.reason, listed.error) == (
        False,
        "model_not_offered",
        "the upstream does not offer: claude-opus-9",
    )
    assert fake_upstream.calls("/v1/messages") == [], "the list already says so"

    # No model list: the message's 404 not_found_error says it.
    fake_upstream.fail_next(Failure(status=404, path="/v1/models"))
    asked = await keytest.test_key(
        pool, fake_upstream.base_url, KEY, ["claude-opus-9"], timeout=TIMEOUT, api_format="anthropic"
    )
    assert (asked.ok, asked.reason, asked.error) == (
        False,
        "model_not_offered",
        "the upstream does not offer: claude-opus-9",
    )
    assert len(fake_upstream.calls("/v1/messages")) == 1


async def test_an_anthropic_model_list_with_more_pages(aiohttp_server: Any, pool: h1.Pool) -> None:
    """Anthropic pages its list: a declared model missing from a page with `has_more` is not
    refused on the list's word; the message decides. An answer that is no message fails."""
    seen: list[str] = []
    answer: dict[str, Any] = {"type": "message", "role": "assistant", "content": [], "model": "claude-z"}

    async def models(request: web.Request) -> web.Response:
        seen.append(request.path_qs)
        return web.json_response({"data": [{"type": "model", "id": "claude-a"}], "has_more": True})

    async def messages(request: web.Request) -> web.Response:
        return web.json_response(answer)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    base = str(server.make_url("/v1"))
    result = await keytest.test_key(pool, base, KEY, ["claude-z"], timeout=TIMEOUT, api_format="anthropic")
    assert (result.ok, result.models) == (True, ["claude-a"])
    assert seen == ["/v1/models?limit=1000"]

    answer = {"choices": [{"message": {"content": "p"}}]}  # an OpenAI answer at /messages
    result = await keytest.test_key(pool, base, KEY, ["claude-z"], timeout=TIMEOUT, api_format="anthropic")
    assert (result.ok, result.reason, result.error) == (
        False,
        "not_openai_compatible",
        "the upstream does not answer like the Anthropic API",
    )


async def test_an_openai_key_at_an_anthropic_only_upstream_fails(aiohttp_server: Any, pool: h1.Pool) -> None:
    """The format decides the request: the same upstream read as `openai` has no chat endpoint."""

    async def messages(request: web.Request) -> web.Response:
        return web.json_response({"type": "message"})

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    server = await aiohttp_server(app)
    base = str(server.make_url("/v1"))
    assert (await keytest.test_key(pool, base, KEY, ["c"], timeout=TIMEOUT, api_format="anthropic")).ok
    result = await keytest.test_key(pool, base, KEY, ["c"], timeout=TIMEOUT)
    assert (result.ok, result.reason) == (False, "not_openai_compatible")
