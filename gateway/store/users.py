"""Users: the community members who donate keys and call the gateway.

User names are unique after folding (sql/0011_username_key.sql defines `username_key()`: NFKC,
case, dotless i, Latin accents), enforced by a unique index: a name that merely reads like a taken
one (`ADMIN`, `admın` beside `admin`) is a collision, and the newcomer gets a suffixed name.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg


class UserExists(Exception):
    pass


@dataclass(frozen=True, slots=True)
class User:
    id: str
    username: str
    display_name: str | None
    avatar_url: str | None
    trust_level: int
    is_admin: bool
    anonymous: bool

    @classmethod
    def from_record(cls, r: asyncpg.Record) -> User:
        return cls(
            id=str(r["id"]),
            username=r["username"],
            display_name=r["display_name"],
            avatar_url=r["avatar_url"],
            trust_level=r["trust_level"],
            is_admin=r["is_admin"],
            anonymous=r["anonymous"],
        )


USER_COLUMNS = "id, username, display_name, avatar_url, trust_level, is_admin, anonymous"

INSERT_USER = f"""
INSERT INTO users (username, display_name, avatar_url, trust_level, is_admin)
VALUES ($1, $1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING {USER_COLUMNS}
"""


async def add_user(
    conn: asyncpg.Connection, username: str, *, admin: bool = False, avatar_url: str | None = None, trust_level: int = 0
) -> User:
    row = await conn.fetchrow(INSERT_USER, username, avatar_url, trust_level, admin)
    if row is None:
        raise UserExists(f"a user named {username!r}, or a name that reads the same, already exists")
    return User.from_record(row)


GET_BY_USERNAME = f"SELECT {USER_COLUMNS} FROM users WHERE username = $1"


async def get_by_username(conn: asyncpg.Connection, username: str) -> User | None:
    row = await conn.fetchrow(GET_BY_USERNAME, username)
    return User.from_record(row) if row else None


GET_BY_ID = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"


async def get_by_id(conn: asyncpg.Connection, user_id: str) -> User | None:
    row = await conn.fetchrow(GET_BY_ID, uuid.UUID(user_id))
    return User.from_record(row) if row else None


# --- Linux.do sign-in ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinuxDoProfile:
    """What a sign-in takes from the provider's user endpoint (nothing else is kept)."""

    linux_do_id: str
    username: str
    display_name: str
    avatar_url: str | None
    trust_level: int


LOCK_BY_LINUXDO_ID = "SELECT id FROM users WHERE linux_do_id = $1 FOR UPDATE"
LOCK_BY_USERNAME = (
    "SELECT id, linux_do_id, username FROM users WHERE username_key(username) = username_key($1) FOR UPDATE"
)
# The old holder of a name keeps its account under "<name>~<its Linux.do id>" until it signs in again.
YIELD_USERNAME = """
UPDATE users SET username = username || '~' || coalesce(linux_do_id, left(id::text, 8)), updated_at = now()
WHERE id = $1
"""
UPDATE_LINUXDO_USER = f"""
UPDATE users
SET linux_do_id = $2, username = $3, display_name = $4, avatar_url = $5, trust_level = $6, updated_at = now()
WHERE id = $1
RETURNING {USER_COLUMNS}
"""
INSERT_LINUXDO_USER = f"""
INSERT INTO users (linux_do_id, username, display_name, avatar_url, trust_level)
VALUES ($1, $2, $3, $4, $5)
RETURNING {USER_COLUMNS}
"""


async def upsert_linuxdo_user(conn: asyncpg.Connection, profile: LinuxDoProfile) -> User:
    """The user with this Linux.do id, created or brought up to date (name, avatar, trust level).

    A user created by `sharekey users add NAME` (no Linux.do id yet) is claimed by the first
    Linux.do sign-in with that username: that is how an operator makes someone an admin before
    their first sign-in. If another Linux.do account still holds the name (renamed on Linux.do
    since), that account steps aside under a suffixed name. An account of another provider, or one
    made by `add_local_user` (the first-run admin), is never claimed nor renamed: the Linux.do
    account gets `<name>~linuxdo` instead. So does one whose name only folds like a taken one
    (`admın` beside `admin`): Linux.do tells those apart, so they are two people."""
    try:
        return await _upsert_linuxdo_user(conn, profile)
    except asyncpg.UniqueViolationError:  # a concurrent first sign-in of the same account won; update it
        return await _upsert_linuxdo_user(conn, profile)


async def _upsert_linuxdo_user(conn: asyncpg.Connection, profile: LinuxDoProfile) -> User:
    async with conn.transaction():
        mine = await conn.fetchval(LOCK_BY_LINUXDO_ID, profile.linux_do_id)
        holder = await conn.fetchrow(LOCK_BY_USERNAME, profile.username)
        name = profile.username
        if holder is not None and holder["id"] != mine:
            if not _same_at_linuxdo(holder["username"], profile.username):
                # Alike only after folding: someone else's name, neither claimed nor taken over.
                name = await _free_name(conn, f"{profile.username}~linuxdo", mine)
            elif holder["linux_do_id"] is None and await conn.fetchval(HAS_IDENTITY, holder["id"]):
                # Another provider's account (or the first-run admin): never claimed, never renamed.
                name = await _free_name(conn, f"{profile.username}~linuxdo", mine)
            elif mine is None and holder["linux_do_id"] is None:
                mine = holder["id"]
            else:
                await conn.execute(YIELD_USERNAME, holder["id"])
        p = profile
        if mine is not None:
            row = await conn.fetchrow(
                UPDATE_LINUXDO_USER, mine, p.linux_do_id, name, p.display_name, p.avatar_url, p.trust_level
            )
        else:
            row = await conn.fetchrow(
                INSERT_LINUXDO_USER, p.linux_do_id, name, p.display_name, p.avatar_url, p.trust_level
            )
    return User.from_record(row)


def _same_at_linuxdo(a: str, b: str) -> bool:
    """Linux.do (Discourse) compares user names without case: `Alice` and `alice` are one account."""
    return a.lower() == b.lower()


HAS_IDENTITY = "SELECT EXISTS (SELECT 1 FROM user_identities WHERE user_id = $1)"
NAME_TAKEN = """
SELECT EXISTS (SELECT 1 FROM users WHERE username_key(username) = username_key($1) AND id IS DISTINCT FROM $2)
"""


async def _free_name(conn: asyncpg.Connection, base: str, mine: Any) -> str:
    for name in (base, *(f"{base}-{i}" for i in range(2, 100))):
        if not await conn.fetchval(NAME_TAKEN, name, mine):
            return name
    raise UserExists(f"no free user name for {base!r}")


SET_TRUST_LEVEL = "UPDATE users SET trust_level = $2, updated_at = now() WHERE linux_do_id = $1 RETURNING id"


async def set_linuxdo_trust_level(conn: asyncpg.Connection, linux_do_id: str, trust_level: int) -> str | None:
    """Record a trust level seen at a refused sign-in (limits follow it); the user's id, if known."""
    user_id = await conn.fetchval(SET_TRUST_LEVEL, linux_do_id, trust_level)
    return str(user_id) if user_id is not None else None


# --- other sign-in providers (OpenID Connect, GitHub) ----------------------------------------------

NO_TRUST_LEVEL = -1  # signed in elsewhere than Linux.do, no trust claim: limits.user_daily_requests


@dataclass(frozen=True, slots=True)
class IdentityProfile:
    """What a sign-in at another provider keeps: the account's key and how to show it."""

    provider: str
    subject: str
    username: str  # the name wished for; taken names get a suffix, never someone else's account
    display_name: str
    avatar_url: str | None
    trust_level: int


FIND_IDENTITY = "SELECT user_id FROM user_identities WHERE provider = $1 AND subject = $2"
UPDATE_IDENTITY_USER = f"""
UPDATE users SET display_name = $2, avatar_url = $3, trust_level = $4, updated_at = now()
WHERE id = $1
RETURNING {USER_COLUMNS}
"""
INSERT_IDENTITY_USER = f"""
INSERT INTO users (username, display_name, avatar_url, trust_level)
VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING
RETURNING {USER_COLUMNS}
"""
INSERT_IDENTITY = "INSERT INTO user_identities (provider, subject, user_id) VALUES ($1, $2, $3)"
LOCAL = "local:cli"  # the identity of accounts made on the command line that no provider may claim


async def add_local_user(conn: asyncpg.Connection, username: str, *, admin: bool = False) -> User:
    """A user that only `sharekey login-link` signs in: no provider's sign-in claims it by name
    (unlike `add_user`, which a Linux.do sign-in of that name claims). The first-run admin."""
    async with conn.transaction():
        user = await add_user(conn, username, admin=admin)
        await conn.execute(INSERT_IDENTITY, LOCAL, user.id, uuid.UUID(user.id))
    return user


def _names(p: IdentityProfile) -> list[str]:
    base = p.username[:40] or p.provider
    return [base, f"{base}~{p.provider}"[:64], f"{base}~{p.provider}-{p.subject}"[:64]] + [
        f"{base}~{p.provider}-{i}"[:64] for i in range(2, 50)
    ]


async def upsert_identity_user(conn: asyncpg.Connection, profile: IdentityProfile) -> User:
    """The user of (provider, subject), created on first sign-in, its name, avatar and trust
    level brought up to date. A new account never takes over an existing user with the same name:
    it gets the first free of `name`, `name~provider`, `name~provider-subject`, …"""
    try:
        return await _upsert_identity_user(conn, profile)
    except asyncpg.UniqueViolationError:  # a concurrent first sign-in of the same account won
        return await _upsert_identity_user(conn, profile)


async def _upsert_identity_user(conn: asyncpg.Connection, p: IdentityProfile) -> User:
    async with conn.transaction():
        user_id = await conn.fetchval(FIND_IDENTITY, p.provider, p.subject)
        if user_id is not None:
            row = await conn.fetchrow(UPDATE_IDENTITY_USER, user_id, p.display_name, p.avatar_url, p.trust_level)
            return User.from_record(row)
        for name in _names(p):
            row = await conn.fetchrow(INSERT_IDENTITY_USER, name, p.display_name, p.avatar_url, p.trust_level)
            if row is not None:
                await conn.execute(INSERT_IDENTITY, p.provider, p.subject, row["id"])
                return User.from_record(row)
    raise UserExists(f"no free user name for {p.username!r}")
