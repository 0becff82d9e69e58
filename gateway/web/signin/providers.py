"""The one provider table: every way a browser can sign in through someone else, as rows.

    configured(config) -> [Provider]   Linux.do (`[oauth.linuxdo]`), each OpenID Connect provider
                                       (`[oauth.oidc.<name>]`, by name) and GitHub (`[oauth.github]`),
                                       those that are configured, in that order
    find(config, name) -> Provider     the row behind /auth/<name>/…, or None

A row is a name (the path segment), a label (what the sign-in page shows), its settings and its
`Way`: how its authorize URL is built, how a code becomes a person, how that person is stored,
and the words of its error pages. Everything else — state, PKCE, the pre-login cookie, the
callback's checks, the session — is the one flow of `signin/flow.py`, the same for every row. A
new kind of provider is one `Way` and one module of provider calls.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import asyncpg
from aiohttp import web

from gateway import appkeys
from gateway.config import Config, GitHub, LinuxDo, Oidc
from gateway.store import users
from gateway.web.signin import linuxdo
from gateway.web.signin.provider_calls import (
    GITHUB,
    github_authorize_url,
    github_profile,
    oidc_authorize_url,
    oidc_profile,
)

LINUXDO = "linuxdo"

Person = users.LinuxDoProfile | users.IdentityProfile


@dataclass(frozen=True, slots=True)
class Way:
    """How one kind of provider signs in. `authorize(app, provider, state, challenge, nonce)` is
    the URL the browser is sent to; `person(app, provider, code, record)` the account behind the
    code (record: what the flow kept under the state); `store(conn, person)` the user row."""

    authorize: Callable[[web.Application, Provider, str, str, str], Awaitable[str]]
    person: Callable[[web.Application, Provider, str, dict[str, Any]], Awaitable[Any]]
    store: Callable[[asyncpg.Connection, Any], Awaitable[users.User]]
    cancelled: str  # the message when the browser comes back with `error=`
    failed: str  # the message when the provider did not complete the exchange
    retry: bool  # whether its error pages offer to start again


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    label: str
    settings: LinuxDo | Oidc | GitHub
    way: Way


# --- the ways --------------------------------------------------------------------------------------


async def _linuxdo_authorize(app: web.Application, p: Provider, state: str, challenge: str, nonce: str) -> str:
    assert isinstance(p.settings, LinuxDo)
    return linuxdo.authorize_url(p.settings, state, challenge)


async def _linuxdo_person(app: web.Application, p: Provider, code: str, record: dict[str, Any]) -> Person:
    assert isinstance(p.settings, LinuxDo)
    return await linuxdo.person(app, p.settings, code, record["verifier"])


async def _oidc_authorize(app: web.Application, p: Provider, state: str, challenge: str, nonce: str) -> str:
    assert isinstance(p.settings, Oidc)
    client, config = app[appkeys.oauth_http], app[appkeys.config]
    return await oidc_authorize_url(client, config, p.name, p.settings, state, challenge, nonce)


async def _oidc_person(app: web.Application, p: Provider, code: str, record: dict[str, Any]) -> Person:
    assert isinstance(p.settings, Oidc)
    return await oidc_profile(app[appkeys.oauth_http], app[appkeys.config], p.name, p.settings, code, record)


async def _github_authorize(app: web.Application, p: Provider, state: str, challenge: str, nonce: str) -> str:
    assert isinstance(p.settings, GitHub)
    return github_authorize_url(app[appkeys.config], p.settings, state, challenge)


async def _github_person(app: web.Application, p: Provider, code: str, record: dict[str, Any]) -> Person:
    assert isinstance(p.settings, GitHub)
    client, config = app[appkeys.oauth_http], app[appkeys.config]
    return await github_profile(client, config, p.settings, code, record["verifier"])


# Linux.do's pages kept their own words (no provider named) and their "try again" button.
LINUXDO_WAY = Way(
    _linuxdo_authorize, _linuxdo_person, users.upsert_linuxdo_user, "login.cancelled", "login.provider_failed", True
)
OIDC_WAY = Way(
    _oidc_authorize, _oidc_person, users.upsert_identity_user, "login.cancelled_at", "login.provider_down", False
)
GITHUB_WAY = Way(
    _github_authorize, _github_person, users.upsert_identity_user, "login.cancelled_at", "login.provider_down", False
)


# --- the table -------------------------------------------------------------------------------------


def configured(config: Config) -> list[Provider]:
    """The providers this gateway offers, in a stable order (Linux.do first: the community's own)."""
    out = []
    if linuxdo.configured(config.oauth_linuxdo):
        out.append(Provider(LINUXDO, "Linux.do", config.oauth_linuxdo, LINUXDO_WAY))
    out += [Provider(name, name, settings, OIDC_WAY) for name, settings in sorted(config.oauth_oidc.items())]
    if config.oauth_github.client_id and config.oauth_github.client_secret:
        out.append(Provider(GITHUB, "GitHub", config.oauth_github, GITHUB_WAY))
    return out


def find(config: Config, name: str) -> Provider | None:
    return next((p for p in configured(config) if p.name == name), None)
