"""Request bodies, before any handler decides on them: each must arrive within
`server.body_timeout`, and the bodies being read at once hold at most
`limits.max_inflight_body_bytes` per process.

    await read_body(request) -> bytes   408 request_timeout past the timeout (the connection then
                                        closes); 503 server_busy when the budget cannot hold it;
                                        413 for a Content-Length over `limits.max_body_bytes`
    body_middleware                     reads every body up front, except on the /v1 POST routes:
                                        they read theirs after the caller's per-minute check

A body reserves its Content-Length (a chunked one: `limits.max_body_bytes`, the most it may be)
while it is read. What was read stays with the request: aiohttp's `json()` and `post()` use it.
The head has its own deadline, `server.header_timeout`, kept by aiohttp's keep-alive timer (see
`ops.server`).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from gateway import appkeys
from gateway.errors import Handler, PayloadTooLarge, RequestTimeout, ServerBusy


class BodyBudget:
    """Bytes of request bodies being read now, in this process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> bool:
        if self.held + size > self.limit:
            return False
        self.held += size
        return True

    def give(self, size: int) -> None:
        self.held -= size


async def read_body(request: web.Request) -> bytes:
    app = request.app
    config = app[appkeys.config]
    most = config.limits.max_body_bytes
    if (request.content_length or 0) > most:  # refused from its head, not after reading `most` of it
        raise PayloadTooLarge(f"The request body is larger than this gateway's limit of {most} bytes.")
    size = (request.content_length or most) if request.body_exists else 0
    budget = app[BODY_BUDGET]
    if not budget.take(size):
        raise ServerBusy("The gateway is reading too many request bodies at once; try again shortly.", retry_after=1)
    try:
        async with asyncio.timeout(config.server.body_timeout):
            return await request.read()  # over limits.max_body_bytes: aiohttp raises 413
    except TimeoutError:
        request.protocol.keep_alive(False)  # the rest of a body that never came: not a next request
        raise RequestTimeout(
            f"The request body did not arrive within {config.server.body_timeout:g} seconds."
        ) from None
    finally:
        budget.give(size)


def reads_its_own_body(request: web.Request) -> bool:
    """The /v1 routes read the body themselves, after the checks that need only the head."""
    return request.method == "POST" and request.path.startswith("/v1/")


@web.middleware
async def body_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.body_exists and not reads_its_own_body(request):
        await read_body(request)
    return await handler(request)


BODY_BUDGET: web.AppKey[BodyBudget] = web.AppKey("body_budget", BodyBudget)
