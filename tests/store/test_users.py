"""User names are unique after folding (sql/0011_username_key.sql, gateway/store/users.py): a name
that only reads like a taken one (`ADMIN`, `admın`, `ａｄｍｉｎ`, `ádmin` beside `admin`) gets the
suffixed form, whichever way the account comes (`users add`, OIDC/GitHub, Linux.do), and PostgreSQL
itself refuses two such names."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gateway.store import db, users
from tests.support.clirun import sharekey
from tests.support.fake_oidc import FakeOidc
from tests.web import test_providers
from tests.web.test_providers import Gw

oidc, github, make = test_providers.oidc, test_providers.github, test_providers.make

ALIKE = ["ADMIN", "admın", "ａｄｍｉｎ", "ádmin", "Ádmın", "ADMİN"]  # dotless ı, full width, accents, dotted İ


async def test_the_fold(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for name in ALIKE:
            assert await conn.fetchval("SELECT username_key($1)", name) == "admin", name
        pairs = [("STRAẞE", "strasse"), ("Straße", "strasse"), ("Müller", "muller"), ("admin~1", "admin~1")]
        for name, key in pairs:
            assert await conn.fetchval("SELECT username_key($1)", name) == key, name
        # Distinct names stay distinct: kana with and without dakuten, other scripts' marks.
        assert await conn.fetchval("SELECT username_key('がき') <> username_key('かき')")
        assert await conn.fetchval("SELECT username_key('admin') <> username_key('admim')")


async def test_oidc_names_alike_a_taken_one_get_the_suffix(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        admin = await users.add_local_user(conn, "admin", admin=True)
        made = []
        for n, name in enumerate(ALIKE):
            made.append(
                await users.upsert_identity_user(conn, users.IdentityProfile("corp", f"s{n}", name, name, None, -1))
            )
        # The suffixed forms fold alike too (`admın~corp` reads as `ADMIN~corp`): the next one.
        assert [u.username for u in made[:3]] == ["ADMIN~corp", "admın~corp-s1", "ａｄｍｉｎ~corp-s2"]
        assert len({u.id for u in made} | {admin.id}) == len(ALIKE) + 1  # all separate accounts
        assert not any(u.is_admin for u in made)
        keys = await conn.fetch("SELECT username_key(username) AS k FROM users")
        assert len({r["k"] for r in keys}) == len(keys)
        still = await users.get_by_username(conn, "admin")
        assert still is not None and still.id == admin.id and still.is_admin


async def test_linuxdo_never_claims_a_name_that_only_reads_the_same(pool: asyncpg.Pool) -> None:
    """`users add admin` is claimed by Linux.do's `admin` (and `Admin`: Linux.do compares without
    case), never by `admın` or `ａｄｍｉｎ`, who are other people there."""
    async with pool.acquire() as conn:
        waiting = await users.add_user(conn, "admin", admin=True)
        dotless = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("90", "admın", "x", None, 2))
        assert dotless.id != waiting.id and dotless.username == "admın~linuxdo" and not dotless.is_admin
        wide = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("91", "ａｄｍｉｎ", "x", None, 2))
        assert wide.username == "ａｄｍｉｎ~linuxdo-2"  # `ａｄｍｉｎ~linuxdo` reads as `admın~linuxdo`
        assert wide.id not in (waiting.id, dotless.id)
        real = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("92", "Admin", "x", None, 2))
        assert (real.id, real.username, real.is_admin) == (waiting.id, "Admin", True)
        # Signing in again keeps each where it is.
        again = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("90", "admın", "x", None, 2))
        assert (again.id, again.username) == (dotless.id, "admın~linuxdo")


async def test_a_linuxdo_name_renamed_only_in_case_moves_as_a_taken_name_does(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        old = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("501", "frank", "x", None, 2))
        new = await users.upsert_linuxdo_user(conn, users.LinuxDoProfile("502", "FRANK", "x", None, 2))
        assert new.id != old.id and new.username == "FRANK"
        moved = await users.get_by_id(conn, old.id)
        assert moved is not None and moved.username == "frank~501"


async def test_users_add_refuses_a_name_alike(cli_env: dict[str, str], pool: asyncpg.Pool) -> None:
    assert sharekey("users", "add", "admin", env=cli_env).code == 0
    for name in ("ADMIN", "admın"):
        r = sharekey("users", "add", name, env=cli_env)
        assert r.code == 1 and "already exists" in r.err, r.err
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM users") == 1


async def test_postgresql_itself_refuses_two_names_alike(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute("INSERT INTO users (username) VALUES ('admin')")
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO users (username) VALUES ('ADMİN')")


async def test_oidc_sign_in_as_ADMIN_beside_the_first_admin(make: Any, oidc: FakeOidc) -> None:  # noqa: N802
    gw: Gw = await make()
    async with gw.pool.acquire() as conn:
        admin = await users.add_local_user(conn, "admin", admin=True)
    oidc.claims = {"preferred_username": "ADMIN", "name": "Not The Admin"}
    resp = await gw.sign_in("corp")
    assert resp.status == 303
    page = await gw.client.get("/keys")
    assert page.status == 200 and ">ADMIN~corp</span>" in await page.text()
    async with gw.pool.acquire() as conn:
        still = await users.get_by_username(conn, "admin")
    assert still is not None and still.id == admin.id and still.is_admin


async def test_the_migration_renames_names_already_alike(config: Any, tmp_path: Path) -> None:
    """A database from before the fold with `admin`, `ADMIN` and `admın`: the oldest keeps the
    name, the others get `~<id>`, and the unique index is in place."""
    before = tmp_path / "sql"
    before.mkdir()
    for m in db.migrations():
        if m.version < 11:
            shutil.copy(m.path, before / m.path.name)
    conn = await asyncpg.connect(config.database.url)
    try:
        await db.migrate(conn, before)
        for n, name in enumerate(["admin", "ADMIN", "admın", "bob"]):
            await conn.execute(
                "INSERT INTO users (username, created_at) VALUES ($1, now() + make_interval(secs => $2))", name, n
            )
        applied = await db.migrate(conn)
        assert [m.version for m in applied][:1] == [11]  # and whatever came after it
        rows = await conn.fetch("SELECT id::text, username FROM users ORDER BY created_at")
        names = [r["username"] for r in rows]
        assert names[0] == "admin" and names[3] == "bob"
        assert names[1] == f"ADMIN~{rows[1]['id'][:8]}" and names[2] == f"admın~{rows[2]['id'][:8]}"
        with pytest.raises(asyncpg.UniqueViolationError):
            await conn.execute("INSERT INTO users (username) VALUES ('Admin')")
    finally:
        await conn.close()
