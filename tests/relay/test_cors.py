"""CORS on /v1 (gateway/relay/cors.py): preflights, the headers on every /v1 answer, none on the
cookie-authenticated surface, and a page on another origin calling the gateway in a real Chromium."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from structlog.testing import capture_logs

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay import cors
from tests.browser import test_browser
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import Gateway, gateway_config
from tests.support.seed import user_with_token

EXPOSE = "X-Request-Id, X-Sharekey-Provider, Retry-After, x-should-retry"
ORIGIN = "https://chat.example.org"
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}

MakeGateway = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gw(config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any) -> MakeGateway:
    """Gateways (test_proxy's settings) with the given `server.cors_origins`, sharing one store."""
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")

    async def make(origins: Iterable[str] = ("*",), **limits: Any) -> Gateway:
        cfg = gateway_config(config, **limits).replace("server", cors_origins=tuple(origins))
        app = create_app(cfg)
        return Gateway(await aiohttp_client(app), app, token, donor, pool, cfg)

    return make


def preflight_headers(origin: str | None = ORIGIN, requested: str | None = "authorization,content-type") -> dict:
    headers = {"Access-Control-Request-Method": "POST"}
    if origin is not None:
        headers["Origin"] = origin
    if requested is not None:
        headers["Access-Control-Request-Headers"] = requested
    return headers


def cors_headers(resp: Any) -> dict[str, str]:
    return {k: v for k, v in resp.headers.items() if k.lower().startswith("access-control-")}


# --- preflights ---------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1", "/v1/models", "/v1/messages", "/v1/no/such/route"])
async def test_preflight_needs_no_token(make_gw: MakeGateway, path: str) -> None:
    gw = await make_gw()
    resp = await gw.client.options(path, headers=preflight_headers())
    assert resp.status == 204
    assert await resp.read() == b""
    assert cors_headers(resp) == {
        "Access-Control-Allow-Origin": "*",
        "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
        "Access-Control-Allow-Headers": "authorization,content-type",
        "Access-Control-Max-Age": "86400",
        "Access-Control-Expose-Headers": EXPOSE,
    }
    assert "Access-Control-Allow-Credentials" not in resp.headers
    assert len(resp.headers["X-Request-Id"]) == 32


async def test_preflight_echoes_only_header_names(make_gw: MakeGateway) -> None:
    gw = await make_gw()
    # What openai-node with dangerouslyAllowBrowser asks for: echoed exactly.
    sdk = (
        "authorization,content-type,x-stainless-arch,x-stainless-lang,x-stainless-os,"
        "x-stainless-package-version,x-stainless-retry-count,x-stainless-runtime,x-stainless-runtime-version"
    )
    resp = await gw.client.options("/v1/chat/completions", headers=preflight_headers(requested=sdk))
    assert resp.headers["Access-Control-Allow-Headers"] == sdk
    resp = await gw.client.options(
        "/v1/chat/completions", headers=preflight_headers(requested="X-Api-Key, Anthropic-Version")
    )
    assert resp.headers["Access-Control-Allow-Headers"] == "X-Api-Key, Anthropic-Version"

    resp = await gw.client.options(
        "/v1/chat/completions", headers=preflight_headers(requested='authorization, x-a;b, "c", content-type, (d)')
    )
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Headers"] == "authorization,content-type"

    huge = ",".join(f"x-header-{i:04d}" for i in range(500))  # 6,999 characters (aiohttp takes 8,190)
    resp = await gw.client.options("/v1/chat/completions", headers=preflight_headers(requested=huge))
    echoed = resp.headers["Access-Control-Allow-Headers"]
    assert len(echoed) <= cors.MAX_ALLOW_HEADERS and huge.startswith(echoed + ",")

    resp = await gw.client.options("/v1/chat/completions", headers=preflight_headers(requested=None))
    assert resp.status == 204 and "Access-Control-Allow-Headers" not in resp.headers


def test_allow_headers() -> None:
    assert cors.allow_headers("authorization,content-type") == "authorization,content-type"
    assert cors.allow_headers("a\tb,c") == "c"
    assert cors.allow_headers("ä,x-ok") == "x-ok"
    assert cors.allow_headers(",,, ,") == ",,, ,"  # harmless: browsers read no names from it
    assert cors.allow_headers("x" * 5000) == ""
    assert len(cors.allow_headers("a" * 2000 + ",b" * 100)) <= cors.MAX_ALLOW_HEADERS


async def test_preflight_with_listed_origins(make_gw: MakeGateway) -> None:
    gw = await make_gw([ORIGIN, "http://localhost:3000/"])  # a trailing slash in the config is forgiven
    for origin in (ORIGIN, "http://localhost:3000"):
        resp = await gw.client.options("/v1/chat/completions", headers=preflight_headers(origin))
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == origin
        assert resp.headers["Access-Control-Allow-Methods"] == "GET, POST, OPTIONS"
        assert resp.headers["Access-Control-Allow-Headers"] == "authorization,content-type"
        assert resp.headers["Access-Control-Max-Age"] == "86400"
        assert resp.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Credentials" not in resp.headers

    # Not listed (or no Origin at all): still 204, but nothing a browser would accept.
    for origin in ("https://evil.example", "https://chat.example.org.evil.example", "null", None):
        resp = await gw.client.options("/v1/chat/completions", headers=preflight_headers(origin))
        assert resp.status == 204, origin
        assert cors_headers(resp) == {}, origin
        assert resp.headers["Vary"] == "Origin"


async def test_cors_off(make_gw: MakeGateway, fake_upstream: FakeUpstream) -> None:
    gw = await make_gw([])
    resp = await gw.client.options("/v1/chat/completions", headers=preflight_headers())
    assert resp.status == 405
    assert (await resp.json())["error"]["type"] == "invalid_request_error"
    assert cors_headers(resp) == {}
    await gw.add_key(fake_upstream)
    auth = {"Authorization": f"Bearer {gw.token}", "Origin": ORIGIN}
    resp = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert resp.status == 200
    assert cors_headers(resp) == {} and "Vary" not in resp.headers


# --- every /v1 answer ---------------------------------------------------------------------------


async def v1_answers(gw: Gateway, fake_upstream: FakeUpstream, origin: str) -> dict[str, Any]:
    """One answer of each kind, all sent with `Origin`; checks each status on the way."""
    auth = {"Authorization": f"Bearer {gw.token}", "Origin": origin}
    await gw.add_key(fake_upstream, daily_limit=2)
    out: dict[str, Any] = {}

    async def keep(name: str, resp: Any, status: int) -> Any:
        body = await resp.read()
        assert resp.status == status, (name, body)
        out[name] = resp
        return body

    body = await keep("chat", await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth), 200)
    assert json.loads(body)["choices"][0]["message"]["content"] == fake_upstream.reply
    body = await keep(
        "stream", await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=auth), 200
    )
    assert out["stream"].headers["Content-Type"].startswith("text/event-stream") and b"[DONE]" in body
    await keep("models", await gw.client.get("/v1/models", headers=auth), 200)
    await keep("daily limit", await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth), 429)
    bad = {"Authorization": "Bearer shk_nope", "Origin": origin}
    await keep("bad token", await gw.client.post("/v1/chat/completions", json=CHAT, headers=bad), 401)
    await keep("no token", await gw.client.get("/v1/models", headers={"Origin": origin}), 401)
    other = {**CHAT, "model": "no-such-model"}
    await keep("unknown model", await gw.client.post("/v1/chat/completions", json=other, headers=auth), 404)
    await keep("unknown route", await gw.client.post("/v1/nope", json=CHAT, headers=auth), 404)
    await keep("wrong method", await gw.client.get("/v1/chat/completions", headers=auth), 405)
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 70_000}]}
    await keep("too large", await gw.client.post("/v1/chat/completions", json=big, headers=auth), 413)
    return out


async def test_every_v1_answer_carries_cors(make_gw: MakeGateway, fake_upstream: FakeUpstream) -> None:
    gw = await make_gw(max_body_bytes=65536)
    answers = await v1_answers(gw, fake_upstream, ORIGIN)
    for name, resp in answers.items():
        assert resp.headers.get("Access-Control-Allow-Origin") == "*", name
        assert resp.headers.get("Access-Control-Expose-Headers") == EXPOSE, name
        assert "Access-Control-Allow-Credentials" not in resp.headers, name
        assert len(resp.headers["X-Request-Id"]) == 32, name
    assert answers["chat"].headers["X-Sharekey-Provider"] == "donor"
    assert answers["stream"].headers["X-Sharekey-Provider"] == "donor"
    assert int(answers["daily limit"].headers["Retry-After"]) > 0


async def test_listed_origin_is_echoed_on_every_v1_answer(make_gw: MakeGateway, fake_upstream: FakeUpstream) -> None:
    gw = await make_gw([ORIGIN], max_body_bytes=65536)
    for name, resp in (await v1_answers(gw, fake_upstream, ORIGIN)).items():
        assert resp.headers.get("Access-Control-Allow-Origin") == ORIGIN, name
        assert resp.headers.get("Access-Control-Expose-Headers") == EXPOSE, name
        assert "Origin" in resp.headers["Vary"], name
    resp = await gw.client.get(
        "/v1/models", headers={"Authorization": f"Bearer {gw.token}", "Origin": "https://x.example"}
    )
    assert resp.status == 200 and cors_headers(resp) == {}
    assert resp.headers["Vary"] == "Origin"


async def test_502_carries_cors(make_gw: MakeGateway, fake_upstream: FakeUpstream) -> None:
    gw = await make_gw()
    await gw.add_key(fake_upstream)
    fake_upstream.fail_next(500, times=5)
    auth = {"Authorization": f"Bearer {gw.token}", "Origin": ORIGIN}
    resp = await gw.client.post("/v1/chat/completions", json=CHAT, headers=auth)
    assert resp.status == 502
    assert resp.headers["Access-Control-Allow-Origin"] == "*"
    assert resp.headers["Access-Control-Expose-Headers"] == EXPOSE


async def test_no_cors_outside_v1(make_gw: MakeGateway) -> None:
    gw = await make_gw()
    origin = {"Origin": ORIGIN}
    for method, path in [
        ("GET", "/api/shared-keys"),
        ("OPTIONS", "/api/shared-keys"),
        ("POST", "/api/tokens"),
        ("GET", "/keys"),
        ("GET", "/tokens"),
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/v1beta/models"),
        ("OPTIONS", "/v1beta/models"),
    ]:
        resp = await gw.client.request(method, path, headers=origin, allow_redirects=False)
        await resp.read()
        assert resp.status != 204, (method, path)
        assert cors_headers(resp) == {}, (method, path, cors_headers(resp))
    # The public board keeps its own `*`, and nothing of /v1's.
    resp = await gw.client.get("/api/shared-keys/thanks-board", headers=origin)
    assert resp.status == 200
    assert cors_headers(resp) == {"Access-Control-Allow-Origin": "*"}


# --- a page on another origin, in a real Chromium -------------------------------------------------

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>a chat app on another origin</title>
<script>
async function chat(base, token, stream) {
  try {
    const resp = await fetch(base + "/chat/completions", {
      method: "POST",
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"},
      body: JSON.stringify({model: "gpt-4o-mini", messages: [{role: "user", content: "hi"}], stream}),
    });
    const out = {
      status: resp.status,
      provider: resp.headers.get("X-Sharekey-Provider"),
      requestId: resp.headers.get("X-Request-Id"),
    };
    if (!stream) {
      const body = await resp.json();
      out.text = resp.ok ? body.choices[0].message.content : body.error.message;
      return out;
    }
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "", text = "", reads = 0;
    for (;;) {
      const {done, value} = await reader.read();
      if (done) break;
      reads += 1;
      buffer += decoder.decode(value, {stream: true});
    }
    for (const line of buffer.split("\\n")) {
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const event = JSON.parse(line.slice(6));
      for (const choice of event.choices || []) text += (choice.delta && choice.delta.content) || "";
    }
    out.text = text;
    out.done = buffer.includes("data: [DONE]");
    out.reads = reads;
    return out;
  } catch (e) {
    return {error: e.name, message: String(e.message)};
  }
}
</script>
<h1>chat</h1>
"""


def chromium_only(test: Callable[..., Any]) -> Callable[..., Any]:
    for mark in test_browser.pytestmark:  # playwright and /usr/bin/chromium, or skip saying which
        test = mark(test)
    return test


browser = test_browser.browser  # the fixture: Debian's Chromium, headless


@pytest.fixture
async def page_site(aiohttp_server: Any) -> TestServer:
    """The chat app's own origin: another port, so every call to the gateway is cross-origin."""

    async def index(request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", index)
    return await aiohttp_server(app, host="127.0.0.1")


@pytest.fixture
async def chat_page(browser: Any, page_site: TestServer) -> AsyncIterator[Any]:
    context = await browser.new_context()
    page = await context.new_page()
    page.set_default_timeout(10_000)
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    await page.goto(str(page_site.make_url("/")))
    yield page
    await context.close()
    assert errors == [], errors


def origin_of(server: TestServer) -> str:
    return str(server.make_url("/")).rstrip("/")


async def in_page(page: Any, gw: Gateway, stream: bool, token: str | None = None) -> dict[str, Any]:
    return await page.evaluate("([b, t, s]) => chat(b, t, s)", [gw.base_url, token or gw.token, stream])


@chromium_only
async def test_a_page_on_another_origin_chats_through_the_gateway(
    make_gw: MakeGateway, fake_upstream: FakeUpstream, chat_page: Any, page_site: TestServer
) -> None:
    gw = await make_gw()
    assert origin_of(page_site) != origin_of(gw.client.server)
    await gw.add_key(fake_upstream)
    with capture_logs() as logs:
        answer = await in_page(chat_page, gw, stream=False)
        streamed = await in_page(chat_page, gw, stream=True)
        refused = await in_page(chat_page, gw, stream=False, token="shk_not_a_token")
    assert answer["status"] == 200, answer
    assert answer["text"] == fake_upstream.reply
    assert answer["provider"] == "donor"
    assert len(answer["requestId"]) == 32
    assert streamed["status"] == 200, streamed
    assert streamed["text"] == fake_upstream.reply and streamed["done"] is True
    assert streamed["provider"] == "donor"
    # An error is readable too: the page can tell the user the token is wrong.
    assert refused["status"] == 401, refused
    assert "Invalid or missing gateway token" in refused["text"]
    assert refused["provider"] is None and len(refused["requestId"]) == 32
    # Authorization and a JSON Content-Type make the browser ask first.
    requests = [(e["method"], e["path"]) for e in logs if e.get("event") == "request"]
    assert ("OPTIONS", "/v1/chat/completions") in requests, requests
    assert requests.count(("POST", "/v1/chat/completions")) == 3
    bodies = [r.body for r in fake_upstream.calls("/v1/chat/completions")]
    assert [b["stream"] for b in bodies] == [False, True]


@chromium_only
async def test_the_page_origin_listed_by_name(
    make_gw: MakeGateway, fake_upstream: FakeUpstream, chat_page: Any, page_site: TestServer
) -> None:
    gw = await make_gw(["https://chat.example.org", origin_of(page_site)])
    await gw.add_key(fake_upstream)
    answer = await in_page(chat_page, gw, stream=True)
    assert (answer["status"], answer["text"], answer["provider"]) == (200, fake_upstream.reply, "donor")


@chromium_only
async def test_a_page_on_an_origin_not_listed_is_refused_by_the_browser(
    make_gw: MakeGateway, fake_upstream: FakeUpstream, chat_page: Any
) -> None:
    gw = await make_gw(["https://chat.example.org"])
    await gw.add_key(fake_upstream)
    for stream in (False, True):
        answer = await in_page(chat_page, gw, stream=stream)
        assert answer["error"] == "TypeError", answer  # "Failed to fetch": the page learns nothing
    assert fake_upstream.calls("/v1/chat/completions") == []  # the preflight failed: nothing was sent


@chromium_only
async def test_cors_off_is_refused_by_the_browser(
    make_gw: MakeGateway, fake_upstream: FakeUpstream, chat_page: Any
) -> None:
    gw = await make_gw([])
    await gw.add_key(fake_upstream)
    answer = await in_page(chat_page, gw, stream=False)
    assert answer["error"] == "TypeError", answer
    assert fake_upstream.calls("/v1/chat/completions") == []
