"""This build of the gateway against another one (a checkout of an older commit), in one run.

    python -m bench.ab --base ../base-01e328f [--rounds 3] [--seconds 3] [--mode stream] [--concurrency 1]

Both gateways run at once beside one fake upstream (`bench.upstream`) and the same PostgreSQL and
Redis (`DATABASE_URL` / `REDIS_URL`, else embedded), each in its own schema and Redis key prefix,
seeded the same way through its own CLI. The checkout named by `--base` runs with its own
`.venv` (run `make .venv/.installed` there first). For every cell (mode x concurrency) and round,
the upstream is measured directly and then each gateway in turn, the order swapped every round
(A B, then B A), so that whatever the shared machine does falls on both alike.

Printed per cell, the median over rounds of each side's figures and the ratio B/A (B: this
checkout, A: the base): gateway CPU per request, Redis's and PostgreSQL's CPU per request
(server-wide), Redis command time per request, and the added p50 latency over the direct run of
the same round. Exit code 1 when any request failed.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import load
from . import run as bench_run
from .run import (
    CONCURRENCY,
    ROOT,
    Gateway,
    SetupError,
    Side,
    _pg,
    api_of,
    cleanup,
    delete_redis_prefix,
    gateway_env,
    is_stream,
    measure,
    open_stores,
    say,
    start_upstream,
    stop_process,
)

# The modes every build speaks (the Gemini ones need gemini-format keys, which older builds lack).
MODES = bench_run.MODES[:4]


@dataclass
class Build:
    name: str  # "A" (the base) or "B" (this checkout)
    root: Path
    gateway: Gateway | None = None
    sides: dict[tuple[str, int], list[Side]] = field(default_factory=dict)


def _figures(side: Side) -> dict[str, float | None]:
    r = side.result
    if r is None or not r.requests:
        return {}
    redis_usec = sum(usec for _, usec in side.redis.values()) if side.redis else None
    return {
        "gw": side.per_request_ms(side.gateway_cpu_s),
        "redis": side.per_request_ms(side.stores_cpu_s.get("redis-server")),
        "redis_cmd_us": redis_usec / r.requests if redis_usec is not None else None,
        "pg": side.per_request_ms(side.stores_cpu_s.get("postgres")),
        "p50": r.latency_ms(50),
    }


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _ratio(b: float | None, a: float | None) -> str:
    return f"{b / a:5.2f}x" if a and b is not None else "    -"


def run(args: argparse.Namespace) -> int:
    base = Path(args.base).resolve()
    base_python = base / ".venv" / "bin" / "python"
    if not base_python.exists():
        raise SetupError(f"{base_python} does not exist: run `make .venv/.installed` in {base} first")
    builds = [Build("A", base), Build("B", ROOT)]
    cells = [(mode, c) for mode in args.mode or MODES for c in args.concurrency or CONCURRENCY]
    seconds, warmup = args.seconds, min(0.5, args.seconds)
    direct: dict[tuple[str, int], list[Side]] = {}
    failed = 0

    with cleanup() as undo:
        tmp = Path(tempfile.mkdtemp(prefix="sharekey-bench-ab-"))
        undo.append(("remove temporary directory", lambda: shutil.rmtree(tmp, ignore_errors=True)))
        stores = open_stores(tmp)
        if stores.embedded is not None:
            undo.append(("stop embedded servers", stores.embedded.stop))
        upstream, upstream_port = start_upstream()
        undo.append(("stop upstream", lambda: stop_process(upstream, "upstream", 5)))
        for build in builds:
            tag = secrets.token_hex(4)
            schema, prefix = f"bench_{tag}", f"bench{tag}"
            asyncio.run(_pg(stores.database_url, f'CREATE SCHEMA "{schema}"'))
            drop = f'DROP SCHEMA "{schema}" CASCADE'
            undo.append(("drop schema", lambda drop=drop: asyncio.run(_pg(stores.database_url, drop))))
            undo.append(("delete Redis keys", lambda p=prefix: delete_redis_prefix(stores.redis_url, p)))
            (tmp / build.name).mkdir()
            gw = Gateway(gateway_env(stores, schema, prefix, tmp / build.name), tmp / f"gateway-{build.name}.log")
            gw.root, gw.python = build.root, str(build.root / ".venv" / "bin" / "python")
            undo.append((f"stop gateway {build.name}", gw.stop))
            gw.seed(upstream_port)
            gw.start()
            build.gateway = gw
            assert gw.proc is not None
            say(f"bench.ab: {build.name} = {build.root} on port {gw.port} (pid {gw.proc.pid})")

        direct_url = f"http://127.0.0.1:{upstream_port}{load.OPENAI.path}"
        for round_no in range(args.rounds):
            order = builds if round_no % 2 == 0 else builds[::-1]
            for mode, conc in cells:
                stream, api = is_stream(mode), api_of(mode)
                common = {"stream": stream, "concurrency": conc, "seconds": seconds, "warmup": warmup}
                side, _ = measure(direct_url, load.OPENAI.headers("sk-direct"), api=load.OPENAI,
                                  upstream_pid=upstream.pid, **common)  # fmt: skip
                direct.setdefault((mode, conc), []).append(side)
                for build in order:
                    gw = build.gateway
                    assert gw is not None and gw.proc is not None
                    side, _ = measure(
                        gw.url(api), api.headers(gw.token), api=api, upstream_pid=upstream.pid,
                        gateway_pid=gw.proc.pid, redis_url=stores.redis_url, **common,
                    )  # fmt: skip
                    build.sides.setdefault((mode, conc), []).append(side)
                    errors = side.result.errors if side.result else 1
                    failed += errors
                    figures = _figures(side)
                    say(f"bench.ab: round {round_no + 1} {mode} c{conc} {build.name}: "
                        f"gateway {figures.get('gw') or 0:.3f} ms cpu/req, {errors} errors")  # fmt: skip

    a, b = builds
    print(f"\n{b.root} (B) against {a.root} (A): median of {args.rounds} rounds, {seconds:g}s per run")
    print("CPU in ms per request; redis cmd: Redis command time (us) per request; +p50: added over direct (ms)\n")
    head = f"{'mode':<16}{'conc':>4} | {'gateway A':>9} {'B':>7} {'B/A':>6} | {'redis A':>7} {'B':>7} {'B/A':>6}"
    head += f" | {'redis cmd A':>11} {'B':>7} {'B/A':>6} | {'pg A':>6} {'B':>6} {'B/A':>6} | {'+p50 A':>6} {'B':>6}"
    print(head)
    for mode, conc in cells:
        d50 = [s.result.latency_ms(50) if s.result else None for s in direct[(mode, conc)]]
        row = {}
        for build in builds:
            figs = [_figures(s) for s in build.sides[(mode, conc)]]
            row[build.name] = {k: _median([f.get(k) for f in figs]) for k in ("gw", "redis", "redis_cmd_us", "pg")}
            added = [f["p50"] - d for f, d in zip(figs, d50, strict=True) if f.get("p50") is not None and d is not None]
            row[build.name]["added"] = _median(added)
        ra, rb = row["A"], row["B"]

        def f(v: float | None, spec: str = ".3f") -> str:
            return format(v, spec) if v is not None else "-"

        print(
            f"{mode:<16}{conc:>4} | {f(ra['gw']):>9} {f(rb['gw']):>7} {_ratio(rb['gw'], ra['gw']):>6} | "
            f"{f(ra['redis']):>7} {f(rb['redis']):>7} {_ratio(rb['redis'], ra['redis']):>6} | "
            f"{f(ra['redis_cmd_us'], '.1f'):>11} {f(rb['redis_cmd_us'], '.1f'):>7} "
            f"{_ratio(rb['redis_cmd_us'], ra['redis_cmd_us']):>6} | "
            f"{f(ra['pg']):>6} {f(rb['pg']):>6} {_ratio(rb['pg'], ra['pg']):>6} | "
            f"{f(ra['added'], '.2f'):>6} {f(rb['added'], '.2f'):>6}"
        )
    if failed:
        print(f"\n!!! {failed} request(s) failed")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True, help="a checkout of the build to compare against (its own .venv)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of every cell, the order swapped each round")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per measured run")
    parser.add_argument("--mode", action="append", choices=MODES, help="only this mode (repeatable)")
    parser.add_argument("--concurrency", action="append", type=int, choices=CONCURRENCY, help="only this (repeatable)")
    args = parser.parse_args(argv)
    if not 0 < args.seconds <= 30 or not 1 <= args.rounds <= 20:
        parser.error("--seconds: between 0 and 30; --rounds: between 1 and 20")
    try:
        return run(args)
    except SetupError as e:
        say(f"bench.ab: {e}")
        return 1
    except KeyboardInterrupt:
        say("bench.ab: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
