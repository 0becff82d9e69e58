"""The gateway's added cost against going direct to the upstream, measured in one run.

    python -m bench.run [--quick] [--seconds S] [--mode stream] [--concurrency 1] [--output bench/results.json]

Modes: `non-stream` and `stream` send `POST /v1/chat/completions` (passed through to the key);
`messages` and `messages-stream` send the equivalent Anthropic request (same prompt, max_tokens,
stream) to `POST /v1/messages`, which the gateway translates for the same `openai`-format keys
on the same fake upstream, and back. Their "direct" side is the upstream hit directly with the
OpenAI request (measured once, shared with `non-stream`/`stream` when those run too), and they
are compared with the direct route (gateway CPU per request, time to first token) in one table.
`gemini` and `gemini-stream` do the same with Gemini's request (`POST /v1beta/models/bench-model
:generateContent`, `:streamGenerateContent?alt=sse`), translated for the same `openai` keys.
`on-gemini` and `on-gemini-stream` send the OpenAI request for `bench-gemini`, a model served by
three `gemini`-format keys on the same fake upstream (its Gemini route): the gateway translates
it to `:generateContent` and back. All four are compared with the plain `/v1/chat/completions`
cell of the same run and concurrency, and share its direct side (the upstream's OpenAI route hit
with the OpenAI request): the figure that counts, gateway CPU per request, is the gateway's own
either way, and the fake upstream's Gemini route costs what its OpenAI route does.

1. Starts the fake upstream (`bench.upstream`) in its own process on a free loopback port.
2. Uses the real PostgreSQL and Redis (`DATABASE_URL` / `REDIS_URL`, else embedded servers in a
   temporary directory), in a fresh `bench_<random>` schema and a `bench<random>` Redis key prefix.
3. Seeds through the real CLI: a user, a token, three keys on the fake upstream (and three
   `gemini`-format keys for `bench-gemini` when an `on-gemini` mode runs).
4. Starts the real gateway (`python -m gateway serve --workers 1`) and waits for `/readyz`.
5. For each mode and concurrency (1, 16, 64): a warm-up, then the same load against the
   upstream directly and through the gateway; the gateway's (and the upstream's) CPU time from
   `/proc/<pid>/stat` around each measured run. Each translated cell runs right after its
   direct-route cell, so the two see the same machine. After each cell the gateway's usage rows
   are counted: one per request sent, on the cell's route, `ok`, with the upstream's token counts.
6. Prints the tables and PASS/MISS against the targets, writes `bench/results.json`.
7. Stops everything it started (by process id), drops the schema and the Redis keys.

Every load generator, server and client share the machine's cores: the ratios are what count.
Exit code 0 when every request succeeded, 1 when any failed or the gateway could not be measured.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp

from . import load, upstream

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
MODES = (
    "non-stream", "stream", "messages", "messages-stream", "gemini", "gemini-stream", "on-gemini", "on-gemini-stream",
)  # fmt: skip
STREAM_MODES = frozenset({"stream", "messages-stream", "gemini-stream", "on-gemini-stream"})
# A translated mode -> the direct-route mode it is compared with.
TRANSLATED = {m: "stream" if m in STREAM_MODES else "non-stream" for m in MODES[2:]}
CONCURRENCY = (1, 16, 64)
MODEL = "bench-model"
GEMINI_MODEL = "bench-gemini"  # served by the gemini-format keys (the on-gemini modes)
KEYS = 3
CHUNKS = 16  # content chunks per upstream stream; also the completion tokens it reports
USAGE_SETTLE_TIMEOUT = 5.0  # seconds to wait for a cell's usage rows (the gateway flushes every 0.25 s)
HOST = "127.0.0.1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 60.0
CLI_TIMEOUT = 60.0
STOP_GRACE = 5  # the gateway's shutdown_grace_seconds, so that stopping it is bounded
REQUEST_TIMEOUT = 10.0
STORE_PROCESSES = (b"redis-server", b"postgres")

# Targets: (name, threshold) — evaluated in `summary`.
TARGET_CPU_JSON_MS = 0.5
TARGET_CPU_STREAM_MS = 0.8
TARGET_ADDED_P50_MS = 0.5
TARGET_RPS_RATIO_C64 = 0.7
TARGET_TTFB_MS = 1.0
TARGET_TRANSLATED_CPU_RATIO = 1.5  # /v1/messages translated vs /v1/chat/completions, gateway CPU per request
TARGET_TRANSLATED_TTFT_MS = 1.0  # a translated stream's added time to first token over the direct route's
TARGET_GEMINI_CPU_RATIO = 1.3  # Gemini translated (either way) vs /v1/chat/completions, gateway CPU per request
TARGET_GEMINI_TTFT_MS = 0.3
# A translated family -> what it is, and its targets (CPU ratio, added TTFT at concurrency 1).
FAMILIES = {
    "messages": ("/v1/messages on openai keys", TARGET_TRANSLATED_CPU_RATIO, TARGET_TRANSLATED_TTFT_MS),
    "gemini": ("Gemini :generateContent on openai keys", TARGET_GEMINI_CPU_RATIO, TARGET_GEMINI_TTFT_MS),
    "on-gemini": ("/v1/chat/completions on gemini keys", TARGET_GEMINI_CPU_RATIO, TARGET_GEMINI_TTFT_MS),
}
# The route a format's calls are logged under (key_usage_logs.api_endpoint), when not its path.
USAGE_ROUTES = {"gemini": "/v1/generateContent"}


def is_stream(mode: str) -> bool:
    return mode in STREAM_MODES


def family(mode: str) -> str:
    return mode.removesuffix("-stream")


def api_of(mode: str) -> load.Api:
    """The format the load generator speaks to the gateway in this mode."""
    return {"messages": load.ANTHROPIC, "gemini": load.GEMINI}.get(family(mode), load.OPENAI)


def model_of(mode: str) -> str:
    """The model asked for: on-gemini modes ask for the one the gemini-format keys serve."""
    return GEMINI_MODEL if family(mode) == "on-gemini" else MODEL


def usage_route(api: load.Api) -> str:
    return USAGE_ROUTES.get(api.name, api.path)


class SetupError(Exception):
    """Something the benchmark needs could not be set up; the message says what."""


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# --- processes --------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (the gateway forks workers when asked for more than one)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                ppid = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its live descendants, in seconds (0 for one that is gone)."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5): utime, stime
    return total / CLK_TCK


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat", "rb") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already in user
    return (total - idle) / CLK_TCK, total / CLK_TCK


def cpu_by_name(names: tuple[bytes, ...]) -> dict[str, float]:
    """CPU seconds of every process whose command name is one of `names`, summed per name
    (PostgreSQL and Redis on this machine: every client's share, not only ours)."""
    out = {n.decode(): 0.0 for n in names}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        comm = raw[raw.find(b"(") + 1 : raw.rfind(b")")]
        if comm in names:
            fields = raw.rsplit(b")", 1)[1].split()
            out[comm.decode()] += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def stop_process(proc: subprocess.Popen[Any], name: str, grace: float) -> None:
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        say(f"bench: {name} (pid {proc.pid}) did not stop within {grace:.0f}s of SIGTERM; killing it")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)


def start_upstream(delay_ms: float = 0.0) -> tuple[subprocess.Popen[bytes], int]:
    args = ["--host", HOST, "--port", "0", "--chunks", str(CHUNKS), "--delay-ms", str(delay_ms)]
    proc = subprocess.Popen(
        [PYTHON, "-m", "bench.upstream", *args],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        start_new_session=True,  # a Ctrl-C reaches only us; we stop it in order
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    line = b""
    while not line.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or proc.poll() is not None:
            stop_process(proc, "upstream", 5)
            raise SetupError(f"the fake upstream did not start (exit code {proc.returncode})")
        ready, _, _ = select.select([proc.stdout], [], [], remaining)
        if ready:
            byte = os.read(proc.stdout.fileno(), 1)
            if not byte:
                continue
            line += byte
    if not line.startswith(b"READY "):
        stop_process(proc, "upstream", 5)
        raise SetupError(f"the fake upstream said {line!r} instead of READY <port>")
    return proc, int(line.split()[1])


def with_search_path(url: str, schema: str) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "search_path"]
    return urlunsplit(parts._replace(query=urlencode([*query, ("search_path", schema)])))


async def _usage_by_route(url: str, schema: str) -> dict[str, tuple[int, int]]:
    """{api_endpoint: (rows, rows as a successful call must leave them)} in the bench schema:
    status ok, not estimated, the fake upstream's token counts."""
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        rows = await conn.fetch(
            f"""SELECT api_endpoint, count(*) AS n,
                       count(*) FILTER (WHERE status = 'ok' AND NOT usage_estimated
                                        AND prompt_tokens = $1 AND completion_tokens = $2) AS good
                FROM "{schema}".key_usage_logs GROUP BY api_endpoint""",
            upstream.PROMPT_TOKENS,
            CHUNKS,
        )
    finally:
        await conn.close()
    return {r["api_endpoint"] or "": (int(r["n"]), int(r["good"])) for r in rows}


async def _pg(url: str, *statements: str) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(url, timeout=10)
    try:
        return [await conn.fetchval(s) for s in statements]
    finally:
        await conn.close()


def redis_client(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def delete_redis_prefix(url: str, prefix: str) -> int:
    client = redis_client(url)
    deleted = 0
    try:
        batch = []
        for key in client.scan_iter(match=f"{prefix}:*", count=1000):
            batch.append(key)
            if len(batch) >= 500:
                deleted += client.delete(*batch)
                batch = []
        if batch:
            deleted += client.delete(*batch)
    finally:
        client.close()
    return deleted


def redis_commandstats(url: str) -> dict[str, tuple[int, int]] | None:
    """{command: (calls, usec)} for the whole Redis server (other clients included), or None."""
    try:
        client = redis_client(url)
        try:
            stats = client.info("commandstats")
        finally:
            client.close()
    except Exception:
        return None
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), int(v["usec"])) for k, v in stats.items()}


# --- the gateway ------------------------------------------------------------------------------


@dataclass
class Gateway:
    env: dict[str, str]
    log_path: Path
    port: int = 0
    token: str = ""
    proc: subprocess.Popen[bytes] | None = None
    requests_sent: int = 0  # everything we sent it, warm-ups included
    root: Path = ROOT  # the checkout it runs from (bench.ab runs another build beside this one)
    python: str = PYTHON

    def cli(self, *args: str) -> str:
        try:
            done = subprocess.run(
                [self.python, "-m", "gateway", *args],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=CLI_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise SetupError(f"`sharekey {' '.join(args[:2])}` did not finish within {CLI_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            tail = "\n    ".join((done.stderr or done.stdout).strip().splitlines()[-8:])
            raise SetupError(f"`sharekey {' '.join(args[:2])}` failed (exit {done.returncode}):\n    {tail}")
        return done.stdout.strip()

    def seed(self, upstream_port: int, gemini: bool = False) -> None:
        """The user, its token and KEYS openai-format keys for MODEL; with `gemini`, KEYS more in
        Gemini's format for GEMINI_MODEL, on the fake upstream's Gemini route."""
        self.cli("users", "add", "bench")
        token = self.cli("tokens", "create", "bench")
        self.token = token.splitlines()[-1].strip() if token else ""
        if not self.token:
            raise SetupError("`sharekey tokens create bench` printed no token")
        for i in range(1, KEYS + 1):
            self.cli(
                "keys", "add", "--user", "bench", "--name", f"k{i}",
                "--base-url", f"http://{HOST}:{upstream_port}/v1",
                "--api-key", f"sk-bench-{i:016d}", "--models", MODEL,
                "--daily-limit", "1000000", "--no-test",
            )  # fmt: skip
        for i in range(1, KEYS + 1) if gemini else ():
            self.cli(
                "keys", "add", "--user", "bench", "--name", f"g{i}", "--api-format", "gemini",
                "--base-url", f"http://{HOST}:{upstream_port}/v1beta",
                "--api-key", f"AIza-bench-{i:016d}", "--models", GEMINI_MODEL,
                "--daily-limit", "1000000", "--no-test",
            )  # fmt: skip

    def start(self) -> None:
        self.port = free_port()
        log = self.log_path.open("wb")
        try:
            self.proc = subprocess.Popen(
                [self.python, "-m", "gateway", "serve", "--host", HOST, "--port", str(self.port), "--workers", "1"],
                cwd=self.root,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, never a proxy
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(f"the gateway exited with code {self.proc.returncode} before it was ready:\n"
                                 + self.log_tail())  # fmt: skip
            try:
                with opener.open(f"http://{HOST}:{self.port}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}: {e.read()[:200].decode(errors='replace')}"
            except OSError as e:
                last = str(e)
            time.sleep(0.2)
        raise SetupError(f"the gateway was not ready within {START_TIMEOUT:.0f}s ({last}):\n" + self.log_tail())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, "gateway", STOP_GRACE + 15)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "    (no log)"
        return "\n".join("    " + line[:300] for line in text[-lines:]) or "    (empty log)"

    def url(self, api: load.Api, stream: bool = False, model: str = MODEL) -> str:
        return f"http://{HOST}:{self.port}{api.target(stream, model)}"


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Side:
    """One measured run: direct or through the gateway."""

    result: load.Result | None = None
    gateway_cpu_s: float | None = None
    upstream_cpu_s: float | None = None
    client_cpu_s: float | None = None
    redis: dict[str, tuple[int, int]] | None = None  # command -> (calls, usec) during the run
    machine_busy: float | None = None  # share of all CPUs busy during the run, 0..1
    stores_cpu_s: dict[str, float] = field(default_factory=dict)  # redis-server, postgres processes
    skipped: str = ""  # why it was not measured

    def per_request_ms(self, seconds: float | None) -> float | None:
        if seconds is None or self.result is None or not self.result.requests:
            return None
        return seconds * 1000 / self.result.requests

    def to_json(self) -> dict[str, Any]:
        r = self.result
        if r is None:
            return {"skipped": self.skipped}
        out: dict[str, Any] = {
            "requests": r.requests,
            "errors": r.errors,
            "error_kinds": dict(r.statuses),
            "error_samples": r.error_samples,
            "seconds": round(r.elapsed, 3),
            "rps": round(r.rps, 1),
            "p50_ms": _round(r.latency_ms(50)),
            "p90_ms": _round(r.latency_ms(90)),
            "p99_ms": _round(r.latency_ms(99)),
            "ttfb_p50_ms": _round(r.ttfb_ms(50)),
            "ttfb_p99_ms": _round(r.ttfb_ms(99)),
            "upstream_cpu_ms_per_request": _round(self.per_request_ms(self.upstream_cpu_s)),
            "client_cpu_ms_per_request": _round(self.per_request_ms(self.client_cpu_s)),
            "machine_cpu_busy": _round(self.machine_busy),
            "stores_cpu_ms_per_request": {k: _round(self.per_request_ms(v)) for k, v in self.stores_cpu_s.items()},
        }
        if self.gateway_cpu_s is not None:
            out["gateway_cpu_ms_per_request"] = _round(self.per_request_ms(self.gateway_cpu_s))
        if self.redis is not None and r.requests:
            out["redis_per_request"] = {
                cmd: {"calls": round(calls / r.requests, 3), "usec": round(usec / r.requests, 2)}
                for cmd, (calls, usec) in sorted(self.redis.items(), key=lambda kv: -kv[1][0])
                if calls
            }
        return out


@dataclass
class UsageCheck:
    """The gateway's usage rows for one cell: one per request sent (warm-up included)."""

    route: str
    sent: int
    rows: int | None = None  # None: could not be counted
    good: int | None = None  # ok, not estimated, the upstream's token counts
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.rows == self.sent and self.good == self.sent and not self.error

    def shown(self) -> str:
        if self.rows is None:
            return "not counted"
        return "ok" if self.ok else f"MISS {self.good}/{self.rows}/{self.sent}"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"route": self.route, "sent": self.sent, "rows": self.rows, "rows_ok": self.good}
        if self.error:
            out["error"] = self.error
        return out


@dataclass
class Cell:
    mode: str
    concurrency: int
    direct: Side = field(default_factory=Side)
    gateway: Side = field(default_factory=Side)
    usage: UsageCheck | None = None
    direct_shared: bool = False  # `direct` is the direct-route cell's own measurement


def _round(v: float | None, digits: int = 3) -> float | None:
    return None if v is None else round(v, digits)


def measure(
    url: str,
    headers: dict[str, str],
    *,
    api: load.Api,
    stream: bool,
    concurrency: int,
    seconds: float,
    warmup: float,
    upstream_pid: int,
    gateway_pid: int | None = None,
    redis_url: str | None = None,
    model: str = MODEL,
) -> tuple[Side, int]:
    """A warm-up and a measured run; the side and how many requests were sent in all."""
    side = Side()
    marks: dict[str, Any] = {}

    def snapshot() -> dict[str, Any]:
        return {
            "up": cpu_seconds(upstream_pid),
            "gw": cpu_seconds(gateway_pid) if gateway_pid else None,
            "me": time.process_time(),
            "machine": machine_cpu(),
            "stores": cpu_by_name(STORE_PROCESSES),
            "redis": redis_commandstats(redis_url) if redis_url else None,
        }

    def before() -> None:
        marks["before"] = snapshot()

    def after() -> None:
        marks["after"] = snapshot()

    warm, result = asyncio.run(
        load.bench(
            url, api.body(stream, model), headers, stream=stream, concurrency=concurrency,
            seconds=seconds, warmup=warmup, request_timeout=REQUEST_TIMEOUT, before=before, after=after, api=api,
        )
    )  # fmt: skip
    side.result = result
    b, a = marks.get("before"), marks.get("after")
    if b and a:
        side.upstream_cpu_s = a["up"] - b["up"]
        side.client_cpu_s = a["me"] - b["me"]
        busy, total = (a["machine"][0] - b["machine"][0]), (a["machine"][1] - b["machine"][1])
        side.machine_busy = busy / total if total > 0 else None
        # Processes that exited in between take their CPU time with them: never below zero.
        side.stores_cpu_s = {k: max(0.0, a["stores"][k] - b["stores"][k]) for k in a["stores"]}
        if gateway_pid:
            side.gateway_cpu_s = a["gw"] - b["gw"]
        if b["redis"] is not None and a["redis"] is not None:
            side.redis = {
                cmd: (calls - b["redis"].get(cmd, (0, 0))[0], usec - b["redis"].get(cmd, (0, 0))[1])
                for cmd, (calls, usec) in a["redis"].items()
            }
    if warm.errors:
        say(f"bench: {warm.errors} error(s) during the warm-up of {url}: {warm.error_samples[:2]}")
    return side, warm.requests + result.requests


def smoke(url: str, headers: dict[str, str], stream: bool, api: load.Api, model: str = MODEL) -> str:
    """One request; '' if it worked, else what went wrong."""

    async def go() -> load.Result:
        async with load.open_session(REQUEST_TIMEOUT) as session:
            return await load.run_load(
                session, url, api.body(stream, model), headers, stream=stream, concurrency=1,
                seconds=REQUEST_TIMEOUT, max_requests=1, request_timeout=REQUEST_TIMEOUT, api=api,
            )  # fmt: skip

    result = asyncio.run(go())
    if result.errors or not result.requests:
        return "; ".join(result.error_samples) or "no answer"
    return ""


# --- reporting --------------------------------------------------------------------------------


def fmt(v: float | None, spec: str = ".2f") -> str:
    return "-" if v is None else format(v, spec)


def diff(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def cell_numbers(cell: Cell) -> dict[str, float | None]:
    d, g = cell.direct.result, cell.gateway.result
    n: dict[str, float | None] = {
        "rps_direct": d.rps if d else None,
        "rps_gateway": g.rps if g else None,
        "p50_direct": d.latency_ms(50) if d else None,
        "p50_gateway": g.latency_ms(50) if g else None,
        "p99_direct": d.latency_ms(99) if d else None,
        "p99_gateway": g.latency_ms(99) if g else None,
        "ttfb_direct": d.ttfb_ms(50) if d else None,
        "ttfb_gateway": g.ttfb_ms(50) if g else None,
        "ttft_direct": d.ttft_ms(50) if d else None,
        "ttft_gateway": g.ttft_ms(50) if g else None,
        "gateway_cpu_ms": cell.gateway.per_request_ms(cell.gateway.gateway_cpu_s),
        "upstream_cpu_ms": cell.direct.per_request_ms(cell.direct.upstream_cpu_s),
    }
    n["ratio"] = n["rps_gateway"] / n["rps_direct"] if n["rps_gateway"] and n["rps_direct"] else None
    n["added_p50"] = diff(n["p50_direct"], n["p50_gateway"])
    n["added_ttfb"] = diff(n["ttfb_direct"], n["ttfb_gateway"])
    n["added_ttft"] = diff(n["ttft_direct"], n["ttft_gateway"])
    redis = cell.gateway.redis
    n["redis_us"] = (
        sum(usec for _, usec in redis.values()) / g.requests if redis is not None and g and g.requests else None
    )
    return n


def print_table(cells: list[Cell]) -> None:
    header = (
        f"{'mode':<16} {'conc':>4} | {'rps direct':>10} {'gateway':>8} {'gw/dir':>6} | "
        f"{'p50 dir':>7} {'gw':>7} {'added':>6} | {'p99 dir':>7} {'gw':>7} | "
        f"{'ttfb dir':>8} {'gw':>7} {'added':>6} | {'gw cpu':>6} {'up cpu':>6} {'redis':>6} | {'usage':>5} | errors"
    )
    units = (
        f"{'':<16} {'':>4} | {'req/s':>10} {'req/s':>8} {'':>6} | "
        f"{'ms':>7} {'ms':>7} {'ms':>6} | {'ms':>7} {'ms':>7} | "
        f"{'ms':>8} {'ms':>7} {'ms':>6} | {'ms/req':>6} {'ms/req':>6} {'us/req':>6} | {'rows':>5} | dir/gw"
    )
    print(header)
    print(units)
    print("-" * len(header))
    for cell in cells:
        n = cell_numbers(cell)
        d, g = cell.direct.result, cell.gateway.result
        errors = f"{d.errors if d else '-'}/{g.errors if g else '-'}"
        if (d and d.errors) or (g and g.errors):
            errors += "  <-- ERRORS"
        if cell.gateway.skipped:
            errors += f"  (gateway not measured: {cell.gateway.skipped[:60]})"
        usage = cell.usage.shown() if cell.usage else "-"
        print(
            f"{cell.mode:<16} {cell.concurrency:>4} | {fmt(n['rps_direct'], '.0f'):>10} "
            f"{fmt(n['rps_gateway'], '.0f'):>8} {fmt(n['ratio']):>6} | "
            f"{fmt(n['p50_direct']):>7} {fmt(n['p50_gateway']):>7} {fmt(n['added_p50'], '+.2f'):>6} | "
            f"{fmt(n['p99_direct']):>7} {fmt(n['p99_gateway']):>7} | "
            f"{fmt(n['ttfb_direct']):>8} {fmt(n['ttfb_gateway']):>7} {fmt(n['added_ttfb'], '+.2f'):>6} | "
            f"{fmt(n['gateway_cpu_ms'], '.3f'):>6} {fmt(n['upstream_cpu_ms'], '.3f'):>6} "
            f"{fmt(n['redis_us'], '.0f'):>6} | {usage:>5} | {errors}"
        )
    if any(c.direct_shared for c in cells):
        print("(translated rows: the direct side is the upstream hit with the equivalent OpenAI request, shared")
        print(" with the direct-route row of the same concurrency; usage rows ok = one row per request sent, status")
        print(" ok, the upstream's tokens)")


def targets(cells: list[Cell]) -> list[dict[str, Any]]:
    by = {(c.mode, c.concurrency): cell_numbers(c) for c in cells}
    out: list[dict[str, Any]] = []

    def add(name: str, values: dict[str, float | None], ok: Callable[[float], bool], unit: str = "ms") -> None:
        known = {k: v for k, v in values.items() if v is not None}
        measured = bool(known) and len(known) == len(values)
        passed: bool | None = all(ok(v) for v in known.values()) if measured else None  # None: not measured
        shown = ", ".join(f"{k} {fmt(v, '.3f')}{unit}" for k, v in values.items())
        out.append({"target": name, "pass": passed, "values": {k: _round(v) for k, v in values.items()},
                    "shown": shown})  # fmt: skip

    for mode, limit in (("non-stream", TARGET_CPU_JSON_MS), ("stream", TARGET_CPU_STREAM_MS)):
        add(
            f"gateway CPU <= {limit} ms per {mode} request (every concurrency)",
            {f"c{c}": by.get((mode, c), {}).get("gateway_cpu_ms") for c in CONCURRENCY},
            lambda v, limit=limit: v <= limit,
        )
    for mode in ("non-stream", "stream"):
        add(
            f"added p50 latency < {TARGET_ADDED_P50_MS} ms at concurrency 1 ({mode})",
            {"c1": by.get((mode, 1), {}).get("added_p50")},
            lambda v: v < TARGET_ADDED_P50_MS,
        )
    for mode in ("non-stream", "stream"):
        add(
            f"gateway >= {TARGET_RPS_RATIO_C64}x direct req/s at concurrency 64 ({mode})",
            {"c64": by.get((mode, 64), {}).get("ratio")},
            lambda v: v >= TARGET_RPS_RATIO_C64,
            unit="x",
        )
    add(
        f"stream TTFB p50 within {TARGET_TTFB_MS} ms of direct at concurrency 1",
        {"c1": by.get(("stream", 1), {}).get("added_ttfb")},
        lambda v: v <= TARGET_TTFB_MS,
    )
    compared = {(t["mode"], t["concurrency"]): t for t in translated(cells)}
    for mode, base in TRANSLATED.items():
        if not any(m == mode for m, _ in compared):
            continue
        what, ratio, _ = FAMILIES[family(mode)]
        add(
            f"{what} translated <= {ratio}x the gateway CPU per request of "
            f"/v1/chat/completions ({mode} vs {base}, every concurrency measured)",
            {f"c{c}": t["cpu_ratio"] for (m, c), t in compared.items() if m == mode},
            lambda v, ratio=ratio: v <= ratio,
            unit="x",
        )
    for mode in TRANSLATED:
        if not is_stream(mode) or (mode, 1) not in compared:
            continue
        what, _, ttft = FAMILIES[family(mode)]
        add(
            f"{what}, stream translated: TTFT p50 within {ttft} ms of the untranslated stream at concurrency 1",
            {"c1": compared[(mode, 1)]["added_ttft"]},
            lambda v, ttft=ttft: v <= ttft,
        )
    return out


def translated(cells: list[Cell]) -> list[dict[str, Any]]:
    """Each translated cell against its direct-route cell of the same run and concurrency."""
    by = {(c.mode, c.concurrency): c for c in cells}
    out = []
    for cell in cells:
        base = by.get((TRANSLATED.get(cell.mode, ""), cell.concurrency))
        if base is None:
            continue
        t, b = cell_numbers(cell), cell_numbers(base)
        out.append(
            {
                "mode": cell.mode,
                "concurrency": cell.concurrency,
                "base_mode": base.mode,
                "cpu_ms_base": b["gateway_cpu_ms"],
                "cpu_ms_translated": t["gateway_cpu_ms"],
                "cpu_ratio": _ratio(t["gateway_cpu_ms"], b["gateway_cpu_ms"]),
                "rps_ratio": _ratio(t["rps_gateway"], b["rps_gateway"]),
                "added_p50": diff(b["p50_gateway"], t["p50_gateway"]),
                "ttft_base": b["ttft_gateway"],
                "ttft_translated": t["ttft_gateway"],
                "added_ttft": diff(b["ttft_gateway"], t["ttft_gateway"]) if is_stream(cell.mode) else None,
            }
        )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def print_translated(cells: list[Cell]) -> None:
    rows = translated(cells)
    if not rows:
        return
    print()
    print("Translated (messages: Anthropic request -> /chat/completions on openai keys -> back; gemini: Gemini")
    print("request -> /chat/completions on openai keys; on-gemini: OpenAI request -> :generateContent on gemini")
    print("keys) vs /v1/chat/completions passed through, same upstream and run (p50s; TTFT = first content delta):")
    print(
        f"  {'mode':<16} {'conc':>4} | {'gw cpu chat':>11} {'transl.':>8} {'ratio':>6} | {'req/s ratio':>11} | "
        f"{'p50 added':>9} | {'ttft chat':>9} {'transl.':>8} {'added':>6}"
    )
    for t in rows:
        print(
            f"  {t['mode']:<16} {t['concurrency']:>4} | {fmt(t['cpu_ms_base'], '.3f'):>11} "
            f"{fmt(t['cpu_ms_translated'], '.3f'):>8} {fmt(t['cpu_ratio'], '.2f') + 'x':>6} | "
            f"{fmt(t['rps_ratio'], '.2f') + 'x':>11} | {fmt(t['added_p50'], '+.3f'):>9} | "
            f"{fmt(t['ttft_base'], '.3f'):>9} {fmt(t['ttft_translated'], '.3f'):>8} {fmt(t['added_ttft'], '+.3f'):>6}"
        )


def print_targets(results: list[dict[str, Any]], cells: list[Cell]) -> None:
    print()
    print("Targets:")
    for t in results:
        verdict = "N/A " if t["pass"] is None else "PASS" if t["pass"] else "MISS"
        print(f"  {verdict}  {t['target']}: {t['shown']}")
    by = {(c.mode, c.concurrency): cell_numbers(c) for c in cells}
    info = ", ".join(
        f"c{c} {fmt(by.get(('stream', c), {}).get('added_ttfb'), '+.2f')}ms" for c in CONCURRENCY if c != 1
    )
    print(f"        (stream TTFB added at higher concurrency, queueing included: {info})")


# --- the run ----------------------------------------------------------------------------------


@dataclass
class Stores:
    database_url: str
    redis_url: str
    embedded: Any = None
    external: bool = True


def open_stores(tmp: Path) -> Stores:
    db, rd = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if db and rd:
        return Stores(db, rd)
    from gateway.ops import embedded  # only needed without external servers

    say("bench: starting embedded " + " and ".join(n for n, u in (("PostgreSQL", db), ("Redis", rd)) if not u))
    try:
        emb = embedded.start(tmp / "embedded", postgres=not db, redis=not rd)
    except embedded.EmbeddedError as e:
        raise SetupError(str(e)) from None
    return Stores(db or emb.database_url, rd or emb.redis_url, emb, external=False)


def gateway_env(stores: Stores, schema: str, prefix: str, tmp: Path) -> dict[str, str]:
    inherited = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SHAREKEY_")
        and k not in {"DATABASE_URL", "REDIS_URL", "KEY_ENCRYPTION_SECRET", "KEY_ENCRYPTION_OLD_SECRETS"}
    }
    config = tmp / "config.toml"
    config.write_text("# empty: the benchmark sets everything in the environment\n")
    return {
        **inherited,
        "SHAREKEY_CONFIG": str(config),  # never a config.toml lying in the working tree
        "DATABASE_URL": with_search_path(stores.database_url, schema),
        "REDIS_URL": stores.redis_url,
        "KEY_ENCRYPTION_SECRET": secrets.token_urlsafe(48),
        "SHAREKEY_REDIS_KEY_PREFIX": prefix,
        "SHAREKEY_STORAGE_DATA_DIR": str(tmp / "data"),
        "SHAREKEY_SECURITY_ALLOW_PRIVATE_UPSTREAMS": "true",
        "SHAREKEY_SECURITY_ALLOW_HTTP_UPSTREAMS": "true",
        "SHAREKEY_LIMITS_USER_DAILY_REQUESTS": "0",
        "SHAREKEY_LIMITS_USER_REQUESTS_PER_MINUTE": "0",
        "SHAREKEY_LIMITS_USER_CONCURRENT_STREAMS": "0",
        "SHAREKEY_LOGGING_LEVEL": "info",  # as deployed: one JSON line per request, to a file
        "SHAREKEY_SERVER_SHUTDOWN_GRACE_SECONDS": str(STOP_GRACE),
    }


@contextlib.contextmanager
def cleanup() -> Iterator[list[tuple[str, Callable[[], Any]]]]:
    """Undo steps, run last-in first-out; one that fails is reported and the others still run."""
    steps: list[tuple[str, Callable[[], Any]]] = []
    try:
        yield steps
    finally:
        for name, step in reversed(steps):
            try:
                step()
            except Exception as e:
                say(f"bench: cleanup step '{name}' failed: {type(e).__name__}: {e}")


def run(args: argparse.Namespace) -> int:
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    warmup = min(0.3 if args.quick else 0.5, seconds)
    tag = secrets.token_hex(4)
    schema, prefix = f"bench_{tag}", f"bench{tag}"
    cells = [Cell(mode, c) for mode in args.mode or MODES for c in args.concurrency or CONCURRENCY]
    problems: list[str] = []
    notes: dict[str, Any] = {}
    started = time.monotonic()

    with cleanup() as undo:
        tmp = Path(tempfile.mkdtemp(prefix="sharekey-bench-"))
        undo.append(("remove temporary directory", lambda: shutil.rmtree(tmp, ignore_errors=True)))

        stores = open_stores(tmp)
        if stores.embedded is not None:
            undo.append(("stop embedded servers", stores.embedded.stop))
        try:
            asyncio.run(_pg(stores.database_url, f'CREATE SCHEMA "{schema}"'))
        except Exception as e:
            raise SetupError(f"cannot create schema {schema} in PostgreSQL: {type(e).__name__}: {e}") from None
        undo.append(("drop schema", lambda: asyncio.run(_pg(stores.database_url, f'DROP SCHEMA "{schema}" CASCADE'))))
        undo.append(("delete Redis keys", lambda: delete_redis_prefix(stores.redis_url, prefix)))

        upstream, upstream_port = start_upstream(args.upstream_delay_ms)
        undo.append(("stop upstream", lambda: stop_process(upstream, "upstream", 5)))
        say(f"bench: fake upstream on {HOST}:{upstream_port} (pid {upstream.pid})")

        gw = Gateway(gateway_env(stores, schema, prefix, tmp), tmp / "gateway.log")
        undo.append(("stop gateway", gw.stop))
        gateway_down = ""
        try:
            gw.seed(upstream_port, gemini=any(model_of(c.mode) == GEMINI_MODEL for c in cells))
            gw.start()
            assert gw.proc is not None
            say(f"bench: gateway on {HOST}:{gw.port} (pid {gw.proc.pid}), schema {schema}, Redis prefix {prefix}")
        except SetupError as e:
            gateway_down = str(e).splitlines()[0]
            problems.append(f"the gateway could not be set up: {e}")
            say(f"\n!!! bench: the gateway could not be set up; measuring the upstream alone.\n!!! {e}\n")

        smoke_failures: dict[str, str] = {}
        settled: dict[str, tuple[int, int]] | str = {}
        if not gateway_down:
            for mode in dict.fromkeys(c.mode for c in cells):
                api, stream, model = api_of(mode), is_stream(mode), model_of(mode)
                failure = smoke(gw.url(api, stream, model), api.headers(gw.token), stream, api, model)
                gw.requests_sent += 1
                if failure:
                    smoke_failures[mode] = failure
                    problems.append(f"POST {api.path} ({mode}) through the gateway fails: {failure}")
                    say(f"\n!!! bench: POST {api.path} ({mode}) through the gateway fails:\n!!! {failure}")
                    say(f"!!! gateway log (tail):\n{gw.log_tail()}\n")
            settled = _settle_usage(stores, schema, gw.requests_sent)  # the smoke requests' rows

        direct_url = f"http://{HOST}:{upstream_port}{load.OPENAI.path}"
        direct_headers = load.OPENAI.headers("sk-bench-direct")
        measured: dict[tuple[bool, int], Side] = {}  # (stream, concurrency) -> the upstream hit directly
        # A translated cell right after its direct-route cell: the two see the same machine.
        for cell in sorted(cells, key=lambda c: (is_stream(c.mode), c.concurrency, c.mode in TRANSLATED)):
            stream, api = is_stream(cell.mode), api_of(cell.mode)
            label = f"{cell.mode} c{cell.concurrency}"
            shared = measured.get((stream, cell.concurrency))
            if shared is not None:
                cell.direct, cell.direct_shared = shared, True
            else:
                cell.direct, _ = measure(
                    direct_url, direct_headers, api=load.OPENAI, stream=stream, concurrency=cell.concurrency,
                    seconds=seconds, warmup=warmup, upstream_pid=upstream.pid,
                )  # fmt: skip
                measured[(stream, cell.concurrency)] = cell.direct
                _progress(label, "direct", cell.direct)
            skip = gateway_down or smoke_failures.get(cell.mode, "")
            if skip:
                cell.gateway = Side(skipped=skip)
                continue
            if gw.proc is None or gw.proc.poll() is not None:
                cell.gateway = Side(skipped="the gateway process has exited")
                problems.append(f"the gateway exited during the run:\n{gw.log_tail()}")
                gateway_down = "the gateway process has exited"
                continue
            model = model_of(cell.mode)
            cell.gateway, sent = measure(
                gw.url(api, stream, model), api.headers(gw.token), api=api, stream=stream,
                concurrency=cell.concurrency, seconds=seconds, warmup=warmup, upstream_pid=upstream.pid,
                gateway_pid=gw.proc.pid, redis_url=stores.redis_url, model=model,
            )  # fmt: skip
            gw.requests_sent += sent
            _progress(label, "gateway", cell.gateway)
            # Its usage rows, before the next cell runs: one per request sent, on its route.
            after = _settle_usage(stores, schema, gw.requests_sent)
            cell.usage = _usage_check(usage_route(api), sent, settled, after)
            settled = after
            if not cell.usage.ok:
                why = f" ({cell.usage.error})" if cell.usage.error else ""
                problems.append(
                    f"{label}: {sent} requests sent to {api.target(stream, model)}, {cell.usage.rows} usage rows, "
                    f"{cell.usage.good} "
                    f"of them ok with the upstream's token counts{why}"
                )

        for cell in cells:
            for name, side in (("direct", cell.direct), ("gateway", cell.gateway)):
                if side.result and side.result.errors:
                    problems.append(
                        f"{cell.mode} c{cell.concurrency} {name}: {side.result.errors} of {side.result.requests} "
                        f"requests failed ({dict(side.result.statuses)}); e.g. {side.result.error_samples[:2]}"
                    )

        print()
        delay = args.upstream_delay_ms
        print(
            f"sharekey gateway vs direct — {seconds:g}s per cell after {warmup:g}s warm-up, "
            f"{os.cpu_count()} CPUs shared by load generator, gateway, upstream, PostgreSQL and Redis"
            + (f"; the upstream waits {delay:g} ms before each answer" if delay else "")
        )
        print()
        print_table(cells)
        print_translated(cells)
        print()
        print(
            "gw cpu: gateway process CPU (user+sys) per request; up cpu: the fake upstream's, when hit directly; "
            "redis: Redis-side command time per gateway request (server-wide, other clients included)"
        )
        target_results = targets(cells)
        print_targets(target_results, cells)
        _print_cpu_breakdown(cells)
        _print_redis_breakdown(cells)
        # Stop the gateway now, so that its usage queue is flushed before we count the rows.
        gw.stop()
        _usage_rows(stores, schema, gw, notes)
        if "usage_rows" in notes:
            rows, sent = notes["usage_rows"], gw.requests_sent
            print(f"\nusage rows logged by the gateway: {rows} for {sent} requests sent to it")

        if problems:
            print()
            print("!" * 100)
            print(f"!!! {len(problems)} PROBLEM(S):")
            for p in problems:
                print("!!! - " + p.replace("\n", "\n!!!   "))
            print("!" * 100)

        output = Path(args.output)
        payload = {
            "generated_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "seconds_per_cell": seconds,
            "warmup_seconds": warmup,
            "upstream_delay_ms": args.upstream_delay_ms,
            "machine": {
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "aiohttp": aiohttp.__version__,
                "platform": platform.platform(),
            },
            "stores": "external" if stores.external else "embedded",
            "cells": [
                {
                    "mode": c.mode,
                    "concurrency": c.concurrency,
                    "direct": c.direct.to_json(),
                    "gateway": c.gateway.to_json(),
                    "derived": {k: _round(v) for k, v in cell_numbers(c).items()},
                    "direct_shared_with": TRANSLATED[c.mode] if c.direct_shared else None,
                    "usage_rows": c.usage.to_json() if c.usage else None,
                }
                for c in cells
            ],
            "translated_vs_direct_route": [
                {k: _round(v) if isinstance(v, float) else v for k, v in t.items()} for t in translated(cells)
            ],
            "targets": [{k: v for k, v in t.items() if k != "shown"} for t in target_results],
            "problems": problems,
            **notes,
            "wall_seconds": round(time.monotonic() - started, 1),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"\nresults written to {output}  (wall time {time.monotonic() - started:.0f}s)")
    return 1 if problems else 0


def _progress(label: str, side_name: str, side: Side) -> None:
    r = side.result
    if r is None:
        return
    cpu = ""
    if side.gateway_cpu_s is not None:
        cpu = f", gateway cpu {fmt(side.per_request_ms(side.gateway_cpu_s), '.3f')} ms/req"
    if side.machine_busy is not None:
        cpu += f", machine {side.machine_busy * 100:.0f}% busy"
    stores = ", ".join(f"{k} {fmt(side.per_request_ms(v), '.3f')}" for k, v in side.stores_cpu_s.items())
    if stores:
        cpu += f" ({stores} ms/req)"
    loud = f"  <-- {r.errors} ERRORS: {r.error_samples[:1]}" if r.errors else ""
    say(
        f"bench: {label:<16} {side_name:<7} {r.requests:>7} req {r.rps:>7.0f}/s "
        f"p50 {fmt(r.latency_ms(50))} ms p99 {fmt(r.latency_ms(99))} ms{cpu}{loud}"
    )


def _print_cpu_breakdown(cells: list[Cell]) -> None:
    """Where the machine's CPU went, per request, in each run (PostgreSQL and Redis: server-wide)."""
    print("\nCPU ms per request by process (direct -> through the gateway), and how busy the machine was:")
    print(f"  {'mode':<16} {'conc':>4} | {'client':>13} {'upstream':>13} {'gateway':>7} {'redis':>13} "
          f"{'postgres':>13} | {'busy %':>9}")  # fmt: skip
    for c in cells:
        d, g = c.direct, c.gateway

        def pair(get: Callable[[Side], float | None], spec: str = ".3f", d: Side = d, g: Side = g) -> str:
            return f"{fmt(get(d), spec):>5} -> {fmt(get(g), spec):<5}"

        print(
            f"  {c.mode:<16} {c.concurrency:>4} | "
            f"{pair(lambda s: s.per_request_ms(s.client_cpu_s))} "
            f"{pair(lambda s: s.per_request_ms(s.upstream_cpu_s))} "
            f"{fmt(g.per_request_ms(g.gateway_cpu_s), '.3f'):>7} "
            f"{pair(lambda s: s.per_request_ms(s.stores_cpu_s.get('redis-server')))} "
            f"{pair(lambda s: s.per_request_ms(s.stores_cpu_s.get('postgres')))} | "
            f"{pair(lambda s: None if s.machine_busy is None else s.machine_busy * 100, '.0f')}"
        )


def _print_redis_breakdown(cells: list[Cell]) -> None:
    rows = []
    for c in cells:
        side = c.gateway
        if side.redis is None or side.result is None or not side.result.requests:
            continue
        n = side.result.requests
        top = sorted(((calls, usec, cmd) for cmd, (calls, usec) in side.redis.items() if calls), reverse=True)[:4]
        parts = ", ".join(f"{cmd} {calls / n:.2f} ({usec / n:.0f}us)" for calls, usec, cmd in top)
        rows.append(f"  {c.mode:<16} c{c.concurrency:<3} {parts}")
    if rows:
        print("\nRedis commands per gateway request (calls incl. those inside Lua, Redis-side time), server-wide:")
        print("\n".join(rows))


def _settle_usage(stores: Stores, schema: str, expected: int) -> dict[str, tuple[int, int]] | str:
    """The usage rows by route once there are `expected` of them (or after USAGE_SETTLE_TIMEOUT);
    a string saying why they could not be counted."""
    deadline = time.monotonic() + USAGE_SETTLE_TIMEOUT
    while True:
        try:
            counts = asyncio.run(_usage_by_route(stores.database_url, schema))
        except Exception as e:
            return f"{type(e).__name__}: {e}"
        if sum(n for n, _ in counts.values()) >= expected or time.monotonic() > deadline:
            return counts
        time.sleep(0.05)


def _usage_check(
    route: str, sent: int, before: dict[str, tuple[int, int]] | str, after: dict[str, tuple[int, int]] | str
) -> UsageCheck:
    check = UsageCheck(route, sent)
    if isinstance(before, str) or isinstance(after, str):
        check.error = before if isinstance(before, str) else str(after)
        return check
    other = sum(n for r, (n, _) in after.items() if r != route) - sum(n for r, (n, _) in before.items() if r != route)
    (n1, g1), (n0, g0) = after.get(route, (0, 0)), before.get(route, (0, 0))
    check.rows, check.good = n1 - n0, g1 - g0
    if other:
        check.error = f"{other} rows on other routes"
    return check


def _usage_rows(stores: Stores, schema: str, gw: Gateway, notes: dict[str, Any]) -> None:
    if "usage_rows" in notes or gw.proc is None:
        return
    try:
        (rows,) = asyncio.run(_pg(stores.database_url, f'SELECT count(*) FROM "{schema}".key_usage_logs'))
    except Exception as e:
        notes["usage_rows_error"] = f"{type(e).__name__}: {e}"
        return
    notes["usage_rows"] = int(rows)
    notes["gateway_requests_sent"] = gw.requests_sent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="~2 s per cell instead of ~5 s")
    parser.add_argument("--seconds", type=float, default=0.0, help="seconds per cell (overrides --quick)")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results.json"))
    parser.add_argument(
        "--mode",
        action="append",
        choices=MODES,
        help="only this mode (repeatable); messages(-stream): /v1/messages translated for the openai keys; "
        "gemini(-stream): Gemini's generateContent translated for them; on-gemini(-stream): /v1/chat/completions "
        "translated for gemini keys",
    )
    parser.add_argument(
        "--upstream-delay-ms", type=float, default=0.0, help="the fake upstream waits this long before each answer"
    )
    parser.add_argument(
        "--concurrency", action="append", type=int, choices=CONCURRENCY, help="only this concurrency (repeatable)"
    )
    args = parser.parse_args(argv)
    if args.seconds and not 0 < args.seconds <= 30:
        parser.error("--seconds: between 0 and 30")
    try:
        return run(args)
    except SetupError as e:
        say(f"bench: {e}")
        return 1
    except KeyboardInterrupt:
        say("bench: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
