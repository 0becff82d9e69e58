"""The thanks board's surface: the public JSON, the home page and the full board, and the donor's
choice to appear anonymously.

    GET /api/shared-keys/thanks-board?period=today|7d|30d|all&limit=N   public JSON
    GET /                                                              home: now serving, today's top, pool
    GET /thanks?period=…                                               the full board, period switch as links
    PUT /api/me {"anonymous": bool}                                    owner (session + CSRF, or bearer)

Everything comes from the board's snapshot (`cache.Board`, one database query per few seconds
per process). The data-driven part of each page (`#live`: numbers, rows, charts) is rendered once
per snapshot, language and period and memoised in the snapshot; a request then only renders the
layout around it. `static/thanks.js` polls the JSON and, when it changed, swaps `#live` from a
fresh copy of the page; without JavaScript the page is complete, just not live.

Donor-supplied text (names, model names) is escaped by Jinja and by `charts`; avatars come only
from the sign-in provider's host; nothing here shows a key, a base URL, an address, or anything
of a user's own gateway use.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import aiohttp_jinja2
import asyncpg
from aiohttp import web
from markupsafe import Markup

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, ApiError, invalid
from gateway.store import users
from gateway.store.keyfields import read_object
from gateway.web import frame, i18n
from gateway.web.api import keys_api
from gateway.web.board import charts
from gateway.web.board.cache import BOARD
from gateway.web.board.snapshot import DEFAULT_PERIOD, PERIODS, BoardUnavailable, Donor, Snapshot, public
from gateway.web.signin import sessions

routes = web.RouteTableDef()

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
HOME_TOP = 5
PAGE_ROWS = 200  # /thanks shows this many; the JSON takes ?limit= up to MAX_LIMIT
POLL_SECONDS = 5.0  # how often the pages' script asks for the JSON
VISITOR_SECONDS = 10.0  # how long a signed-in visitor's user row is reused by these pages
VISITOR_CACHE_SIZE = 10_000

UNAVAILABLE = "The thanks board cannot be read right now; try again shortly."


# --- who is looking ------------------------------------------------------------------------------


class Visitors:
    """The signed-in visitor of a public page, for its header. The session is read from Redis
    as on every page, but the user row is reused for a few seconds: a signed-in reader whose
    page refreshes itself costs no database query each time."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._users: dict[str, tuple[float, users.User | None]] = {}

    async def get(self, request: web.Request) -> sessions.SignedIn | None:
        if not sessions.get_cookie(request, sessions.COOKIE):
            return None
        try:
            session = await sessions.load(request)
        except sessions.StoreUnavailable:
            return None  # the page still shows, signed out
        if session is None:
            return None
        now = time.monotonic()
        cached = self._users.get(session.user_id)
        if cached is not None and cached[0] > now:
            user = cached[1]
        else:
            try:
                async with self._pool.acquire(timeout=5) as conn:
                    user = await users.get_by_id(conn, session.user_id)
            except POSTGRES_DOWN:
                return None
            if len(self._users) >= VISITOR_CACHE_SIZE:
                self._users.clear()
            self._users[session.user_id] = (now + VISITOR_SECONDS, user)
        return sessions.SignedIn(session, user) if user is not None else None

    def forget(self, user_id: str) -> None:
        self._users.pop(user_id, None)


# --- the JSON --------------------------------------------------------------------------------------


def period_of(request: web.Request) -> str:
    period = request.query.get("period", DEFAULT_PERIOD)
    if period not in PERIODS:
        raise invalid("period", "period must be one of: today, 7d, 30d, all")
    return period


def limit_of(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 4) or not 1 <= int(raw) <= MAX_LIMIT:
        raise invalid("limit", f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(raw)


async def snapshot_of(app: web.Application) -> Snapshot:
    try:
        return await app[BOARD].get()
    except BoardUnavailable:
        raise ApiError(503, "service_unavailable", UNAVAILABLE) from None


@routes.get("/api/shared-keys/thanks-board", name="thanks_board")
async def thanks_board(request: web.Request) -> web.Response:
    """Public: donors ranked by calls in the period, and the pool's totals (see DESIGN.md)."""
    period, limit = period_of(request), limit_of(request)
    snapshot = await snapshot_of(request.app)
    return web.Response(
        body=snapshot.board_json(period, limit),
        content_type="application/json",
        charset="utf-8",
        headers={"Cache-Control": "public, max-age=2", "Access-Control-Allow-Origin": "*"},
    )


# --- the pages -------------------------------------------------------------------------------------


def _percent(fraction: float) -> str:
    percent = fraction * 100
    return f"{percent:.0f}" if percent >= 10 or percent == 0 else f"{percent:.1f}"


def usd(value: float) -> str:
    """Dollars as the pages show them: "$41.20" (cents, rounded; thousands separated)."""
    return f"${value:,.2f}"


def row(snapshot: Snapshot, donor: Donor, rank: int, period: str, t: Any) -> dict[str, Any]:
    """What a page shows of a donor (the same fields as the JSON, plus its charts)."""
    share = snapshot.share_today(donor)
    shown = public(donor)
    return {
        **snapshot.entry(donor, rank, period),
        "name": shown["display_name"],
        "login": shown["username"],
        "avatar": shown["avatar_url"] or frame.asset(frame.PLACEHOLDER_AVATAR),
        "last_served_at": donor.last_served_at,
        "cooling_keys": donor.cooling_keys,
        "disabled_keys": donor.disabled_keys,
        "percent": _percent(share),
        "share_bar": charts.share_bar(share, t("board.share_of", percent=_percent(share))),
        "spark": charts.sparkline(donor.daily_calls, t("board.spark", calls=f"{sum(donor.daily_calls):,}")),
    }


def pool_chart(snapshot: Snapshot, t: Any) -> Markup:
    titles = [
        t("chart.day", day=d.strftime("%m-%d"), calls=f"{n:,}")
        for d, n in zip(snapshot.days, snapshot.pool_daily_calls, strict=True)
    ]
    label = t("chart.pool", today=f"{snapshot.pool_daily_calls[-1]:,}")
    return charts.day_bars(snapshot.days, snapshot.pool_daily_calls, label, titles)


def live_fragment(request: web.Request, snapshot: Snapshot, template: str, period: str) -> Markup:
    """The `#live` part of a page, rendered once per snapshot, language and period."""
    lang = i18n.language(request)
    key = ("html", template, lang, period)
    html = snapshot.memo.get(key)
    if html is None:
        context = frame.layout(request, None)
        t = context["t"]
        ranked = snapshot.ranked(period)
        shown = ranked[:HOME_TOP] if template == "_home_live.html" else ranked[:PAGE_ROWS]
        now = snapshot.now_serving
        context.update(
            snapshot=snapshot,
            period=period,
            periods=list(PERIODS),
            rows=[row(snapshot, d, rank, period, t) for rank, d in enumerate(shown, 1)],
            more=max(0, len(ranked) - len(shown)),
            period_calls=sum(d.calls(period) for d in snapshot.donors),
            period_tokens=sum(d.tokens(period) for d in snapshot.donors),
            period_value=sum(d.value(period) for d in snapshot.donors),
            usd=usd,
            now_serving=row(snapshot, now, 0, period, t) if now else None,
            pool_chart=pool_chart(snapshot, t),
            capacity_chart=charts.capacity(snapshot.capacity, t("chart.capacity"), t("chart.capacity.row")),
        )
        html = snapshot.memo[key] = Markup(aiohttp_jinja2.get_env(request.app).get_template(template).render(context))
    assert isinstance(html, Markup)
    return html


async def _page(request: web.Request, template: str, fragment: str, period: str) -> web.Response:
    visitor = await request.app[VISITORS].get(request)
    try:
        snapshot = await request.app[BOARD].get()
    except BoardUnavailable:
        return frame.render(
            request,
            "error.html",
            visitor,
            {"title_key": "error.title", "message_key": "error.board_unavailable", "values": {}, "retry": False},
            status=503,
        )
    # What the script polls to notice a change: the totals move with every call, the rows shown first.
    limit = HOME_TOP if fragment == "_home_live.html" else DEFAULT_LIMIT
    context = {
        "live": live_fragment(request, snapshot, fragment, period),
        "period": period,
        "totals": snapshot.totals,
        "poll_seconds": POLL_SECONDS,
        "board_api": f"/api/shared-keys/thanks-board?period={period}&limit={limit}",
    }
    return frame.render(request, template, visitor, context)


@routes.get("/", name="home")
async def home_page(request: web.Request) -> web.Response:
    return await _page(request, "home.html", "_home_live.html", DEFAULT_PERIOD)


@routes.get("/thanks", name="thanks_page")
async def thanks_page(request: web.Request) -> web.Response:
    period = request.query.get("period", DEFAULT_PERIOD)
    if period not in PERIODS:
        visitor = await request.app[VISITORS].get(request)
        context = {"title_key": "error.title", "message_key": "error.bad_period", "values": {}, "retry": False}
        return frame.render(request, "error.html", visitor, context, status=422)
    return await _page(request, "thanks.html", "_thanks_live.html", period)


# --- the donor's choice ----------------------------------------------------------------------------

SET_ANONYMOUS = "UPDATE users SET anonymous = $2, updated_at = now() WHERE id = $1 RETURNING username, anonymous"


@routes.put("/api/me", name="me")
async def me_put(request: web.Request) -> web.Response:
    """`{"anonymous": true|false}`: whether the board and `X-Sharekey-Provider` name this donor.
    Every process reloads its key index (the header follows within a second); boards follow
    within their cache's lifetime, this process' at once."""
    caller = await keys_api.owner(request)
    body = await read_object(request)
    for name in body:
        if name != "anonymous":
            raise invalid(name, f"unknown field {name!r}")
    anonymous = body.get("anonymous")
    if not isinstance(anonymous, bool):
        raise invalid("anonymous", "anonymous must be true or false")
    app = request.app
    async with app[appkeys.pg].acquire() as conn:
        row = await conn.fetchrow(SET_ANONYMOUS, uuid.UUID(caller.user_id), anonymous)
    if row is None:
        raise ApiError(404, "not_found", "No such user.")
    app[BOARD].invalidate()
    app[VISITORS].forget(caller.user_id)
    await keys_api.announce(app, "")
    return web.json_response({"username": row["username"], "anonymous": row["anonymous"]})


VISITORS: web.AppKey[Visitors] = web.AppKey("visitors", Visitors)
