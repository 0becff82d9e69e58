"""SSE relaying: whole events only, across any chunking; usage found and parsed."""

from __future__ import annotations

import json

import pytest

from gateway.relay import sse
from gateway.relay.formats import openai
from gateway.relay.formats.usage import Usage

STREAM = (
    b'data: {"choices": [{"delta": {"content": "Hel"}}]}\n\n'
    b": keep-alive comment\n\n"
    b'data: {"choices": [{"delta": {"content": "lo"}}]}\r\n\r\n'
    b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}\n\n'
    b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64, len(STREAM)])
def test_any_chunking_yields_the_same_whole_events(size: int) -> None:
    scanner = sse.Scanner()
    out = []
    for i in range(0, len(STREAM), size):
        complete = scanner.feed(STREAM[i : i + size])
        if complete:
            assert complete.endswith((b"\n\n", b"\r\n\r\n")), "only whole events are released"
            out.append(complete)
    assert b"".join(out) == STREAM and scanner.pending == b""
    assert len(list(sse.events(b"".join(out)))) == 5


def test_partial_event_is_held() -> None:
    scanner = sse.Scanner()
    assert scanner.feed(b'data: {"a": 1}\n\ndata: {"b"') == b'data: {"a": 1}\n\n'
    assert scanner.pending == b'data: {"b"'
    assert scanner.feed(b": 2}\n\n") == b'data: {"b": 2}\n\n'


def test_usage_and_errors() -> None:
    [_, _, _, usage_event, _] = sse.events(STREAM)
    data = sse.data_of(usage_event)
    assert data is not None
    obj = sse.parse(data)
    assert sse.usage_only_chunk(obj)
    assert openai.usage_of(obj) == Usage(3, 2)
    assert openai.usage_of(
        {"type": "response.completed", "response": {"usage": {"input_tokens": 5, "output_tokens": 7}}}
    ) == Usage(5, 7)
    assert sse.is_error(b'{"error": {"message": "overloaded"}}')
    assert not sse.is_error(b'{"choices": [{"delta": {"content": "error"}}]}')
    event = sse.error_event("broke off")
    assert event.endswith(b"\n\n") and json.loads(event[6:])["error"]["code"] == "upstream_error"


def test_split_at_the_event_that_mentions_usage() -> None:
    before, rest = sse.split_at(STREAM, b'"usage"')
    assert before == STREAM[: STREAM.index(b'data: {"choices": [], "usage"')]
    assert before.endswith(b"\r\n\r\n") and rest.startswith(b'data: {"choices": [], "usage"')
    assert [e[:12] for e in sse.events(rest)] == [b'data: {"choi', b"data: [DONE]"]
    assert sse.split_at(STREAM, b'"nowhere"') == (STREAM, b"")
    first = b'data: {"usage": {}}\n\ndata: [DONE]\n\n'
    assert sse.split_at(first, b'"usage"') == (b"", first)


@pytest.mark.parametrize(
    "event",
    [
        b'data: {"a":1}\n\n',
        b'data:{"a":1}\r\n\r\n',
        b"event: x\ndata: 1\n\n",
        b"data: a\ndata: b\n\n",
        b": ping\n\n",
        b"data: [DONE]\n\n",
        b"data: x",
        b"data:  y \n\n",
        b"data: z\r\n",
    ],
)
def test_the_fast_data_path_reads_what_the_general_one_reads(event: bytes) -> None:
    lines = [line for line in event.splitlines() if line.startswith(b"data:")]
    general = b"\n".join(line[5:].lstrip(b" ") for line in lines) if lines else None
    assert sse.data_of(event) == general


def test_events_split_alike_with_and_without_carriage_returns() -> None:
    blob = b"data: 1\n\ndata: 2\n\n: c\n\n"
    assert list(sse.events(blob)) == [b"data: 1\n\n", b"data: 2\n\n", b": c\n\n"]
    assert [e.replace(b"\r", b"") for e in sse.events(blob.replace(b"\n", b"\r\n"))] == list(sse.events(blob))


@pytest.mark.parametrize(
    "blob",
    [
        b"data: 1\r\n\r\ndata: 2\r\n\r\n",  # Google's: every line ends in CRLF (the fast path)
        b"data: 1\r\n\r\ndata: 2\r\n\r\ndata: 3",
        b"data: 1\r\nid: 2\r\n\r\n\r\n\r\n",
        b"data: 1\r\n\r\ndata: 2\n\n",  # mixed: the general path
        b"data: 1\n\r\ndata: 2\r\n\n",
        b"data: 1\r\r\n\r\n",
    ],
)
def test_crlf_events_split_as_the_general_boundary_does(blob: bytes) -> None:
    start, general = 0, []
    for m in sse.EVENT_END.finditer(blob):
        general.append(blob[start : m.end()])
        start = m.end()
    assert list(sse.events(blob)) == general
