"""Tracing (`[tracing] otlp_endpoint`): the official SDK exports a span per request, pick and upstream
attempt over OTLP/HTTP to a receiver on loopback; the caller's traceparent is continued and never
forwarded upstream; no key, token or prompt is in what is exported; unset, no tracer is made, no
middleware installed and no exporter imported."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from typing import Any

import asyncpg
import pytest
from aiohttp import web

from gateway import config as config_mod
from gateway.app import create_app
from gateway.relay.keyindex import KEY_INDEX
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateways import gateway_config
from tests.support.seed import add_key, user_with_token

pytest.importorskip("opentelemetry.sdk", reason="OpenTelemetry is not installed (pip install 'sharekey[tracing]')")
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
PROMPT = "the secret prompt text"
DONOR_KEY = "sk-donor-key-that-must-never-leave-0001"


class Receiver:
    """An OTLP/HTTP trace receiver: every export request's raw bytes and its decoded spans."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.spans: list[Any] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/traces", self.traces)

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.raw.append(body)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                self.spans.extend(scope.spans)
        return web.Response(body=b"", content_type="application/x-protobuf")


def attrs(span: Any) -> dict[str, Any]:
    out = {}
    for kv in span.attributes:
        value = kv.value
        out[kv.key] = getattr(value, value.WhichOneof("value"))
    return out


async def test_a_request_exports_its_span_its_pick_and_its_attempt_under_the_callers_trace(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, aiohttp_server: Any, fake_upstream: FakeUpstream
) -> None:
    receiver = Receiver()
    collector = await aiohttp_server(receiver.app)
    cfg = gateway_config(config).replace("tracing", otlp_endpoint=f"http://127.0.0.1:{collector.port}")
    donor, _ = await user_with_token(pool, "donor")
    _, token = await user_with_token(pool, "caller")
    key = await add_key(pool, cfg, donor, fake_upstream.base_url, api_key=DONOR_KEY, models=["gpt-4o-mini"])
    app = create_app(cfg)
    client = await aiohttp_client(app)
    await app[KEY_INDEX].reload()
    headers = {"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]}
    resp = await client.post("/v1/chat/completions", json=body, headers=headers)
    assert resp.status == 200
    refused = await client.post("/v1/chat/completions", json={"model": "nobody-serves-this"}, headers=headers)
    assert refused.status == 404
    await client.close()  # the app's cleanup shuts the provider down: what is queued is exported

    [sent] = [r for r in fake_upstream.requests if r.path.endswith("/chat/completions")]
    assert "traceparent" not in {h.lower() for h in sent.headers}, "the caller's trace context went upstream"

    by_name: dict[str, list[Any]] = {}
    for span in receiver.spans:
        by_name.setdefault(span.name, []).append(span)
    server_spans = by_name["POST /v1/chat/completions"]
    assert len(server_spans) == 2
    served = next(s for s in server_spans if attrs(s)["http.response.status_code"] == 200)
    assert served.trace_id.hex() == TRACE_ID and served.parent_span_id.hex() == CALLER_SPAN  # continued
    assert attrs(served)["http.request.method"] == "POST" and attrs(served)["sharekey.model"] == "gpt-4o-mini"
    assert attrs(served)["sharekey.key_id"] == str(key.id)
    [pick] = [s for s in by_name["pick"] if s.parent_span_id == served.span_id]
    assert attrs(pick)["sharekey.outcome"] == "ok" and attrs(pick)["sharekey.key_id"] == str(key.id)
    [attempt] = by_name["attempt"]
    assert attempt.parent_span_id == served.span_id and attempt.trace_id == served.trace_id
    assert attrs(attempt)["sharekey.result"] == "ok" and attrs(attempt)["sharekey.http_status"] == 200
    assert attrs(attempt)["sharekey.key_id"] == str(key.id)
    other = next(s for s in server_spans if s is not served)
    assert attrs(other)["http.response.status_code"] == 404

    exported = b"".join(receiver.raw)
    assert PROMPT.encode() not in exported
    assert token.encode() not in exported and DONOR_KEY.encode() not in exported


async def test_a_trace_started_here_follows_the_sample_ratio(
    config: config_mod.Config, pool: asyncpg.Pool, aiohttp_client: Any, aiohttp_server: Any, fake_upstream: FakeUpstream
) -> None:
    receiver = Receiver()
    collector = await aiohttp_server(receiver.app)
    cfg = gateway_config(config).replace(
        "tracing", otlp_endpoint=f"http://127.0.0.1:{collector.port}", sample_ratio=0.0
    )
    _, token = await user_with_token(pool, "caller")
    client = await aiohttp_client(create_app(cfg))
    for _ in range(5):
        assert (await client.get("/v1/models", headers={"Authorization": f"Bearer {token}"})).status == 200
    # A caller that sampled its trace is followed whatever the ratio (ParentBased).
    sampled = {"Authorization": f"Bearer {token}", "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"}
    assert (await client.get("/v1/models", headers=sampled)).status == 200
    await client.close()
    assert [s.trace_id.hex() for s in receiver.spans] == [TRACE_ID]


def test_a_bad_endpoint_or_ratio_is_a_configuration_error() -> None:
    with pytest.raises(config_mod.ConfigError, match="tracing.otlp_endpoint"):
        config_mod.load(None, env={"SHAREKEY_TRACING_OTLP_ENDPOINT": "collector:4318"})
    with pytest.raises(config_mod.ConfigError, match="tracing.sample_ratio"):
        config_mod.load(None, env={"SHAREKEY_TRACING_SAMPLE_RATIO": "1.5"})


def test_unset_no_tracer_is_made_and_no_exporter_imported() -> None:
    """(redis-py itself imports OpenTelemetry's API when it is installed; the SDK's tracing and the
    exporter are ours to import, and only when tracing is on.)"""
    code = (
        "import sys, json; from gateway import config, tracing; from gateway.app import create_app; "
        "app = create_app(config.load(None, env={'KEY_ENCRYPTION_SECRET': 'x' * 32})); "
        "ours = [m for m in sys.modules if m.startswith(('opentelemetry.sdk.trace', 'opentelemetry.exporter'))]; "
        "print(json.dumps([sorted(ours), tracing.enabled(), [getattr(m, '__name__', '') for m in app.middlewares]]))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    ours, enabled, middlewares = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours == [] and enabled is False
    assert "middleware" not in middlewares and "request_context" in middlewares  # tracing's is not installed


def test_an_endpoint_without_the_sdk_installed_is_a_configuration_error_naming_the_key() -> None:
    code = (
        "import sys; sys.modules['opentelemetry.sdk'] = None  # as if not installed\n"
        "from gateway import config\n"
        "try:\n"
        "    config.load(None, env={'SHAREKEY_TRACING_OTLP_ENDPOINT': 'http://127.0.0.1:4318'})\n"
        "except config.ConfigError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "tracing.otlp_endpoint" in done.stdout and "sharekey[tracing]" in done.stdout
