"""The balancer's pick at scale: does its cost grow with the number of keys serving a model?

    python -m bench.scale [--picks 4000] [--concurrency 16] [--sizes 4,100,1000,5000] [--rounds 3]

Starts its own `redis-server` on a free loopback port (stopped after) and, in this process, the
gateway's pick path as a request runs it: the key index's prepared `Pool` for the model, one
`Balancer.pick` over the pipelined `ScriptLine`, `concurrency` picks in flight. For each pool
size it measures, after a warm-up that builds the pool (the `init` call, once per pool per day):

* gateway CPU per pick: this process' CPU time (`time.process_time`) over the picks;
* Redis CPU per pick: `INFO commandstats` (usec of EVALSHA) and `INFO cpu` (redis-server's user +
  system CPU) deltas over the picks;
* the spread of counts: max - min of today's counts over the pool's keys after the picks (all
  keys have the same limit), against the bound 10 + 1 % of the mean.

Two more cells refuse: a pool of the largest size whose keys are all spent, and one whose keys
are all cooling. Two carry donors' caps (issue #22): a pool of the largest size whose keys all
have caps (per minute, tokens per minute) but are free, and one where all keys but one are at
their per-minute cap. One is the largest pool picked for a caller whose gateway token has every
cap the pick counts (issue #25: requests per day, per minute, a daily budget), against the same
size without. It also states the Redis memory a capped key's windows take. Rounds are
interleaved (every cell once per round); the medians are reported, and every ratio is against
the 4-key cell of the same run. It also times what a key change costs the index: preparing the
largest pool again (`Pool.of`), once per snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import redis.asyncio as aioredis
import structlog

from gateway.net import redisnames
from gateway.net.redisline import ScriptLine
from gateway.relay import balancer as balancer_mod
from gateway.relay.balancer import Balancer
from gateway.relay.picks import Candidate, Pool, TokenLimits, UserLimits

PREFIX = "bench"
NO_LIMITS = UserLimits(0, 0, 0)
# A gateway token with every cap the pick counts (issue #25), none of them reached.
EVERY_TOKEN_CAP = TokenLimits("bench-token", daily=10**9, per_minute=10**9, budget_micro_usd=10**15)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cell:
    name: str
    pool: Pool
    expect: str  # ok | exhausted | cooling
    gateway_ms: list[float] = field(default_factory=list)
    redis_cmd_ms: list[float] = field(default_factory=list)
    redis_cpu_ms: list[float] = field(default_factory=list)
    spread: tuple[int, int, float] | None = None  # max - min, bound, mean
    token: TokenLimits | None = None  # the caller's token's caps, if any


async def redis_costs(client: aioredis.Redis) -> tuple[float, float]:
    """(EVALSHA usec, redis-server user+sys CPU seconds) so far."""
    stats = await client.info("commandstats")
    usec = sum(float(v["usec"]) for k, v in stats.items() if k in ("cmdstat_evalsha", "cmdstat_eval"))
    cpu = await client.info("cpu")
    return usec, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def run_cell(b: Balancer, client: aioredis.Redis, cell: Cell, picks: int, concurrency: int) -> None:
    async def worker(n: int) -> None:
        for _ in range(n):
            p = await b.pick(
                cell.pool, user_id="u", limits=NO_LIMITS, request_id=uuid.uuid4().hex, stream=False, token=cell.token
            )
            if p.outcome != cell.expect:
                raise SystemExit(f"{cell.name}: expected {cell.expect}, got {p.outcome}")

    usec0, cpu0 = await redis_costs(client)
    t0 = time.process_time()
    await asyncio.gather(*(worker(picks // concurrency) for _ in range(concurrency)))
    gw = time.process_time() - t0
    usec1, cpu1 = await redis_costs(client)
    n = picks // concurrency * concurrency
    cell.gateway_ms.append(gw * 1000 / n)
    cell.redis_cmd_ms.append((usec1 - usec0) / 1000 / n)
    cell.redis_cpu_ms.append((cpu1 - cpu0) * 1000 / n)


def keys(tag: str, n: int, limit: int, caps: str = "") -> list[Candidate]:
    return [Candidate(f"{tag}-{i:05d}", limit, caps) for i in range(n)]


async def window_memory(client: aioredis.Redis, n: int) -> int:
    """Bytes Redis takes for one capped key's minute window holding `n` starts (request ids)."""
    name = redisnames.key_window(PREFIX, "memory-probe")
    now = int(time.time() * 1000)
    await client.zadd(name, {uuid.uuid4().hex: now + i for i in range(n)})
    used = int(await client.memory_usage(name) or 0)
    await client.delete(name)
    return used


async def main_async(args: argparse.Namespace, url: str) -> None:
    client = aioredis.from_url(url)
    line = ScriptLine(url, balancer_mod.SCRIPT, timeout=10)
    b = Balancer(client, prefix=PREFIX, timezone="UTC", line=line)
    largest = max(args.sizes)
    cells = [Cell(f"{n} keys", Pool.of(keys(f"m{n}", n, 10**9), f"any\0m{n}"), "ok") for n in args.sizes]
    spent = Cell(f"{largest} keys, all spent", Pool.of(keys("spent", largest, 1), "any\0spent"), "exhausted")
    cooling = Cell(f"{largest} keys, all cooling", Pool.of(keys("cool", largest, 100), "any\0cool"), "cooling")
    # Spend and cool them as other requests would have: counts at the limit, cooldowns running.
    day = b.today()
    await client.hset(redisnames.counts(PREFIX, day), mapping={k: 1 for k in spent.pool.pairs[::2]})  # type: ignore[misc]
    for k in cooling.pool.pairs[::2]:
        await b.cool_down(str(k), 3600)
    # Caps (rpm, tpm) on every key, none reached; and every key but one at its rpm cap of 1 (their
    # one start placed ten minutes ahead, so the window stays full for the whole run).
    free_caps = Cell(
        f"{largest} capped, free",
        Pool.of(keys("capfree", largest, 10**9, "|1000000000|0|1000000000|0|m"), "any\0cf"),
        "ok",
    )
    at_cap = keys("atcap", largest - 1, 10**9, "|1|0|0|0|m") + [Candidate("atcap-free", 10**9)]
    busy = Cell(f"{largest} keys, {largest - 1} at rpm", Pool.of(at_cap, "any\0atcap"), "ok")
    ahead = int(time.time() * 1000) + 600_000
    async with client.pipeline(transaction=False) as pipe:
        for c in at_cap[:-1]:
            pipe.zadd(redisnames.key_window(PREFIX, c.key_id), {"earlier": ahead})
        await pipe.execute()
    # The largest pool again, for a caller whose token has every cap (daily, per minute, budget).
    tokened = Cell(f"{largest} keys, token caps", Pool.of(keys(f"tk{largest}", largest, 10**9), "any\0tk"), "ok")
    tokened.token = EVERY_TOKEN_CAP
    cells += [spent, cooling, free_caps, busy, tokened]
    for cell in cells:  # the warm-up: builds each pool (init), files spent and cooling keys away
        await run_cell(b, client, cell, 2 * args.concurrency, args.concurrency)
        cell.gateway_ms.clear(), cell.redis_cmd_ms.clear(), cell.redis_cpu_ms.clear()
    for _ in range(args.rounds):
        for cell in cells:
            await run_cell(b, client, cell, args.picks, args.concurrency)
    for cell in cells:
        if cell.expect == "ok":
            ids = [str(k) for k in cell.pool.pairs[::2]]
            used = list((await b.usage_today(ids)).values())
            mean = sum(used) / len(used)
            cell.spread = (max(used) - min(used), int(10 + 0.01 * mean), mean)
    busy.spread = None  # every call goes to its one free key: no spread to keep
    t0 = time.perf_counter()
    Pool.of(keys("again", largest, 100), "any\0again")
    prepare_ms = (time.perf_counter() - t0) * 1000
    memory = {n: await window_memory(client, n) for n in (1, 10, 60, 1000)}
    await line.close()
    await client.aclose()

    base = cells[0]

    def med(v: list[float]) -> float:
        return statistics.median(v)

    print(f"\npicks per cell per round: {args.picks}, concurrency {args.concurrency}, rounds {args.rounds} (medians)")
    head = f"{'cell':<24} {'gw ms/pick':>10} {'ratio':>6} {'redis cmd ms':>12} {'ratio':>6} {'redis cpu ms':>12} "
    print(head + f"{'ratio':>6}  spread (max-min / bound, mean)")
    for c in cells:
        spread = f"{c.spread[0]} / {c.spread[1]}, {c.spread[2]:.1f}" if c.spread else "-"
        print(
            f"{c.name:<24} {med(c.gateway_ms):>10.3f} {med(c.gateway_ms) / med(base.gateway_ms):>6.2f} "
            f"{med(c.redis_cmd_ms):>12.4f} {med(c.redis_cmd_ms) / med(base.redis_cmd_ms):>6.2f} "
            f"{med(c.redis_cpu_ms):>12.4f} {med(c.redis_cpu_ms) / med(base.redis_cpu_ms):>6.2f}  {spread}"
        )
    plain = next(c for c in cells if c.name == f"{largest} keys")
    ratios = [med(getattr(tokened, m)) / med(getattr(plain, m)) for m in ("gateway_ms", "redis_cmd_ms", "redis_cpu_ms")]
    print(f"\na token with every cap vs none ({largest} keys): gw {ratios[0]:.2f}, redis cmd {ratios[1]:.2f}, ", end="")
    print(f"redis cpu {ratios[2]:.2f}")
    shown = ", ".join(f"{n} starts: {b} B" for n, b in memory.items())
    print(f"\nRedis memory of a capped key's minute window (kwin): {shown}")
    print(f"\npreparing a {largest}-key pool after a key change (Pool.of, once per snapshot): {prepare_ms:.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--picks", type=int, default=4000, help="picks per cell per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", default="4,100,1000,5000", help="keys per model, the first is the base")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in args.sizes.split(",")]
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    server = shutil.which("redis-server")
    if server is None:
        print("redis-server not found on PATH", file=sys.stderr)
        return 1
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", tmp],
            stdout=subprocess.DEVNULL,
        )
        try:
            url = f"redis://127.0.0.1:{port}/0"
            for _ in range(100):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.1):
                        break
                except OSError:
                    time.sleep(0.05)
            asyncio.run(main_async(args, url))
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
