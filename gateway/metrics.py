"""Prometheus metrics: what the gateway counts, and the text `GET /metrics` answers with.

Per-process counts (requests, latencies, attempts, errors, the usage queue, job runs) use
prometheus-client. With one process they live in its default registry. With `--workers N > 1`
the parent calls `use_multiprocess()` before forking: every worker then writes its samples to
files under PROMETHEUS_MULTIPROC_DIR and a scrape of any worker reads them all. That choice must
be made before a metric is created, so the metric objects are built on first use, in the worker.

Cluster facts (keys by state, calls left today per model, the usage spool) are no process's count:
they are read from PostgreSQL and Redis when scraped, and the last answer is kept for a scrape
that finds them unreachable. Labels stay bounded: routes are the fixed `/v1` routes, a model is
named only if the key index serves it (else "other"), a status is an HTTP code.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram, multiprocess, values

log = structlog.get_logger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SCRAPE_TIMEOUT = 1.0
KEY_STATES = ("active", "cooling", "disabled", "paused")
OTHER = "other"


class _Metrics:
    def __init__(self) -> None:
        self.requests = Counter(
            "sharekey_requests", "Requests to /v1 by route, model and HTTP status.", ["route", "model", "status"]
        )
        self.upstream = Histogram(
            "sharekey_upstream_seconds",
            "Time spent on one upstream attempt, to its last byte.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
        )
        self.ttft = Histogram(
            "sharekey_time_to_first_token_seconds",
            "From sending a streamed request upstream to its first content event.",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60),
        )
        self.attempts = Histogram(
            "sharekey_attempts", "Upstream attempts per /v1 request (0: refused before any).", buckets=(0, 1, 2, 3, 5)
        )
        self.queue_depth = Gauge(
            "sharekey_usage_queue_depth", "Usage records waiting in memory.", multiprocess_mode="livesum"
        )
        self.flush_lag = Gauge(
            "sharekey_usage_flush_lag_seconds",
            "Age of the oldest usage record not yet written to PostgreSQL (0: none waiting).",
            multiprocess_mode="livemax",
        )
        self.upstream_connections = Counter(
            "sharekey_upstream_connections",
            "Connections opened to upstreams by /v1 requests; far fewer than requests when keep-alive works.",
        )
        self.redis_errors = Counter("sharekey_redis_errors", "Redis calls that failed, by caller.", ["source"])
        self.postgres_errors = Counter(
            "sharekey_postgres_errors", "PostgreSQL calls that failed, by caller.", ["source"]
        )
        self.job_runs = Counter(
            "sharekey_job_runs", "Runs of once-per-cluster jobs, by job and result.", ["job", "result"]
        )
        self.job_last_run = Gauge(
            "sharekey_job_last_success_timestamp_seconds",
            "When each job last finished without error.",
            ["job"],
            multiprocess_mode="max",
        )
        self.health_checks = Counter("sharekey_health_checks", "Key health checks by result.", ["result"])
        self._children: dict[tuple[str, str, int], Any] = {}

    def request(self, route: str, model: str, status: int) -> Any:
        key = (route, model, status)
        child = self._children.get(key)
        if child is None:  # labels() costs a lock and validation: once per label set, not per request
            child = self._children[key] = self.requests.labels(route, model, str(status))
        return child


_metrics: _Metrics | None = None


def _get() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


# --- process model -----------------------------------------------------------------------------


@contextlib.contextmanager
def multiprocess_dir() -> Iterator[Path]:
    """In the parent, around forking workers: a fresh directory for their samples.

    An operator's PROMETHEUS_MULTIPROC_DIR is used (emptied first, left in place); otherwise a new
    temporary one, removed afterwards.
    """
    configured = os.environ.get(MULTIPROC_ENV)
    path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="sharekey-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.get_value_class()  # chosen when prometheus-client was imported
    try:
        yield path
    finally:
        if not configured:
            shutil.rmtree(path, ignore_errors=True)


def worker_exited(pid: int) -> None:
    """In the parent: drop a dead worker's live gauges (its counters stay counted)."""
    if os.environ.get(MULTIPROC_ENV):
        multiprocess.mark_process_dead(pid)


# --- what the code records (cheap: no I/O, no awaiting) ------------------------------------------


def model_label(pooled: Mapping[str, Any], model: str | None) -> str:
    """The model's own label when the key index pools it (`pooled`), else "other": a label per
    name a caller made up would grow the metrics without bound."""
    return model if model and model in pooled else OTHER


def request_done(route: str, model: str, status: int, attempts: int) -> None:
    m = _get()
    m.request(route, model, status).inc()
    m.attempts.observe(attempts)


def attempt_done(seconds: float) -> None:
    _get().upstream.observe(seconds)


def first_token(seconds: float) -> None:
    _get().ttft.observe(seconds)


def upstream_connected() -> None:
    _get().upstream_connections.inc()


def redis_error(source: str) -> None:
    _get().redis_errors.labels(source).inc()


def postgres_error(source: str) -> None:
    _get().postgres_errors.labels(source).inc()


def usage_observed(depth: int, lag: float) -> None:
    """The flusher's queue depth and lag, from its own buffer."""
    m = _get()
    m.queue_depth.set(depth)
    m.flush_lag.set(lag)


def job_ran(job: str, ok: bool) -> None:
    m = _get()
    m.job_runs.labels(job, "ok" if ok else "error").inc()
    if ok:
        m.job_last_run.labels(job).set(time.time())


def health_checked(result: str) -> None:
    _get().health_checks.labels(result).inc()
