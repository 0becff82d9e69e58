"""Testing a donor's key live, as `POST /api/shared-keys/test`, adding a key, and changing or
resuming one do (`keys_api`): the test itself, what a failed one answers (the field it is about),
and one per-user limit over all of them (`limits.key_tests_per_minute`). A test the egress proxy
failed judges nothing (503 `proxy_unavailable`); no answer names the key.
"""

from __future__ import annotations

import time

from aiohttp import web

from gateway import appkeys
from gateway.errors import REDIS_DOWN, ApiError
from gateway.net import keytest, redisnames
from gateway.net.h1 import UPSTREAM_POOL
from gateway.net.keytest import KeyTestResult
from gateway.store import modelnames
from gateway.store.tokens import Caller

# Which field a failed live test is about, so a form can point at it.
TEST_FAILURE_FIELD = {
    "model_not_offered": "available_models",
    "unreachable": "base_url",
    "not_openai_compatible": "base_url",
    "upstream_error": "base_url",
}


async def probe(
    app: web.Application, base_url: str, api_key: str, models: list[str] | None, api_format: str
) -> KeyTestResult:
    """The live test as it came out, a failed egress proxy included (a bulk import reports it per key)."""
    pool, timeout = app[UPSTREAM_POOL], app[appkeys.config].upstream.test_timeout
    names = modelnames.upstream_names(models)
    return await keytest.test_key(pool, base_url, api_key, names, timeout=timeout, api_format=api_format)


async def live_test(
    app: web.Application, base_url: str, api_key: str, models: list[str] | None, api_format: str
) -> KeyTestResult:
    """A test the egress proxy failed judged nothing: 503 `proxy_unavailable`, the key unjudged."""
    result = await probe(app, base_url, api_key, models, api_format)
    if result.reason == "proxy_unavailable":
        raise ApiError(503, "proxy_unavailable", f"the key was not tested: {result.error}", retry_after=5)
    return result


def failed_test(result: KeyTestResult) -> ApiError:
    field = TEST_FAILURE_FIELD.get(result.reason or "", "api_key")
    return ApiError(422, "key_test_failed", f"the key failed its live test: {result.error}", field)


async def count_key_test(request: web.Request, caller: Caller) -> None:
    """A fixed one-minute window per user (INCR + EXPIRE) over every live key test: the test
    endpoint, adding a key, and re-testing one on edit. Over the limit: 429 with Retry-After."""
    config = request.app[appkeys.config]
    limit = config.limits.key_tests_per_minute
    if limit <= 0:
        return
    now = time.time()
    minute = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(now))
    key = redisnames.key_tests(config.redis.key_prefix, caller.user_id, minute)
    try:
        async with request.app[appkeys.redis].pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.expire(key, 120)
            count, _ = await pipe.execute()
    except REDIS_DOWN:  # fail closed: an unlimited test endpoint is a scanner
        raise ApiError(503, "service_unavailable", "Key tests are unavailable right now; try again shortly.") from None
    if int(count) > limit:
        message = f"At most {limit} key tests a minute; try again shortly."
        raise ApiError(429, "rate_limited", message, retry_after=max(1, 60 - int(now % 60)))
