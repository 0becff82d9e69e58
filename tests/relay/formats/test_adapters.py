"""Each direction's stream adapter, as the relay drives it (`take` runs of whole events, then
`close`): the commit point, a failure before it, a break after it, what the client gets, and the
one usage it records."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.relay.formats import (
    anthropic,
    anthropic_on_openai_stream,
    gemini_on_openai_stream,
    openai,
    openai_on_anthropic_stream,
)
from gateway.relay.formats.shared import ENDED_EARLY, STREAM_ONLY_ERROR, Adapter


def data(obj: Any) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else orjson.dumps(obj)) + b"\n\n"


def event(obj: dict) -> bytes:
    return b"event: " + obj["type"].encode() + b"\n" + data(obj)


def chunk(content: str | None = None, finish: str | None = None, usage: dict | None = None) -> bytes:
    choices = (
        []
        if content is None and finish is None
        else [{"index": 0, "delta": {"content": content}, "finish_reason": finish}]
    )
    body: dict[str, Any] = {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": choices}
    if usage is not None:
        body["usage"] = usage
    return data(body)


OPENAI_USAGE = {"prompt_tokens": 9, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 4}}
OPENAI_STREAM = [chunk(""), chunk("Hel"), chunk("lo", "stop"), chunk(usage=OPENAI_USAGE), data(b"[DONE]")]
MESSAGE_START = {
    "type": "message_start",
    "message": {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "m",
        "content": [],
        "usage": {"input_tokens": 5, "output_tokens": 1, "cache_read_input_tokens": 4},
    },
}
ANTHROPIC_STREAM = [
    event(MESSAGE_START),
    event({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    event({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hello"}}),
    event({"type": "content_block_stop", "index": 0}),
    event(
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn"},
            "usage": {"output_tokens": 3, "server_tool_use": {"web_search_requests": 1}},
        }
    ),
    event({"type": "message_stop"}),
]
OPENAI_ERROR = data({"error": {"message": "overloaded", "type": "server_error"}})
ANTHROPIC_ERROR = event({"type": "error", "error": {"type": "overloaded_error", "message": "overloaded"}})


def passthrough(strip: bool = True) -> Adapter:
    return openai.Passthrough(strip_usage=strip)


# (name, adapter factory, the upstream's stream, what the client's stream says, stored usage, tool calls)
CASES = [
    ("openai pass-through", passthrough, OPENAI_STREAM, b"Hel", (9, 3, 4, None), None),
    ("anthropic pass-through", anthropic.Passthrough, ANTHROPIC_STREAM, b"Hello", (9, 3, 4, None), {"web_search": 1}),
    (
        "anthropic on openai",
        lambda: anthropic_on_openai_stream.Adapter(model="m"),
        OPENAI_STREAM,
        b'"text_delta","text":"Hel"',
        (9, 3, 4, None),
        None,
    ),
    (
        "openai on anthropic",
        lambda: openai_on_anthropic_stream.Adapter(model="m", include_usage=True),
        ANTHROPIC_STREAM,
        b'"content":"Hello"',
        (9, 3, 4, None),
        {"web_search": 1},
    ),
    (
        "gemini on openai (sse)",
        lambda: gemini_on_openai_stream.Adapter(model="m", sse=True),
        OPENAI_STREAM,
        b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}',
        (9, 3, 4, None),
        None,
    ),
    (
        "gemini on openai (array)",
        lambda: gemini_on_openai_stream.Adapter(model="m", sse=False),
        OPENAI_STREAM,
        b'[{"candidates":[{"content":{"role":"model","parts":[{"text":"Hel"}]}',
        (9, 3, 4, None),
        None,
    ),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("make, stream, says, stored, calls", [c[1:] for c in CASES], ids=IDS)
def test_a_whole_stream_commits_relays_and_records_one_usage(
    make: Any, stream: list[bytes], says: bytes, stored: tuple, calls: dict | None
) -> None:
    adapter = make()
    out = adapter.take(stream[0])
    assert not adapter.committed or stream is OPENAI_STREAM  # OpenAI's first chunk is content already
    out += b"".join(adapter.take(e) for e in stream[1:]) + adapter.close(b"")
    assert adapter.committed and adapter.failed is None and not adapter.broken
    assert says in out
    usage = adapter.recorded_usage()
    assert usage is not None and usage.stored() == stored and usage.tool_calls == calls
    assert adapter.chunks >= 3


def test_the_pass_through_forwards_bytes_as_they_came_and_drops_the_usage_chunk_it_asked_for() -> None:
    adapter = passthrough(strip=True)
    run = b"".join(OPENAI_STREAM[:3])
    assert adapter.take(run) is run  # nothing parsed, nothing copied
    assert adapter.take(OPENAI_STREAM[3]) == b""  # the usage-only chunk we added
    assert passthrough(strip=False).take(OPENAI_STREAM[3]) == OPENAI_STREAM[3]  # the client asked for it


@pytest.mark.parametrize(
    "make, first, why",
    [
        (passthrough, data(b"[DONE]"), ENDED_EARLY),
        (passthrough, OPENAI_ERROR, STREAM_ONLY_ERROR),
        (anthropic.Passthrough, ANTHROPIC_ERROR, STREAM_ONLY_ERROR),
        (lambda: anthropic_on_openai_stream.Adapter(model="m"), OPENAI_ERROR, STREAM_ONLY_ERROR),
        (
            lambda: openai_on_anthropic_stream.Adapter(model="m", include_usage=False),
            ANTHROPIC_ERROR,
            STREAM_ONLY_ERROR,
        ),
        (lambda: gemini_on_openai_stream.Adapter(model="m", sse=False), OPENAI_ERROR, STREAM_ONLY_ERROR),
    ],
    ids=[
        "openai ends early",
        "openai error",
        "anthropic error",
        "anthropic on openai error",
        "openai on anthropic error",
        "gemini on openai error",
    ],
)
def test_an_error_before_the_commit_point_fails_the_attempt(make: Any, first: bytes, why: str) -> None:
    adapter = make()
    assert adapter.take(first) == b""  # nothing for the client: another key may serve
    assert adapter.failed == why and not adapter.committed and not adapter.broken


@pytest.mark.parametrize(
    "make, stream, error, says",
    [
        (anthropic.Passthrough, ANTHROPIC_STREAM, ANTHROPIC_ERROR, b"event: error"),
        (lambda: anthropic_on_openai_stream.Adapter(model="m"), OPENAI_STREAM, OPENAI_ERROR, b"event: error"),
        (
            lambda: openai_on_anthropic_stream.Adapter(model="m", include_usage=False),
            ANTHROPIC_STREAM,
            ANTHROPIC_ERROR,
            b'"type": "upstream_error"',
        ),
        (
            lambda: gemini_on_openai_stream.Adapter(model="m", sse=False),
            OPENAI_STREAM,
            OPENAI_ERROR,
            b',\r\n{"error":{"code":500,',
        ),
    ],
    ids=["anthropic", "anthropic on openai", "openai on anthropic", "gemini on openai"],
)
def test_an_error_after_the_commit_point_breaks_the_stream_in_the_client_format(
    make: Any, stream: list[bytes], error: bytes, says: bytes
) -> None:
    adapter = make()
    adapter.take(b"".join(stream[:3]))
    assert adapter.committed
    out = adapter.take(error)
    assert adapter.broken and adapter.failed is None
    assert says in out and b"overloaded" not in out  # our words, never the upstream's


def test_the_openai_pass_through_leaves_a_reported_error_to_the_upstream() -> None:
    adapter = passthrough()
    adapter.take(OPENAI_STREAM[0])
    assert adapter.take(OPENAI_ERROR) == OPENAI_ERROR and not adapter.broken  # relayed as it came
