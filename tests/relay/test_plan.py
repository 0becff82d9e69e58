"""The table of directions (gateway/relay/plan.py), one case per mode: where a call goes on a key,
the header lines it carries, the body it sends, and how often that body is built."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.apiformat import ApiFormat, spoken_on
from gateway.relay import plan
from gateway.relay.call import Call
from gateway.relay.formats import Mode
from gateway.relay.formats.shared import TranslationError
from gateway.relay.keyindex import PoolKey
from gateway.store.tokens import Caller

BASE = "https://up.example/v1"
CALLER = Caller("t1", "u1", "bob", 1, False)
VERSION_LINE = b"anthropic-version: 2023-06-01\r\n"


def key(fmt: ApiFormat, *, stream_usage: bool = True, names: dict[str, str] | None = None) -> PoolKey:
    return PoolKey("k1", "o1", "alice", BASE, "sk-donor", ("m",), 100, stream_usage, False, fmt, names or {})


def call(path: str, body: dict[str, Any]) -> Call:
    endpoint = path.removeprefix("/v1").split("?")[0]
    options = body.get("stream_options")
    wants = isinstance(options, dict) and bool(options.get("include_usage"))
    raw = orjson.dumps(body)
    c = Call(
        make_mocked_request("POST", path),
        CALLER,
        endpoint,
        body["model"],
        bool(body.get("stream")),
        raw,
        body,
        wants,
        0.0,
    )
    c.client = spoken_on(path)
    if c.client == ApiFormat.ANTHROPIC:
        c.anthropic_lines = VERSION_LINE
    return c


CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "m", "max_tokens": 50, "messages": [{"role": "user", "content": "hi"}]}

# (name, path, body, key format, key options, upstream model) ->
#   (mode, URL, strip_usage, the body sent as parsed, whether the client's own bytes go out)
CASES = [
    (
        "openai as it came",
        "/v1/chat/completions",
        CHAT,
        ApiFormat.OPENAI,
        {},
        "m",
        (Mode.OPENAI, "/chat/completions", False, CHAT, True),
    ),
    (
        "openai stream asks for usage",
        "/v1/chat/completions",
        {**CHAT, "stream": True},
        ApiFormat.OPENAI,
        {},
        "m",
        (
            Mode.OPENAI,
            "/chat/completions",
            True,
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            False,
        ),
    ),
    (
        "openai stream whose client asked for usage itself",
        "/v1/chat/completions",
        {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
        ApiFormat.OPENAI,
        {},
        "m",
        (
            Mode.OPENAI,
            "/chat/completions",
            False,
            {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
            True,
        ),
    ),
    (
        "openai stream on a key that reports no usage in streams",
        "/v1/chat/completions",
        {**CHAT, "stream": True},
        ApiFormat.OPENAI,
        {"stream_usage": False},
        "m",
        (Mode.OPENAI, "/chat/completions", False, {**CHAT, "stream": True}, True),
    ),
    (
        "openai embeddings never get include_usage",
        "/v1/embeddings",
        {"model": "m", "input": "x", "stream": True},
        ApiFormat.OPENAI,
        {},
        "m",
        (Mode.OPENAI, "/embeddings", False, {"model": "m", "input": "x", "stream": True}, True),
    ),
    (
        "openai under the key's own name",
        "/v1/chat/completions",
        CHAT,
        ApiFormat.OPENAI,
        {},
        "up-m",
        (Mode.OPENAI, "/chat/completions", False, {**CHAT, "model": "up-m"}, False),
    ),
    (
        "anthropic as it came",
        "/v1/messages",
        MESSAGES,
        ApiFormat.ANTHROPIC,
        {},
        "m",
        (Mode.ANTHROPIC, "/messages", False, MESSAGES, True),
    ),
    (
        "anthropic with beta=true and nothing else of the query",
        "/v1/messages?beta=true&secret=1",
        MESSAGES,
        ApiFormat.ANTHROPIC,
        {},
        "m",
        (Mode.ANTHROPIC, "/messages?beta=true", False, MESSAGES, True),
    ),
    (
        "anthropic on an openai key",
        "/v1/messages",
        {**MESSAGES, "system": "be brief"},
        ApiFormat.OPENAI,
        {},
        "up-m",
        (
            Mode.ANTHROPIC_ON_OPENAI,
            "/chat/completions",
            False,
            {
                "model": "up-m",
                "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
                "max_tokens": 50,
            },
            False,
        ),
    ),
    (
        "openai on an anthropic key",
        "/v1/chat/completions",
        CHAT,
        ApiFormat.ANTHROPIC,
        {},
        "m",
        (
            Mode.OPENAI_ON_ANTHROPIC,
            "/messages",
            False,
            {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4096},
            False,
        ),
    ),
]


@pytest.mark.parametrize("path, body, fmt, options, model, expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_mode_plans_its_url_head_and_body(
    path: str, body: dict, fmt: ApiFormat, options: dict, model: str, expected: tuple
) -> None:
    mode, url, strip, sent, as_it_came = expected
    c, k = call(path, body), key(fmt, **options)
    route = plan.plan(c, k, model)
    assert route.mode == mode
    assert str(route.url) == BASE + url
    assert route.strip_usage is strip
    assert orjson.loads(route.body) == sent
    assert (route.body is c.raw) is as_it_came
    assert route.head.startswith(k.head[c.stream])
    extra = route.head[len(k.head[c.stream]) :]
    assert extra == (VERSION_LINE if fmt == ApiFormat.ANTHROPIC else b"")
    assert b"sk-donor" in route.head  # the key's credential, in its format's header
    assert (b"x-api-key: sk-donor" in route.head) is (fmt == ApiFormat.ANTHROPIC)


def test_every_pair_of_formats_has_exactly_one_row() -> None:
    pairs = [(d.client, d.key) for d in plan.TABLE]
    assert sorted(pairs) == sorted((c, k) for c in ApiFormat for k in ApiFormat)
    assert {d.mode for d in plan.TABLE} == set(Mode)


def test_a_translated_body_is_built_once_per_call_and_renamed_per_key() -> None:
    c = call("/v1/messages", MESSAGES)
    first = plan.plan(c, key(ApiFormat.OPENAI), "m").body
    again = plan.plan(c, key(ApiFormat.OPENAI), "m").body
    renamed = plan.plan(c, key(ApiFormat.OPENAI), "other").body
    assert again is first is c.translated
    assert orjson.loads(renamed)["model"] == "other" and orjson.loads(first)["model"] == "m"


def test_the_include_usage_body_is_built_once_per_call() -> None:
    c = call("/v1/chat/completions", {**CHAT, "stream": True})
    assert plan.plan(c, key(ApiFormat.OPENAI), "m").body is plan.plan(c, key(ApiFormat.OPENAI), "m").body


def test_a_body_the_key_format_cannot_carry_raises_translation_error() -> None:
    c = call("/v1/chat/completions", {**CHAT, "n": 2})
    with pytest.raises(TranslationError):
        plan.plan(c, key(ApiFormat.ANTHROPIC), "m")
    assert plan.plan(c, key(ApiFormat.OPENAI), "m").body is c.raw  # an openai key takes it as it came


@pytest.mark.parametrize(
    "path, fmt, raw, body, usage",
    [
        (
            "/v1/chat/completions",
            ApiFormat.OPENAI,
            b'{"id":"c","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":4}}}',
            None,
            (9, 2, 4, None),
        ),
        ("/v1/chat/completions", ApiFormat.OPENAI, b'{"id":"c","choices":[]}', None, None),
        (
            "/v1/messages",
            ApiFormat.ANTHROPIC,
            b'{"id":"msg_1","type":"message","content":[],"usage":{"input_tokens":3,"output_tokens":1}}',
            None,
            (3, 1, None, None),
        ),
        (
            "/v1/messages",
            ApiFormat.OPENAI,
            b'{"id":"c","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"hey"},'
            b'"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}',
            {"type": "message", "content": [{"type": "text", "text": "hey"}], "stop_reason": "end_turn"},
            (5, 1, None, None),
        ),
        (
            "/v1/chat/completions",
            ApiFormat.ANTHROPIC,
            b'{"id":"msg_1","type":"message","model":"m","content":[{"type":"text","text":"hey"}],'
            b'"stop_reason":"max_tokens","usage":{"input_tokens":2,"output_tokens":8,"cache_read_input_tokens":6,'
            b'"server_tool_use":{"web_search_requests":2}}}',
            {"object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length"}]},
            (8, 8, 6, None),
        ),
    ],
    ids=["openai", "openai without usage", "anthropic", "anthropic on openai", "openai on anthropic"],
)
def test_each_mode_answers_in_the_client_format_with_one_usage(
    path: str, fmt: ApiFormat, raw: bytes, body: dict | None, usage: tuple | None
) -> None:
    c = call(path, MESSAGES if path == "/v1/messages" else CHAT)
    route = plan.plan(c, key(fmt), "m")
    out, got = plan.answer(route, c, raw)
    if body is None:
        assert out is raw  # passed through, not re-encoded
    else:
        parsed = orjson.loads(out)
        for name, value in body.items():
            if name == "choices":
                assert {k: parsed["choices"][0][k] for k in value[0]} == value[0]
            else:
                assert parsed[name] == value
    assert (got.stored() if got is not None else None) == usage
    if route.mode == Mode.OPENAI_ON_ANTHROPIC:
        assert got is not None and got.tool_calls == {"web_search": 2}


@pytest.mark.parametrize("fmt", list(ApiFormat))
def test_an_answer_that_is_not_a_json_object_fails_the_attempt(fmt: ApiFormat) -> None:
    c = call("/v1/messages", MESSAGES)
    route = plan.plan(c, key(fmt), "m")
    with pytest.raises(ValueError):
        plan.answer(route, c, b"[1, 2]")
