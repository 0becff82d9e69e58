"""Mode.OPENAI_ON_ANTHROPIC, streamed: Anthropic events in, OpenAI chunks out."""

from __future__ import annotations

import openai.types.chat as ot

from gateway.relay.formats import openai_on_anthropic_stream
from gateway.relay.formats.usage import Usage
from tests.support.wire import anthropic_stream, openai_chunks

# --- Anthropic stream -> OpenAI chunks -----------------------------------------------------------


def test_anthropic_stream_to_openai_exact() -> None:
    conv = openai_on_anthropic_stream.Translator(include_usage=True)
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
    assert conv.usage == Usage(50, 33, 200, 0)


def test_anthropic_stream_without_usage_chunk_and_odd_endings() -> None:
    conv = openai_on_anthropic_stream.Translator()
    chunks = openai_chunks(b"".join(conv.feed(e) for e in anthropic_stream(thinking=False)))
    assert chunks[-1] == "[DONE]" and all(ch == "[DONE]" or ch["choices"] for ch in chunks)

    # Ended without message_delta / message_stop: finished as stop, role chunk first.
    conv = openai_on_anthropic_stream.Translator(include_usage=True, model="m")
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
    conv = openai_on_anthropic_stream.Translator()
    out = conv.feed(anthropic_stream()[0]) + conv.feed(
        {"type": "error", "error": {"type": "overloaded_error", "message": "x"}}
    )
    assert out.endswith(
        b'data: {"error":{"message":"The upstream reported an error in the middle of the stream.",'
        b'"type":"upstream_error","code":"upstream_error"}}\n\n'
    )
    assert conv.close() == b"" and conv.feed({"type": "message_stop"}) == b""
    assert conv.feed(None) == b""  # type: ignore[arg-type]
