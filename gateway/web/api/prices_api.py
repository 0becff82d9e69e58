"""`/api/prices`: model prices set by admins (USD per million tokens), over the price library.

    GET  [?model=name,…] -> {"prices": {model: price}, "configured": {…}, "effective": {model: price|null}}
    PUT  {"prices": {model: {"input", "output", "cache_read"?, "cache_write"?}}} -> 200, the GET shape
         replaces the admins' set

A price is matched on the name the upstream is asked for (after per-key names and aliases). The
admins' set lives in PostgreSQL (`model_prices`) and wins over `[prices."<model>"]` and the price
library for the same model; a change reaches every gateway process within a second (a `prices`
event reloads each process's table, see `relay.prices`). `effective` shows, for each model asked
for with `?model=` (or else each model that has a configured or admins' price), the price in force
and where it comes from.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, ApiError, invalid
from gateway.relay import prices
from gateway.relay.prices import PRICES
from gateway.store import modelnames
from gateway.store.keyfields import CONTROL, read_object
from gateway.web.api.admin_tables import replace_table, require_admin

routes = web.RouteTableDef()

MAX_PRICES = 2000
ADMINS_ONLY = "Only administrators can read or change prices."


@routes.get("/api/prices")
async def get_prices(request: web.Request) -> web.Response:
    await require_admin(request, ADMINS_ONLY)
    asked = [m.strip() for m in request.query.get("model", "").split(",") if m.strip()][:100]
    return web.json_response(await _current(request.app, asked))


@routes.put("/api/prices")
async def put_prices(request: web.Request) -> web.Response:
    await require_admin(request, ADMINS_ONLY)
    body = await read_object(request)
    if set(body) != {"prices"}:
        raise invalid("prices", 'the body is {"prices": {"model": {"input": …, "output": …}}}')
    table = checked(body["prices"])
    app = request.app
    await replace_table(
        app,
        table="model_prices",
        insert="INSERT INTO model_prices (model, input, output, cache_read, cache_write) VALUES ($1, $2, $3, $4, $5)",
        rows=[(m, p.input, p.output, p.cache_read, p.cache_write) for m, p in table.items()],
        reload=app[PRICES].reload,
        event="prices",
        what="prices",
    )
    return web.json_response(await _current(app, []))


def checked(value: Any) -> dict[str, prices.Price]:
    if not isinstance(value, dict) or len(value) > MAX_PRICES:
        raise invalid("prices", f"prices must be an object of at most {MAX_PRICES} models")
    out: dict[str, prices.Price] = {}
    for model, price in value.items():
        if not isinstance(model, str) or not model.strip():
            raise invalid("prices", "every model name must be a non-empty string")
        name = model.strip()
        if len(name) > modelnames.MAX_NAME or CONTROL.search(name):
            raise invalid("prices", f"model names have at most {modelnames.MAX_NAME} characters, no control characters")
        try:
            out[name] = prices.checked(name, price, "admin")
        except ValueError as e:
            raise invalid("prices", str(e)) from None
    return out


def _shown(price: prices.Price) -> dict[str, Any]:
    d = price.as_dict()
    del d["source"]
    return d


async def _current(app: web.Application, asked: list[str]) -> dict[str, Any]:
    try:
        admins = await prices.load(app[appkeys.pg])
    except (*POSTGRES_DOWN, asyncpg.PostgresError):
        raise ApiError(503, "unavailable", "The gateway cannot read prices right now; try again shortly.") from None
    table = app[PRICES]
    models = asked or sorted({*admins, *table.configured})
    return {
        "prices": {m: _shown(p) for m, p in sorted(admins.items())},
        "configured": {m: _shown(p) for m, p in sorted(table.configured.items())},
        "effective": {m: (p.as_dict() if (p := table.get(m)) else None) for m in models},
    }
