"""gateway.net.tunnel against real proxies: Debian's tinyproxy (http) and pproxy (http, socks5, https).

Proxies run as subprocesses on 127.0.0.1, started once per module; upstreams (plain and TLS with a
certificate for "upstream.test" from a CA made here) run inside each test's own event loop. Every
end-to-end case runs on the default asyncio loop and on uvloop. Small in-test fake proxies cover
what real ones do not do on demand: odd answers, bytes right after the answer, a stalled handshake.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from gateway.net.tunnel import Proxy, ProxyError, ProxyUnreachable, open_tunnel
from tests.support.certs import TestCA

TINYPROXY = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if Path("/usr/bin/tinyproxy").exists() else None)
USER, PASSWORD = "gw user", "s3cr:t@pw"  # a space, a colon and an @: the URL form must percent-encode them
TINY_USER, TINY_PASSWORD = "gw_user", "s3cr3t-pw"  # tinyproxy's config syntax allows no such characters
URL_CREDS = "gw%20user:s3cr%3At%40pw"

LOOPS = [pytest.param(asyncio.new_event_loop, id="asyncio"), pytest.param(uvloop.new_event_loop, id="uvloop")]


def run(loop_factory: Callable[[], asyncio.AbstractEventLoop], coro: Awaitable[None]) -> None:
    async def settled() -> None:
        try:
            async with asyncio.timeout(15):  # a hang fails this test instead of stalling the suite
                await coro
        finally:
            # A TLS connection the upstream closed finishes its close_notify exchange a few loop
            # iterations after connection_lost (uvloop): let it, before the loop closes. A transport
            # really left open still fails the test (ResourceWarning, an error under filterwarnings).
            await asyncio.sleep(0.05)

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(settled())


# --- certificates -------------------------------------------------------------------------------


@dataclass
class Certs:
    ca: Path
    upstream_cert: Path
    upstream_key: Path
    proxy_cert: Path
    proxy_key: Path

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))

    def server(self, which: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(getattr(self, f"{which}_cert"), getattr(self, f"{which}_key"))
        return ctx


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    authority = TestCA(tmp_path_factory.mktemp("certs"), "tunnel test CA")
    # The upstream's certificate names only "upstream.test": it verifies only with that SNI/host name.
    up_cert, up_key = authority.leaf("upstream.test", "upstream.test")
    px_cert, px_key = authority.leaf("proxy", "127.0.0.1")
    return Certs(authority.ca, up_cert, up_key, px_cert, px_key)


# --- proxy processes ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: see {proc.args}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise RuntimeError(f"{what} did not listen on {port}")


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies, even by SIGKILL, so that no proxy outlives it."""
    if sys.platform == "linux":
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@contextlib.contextmanager
def process(args: list[str], ports: list[int], what: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
    try:
        for port in ports:
            wait_listening(port, proc, what)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Tiny:
    open: int
    auth: int
    restricted: int  # allows CONNECT only to port 1: anything else is a 403
    log: Path


@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tiny]:
    if TINYPROXY is None:
        pytest.skip("tinyproxy is not installed (Debian package tinyproxy)")
    d = tmp_path_factory.mktemp("tinyproxy")
    tiny = Tiny(free_port(), free_port(), free_port(), d / "open.log")
    # No ConnectPort line: CONNECT is allowed to every port (tinyproxy.conf(5)).
    configs = {
        "open": f'Port {tiny.open}\nListen 127.0.0.1\nTimeout 30\nLogFile "{d / "open.log"}"\nLogLevel Connect\n',
        "auth": f"Port {tiny.auth}\nListen 127.0.0.1\nTimeout 30\nBasicAuth {TINY_USER} {TINY_PASSWORD}\n",
        "restricted": f"Port {tiny.restricted}\nListen 127.0.0.1\nTimeout 30\nConnectPort 1\n",
    }
    with contextlib.ExitStack() as stack:
        for name, text in configs.items():
            conf = d / f"{name}.conf"
            conf.write_text(text)
            port = getattr(tiny, name)
            stack.enter_context(
                process([TINYPROXY, "-d", "-c", str(conf)], [port], f"tinyproxy ({name})", d / f"{name}.out")
            )
        yield tiny


@dataclass
class PP:
    open: int  # http + socks5, no credentials
    auth: int  # http + socks5 with USER:PASSWORD
    tls: int  # http over TLS (an https:// proxy), certificate for 127.0.0.1
    log: Path


@pytest.fixture(scope="module")
def pproxy(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[PP]:
    pytest.importorskip("pproxy", reason="pproxy is in the test extra (pip install -e '.[test]')")
    d = tmp_path_factory.mktemp("pproxy")
    pp = PP(free_port(), free_port(), free_port(), d / "pproxy.log")
    # `--auth 0`: pproxy would otherwise trust an address for 30 days after one good login, and the
    # wrong-credentials tests would pass for the wrong reason.
    # pproxy 2.7.9 picks uvloop when it can import it and then fails on uvloop 0.23's get_event_loop():
    # hide uvloop from it (the proxy's own loop is not what is under test).
    main = "import sys; sys.modules['uvloop'] = None; from pproxy.server import main; main()"
    args = [sys.executable, "-c", main, "-v", "--auth", "0", "--ssl", f"{certs.proxy_cert},{certs.proxy_key}"]
    args += ["-l", f"http+socks5://127.0.0.1:{pp.open}/"]
    args += ["-l", f"http+socks5://127.0.0.1:{pp.auth}/#{USER}:{PASSWORD}"]
    args += ["-l", f"http+ssl://127.0.0.1:{pp.tls}/"]
    with process(args, [pp.open, pp.auth, pp.tls], "pproxy", pp.log):
        yield pp


# --- upstreams and a tiny client ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def upstream(tls: ssl.SSLContext | None = None):
    """An HTTP/1.1 server on 127.0.0.1 that answers every request with its own name, then closes."""
    body = b"hello from the TLS upstream" if tls else b"hello from the plain upstream"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n" % len(body))
            writer.write(b"X-Request-Line: " + head.split(b"\r\n", 1)[0] + b"\r\n\r\n" + body)
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class Client(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = bytearray()
        self.made = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.made += 1

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def get(proxy: Proxy, port: int, *, tls: ssl.SSLContext | None = None, **kw) -> bytes:
    """GET / through a tunnel to 127.0.0.1:port; returns the whole answer."""
    async with asyncio.timeout(5):
        transport, protocol = await open_tunnel(
            proxy, "127.0.0.1", port, Client, tls=tls, server_hostname="upstream.test" if tls else None, **kw
        )
        assert isinstance(protocol, Client) and protocol.made == 1
        # The outermost TLS layer the caller sees: the upstream's, else an https proxy's, else none.
        assert transport.get_extra_info("sslcontext") is (tls or kw.get("proxy_tls"))
        transport.write(b"GET / HTTP/1.1\r\nHost: upstream.test\r\nConnection: close\r\n\r\n")
        await protocol.done
        return bytes(protocol.data)


def ok(answer: bytes, tls: bool) -> None:
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), answer[:100]
    assert b"X-Request-Line: GET / HTTP/1.1\r\n" in answer
    assert answer.endswith(b"hello from the TLS upstream" if tls else b"hello from the plain upstream")


# --- Proxy.parse --------------------------------------------------------------------------------


def test_parse_defaults_credentials_and_repr() -> None:
    p = Proxy.parse(f"socks5://{URL_CREDS}@proxy.internal:1081")
    assert (p.scheme, p.host, p.port, p.username, p.password) == ("socks5", "proxy.internal", 1081, USER, PASSWORD)
    assert PASSWORD not in repr(p) and "s3cr" not in repr(p) and USER not in repr(p)
    assert Proxy.parse("http://10.0.0.1") == Proxy("http", "10.0.0.1", 1080)  # curl's default
    assert Proxy.parse("https://proxy.example/") == Proxy("https", "proxy.example", 443)
    assert Proxy.parse("HTTP://[fd00::1]:3128") == Proxy("http", "fd00::1", 3128)
    assert Proxy.parse("http://u@h:1").password == "" and Proxy.parse("http://u@h:1").username == "u"
    for bad in (
        "ftp://h:1",
        "http://:1",
        "http://h:99999",
        "http://h:1/path",
        "http://h:1?q",
        f"socks5://a:{'x' * 300}@h:1",
    ):
        with pytest.raises(ValueError) as e:
            Proxy.parse(bad)
        assert "x" * 10 not in str(e.value) and "h:1" not in str(e.value)


def test_open_tunnel_refuses_host_names() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="IP address"):
            await open_tunnel(Proxy("http", "127.0.0.1", 9), "upstream.test", 443, Client)

    asyncio.run(main())


# --- real proxies: the matrix -------------------------------------------------------------------


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_tinyproxy_http(tinyproxy: Tiny, certs: Certs, loop_factory, tls: bool) -> None:
    async def main() -> None:
        async with upstream(certs.server("upstream") if tls else None) as port:
            ok(await get(Proxy("http", "127.0.0.1", tinyproxy.open), port, tls=certs.client() if tls else None), tls)
            # The proxy was asked for the IP address itself, never a name.
            log = tinyproxy.log.read_text()
            assert "Request (file descriptor" in log
            assert f": CONNECT 127.0.0.1:{port} HTTP/1.1" in log
            assert "upstream.test" not in log

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tinyproxy_basic_auth(tinyproxy: Tiny, certs: Certs, loop_factory) -> None:
    async def main() -> None:
        async with upstream(certs.server("upstream")) as port:
            right = Proxy("http", "127.0.0.1", tinyproxy.auth, TINY_USER, TINY_PASSWORD)
            ok(await get(right, port, tls=certs.client()), True)
            with pytest.raises(ProxyError) as e:
                await get(Proxy("http", "127.0.0.1", tinyproxy.auth, TINY_USER, "wrong-" + TINY_PASSWORD), port)
            assert TINY_PASSWORD not in str(e.value)
            # tinyproxy 1.11 answers CONNECT with 401 rather than 407: both mean the credentials.
            assert str(e.value) == "the proxy refused the credentials (401 Unauthorized)"
            with pytest.raises(ProxyError, match="requires credentials"):
                await get(Proxy("http", "127.0.0.1", tinyproxy.auth), port)

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tinyproxy_403(tinyproxy: Tiny, loop_factory) -> None:
    async def main() -> None:
        async with upstream() as port:
            with pytest.raises(ProxyError) as e:
                await get(Proxy("http", "127.0.0.1", tinyproxy.restricted), port)
            assert str(e.value) == "the proxy refused the tunnel: 403 Forbidden"

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tinyproxy_delivers_bytes_that_came_with_the_answer(tinyproxy: Tiny, loop_factory) -> None:
    """An upstream that speaks first: tinyproxy sends its bytes right behind "200 Connection
    established", often in the same segment. None may be lost in the hand-over."""

    async def main() -> None:
        async def greet(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(b"220 hello first\r\n")
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(greet, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            for _ in range(5):
                async with asyncio.timeout(5):
                    _, protocol = await open_tunnel(
                        Proxy("http", "127.0.0.1", tinyproxy.open), "127.0.0.1", port, Client
                    )
                    await protocol.done
                assert bytes(protocol.data) == b"220 hello first\r\n"

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("scheme", ["http", "socks5"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_pproxy(pproxy: PP, certs: Certs, loop_factory, scheme: str, tls: bool) -> None:
    async def main() -> None:
        async with upstream(certs.server("upstream") if tls else None) as port:
            answer = await get(Proxy(scheme, "127.0.0.1", pproxy.open), port, tls=certs.client() if tls else None)
            ok(answer, tls)

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_pproxy_credentials(pproxy: PP, certs: Certs, loop_factory, scheme: str) -> None:
    async def main() -> None:
        async with upstream(certs.server("upstream")) as port:
            right = Proxy.parse(f"{scheme}://{URL_CREDS}@127.0.0.1:{pproxy.auth}")
            ok(await get(right, port, tls=certs.client()), True)
            for wrong in (
                Proxy(scheme, "127.0.0.1", pproxy.auth, USER, "wrong-" + PASSWORD),
                Proxy(scheme, "127.0.0.1", pproxy.auth),
            ):
                # pproxy hangs up instead of answering 407 / a SOCKS failure: still a ProxyError.
                with pytest.raises(ProxyError) as e:
                    await get(wrong, port, tls=certs.client())
                assert PASSWORD not in str(e.value) and "s3cr" not in str(e.value) and USER not in str(e.value)

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_https_proxy_tls_in_tls(pproxy: PP, certs: Certs, loop_factory) -> None:
    async def main() -> None:
        proxy = Proxy("https", "127.0.0.1", pproxy.tls)
        async with upstream(certs.server("upstream")) as port:
            ok(await get(proxy, port, tls=certs.client(), proxy_tls=certs.client()), True)
            # The https proxy with a plain upstream: one TLS layer, to the proxy.
        async with upstream() as port:
            ok(await get(proxy, port, proxy_tls=certs.client()), False)
            # Without the test CA the proxy's certificate does not verify: the proxy's failure.
            with pytest.raises(
                ProxyUnreachable, match=r"^could not connect to the proxy \(TLS: certificate_verify_failed\)$"
            ) as e:
                await get(proxy, port)
            assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_upstream_certificate_checked_through_the_tunnel(pproxy: PP, certs: Certs, loop_factory) -> None:
    async def main() -> None:
        async with upstream(certs.server("upstream")) as port:
            with pytest.raises(ssl.SSLCertVerificationError):
                async with asyncio.timeout(5):
                    await open_tunnel(
                        Proxy("socks5", "127.0.0.1", pproxy.open),
                        "127.0.0.1",
                        port,
                        Client,
                        tls=certs.client(),
                        server_hostname="other.test",
                    )

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_closed_proxy_port(loop_factory) -> None:
    async def main() -> None:
        start = time.monotonic()
        with pytest.raises(ProxyUnreachable, match=r"^could not connect to the proxy \(connection refused\)$"):
            await open_tunnel(Proxy("http", "127.0.0.1", free_port()), "127.0.0.1", 80, Client)
        assert time.monotonic() - start < 2

    run(loop_factory, main())


# --- fake proxies: exact bytes, odd answers, cleanup ---------------------------------------------


class FakeProxy:
    """Plays `steps`: waits until what the client sent so far satisfies `need`, then writes `answer`;
    then hangs up if `hangup`, else waits for the client to. Records what the client sent and counts
    the connections still open on its side."""

    Step = tuple[Callable[[bytes], bool], bytes]

    def __init__(self, steps: list[Step], *, hangup: bool = False) -> None:
        self.steps, self.hangup = steps, hangup
        self.requests: list[bytes] = []
        self.accepted = 0
        self.open = 0
        self.port = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.idle = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open += 1
        self.idle.clear()
        self.writers.add(writer)
        seen = b""
        try:
            for need, answer in self.steps:
                while not need(seen):
                    chunk = await reader.read(4096)
                    if not chunk:
                        raise ConnectionResetError
                    seen += chunk
                writer.write(answer)
            if not self.hangup:
                seen += await reader.read()  # until the client hangs up
        except OSError:
            pass
        finally:
            self.requests.append(seen)
            writer.close()
            self.writers.discard(writer)
            self.open -= 1
            if not self.open:
                self.idle.set()

    async def closed(self) -> None:
        """Our side of every connection is closed: the proxy saw EOF on all of them."""
        async with asyncio.timeout(2):
            await self.idle.wait()
        assert self.open == 0

    @contextlib.asynccontextmanager
    async def serving(self):
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for writer in list(self.writers):
                writer.close()
            await server.wait_closed()


def http_head(seen: bytes) -> bool:
    return b"\r\n\r\n" in seen


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_connect_request_bytes_ipv6_and_leftover(loop_factory) -> None:
    async def main() -> None:
        fake = FakeProxy([(http_head, b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nEARLY")])
        async with fake.serving():
            proxy = Proxy.parse(f"http://{URL_CREDS}@127.0.0.1:{fake.port}")
            transport, protocol = await open_tunnel(proxy, "2001:db8::0:1", 8443, Client)
            assert bytes(protocol.data) == b"EARLY"  # came in the same read as the answer's end
            transport.close()
            await fake.closed()
        assert fake.requests == [
            b"CONNECT [2001:db8::1]:8443 HTTP/1.1\r\nHost: [2001:db8::1]:8443\r\n"
            b"Proxy-Authorization: Basic Z3cgdXNlcjpzM2NyOnRAcHc=\r\n\r\n"
        ]

    run(loop_factory, main())


def at_least(n: int) -> Callable[[bytes], bool]:
    return lambda seen: len(seen) >= n


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_socks5_request_bytes_and_leftover(loop_factory) -> None:
    async def main() -> None:
        # greeting (3 bytes), RFC 1929 login (1+1+7+1+9 for "gw user"/"s3cr:t@pw"), CONNECT to IPv4 (10)
        fake = FakeProxy(
            [
                (at_least(3), b"\x05\x02"),
                (at_least(3 + 19), b"\x01\x00"),
                (at_least(3 + 19 + 10), b"\x05\x00\x00\x03\x04host\x01\xbbEARLY"),
            ]
        )
        async with fake.serving():
            proxy = Proxy.parse(f"socks5://{URL_CREDS}@127.0.0.1:{fake.port}")
            transport, protocol = await open_tunnel(proxy, "10.1.2.3", 443, Client)
            assert bytes(protocol.data) == b"EARLY"
            transport.close()
            await fake.closed()
        assert fake.requests == [
            b"\x05\x01\x02" + b"\x01\x07gw user\x09s3cr:t@pw" + b"\x05\x01\x00\x01\x0a\x01\x02\x03\x01\xbb"
        ]

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_socks5_ipv6_without_credentials(loop_factory) -> None:
    async def main() -> None:
        # The bound address in the reply is IPv6 (ATYP 4, 16 bytes): all of it is read, nothing more.
        reply = b"\x05\x00\x00\x04" + bytes(16) + b"\x00\x50"
        fake = FakeProxy([(at_least(3), b"\x05\x00"), (at_least(3 + 22), reply + b"EARLY")])
        async with fake.serving():
            transport, protocol = await open_tunnel(Proxy("socks5", "127.0.0.1", fake.port), "2001:db8::7", 80, Client)
            assert bytes(protocol.data) == b"EARLY"
            transport.close()
            await fake.closed()
        target = ipaddress.IPv6Address("2001:db8::7").packed
        assert fake.requests == [b"\x05\x01\x00" + b"\x05\x01\x00\x04" + target + b"\x00\x50"]

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("proxy_scheme", ["http", "https"])
def test_timeout_in_upstream_tls_handshake_closes_the_socket(loop_factory, certs: Certs, proxy_scheme: str) -> None:
    """The tunnel opens, then the upstream never answers our ClientHello: cancelled inside start_tls
    (for an https proxy: inside TLS in TLS), every layer is closed."""

    async def main() -> None:
        fake = FakeProxy([(http_head, b"HTTP/1.1 200 Connection established\r\n\r\n")])
        tls_server = None
        if proxy_scheme == "https":
            # The fake proxy behind a TLS listener: a TLS server relaying to it would add little,
            # so speak TLS in the fake itself.
            tls_server = certs.server("proxy")
        server = await asyncio.start_server(fake.handle, "127.0.0.1", 0, ssl=tls_server)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await open_tunnel(
                        Proxy(proxy_scheme, "127.0.0.1", port),
                        "192.0.2.1",
                        443,
                        Client,
                        tls=certs.client(),
                        server_hostname="upstream.test",
                        proxy_tls=certs.client(),
                    )
            await fake.closed()
            assert fake.accepted == 1
            # What reached the "upstream" after the CONNECT head was our ClientHello (TLS record type 22).
            assert fake.requests[0].split(b"\r\n\r\n", 1)[1][:1] == b"\x16"
        finally:
            server.close()
            await server.wait_closed()

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize(
    ("scheme", "answer", "message"),
    [
        ("http", b"HTTP/1.1 502 Bad Gateway\r\n\r\n", "the proxy refused the tunnel: 502 Bad Gateway"),
        ("http", b"SSH-2.0-OpenSSH\r\n\r\n", "the proxy's answer to CONNECT is not HTTP/1.x"),
        (
            "http",
            b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 4000,
            "the proxy's answer to CONNECT is longer than 16384 bytes",
        ),
        ("http", b"HTTP/1.1 200 OK\r\n", "the proxy closed the connection during the tunnel handshake"),
        (
            "socks5",
            b"\x05\x00\x05\x05\x00\x01" + bytes(6),
            "the SOCKS5 proxy refused the tunnel: connection refused (5)",
        ),
        (
            "socks5",
            b"\x05\x00\x05\x02\x00\x01" + bytes(6),
            "the SOCKS5 proxy refused the tunnel: connection not allowed by ruleset (2)",
        ),
        ("socks5", b"\x05\xff", "the SOCKS5 proxy requires credentials"),
        ("socks5", b"\x04\x5a", "the proxy is not a SOCKS5 proxy"),
    ],
)
def test_refusals_close_everything(loop_factory, scheme: str, answer: bytes, message: str) -> None:
    async def main() -> None:
        # An answer cut short: the proxy hangs up half-way through its head.
        fake = FakeProxy([(http_head if scheme == "http" else at_least(3), answer)], hangup=answer.endswith(b"OK\r\n"))
        async with fake.serving():
            with pytest.raises(ProxyError) as e:
                async with asyncio.timeout(5):
                    await open_tunnel(Proxy(scheme, "127.0.0.1", fake.port), "192.0.2.1", 80, Client)
            assert str(e.value) == message
            await fake.closed()  # our side closed its socket

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
@pytest.mark.parametrize("scheme", ["http", "socks5"])
def test_timeout_in_handshake_closes_the_socket(loop_factory, scheme: str) -> None:
    async def main() -> None:
        fake = FakeProxy([])  # never answers
        async with fake.serving():
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await open_tunnel(Proxy(scheme, "127.0.0.1", fake.port), "192.0.2.1", 80, Client)
            assert fake.accepted == 1
            await fake.closed()

    run(loop_factory, main())


@pytest.mark.parametrize("loop_factory", LOOPS)
def test_tls_upstream_refuses_bytes_from_the_proxy(loop_factory, certs: Certs) -> None:
    """Before our ClientHello the upstream cannot have spoken: bytes there come from the proxy."""

    async def main() -> None:
        fake = FakeProxy([(http_head, b"HTTP/1.1 200 OK\r\n\r\nnonsense")])
        async with fake.serving():
            with pytest.raises(ProxyError, match="right after its answer"):
                async with asyncio.timeout(5):
                    await open_tunnel(
                        Proxy("http", "127.0.0.1", fake.port), "192.0.2.1", 443, Client, tls=certs.client()
                    )
            await fake.closed()

    run(loop_factory, main())


# --- the gateway's upstream pool through the proxy ------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "socks5"])
async def test_the_pool_goes_through_the_proxy_to_the_checked_address(pproxy: PP, scheme: str, serve) -> None:  # type: ignore[no-untyped-def]
    from gateway.net import h1
    from tests.support.rawserver import read_request

    seen: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    server = await serve(answer)
    proxy_url = f"{scheme}://127.0.0.1:{pproxy.open}"
    pool = h1.Pool(allow_private=True, connect_timeout=5, proxy_url=proxy_url)
    strict = h1.Pool(allow_private=False, connect_timeout=5, proxy_url=proxy_url)
    try:
        resp = await pool.request(server.url(host="localhost"), b"", b"{}")
        assert (resp.status, await resp.read()) == (200, b"{}")
        resp.release()
        assert seen and seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost:")
        # The guard still decides: a loopback upstream is refused before the proxy is asked.
        before = pproxy.log.read_text() if pproxy.log.exists() else ""
        with pytest.raises(OSError):
            await strict.request(server.url(host="localhost"), b"", b"{}")
        after = pproxy.log.read_text() if pproxy.log.exists() else ""
        assert after == before and len(seen) == 1
    finally:
        await pool.close()
        await strict.close()
