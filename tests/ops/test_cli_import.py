"""`sharekey keys import`: many keys from standard input, each tested live, one line each."""

from __future__ import annotations

import asyncio

import asyncpg

from tests.support.clirun import sharekey
from tests.support.fake_upstream import FakeUpstream

GOOD = ["sk-cli-import-good-aaaa1111", "sk-cli-import-good-bbbb2222"]
BAD = "sk-cli-import-bad-cccc3333"


async def test_keys_from_standard_input_are_added_refused_or_found_shared(
    cli_env: dict[str, str], pool: asyncpg.Pool, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.valid_keys = set(GOOD)
    assert sharekey("users", "add", "dora", env=cli_env).code == 0
    assert sharekey("users", "add", "erin", env=cli_env).code == 0
    base = ["keys", "import", "--base-url", fake_upstream.base_url, "--models", "gpt-4o-mini", "--rpm-limit", "7"]
    stdin = f"# my keys\n{GOOD[0]}\n\n  {BAD}\n{GOOD[0]}\n{GOOD[1]}\n"

    done = await asyncio.to_thread(sharekey, *base, "--user", "dora", "--daily-limit", "60", env=cli_env, input=stdin)
    assert done.code == 0, done.err
    lines = done.out.splitlines()
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT id, name, daily_limit, rpm_limit FROM shared_keys ORDER BY name")
    ids = {r["name"]: str(r["id"]) for r in rows}
    assert lines == [
        f"added {ids['imported-1']} sk-…1111",
        "failed sk-…3333: the key failed its live test: the upstream rejected the key",
        "duplicate sk-…1111",
        f"added {ids['imported-2']} sk-…2222",
        "2 added, 1 duplicate, 1 failed",
    ]
    assert [(r["daily_limit"], r["rpm_limit"]) for r in rows] == [(60, 7), (60, 7)]
    assert not [k for k in (*GOOD, BAD) if k in done.out + done.err]

    shared = await asyncio.to_thread(
        sharekey, *base, "--user", "erin", "--name-prefix", "mine", env=cli_env, input="\n".join(GOOD)
    )
    assert (shared.code, shared.out.splitlines()) == (
        0,
        ["duplicate sk-…1111", "duplicate sk-…2222", "0 added, 2 duplicate, 0 failed"],
    )

    refused = await asyncio.to_thread(sharekey, *base, "--user", "erin", env=cli_env, input=BAD + "\n")
    assert refused.code == 1
    assert refused.out.splitlines()[-1] == "0 added, 0 duplicate, 1 failed"
    assert refused.err.strip().splitlines()[-1] == "sharekey: no key was added: 1 of 1 failed"

    untested = await asyncio.to_thread(
        sharekey, *base, "--user", "erin", "--name-prefix", "raw", "--no-test", env=cli_env, input=BAD
    )
    assert untested.code == 0 and untested.out.splitlines()[0].startswith("added ")
    assert untested.out.splitlines()[0].endswith(" sk-…3333")

    empty = await asyncio.to_thread(sharekey, *base, "--user", "erin", env=cli_env, input="# nothing\n\n")
    assert empty.code == 2 and "standard input: no keys" in empty.err
    models = await asyncio.to_thread(sharekey, *base[:4], "--models", " ", "--user", "erin", env=cli_env, input=BAD)
    assert models.code == 2 and models.err.strip().startswith("sharekey: --models:")
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM shared_keys") == 3
