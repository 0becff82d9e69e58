"""Mode.ANTHROPIC_ON_OPENAI, not streamed: an Anthropic request as an OpenAI one, exact dicts and
field-named refusals; an OpenAI answer as an Anthropic Message, checked against the SDK's model."""

from __future__ import annotations

import copy
from typing import Any

import anthropic.types as at
import orjson
import pytest

from gateway.relay.formats import anthropic_on_openai
from gateway.relay.formats.shared import TranslationError
from tests.support.wire import B64, CLAUDE_CODE_REQUEST, CLAUDE_CODE_TOOLS

# --- 1. Anthropic request -> OpenAI --------------------------------------------------------------

A2O_REQUESTS = [
    (
        "string system and content, sampling fields",
        {
            "model": "claude-x",
            "system": "Be brief.",
            "max_tokens": 100,
            "stop_sequences": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 40,
            "messages": [{"role": "user", "content": "Hi"}],
        },
        {
            "model": "claude-x",
            "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
            "max_tokens": 100,
            "stop": ["END"],
            "temperature": 0.5,
            "top_p": 0.9,
        },
    ),
    (
        "stream asks for usage",
        {"model": "m", "max_tokens": 5, "stream": True, "messages": [{"role": "user", "content": "x"}]},
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ),
    (
        "images: base64 and url; several text blocks joined",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": B64}},
                        {"type": "image", "source": {"type": "url", "url": "https://x.test/a.jpg"}},
                    ],
                },
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            ],
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "Look:"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{B64}"}},
                        {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}},
                    ],
                },
                {"role": "user", "content": "a\n\nb"},
            ],
        },
    ),
    (
        "documents: text source and PDF",
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "notes"}},
                        {
                            "type": "document",
                            "title": "a.pdf",
                            "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBE"},
                        },
                    ],
                }
            ],
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "notes"},
                        {
                            "type": "file",
                            "file": {"filename": "a.pdf", "file_data": "data:application/pdf;base64,JVBE"},
                        },
                    ],
                }
            ],
        },
    ),
    (
        "tool choices: any, parallel off",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": True},
        },
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "required",
            "parallel_tool_calls": False,
        },
    ),
    (
        "tool choice: a named tool; server tools left out; schema missing",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                {"type": "custom", "name": "g", "description": "G"},
            ],
            "tool_choice": {"type": "tool", "name": "g"},
        },
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [
                {
                    "type": "function",
                    "function": {"name": "g", "description": "G", "parameters": {"type": "object", "properties": {}}},
                }
            ],
            "tool_choice": {"type": "function", "function": {"name": "g"}},
        },
    ),
    (
        "tool choice auto and none",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "none"},
        },
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "none",
        },
    ),
    (
        "no tools left: neither tools nor tool_choice",
        {
            "model": "m",
            "messages": [{"role": "user", "content": "x"}],
            "tools": [],
            "tool_choice": {"type": "auto"},
        },
        {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    ),
    (
        "odd input: empty lists, empty text, unknown blocks, None fields, thinking-only turn",
        {
            "model": "m",
            "system": [],
            "max_tokens": None,
            "temperature": None,
            "stop_sequences": [],
            "tools": None,
            "metadata": None,
            "messages": [
                {"role": "user", "content": []},
                {"role": "user", "content": [{"type": "text", "text": ""}, {"type": "mystery", "x": 1}, "junk"]},
                {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "s"}]},
                {"role": "assistant", "content": ""},
                {"role": "user", "content": None},
                {"role": "user", "content": [{"type": "text", "text": "ok"}]},
            ],
        },
        {"model": "m", "messages": [{"role": "user", "content": "ok"}]},
    ),
    (
        "images in a tool result: placeholder, image in the next user message",
        {
            "model": "m",
            "messages": [
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "shot", "input": {}}]},
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "tool_result",
                            "tool_use_id": "t1",
                            "is_error": False,
                            "content": [
                                {"type": "text", "text": "Screenshot:"},
                                {
                                    "type": "image",
                                    "source": {"type": "base64", "media_type": "image/jpeg", "data": B64},
                                },
                            ],
                        },
                        {"type": "text", "text": "What do you see?"},
                    ],
                },
            ],
        },
        {
            "model": "m",
            "messages": [
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "shot", "arguments": "{}"}}],
                },
                {
                    "role": "tool",
                    "tool_call_id": "t1",
                    "content": "Screenshot:\n\n[image: attached in the next user message]",
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{B64}"}},
                        {"type": "text", "text": "What do you see?"},
                    ],
                },
            ],
        },
    ),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in A2O_REQUESTS], ids=[c[0] for c in A2O_REQUESTS])
def test_anthropic_request_to_openai(body: dict, expected: dict) -> None:
    before = copy.deepcopy(body)
    assert anthropic_on_openai.translate_request(body) == expected
    assert body == before  # the caller's body is not modified


def test_claude_code_request() -> None:
    out = anthropic_on_openai.translate_request(CLAUDE_CODE_REQUEST)
    assert out == {
        "model": "claude-sonnet-4-5-20250929",
        "messages": [
            {
                "role": "system",
                "content": (
                    "You are Claude Code, Anthropic's official CLI for Claude.\n\nYou are an interactive CLI tool."
                ),
            },
            {"role": "user", "content": "<system-reminder>ctx</system-reminder>\n\nlist files"},
            {
                "role": "assistant",
                "content": "Listing.",
                "tool_calls": [
                    {
                        "id": "toolu_01",
                        "type": "function",
                        "function": {"name": "Bash", "arguments": '{"command":"ls"}'},
                    },
                    {"id": "toolu_02", "type": "function", "function": {"name": "Read", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "toolu_01", "content": "a.py\nb.py"},
            {"role": "tool", "tool_call_id": "toolu_02", "content": "<tool_use_error>no path</tool_use_error>"},
            {"role": "user", "content": "thanks"},
            {"role": "system", "content": "The user switched to plan mode."},
            {"role": "user", "content": "now plan"},
        ],
        "max_tokens": 32000,
        "temperature": 1,
        "tools": [
            {
                "type": "function",
                "function": {"name": t["name"], "description": t["description"], "parameters": t["input_schema"]},
            }
            for t in CLAUDE_CODE_TOOLS
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    # Schemas are shared, not copied; nothing Anthropic-only leaks anywhere in the body.
    assert out["tools"][0]["function"]["parameters"] is CLAUDE_CODE_TOOLS[0]["input_schema"]
    text = orjson.dumps(out)
    for word in (b"cache_control", b"thinking", b"metadata", b"user_id", b"signature", b"is_error"):
        assert word not in text


A2O_ERRORS = [
    ("messages missing", {"model": "m"}, "messages"),
    ("bad role", {"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ("message not an object", {"messages": ["hi"]}, "messages[0]"),
    (
        "file image source",
        {"messages": [{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]},
        "messages[0].content[0].source",
    ),
    (
        "tool_choice names a server tool",
        {
            "messages": [],
            "tools": [{"name": "f", "input_schema": {}}, {"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "tool", "name": "web_search"},
        },
        "tool_choice",
    ),
]


@pytest.mark.parametrize("body, field", [c[1:] for c in A2O_ERRORS], ids=[c[0] for c in A2O_ERRORS])
def test_anthropic_request_errors(body: dict, field: str) -> None:
    with pytest.raises(TranslationError) as info:
        anthropic_on_openai.translate_request(body)
    assert info.value.field == field and field in info.value.message


# --- 2. OpenAI answer -> Anthropic ---------------------------------------------------------------


def completion(message: dict, finish: str | None, usage: dict | None = None, **choice: Any) -> dict:
    body = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-x",
        "choices": [{"index": 0, "message": message, "finish_reason": finish, **choice}],
    }
    if usage is not None:
        body["usage"] = usage
    return body


O2A_RESPONSES = [
    (
        "text, stop, cached tokens",
        completion(
            {"role": "assistant", "content": "Hello"},
            "stop",
            {"prompt_tokens": 100, "completion_tokens": 7, "prompt_tokens_details": {"cached_tokens": 60}},
        ),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [{"type": "text", "text": "Hello"}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": 40, "output_tokens": 7, "cache_read_input_tokens": 60},
        },
    ),
    (
        "tool calls; bad and empty arguments",
        completion(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}},
                    {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "{oops"}},
                    {"id": "call_3", "type": "function", "function": {"name": "h", "arguments": ""}},
                ],
            },
            "tool_calls",
            {"prompt_tokens": 10, "completion_tokens": 5},
        ),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [
                {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                {"type": "tool_use", "id": "call_2", "name": "g", "input": {"_raw": "{oops"}},
                {"type": "tool_use", "id": "call_3", "name": "h", "input": {}},
            ],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5},
        },
    ),
    (
        "length; no usage",
        completion({"role": "assistant", "content": "Hel"}, "length"),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [{"type": "text", "text": "Hel"}],
            "stop_reason": "max_tokens",
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    ),
    (
        "vLLM reports the matched stop string",
        completion({"role": "assistant", "content": "a"}, "stop", stop_reason="END"),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [{"type": "text", "text": "a"}],
            "stop_reason": "stop_sequence",
            "stop_sequence": "END",
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    ),
    (
        "content_filter -> refusal; refusal text shown",
        completion({"role": "assistant", "content": None, "refusal": "I can't help."}, "content_filter"),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [{"type": "text", "text": "I can't help."}],
            "stop_reason": "refusal",
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    ),
    (
        "finish stop with tool calls -> tool_use",
        completion(
            {
                "role": "assistant",
                "content": "On it.",
                "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            "stop",
        ),
        {
            "id": "msg_chatcmpl-9",
            "type": "message",
            "role": "assistant",
            "model": "gpt-x",
            "content": [{"type": "text", "text": "On it."}, {"type": "tool_use", "id": "c", "name": "f", "input": {}}],
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0},
        },
    ),
]


@pytest.mark.parametrize("body, expected", [c[1:] for c in O2A_RESPONSES], ids=[c[0] for c in O2A_RESPONSES])
def test_openai_response_to_anthropic(body: dict, expected: dict) -> None:
    out = anthropic_on_openai.translate_answer(body)
    assert out == expected
    at.Message.model_validate(out)


def test_openai_response_odd() -> None:
    out = anthropic_on_openai.translate_answer({"choices": None, "usage": None}, model="fallback")
    assert out["id"].startswith("msg_") and len(out["id"]) > 10
    assert out["model"] == "fallback" and out["content"] == [] and out["stop_reason"] == "end_turn"
    at.Message.model_validate(out)
    out = anthropic_on_openai.translate_answer({"id": "msg_1", "choices": [{"message": {"content": ""}}]})
    assert out["id"] == "msg_1" and out["content"] == []
