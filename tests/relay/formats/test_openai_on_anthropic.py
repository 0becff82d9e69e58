"""Mode.OPENAI_ON_ANTHROPIC, not streamed: an OpenAI request as an Anthropic one, and an Anthropic
Message as a chat completion."""

from __future__ import annotations

import copy
import time

import openai.types.chat as ot
import pytest

from gateway.relay.formats import openai_on_anthropic
from gateway.relay.formats.shared import TranslationError
from tests.support.wire import B64, MESSAGE

# --- 4. OpenAI request -> Anthropic, Anthropic answers -> OpenAI -------------------------------

O2A_REQUESTS = [
    (
        "system, sampling, defaults",
        {
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "Use French."}]},
                {"role": "user", "content": "Hi"},
            ],
            "temperature": 1.7,
            "top_p": 0.8,
            "stop": "END",
            "n": 1,
            "stream": True,
            "stream_options": {"include_usage": True},
            "response_format": {"type": "json_object"},
            "logprobs": True,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
            "seed": 3,
            "user": "u",
            "prompt_cache_key": "k",
        },
        {
            "model": "claude-x",
            "system": "Be brief.\n\nUse French.",
            "messages": [{"role": "user", "content": "Hi"}],
            "max_tokens": 4096,
            "stop_sequences": ["END"],
            "temperature": 1,
            "top_p": 0.8,
            "stream": True,
        },
    ),
    (
        "max_completion_tokens wins; negative temperature clamps",
        {
            "model": "m",
            "messages": [],
            "max_tokens": 10,
            "max_completion_tokens": 20,
            "temperature": -1,
            "stop": ["a", ""],
        },
        {"model": "m", "messages": [], "max_tokens": 20, "stop_sequences": ["a"], "temperature": 0},
    ),
    (
        "tool round trip, images, merged user turn",
        {
            "model": "m",
            "max_tokens": 50,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/b.png", "detail": "high"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": "Checking.",
                    "tool_calls": [
                        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"q":1}'}},
                        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "two"}]},
                {"role": "user", "content": "and?"},
                {"role": "assistant", "content": "Well, "},
            ],
            "tools": [
                {"type": "function", "function": {"name": "f", "description": "F", "parameters": {"type": "object"}}},
                {"type": "function", "function": {"name": "g", "strict": True}},
                {"type": "custom", "custom": {"name": "free"}},
            ],
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "parallel_tool_calls": False,
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/b.png"}},
                    ],
                },
                {
                    "role": "assistant",
                    "content": [
                        {"type": "text", "text": "Checking."},
                        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"q": 1}},
                        {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
                        {"type": "text", "text": "and?"},
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "Well,"}]},
            ],
            "max_tokens": 50,
            "tools": [
                {"name": "f", "description": "F", "input_schema": {"type": "object"}},
                {"name": "g", "input_schema": {"type": "object", "properties": {}}},
            ],
            "tool_choice": {"type": "tool", "name": "f", "disable_parallel_tool_use": True},
        },
    ),
    (
        "tool_choice required / none; PDF file part; odd parts dropped",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "file",
                            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                        },
                        {"type": "text", "text": ""},
                        {"type": "mystery"},
                        None,
                    ],
                },
                {"role": "assistant", "content": None},
                {"role": "assistant", "content": [{"type": "refusal", "refusal": "No."}]},
                {"role": "user", "content": [{"type": "text", "text": "ok"}]},
            ],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "required",
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                        }
                    ],
                },
                {"role": "assistant", "content": [{"type": "text", "text": "No."}]},
                {"role": "user", "content": [{"type": "text", "text": "ok"}]},
            ],
            "max_tokens": 4096,
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "any"},
        },
    ),
    (
        "tool_choice none; no tools means no tool_choice",
        {
            "model": "m",
            "messages": [],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": "none",
        },
        {
            "model": "m",
            "messages": [],
            "max_tokens": 4096,
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "none"},
        },
    ),
    (
        "parallel off alone -> auto with disable_parallel_tool_use; none tool_choice without tools dropped",
        {
            "model": "m",
            "messages": [],
            "tools": [{"type": "function", "function": {"name": "f"}}],
            "parallel_tool_calls": False,
        },
        {
            "model": "m",
            "messages": [],
            "max_tokens": 4096,
            "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": True},
        },
    ),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in O2A_REQUESTS], ids=[c[0] for c in O2A_REQUESTS])
def test_openai_request_to_anthropic(body: dict, expected: dict) -> None:
    before = copy.deepcopy(body)
    assert openai_on_anthropic.translate_request(body) == expected
    assert body == before


O2A_ERRORS = [
    ("n", {"messages": [], "n": 2}, "n"),
    ("messages", {"messages": "hi"}, "messages"),
    ("function role", {"messages": [{"role": "function", "name": "f", "content": "x"}]}, "messages[0].role"),
    (
        "non-base64 data URL",
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}
            ]
        },
        "messages[0].content[0].image_url.url",
    ),
    (
        "ftp image",
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
        "messages[0].content[0].image_url.url",
    ),
    (
        "audio",
        {"messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": "x"}}]}]},
        "messages[0].content[0]",
    ),
    (
        "file id",
        {"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "file-1"}}]}]},
        "messages[0].content[0].file",
    ),
]


@pytest.mark.parametrize("body, field", [c[1:] for c in O2A_ERRORS], ids=[c[0] for c in O2A_ERRORS])
def test_openai_request_errors(body: dict, field: str) -> None:
    with pytest.raises(TranslationError) as info:
        openai_on_anthropic.translate_request(body)
    assert info.value.field == field


@pytest.mark.parametrize(
    "stop_reason, finish",
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
        ("pause_turn", "stop"),
        ("model_context_window_exceeded", "length"),
        (None, "stop"),
    ],
)
def test_anthropic_response_to_openai(stop_reason: str | None, finish: str) -> None:
    out = openai_on_anthropic.translate_answer({**MESSAGE, "stop_reason": stop_reason})
    assert abs(out.pop("created") - time.time()) < 5
    assert out == {
        "id": "msg_01",
        "object": "chat.completion",
        "model": "claude-x",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Part one, part two.",
                    "refusal": None,
                    "tool_calls": [
                        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":[1,2]}'}}
                    ],
                },
                "logprobs": None,
                "finish_reason": finish,
            }
        ],
        "usage": {
            "prompt_tokens": 115,
            "completion_tokens": 20,
            "total_tokens": 135,
            "prompt_tokens_details": {"cached_tokens": 100},
        },
    }
    ot.ChatCompletion.model_validate({**out, "created": 1})


def test_anthropic_response_odd() -> None:
    out = openai_on_anthropic.translate_answer({"content": None, "usage": None}, model="fallback")
    assert out["model"] == "fallback" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    ot.ChatCompletion.model_validate(out)
