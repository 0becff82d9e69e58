"""The gateway's stream adapters and translations alone, on the fake upstream's own bytes.

    python -m bench.adapters [--rounds 40] [--per-round 300] [--profile on-gemini-stream]

No servers: each case drives the code the relay runs for one request of a bench.run mode
(`sse.Scanner` and the direction's adapter over `bench.upstream`'s prebuilt chunks, one feed per
upstream write; or a non-streamed call's request and answer translated and encoded) and prints the
best of `--rounds` rounds in µs per request: the translation's own cost, without the sockets,
Redis and PostgreSQL that bench.run's CPU figures also carry. `--profile CASE` adds a cProfile of
that case.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import time
from collections.abc import Callable

import orjson

from gateway.relay import sse
from gateway.relay.formats import (
    gemini_on_openai,
    gemini_on_openai_stream,
    openai,
    openai_on_gemini,
    openai_on_gemini_stream,
)

from . import load, upstream

CHUNKS = 16


def _drive(adapter: object, writes: list[bytes]) -> bytes:
    scanner, out = sse.Scanner(), []
    for write in writes:
        complete = scanner.feed(write)
        if complete:
            out.append(adapter.take(complete))  # type: ignore[attr-defined]
    out.append(adapter.close(scanner.pending))  # type: ignore[attr-defined]
    return b"".join(out)


def cases() -> dict[str, Callable[[], bytes]]:
    answers = upstream.Answers(CHUNKS)
    gemini = answers.gemini("bench-gemini")
    # The openai key's stream as the gateway asks for it (include_usage spliced in), then [DONE].
    openai_writes = [*answers.chunks, answers.usage_chunk, answers.done]
    gemini_request = orjson.loads(load.gemini_body(False))
    chat_request = orjson.loads(load.chat_body(False, "bench-gemini"))

    def gemini_call() -> bytes:
        orjson.dumps({"model": upstream.MODEL, **gemini_on_openai.translate_request(gemini_request)})
        answer = gemini_on_openai.translate_answer(orjson.loads(answers.completion), model=upstream.MODEL)
        return orjson.dumps(answer)

    def on_gemini_call() -> bytes:
        orjson.dumps(openai_on_gemini.translate_request(chat_request))
        return orjson.dumps(openai_on_gemini.translate_answer(orjson.loads(gemini.completion), model="bench-gemini"))

    return {
        "stream": lambda: _drive(openai.Passthrough(strip_usage=True), openai_writes),
        "gemini-stream": lambda: _drive(gemini_on_openai_stream.Adapter(model=upstream.MODEL, sse=True), openai_writes),
        "on-gemini-stream": lambda: _drive(
            openai_on_gemini_stream.Adapter(model="bench-gemini", include_usage=False), gemini.events
        ),
        "gemini": gemini_call,
        "on-gemini": on_gemini_call,
    }


def best_us(case: Callable[[], bytes], rounds: int, per_round: int) -> float:
    case()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(per_round):
            case()
        best = min(best, (time.perf_counter() - t0) / per_round)
    return best * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adapters", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=300)
    parser.add_argument("--profile", choices=sorted(cases()), action="append", default=[])
    args = parser.parse_args(argv)
    found = cases()
    for name, case in found.items():
        print(f"{name:<18} {best_us(case, args.rounds, args.per_round):7.1f} µs per request")
    for name in args.profile:
        profile = cProfile.Profile()
        case = found[name]
        profile.enable()
        for _ in range(args.rounds * args.per_round):
            case()
        profile.disable()
        print(f"\n--- {name}, {args.rounds * args.per_round} requests")
        pstats.Stats(profile).sort_stats("tottime").print_stats(15)
    return 0


if __name__ == "__main__":
    sys.exit(main())
