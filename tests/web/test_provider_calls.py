"""Talking to sign-in providers (web/signin/provider_calls.py) as they really answer: in several writes,
too much, with plain-http endpoints under an https issuer, and with ID tokens not yet valid."""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway.config import Oidc
from gateway.store import users
from gateway.web.signin import provider_calls, sessions
from tests.support import fake_linuxdo
from tests.support.certs import TestCA
from tests.support.fake_linuxdo import Site
from tests.support.fake_oidc import CLIENT_ID, CLIENT_SECRET, FakeOidc
from tests.web import test_providers
from tests.web.test_providers import Gw

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
oidc, github, make = test_providers.oidc, test_providers.github, test_providers.make


async def _user_named(pool: asyncpg.Pool, name: str) -> users.User | None:
    async with pool.acquire() as conn:
        return await users.get_by_username(conn, name)


async def test_oidc_answers_in_pieces_still_sign_in(make: Any, oidc: FakeOidc) -> None:
    """Discovery, JWKS, token and userinfo each arrive in several writes with pauses between."""
    oidc.pieces = 4
    gw: Gw = await make()
    resp = await gw.sign_in("corp")
    assert (resp.status, resp.headers.get("Location")) == (303, "/keys"), await resp.text()
    assert sessions.COOKIE in resp.cookies
    assert (await _user_named(gw.pool, "olga")) is not None
    assert len(oidc.token_requests) == 1


async def test_linuxdo_answers_in_pieces_still_sign_in(site: Site) -> None:
    site.provider.pieces = 3
    resp = await site.sign_in("alice")
    assert (resp.status, resp.headers.get("Location")) == (303, "/keys"), await resp.text()
    assert (await site.client.get("/keys", allow_redirects=False)).status == 200


@pytest.mark.parametrize("pieces", [1, 8])  # announced by Content-Length, or found while reading
async def test_a_provider_answering_too_much_is_a_clear_sign_in_error(make: Any, oidc: FakeOidc, pieces: int) -> None:
    oidc.pieces, oidc.jwks_padding = pieces, provider_calls.MAX_BODY + 1
    gw: Gw = await make()
    with capture_logs() as logs:
        resp = await gw.sign_in("corp")
    [failed] = [e for e in logs if e["event"] == "login_provider_failed"]
    assert failed["error"] == f"jwks answered more than {provider_calls.MAX_BODY} bytes"
    assert resp.status == 502
    assert "could not confirm the sign-in" in await resp.text()
    assert sessions.COOKIE not in resp.cookies
    assert (await _user_named(gw.pool, "olga")) is None


@pytest.mark.parametrize("pieces", [1, 5])
async def test_an_answer_just_under_the_cap_is_read_whole(make: Any, oidc: FakeOidc, pieces: int) -> None:
    oidc.pieces, oidc.jwks_padding = pieces, provider_calls.MAX_BODY - 4096
    gw: Gw = await make()
    resp = await gw.sign_in("corp")
    assert resp.status == 303, await resp.text()


# --- the ID token's times -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes, says",
    [
        ({"iat": "offset"}, "iat_future"),
        ({"nbf": "offset"}, "nbf_future"),
        ({"iat": "missing"}, "no issue time"),
        ({"iat": "text"}, "no issue time"),
        ({"nbf": "text"}, "no issue time"),
    ],
)
async def test_id_tokens_not_yet_valid_are_refused(
    make: Any, oidc: FakeOidc, changes: dict[str, str], says: str
) -> None:
    now = int(time.time())
    values = {"offset": now + 3600, "missing": None, "text": "yesterday"}
    oidc.id_token_changes = {claim: values[kind] for claim, kind in changes.items()}
    gw: Gw = await make()
    resp = await gw.sign_in("corp")
    text = await resp.text()
    assert resp.status == 400
    if says.endswith("_future"):
        assert "is not valid yet (issued in the future)" in text
    else:
        assert says in text
    assert sessions.COOKIE not in resp.cookies
    assert (await _user_named(gw.pool, "olga")) is None


async def test_clock_skew_within_a_minute_is_accepted(make: Any, oidc: FakeOidc) -> None:
    now = int(time.time())
    oidc.id_token_changes = {"iat": now + 30, "nbf": now + 30}
    gw: Gw = await make()
    resp = await gw.sign_in("corp")
    assert resp.status == 303, await resp.text()


# --- endpoints under an https issuer -----------------------------------------------------------------


@pytest.fixture
async def tls_oidc(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[tuple[FakeOidc, aiohttp.ClientSession]]:
    """The fake provider over https (a throwaway CA), and a client session that trusts it."""
    ca = TestCA(tmp_path)
    cert, key = ca.leaf("oidc", "127.0.0.1")
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert, key)
    fake = FakeOidc()
    fake.server = await aiohttp_server(fake.app, ssl=server_tls)
    assert fake.issuer.startswith("https://")
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=str(ca.ca)))
    async with aiohttp.ClientSession(connector=connector) as client:
        yield fake, client


def _settings(fake: FakeOidc) -> Oidc:
    return Oidc(issuer=fake.issuer, client_id=CLIENT_ID, client_secret=CLIENT_SECRET)


async def test_https_issuer_with_https_endpoints_is_accepted(tls_oidc: tuple[FakeOidc, aiohttp.ClientSession]) -> None:
    fake, client = tls_oidc
    doc = await provider_calls.discovery(client, _settings(fake))
    assert doc["token_endpoint"] == fake.issuer + "/token"


@pytest.mark.parametrize("endpoint", provider_calls.ENDPOINTS)
async def test_plain_http_endpoints_under_an_https_issuer_are_refused(
    tls_oidc: tuple[FakeOidc, aiohttp.ClientSession], endpoint: str
) -> None:
    fake, client = tls_oidc
    plain = "http://" + fake.issuer.removeprefix("https://")
    fake.discovery_changes = {endpoint: plain + "/elsewhere"}
    with pytest.raises(provider_calls.ProviderError, match=f"plain-http {endpoint} under an https issuer"):
        await provider_calls.discovery(client, _settings(fake))
    assert fake.issuer not in provider_calls._discovery  # not cached: the next sign-in asks again
    assert fake.authorize_requests == [] and fake.token_requests == []


async def test_plain_http_endpoints_under_an_http_issuer_are_kept(oidc: FakeOidc) -> None:
    """A provider on plain http (a test or a local set-up) is the operator's choice, stated in the
    issuer: its endpoints are http too."""
    async with aiohttp.ClientSession() as client:
        doc = await provider_calls.discovery(client, _settings(oidc))
    assert doc["token_endpoint"].startswith("http://")
