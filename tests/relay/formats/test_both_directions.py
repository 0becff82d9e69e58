"""Both directions together: round trips, and odd input that never raises anything but
TranslationError."""

from __future__ import annotations

import copy
import random
from typing import Any

from gateway.relay.formats import (
    anthropic_on_openai,
    anthropic_on_openai_stream,
    openai_on_anthropic,
    openai_on_anthropic_stream,
)
from gateway.relay.formats.shared import TranslationError, estimate_input_tokens
from tests.relay.formats.test_anthropic_on_openai import A2O_REQUESTS, O2A_RESPONSES
from tests.relay.formats.test_openai_on_anthropic import O2A_REQUESTS
from tests.support.wire import (
    CLAUDE_CODE_REQUEST,
    CLAUDE_CODE_TOOLS,
    MESSAGE,
    TEXT_THEN_TOOLS,
    anthropic_events,
    anthropic_stream,
    assemble_openai,
    openai_chunks,
    run_anthropic_stream,
    sdk_message,
)

# --- Round trip: OpenAI upstream -> Anthropic client events -> OpenAI client chunks ---------------


def test_stream_round_trip() -> None:
    forward = anthropic_on_openai_stream.Translator()
    anthropic_bytes = b"".join(forward.feed(c) for c in TEXT_THEN_TOOLS) + forward.close()
    backward = openai_on_anthropic_stream.Translator(include_usage=True)
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
    backward = openai_on_anthropic_stream.Translator(include_usage=True)
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
    back = openai_on_anthropic.translate_request(anthropic_on_openai.translate_request(CLAUDE_CODE_REQUEST))
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
        (anthropic_on_openai.translate_request, [c[1] for c in A2O_REQUESTS] + [CLAUDE_CODE_REQUEST]),
        (estimate_input_tokens, [CLAUDE_CODE_REQUEST]),
        (openai_on_anthropic.translate_request, [c[1] for c in O2A_REQUESTS]),
        (anthropic_on_openai.translate_answer, [c[1] for c in O2A_RESPONSES]),
        (openai_on_anthropic.translate_answer, [MESSAGE]),
    ]
    for fn, seeds in cases:
        for seed in seeds:
            for body in _mutations(seed, rng, 40):
                try:
                    fn(body)
                except TranslationError:
                    pass
    for _ in range(1000):
        forward = anthropic_on_openai_stream.Translator()
        for item in TEXT_THEN_TOOLS:
            forward.feed(_mutations(item, rng, 1)[0] if rng.random() < 0.3 else item)
        forward.close()
        backward = openai_on_anthropic_stream.Translator(include_usage=True)
        for event in anthropic_stream():
            backward.feed(_mutations(event, rng, 1)[0] if rng.random() < 0.3 else event)
        backward.close()
