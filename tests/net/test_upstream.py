"""Upstream requests on the h1 pool: connect-time SSRF refusal, no redirects, header allow-list, error mapping.

Every connection here goes to a loopback listener. Refusal tests count the connections a
listener accepted, and the positive controls prove the same listener *is* reached when private
upstreams are allowed, so a zero means "refused", not "listener broken".
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from yarl import URL

from gateway import config as config_mod
from gateway.net import h1, upstream
from gateway.net.upstream import REDIRECTED, UNREACHABLE, UpstreamError
from tests.support.fake_upstream import Failure, FakeUpstream

KEY = "sk-upstream-test-0123456789abcdef"


class Listener:
    """A plain TCP server on one or more loopback addresses (one shared port) that counts accepts."""

    def __init__(self) -> None:
        self.accepted = 0
        self.port = 0
        self._servers: list[asyncio.Server] = []

    async def start(self, hosts: tuple[str, ...]) -> None:
        for host in hosts:
            server = await asyncio.start_server(self._on_connect, host, self.port)
            self.port = server.sockets[0].getsockname()[1]
            self._servers.append(server)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()

    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n")
            writer.write(b"Connection: close\r\n\r\n{}")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def load_config(tmp_path: Path, *, allow_private: bool) -> config_mod.Config:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    cfg = config_mod.load(empty, env={"SHAREKEY_SECURITY_ALLOW_HTTP_UPSTREAMS": "true"})
    return cfg.replace("security", allow_private_upstreams=allow_private)


@pytest.fixture
async def listen() -> AsyncIterator[Callable[..., Awaitable[Listener]]]:
    made: list[Listener] = []

    async def start(*hosts: str) -> Listener:
        if "::1" in hosts and not ipv6_loopback():
            pytest.skip("no IPv6 loopback on this machine")
        listener = Listener()
        made.append(listener)
        await listener.start(hosts)
        return listener

    yield start
    for listener in made:
        await listener.stop()


@pytest.fixture
async def pools() -> AsyncIterator[Callable[[bool], h1.Pool]]:
    made: list[h1.Pool] = []

    def make(allow_private: bool) -> h1.Pool:
        pool = h1.Pool(allow_private=allow_private, connect_timeout=2)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


# (host as written in the URL, loopback addresses the listener binds)
LOOPBACK_FORMS = [
    ("127.0.0.1", ("127.0.0.1",)),
    ("127.0.0.2", ("127.0.0.2",)),
    ("[::1]", ("::1",)),
    ("[::ffff:127.0.0.1]", ("127.0.0.1",)),
    ("0.0.0.0", ("127.0.0.1",)),
    ("localhost", ("127.0.0.1", "::1")),
    ("0x7f.1", ("127.0.0.1",)),  # not an address literal: getaddrinfo turns the *name* into 127.0.0.1
    ("2130706433", ("127.0.0.1",)),  # the one-number IPv4 spelling, likewise
]


@pytest.mark.parametrize(("host", "binds"), LOOPBACK_FORMS)
async def test_loopback_refused_at_connect_time(host: str, binds: tuple[str, ...], listen, pools) -> None:  # type: ignore[no-untyped-def]
    listener = await listen(*binds)
    url = f"http://{host}:{listener.port}/v1/models"

    with pytest.raises(UpstreamError) as e:
        async with upstream.request(pools(False), "GET", url, api_key=KEY):
            pass
    assert (e.value.kind, e.value.cause) == ("unreachable", "refused_address")
    assert e.value.message == str(e.value) == UNREACHABLE
    await asyncio.sleep(0.05)  # let any connection that did get through be accepted
    assert listener.accepted == 0


@pytest.mark.parametrize(("host", "binds"), LOOPBACK_FORMS)
async def test_the_hot_path_pool_refuses_loopback_at_connect_time(host: str, binds: tuple[str, ...], listen) -> None:  # type: ignore[no-untyped-def]
    listener = await listen(*binds)
    url = URL(f"http://{host}:{listener.port}/v1/chat/completions")
    strict = h1.Pool(allow_private=False, connect_timeout=2)
    permissive = h1.Pool(allow_private=True, connect_timeout=2)
    try:
        with pytest.raises(OSError):  # RefusedAddress, from the resolver or the socket factory
            await strict.request(url, b"", b"{}")
        await asyncio.sleep(0.05)  # let any connection that did get through be accepted
        assert listener.accepted == 0
        resp = await permissive.request(url, b"", b"{}")  # the positive control: the same URL, allowed
        assert (resp.status, await resp.read()) == (200, b"{}")
        assert listener.accepted == 1
    finally:
        await strict.close()
        await permissive.close()


@pytest.mark.parametrize(("host", "binds"), LOOPBACK_FORMS)
async def test_positive_control_listener_is_reachable_when_private_allowed(  # type: ignore[no-untyped-def]
    host: str, binds: tuple[str, ...], listen, pools
) -> None:
    listener = await listen(*binds)
    async with upstream.request(pools(True), "GET", f"http://{host}:{listener.port}/v1", api_key=KEY) as resp:
        assert resp.status == 200
        assert await resp.read() == b"{}"
    assert listener.accepted == 1


async def test_private_allowed_reaches_fake_upstream_with_allow_listed_headers(  # type: ignore[no-untyped-def]
    fake_upstream: FakeUpstream, pools
) -> None:
    async with upstream.request(pools(True), "GET", f"{fake_upstream.base_url}/models", api_key=KEY) as resp:
        assert resp.status == 200
        body = orjson.loads(await resp.read())
    assert [m["id"] for m in body["data"]] == fake_upstream.models
    (seen,) = fake_upstream.calls("/v1/models")
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["User-Agent"] == upstream.USER_AGENT
    assert seen.headers["User-Agent"].startswith("sharekey/")
    assert seen.headers["Accept"] == "application/json"
    assert seen.headers["Accept-Encoding"] == "identity"
    assert "Cookie" not in seen.headers
    assert not any(h.lower().startswith("x-") for h in seen.headers)
    sent = {h.lower() for h in seen.headers}
    assert sent == {
        "host",
        "content-length",
        "content-type",
        "accept",
        "accept-encoding",
        "authorization",
        "user-agent",
    }


async def test_a_json_body_is_sent_with_the_method_given(fake_upstream: FakeUpstream, pools) -> None:  # type: ignore[no-untyped-def]
    payload = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "ping"}], "max_tokens": 1}
    url = f"{fake_upstream.base_url}/chat/completions"
    async with upstream.request(pools(True), "POST", url, api_key=KEY, json=payload, timeout=5) as resp:
        assert resp.status == 200
        assert "choices" in orjson.loads(await resp.read())
    (seen,) = fake_upstream.calls("/v1/chat/completions")
    assert seen.method == "POST"
    assert seen.body == payload


async def test_fake_upstream_is_refused_without_allow_private(fake_upstream: FakeUpstream, pools) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpstreamError) as e:
        async with upstream.request(pools(False), "GET", f"{fake_upstream.base_url}/models", api_key=KEY):
            pass
    assert (e.value.kind, e.value.cause, e.value.message) == ("unreachable", "refused_address", UNREACHABLE)
    assert fake_upstream.requests == []


async def test_redirect_is_a_failure_and_never_followed(fake_upstream: FakeUpstream, listen, pools) -> None:  # type: ignore[no-untyped-def]
    target = await listen("127.0.0.1")
    location = f"http://127.0.0.1:{target.port}/v1/models"
    fake_upstream.fail_next(Failure(status=302, location=location), times=2)
    pool = pools(True)  # private allowed: only the no-redirect rule stands between us and the target

    with pytest.raises(UpstreamError) as e:
        async with upstream.request(pool, "GET", f"{fake_upstream.base_url}/models", api_key=KEY):
            pass
    assert e.value.kind == "redirect"
    assert e.value.cause == "http_302"
    assert e.value.message == REDIRECTED
    assert location not in e.value.message and "127.0.0.1" not in e.value.message

    # The pool itself never follows one either: a bare request just answers the 302.
    url = URL(f"{fake_upstream.base_url}/models")
    resp = await pool.request(url, h1.header_lines(upstream.upstream_headers(KEY, accept=None)), b"", method="GET")
    assert (resp.status, resp.headers["Location"]) == (302, location)
    resp.release()

    await asyncio.sleep(0.05)
    assert len(fake_upstream.calls("/v1/models")) == 2
    assert target.accepted == 0


async def test_cookies_are_never_stored_or_sent(aiohttp_server, pools) -> None:  # type: ignore[no-untyped-def]
    async def set_cookie(request: web.Request) -> web.Response:
        resp = web.json_response({})
        resp.set_cookie("donor_a", "secret-session")
        return resp

    async def echo(request: web.Request) -> web.Response:
        return web.json_response({"cookie": request.headers.get("Cookie")})

    app = web.Application()
    app.router.add_get("/v1/set", set_cookie)
    app.router.add_get("/v1/echo", echo)
    server = await aiohttp_server(app)
    pool = pools(True)
    async with upstream.request(pool, "GET", str(server.make_url("/v1/set")), api_key=KEY) as resp:
        assert "donor_a" in resp.headers.get("Set-Cookie", "")
        await resp.read()
    async with upstream.request(pool, "GET", str(server.make_url("/v1/echo")), api_key=KEY) as resp:
        assert orjson.loads(await resp.read()) == {"cookie": None}


async def test_unreachable_refused_and_timeout_read_the_same(  # type: ignore[no-untyped-def]
    fake_upstream: FakeUpstream, listen, pools
) -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    listener = await listen("127.0.0.1")
    fake_upstream.fail_next(Failure(hang=1.5))

    async def failure(pool: h1.Pool, url: str) -> UpstreamError:
        with pytest.raises(UpstreamError) as e:
            async with upstream.request(pool, "GET", url, api_key=KEY, timeout=0.3):
                pass
        return e.value

    closed = await failure(pools(True), f"http://127.0.0.1:{closed_port}/v1/models")
    refused = await failure(pools(False), f"http://127.0.0.1:{listener.port}/v1/models")
    started = time.monotonic()
    timed_out = await failure(pools(True), f"{fake_upstream.base_url}/models")
    assert time.monotonic() - started < 1.0, "the timeout bounds the wait for the answer"

    assert (closed.kind, closed.cause) == ("unreachable", "connect")
    assert (refused.kind, refused.cause) == ("unreachable", "refused_address")
    assert timed_out.kind == "timeout"
    assert closed.message == refused.message == timed_out.message == UNREACHABLE
    assert str(closed) == str(refused) == str(timed_out)
    assert listener.accepted == 0


async def test_a_broken_answer_and_a_bad_url_are_upstream_errors(listen, pools) -> None:  # type: ignore[no-untyped-def]
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(UpstreamError) as e:
            async with upstream.request(pools(True), "GET", f"http://127.0.0.1:{port}/v1/models", api_key=KEY):
                pass
        assert (e.value.kind, e.value.message) == ("broken", UNREACHABLE)
    finally:
        server.close()
        await server.wait_closed()
    for bad in ("http://[::1/v1", "ftp://example.com/v1", "/v1/models"):
        with pytest.raises(UpstreamError) as e:
            async with upstream.request(pools(True), "GET", bad, api_key=KEY):
                pass
        assert (e.value.kind, e.value.cause) == ("unreachable", "invalid_url")


def test_upstream_headers_are_an_allow_list() -> None:
    headers = upstream.upstream_headers(KEY, accept="text/event-stream")
    assert headers == {
        "Content-Type": "application/json",
        "Accept": "text/event-stream",
        "Authorization": f"Bearer {KEY}",
        "User-Agent": upstream.USER_AGENT,
    }
    assert upstream.upstream_headers(KEY, accept=None)["Accept"] == "application/json"


@pytest.mark.parametrize("bad", ["sk-abc\r\nX-Injected: 1", "sk-abc def", "sk-ключ", ""])
def test_upstream_headers_refuse_unsendable_keys(bad: str) -> None:
    with pytest.raises(ValueError) as e:
        upstream.upstream_headers(bad, accept=None)
    assert bad not in str(e.value) or not bad
