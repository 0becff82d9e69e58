"""The benchmark's own pieces: the fake upstream's Gemini answers match its OpenAI ones, the load
generator reads Gemini's shapes, and bench.run's modes are wired the way its tables assume."""

from __future__ import annotations

import json

from aiohttp.test_utils import TestClient, TestServer

from bench import load, run, upstream

CHUNKS = 16


def _events(blob: bytes, end: bytes) -> list[dict]:
    return [json.loads(e.removeprefix(b"data: ")) for e in blob.split(end) if e and e != b"data: [DONE]"]


async def test_the_upstream_answers_gemini_as_it_answers_openai() -> None:
    async with TestClient(TestServer(upstream.create_app(CHUNKS))) as client:
        chat = await (await client.post("/v1/chat/completions", data=load.chat_body(False))).json()
        resp = await client.post("/v1beta/models/bench-gemini:generateContent", data=load.gemini_body(False))
        gemini = await resp.json()
        assert gemini["modelVersion"] == "bench-gemini"
        assert gemini["candidates"][0]["content"]["parts"] == [{"text": chat["choices"][0]["message"]["content"]}]
        assert gemini["usageMetadata"] == {
            "promptTokenCount": chat["usage"]["prompt_tokens"],
            "candidatesTokenCount": chat["usage"]["completion_tokens"],
            "totalTokenCount": chat["usage"]["total_tokens"],
        }

        body = json.dumps({**json.loads(load.chat_body(True)), "stream_options": {"include_usage": True}})
        openai_stream = _events(await (await client.post("/v1/chat/completions", data=body)).read(), b"\n\n")
        path = "/v1beta/models/bench-gemini:streamGenerateContent"
        resp = await client.post(path + "?alt=sse", data=load.gemini_body(True))
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = await resp.read()
        assert raw.endswith(b"\r\n\r\n") and b"\n\n" not in raw  # events ended by CRLF CRLF, as Google's
        pieces = _events(raw, b"\r\n\r\n")
        texts = [c["choices"][0]["delta"]["content"] for c in openai_stream if c["choices"]]
        assert [p["candidates"][0]["content"]["parts"][0]["text"] for p in pieces] == texts
        assert len(pieces) == CHUNKS
        assert [p["usageMetadata"]["candidatesTokenCount"] for p in pieces] == list(range(1, CHUNKS + 1))
        assert [p["candidates"][0].get("finishReason") for p in pieces] == [None] * (CHUNKS - 1) + ["STOP"]

        array = await (await client.post(path, data=load.gemini_body(True))).json()  # without alt=sse
        assert array == pieces


def test_the_load_generator_reads_gemini_streams() -> None:
    answers = upstream.Answers(CHUNKS).gemini("m")
    sse, array = b"".join(answers.events), b"".join(answers.array)
    for whole in (sse, array):
        assert load.GEMINI.stream_done(whole[-load.TAIL :])
    assert not load.GEMINI.stream_done(b"".join(answers.events[:-1])[-load.TAIL :])  # no finishReason yet
    assert not load.GEMINI.stream_done(sse[-load.TAIL : -2])  # cut inside its last event
    assert load.GEMINI.has_token(answers.events[0])
    assert not load.GEMINI.has_token(b'data: {"candidates":[{"content":{"parts":[{"text":""}]}}]}\r\n\r\n')
    assert load.GEMINI.target(True, "m") == "/v1beta/models/m:streamGenerateContent?alt=sse"
    assert load.GEMINI.target(False, "m") == "/v1beta/models/m:generateContent"
    assert load.OPENAI.target(True, "m") == "/v1/chat/completions"
    body = json.loads(load.gemini_body(True))
    assert body == {
        "contents": [{"role": "user", "parts": [{"text": load.PROMPT}]}],
        "generationConfig": {"maxOutputTokens": load.MAX_TOKENS},
    }


def test_every_translated_mode_is_compared_with_the_plain_route_of_its_kind() -> None:
    assert run.TRANSLATED == {
        "messages": "non-stream",
        "messages-stream": "stream",
        "gemini": "non-stream",
        "gemini-stream": "stream",
        "on-gemini": "non-stream",
        "on-gemini-stream": "stream",
    }
    assert {run.family(m) for m in run.TRANSLATED} == set(run.FAMILIES)
    assert [m for m in run.MODES if run.is_stream(m)] == ["stream", "messages-stream", "gemini-stream",
                                                          "on-gemini-stream"]  # fmt: skip
    assert run.api_of("gemini-stream") is load.GEMINI and run.api_of("on-gemini") is load.OPENAI
    assert run.model_of("on-gemini-stream") == run.GEMINI_MODEL and run.model_of("gemini") == run.MODEL
    assert run.usage_route(load.GEMINI) == "/v1/generateContent"  # what the gateway logs for Gemini clients
    assert run.usage_route(load.OPENAI) == "/v1/chat/completions"


def test_the_adapter_cases_give_what_the_client_reads() -> None:
    from bench import adapters

    found = adapters.cases()
    assert found["stream"]().endswith(b"data: [DONE]\n\n")
    assert found["on-gemini-stream"]().endswith(b"data: [DONE]\n\n")
    assert load.GEMINI.stream_done(found["gemini-stream"]()[-load.TAIL :])
    assert b'"candidates"' in found["gemini"]() and b'"choices"' in found["on-gemini"]()
