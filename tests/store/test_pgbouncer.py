"""PostgreSQL behind Debian's pgbouncer, as managed databases and the Supabase pooler run it.

In transaction mode a client's prepared statements do not follow it from one server connection to
the next; `database.statement_cache_size = 0` makes every command (migrate included) and the
gateway itself work there. Each test gets its own database behind its own pgbouncer on loopback.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.keyindex import KEY_INDEX
from gateway.relay.usage import USAGE
from tests.conftest import TEST_SECRET
from tests.support.clirun import clean_env, sharekey
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.seed import add_key, user_with_token

PGBOUNCER = shutil.which("pgbouncer") or next(
    (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).exists()), None
)


@dataclass
class Bouncer:
    url: str  # the database, through pgbouncer
    direct_url: str  # the same database, straight to PostgreSQL


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> list[str]:
    """pgbouncer refuses to run as root: run it as the postgres user then."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("pgbouncer refuses root and there is no postgres user to run it as")
    runuser = shutil.which("runuser")
    if runuser is None:
        pytest.skip("pgbouncer refuses root and runuser is not installed")
    return [runuser, "-u", "postgres", "--"]


@pytest.fixture
async def bouncer(servers: tuple[str, str]) -> AsyncIterator[Callable[..., Bouncer]]:
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer)")
    server = urllib.parse.urlsplit(servers[0])
    if server.hostname is None or server.port is None:
        pytest.skip("pgbouncer needs PostgreSQL on TCP")
    user = urllib.parse.unquote(server.username or "postgres")
    name = f"sk_pgb_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(servers[0])
    await admin.execute(f'CREATE DATABASE "{name}"')
    direct = urllib.parse.urlunsplit(server._replace(path=f"/{name}", query=""))
    procs: list[subprocess.Popen[bytes]] = []
    folders: list[Path] = []

    def start(mode: str) -> Bouncer:
        # Its own folder under /tmp: pytest's are private to root, and pgbouncer may run as postgres.
        folder = Path(tempfile.mkdtemp(prefix="sk-pgbouncer-"))
        folders.append(folder)
        folder.chmod(0o755)
        port = _free_port()
        password = f" password={urllib.parse.unquote(server.password)}" if server.password else ""
        (folder / "users.txt").write_text(f'"{user}" ""\n')
        (folder / "pgbouncer.ini").write_text(
            f"[databases]\n{name} = host={server.hostname} port={server.port} dbname={name} user={user}{password}\n"
            "[pgbouncer]\nlisten_addr = 127.0.0.1\n"
            f"listen_port = {port}\nauth_type = trust\nauth_file = {folder / 'users.txt'}\n"
            # One server connection: a statement left on it by one client is always met by the next.
            f"pool_mode = {mode}\ndefault_pool_size = 1\nmax_client_conn = 50\nunix_socket_dir =\n"
            "ignore_startup_parameters = extra_float_digits\n"
        )
        for f in folder.iterdir():
            f.chmod(0o644)
        proc = subprocess.Popen(
            [*_as_user(), PGBOUNCER, str(folder / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(proc)
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"pgbouncer did not start: {err[-500:]}")
            time.sleep(0.05)
        return Bouncer(f"postgresql://{user}@127.0.0.1:{port}/{name}", direct)

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.close()


def _env(url: str, redis_url: str, redis_prefix: str, **extra: str) -> dict[str, str]:
    return clean_env(
        DATABASE_URL=url,
        REDIS_URL=redis_url,
        KEY_ENCRYPTION_SECRET=TEST_SECRET,
        SHAREKEY_REDIS_KEY_PREFIX=redis_prefix,
        SHAREKEY_LOGGING_FORMAT="json",
        SHAREKEY_SECURITY_ALLOW_HTTP_UPSTREAMS="true",
        SHAREKEY_SECURITY_ALLOW_PRIVATE_UPSTREAMS="true",
        **extra,
    )


@pytest.mark.parametrize("mode", ["transaction", "session"])
async def test_every_command_works_through_pgbouncer_with_no_statement_cache(
    bouncer: Callable[..., Bouncer], servers: tuple[str, str], redis_prefix: str, mode: str
) -> None:
    b = bouncer(mode)
    env = _env(b.url, servers[1], redis_prefix, SHAREKEY_DATABASE_STATEMENT_CACHE_SIZE="0")
    for _ in range(2):
        r = await asyncio.to_thread(sharekey, "migrate", env=env)
        assert r.code == 0, r.err
    steps = [
        ("users", "add", "bob"),
        ("tokens", "create", "bob"),
        ("keys", "add", "--user", "bob", "--name", "k", "--base-url", "https://api.example.com/v1",
         "--api-key", "sk-pgb-0123456789", "--models", "m1", "--daily-limit", "5", "--no-test"),
        ("keys", "list"),
    ]  # fmt: skip
    outs = []
    for args in steps:
        r = await asyncio.to_thread(sharekey, *args, env=env)
        assert r.code == 0, f"{args[:2]}: {r.err}"
        outs.append(r.out)
    assert "k" in outs[3] and "m1" in outs[3]
    conn = await asyncpg.connect(b.direct_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users WHERE username = 'bob'") == 1
        assert await conn.fetchval("SELECT count(*) FROM shared_keys WHERE name = 'k'") == 1
        assert await conn.fetchval("SELECT count(*) FROM api_tokens") == 1
    finally:
        await conn.close()


async def test_the_default_statement_cache_is_what_breaks_in_transaction_mode(
    bouncer: Callable[..., Bouncer], servers: tuple[str, str], redis_prefix: str
) -> None:
    """Why the setting exists (and the README tells when to set it): with asyncpg's cache the
    second command meets the first one's prepared statement on the one server connection."""
    b = bouncer("transaction")
    env = _env(b.url, servers[1], redis_prefix)
    first = await asyncio.to_thread(sharekey, "migrate", env=env)
    second = await asyncio.to_thread(sharekey, "users", "add", "carol", env=env)
    assert first.code != 0 or second.code != 0
    assert "prepared statement" in (first.err + second.err)


async def test_the_gateway_serves_and_logs_through_pgbouncer_in_transaction_mode(
    bouncer: Callable[..., Bouncer],
    servers: tuple[str, str],
    redis_prefix: str,
    fake_upstream: FakeUpstream,
    tmp_path: Path,
    aiohttp_client,  # type: ignore[no-untyped-def]
) -> None:
    b = bouncer("transaction")
    config = config_mod.load(
        env={
            "DATABASE_URL": b.url,
            "REDIS_URL": servers[1],
            "KEY_ENCRYPTION_SECRET": TEST_SECRET,
            "SHAREKEY_REDIS_KEY_PREFIX": redis_prefix,
            "SHAREKEY_STORAGE_DATA_DIR": str(tmp_path / "data"),
            "SHAREKEY_SECURITY_ALLOW_PRIVATE_UPSTREAMS": "true",
            "SHAREKEY_SECURITY_ALLOW_HTTP_UPSTREAMS": "true",
            "SHAREKEY_DATABASE_STATEMENT_CACHE_SIZE": "0",
        }
    )
    assert config.database.statement_cache_size == 0
    r = await asyncio.to_thread(sharekey, "migrate", env=_env(b.url, servers[1], redis_prefix,
                                                              SHAREKEY_DATABASE_STATEMENT_CACHE_SIZE="0"))  # fmt: skip
    assert r.code == 0, r.err
    async with asyncpg.create_pool(b.url, min_size=1, max_size=2, statement_cache_size=0) as pool:
        donor, _ = await user_with_token(pool, "donor")
        _, token = await user_with_token(pool, "caller")
        await add_key(pool, config, donor, fake_upstream.base_url)
    app = create_app(gateway_config(config))
    client = await aiohttp_client(app)
    await app[KEY_INDEX].reload()
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(3):
        resp = await client.post(
            "/v1/chat/completions",
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hi {i}"}]},
            headers=headers,
        )
        assert resp.status == 200, await resp.text()
    assert await app[USAGE].flush_once()
    conn = await asyncpg.connect(b.direct_url)
    try:
        rows = await conn.fetch("SELECT status, committed FROM key_usage_logs")
    finally:
        await conn.close()
    assert [(r["status"], r["committed"]) for r in rows] == [("ok", True)] * 3
