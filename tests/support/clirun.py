"""Run the real `sharekey` command line in a subprocess, as an operator would."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.config import Config

STORE_VARS = ("DATABASE_URL", "REDIS_URL", "KEY_ENCRYPTION_SECRET", "KEY_ENCRYPTION_OLD_SECRETS", "SHAREKEY_CONFIG")


@dataclass
class Result:
    code: int
    out: str
    err: str


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARS and not k.startswith("SHAREKEY_")}
    env.update(extra)
    return env


def sharekey(*args: str, env: dict[str, str], timeout: float = 120, input: str | None = None) -> Result:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        input=input if input is not None else "",
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


async def rows(config: Config, query: str) -> list[dict[str, Any]]:
    """What a command left in PostgreSQL, read on a connection of its own."""
    conn = await asyncpg.connect(config.database.url)
    try:
        return [dict(r) for r in await conn.fetch(query)]
    finally:
        await conn.close()
