"""Relaying a stream: hold events until the first one with content (the commit point), then pass
them on as they arrive, parsing only the event that carries usage.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import structlog
from aiohttp import web

from gateway import appkeys
from gateway.net import h1
from gateway.relay import sse
from gateway.relay.call import Call, Failure, FailureKind, Recorder, provider_headers
from gateway.relay.keyindex import PoolKey
from gateway.relay.usage import UsageStatus

log = structlog.get_logger(__name__)


async def relay_stream(
    call: Call,
    key: PoolKey,
    resp: h1.Response,
    record: Recorder,
    first: float,
    deadline: float,
    strip_usage: bool,
    t0: float,
) -> web.StreamResponse | Failure:
    """Hold events until the first one with content (errors before it propagate: a failed
    attempt), then commit and relay. After the commit nothing propagates but the client's
    cancellation: an upstream that breaks, stalls or floods ends the stream with one error event."""
    loop = asyncio.get_running_loop()
    cfg = call.request.app[appkeys.config].upstream
    idle, max_event = cfg.idle_timeout, cfg.max_event_bytes
    scanner = sse.Scanner()
    held: list[bytes] = []  # whole events received before the commit point
    held_size = 0
    usage: sse.Usage | None = None
    chunks = 0

    def take(complete: bytes) -> bytes:
        """Count content events, note usage, drop the usage-only chunk we asked for."""
        nonlocal usage, chunks
        chunks += complete.count(b"data:") - complete.count(b"data: [DONE]")
        before, rest = sse.split_at(complete, b'"usage"')
        if not rest:
            return complete  # the common case: forwarded as it came, nothing parsed
        out = [before]
        for event in sse.events(rest):
            data = sse.data_of(event)
            if data is not None and b'"usage"' in data:
                obj = sse.parse(data)
                usage = sse.usage_of(obj) or usage
                if strip_usage and sse.usage_only_chunk(obj):
                    continue
            out.append(event)
        return b"".join(out)

    committed = False
    while not committed:
        chunk = await resp.readany(first)
        if not chunk:
            return record.failed(Failure(FailureKind.BAD_STREAM, resp.status, detail="stream ended before any content"))
        complete = scanner.feed(chunk)
        if complete:
            held.append(complete)
            held_size += len(complete)
        for event in sse.events(complete):
            data = sse.data_of(event)
            if data is None:
                continue
            if data == b"[DONE]" or sse.is_error(data):
                detail = "stream carried only an error" if data != b"[DONE]" else "stream ended before any content"
                return record.failed(Failure(FailureKind.BAD_STREAM, resp.status, detail=detail))
            committed = True
            break
        if not committed and (scanner.size > max_event or held_size > max_event):
            raise h1.AnswerTooLarge(f"a stream event is larger than {max_event} bytes")

    if call.endpoint == "/responses":  # response.created, the first event, names the response
        first_data = next((d for e in sse.events(b"".join(held)) if (d := sse.data_of(e)) is not None), None)
        call.response_id = sse.response_id(sse.parse(first_data)) if first_data else None
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
        data = take(b"".join(held))
        while True:
            if data:
                await out.write(data)
            if scanner.size > max_event:
                broke = "an event was too large"
                break
            chunk = await resp.readany(min(deadline, loop.time() + idle))
            if not chunk:
                break
            data = take(scanner.feed(chunk))
    except (ConnectionError, RuntimeError):  # the client went away (before anything upstream broke)
        record.finished(
            UsageStatus.CANCELLED, success=False, committed=True, http_status=200, usage=usage, chunks=chunks
        )
        call.upstream_ms += (time.perf_counter() - t0) * 1000
        return out
    except TimeoutError:
        broke = "timed out"
    except (aiohttp.ClientError, OSError):
        broke = "connection lost"
    except asyncio.CancelledError:
        record.finished(
            UsageStatus.CANCELLED, success=False, committed=True, http_status=200, usage=usage, chunks=chunks
        )
        raise
    call.upstream_ms += (time.perf_counter() - t0) * 1000
    if broke is not None:
        record.finished(
            UsageStatus.STREAM_ERROR,
            success=False,
            committed=True,
            http_status=200,
            usage=usage,
            chunks=chunks,
            error=broke,
        )
        with contextlib.suppress(ConnectionError, RuntimeError):
            await out.write(sse.error_event(f"The upstream stream broke off ({broke})."))
            await out.write_eof()
        return out
    try:
        if scanner.pending:
            await out.write(scanner.pending)
        await out.write_eof()
    except (ConnectionError, RuntimeError):
        pass  # every event reached the client's connection but the last: the call was served
    finally:
        record.finished(UsageStatus.OK, success=True, committed=True, http_status=200, usage=usage, chunks=chunks)
    return out
