"""What one key change costs each gateway process's key index, at a pool of N keys.

    python -m bench.keychange [--keys 5000]

Seeds N sealed keys into a scratch schema (DATABASE_URL), then times a full reload (what every
process did on every `keys` event before) against reloading the one changed key
(`KeyIndex.reload_keys`), medians of a few runs, and drops the schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import time

import asyncpg

from gateway.relay.keyindex import KeyIndex
from gateway.store import db, sharedkeys, users
from gateway.store.crypto import KeyRing

SECRET = "bench-secret-" + "x" * 32


async def main(n: int) -> None:
    url = os.environ["DATABASE_URL"]
    schema = "bench_kc_" + secrets.token_hex(4)
    admin = await asyncpg.connect(url)
    await admin.execute(f"CREATE SCHEMA {schema}")
    try:
        async with asyncpg.create_pool(url, server_settings={"search_path": schema}) as pool:
            async with pool.acquire() as conn:
                await db.migrate(conn)
                owner = await users.add_user(conn, "donor")
                ring = KeyRing(SECRET)
                ids = []
                for i in range(n):
                    new = sharedkeys.NewKey(
                        owner_id=owner.id, name=f"k{i}", base_url="https://api.example.com/v1",
                        api_key=f"sk-bench-{i:012d}", available_models=["gpt-4o-mini", f"m{i % 50}"],
                        daily_limit=150, is_private=False, stream_usage=True,
                    )  # fmt: skip
                    ids.append((await sharedkeys.insert_key(conn, ring, new, timezone="UTC")).id)
            index = KeyIndex(pool, KeyRing(SECRET))
            full, one = [], []
            for i in range(5):
                start = time.perf_counter()
                await index.reload()
                full.append(time.perf_counter() - start)
                start = time.perf_counter()
                await index.reload_keys([ids[i]])
                one.append(time.perf_counter() - start)
            print(f"{n} keys: full reload {statistics.median(full) * 1000:.1f} ms, "
                  f"one key {statistics.median(one) * 1000:.2f} ms (medians of 5)")  # fmt: skip
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keys", type=int, default=5000)
    asyncio.run(main(parser.parse_args().keys))
