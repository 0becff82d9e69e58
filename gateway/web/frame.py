"""The page frame: what every HTML page shares, whichever wing renders it.

    render(request, template, signed, context)   the layout around a page: language, translator,
                                                 the signed-in user and avatar, the CSRF meta tag,
                                                 asset URLs, the language switch's return path;
                                                 security headers (CSP, no framing, no-store)
    error_page(request, status, title, message)  a page saying what went wrong, in the reader's language
    signed_in_or_redirect(request)               the visitor of a page that needs one, or where to send them
    layout(request, signed)                      the frame's part of a template context (the board
                                                 renders its live fragment with it)
    local_path(value), redirect(location)        where to return after a step, and how
    avatar_allowed(settings, url), asset(name)   which avatars show, and versioned static URLs

A route calls the frame once for its response; the frame owns no route. Jinja autoescapes
everything, so donor- and provider-supplied text is safe in any template.
"""

from __future__ import annotations

import functools
import hashlib
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo

import aiohttp_jinja2
from aiohttp import web

from gateway import appkeys
from gateway.config import Config, LinuxDo
from gateway.resources import data_dir
from gateway.web import i18n
from gateway.web.signin import sessions

STATIC_DIR = data_dir("static")
PLACEHOLDER_AVATAR = "avatar.svg"
DEFAULT_NEXT = "/keys"


def local_path(value: str | None) -> str:
    """A path on this site to return to; anything else gives /keys.

    Browsers normalise a Location before following it: they drop tabs and newlines anywhere,
    trim spaces and control characters, and read a backslash as a slash, so `/<TAB>/evil` and
    `/\\evil` lead to another host. Only printable ASCII is accepted (a control character in a
    header would not even be sent), no backslash, nothing that parses with a scheme or a host,
    and the same again once percent-decoded (a hop that decodes must not find a host either)."""
    if not value or not _plain_path(value) or not _plain_path(unquote(value)):
        return DEFAULT_NEXT
    return value


def _plain_path(value: str) -> bool:
    if not value.startswith("/") or value.startswith("//") or "\\" in value:
        return False
    if any(not "\x21" <= c <= "\x7e" for c in value):  # controls, spaces, DEL, anything non-ASCII
        return False
    parts = urlsplit(value)
    return not parts.scheme and not parts.netloc


def redirect(location: str, status: int = 303) -> web.Response:
    """A redirect response (returned, not raised: it may carry cookies)."""
    return web.Response(status=status, headers={"Location": location, "Cache-Control": "no-store"})


@functools.cache
def _asset_version(name: str) -> str:
    try:
        return hashlib.sha256((STATIC_DIR / name).read_bytes()).hexdigest()[:12]
    except OSError:
        return "0"


def asset(name: str) -> str:
    """The URL of a file in static/, versioned by its content so browsers may cache it."""
    return f"/static/{name}?v={_asset_version(name)}"


def avatar_allowed(settings: LinuxDo, url: str | None) -> bool:
    """An avatar is shown only from the provider's avatar host (or its subdomains, e.g. a CDN);
    anything else gets our placeholder, so a profile cannot make browsers fetch from elsewhere."""
    if not url:
        return False
    base = urlsplit(settings.avatar_base_url)
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        _ = parts.port
    except ValueError:
        return False
    base_host = (base.hostname or "").lower()
    if not base_host or parts.username or parts.password or parts.scheme not in {"https", base.scheme}:
        return False
    return host == base_host or host.endswith("." + base_host)


def _csp(settings: LinuxDo) -> str:
    base = urlsplit(settings.avatar_base_url)
    images = "'self' data:"
    if base.hostname:
        origin = sessions.origin_of(settings.avatar_base_url)
        images += f" {origin} https://*.{base.hostname} {base.scheme}://*.{base.hostname}"
    return (
        f"default-src 'self'; img-src {images}; script-src 'self'; style-src 'self'; object-src 'none'; "
        "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def _when(timezone: str, lang: str) -> Any:
    zone = ZoneInfo(timezone)
    never = i18n.translator(lang)("key.never")

    def when(value: datetime | None) -> str:
        return value.astimezone(zone).strftime("%Y-%m-%d %H:%M") if value else never

    return when


def sign_in_path(config: Config, next_path: str) -> str:
    """Where signing in starts: Linux.do directly when it is the only provider, else the sign-in
    page listing every provider (or, with none, saying how to get a sign-in link)."""
    only_linuxdo = not config.oauth_oidc and not (config.oauth_github.client_id and config.oauth_github.client_secret)
    if only_linuxdo and config.oauth_linuxdo.client_id:
        return f"/auth/linuxdo/login?next={next_path}"
    return f"/auth/login?next={next_path}"


def layout(request: web.Request, signed: sessions.SignedIn | None) -> dict[str, Any]:
    config = request.app[appkeys.config]
    lang = i18n.language(request)
    user = signed.user if signed else None
    avatar = user.avatar_url if user and avatar_allowed(config.oauth_linuxdo, user.avatar_url) else None
    return {
        "lang": lang,
        "t": i18n.translator(lang),
        "js_messages": i18n.script_messages(lang),
        "user": user,
        "avatar": avatar or asset(PLACEHOLDER_AVATAR),
        "csrf_token": signed.session.csrf_token if signed else None,
        # Where the language switch and the sign-in link return to (a sign-in step is not a place).
        "path": DEFAULT_NEXT if request.path.startswith("/auth/") else request.path,
        "sign_in_base": sign_in_path(config, "").removesuffix("?next="),
        "asset": asset,
        "when": _when(config.balancer.timezone, lang),
        "number": lambda n: f"{n:,}",
    }


def render(
    request: web.Request,
    template: str,
    signed: sessions.SignedIn | None,
    context: dict[str, Any] | None = None,
    *,
    status: int = 200,
) -> web.Response:
    config = request.app[appkeys.config]
    full = {**layout(request, signed), **(context or {})}
    response = aiohttp_jinja2.render_template(template, request, full, status=status)
    response.headers.update(
        {
            "Content-Security-Policy": _csp(config.oauth_linuxdo),
            "X-Frame-Options": "DENY",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "same-origin",
            "Cache-Control": "no-store",  # pages carry the session's CSRF token
            "Content-Language": full["lang"],
            "Vary": "Cookie, Accept-Language",
        }
    )
    return response


async def error_page(
    request: web.Request, status: int, title: str, message: str, *, retry: bool = True, **values: Any
) -> web.Response:
    """A page saying what went wrong; `title` and `message` are catalogue keys. It shows the
    header as signed out: it must render even when the session store is what failed."""
    context = {"title_key": title, "message_key": message, "values": values, "retry": retry}
    return render(request, "error.html", None, context, status=status)


async def signed_in_or_redirect(request: web.Request) -> sessions.SignedIn | web.Response:
    """The signed-in visitor of a page that needs one; else the page to answer instead (sign-in, or 503)."""
    try:
        signed = await sessions.signed_in(request)
    except sessions.StoreUnavailable:
        return await error_page(request, 503, "error.title", "error.unavailable", retry=False)
    if signed is None:
        return redirect(sign_in_path(request.app[appkeys.config], request.path), 302)
    return signed
