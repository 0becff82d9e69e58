"""`POST /api/shared-keys/import`: a donor's many keys at once (DESIGN.md "Gemini", bulk donation).

    owner(request) -> the shared fields, checked once as `POST /api/shared-keys` checks them (422
    naming the field, nothing stored) -> one key test counted -> `keyimport.import_keys` (each key:
    duplicate, tested live 8 at a time, stored) -> one `keys` event -> the per-key results

Only the request and the answer are adapted here; the per-key work is `store/keyimport.py`'s, the
same as `sharekey keys import`. No key appears in the answer or a log line, only its mask.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web

from gateway import appkeys
from gateway.net.keytest import KeyTestResult
from gateway.store import keyimport
from gateway.store.crypto import KEYRING
from gateway.store.keyfields import IMPORT_FIELDS, IMPORT_REQUIRED, read_object, validate
from gateway.web.api.keys_api import announce, checked_new, owner
from gateway.web.api.keytests import count_key_test, probe

log = structlog.get_logger(__name__)
routes = web.RouteTableDef()


@routes.post("/api/shared-keys/import")
async def shared_keys_import(request: web.Request) -> web.Response:
    """200 `{results: [{index, hint, status, id?, error?}], added, duplicate, failed}` once the
    shared fields are valid. The import counts as one test toward `limits.key_tests_per_minute`:
    its keys are tested a few at a time, at most 500 of them, each against the checked base URL."""
    caller = await owner(request)
    app, config = request.app, request.app[appkeys.config]
    body = validate(await read_object(request), IMPORT_FIELDS, IMPORT_REQUIRED)
    entries: list[Any] = body.pop("keys")
    fields, rules = checked_new(app, body)
    await count_key_test(request, caller)
    models, base_url, api_format = fields["available_models"], fields["base_url"], fields["api_format"]

    async def test(api_key: str) -> KeyTestResult:
        return await probe(app, base_url, api_key, models, api_format)

    results = await keyimport.import_keys(
        app[appkeys.pg].acquire,
        app[KEYRING],
        caller.user_id,
        fields,
        rules,
        entries,
        test,
        timezone=config.balancer.timezone,
    )
    summary = keyimport.counts(results)
    if summary["added"]:
        await announce(app, "")
    log.info("keys_imported", api_format=api_format, models=len(models), **summary)
    return web.json_response({"results": [r.to_json() for r in results], **summary})
