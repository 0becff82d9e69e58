"""Talking to sign-in providers (web/provider_calls.py) as they really answer: in several writes,
too much, with plain-http endpoints under an https issuer, and with ID tokens not yet valid."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from gateway.store import users
from gateway.web import provider_calls, sessions

from . import fake_linuxdo, test_providers
from .fake_linuxdo import Site
from .fake_oidc import FakeOidc
from .test_providers import Gw

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
