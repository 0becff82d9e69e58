"""The donor's side of the gateway: `/api/shared-keys*`, where owners add, test, edit, pause and
delete their keys.

    owner(request) -> read and validate the body -> SSRF check -> stored already (by its keyed
    fingerprint, any donor)? 409 `duplicate_key` -> live test -> seal, store
    -> publish `keys` (every process reloads its index within a second) -> the item, key masked

Owns the owner check (another user's key answers 404, exactly like a missing one), the live state
shown with each key (today's count and cooldowns come from the balancer's Redis state, the
authority, not from the PostgreSQL columns), and the per-user rate limit of `POST
/api/shared-keys/test`. The key never leaves this module except sealed (`sharedkeys`) or on its
way to its own upstream (`keytest`): no response, error or log line carries it.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import structlog
from aiohttp import web

from gateway import appkeys
from gateway.errors import REDIS_DOWN, ApiError, invalid
from gateway.log import request_fields
from gateway.net import events, upstream
from gateway.relay import prices
from gateway.relay.auth import api_limited, token_caller
from gateway.relay.balancer import BALANCER
from gateway.relay.prices import PRICES
from gateway.store import keyimport, keypages, keyrules, sharedkeys
from gateway.store.crypto import KEYRING, SealError
from gateway.store.keyfields import (
    EDIT_FIELDS,
    KEY_FIELDS,
    KEY_REQUIRED,
    TEST_FIELDS,
    checked_base_url,
    read_object,
    validate,
)
from gateway.store.sharedkeys import KeyStatus, SharedKey
from gateway.store.tokens import Caller
from gateway.web.api.keytests import count_key_test, failed_test, live_test
from gateway.web.signin import sessions

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()

NOT_SIGNED_IN = "Sign in, or pass a gateway token as 'Authorization: Bearer <token>'."
NOT_FOUND = "No such key."
ADMIN_ONLY_PAUSE = "Administrators may only pause or resume other users' keys."
REBIND = "enter the key again: it is bound to its base URL"

# --- who is asking -------------------------------------------------------------------------------


async def owner(request: web.Request) -> Caller:
    """The user acting on keys: a gateway token (`Authorization: Bearer`), or else the browser
    session, whose writes must pass the Origin and CSRF checks. One check for every handler."""
    if "Authorization" not in request.headers:
        caller = await sessions.session_user(request)
        if caller is None:
            raise _not_signed_in()
        request_fields(request)["user_id"] = caller.user_id
        return caller
    return await token_caller(request, refused=_not_signed_in, unavailable=_sign_ins_unavailable, limited=api_limited)


def _not_signed_in() -> ApiError:
    return ApiError(401, "unauthorized", NOT_SIGNED_IN)


def _sign_ins_unavailable() -> ApiError:
    return ApiError(503, "service_unavailable", sessions.UNAVAILABLE)


# --- reading and validating bodies ---------------------------------------------------------------


# --- live state and the pool ---------------------------------------------------------------------


async def with_live_state(app: web.Application, keys: list[SharedKey]) -> list[SharedKey]:
    """Today's count and cooldowns from the balancer (Redis): the PostgreSQL columns lag behind
    the usage flusher and never see a cooldown end. Without Redis, the stored values are shown."""
    if not keys:
        return keys
    balancer = app[BALANCER]
    try:
        ids = [k.id for k in keys]  # only these keys: a page costs its size, not the pool's
        used = await balancer.usage_today(ids)
        cooling = await balancer.cooling(ids)
    except REDIS_DOWN as e:
        log.warning("key_live_state_unavailable", error=str(e))
        return keys
    return [_live(k, used.get(k.id, 0), k.id in cooling) for k in keys]


def _live(key: SharedKey, used: int, cooling: bool) -> SharedKey:
    status, reason = key.status, key.status_reason
    if status == KeyStatus.PAUSED:
        reason = None
    elif status != KeyStatus.DISABLED:
        status = KeyStatus.COOLING if cooling else KeyStatus.ACTIVE
        reason = reason if cooling and key.status == KeyStatus.COOLING else None
    return dataclasses.replace(key, usage_count_today=used, status=status, status_reason=reason)


async def announce(app: web.Application, key_id: str) -> None:
    """Every process reloads its key index. The change is already stored: if Redis is down the
    periodic reload (30 s) catches up, so the request still succeeds."""
    config = app[appkeys.config]
    try:
        await events.publish(app[appkeys.redis], config.redis.key_prefix, "keys", key_id)
    except REDIS_DOWN as e:
        log.warning("keys_event_not_published", key_id=key_id, error=str(e))


async def find(request: web.Request, caller: Caller, key_id: Any) -> SharedKey:
    """The key if the caller may see it (its owner, or an admin); otherwise the same 404."""
    config = request.app[appkeys.config]
    if not isinstance(key_id, str):
        raise ApiError(404, "not_found", NOT_FOUND)
    async with request.app[appkeys.pg].acquire() as conn:
        key = await sharedkeys.get_key(
            conn, key_id, timezone=config.balancer.timezone, owner_id=None if caller.is_admin else caller.user_id
        )
    if key is None:
        raise ApiError(404, "not_found", NOT_FOUND)
    return key


def require_prices(app: web.Application, models: list[str]) -> None:
    """A budget is kept in money: a model of the key without a price would never count toward it."""
    name = prices.unpriced(app[PRICES], models)
    if name is not None:
        raise invalid("daily_budget_usd", f"no price is known for the model {name!r}, so a budget cannot be kept")


def item(key: SharedKey, status: int = 200) -> web.Response:
    return web.json_response(key.to_json(), status=status)


# --- handlers ------------------------------------------------------------------------------------


def page_limit(raw: str | None) -> int:
    if raw is None:  # `?limit=`: a whole number from 1 to 500; 100 without it
        return keypages.PAGE_DEFAULT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= keypages.PAGE_MAX:
        raise invalid("limit", f"limit must be a whole number from 1 to {keypages.PAGE_MAX}")
    return int(raw)


@routes.get("/api/shared-keys")
async def shared_keys_get(request: web.Request) -> web.Response:
    """The caller's keys, a page at a time: `{"keys": [...], "next": cursor | null}`, oldest first
    ((created_at, id) order); `?limit=` (default 100, at most 500), `?after=<next>` for the next
    page; `?all=1` pages through every key for an admin; `?id=` one key (or 404)."""
    caller = await owner(request)
    config = request.app[appkeys.config]
    if "id" in request.query:
        keys = await with_live_state(request.app, [await find(request, caller, request.query["id"])])
        return web.json_response({"keys": [k.to_json() for k in keys]})
    limit = page_limit(request.query.get("limit"))
    everyone = caller.is_admin and request.query.get("all") in ("1", "true")
    try:
        async with request.app[appkeys.pg].acquire() as conn:
            keys, after = await keypages.page_keys(
                conn,
                timezone=config.balancer.timezone,
                owner_id=None if everyone else caller.user_id,
                after=request.query.get("after") or None,
                limit=limit,
            )
    except keypages.BadCursor:
        raise invalid("after", "after must be the 'next' value of a previous page") from None
    keys = await with_live_state(request.app, keys)
    return web.json_response({"keys": [k.to_json() for k in keys], "next": after})


def checked_new(app: web.Application, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The checked fields of a new key (or of every key of an import), its base URL normalised
    by the address policy, and its rules: one place for `POST` and `POST …/import`."""
    config, models = app[appkeys.config], fields["available_models"]
    if fields.get("daily_budget_usd") is not None:
        require_prices(app, models)
    fields = {**fields, "api_format": fields.get("api_format", "openai")}
    fields["base_url"] = checked_base_url(config, fields["base_url"], api_format=fields["api_format"])
    return fields, keyrules.merged(fields, keyrules.DEFAULTS, models, config.upstream.allowed_features)


def duplicate_key() -> ApiError:
    return ApiError(409, "duplicate_key", sharedkeys.DUPLICATE, "api_key")  # neither the key nor whose it is


async def refuse_shared(app: web.Application, api_key: str, except_id: str | None = None) -> None:
    """409 before a live test when the key is stored already, by anyone."""
    async with app[appkeys.pg].acquire() as conn:
        if await keyimport.already_shared(conn, app[KEYRING], [api_key], except_id=except_id):
            raise duplicate_key()


@routes.post("/api/shared-keys")
async def shared_keys_post(request: web.Request) -> web.Response:
    caller = await owner(request)
    app, config = request.app, request.app[appkeys.config]
    fields, rules = checked_new(app, validate(await read_object(request), KEY_FIELDS, KEY_REQUIRED))
    async with app[appkeys.pg].acquire() as conn:
        if await sharedkeys.name_taken(conn, caller.user_id, fields["name"]):
            raise invalid("name", f"you already have a key named {fields['name']!r}")
    await refuse_shared(app, fields["api_key"])
    await count_key_test(request, caller)  # a live test like /test's, under the same limit
    api_format = fields["api_format"]
    result = await live_test(app, fields["base_url"], fields["api_key"], fields["available_models"], api_format)
    if not result.ok:
        raise failed_test(result)  # nothing stored
    new = keyimport.new_key(caller.user_id, fields["name"], fields["api_key"], fields)
    async with app[appkeys.pg].acquire() as conn:
        try:
            key = await keyimport.add_key(conn, app[KEYRING], new, rules, timezone=config.balancer.timezone)
        except sharedkeys.KeyNameTaken as e:  # a concurrent add with the same name won the race
            raise invalid("name", str(e)) from None
        except sharedkeys.DuplicateKey:  # or with the same key
            raise duplicate_key() from None
    await announce(app, key.id)
    log.info(
        "key_added", key_id=key.id, models=len(key.available_models), private=key.is_private, api_format=api_format
    )
    [key] = await with_live_state(app, [key])
    return item(key, 201)


@routes.put("/api/shared-keys")
async def shared_keys_put(request: web.Request) -> web.Response:
    """A partial update. A new base URL, key, model or api_format is tested live; so is resuming a
    disabled key (with its stored key). A passing test makes the key active again and clears its
    cooldown."""
    caller = await owner(request)
    app, config = request.app, request.app[appkeys.config]
    body = await read_object(request)
    if "id" not in body:
        raise invalid("id", "id is required")
    key_id = body.pop("id")
    fields = validate(body, EDIT_FIELDS)
    current = await find(request, caller, key_id)
    if current.owner_id != caller.user_id and set(fields) - {"is_active"}:
        raise ApiError(403, "forbidden", ADMIN_ONLY_PAUSE)

    base_url = (
        checked_base_url(config, fields["base_url"], api_format=fields.get("api_format", current.api_format))
        if "base_url" in fields
        else current.base_url
    )
    api_key: str | None = fields.get("api_key")
    if base_url != current.base_url and api_key is None:
        raise invalid("api_key", REBIND)
    name = fields.get("name", current.name)
    models = fields.get("available_models", current.available_models)
    api_format = fields.get("api_format", current.api_format)
    rules = keyrules.merged(fields, current.rules, models, config.upstream.allowed_features)
    budget = fields.get("daily_budget_usd", current.daily_budget_usd)
    if budget is not None and {"daily_budget_usd", "available_models"} & set(fields):
        require_prices(app, models)
    if name != current.name:
        async with app[appkeys.pg].acquire() as conn:
            if await sharedkeys.name_taken(conn, current.owner_id, name):
                raise invalid("name", f"you already have a key named {name!r}")

    resuming = current.status == KeyStatus.DISABLED and fields.get("is_active") is True
    # A model the key did not serve before is checked like one on a new key: routed to a key that
    # cannot serve it, every request for it would fail over and cool the key for all its models.
    adds_models = bool(set(models) - set(current.available_models))
    # Another format is another way of calling the upstream: the stored key is tested in it.
    tested = api_key is not None or resuming or adds_models or api_format != current.api_format
    if api_key is not None:
        await refuse_shared(app, api_key, except_id=current.id)  # its own key entered again is no duplicate
    if tested:
        await count_key_test(request, caller)
        key_text = api_key if api_key is not None else await stored_key(app, current.id)
        result = await live_test(app, base_url, key_text, models, api_format)
        if not result.ok:
            raise failed_test(result)
    edit = sharedkeys.KeyEdit(
        name=name,
        base_url=base_url,
        available_models=models,
        daily_limit=fields.get("daily_limit", current.daily_limit),
        daily_budget_usd=fields.get("daily_budget_usd", current.daily_budget_usd),
        description=fields["description"] if "description" in fields else current.description,
        tags=fields.get("tags", current.tags),
        is_active=fields.get("is_active", current.is_active),
        is_private=fields.get("is_private", current.is_private),
        stream_usage=fields.get("stream_usage", current.stream_usage),
        api_format=api_format,
        api_key=api_key,
        reactivate=tested,
    )
    async with app[appkeys.pg].acquire() as conn:
        try:
            async with conn.transaction():
                key = await sharedkeys.update_key(
                    conn, app[KEYRING], current.id, current.owner_id, edit, timezone=config.balancer.timezone
                )
                if key is not None and rules != current.rules:
                    await keyrules.store(conn, key.id, rules)
                    key = dataclasses.replace(key, rules=rules)
        except sharedkeys.KeyNameTaken as e:
            raise invalid("name", str(e)) from None
        except sharedkeys.DuplicateKey:
            raise duplicate_key() from None
    if key is None:  # deleted (or its URL changed) while we tested
        raise ApiError(404, "not_found", NOT_FOUND)
    if tested:
        try:
            await app[BALANCER].clear(key.id)
        except REDIS_DOWN as e:  # the cooldown then runs out on its own
            log.warning("key_clear_failed", key_id=key.id, error=str(e))
    await announce(app, key.id)
    log.info(
        "key_updated", key_id=key.id, fields=sorted(fields), tested=tested, by_admin=key.owner_id != caller.user_id
    )
    [key] = await with_live_state(app, [key])
    return item(key)


async def stored_key(app: web.Application, key_id: str) -> str:
    """The sealed key in the clear, to test it again when a disabled key is resumed."""
    async with app[appkeys.pg].acquire() as conn:
        try:
            text = await sharedkeys.open_key(conn, app[KEYRING], key_id)
        except SealError as e:
            log.error("key_unsealable", key_id=key_id, reason=str(e))
            raise invalid("api_key", "the stored key can no longer be read; enter it again") from None
    if text is None:
        raise ApiError(404, "not_found", NOT_FOUND)
    return text


@routes.delete("/api/shared-keys")
async def shared_keys_delete(request: web.Request) -> web.Response:
    caller = await owner(request)
    app = request.app
    if "id" not in request.query:
        raise invalid("id", "id is required")
    key = await find(request, caller, request.query["id"])
    if key.owner_id != caller.user_id:
        raise ApiError(403, "forbidden", ADMIN_ONLY_PAUSE)
    async with app[appkeys.pg].acquire() as conn:
        deleted = await sharedkeys.delete_key(conn, key.id, key.owner_id)
    if not deleted:
        raise ApiError(404, "not_found", NOT_FOUND)
    try:
        await app[BALANCER].clear(key.id)  # no cooldown entry outlives its key
    except REDIS_DOWN as e:
        log.warning("key_clear_failed", key_id=key.id, error=str(e))
    await announce(app, key.id)
    log.info("key_deleted", key_id=key.id)
    return web.Response(status=204)


@routes.post("/api/shared-keys/test")
async def shared_keys_test(request: web.Request) -> web.Response:
    """`{ok, latency_ms, models, error}`, always 200 once the input is valid.

    A base URL the SSRF policy refuses is not a 422 here but the same `ok: false` as an
    unreachable upstream, so that this endpoint cannot tell a refused address from a closed port.
    Only what is wrong with the URL as written (scheme, user info, syntax) is a 422.
    """
    caller = await owner(request)
    app, config = request.app, request.app[appkeys.config]
    fields = validate(await read_object(request), TEST_FIELDS, ("base_url", "api_key"))
    api_format = fields.get("api_format", "openai")
    base_url = checked_base_url(config, fields["base_url"], allow_private=True, api_format=api_format)  # as written
    await count_key_test(request, caller)
    started = time.monotonic()
    try:
        checked_base_url(config, base_url)  # the address policy
    except ApiError:
        latency_ms = round((time.monotonic() - started) * 1000)
        log.info("key_tested", ok=False, reason="unreachable", cause="refused_address", latency_ms=latency_ms)
        return web.json_response({"ok": False, "latency_ms": latency_ms, "models": [], "error": upstream.UNREACHABLE})
    model = fields.get("model")
    result = await live_test(app, base_url, fields["api_key"], [model] if model else None, api_format)
    return web.json_response(
        {"ok": result.ok, "latency_ms": result.latency_ms, "models": result.models, "error": result.error}
    )
