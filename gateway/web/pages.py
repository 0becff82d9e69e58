"""Server-rendered pages for signed-in donors: `/keys` and `/tokens`, and the language switch.

The pages write through the JSON API (`/api/shared-keys`, `/api/tokens`) with a little vanilla
JavaScript from `static/`, sending the session's CSRF token in `X-CSRF-Token`; after a change the
script fetches the page again and swaps the list in, so there is one renderer of each list. The
key lists come from the same functions as `GET /api/shared-keys`. A donor key is never rendered:
only its mask. The layout around each page is the frame's (`web/frame.py`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import structlog
from aiohttp import web
from markupsafe import Markup

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, REDIS_DOWN
from gateway.relay import capusage
from gateway.relay.balancer import BALANCER
from gateway.store import keypages
from gateway.store.sharedkeys import SharedKey
from gateway.web import frame, i18n
from gateway.web.api import keys_api, tokens_api
from gateway.web.board import charts
from gateway.web.signin import sessions

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

LANG_COOKIE_SECONDS = 365 * 86400


# --- the pages -----------------------------------------------------------------------------------


@routes.get("/keys", name="keys_page")
async def keys_page(request: web.Request) -> web.Response:
    signed = await frame.signed_in_or_redirect(request)
    if isinstance(signed, web.Response):
        return signed
    config = request.app[appkeys.config]
    after = request.query.get("after") or None  # a page at a time, `next` of GET /api/shared-keys
    try:
        async with request.app[appkeys.pg].acquire() as conn:
            keys, next_page = await keypages.page_keys(
                conn, timezone=config.balancer.timezone, owner_id=signed.user.id, after=after
            )
            today = datetime.now(ZoneInfo(config.balancer.timezone)).date()
            spend = await keypages.spend_days(conn, [k.id for k in keys], today)
    except keypages.BadCursor:  # a mangled or made-up link (a date out of range too): said so, in 422
        context = {"title_key": "error.title", "message_key": "error.bad_after", "values": {}, "retry": False}
        return frame.render(request, "error.html", signed, context, status=422)
    except POSTGRES_DOWN:
        return await frame.error_page(request, 503, "error.title", "error.unavailable", retry=False)
    keys = await keys_api.with_live_state(request.app, keys)
    context = {"keys": keys, "next_page": next_page, "paged": after is not None, "caps": await _caps(request.app, keys)}
    return frame.render(request, "keys.html", signed, {**context, "spend_charts": _spend_charts(request, spend)})


async def _caps(app: web.Application, keys: list[SharedKey]) -> dict[str, capusage.CapUsage]:
    """What each capped key of the page uses of its caps now, in one Redis round trip for the page;
    without Redis, none (the page shows the caps alone)."""
    capped = {k.id: list(k.rules["model_daily_limits"]) for k in keys if capusage.capped(k.rules)}
    balancer, prefix = app[BALANCER], app[appkeys.config].redis.key_prefix
    try:
        return await capusage.in_use(
            app[appkeys.redis], prefix, capped, now_ms=balancer.guess_now(), day=balancer.today()
        )
    except REDIS_DOWN as e:
        log.warning("key_caps_unavailable", error=str(e))
        return {}


def _spend_charts(request: web.Request, spend: dict[str, list[Decimal]]) -> dict[str, Markup]:
    """Per key, a sparkline of its spend per day over the last 30 days (today last); the day's
    amounts (USD) are in its `data-values`."""
    t = i18n.translator(i18n.language(request))
    return {
        key_id: charts.sparkline(
            [float(v) for v in days],
            t("key.spend_chart", days=len(days), total=f"{sum(days, Decimal(0)):.2f}"),
            data=[f"{v:.6f}" for v in days],
        )
        for key_id, days in spend.items()
    }


@routes.get("/tokens", name="tokens_page")
async def tokens_page(request: web.Request) -> web.Response:
    signed = await frame.signed_in_or_redirect(request)
    if isinstance(signed, web.Response):
        return signed
    config = request.app[appkeys.config]
    try:
        async with request.app[appkeys.pg].acquire() as conn:
            listed = await tokens_api.list_tokens(conn, signed.user.id, request.app[BALANCER].today())
    except POSTGRES_DOWN:
        return await frame.error_page(request, 503, "error.title", "error.unavailable", retry=False)
    base_url = config.server.public_url.rstrip("/") + "/v1"
    return frame.render(request, "tokens.html", signed, {"tokens": listed, "base_url": base_url})


@routes.get("/lang/{lang}", name="language")
async def language(request: web.Request) -> web.Response:
    """The language switch: remembers the choice in the `lang` cookie and goes back."""
    lang = request.match_info["lang"]
    if lang not in i18n.LANGUAGES:
        raise web.HTTPNotFound()
    response = frame.redirect(frame.local_path(request.query.get("next")))
    sessions.set_cookie(request.app, response, i18n.COOKIE, lang, LANG_COOKIE_SECONDS)
    return response
