"""`/api/models/aliases`: gateway-wide model aliases, for admins.

    GET  -> {"aliases": {public: [target, …]}, "configured": {…}}   the admins' set and the config's
    PUT  {"aliases": {public: [target, …]}} -> 200 with the same shape  replaces the admins' set

An alias lets any key that serves one of its targets answer a request for the public name, each
key getting the name it serves (see `store.modelnames`). The admins' set lives in PostgreSQL
(`model_aliases`) and wins over `[models] aliases` for the same public name; a change reaches
every gateway process within a second (an `aliases` event reloads each key index).
"""

from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from gateway import appkeys
from gateway.errors import POSTGRES_DOWN, ApiError, invalid
from gateway.relay.keyindex import KEY_INDEX, load_aliases
from gateway.store import modelnames
from gateway.store.keyfields import CONTROL, read_object
from gateway.web.api.admin_tables import replace_table, require_admin

routes = web.RouteTableDef()

MAX_ALIASES = 1000
MAX_TARGETS = 100
ADMINS_ONLY = "Only administrators can change model aliases."


@routes.get("/api/models/aliases")
async def get_aliases(request: web.Request) -> web.Response:
    await require_admin(request, ADMINS_ONLY)
    return web.json_response(await _current(request.app))


@routes.put("/api/models/aliases")
async def put_aliases(request: web.Request) -> web.Response:
    await require_admin(request, ADMINS_ONLY)
    body = await read_object(request)
    if set(body) != {"aliases"}:
        raise invalid("aliases", 'the body is {"aliases": {"public name": ["target", …]}}')
    aliases = checked(body["aliases"])
    app = request.app
    await replace_table(
        app,
        table="model_aliases",
        insert="INSERT INTO model_aliases (public_name, targets) VALUES ($1, $2)",
        rows=aliases.items(),
        reload=app[KEY_INDEX].reload,
        event="aliases",
        what="aliases",
    )
    return web.json_response(await _current(app))


def checked(value: Any) -> dict[str, list[str]]:
    if not isinstance(value, dict) or len(value) > MAX_ALIASES:
        raise invalid("aliases", f"aliases must be an object of at most {MAX_ALIASES} public names")
    out: dict[str, list[str]] = {}
    for public, targets in value.items():
        name = _name(public, "aliases")
        if not isinstance(targets, list) or not 1 <= len(targets) <= MAX_TARGETS:
            raise invalid("aliases", f"the targets of {name!r} must be a list of 1 to {MAX_TARGETS} names")
        cleaned = []
        for target in targets:
            target = _name(target, "aliases")
            if target != name and target not in cleaned:
                cleaned.append(target)
        if not cleaned:
            raise invalid("aliases", f"{name!r} needs a target other than itself")
        out[name] = cleaned
    return out


def _name(value: Any, field: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(field, "every model name must be a non-empty string")
    value = value.strip()
    if len(value) > modelnames.MAX_NAME or CONTROL.search(value) or "=" in value:
        raise invalid(field, f"model names have at most {modelnames.MAX_NAME} characters, no control characters or '='")
    return value


async def _current(app: web.Application) -> dict[str, Any]:
    try:
        admins = await load_aliases(app[appkeys.pg])
    except (*POSTGRES_DOWN, asyncpg.PostgresError):
        raise ApiError(503, "unavailable", "The gateway cannot read aliases right now; try again shortly.") from None
    configured = app[appkeys.config].models.aliases
    return {
        "aliases": {k: list(v) for k, v in sorted(admins.items())},
        "configured": {k: list(v) for k, v in sorted(configured.items())},
    }
