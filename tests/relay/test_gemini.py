"""Gemini's API on the pool (DESIGN.md "Gemini"), end to end: the `google-genai` SDK and raw
HTTP -> gateway (real PostgreSQL, Redis) -> a fake Gemini upstream on `gemini` keys. Tokens as
Google's clients send them, Google's error shape, both stream framings, countTokens, usage and
key states from Google's errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

from gateway.relay.balancer import BALANCER
from tests.support.fake_gemini import KEY, FakeGemini, GeminiFailure, google_error
from tests.support.gateways import Gateway
from tests.web.test_keys_api import Api, api, api_config, make_api, people  # noqa: F401 (fixtures)

ASK = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}
FLASH = "/v1beta/models/gemini-2.5-flash"


async def gemini_key(gw: Gateway, upstream: FakeGemini, **kw: Any) -> str:
    kw.setdefault("models", ["gemini-2.5-flash", "gemini-2.5-pro"])
    key = f"{KEY}-{kw['name']}" if "name" in kw else KEY  # the same key is never stored twice
    upstream.keys.add(key)
    return await gw.add_key(upstream, api_format="gemini", api_key=key, **kw)


class _Closed:
    """A GenAI client closed with the gateway's other SDK clients (its aiohttp session too)."""

    def __init__(self, client: genai.Client) -> None:
        self.client = client

    async def close(self) -> None:
        await self.client.aio.aclose()


def sdk(gw: Gateway, **kw: Any) -> genai.Client:
    base = str(gw.client.make_url("")).rstrip("/")
    client = genai.Client(api_key=kw.pop("api_key", gw.token), http_options=types.HttpOptions(base_url=base, **kw))
    gw.clients.append(_Closed(client))  # type: ignore[arg-type]
    return client


async def test_the_genai_sdk_generates_through_a_gemini_key(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    answer = await sdk(gw).aio.models.generate_content(
        model="gemini-2.5-flash",
        contents="hi",
        config=types.GenerateContentConfig(system_instruction="be brief", max_output_tokens=50),
    )
    assert answer.text == fake_gemini.reply
    assert answer.usage_metadata is not None and answer.usage_metadata.thoughts_token_count == 5
    [sent] = fake_gemini.requests
    assert sent.path == f"{FLASH}:generateContent"
    assert sent.headers["x-goog-api-key"] == KEY and gw.token not in json.dumps(sent.headers)
    assert sent.body["systemInstruction"]["parts"][0]["text"] == "be brief"
    assert sent.body["generationConfig"]["maxOutputTokens"] == 50
    [row] = await gw.logs()
    assert (row["status"], row["committed"], row["model_used"]) == ("ok", True, "gemini-2.5-flash")
    assert (row["prompt_tokens"], row["completion_tokens"]) == (11, 13), "thoughts are billed as output"


async def test_the_genai_sdk_streams_sse(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    chunks = [
        c async for c in await sdk(gw).aio.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")
    ]
    assert "".join(c.text or "" for c in chunks) == fake_gemini.reply
    assert len(chunks) == fake_gemini.chunks
    assert fake_gemini.requests[0].path == f"{FLASH}:streamGenerateContent"
    assert fake_gemini.requests[0].query == "alt=sse"
    [row] = await gw.logs()
    assert (row["status"], row["prompt_tokens"], row["completion_tokens"]) == ("ok", 11, 13)
    assert row["ttft_ms"] is not None


async def test_a_stream_without_alt_sse_is_one_json_array(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    resp = await gw.post(f"{FLASH}:streamGenerateContent", ASK)
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
    chunks = json.loads(await resp.text())
    assert isinstance(chunks, list) and len(chunks) == fake_gemini.chunks
    assert "".join(c["candidates"][0]["content"]["parts"][0]["text"] for c in chunks) == fake_gemini.reply
    assert chunks[-1]["candidates"][0]["finishReason"] == "STOP"
    assert fake_gemini.requests[0].query == "alt=sse", "the upstream is always asked for SSE"


async def test_a_stream_cut_after_the_commit_still_closes_the_array(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    fake_gemini.fail_next(GeminiFailure(200, drop_after=1))
    resp = await gw.post(f"{FLASH}:streamGenerateContent", ASK)
    chunks = json.loads(await resp.text())
    assert chunks[-1]["error"]["status"] == "INTERNAL" and "broke off" in chunks[-1]["error"]["message"]
    assert len(chunks) == 2
    [row] = await gw.logs()
    assert row["status"] == "stream_error"


@pytest.mark.parametrize("how", ["x-goog-api-key", "query", "bearer"])
async def test_the_token_as_google_clients_send_it(gw: Gateway, fake_gemini: FakeGemini, how: str) -> None:
    await gemini_key(gw, fake_gemini)
    headers = {"x-goog-api-key": gw.token} if how == "x-goog-api-key" else {}
    headers |= {"Authorization": f"Bearer {gw.token}"} if how == "bearer" else {}
    query = f"?key={gw.token}" if how == "query" else ""
    resp = await gw.client.post(f"{FLASH}:generateContent{query}", data=json.dumps(ASK), headers=headers)
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["candidates"][0]["content"]["parts"][0]["text"] == fake_gemini.reply


async def test_errors_are_in_googles_shape(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    resp = await gw.client.post(f"{FLASH}:generateContent", data=json.dumps(ASK), headers={"x-goog-api-key": "sk-x"})
    assert resp.status == 401
    assert (await resp.json())["error"] | {"message": ""} == {"code": 401, "message": "", "status": "UNAUTHENTICATED"}
    with pytest.raises(genai_errors.ClientError) as raised:
        await sdk(gw).aio.models.generate_content(model="gemini-9", contents="hi")
    assert raised.value.code == 404 and raised.value.status == "NOT_FOUND"
    bad = await gw.post(f"{FLASH}:generateContent", {"contents": "hi"})
    assert (bad.status, (await bad.json())["error"]["status"]) == (400, "INVALID_ARGUMENT")
    unknown = await gw.post("/v1beta/models/gemini-2.5-flash:embedContent", ASK)
    assert (unknown.status, (await unknown.json())["error"]["status"]) == (400, "INVALID_ARGUMENT")
    capped = await gw.post(f"{FLASH}:generateContent", {**ASK, "generationConfig": {"maxOutputTokens": 5000}})
    assert (await capped.json())["error"][
        "message"
    ] == "generationConfig.maxOutputTokens may be at most 4096 on this gateway."
    many = await gw.post(f"{FLASH}:generateContent", {**ASK, "generation_config": {"candidate_count": 99}})
    assert (await many.json())["error"]["message"].startswith("generationConfig.candidate_count must be an integer")
    paid = await gw.post(f"{FLASH}:generateContent", {**ASK, "tools": [{"googleSearch": {}}]})
    body = await paid.json()
    assert paid.status == 400 and "web_search" in body["error"]["message"]
    assert fake_gemini.requests == [], "nothing reached the key"


async def test_models_list_and_get(gw: Gateway, fake_gemini: FakeGemini) -> None:
    await gemini_key(gw, fake_gemini)
    listed = await gw.client.get("/v1beta/models", headers={"x-goog-api-key": gw.token})
    names = [m["name"] for m in (await listed.json())["models"]]
    assert names == ["models/gemini-2.5-flash", "models/gemini-2.5-pro"]
    models = [m.name async for m in await sdk(gw).aio.models.list()]
    assert models == names
    one = await gw.client.get(FLASH, headers={"x-goog-api-key": gw.token})
    assert (await one.json())["supportedGenerationMethods"] == [
        "generateContent",
        "streamGenerateContent",
        "countTokens",
    ]
    missing = await gw.client.get("/v1beta/models/gpt-9", headers={"x-goog-api-key": gw.token})
    assert (missing.status, (await missing.json())["error"]["status"]) == (404, "NOT_FOUND")


async def test_count_tokens_asks_a_gemini_key_or_estimates(gw: Gateway, fake_gemini: FakeGemini) -> None:
    counted = await gw.post(f"{FLASH}:countTokens", ASK)
    assert counted.status == 200 and (await counted.json())["totalTokens"] >= 1, "estimated: no key"
    await gemini_key(gw, fake_gemini)
    answer = await sdk(gw).aio.models.count_tokens(model="gemini-2.5-flash", contents="hi")
    assert answer.total_tokens == 7
    assert fake_gemini.requests[-1].path == f"{FLASH}:countTokens"
    assert (await gw.app[BALANCER].usage_today()) == {}, "a count reserves nothing"


@pytest.fixture
async def second_gemini(aiohttp_server: Any) -> FakeGemini:
    other = FakeGemini(reply="Hello from the second Gemini")
    other.server = await aiohttp_server(other.app)
    return other


async def test_googles_bad_key_answer_disables_the_key(
    gw: Gateway, fake_gemini: FakeGemini, second_gemini: FakeGemini
) -> None:
    bad = await gemini_key(gw, fake_gemini, name="bad")
    await gemini_key(gw, second_gemini, name="good")
    fake_gemini.keys = {"another"}  # Google: 400 API_KEY_INVALID
    for _ in range(2):
        assert (await gw.post(f"{FLASH}:generateContent", ASK)).status == 200
    await gw.flush()
    row = await gw.key_row(bad)
    assert (row["status"], row["disabled_by"]) == ("disabled", "upstream")


@pytest.mark.parametrize(
    ("details", "spent", "cooled"),
    [
        ([{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}], True, None),
        ([{"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}, {"retryDelay": "38s"}], False, 38),
    ],
)
async def test_resource_exhausted_per_day_spends_per_minute_cools(
    gw: Gateway,
    fake_gemini: FakeGemini,
    second_gemini: FakeGemini,
    details: list[dict[str, Any]],
    spent: bool,
    cooled: int | None,
) -> None:
    key = await gemini_key(gw, fake_gemini, name="limited")
    await gemini_key(gw, second_gemini, name="good")
    quota = google_error(429, "You exceeded your current quota, please check your plan and billing details.")
    quota["error"]["details"] = details
    fake_gemini.fail_next(GeminiFailure(429, quota), times=2)
    for _ in range(2):
        assert (await gw.post(f"{FLASH}:generateContent", ASK)).status == 200
    await gw.flush()
    row = await gw.key_row(key)
    cooling = (await gw.app[BALANCER].cooling())[key]
    assert (row["spent_until"] is not None) is spent
    if cooled is not None:
        assert cooled - 5 < cooling <= cooled and row["status"] == "cooling"
    else:
        assert cooling > 3600


async def test_a_gemini_key_from_its_bare_origin(api: Api, fake_gemini: FakeGemini) -> None:  # noqa: F811
    fields = {"name": "studio", "base_url": fake_gemini.origin, "api_key": KEY, "api_format": "gemini"}
    reply = await api.call("POST", "/api/shared-keys", {**fields, "available_models": ["gemini-2.5-flash"]})
    assert reply.status == 201, reply
    assert reply.body["base_url"] == fake_gemini.base_url, "a bare origin gets /v1beta"
    assert [r.path for r in fake_gemini.requests] == ["/v1beta/models", f"{FLASH}:generateContent"]
    assert fake_gemini.requests[1].body["generationConfig"] == {"maxOutputTokens": 1}
    test = {"base_url": fake_gemini.origin, "api_key": "AIza-wrong", "api_format": "gemini"}
    wrong = await api.call("POST", "/api/shared-keys/test", test)
    assert wrong.body["ok"] is False and wrong.body["error"] == "the upstream rejected the key"
    absent = await api.call("POST", "/api/shared-keys/test", {**test, "api_key": KEY, "model": "gemini-9"})
    assert absent.body["error"] == "the upstream does not offer: gemini-9"
    assert KEY not in "".join(api.seen)
