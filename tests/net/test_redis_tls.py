"""Redis over TLS: a real redis-server with `--tls-port` and a certificate from a throwaway CA.

The URL's TLS options must mean the same to the balancer's script line as to redis-py, and
`/readyz` must say 503 when the line (which every request uses) cannot reach Redis.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import redis.exceptions as rexc
from structlog.testing import capture_logs

from gateway import appkeys
from gateway import config as config_mod
from gateway.app import create_app
from gateway.net import redisclient
from gateway.net.redisline import ScriptLine
from gateway.relay import balancer
from gateway.relay.balancer import BALANCER, Balancer
from gateway.relay.picks import Candidate, UserLimits
from tests.support.redis_servers import RedisServer, make_certs

NO_LIMITS = UserLimits(daily=0, per_minute=0, streams=0)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    directory = tmp_path_factory.mktemp("tls")
    server = RedisServer(directory, password="tls-pw", certs=make_certs(directory))
    yield server
    server.stop()


async def pick_over(url: str, redis_prefix: str) -> str:
    """One balancer pick through a ScriptLine on `url` (redis-py, for the rest, on the same URL)."""
    line = ScriptLine(url, balancer.SCRIPT, timeout=2.0)
    client = redisclient.client(config_mod.Redis(url=url, timeout=2.0))
    try:
        b = Balancer(client, prefix=redis_prefix, timezone="UTC", line=line)
        p = await b.pick([Candidate("k1", 5)], user_id="u1", limits=NO_LIMITS, request_id="r1", stream=False)
        assert await client.ping() is True  # redis-py reads the same options from the URL
        return f"{p.outcome} {p.key_id} {p.used_today}"
    finally:
        await line.close()
        await client.aclose(close_connection_pool=True)


async def test_ssl_cert_reqs_none_in_the_url_reaches_the_line(tls_server: RedisServer, redis_prefix: str) -> None:
    assert await pick_over(tls_server.url(db=1, query="ssl_cert_reqs=none"), redis_prefix) == "ok k1 1"


async def test_ssl_ca_certs_in_the_url_reaches_the_line(tls_server: RedisServer, redis_prefix: str) -> None:
    assert tls_server.certs is not None
    url = tls_server.url(db=1, query=f"ssl_ca_certs={tls_server.certs.ca}")
    assert await pick_over(url, redis_prefix) == "ok k1 1"
    # The hostname is checked by default, as redis-py does: the certificate names 127.0.0.1 and localhost.
    localhost = url.replace("127.0.0.1", "localhost")
    assert await pick_over(localhost, redis_prefix + "b") == "ok k1 1"


async def test_an_untrusted_certificate_fails_the_line_fast(tls_server: RedisServer, tmp_path: Path) -> None:
    other_ca = make_certs(tmp_path).ca  # a CA that did not sign the server's certificate
    for query in ("", f"ssl_ca_certs={other_ca}", "ssl_cert_reqs=required"):
        line = ScriptLine(tls_server.url(query=query), balancer.SCRIPT, timeout=2.0)
        start = time.monotonic()
        try:
            with pytest.raises(rexc.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
                await line.ping()
        finally:
            await line.close()
        assert time.monotonic() - start < 0.5, f"{query!r}: a certificate error must not wait for the timeout"


async def test_readyz_follows_the_line_the_requests_use(
    tls_server: RedisServer,
    config: config_mod.Config,
    pool: asyncpg.Pool,
    aiohttp_client: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = tls_server.url(query="ssl_cert_reqs=none")
    tls_config = dataclasses.replace(config, redis=dataclasses.replace(config.redis, url=url))

    client = await aiohttp_client(create_app(tls_config))
    resp = await client.get("/readyz")
    assert (resp.status, (await resp.json())["redis"]) == (200, "ok")
    b = client.app[BALANCER]
    p = await b.pick([Candidate("k1", 5)], user_id="u1", limits=NO_LIMITS, request_id="r1", stream=False)
    assert (p.outcome, p.used_today) == ("ok", 1)
    await client.close()

    # The line alone misconfigured (it loses the URL's TLS options; redis-py keeps them): not ready.
    def line_without_options(url: str, script: str, **kw: Any) -> ScriptLine:
        return ScriptLine(url.split("?")[0], script, **kw)

    monkeypatch.setattr(redisclient, "ScriptLine", line_without_options)
    client = await aiohttp_client(create_app(tls_config))
    assert await client.app[appkeys.redis].ping() is True
    start = time.monotonic()
    resp = await client.get("/readyz")
    assert (resp.status, (await resp.json())["redis"]) == (503, "down")
    assert time.monotonic() - start < 1.5
    with pytest.raises(rexc.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await client.app[BALANCER].pick(
            [Candidate("k1", 5)], user_id="u1", limits=NO_LIMITS, request_id="r2", stream=False
        )


async def test_tls_options_on_a_plain_redis_url_are_named_at_start_up(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, tmp_path: Path
) -> None:
    """`redis://…?ssl_cert_reqs=required&ssl_ca_certs=…` connects without TLS (the scheme decides):
    a warning at start-up names the options (never the URL), and the gateway still works instead
    of redis-py failing its first command on the unexpected options."""
    assert config.redis.url.startswith("redis://") and "?" not in config.redis.url
    url = f"{config.redis.url}?ssl_cert_reqs=required&ssl_ca_certs={tmp_path / 'ca.pem'}"
    plain = dataclasses.replace(config, redis=dataclasses.replace(config.redis, url=url))
    with capture_logs() as logs:
        client = await aiohttp_client(create_app(plain))
    [warning] = [e for e in logs if e["event"] == "redis_tls_options_ignored"]
    assert warning["log_level"] == "warning" and warning["options"] == ["ssl_ca_certs", "ssl_cert_reqs"]
    assert str(tmp_path) not in str(logs) and config.redis.url not in str(logs)
    resp = await client.get("/readyz")
    assert (resp.status, (await resp.json())["redis"]) == (200, "ok")
    assert await client.app[appkeys.redis].ping() is True


def test_only_plain_urls_have_tls_options_to_ignore() -> None:
    assert redisclient.tls_options_without_tls("rediss://h:6380/0?ssl_cert_reqs=none") == []
    assert redisclient.tls_options_without_tls("redis://h/0?db=1&socket_timeout=2") == []
    assert redisclient.tls_options_without_tls("unix:///tmp/r.sock?ssl_certfile=x") == ["ssl_certfile"]
    kept = redisclient.without_tls_options("redis://:pw@h:6379/2?socket_timeout=2&ssl_cert_reqs=none")
    assert kept == "redis://:pw@h:6379/2?socket_timeout=2"
