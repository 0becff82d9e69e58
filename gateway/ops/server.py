"""Serving: one process, or N worker processes sharing the port through SO_REUSEPORT.

The parent process owns the embedded servers (if any) and has already applied the migrations;
it forks the workers, restarts one that dies, and on SIGINT/SIGTERM passes the signal on, waits
for every worker to drain, and returns so the caller can stop the embedded servers last. With
several workers it also owns the directory where they write their metrics (see `metrics`).

A worker on SIGTERM: `/readyz` turns 503, the listener closes, requests in flight get up to
`server.shutdown_grace_seconds` to finish, then the cleanup contexts run (usage flushed, pools
closed) and it exits 0.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import os
import signal
import socket
import time
from collections.abc import Coroutine
from typing import Any

import structlog
import uvloop
from aiohttp import web

from gateway import appkeys, metrics
from gateway.app import create_app
from gateway.config import Config

log = structlog.get_logger(__name__)

RESTART_BACKOFF = 1.0
LINGER = 2.0  # seconds an unread body is drained after an early answer (aiohttp's default: 10)


class ServeError(Exception):
    """The gateway could not start serving; the message says why, for the operator."""


def run(config: Config) -> None:
    workers = config.server.workers or os.cpu_count() or 1
    warn_deprecated(config)
    ensure_port_free(config.server.host, config.server.port)
    if workers == 1:
        _run(serve_worker(config, reuse_port=False))
        return
    with metrics.multiprocess_dir():
        _supervise(config, workers)


def warn_deprecated(config: Config) -> None:
    """One line per deprecated key still set, once per `serve` (not per worker)."""
    if config.limits.user_daily_requests_by_trust_level:
        log.warning(
            "config_key_deprecated",
            key="limits.user_daily_requests_by_trust_level",
            use='[limits.trust_levels."N"] daily_requests',
        )


def _run(main: Coroutine[Any, Any, None]) -> None:
    """Run a worker on uvloop: measured to cut the gateway's CPU per request (see bench/)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


def ensure_port_free(host: str, port: int) -> None:
    """Bind once without SO_REUSEPORT: that fails if anything, even another gateway, holds the port."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ServeError(f"cannot listen on {host}: {e.strerror}") from None
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ServeError(f"port {port} on {host} is already in use") from None
                raise ServeError(f"cannot listen on {host}:{port}: {e.strerror}") from None


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    """The app as served. A connection that has sent no whole request head within
    `server.header_timeout` (a new one, one idle between requests, one trickling a head) is
    closed: aiohttp's keep-alive timer runs from the connection's start and from each answer's
    end, and closes a connection still waiting for a head. The body's deadline is `inbound`'s;
    after an answer given before its body was read (a 401, a 408, a 429), the rest of it is read
    and dropped for at most LINGER seconds, so the caller can read the answer, then the
    connection closes."""
    return web.AppRunner(
        app,
        handler_cancellation=True,  # a client that disconnects cancels its upstream request
        access_log=None,  # replaced by the one `request` line per request
        shutdown_timeout=config.server.shutdown_grace_seconds,
        keepalive_timeout=config.server.header_timeout,
        lingering_time=LINGER,
    )


async def serve_worker(config: Config, *, reuse_port: bool) -> None:
    app = create_app(config)
    runner = make_runner(app, config)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, config.server.host, config.server.port, reuse_port=reuse_port or None)
        try:
            await site.start()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {config.server.port} on {config.server.host} is already in use") from None
            raise
        log.info("serving", url=f"http://{config.server.host}:{config.server.port}", pid=os.getpid())
        # What start-up made lives as long as the process: keep it out of the cycle collector's
        # full passes, each of which would otherwise stall the loop for ~15 ms.
        gc.freeze()
        await stop.wait()
        log.info("draining", pid=os.getpid(), grace_seconds=config.server.shutdown_grace_seconds)
        app[appkeys.draining].set()
    finally:
        await runner.cleanup()
    log.info("stopped", pid=os.getpid())


def _supervise(config: Config, workers: int) -> None:
    children: dict[int, float] = {}
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            # Not the parent's handlers (they would signal the siblings): the default, until the
            # worker's event loop installs its own.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            code = 0
            try:
                _run(serve_worker(config, reuse_port=True))
            except BaseException:
                log.exception("worker_failed")
                code = 1
            finally:
                os._exit(code)
        children[pid] = time.monotonic()
        if stopping:  # the signal came while forking: this one was not told
            os.kill(pid, signal.SIGTERM)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for _ in range(workers):
        spawn()
    log.info("workers_started", workers=workers, pids=sorted(children))
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        started = children.pop(pid, None)
        if started is None:
            continue
        metrics.worker_exited(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping:
            continue
        log.error("worker_exited", pid=pid, code=code)
        if time.monotonic() - started < RESTART_BACKOFF:
            time.sleep(RESTART_BACKOFF)  # a worker that dies at once must not spin
        if not stopping:
            spawn()
