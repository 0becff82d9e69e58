"""Mode.ANTHROPIC_ON_OPENAI, streamed: OpenAI chunks in, Anthropic events out, exact bytes and
every event validated by the Anthropic SDK."""

from __future__ import annotations

import anthropic.types as at
import orjson
import pytest

from gateway.relay.formats import anthropic_on_openai_stream
from gateway.relay.formats.shared import anthropic_error_event
from tests.support.wire import TEXT_THEN_TOOLS, anthropic_events, chunk, run_anthropic_stream, sdk_message

# --- 3. OpenAI stream -> Anthropic stream --------------------------------------------------------


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

    conv = anthropic_on_openai_stream.Translator(model="m")
    out = conv.feed(chunk({"content": "x"})) + conv.feed({"error": {"message": "secret upstream detail"}})
    assert conv.close() == b""
    events = anthropic_events(out)
    assert [n for n, _ in events][-2:] == ["content_block_stop", "error"]
    assert events[-1][1] == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream reported an error in the middle of the stream."},
    }


def test_anthropic_error_event() -> None:
    assert anthropic_error_event("Upstream broke off.") == (
        b'event: error\ndata: {"type":"error","error":{"type":"api_error","message":"Upstream broke off."}}\n\n'
    )
    assert anthropic_error_event("x", "overloaded_error").startswith(b"event: error\ndata: ")
    at.ErrorResponse.model_validate(orjson.loads(anthropic_error_event("x").split(b"data: ")[1]))
