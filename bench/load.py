"""A small load generator: N concurrent workers on one aiohttp session, loopback only.

    python -m bench.load URL [--token T] [--stream] [--concurrency 16] [--seconds 5] [--requests N]

Each worker sends the same POST again and again until the time or the request budget is spent,
recording per request its latency (request sent to body fully read) and its time to first byte
(non-streaming: the response headers; streaming: the first body chunk). A request counts as an
error unless it answered 200 with a complete body (for a stream: ending in `data: [DONE]`).

Bounded: every run stops after `seconds` (and at most `max_requests`), every request after
`request_timeout`, and the whole run after `seconds + request_timeout` whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

MAX_ERROR_SAMPLES = 5
DONE = b"data: [DONE]"


@dataclass
class Result:
    requests: int = 0  # completed, errors included
    errors: int = 0
    elapsed: float = 0.0  # seconds, first request sent to last one finished
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    ttfbs: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        return percentile(self.latencies, q)

    def ttfb_ms(self, q: float) -> float | None:
        return percentile(self.ttfbs, q)

    def error(self, kind: str, detail: str) -> None:
        self.errors += 1
        self.statuses[kind] += 1
        if len(self.error_samples) < MAX_ERROR_SAMPLES:
            self.error_samples.append(f"{kind}: {detail}"[:300])


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of seconds, in milliseconds."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1] * 1000


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(f"bench.load only sends to loopback addresses, not {host!r}")


def open_session(request_timeout: float = 30.0) -> aiohttp.ClientSession:
    """One session for a whole run: unlimited pooled keep-alive connections, no environment proxies."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, ttl_dns_cache=None),
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        trust_env=False,
        auto_decompress=False,
    )


async def run_load(
    session: aiohttp.ClientSession,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    stream: bool,
    concurrency: int,
    seconds: float,
    max_requests: int = 1_000_000,
    request_timeout: float = 30.0,
) -> Result:
    """Drive `url` with `concurrency` workers for `seconds` (or `max_requests`); the measurements."""
    check_loopback(url)
    result = Result()
    issued = 0
    perf = time.perf_counter
    deadline = perf() + seconds
    latencies, ttfbs = result.latencies, result.ttfbs

    async def one() -> None:
        t0 = perf()
        try:
            async with session.post(url, data=body, headers=headers) as resp:
                t_first = perf()
                if resp.status != 200:
                    text = (await resp.content.read(300)).decode(errors="replace")
                    result.requests += 1
                    result.error(f"http_{resp.status}", text)
                    return
                if stream:
                    tail = b""
                    first = True
                    while True:
                        chunk = await resp.content.readany()
                        if not chunk:
                            break
                        if first:
                            t_first = perf()
                            first = False
                        tail = (tail + chunk)[-64:]
                    ok = DONE in tail
                    detail = "stream ended without data: [DONE]: ..." + tail.decode(errors="replace")
                else:
                    data = await resp.read()
                    ok = data.startswith(b"{") and b'"choices"' in data
                    detail = data[:200].decode(errors="replace")
                t_end = perf()
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            result.requests += 1
            result.error(type(e).__name__, str(e))
            return
        result.requests += 1
        if not ok:
            result.error("bad_body", detail)
            return
        latencies.append(t_end - t0)
        ttfbs.append(t_first - t0)

    async def worker() -> None:
        nonlocal issued
        while issued < max_requests and perf() < deadline:
            issued += 1
            await one()

    start = perf()
    try:
        async with asyncio.timeout(seconds + request_timeout + 5):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    except TimeoutError:
        result.error("run_timeout", f"the run did not finish within {seconds + request_timeout + 5:.0f}s")
    result.elapsed = perf() - start
    return result


async def bench(
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    stream: bool,
    concurrency: int,
    seconds: float,
    warmup: float = 0.5,
    max_requests: int = 1_000_000,
    request_timeout: float = 30.0,
    before: Callable[[], None] | None = None,
    after: Callable[[], None] | None = None,
) -> tuple[Result, Result]:
    """A warm-up then the measured run, on the same session (so connections are already open).

    `before`/`after` run right around the measured part (e.g. to read a process's CPU time).
    Returns (warm-up, measured)."""
    async with open_session(request_timeout) as session:
        warm = await run_load(
            session, url, body, headers, stream=stream, concurrency=concurrency, seconds=warmup,
            max_requests=max_requests, request_timeout=request_timeout,
        )  # fmt: skip
        if before:
            before()
        measured = await run_load(
            session, url, body, headers, stream=stream, concurrency=concurrency, seconds=seconds,
            max_requests=max_requests, request_timeout=request_timeout,
        )  # fmt: skip
        if after:
            after()
    return warm, measured


def chat_body(stream: bool, model: str = "bench-model") -> bytes:
    return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": stream}).encode()


def request_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:8080/v1/chat/completions (loopback only)")
    parser.add_argument("--token", default="sk-bench")
    parser.add_argument("--model", default="bench-model")
    parser.add_argument("--stream", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--requests", type=int, default=1_000_000, help="at most this many requests")
    parser.add_argument("--warmup", type=float, default=0.5)
    args = parser.parse_args(argv)
    try:
        check_loopback(args.url)
    except ValueError as e:
        parser.error(str(e))
    _, r = asyncio.run(
        bench(
            args.url,
            chat_body(args.stream, args.model),
            request_headers(args.token),
            stream=args.stream,
            concurrency=args.concurrency,
            seconds=min(args.seconds, 600.0),
            warmup=args.warmup,
            max_requests=args.requests,
        )
    )
    print(
        f"{r.requests} requests in {r.elapsed:.2f}s: {r.rps:.0f}/s, p50 {_fmt(r.latency_ms(50))} ms, "
        f"p99 {_fmt(r.latency_ms(99))} ms, ttfb p50 {_fmt(r.ttfb_ms(50))} ms, errors {r.errors}"
    )
    for sample in r.error_samples:
        print(f"  error {sample}")
    return 1 if r.errors else 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    sys.exit(main())
