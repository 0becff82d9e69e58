"""Wire samples and readers shared by the format tests: SSE bytes parsed back into events and
chunks, the SDKs' own models to validate them against, and requests and streams as real clients
and upstreams send them (Claude Code's request among them)."""

from __future__ import annotations

import inspect
from typing import Any

import anthropic.types as at
import orjson
import pydantic
from anthropic.lib.streaming._messages import accumulate_event

from gateway.relay.formats import anthropic_on_openai_stream

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
    """Feed OpenAI chunks to anthropic_on_openai_stream.Translator; validate every event with the SDK."""
    conv = anthropic_on_openai_stream.Translator(**kwargs)
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
