"""Relaying a stream, whatever its formats (each direction's `Adapter`, gateway/relay/formats):
hold what comes until the first content event (the commit point; an error or an early end before
it is a failed attempt), then pass it on as it arrives, converted where the formats differ, never
buffered to the end. After the commit nothing propagates but the client's cancellation: an
upstream that breaks, stalls or floods ends the stream with one error event in the client's format.
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
from gateway.relay.call import Call, Failure, FailureKind, Recorder, provider_headers
from gateway.relay.formats.shared import ENDED_EARLY, Adapter
from gateway.relay.keyindex import PoolKey
from gateway.relay.usage import UsageStatus


async def relay(
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

    while not adapter.committed:
        chunk = await resp.readany(first)
        if not chunk:
            return record.failed(Failure(FailureKind.BAD_STREAM, resp.status, detail=ENDED_EARLY))
        converted = adapter.take(scanner.feed(chunk))
        if adapter.failed:
            return record.failed(Failure(FailureKind.BAD_STREAM, resp.status, detail=adapter.failed))
        if converted:
            held.append(converted)
            held_size += len(converted)
        if not adapter.committed and (scanner.size > max_event or held_size > max_event):
            raise h1.AnswerTooLarge(f"a stream event is larger than {max_event} bytes")

    if call.endpoint == "/responses":  # response.created, the first event, names the response
        first_data = next((d for e in sse.events(b"".join(held)) if (d := sse.data_of(e)) is not None), None)
        call.response_id = sse.response_id(sse.parse(first_data)) if first_data else None
    ttft = (time.perf_counter() - t0) * 1000
    out = web.StreamResponse(
        status=200,
        headers={
            "Content-Type": adapter.content_type,
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
            data = adapter.take(scanner.feed(chunk))
    except (ConnectionError, RuntimeError):  # the client went away (before anything upstream broke)
        _streamed(record, adapter, UsageStatus.CANCELLED)
        call.upstream_ms += (time.perf_counter() - t0) * 1000
        return out
    except TimeoutError:
        broke = "timed out"
    except (aiohttp.ClientError, OSError):
        broke = "connection lost"
    except asyncio.CancelledError:
        _streamed(record, adapter, UsageStatus.CANCELLED)
        raise
    call.upstream_ms += (time.perf_counter() - t0) * 1000
    if broke is not None:
        _streamed(record, adapter, UsageStatus.STREAM_ERROR, error=broke)
        with contextlib.suppress(ConnectionError, RuntimeError):
            if not adapter.broken:  # a reported error already went out as the adapter's error event
                await out.write(adapter.error(f"The upstream stream broke off ({broke})."))
            await out.write_eof()
        return out
    try:
        tail = adapter.close(scanner.pending)
        if tail:
            await out.write(tail)
        await out.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # every event reached the client's connection but the last: the call was served
    finally:
        _streamed(record, adapter, UsageStatus.OK)
    return out


def _streamed(record: Recorder, adapter: Adapter, status: UsageStatus, error: str | None = None) -> None:
    """The record of a committed stream: what its adapter saw, whatever ended it."""
    record.finished(
        status,
        success=status is UsageStatus.OK,
        committed=True,
        http_status=200,
        usage=adapter.recorded_usage(),
        chunks=adapter.chunks,
        error=error,
    )
