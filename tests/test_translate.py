"""gateway.relay.translate: Anthropic Messages <-> OpenAI chat/completions, requests, answers and
streams, checked against exact dicts/bytes and against both SDKs' own models."""

from __future__ import annotations

import copy
import inspect
import random
import time
from typing import Any

import anthropic.types as at
import openai.types.chat as ot
import orjson
import pydantic
import pytest
from anthropic.lib.streaming._messages import accumulate_event

from gateway.relay import translate as tr

EVENT = pydantic.TypeAdapter(at.RawMessageStreamEvent)
B64 = "iVBORw0KGgo="


def anthropic_events(data: bytes) -> list[tuple[str, dict]]:
    """Anthropic SSE bytes as (event name, data) pairs; the name must match data's type."""
    events = []
    for raw in data.split(b"\n\n"):
        if not raw:
            continue
        head, body = raw.split(b"\n", 1)
        assert head.startswith(b"event: ") and body.startswith(b"data: "), raw
        name, payload = head[7:].decode(), orjson.loads(body[6:])
        assert payload["type"] == name
        events.append((name, payload))
    assert data.endswith(b"\n\n") or not data
    return events


def openai_chunks(data: bytes) -> list[Any]:
    """OpenAI SSE bytes as parsed chunks ("[DONE]" kept as the string)."""
    out = []
    for raw in data.split(b"\n\n"):
        if not raw:
            continue
        assert raw.startswith(b"data: ") and b"\n" not in raw, raw
        out.append("[DONE]" if raw == b"data: [DONE]" else orjson.loads(raw[6:]))
    return out


def assemble_openai(chunks: list[Any]) -> dict:
    """What an OpenAI client makes of a stream: text, tool calls by index, finish, usage."""
    text, calls, finish, usage = "", {}, None, None
    for chunk in chunks:
        if chunk == "[DONE]":
            continue
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk["choices"]:
            delta = choice["delta"]
            text += delta.get("content") or ""
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call["index"], {"id": None, "name": "", "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                function = call.get("function") or {}
                slot["name"] += function.get("name") or ""
                slot["arguments"] += function.get("arguments") or ""
            finish = choice.get("finish_reason") or finish
    return {"text": text, "calls": [calls[i] for i in sorted(calls)], "finish": finish, "usage": usage}


def run_anthropic_stream(chunks: list[dict], **kwargs: Any) -> list[tuple[str, dict]]:
    """Feed OpenAI chunks to OpenAIToAnthropicStream; validate every event with the SDK."""
    conv = tr.OpenAIToAnthropicStream(**kwargs)
    data = b"".join(conv.feed(c) for c in chunks) + conv.close()
    assert conv.close() == b"" and conv.feed(chunks[0] if chunks else {}) == b""
    events = anthropic_events(data)
    for _, payload in events:
        EVENT.validate_python(payload)
    return events


def sdk_message(events: list[tuple[str, dict]]) -> at.Message:
    """The Message the Anthropic SDK accumulates from these events."""
    message = None
    # `json_bufs` (partial tool input per block) is an argument in newer SDKs, state in older ones.
    extra: dict[str, Any] = {"json_bufs": {}} if "json_bufs" in inspect.signature(accumulate_event).parameters else {}
    for _, payload in events:
        message = accumulate_event(event=EVENT.validate_python(payload), current_snapshot=message, **extra)
    assert message is not None
    return message


def chunk(delta: dict | None = None, finish: str | None = None, **extra: Any) -> dict:
    choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-x", "choices": choices, **extra}


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
    assert tr.anthropic_request_to_openai(body) == expected
    assert body == before  # the caller's body is not modified


CLAUDE_CODE_TOOLS = [
    {
        "name": "Bash",
        "description": "Run a command",
        "input_schema": {
            "type": "object",
            "properties": {"command": {"type": "string"}},
            "required": ["command"],
            "additionalProperties": False,
            "$schema": "http://json-schema.org/draft-07/schema#",
        },
    },
    {"name": "Read", "description": "Read a file", "input_schema": {"type": "object", "properties": {}}},
]

CLAUDE_CODE_REQUEST = {
    "model": "claude-sonnet-4-5-20250929",
    "max_tokens": 32000,
    "stream": True,
    "metadata": {"user_id": "user_abc_account__session_123"},
    "thinking": {"type": "enabled", "budget_tokens": 10000},
    "temperature": 1,
    "system": [
        {
            "type": "text",
            "text": "You are Claude Code, Anthropic's official CLI for Claude.",
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "text", "text": "You are an interactive CLI tool.", "cache_control": {"type": "ephemeral"}},
    ],
    "tools": CLAUDE_CODE_TOOLS,
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "<system-reminder>ctx</system-reminder>"},
                {"type": "text", "text": "list files", "cache_control": {"type": "ephemeral"}},
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Use ls.", "signature": "sig=="},
                {"type": "text", "text": "Listing."},
                {"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": {"command": "ls"}},
                {"type": "tool_use", "id": "toolu_02", "name": "Read", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "toolu_01", "content": "a.py\nb.py"},
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "is_error": True,
                    "content": [{"type": "text", "text": "<tool_use_error>no path</tool_use_error>"}],
                    "cache_control": {"type": "ephemeral"},
                },
                {"type": "text", "text": "thanks"},
            ],
        },
        {"role": "system", "content": "The user switched to plan mode."},
        {"role": "user", "content": "now plan"},
    ],
}


def test_claude_code_request() -> None:
    out = tr.anthropic_request_to_openai(CLAUDE_CODE_REQUEST)
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
    with pytest.raises(tr.TranslationError) as info:
        tr.anthropic_request_to_openai(body)
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
    out = tr.openai_response_to_anthropic(body)
    assert out == expected
    at.Message.model_validate(out)


def test_openai_response_odd() -> None:
    out = tr.openai_response_to_anthropic({"choices": None, "usage": None}, model="fallback")
    assert out["id"].startswith("msg_") and len(out["id"]) > 10
    assert out["model"] == "fallback" and out["content"] == [] and out["stop_reason"] == "end_turn"
    at.Message.model_validate(out)
    out = tr.openai_response_to_anthropic({"id": "msg_1", "choices": [{"message": {"content": ""}}]})
    assert out["id"] == "msg_1" and out["content"] == []


# --- 3. OpenAI stream -> Anthropic stream --------------------------------------------------------

TEXT_THEN_TOOLS = [
    chunk({"role": "assistant", "content": ""}),
    chunk({"content": "Let me "}),
    chunk({}),
    chunk({"content": "check."}),
    chunk(
        {
            "tool_calls": [
                {"index": 0, "id": "call_a", "type": "function", "function": {"name": "Bash", "arguments": ""}}
            ]
        }
    ),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"comm'}}]}),
    chunk({"tool_calls": [{"index": 0, "function": {"arguments": 'and": "ls"}'}}]}),
    chunk(
        {
            "tool_calls": [
                {"index": 1, "id": "call_b", "type": "function", "function": {"name": "Read", "arguments": "{}"}}
            ]
        }
    ),
    chunk({}, "tool_calls"),
    chunk(None, usage={"prompt_tokens": 30, "completion_tokens": 12, "prompt_tokens_details": {"cached_tokens": 10}}),
]


def test_stream_text_then_tools_exact() -> None:
    events = run_anthropic_stream(TEXT_THEN_TOOLS, input_tokens=25)

    def delta(index: int, d: dict) -> tuple[str, dict]:
        return ("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})

    assert events == [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": "msg_chatcmpl-1",
                    "type": "message",
                    "role": "assistant",
                    "model": "gpt-x",
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": 25, "output_tokens": 0},
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        delta(0, {"type": "text_delta", "text": "Let me "}),
        delta(0, {"type": "text_delta", "text": "check."}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 1,
                "content_block": {"type": "tool_use", "id": "call_a", "name": "Bash", "input": {}},
            },
        ),
        delta(1, {"type": "input_json_delta", "partial_json": '{"comm'}),
        delta(1, {"type": "input_json_delta", "partial_json": 'and": "ls"}'}),
        ("content_block_stop", {"type": "content_block_stop", "index": 1}),
        (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": 2,
                "content_block": {"type": "tool_use", "id": "call_b", "name": "Read", "input": {}},
            },
        ),
        delta(2, {"type": "input_json_delta", "partial_json": "{}"}),
        ("content_block_stop", {"type": "content_block_stop", "index": 2}),
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": None},
                "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 10},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    message = sdk_message(events)
    assert [b.type for b in message.content] == ["text", "tool_use", "tool_use"]
    assert message.content[0].text == "Let me check."
    assert message.content[1].input == {"command": "ls"} and message.content[2].input == {}
    assert message.stop_reason == "tool_use" and message.usage.output_tokens == 12


STREAM_CASES = [
    (
        "role-only first chunk, no finish_reason, no usage",
        [chunk({"role": "assistant"}), chunk({"content": "Hi"})],
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "end_turn",
        {"output_tokens": 0},
    ),
    (
        "nothing at all but a role and a finish",
        [chunk({"role": "assistant", "content": None}), chunk({}, "stop")],
        ["message_start", "message_delta", "message_stop"],
        "end_turn",
        {"output_tokens": 0},
    ),
    (
        "empty stream",
        [],
        ["message_start", "message_delta", "message_stop"],
        "end_turn",
        {"output_tokens": 0},
    ),
    (
        "length, usage in the finish chunk",
        [chunk({"content": "ab"}, "length", usage={"prompt_tokens": 3, "completion_tokens": 2})],
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "max_tokens",
        {"input_tokens": 3, "output_tokens": 2},
    ),
    (
        "tool call with finish stop -> tool_use",
        [chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}]}, "stop")],
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "tool_use",
        {"output_tokens": 0},
    ),
    (
        "text after a tool call opens a new text block",
        [
            chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "f"}}]}),
            chunk({"content": "and"}),
            chunk({}, "tool_calls"),
        ],
        [
            "message_start",
            "content_block_start",
            "content_block_stop",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ],
        "tool_use",
        {"output_tokens": 0},
    ),
]


@pytest.mark.parametrize(
    "chunks, names, reason, usage", [c[1:] for c in STREAM_CASES], ids=[c[0] for c in STREAM_CASES]
)
def test_stream_shapes(chunks: list, names: list, reason: str, usage: dict) -> None:
    events = run_anthropic_stream(chunks)
    assert [name for name, _ in events] == names
    assert events[-2][1]["delta"]["stop_reason"] == reason and events[-2][1]["usage"] == usage
    sdk_message(events)


def test_stream_stop_sequence_and_error() -> None:
    events = run_anthropic_stream(
        [
            chunk({"content": "x"}),
            {
                **chunk({}, "stop"),
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop", "stop_reason": "###"}],
            },
        ]
    )
    assert events[-2][1]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": "###"}

    conv = tr.OpenAIToAnthropicStream(model="m")
    out = conv.feed(chunk({"content": "x"})) + conv.feed({"error": {"message": "secret upstream detail"}})
    assert conv.close() == b""
    events = anthropic_events(out)
    assert [n for n, _ in events][-2:] == ["content_block_stop", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream reported an error in the middle of the stream."},
    }


def test_anthropic_error_event() -> None:
    assert tr.anthropic_error_event("Upstream broke off.") == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"Upstream broke off."}}\n\n'
    )
    assert tr.anthropic_error_event("x", "overloaded_error").startswith(b"event: error\ndata: ")
    at.ErrorResponse.model_validate(orjson.loads(tr.anthropic_error_event("x").split(b"data: ")[1]))


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
    assert tr.openai_request_to_anthropic(body) == expected
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
    with pytest.raises(tr.TranslationError) as info:
        tr.openai_request_to_anthropic(body)
    assert info.value.field == field


MESSAGE = {
    "id": "msg_01",
    "type": "message",
    "role": "assistant",
    "model": "claude-x",
    "content": [
        {"type": "thinking", "thinking": "hm", "signature": "s"},
        {"type": "text", "text": "Part one, "},
        {"type": "text", "text": "part two."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": [1, 2]}},
    ],
    "stop_reason": "tool_use",
    "stop_sequence": None,
    "usage": {
        "input_tokens": 10,
        "output_tokens": 20,
        "cache_read_input_tokens": 100,
        "cache_creation_input_tokens": 5,
    },
}


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
    out = tr.anthropic_response_to_openai({**MESSAGE, "stop_reason": stop_reason})
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
    out = tr.anthropic_response_to_openai({"content": None, "usage": None}, model="fallback")
    assert out["model"] == "fallback" and out["id"].startswith("chatcmpl-")
    assert out["choices"][0]["message"]["content"] == ""
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    ot.ChatCompletion.model_validate(out)


# --- Anthropic stream -> OpenAI chunks -----------------------------------------------------------


def anthropic_stream(*, thinking: bool = True) -> list[dict]:
    events: list[dict] = [
        {
            "type": "message_start",
            "message": {
                "id": "msg_s",
                "type": "message",
                "role": "assistant",
                "model": "claude-x",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {"input_tokens": 50, "output_tokens": 1, "cache_read_input_tokens": 200},
            },
        },
        {"type": "ping"},
    ]
    if thinking:
        events += [
            {"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "hm"}},
            {"type": "content_block_delta", "index": 0, "delta": {"type": "signature_delta", "signature": "s"}},
            {"type": "content_block_stop", "index": 0},
        ]
    base = 1 if thinking else 0
    events += [
        {"type": "content_block_start", "index": base, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": base, "delta": {"type": "text_delta", "text": "Hi "}},
        {"type": "content_block_delta", "index": base, "delta": {"type": "text_delta", "text": "there"}},
        {"type": "content_block_stop", "index": base},
        {
            "type": "content_block_start",
            "index": base + 1,
            "content_block": {"type": "tool_use", "id": "toolu_x", "name": "Bash", "input": {}},
        },
        {"type": "content_block_delta", "index": base + 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {
            "type": "content_block_delta",
            "index": base + 1,
            "delta": {"type": "input_json_delta", "partial_json": '{"command"'},
        },
        {
            "type": "content_block_delta",
            "index": base + 1,
            "delta": {"type": "input_json_delta", "partial_json": ': "ls"}'},
        },
        {"type": "content_block_stop", "index": base + 1},
        {
            "type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": None},
            "usage": {"output_tokens": 33},
        },
        {"type": "message_stop"},
    ]
    return events


def test_anthropic_stream_to_openai_exact() -> None:
    conv = tr.AnthropicToOpenAIStream(include_usage=True)
    data = b"".join(conv.feed(e) for e in anthropic_stream())
    assert conv.close() == b""
    chunks = openai_chunks(data)
    assert chunks[-1] == "[DONE]"
    created = chunks[0]["created"]

    def c(delta: dict, finish: str | None = None) -> dict:
        return {
            "id": "msg_s",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "claude-x",
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    assert chunks[:-1] == [
        c({"role": "assistant", "content": ""}),
        c({"content": "Hi "}),
        c({"content": "there"}),
        c(
            {
                "tool_calls": [
                    {"index": 0, "id": "toolu_x", "type": "function", "function": {"name": "Bash", "arguments": ""}}
                ]
            }
        ),
        c({"tool_calls": [{"index": 0, "function": {"arguments": '{"command"'}}]}),
        c({"tool_calls": [{"index": 0, "function": {"arguments": ': "ls"}'}}]}),
        c({}, "tool_calls"),
        {
            "id": "msg_s",
            "object": "chat.completion.chunk",
            "created": created,
            "model": "claude-x",
            "choices": [],
            "usage": {
                "prompt_tokens": 250,
                "completion_tokens": 33,
                "total_tokens": 283,
                "prompt_tokens_details": {"cached_tokens": 200},
            },
        },
    ]
    for chunk_ in chunks[:-1]:
        ot.ChatCompletionChunk.model_validate(chunk_)
    assert conv.usage == tr.TokenUsage(50, 33, 200, 0)


def test_anthropic_stream_without_usage_chunk_and_odd_endings() -> None:
    conv = tr.AnthropicToOpenAIStream()
    chunks = openai_chunks(b"".join(conv.feed(e) for e in anthropic_stream(thinking=False)))
    assert chunks[-1] == "[DONE]" and all(ch == "[DONE]" or ch["choices"] for ch in chunks)

    # Ended without message_delta / message_stop: finished as stop, role chunk first.
    conv = tr.AnthropicToOpenAIStream(include_usage=True, model="m")
    chunks = openai_chunks(
        conv.feed({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "x"}})
        + conv.close()
    )
    assert [ch if ch == "[DONE]" else (ch["choices"][0]["delta"] if ch["choices"] else "usage") for ch in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "x"},
        {},
        "usage",
        "[DONE]",
    ]
    assert chunks[2]["choices"][0]["finish_reason"] == "stop" and chunks[0]["model"] == "m"

    # An error event: one error object, no [DONE], and nothing after it.
    conv = tr.AnthropicToOpenAIStream()
    out = conv.feed(anthropic_stream()[0]) + conv.feed(
        {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
    )
    assert out.endswith(
        b'data: {"error":{"message":"The upstream reported an error in the middle of the stream.",'
        b'"type":"upstream_error","code":"upstream_error"}}\n\n'
    )
    assert conv.close() == b"" and conv.feed({"type": "message_stop"}) == b""
    assert conv.feed(None) == b""  # type: ignore[arg-type]


# --- Round trip: OpenAI upstream -> Anthropic client events -> OpenAI client chunks ---------------


def test_stream_round_trip() -> None:
    forward = tr.OpenAIToAnthropicStream()
    anthropic_bytes = b"".join(forward.feed(c) for c in TEXT_THEN_TOOLS) + forward.close()
    backward = tr.AnthropicToOpenAIStream(include_usage=True)
    openai_bytes = b"".join(backward.feed(event) for _, event in anthropic_events(anthropic_bytes))
    result = assemble_openai(openai_chunks(openai_bytes))
    assert result == {
        "text": "Let me check.",
        "calls": [
            {"id": "call_a", "name": "Bash", "arguments": '{"command": "ls"}'},
            {"id": "call_b", "name": "Read", "arguments": "{}"},
        ],
        "finish": "tool_calls",
        "usage": {
            "prompt_tokens": 30,
            "completion_tokens": 12,
            "total_tokens": 42,
            "prompt_tokens_details": {"cached_tokens": 10},
        },
    }
    assert openai_chunks(openai_bytes)[-1] == "[DONE]"

    # And the other way: Anthropic upstream -> OpenAI client chunks -> Anthropic client events.
    backward = tr.AnthropicToOpenAIStream(include_usage=True)
    chunks = openai_chunks(b"".join(backward.feed(e) for e in anthropic_stream()))
    message = sdk_message(run_anthropic_stream([c for c in chunks if c != "[DONE]"]))
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == "Hi there"
    assert message.content[1].input == {"command": "ls"} and message.content[1].id == "toolu_x"
    assert message.stop_reason == "tool_use"
    assert (message.usage.input_tokens, message.usage.cache_read_input_tokens, message.usage.output_tokens) == (
        50,
        200,
        33,
    )


def test_request_round_trip() -> None:
    """Claude Code's request through OpenAI and back keeps its conversation (minus what OpenAI cannot carry)."""
    back = tr.openai_request_to_anthropic(tr.anthropic_request_to_openai(CLAUDE_CODE_REQUEST))
    assert back["system"] == (
        "You are Claude Code, Anthropic's official CLI for Claude.\n\nYou are an interactive CLI tool.\n\n"
        "The user switched to plan mode."
    )
    assert back["messages"][1]["content"][1] == {
        "type": "tool_use",
        "id": "toolu_01",
        "name": "Bash",
        "input": {"command": "ls"},
    }
    assert back["messages"][2]["content"][0] == {
        "type": "tool_result",
        "tool_use_id": "toolu_01",
        "content": "a.py\nb.py",
    }
    assert back["tools"][0] == {
        "name": "Bash",
        "description": "Run a command",
        "input_schema": CLAUDE_CODE_TOOLS[0]["input_schema"],
    }


# --- Usage helpers and the local estimate --------------------------------------------------------

USAGE_CASES = [
    ("openai plain", tr.openai_usage, {"prompt_tokens": 10, "completion_tokens": 2}, tr.TokenUsage(10, 2, 0, 0)),
    (
        "openai cached",
        tr.openai_usage,
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}},
        tr.TokenUsage(6, 2, 4, 0),
    ),
    (
        "deepseek cache hits",
        tr.openai_usage,
        {"prompt_tokens": 10, "prompt_cache_hit_tokens": 7},
        tr.TokenUsage(3, 0, 7, 0),
    ),
    ("openai details None", tr.openai_usage, {"prompt_tokens": None, "prompt_tokens_details": None}, tr.TokenUsage()),
    ("openai none", tr.openai_usage, None, None),
    (
        "anthropic full",
        tr.anthropic_usage,
        {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 4},
        tr.TokenUsage(1, 2, 3, 4),
    ),
    ("anthropic nulls", tr.anthropic_usage, {"input_tokens": None, "cache_read_input_tokens": None}, tr.TokenUsage()),
    ("anthropic none", tr.anthropic_usage, "x", None),
]


@pytest.mark.parametrize("fn, usage, expected", [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES])
def test_usage(fn: Any, usage: Any, expected: tr.TokenUsage | None) -> None:
    assert fn(usage) == expected


def test_token_usage_totals() -> None:
    usage = tr.TokenUsage(1, 2, 3, 4)
    assert (usage.prompt_tokens, usage.total_tokens) == (8, 10)


def test_wants_usage() -> None:
    assert tr.wants_usage({"stream_options": {"include_usage": True}})
    assert not tr.wants_usage({"stream_options": None}) and not tr.wants_usage({})


def test_estimate_input_tokens() -> None:
    assert tr.estimate_input_tokens({}) == 1
    assert tr.estimate_input_tokens({"messages": [{"role": "user", "content": "a" * 400}]}) == 100 + 4
    assert tr.estimate_input_tokens({"system": "b" * 40, "messages": [{"role": "user", "content": "a" * 40}]}) == 20 + 4
    # CJK counts by UTF-8 bytes: 3 per character
    assert tr.estimate_input_tokens({"messages": [{"role": "user", "content": "中" * 40}]}) == 30 + 4
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x" * 100_000}}
    assert tr.estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]}) == 1600 + 4
    full = tr.estimate_input_tokens(CLAUDE_CODE_REQUEST)
    tools_only = len(orjson.dumps(CLAUDE_CODE_TOOLS)) // 4
    assert tools_only < full < tools_only + 200
    # odd input never raises
    assert (
        tr.estimate_input_tokens(
            {"system": [None, {"type": "text"}], "messages": [None, {"content": [1, None]}], "tools": "x"}
        )
        >= 1
    )


# --- Odd input never raises anything but TranslationError ------------------------------------------

ODD_VALUES: list[Any] = [None, "", "x", 0, -1, 1.5, True, [], {}, [None], {"type": "text"}, {"type": "image"}, "data:x"]


def _mutations(seed: Any, rng: random.Random, count: int) -> list[Any]:
    """`count` copies of `seed`, each with one to three values replaced by odd ones or removed."""
    out = []
    for _ in range(count):
        value = copy.deepcopy(seed)
        for _ in range(rng.randint(1, 3)):
            cursor, path = value, []
            while isinstance(cursor, dict | list) and cursor and rng.random() < 0.8:
                key = rng.choice(list(cursor)) if isinstance(cursor, dict) else rng.randrange(len(cursor))
                path.append((cursor, key))
                cursor = cursor[key]
            if path:
                parent, key = path[-1]
                if isinstance(parent, dict) and rng.random() < 0.2:
                    del parent[key]
                else:
                    parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
        out.append(value)
    return out


def test_odd_input_never_crashes() -> None:
    rng = random.Random(7)
    cases = [
        (tr.anthropic_request_to_openai, [c[1] for c in A2O_REQUESTS] + [CLAUDE_CODE_REQUEST]),
        (tr.estimate_input_tokens, [CLAUDE_CODE_REQUEST]),
        (tr.openai_request_to_anthropic, [c[1] for c in O2A_REQUESTS]),
        (tr.openai_response_to_anthropic, [c[1] for c in O2A_RESPONSES]),
        (tr.anthropic_response_to_openai, [MESSAGE]),
    ]
    for fn, seeds in cases:
        for seed in seeds:
            for body in _mutations(seed, rng, 40):
                try:
                    fn(body)
                except tr.TranslationError:
                    pass
    for _ in range(1000):
        forward = tr.OpenAIToAnthropicStream()
        for item in TEXT_THEN_TOOLS:
            forward.feed(_mutations(item, rng, 1)[0] if rng.random() < 0.3 else item)
        forward.close()
        backward = tr.AnthropicToOpenAIStream(include_usage=True)
        for event in anthropic_stream():
            backward.feed(_mutations(event, rng, 1)[0] if rng.random() < 0.3 else event)
        backward.close()
