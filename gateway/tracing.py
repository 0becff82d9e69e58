"""OpenTelemetry spans for each request, pick and upstream attempt (`[tracing] otlp_endpoint`).

Off by default, and then free: nothing of OpenTelemetry is imported, no middleware is installed,
and each hook on the hot path (`span`) is one test of a module global. On: one TracerProvider per
process with a BatchSpanProcessor, so spans are exported over OTLP/HTTP from the SDK's own thread,
never on the event loop; sampled by ParentBased(TraceIdRatioBased(`sample_ratio`)). The caller's
`traceparent` is continued (W3C trace context) and never forwarded: an upstream gets only the
header lines of its key. Attributes are ids, names, numbers and statuses (the request log line's
fields); never a key, a token or a prompt.

    request span   "<METHOD> <route>"  server; http.request.method, http.route, http.response.status_code,
                                       sharekey.<every field of the request's log line>
    pick           internal            sharekey.model, sharekey.outcome, sharekey.key_id
    attempt        client              sharekey.key_id, sharekey.model, sharekey.upstream_model, sharekey.result
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from aiohttp import web

from gateway import appkeys
from gateway.config import ConfigError, Tracing
from gateway.log import redact_text

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SCALARS = (str, bool, int, float)

_tracer: Any = None  # the process's tracer while tracing is on
_propagator: Any = None


def start(config: Tracing, worker: str = "") -> Callable[[], None] | None:
    """Tracing on for this process when `otlp_endpoint` is set; returns its shutdown (which exports
    what is left), or None when tracing is off."""
    global _tracer, _propagator
    if not config.otlp_endpoint:
        return None
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    except ImportError:
        raise ConfigError(
            "configuration key tracing.otlp_endpoint: is set but OpenTelemetry is not installed "
            "(pip install 'sharekey[tracing]')"
        ) from None
    attributes = {"service.name": config.service_name}
    if worker:
        attributes["service.instance.id"] = worker
    provider = TracerProvider(
        resource=Resource.create(attributes), sampler=ParentBased(TraceIdRatioBased(config.sample_ratio))
    )
    exporter = OTLPSpanExporter(endpoint=config.otlp_endpoint.rstrip("/") + "/v1/traces", timeout=10)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _tracer, _propagator = provider.get_tracer("sharekey"), TraceContextTextMapPropagator()

    def shutdown() -> None:
        global _tracer, _propagator
        _tracer = _propagator = None
        provider.shutdown()  # exports what is still queued

    return shutdown


def enabled() -> bool:
    return _tracer is not None


NO_SPAN: contextlib.nullcontext[None] = contextlib.nullcontext()


def span(name: str, *, client: bool = False, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child of the current span, or None (and nothing at all) when tracing is off."""
    return NO_SPAN if _tracer is None else _span(name, client, attributes)


@contextlib.contextmanager
def _span(name: str, client: bool, attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry.trace import SpanKind

    kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
    with _tracer.start_as_current_span(name, kind=kind, attributes=_clean(attributes)) as current:
        yield current


def note(current: Any, **attributes: Any) -> None:
    """Attributes learnt as the span went (its outcome); nothing when `current` is None."""
    if current is not None:
        current.set_attributes(_clean(attributes))


def _clean(attributes: dict[str, Any]) -> dict[str, Any]:
    """Scalars only, strings masked as the log masks them (a caller may write anything in a model name)."""
    return {
        f"sharekey.{k}": redact_text(v) if isinstance(v, str) else v
        for k, v in attributes.items()
        if isinstance(v, SCALARS)
    }


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's span, continuing the caller's trace; installed only while tracing is on."""
    if _tracer is None:
        return await handler(request)
    from opentelemetry.trace import SpanKind, Status, StatusCode

    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"
    parent = _propagator.extract(carrier=request.headers)
    attributes = {"http.request.method": request.method, "http.route": template}
    with _tracer.start_as_current_span(
        f"{request.method} {template}", context=parent, kind=SpanKind.SERVER, attributes=attributes
    ) as current:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            current.set_attribute("http.response.status_code", status)
            current.set_attributes(_clean(request.get(appkeys.log_fields) or {}))
            if status >= 500:
                current.set_status(Status(StatusCode.ERROR))
