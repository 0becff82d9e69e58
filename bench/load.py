"""A small load generator: N concurrent workers on one aiohttp session, loopback only.

    python -m bench.load URL [--api openai|anthropic|gemini] [--token T] [--stream] [--concurrency 16]
                             [--seconds 5] [--requests N]

Each worker sends the same POST again and again until the time or the request budget is spent,
recording per request its latency (request sent to body fully read), its time to first byte
(non-streaming: the response headers; streaming: the first body chunk) and, for a stream, its
time to first token (the first chunk holding a content delta). A request counts as an error
unless it answered 200 with a complete body (for a stream: ending in `data: [DONE]`, in
Anthropic's format `event: message_stop`, in Gemini's a last event with `finishReason`).

Three request formats (`Api`), asking for the same thing: OpenAI's `POST /v1/chat/completions`
(`OPENAI`), Anthropic's `POST /v1/messages` (`ANTHROPIC`, the token as `x-api-key`) and Gemini's
`POST /v1beta/models/{model}:generateContent` (`GEMINI`; `:streamGenerateContent?alt=sse` for a
stream, the token as `x-goog-api-key`), each with the same one-message prompt, output limit and
stream. Gemini names the model and the stream in the URL (`Api.target`): the URL given on the
command line is used as it is.

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
TAIL = 512  # bytes of a stream kept to check its end (a Gemini stream's last event, whole)
DONE = b"data: [DONE]"
PROMPT = "hi"
MAX_TOKENS = 64  # above what the fake upstream answers (16 tokens): never the reason it stops
ANTHROPIC_VERSION = "2023-06-01"


@dataclass
class Result:
    requests: int = 0  # completed, errors included
    errors: int = 0
    elapsed: float = 0.0  # seconds, first request sent to last one finished
    latencies: list[float] = field(default_factory=list)  # seconds, successful requests only
    ttfbs: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)  # streams only: time to the first content delta
    statuses: Counter[str] = field(default_factory=Counter)
    error_samples: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.requests / self.elapsed if self.elapsed > 0 else 0.0

    def latency_ms(self, q: float) -> float | None:
        return percentile(self.latencies, q)

    def ttfb_ms(self, q: float) -> float | None:
        return percentile(self.ttfbs, q)

    def ttft_ms(self, q: float) -> float | None:
        return percentile(self.ttfts, q)

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


def chat_body(stream: bool, model: str = "bench-model") -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": MAX_TOKENS}
    return json.dumps({**body, "stream": stream}).encode()


def messages_body(stream: bool, model: str = "bench-model") -> bytes:
    body = {"model": model, "max_tokens": MAX_TOKENS, "messages": [{"role": "user", "content": PROMPT}]}
    return json.dumps({**body, "stream": stream}).encode()


def gemini_body(stream: bool, model: str = "bench-model") -> bytes:
    """Gemini's request: the model and the stream are in the URL (`gemini_path`), not here."""
    body = {
        "contents": [{"role": "user", "parts": [{"text": PROMPT}]}],
        "generationConfig": {"maxOutputTokens": MAX_TOKENS},
    }
    return json.dumps(body).encode()


def gemini_path(stream: bool, model: str) -> str:
    method = "streamGenerateContent?alt=sse" if stream else "generateContent"
    return f"/v1beta/models/{model}:{method}"


def request_headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def anthropic_headers(token: str) -> dict[str, str]:
    return {"x-api-key": token, "anthropic-version": ANTHROPIC_VERSION, "Content-Type": "application/json"}


def gemini_headers(token: str) -> dict[str, str]:
    return {"x-goog-api-key": token, "Content-Type": "application/json"}


def _non_empty(data: bytes, mark: bytes) -> bool:
    """Whether `mark` (a JSON key and its opening quote) is followed by a non-empty string."""
    at, size = data.find(mark), len(mark)
    while at >= 0:
        if data[at + size : at + size + 1] not in (b'"', b""):
            return True
        at = data.find(mark, at + size)
    return False


def _openai_token(data: bytes) -> bool:
    """A chunk with non-empty `delta.content` (a first chunk `"content":""` is not a token yet)."""
    return _non_empty(data, b'"content":"')


def _anthropic_token(data: bytes) -> bool:
    return b"content_block_delta" in data


def _gemini_token(data: bytes) -> bool:
    """A chunk with a non-empty text part (a last chunk's `"text":""` is not a token)."""
    return _non_empty(data, b'"text":"')


def _ends_with(mark: bytes) -> Callable[[bytes], bool]:
    return lambda tail: mark in tail


def _gemini_done(tail: bytes) -> bool:
    """A Gemini stream is complete when its last event (SSE, ended by CRLF CRLF) or the last
    element of its JSON array (without `alt=sse`, closed by `]`) has `finishReason`."""
    if tail.endswith(b"\r\n\r\n"):
        start, end = tail.rfind(b"\r\n\r\n", 0, len(tail) - 4), len(tail) - 4
    elif tail.endswith(b"]"):
        start, end = tail.rfind(b",\r\n"), len(tail) - 1
    else:
        return False
    return b'"finishReason"' in tail[start + 3 if start >= 0 else 0 : end]


@dataclass(frozen=True)
class Api:
    """One request format: where it goes, what it sends, and what a complete answer looks like."""

    name: str
    path: str  # the route, as shown
    body: Callable[[bool, str], bytes]
    headers: Callable[[str], dict[str, str]]
    stream_done: Callable[[bytes], bool]  # the last TAIL bytes are those of a complete stream
    answer_mark: bytes  # in a complete non-stream answer
    has_token: Callable[[bytes], bool]  # a stream chunk that carries content
    path_of: Callable[[bool, str], str] | None = None  # when the URL names the model or the stream

    def target(self, stream: bool, model: str) -> str:
        """The path a request goes to (`path`, unless this format puts the model in the URL)."""
        return self.path_of(stream, model) if self.path_of else self.path


OPENAI = Api(
    "openai", "/v1/chat/completions", chat_body, request_headers, _ends_with(DONE), b'"choices"', _openai_token
)  # fmt: skip
ANTHROPIC = Api(
    "anthropic", "/v1/messages", messages_body, anthropic_headers, _ends_with(b"event: message_stop"),
    b'"type":"message"', _anthropic_token,
)  # fmt: skip
GEMINI = Api(
    "gemini", "/v1beta/models/{model}:generateContent", gemini_body, gemini_headers, _gemini_done, b'"candidates"',
    _gemini_token, gemini_path,
)  # fmt: skip
APIS = {a.name: a for a in (OPENAI, ANTHROPIC, GEMINI)}


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
    api: Api = OPENAI,
) -> Result:
    """Drive `url` with `concurrency` workers for `seconds` (or `max_requests`); the measurements.
    `api` says what a complete answer looks like (the body and headers are the caller's)."""
    check_loopback(url)
    result = Result()
    issued = 0
    perf = time.perf_counter
    deadline = perf() + seconds
    latencies, ttfbs, ttfts = result.latencies, result.ttfbs, result.ttfts
    stream_done, answer_mark, has_token = api.stream_done, api.answer_mark, api.has_token

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
                t_token = None
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
                        if t_token is None and has_token(tail + chunk):
                            t_token = perf()
                        tail = (tail + chunk)[-TAIL:]
                    ok = stream_done(tail) and t_token is not None
                    detail = f"{api.name} stream without content or without its end: ..." + tail[-200:].decode(
                        errors="replace"
                    )
                else:
                    data = await resp.read()
                    ok = data.startswith(b"{") and answer_mark in data
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
        if t_token is not None:
            ttfts.append(t_token - t0)

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
    api: Api = OPENAI,
) -> tuple[Result, Result]:
    """A warm-up then the measured run, on the same session (so connections are already open).

    `before`/`after` run right around the measured part (e.g. to read a process's CPU time).
    Returns (warm-up, measured)."""
    async with open_session(request_timeout) as session:
        warm = await run_load(
            session, url, body, headers, stream=stream, concurrency=concurrency, seconds=warmup,
            max_requests=max_requests, request_timeout=request_timeout, api=api,
        )  # fmt: skip
        if before:
            before()
        measured = await run_load(
            session, url, body, headers, stream=stream, concurrency=concurrency, seconds=seconds,
            max_requests=max_requests, request_timeout=request_timeout, api=api,
        )  # fmt: skip
        if after:
            after()
    return warm, measured


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.splitlines()[0])
    parser.add_argument("url", help="e.g. http://127.0.0.1:8080/v1/chat/completions (loopback only)")
    parser.add_argument(
        "--api",
        choices=sorted(APIS),
        default="openai",
        help="the request format (anthropic: /v1/messages; gemini: give the :generateContent or "
        ":streamGenerateContent?alt=sse URL)",
    )
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
    api = APIS[args.api]
    _, r = asyncio.run(
        bench(
            args.url,
            api.body(args.stream, args.model),
            api.headers(args.token),
            api=api,
            stream=args.stream,
            concurrency=args.concurrency,
            seconds=min(args.seconds, 600.0),
            warmup=args.warmup,
            max_requests=args.requests,
        )
    )
    print(
        f"{r.requests} requests in {r.elapsed:.2f}s: {r.rps:.0f}/s, p50 {_fmt(r.latency_ms(50))} ms, "
        f"p99 {_fmt(r.latency_ms(99))} ms, ttfb p50 {_fmt(r.ttfb_ms(50))} ms, "
        f"ttft p50 {_fmt(r.ttft_ms(50))} ms, errors {r.errors}"
    )
    for sample in r.error_samples:
        print(f"  error {sample}")
    return 1 if r.errors else 0


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


if __name__ == "__main__":
    sys.exit(main())
