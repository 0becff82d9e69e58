"""Relaying a stream event by event, through an adapter (`adapters`): an Anthropic stream passed
on as it is, and streams translated between the OpenAI and Anthropic formats.

The same rules as the OpenAI pass-through (`stream`): events are held until the adapter has
seen content (the commit point; an error or an early end before it is a failed attempt), then
passed on as they are converted, never buffered to the end. After the commit an upstream that
breaks, stalls or floods ends the stream with one error event in the client's format.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
from aiohttp import web

from gateway import appkeys
from gateway.net import h1
from gateway.relay import sse
from gateway.relay.adapters import Adapter
from gateway.relay.call import Call, Failure, FailureKind, Recorder, provider_headers
from gateway.relay.keyindex import PoolKey
from gateway.relay.usage import UsageStatus


def usage_of(adapter: Adapter) -> sse.Usage | None:
    u = adapter.usage
    if u is None:
        return None
    return sse.Usage(u.prompt_tokens, u.output_tokens, u.cache_read_tokens, u.cache_creation_tokens)


async def relay_events(
    call: Call,
    key: PoolKey,
    resp: h1.Response,
    record: Recorder,
    first: float,
    deadline: float,
    adapter: Adapter,
    t0: float,
) -> web.StreamResponse | Failure:
    loop = asyncio.get_running_loop()
    cfg = call.request.app[appkeys.config].upstream
    idle, max_event = cfg.idle_timeout, cfg.max_event_bytes
    scanner = sse.Scanner()
    held: list[bytes] = []
    held_size = 0
    chunks = 0

    def take(complete: bytes) -> bytes:
        nonlocal chunks
        out = []
        for event in sse.events(complete):
            chunks += 1
            converted = adapter.take(event)
            if converted:
                out.append(converted)
            if adapter.failed or adapter.broken:
                break
        return b"".join(out)

    while not adapter.committed:
        chunk = await resp.readany(first)
        if not chunk:
            return record.failed(Failure(FailureKind.BAD_STREAM, resp.status, detail="stream ended before any content"))
        converted = take(scanner.feed(chunk))
        if adapter.failed:
            return record.failed(Failure(FailureKind.BAD_STREAM, resp.status, detail=adapter.failed))
        if converted:
            held.append(converted)
            held_size += len(converted)
        if not adapter.committed and (scanner.size > max_event or held_size > max_event):
            raise h1.AnswerTooLarge(f"a stream event is larger than {max_event} bytes")

    ttft = (time.perf_counter() - t0) * 1000
    out = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **provider_headers(call, key),
        },
    )
    await out.prepare(call.request)
    record.committed(ttft)
    broke: str | None = None
    try:
        data = b"".join(held)
        while True:
            if data:
                await out.write(data)
            if adapter.broken:
                broke = "the upstream reported an error"
                break
            if scanner.size > max_event:
                broke = "an event was too large"
                break
            chunk = await resp.readany(min(deadline, loop.time() + idle))
            if not chunk:
                break
            data = take(scanner.feed(chunk))
    except (ConnectionError, RuntimeError):  # the client went away
        record.finished(UsageStatus.CANCELLED, success=False, committed=True, http_status=200, usage=usage_of(adapter))
        call.upstream_ms += (time.perf_counter() - t0) * 1000
        return out
    except TimeoutError:
        broke = "timed out"
    except (aiohttp.ClientError, OSError):
        broke = "connection lost"
    except asyncio.CancelledError:
        record.finished(UsageStatus.CANCELLED, success=False, committed=True, http_status=200, usage=usage_of(adapter))
        raise
    call.upstream_ms += (time.perf_counter() - t0) * 1000
    if broke is not None:
        record.finished(
            UsageStatus.STREAM_ERROR,
            success=False,
            committed=True,
            http_status=200,
            usage=usage_of(adapter),
            chunks=chunks,
            error=broke,
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            if not adapter.broken:  # a reported error already went out as the adapter's error event
                await out.write(adapter.error(f"The upstream stream broke off ({broke})."))
            await out.write_eof()
        return out
    try:
        tail = adapter.close()
        if tail:
            await out.write(tail)
        await out.write_eof()
    except (ConnectionError, RuntimeError):
        pass
    finally:
        record.finished(
            UsageStatus.OK, success=True, committed=True, http_status=200, usage=usage_of(adapter), chunks=chunks
        )
    return out
