"""Mode.OPENAI_ON_GEMINI: an OpenAI request as a Gemini GenerateContentRequest, a Gemini answer
(whole or streamed) as a chat completion, and the plan (URL, header lines, a body without the model)."""

from __future__ import annotations

import copy
import random
from typing import Any

import openai.types.chat as ot
import orjson
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.apiformat import ApiFormat
from gateway.relay import plan
from gateway.relay.call import Call
from gateway.relay.formats import Mode, openai_on_gemini, openai_on_gemini_stream
from gateway.relay.formats.shared import BROKE, STREAM_ONLY_ERROR, TranslationError
from gateway.relay.formats.usage import Usage
from gateway.relay.keyindex import PoolKey
from gateway.store.tokens import Caller
from tests.relay.formats.test_both_directions import _mutations
from tests.support.wire import B64, openai_chunks

SIG = "skip_thought_signature_validator"
USER = {"role": "user", "content": "Hi"}
SCHEMA = {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": False}

# --- OpenAI request -> Gemini ---------------------------------------------------------------------

REQUESTS = [
    (
        "system joined wherever it is; roles; alternation merged; the model left out",
        {
            "model": "gemini-2.5-flash",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
                {"role": "user", "content": [{"type": "text", "text": "there"}, {"type": "text", "text": ""}]},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "assistant", "content": "Salut"},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "Non"}]},
                {"role": "user", "content": ""},
            ],
            "stream": True,
            "stream_options": {"include_usage": True},
            "logprobs": True,
            "user": "u",
            "parallel_tool_calls": False,
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}, {"text": "there"}]},
                {"role": "model", "parts": [{"text": "Salut"}, {"text": "Non"}]},
            ],
            "systemInstruction": {"parts": [{"text": "Be brief.\n\nUse French."}]},
        },
    ),
    (
        "images by data URL and by http URL, a PDF, audio",
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
                        {"type": "image_url", "image_url": {"url": "https://x.example/a/cat.PNG?s=1"}},
                        {"type": "image_url", "image_url": {"url": "https://x.example/photo"}},
                        {"type": "image_url", "image_url": {"url": "http://x.example/p.webp#f"}},
                        {"type": "file", "file": {"file_data": f"data:application/pdf;base64,{B64}"}},
                        {"type": "input_audio", "input_audio": {"data": B64, "format": "wav"}},
                        {"type": "mystery"},
                    ],
                }
            ]
        },
        {
            "contents": [
                {
                    "role": "user",
                    "parts": [
                        {"inlineData": {"mimeType": "image/png", "data": B64}},
                        {"fileData": {"mimeType": "image/png", "fileUri": "https://x.example/a/cat.PNG?s=1"}},
                        {"fileData": {"mimeType": "image/jpeg", "fileUri": "https://x.example/photo"}},
                        {"fileData": {"mimeType": "image/webp", "fileUri": "http://x.example/p.webp#f"}},
                        {"inlineData": {"mimeType": "application/pdf", "data": B64}},
                        {"inlineData": {"mimeType": "audio/wav", "data": B64}},
                    ],
                }
            ]
        },
    ),
    (
        "tool calls and their results, named by the call they answer",
        {
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "weather", "arguments": '{"city":"Oslo"}'},
                        },
                        {"id": "c2", "type": "function", "function": {"name": "time", "arguments": "[1]"}},
                        {"id": "c3", "type": "function", "function": {"name": "noop", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 3}'},
                {"role": "tool", "tool_call_id": "c2", "content": [{"type": "text", "text": "noon"}]},
                {"role": "tool", "tool_call_id": "c3", "content": "[1, 2]"},
                {"role": "user", "content": "Thanks"},
            ]
        },
        {
            "contents": [
                {"role": "user", "parts": [{"text": "Hi"}]},
                {
                    "role": "model",
                    "parts": [
                        {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": SIG},
                        {"functionCall": {"name": "time", "args": {"_raw": "[1]"}}, "thoughtSignature": SIG},
                        {"functionCall": {"name": "noop", "args": {}}, "thoughtSignature": SIG},
                    ],
                },
                {
                    "role": "user",
                    "parts": [
                        {"functionResponse": {"name": "weather", "response": {"temp": 3}}},
                        {"functionResponse": {"name": "time", "response": {"content": "noon"}}},
                        {"functionResponse": {"name": "noop", "response": {"content": "[1, 2]"}}},
                        {"text": "Thanks"},
                    ],
                },
            ]
        },
    ),
    (
        "function tools with full JSON Schema; a function tool_choice",
        {
            "messages": [USER],
            "tools": [
                {"type": "function", "function": {"name": "f", "description": "does f", "parameters": SCHEMA}},
                {"type": "function", "function": {"name": "g"}},
                {"type": "custom", "custom": {"name": "free"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            "tools": [
                {
                    "functionDeclarations": [
                        {"name": "f", "description": "does f", "parametersJsonSchema": SCHEMA},
                        {"name": "g"},
                    ]
                }
            ],
            "toolConfig": {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": ["g"]}},
        },
    ),
    (
        "a tool_choice without tools says nothing",
        {"messages": [USER], "tool_choice": "required"},
        {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]},
    ),
    (
        "generation config, json_schema, reasoning_effort",
        {
            "messages": [USER],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": 1.5,
            "top_p": 0.9,
            "stop": ["END", "", 3],
            "n": 1,
            "presence_penalty": 0.5,
            "frequency_penalty": -0.5,
            "seed": 7,
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA, "strict": True}},
            "reasoning_effort": "medium",
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            "generationConfig": {
                "maxOutputTokens": 20,
                "temperature": 1.5,
                "topP": 0.9,
                "presencePenalty": 0.5,
                "frequencyPenalty": -0.5,
                "seed": 7,
                "stopSequences": ["END"],
                "responseMimeType": "application/json",
                "responseJsonSchema": SCHEMA,
                "thinkingConfig": {"thinkingBudget": 8192},
            },
        },
    ),
    (
        "json_object, a stop string, max_tokens, odd values dropped",
        {
            "messages": [USER],
            "max_tokens": 10,
            "stop": "END",
            "temperature": True,
            "seed": 1.5,
            "response_format": {"type": "json_object"},
            "reasoning_effort": "extreme",
        },
        {
            "contents": [{"role": "user", "parts": [{"text": "Hi"}]}],
            "generationConfig": {
                "maxOutputTokens": 10,
                "stopSequences": ["END"],
                "responseMimeType": "application/json",
            },
        },
    ),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in REQUESTS], ids=[c[0] for c in REQUESTS])
def test_an_openai_request_becomes_a_gemini_request(body: dict, expected: dict) -> None:
    before = copy.deepcopy(body)
    assert openai_on_gemini.translate_request(body) == expected
    assert body == before


@pytest.mark.parametrize(
    "choice, config",
    [("auto", {"mode": "AUTO"}), ("required", {"mode": "ANY"}), ("none", {"mode": "NONE"}), ("sometimes", None)],
)
def test_each_tool_choice_becomes_a_function_calling_mode(choice: str, config: dict | None) -> None:
    tools = [{"type": "function", "function": {"name": "f"}}]
    out = openai_on_gemini.translate_request({"messages": [USER], "tools": tools, "tool_choice": choice})
    assert out.get("toolConfig") == (None if config is None else {"functionCallingConfig": config})


@pytest.mark.parametrize("effort, budget", [("none", 0), ("minimal", 1024), ("low", 1024), ("high", 24576)])
def test_reasoning_effort_becomes_a_thinking_budget(effort: str, budget: int) -> None:
    out = openai_on_gemini.translate_request({"messages": [USER], "reasoning_effort": effort})
    assert out["generationConfig"] == {"thinkingConfig": {"thinkingBudget": budget}}


def test_large_values_are_shared_not_copied() -> None:
    body = {
        "messages": [{"role": "user", "content": [{"type": "text", "text": "x" * 1000}]}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
    }
    out = openai_on_gemini.translate_request(body)
    assert out["contents"][0]["parts"][0]["text"] is body["messages"][0]["content"][0]["text"]
    declaration = out["tools"][0]["functionDeclarations"][0]
    assert declaration["parametersJsonSchema"] is body["tools"][0]["function"]["parameters"]


def image(url: str) -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}]}


ERRORS = [
    ("n", {"messages": [], "n": 2}, "n"),
    ("messages", {"messages": "hi"}, "messages"),
    ("a message that is no object", {"messages": ["hi"]}, "messages[0]"),
    ("function role", {"messages": [{"role": "function", "content": "x"}]}, "messages[0].role"),
    ("non-base64 data URL", image("data:image/png,abc"), "messages[0].content[0].image_url.url"),
    ("ftp image", image("ftp://x/y.png"), "messages[0].content[0].image_url.url"),
    (
        "file id",
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
        "messages[0].content[0].file",
    ),
    (
        "audio in a format Gemini is not sent",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
        "messages[0].content[0]",
    ),
    (
        "a tool result for no call",
        {"messages": [USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
        "messages[1].tool_call_id",
    ),
    (
        "a tool_choice naming no tool",
        {
            "messages": [USER],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
        "tool_choice",
    ),
]


@pytest.mark.parametrize("body, field", [c[1:] for c in ERRORS], ids=[c[0] for c in ERRORS])
def test_a_request_gemini_cannot_carry_raises_naming_the_field(body: dict, field: str) -> None:
    with pytest.raises(TranslationError) as info:
        openai_on_gemini.translate_request(body)
    assert info.value.field == field


# --- Gemini answer -> OpenAI ----------------------------------------------------------------------

META = {
    "promptTokenCount": 120,
    "candidatesTokenCount": 30,
    "thoughtsTokenCount": 50,
    "cachedContentTokenCount": 100,
    "totalTokenCount": 200,
}


def gemini_answer(parts: list[dict], finish: str | None = "STOP", **extra: Any) -> dict:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    if finish:
        candidate["finishReason"] = finish
    return {"candidates": [candidate], **extra}


def test_a_gemini_answer_becomes_a_chat_completion() -> None:
    body = gemini_answer(
        [{"text": "thinking…", "thought": True}, {"text": "Hello "}, {"text": "world"}],
        usageMetadata=META,
        modelVersion="gemini-2.5-flash-001",
        responseId="resp-1",
    )
    out = openai_on_gemini.translate_answer(body, model="gemini-2.5-flash")
    assert out == {
        "id": "resp-1",
        "object": "chat.completion",
        "created": out["created"],
        "model": "gemini-2.5-flash-001",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello world", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        # thoughts are completion tokens; the cached part of the prompt is reported as cached
        "usage": {
            "prompt_tokens": 120,
            "completion_tokens": 80,
            "total_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }
    ot.ChatCompletion.model_validate(out)


def test_function_calls_become_tool_calls() -> None:
    body = gemini_answer(
        [
            {"text": "Let me look."},
            {"functionCall": {"name": "weather", "args": {"city": "Oslo"}}, "thoughtSignature": "sig"},
            {"functionCall": {"id": "g-2", "name": "time"}},
        ]
    )
    out = openai_on_gemini.translate_answer(body, model="m")
    choice = out["choices"][0]
    calls = choice["message"]["tool_calls"]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] == "Let me look."
    assert calls[0]["id"].startswith("call_") and calls[1]["id"] == "g-2"
    assert [c["function"] for c in calls] == [
        {"name": "weather", "arguments": '{"city":"Oslo"}'},
        {"name": "time", "arguments": "{}"},
    ]
    assert out["model"] == "m" and out["id"].startswith("chatcmpl-")
    ot.ChatCompletion.model_validate(out)
    only_calls = openai_on_gemini.translate_answer(gemini_answer([body["candidates"][0]["content"]["parts"][1]]))
    assert only_calls["choices"][0]["message"]["content"] is None


@pytest.mark.parametrize(
    "reason, finish",
    [
        ("STOP", "stop"),
        ("MAX_TOKENS", "length"),
        ("SAFETY", "content_filter"),
        ("RECITATION", "content_filter"),
        ("BLOCKLIST", "content_filter"),
        ("PROHIBITED_CONTENT", "content_filter"),
        ("SPII", "content_filter"),
        ("MALFORMED_FUNCTION_CALL", "stop"),
        ("OTHER", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reasons(reason: str | None, finish: str) -> None:
    out = openai_on_gemini.translate_answer(gemini_answer([{"text": "x"}], reason))
    assert out["choices"][0]["finish_reason"] == finish


def test_a_blocked_prompt_is_a_content_filter_finish_with_empty_content() -> None:
    body = {"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": {"promptTokenCount": 9}}
    out = openai_on_gemini.translate_answer(body)
    assert out["choices"][0]["finish_reason"] == "content_filter"
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"] == {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}


# --- Gemini stream -> OpenAI chunks ---------------------------------------------------------------


def sse(obj: dict) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\r\n\r\n"


STREAM = [
    {
        "candidates": [{"content": {"role": "model", "parts": [{"text": "…", "thought": True}]}}],
        "usageMetadata": {"promptTokenCount": 120},
        "modelVersion": "gemini-2.5-flash",
        "responseId": "r1",
    },
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "Hel"}]}}], "usageMetadata": META},
    {"candidates": [{"content": {"role": "model", "parts": [{"text": "lo"}]}}]},
    {
        "candidates": [
            {
                "content": {"role": "model", "parts": [{"functionCall": {"name": "f", "args": {"a": 1}}}]},
                "finishReason": "STOP",
            }
        ],
        "usageMetadata": {**META, "candidatesTokenCount": 40},
    },
]


def run(adapter: openai_on_gemini_stream.Adapter, chunks: list[dict]) -> list[Any]:
    out = adapter.take(b"".join(sse(c) for c in chunks)) + adapter.close(b"")
    return openai_chunks(out)


@pytest.mark.parametrize("wants_usage", [True, False])
def test_a_stream_becomes_openai_chunks(wants_usage: bool) -> None:
    adapter = openai_on_gemini_stream.Adapter(model="gemini-2.5-flash", include_usage=wants_usage)
    chunks = run(adapter, STREAM)
    assert chunks[-1] == "[DONE]"
    deltas = [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1] if c["choices"]]
    call = deltas[3][0]["tool_calls"][0]
    assert call["id"].startswith("call_")
    assert deltas == [
        ({"role": "assistant", "content": ""}, None),
        ({"content": "Hel"}, None),
        ({"content": "lo"}, None),
        (
            {
                "tool_calls": [
                    {
                        "index": 0,
                        "id": call["id"],
                        "type": "function",
                        "function": {"name": "f", "arguments": '{"a":1}'},
                    }
                ]
            },
            None,
        ),
        ({}, "tool_calls"),
    ]
    assert {c["id"] for c in chunks[:-1]} == {"r1"} and {c["model"] for c in chunks[:-1]} == {"gemini-2.5-flash"}
    usage_chunks = [c for c in chunks[:-1] if not c["choices"]]
    expected = {
        "prompt_tokens": 120,
        "completion_tokens": 90,
        "total_tokens": 210,
        "prompt_tokens_details": {"cached_tokens": 100},
    }
    assert usage_chunks == ([{**chunks[0], "choices": [], "usage": expected}] if wants_usage else [])
    for chunk in chunks[:-1]:
        ot.ChatCompletionChunk.model_validate(chunk)
    assert adapter.committed and not adapter.failed and not adapter.broken
    assert adapter.recorded_usage() == Usage(20, 90, 100, 0)  # the last usageMetadata counts
    assert adapter.close(b"") == b""  # idempotent


def test_a_stream_that_ends_without_a_finish_reason_is_finished_as_stop() -> None:
    conv = openai_on_gemini_stream.Translator(model="m")
    chunks = openai_chunks(conv.feed(STREAM[1]) + conv.close())
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, None, "stop"]
    assert chunks[-1] == "[DONE]" and conv.close() == b""


def test_an_error_before_any_content_fails_the_attempt() -> None:
    adapter = openai_on_gemini_stream.Adapter(model="m", include_usage=False)
    error = {"error": {"code": 429, "message": "Resource exhausted", "status": "RESOURCE_EXHAUSTED"}}
    assert adapter.take(sse(STREAM[0]) + sse(error)) == openai_chunks_bytes_role(adapter)
    assert adapter.failed == STREAM_ONLY_ERROR and not adapter.committed and not adapter.broken


def openai_chunks_bytes_role(adapter: openai_on_gemini_stream.Adapter) -> bytes:
    """What the thought-only first chunk gave: the role chunk, nothing the client has seen yet as content."""
    chunk = {
        "id": "r1",
        "object": "chat.completion.chunk",
        "created": adapter._stream.created,
        "model": "gemini-2.5-flash",
        "choices": [
            {"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
        ],
    }
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def test_an_error_after_content_breaks_the_stream_with_an_error_event() -> None:
    adapter = openai_on_gemini_stream.Adapter(model="m", include_usage=True)
    out = adapter.take(sse(STREAM[1]) + sse({"error": {"code": 500, "message": "upstream secret"}}) + sse(STREAM[2]))
    chunks = openai_chunks(out)
    assert adapter.broken and adapter.committed and not adapter.failed
    assert chunks[-1] == {"error": {"message": BROKE, "type": "upstream_error", "code": "upstream_error"}}
    assert [c["choices"][0]["delta"] for c in chunks[:-1]] == [{"role": "assistant", "content": ""}, {"content": "Hel"}]
    assert b"secret" not in out


def test_a_blocked_prompt_stream_finishes_as_content_filter_without_committing() -> None:
    adapter = openai_on_gemini_stream.Adapter(model="m", include_usage=False)
    chunks = run(adapter, [{"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}}])
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None, "content_filter"]
    assert not adapter.committed


def test_odd_input_never_crashes() -> None:
    rng = random.Random(24)
    for seed in [c[1] for c in REQUESTS]:
        for body in _mutations(seed, rng, 40):
            try:
                openai_on_gemini.translate_request(body)
            except TranslationError:
                pass
    answer = gemini_answer(STREAM[3]["candidates"][0]["content"]["parts"] + [{"text": "x"}], usageMetadata=META)
    for body in _mutations(answer, rng, 200):
        openai_on_gemini.translate_answer(body)
    for _ in range(300):
        conv = openai_on_gemini_stream.Translator(include_usage=True)
        for chunk in STREAM:
            conv.feed(_mutations(chunk, rng, 1)[0] if rng.random() < 0.3 else chunk)
        conv.close()


# --- the plan ------------------------------------------------------------------------------------

BASE = "https://generativelanguage.googleapis.com/v1beta"


def gemini_key() -> PoolKey:
    return PoolKey("k1", "o1", "alice", BASE, "AIza-donor", ("gemini-2.5-flash",), 100, True, False, ApiFormat.GEMINI)


def chat_call(body: dict) -> Call:
    options = body.get("stream_options")
    wants = isinstance(options, dict) and bool(options.get("include_usage"))
    caller = Caller("t1", "u1", "bob", 1, False)
    request = make_mocked_request("POST", "/v1/chat/completions")
    return Call(
        request,
        caller,
        "/chat/completions",
        body["model"],
        bool(body.get("stream")),
        orjson.dumps(body),
        body,
        wants,
        0.0,
    )


@pytest.mark.parametrize(
    "stream, path",
    [
        (False, "/v1beta/models/gemini-2.5-flash:generateContent"),
        (True, "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"),
    ],
)
def test_the_plan_names_the_model_in_the_url_and_never_in_the_body(stream: bool, path: str) -> None:
    body = {"model": "flash", "messages": [USER], "stream": stream}
    call, key = chat_call(body), gemini_key()
    route = plan.plan(call, key, "gemini-2.5-flash")
    assert route.mode == Mode.OPENAI_ON_GEMINI
    assert str(route.url) == "https://generativelanguage.googleapis.com" + path
    assert route.url.raw_path_qs == path
    assert route.head == key.head[stream] and b"x-goog-api-key: AIza-donor" in route.head
    assert orjson.loads(route.body) == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}
    assert plan.plan(call, key, "gemini-2.5-pro").body is route.body  # one body for every name
    adapter = plan.adapter(route, call)
    assert isinstance(adapter, openai_on_gemini_stream.Adapter)


def test_a_model_name_is_quoted_into_the_path() -> None:
    url = gemini_key().model_url("models/tuned/x y", "generateContent")
    assert url.raw_path == "/v1beta/models/tuned%2Fx%20y:generateContent"


def test_a_call_tried_on_keys_of_two_other_formats_gets_each_its_own_body() -> None:
    anthropic_key = PoolKey(
        "k2", "o1", "alice", "https://a.example/v1", "sk-a", ("m",), 100, True, False, ApiFormat.ANTHROPIC
    )
    call = chat_call({"model": "m", "messages": [USER]})
    first = orjson.loads(plan.plan(call, anthropic_key, "m").body)
    second = orjson.loads(plan.plan(call, gemini_key(), "m").body)
    third = orjson.loads(plan.plan(call, anthropic_key, "m").body)
    assert first == third and "max_tokens" in first and "contents" in second and "messages" not in second


def test_a_non_streamed_answer_is_translated_with_its_usage() -> None:
    call = chat_call({"model": "flash", "messages": [USER]})
    raw = orjson.dumps(gemini_answer([{"text": "Hi!"}], usageMetadata=META))
    out, usage = plan.BY_MODE[Mode.OPENAI_ON_GEMINI].answer(call, raw)
    answer = orjson.loads(out)
    assert answer["choices"][0]["message"]["content"] == "Hi!" and answer["model"] == "flash"
    assert usage == Usage(20, 80, 100, 0)
    with pytest.raises(ValueError):
        plan.BY_MODE[Mode.OPENAI_ON_GEMINI].answer(call, b"[]")
