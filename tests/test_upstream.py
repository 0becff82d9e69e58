"""The shared upstream session: connect-time SSRF refusal, no redirects, header allow-list, error mapping.

Every connection here goes to a loopback listener. Refusal tests count the connections a
listener accepted, and the positive controls prove the same listener *is* reached when private
upstreams are allowed, so a zero means "refused", not "listener broken".
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from gateway import appkeys, h1, upstream
from gateway import config as config_mod
from gateway.upstream import UNREACHABLE, UpstreamError

from .fake_upstream import Failure, FakeUpstream

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
async def sessions(tmp_path: Path) -> AsyncIterator[Callable[[bool], aiohttp.ClientSession]]:
    made: list[aiohttp.ClientSession] = []

    def make(allow_private: bool) -> aiohttp.ClientSession:
        session = upstream.create_session(load_config(tmp_path, allow_private=allow_private))
        made.append(session)
        return session

    yield make
    for session in made:
        await session.close()


# (host as written in the URL, loopback addresses the listener binds)
LOOPBACK_FORMS = [
    ("127.0.0.1", ("127.0.0.1",)),
    ("127.0.0.2", ("127.0.0.2",)),
    ("[::1]", ("::1",)),
    ("[::ffff:127.0.0.1]", ("127.0.0.1",)),
    ("0.0.0.0", ("127.0.0.1",)),
    ("localhost", ("127.0.0.1", "::1")),
    ("0x7f.1", ("127.0.0.1",)),  # a host *name* to aiohttp; getaddrinfo turns it into 127.0.0.1
    ("2130706433", ("127.0.0.1",)),
]


@pytest.mark.parametrize(("host", "binds"), LOOPBACK_FORMS)
async def test_loopback_refused_at_connect_time(host: str, binds: tuple[str, ...], listen, sessions) -> None:  # type: ignore[no-untyped-def]
    listener = await listen(*binds)
    session = sessions(False)
    url = f"http://{host}:{listener.port}/v1/models"

    with pytest.raises(UpstreamError) as e:
        async with upstream.request(session, "GET", url, api_key=KEY):
            pass
    assert e.value.kind == "unreachable"
    assert e.value.message == str(e.value) == UNREACHABLE
    # aiohttp itself rejects the one-number IPv4 spelling before it reaches the connector.
    expected_cause = "invalid_url" if host == "2130706433" else "refused_address"
    assert e.value.cause == expected_cause

    # The connector, not the helper, holds the line: a bare session call is refused too.
    with pytest.raises(aiohttp.ClientError):
        async with session.get(url):
            pass
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


@pytest.mark.parametrize(("host", "binds"), [f for f in LOOPBACK_FORMS if f[0] != "2130706433"])
async def test_positive_control_listener_is_reachable_when_private_allowed(  # type: ignore[no-untyped-def]
    host: str, binds: tuple[str, ...], listen, sessions
) -> None:
    listener = await listen(*binds)
    async with upstream.request(sessions(True), "GET", f"http://{host}:{listener.port}/v1", api_key=KEY) as resp:
        assert resp.status == 200
        assert await resp.json() == {}
    assert listener.accepted == 1


async def test_private_allowed_reaches_fake_upstream_with_allow_listed_headers(  # type: ignore[no-untyped-def]
    fake_upstream: FakeUpstream, sessions
) -> None:
    async with upstream.request(sessions(True), "GET", f"{fake_upstream.base_url}/models", api_key=KEY) as resp:
        assert resp.status == 200
        body = await resp.json()
    assert [m["id"] for m in body["data"]] == fake_upstream.models
    (seen,) = fake_upstream.calls("/v1/models")
    assert seen.headers["Authorization"] == f"Bearer {KEY}"
    assert seen.headers["User-Agent"] == upstream.USER_AGENT
    assert seen.headers["User-Agent"].startswith("sharekey/")
    assert seen.headers["Accept"] == "application/json"
    assert "Cookie" not in seen.headers
    assert not any(h.lower().startswith("x-") for h in seen.headers)


async def test_fake_upstream_is_refused_without_allow_private(fake_upstream: FakeUpstream, sessions) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(UpstreamError) as e:
        async with upstream.request(sessions(False), "GET", f"{fake_upstream.base_url}/models", api_key=KEY):
            pass
    assert (e.value.kind, e.value.cause, e.value.message) == ("unreachable", "refused_address", UNREACHABLE)
    assert fake_upstream.requests == []


async def test_redirect_is_a_failure_and_never_followed(fake_upstream: FakeUpstream, listen, sessions) -> None:  # type: ignore[no-untyped-def]
    target = await listen("127.0.0.1")
    location = f"http://127.0.0.1:{target.port}/v1/models"
    fake_upstream.fail_next(Failure(status=302, location=location), times=2)
    session = sessions(True)  # private allowed: only the no-redirect rule stands between us and the target

    with pytest.raises(UpstreamError) as e:
        async with upstream.request(session, "GET", f"{fake_upstream.base_url}/models", api_key=KEY):
            pass
    assert e.value.kind == "redirect"
    assert e.value.cause == "http_302"
    assert location not in e.value.message and "127.0.0.1" not in e.value.message

    # Even a caller that forgets allow_redirects=False does not follow it.
    with pytest.raises(UpstreamError) as e2:
        async with session.get(f"{fake_upstream.base_url}/models", headers=upstream.upstream_headers(KEY, accept=None)):
            pass
    assert e2.value.kind == "redirect"

    await asyncio.sleep(0.05)
    assert len(fake_upstream.calls("/v1/models")) == 2
    assert target.accepted == 0


async def test_cookies_are_never_stored_or_sent(aiohttp_server, sessions) -> None:  # type: ignore[no-untyped-def]
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
    session = sessions(True)
    async with upstream.request(session, "GET", str(server.make_url("/v1/set")), api_key=KEY) as resp:
        assert "donor_a" in resp.headers.get("Set-Cookie", "")
    async with upstream.request(session, "GET", str(server.make_url("/v1/echo")), api_key=KEY) as resp:
        assert await resp.json() == {"cookie": None}


async def test_unreachable_refused_and_timeout_read_the_same(  # type: ignore[no-untyped-def]
    fake_upstream: FakeUpstream, listen, sessions
) -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens there
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    listener = await listen("127.0.0.1")
    fake_upstream.fail_next(Failure(hang=1.5))
    quick = aiohttp.ClientTimeout(total=0.3)

    async def failure(session: aiohttp.ClientSession, url: str) -> UpstreamError:
        with pytest.raises(UpstreamError) as e:
            async with upstream.request(session, "GET", url, api_key=KEY, client_timeout=quick):
                pass
        return e.value

    closed = await failure(sessions(True), f"http://127.0.0.1:{closed_port}/v1/models")
    refused = await failure(sessions(False), f"http://127.0.0.1:{listener.port}/v1/models")
    timed_out = await failure(sessions(True), f"{fake_upstream.base_url}/models")

    assert (closed.kind, closed.cause) == ("unreachable", "connect")
    assert (refused.kind, refused.cause) == ("unreachable", "refused_address")
    assert timed_out.kind == "timeout"
    assert closed.message == refused.message == timed_out.message == UNREACHABLE
    assert str(closed) == str(refused) == str(timed_out)
    assert listener.accepted == 0


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


async def test_http_session_cleanup_context(tmp_path: Path) -> None:
    app = web.Application()
    app[appkeys.config] = load_config(tmp_path, allow_private=False)
    ctx = upstream.http_session(app)
    await anext(ctx)
    session = app[appkeys.http]
    assert isinstance(session, aiohttp.ClientSession) and not session.closed
    assert isinstance(session.connector, upstream.GuardedConnector)
    assert session.connector.limit == 0
    assert session.trust_env is False
    with pytest.raises(StopAsyncIteration):
        await anext(ctx)
    assert session.closed
