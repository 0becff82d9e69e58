"""Users: the community members who donate keys and call the gateway."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

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
ON CONFLICT (username) DO NOTHING
RETURNING {USER_COLUMNS}
"""


async def add_user(
    conn: asyncpg.Connection, username: str, *, admin: bool = False, avatar_url: str | None = None, trust_level: int = 0
) -> User:
    row = await conn.fetchrow(INSERT_USER, username, avatar_url, trust_level, admin)
    if row is None:
        raise UserExists(f"a user named {username!r} already exists")
    return User.from_record(row)


GET_BY_USERNAME = f"SELECT {USER_COLUMNS} FROM users WHERE username = $1"


async def get_by_username(conn: asyncpg.Connection, username: str) -> User | None:
    row = await conn.fetchrow(GET_BY_USERNAME, username)
    return User.from_record(row) if row else None


GET_BY_ID = f"SELECT {USER_COLUMNS} FROM users WHERE id = $1"


async def get_by_id(conn: asyncpg.Connection, user_id: str) -> User | None:
    row = await conn.fetchrow(GET_BY_ID, uuid.UUID(user_id))
    return User.from_record(row) if row else None
