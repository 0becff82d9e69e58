"""Every format on every other's keys, through the gateway, driven by the real SDKs (DESIGN.md
"Gemini": translation between all three formats both ways): the google-genai SDK on `openai` and
`anthropic` keys, the openai and anthropic SDKs on `gemini` keys. Fake upstreams on loopback,
real PostgreSQL and Redis; usage rows and the same commit point for every pair."""

from __future__ import annotations

import anthropic
import pytest
from google.genai import types

from tests.relay.test_gemini import gemini_key, sdk
from tests.support.fake_gemini import FakeGemini
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import DONOR_KEY, Gateway

MODEL = "gemini-2.5-flash"
WEATHER = types.FunctionDeclaration(
    name="weather",
    description="The weather in a city",
    parameters=types.Schema(type=types.Type.OBJECT, properties={"city": types.Schema(type=types.Type.STRING)}),
)


async def other_key(gw: Gateway, up: FakeUpstream, api_format: str) -> str:
    up.models = [MODEL]
    return await gw.add_key(up, api_key=DONOR_KEY, models=[MODEL], api_format=api_format)


@pytest.mark.parametrize("api_format", ["openai", "anthropic"])
async def test_the_genai_sdk_on_openai_and_anthropic_keys(
    gw: Gateway, fake_upstream: FakeUpstream, api_format: str
) -> None:
    await other_key(gw, fake_upstream, api_format)
    client = sdk(gw).aio.models
    answer = await client.generate_content(
        model=MODEL,
        contents="hi",
        config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=64),
    )
    assert answer.text == fake_upstream.reply
    sent = fake_upstream.requests[-1]
    path = "/v1/chat/completions" if api_format == "openai" else "/v1/messages"
    assert sent.path == path and sent.body["model"] == MODEL and sent.body["max_tokens"] == 64
    streamed = [c async for c in await client.generate_content_stream(model=MODEL, contents="hi")]
    assert "".join(c.text or "" for c in streamed) == fake_upstream.reply
    assert streamed[-1].candidates[0].finish_reason == types.FinishReason.STOP
    assert streamed[-1].usage_metadata is not None and streamed[-1].usage_metadata.prompt_token_count > 0
    rows = await gw.logs()
    assert [(r["status"], r["committed"]) for r in rows] == [("ok", True), ("ok", True)]
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 for r in rows)


@pytest.mark.parametrize("api_format", ["openai", "anthropic"])
async def test_a_function_call_round_trip_from_gemini_on_other_keys(
    gw: Gateway, fake_upstream: FakeUpstream, api_format: str
) -> None:
    await other_key(gw, fake_upstream, api_format)
    config = types.GenerateContentConfig(tools=[types.Tool(function_declarations=[WEATHER])])
    client = sdk(gw).aio.models
    first = await client.generate_content(model=MODEL, contents="weather in Paris?", config=config)
    [call] = first.function_calls or []
    assert call.name == "weather"
    history = [
        types.Content(role="user", parts=[types.Part(text="weather in Paris?")]),
        first.candidates[0].content,
        types.Content(
            role="user", parts=[types.Part.from_function_response(name="weather", response={"sky": "clear"})]
        ),
    ]
    second = await client.generate_content(model=MODEL, contents=history, config=config)
    assert "clear" in (second.text or "")


async def test_the_openai_sdk_on_a_gemini_key(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    chat = gw.sdk().chat.completions
    done = await chat.create(
        model=MODEL, messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    )
    assert done.choices[0].message.content == fake_gemini.reply and done.choices[0].finish_reason == "stop"
    assert done.usage is not None and (done.usage.prompt_tokens, done.usage.completion_tokens) == (11, 13)
    sent = fake_gemini.requests[-1]
    assert sent.path == f"/v1beta/models/{MODEL}:generateContent" and "model" not in sent.body
    assert sent.body["systemInstruction"] == {"parts": [{"text": "be brief"}]}
    stream = await chat.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], stream=True)
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == fake_gemini.reply
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {"type": "object"}}}]
    called = await chat.create(model=MODEL, messages=[{"role": "user", "content": "weather?"}], tools=tools)
    [tool_call] = called.choices[0].message.tool_calls or []
    assert (tool_call.function.name, called.choices[0].finish_reason) == ("weather", "tool_calls")
    rows = await gw.logs()
    assert [(r["status"], r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [("ok", 11, 13)] * 3


async def test_the_anthropic_sdk_on_a_gemini_key(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    client = anthropic.AsyncAnthropic(base_url=str(gw.client.make_url("")), api_key=gw.token, max_retries=0)
    try:
        message = await client.messages.create(
            model=MODEL, max_tokens=100, system="be brief", messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text" and message.content[0].text == fake_gemini.reply
        assert (message.stop_reason, message.usage.input_tokens, message.usage.output_tokens) == ("end_turn", 11, 13)
        sent = fake_gemini.requests[-1]
        assert sent.path == f"/v1beta/models/{MODEL}:generateContent"
        assert sent.body["generationConfig"]["maxOutputTokens"] == 100
        async with client.messages.stream(
            model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            text = "".join([t async for t in stream.text_stream])
            final = await stream.get_final_message()
        assert text == fake_gemini.reply and final.usage.output_tokens == 13
        assert fake_gemini.requests[-1].path == f"/v1beta/models/{MODEL}:streamGenerateContent"
    finally:
        await client.close()
    rows = await gw.logs()
    assert [(r["status"], r["committed"]) for r in rows] == [("ok", True), ("ok", True)]
