"""What a failing key's state does across real gateway processes (issue #22, DESIGN.md "Donors'
rules for their keys"): one process learns that an account is out of quota, or that a relay
refused a key, and no process sends that key another call; the relay key is cooled, not disabled."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import aiohttp
import asyncpg
import pytest

from gateway import config as config_mod
from tests.ops.test_cluster import env  # noqa: F401 (fixture)
from tests.relay.test_key_caps_processes import Process, post, ready, spawn  # noqa: F401 (fixture)
from tests.support.fake_upstream import Failure, FakeUpstream
from tests.support.seed import add_key, user_with_token

QUOTA = {"error": {"message": "You exceeded your current quota.", "type": "x", "code": "insufficient_quota"}}
REFUSED = {"error": {"message": "invalid token", "type": "x", "code": "invalid_api_key"}}


@pytest.mark.parametrize(
    ("failure", "rules", "state"),
    [
        (Failure(429, body=QUOTA), {}, ("cooling", None, 0, True)),
        (Failure(401, body=REFUSED), {"upstream_kind": "relay"}, ("cooling", None, 1, False)),
    ],
    ids=["out_of_quota", "relay_refused"],
)
async def test_one_process_learns_and_no_process_tries_the_key_again(
    spawn: Callable[[], Process],  # noqa: F811
    config: config_mod.Config,
    pool: asyncpg.Pool,
    fake_upstream: FakeUpstream,
    second_upstream: FakeUpstream,
    failure: Failure,
    rules: dict[str, str],
    state: tuple[str, None, int, bool],
) -> None:
    donor, _ = await user_with_token(pool, "donor")
    failing = await add_key(
        pool, config, donor, fake_upstream.base_url, name="failing", api_key="sk-failing-key-0000001",
        models=["gpt-4o-mini"], rules=rules,
    )  # fmt: skip
    await add_key(
        pool, config, donor, second_upstream.base_url, name="good", api_key="sk-good-key-000000002",
        models=["gpt-4o-mini"],
    )  # fmt: skip
    fake_upstream.fail_next(failure, times=100)
    _, token = await user_with_token(pool, "caller")
    procs = [spawn(), spawn()]
    async with aiohttp.ClientSession() as session:
        await ready(session, *procs)
        answers = [await post(session, procs[i % 2].port, token) for i in range(12)]
    assert [a.status for a in answers] == [200] * 12, "the other key served every call"
    assert len(fake_upstream.calls("/v1/chat/completions")) == 1, "the failing key was tried once, by one process"
    async with pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT status, disabled_by, auth_cooldowns, spent_until FROM shared_keys WHERE id = $1",
            uuid.UUID(failing.id),
        )
    status, disabled_by, cooldowns, spent = state
    assert (row["status"], row["disabled_by"], row["auth_cooldowns"]) == (status, disabled_by, cooldowns)
    assert (row["spent_until"] is not None) is spent
