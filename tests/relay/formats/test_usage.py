"""Token usage read from either format (formats/usage.py) and the local input-token estimate."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from gateway.relay.formats.shared import estimate_input_tokens
from gateway.relay.formats.usage import Usage, anthropic_usage, openai_usage
from tests.support.wire import CLAUDE_CODE_REQUEST, CLAUDE_CODE_TOOLS

# --- Usage helpers and the local estimate --------------------------------------------------------

USAGE_CASES = [
    ("openai plain", openai_usage, {"prompt_tokens": 10, "completion_tokens": 2}, Usage(10, 2, 0, 0)),
    (
        "openai cached",
        openai_usage,
        {"prompt_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": {"cached_tokens": 4}},
        Usage(6, 2, 4, 0),
    ),
    (
        "deepseek cache hits",
        openai_usage,
        {"prompt_tokens": 10, "prompt_cache_hit_tokens": 7},
        Usage(3, 0, 7, 0),
    ),
    ("openai details None", openai_usage, {"prompt_tokens": None, "prompt_tokens_details": None}, Usage()),
    ("openai none", openai_usage, None, None),
    (
        "anthropic full",
        anthropic_usage,
        {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3, "cache_creation_input_tokens": 4},
        Usage(1, 2, 3, 4),
    ),
    ("anthropic nulls", anthropic_usage, {"input_tokens": None, "cache_read_input_tokens": None}, Usage()),
    ("anthropic none", anthropic_usage, "x", None),
]


@pytest.mark.parametrize("fn, usage, expected", [c[1:] for c in USAGE_CASES], ids=[c[0] for c in USAGE_CASES])
def test_usage(fn: Any, usage: Any, expected: Usage | None) -> None:
    assert fn(usage) == expected


def test_token_usage_totals() -> None:
    usage = Usage(1, 2, 3, 4)
    assert (usage.prompt_tokens, usage.total_tokens) == (8, 10)


def test_the_log_stores_no_cache_tokens_as_null_in_every_format() -> None:
    assert Usage(1, 2).stored() == (1, 2, None, None)
    assert Usage(1, 2, 3, 4).stored() == (8, 2, 3, 4)
    assert (
        openai_usage({"prompt_tokens": 5, "completion_tokens": 1}).stored()
        == anthropic_usage(  # type: ignore[union-attr]
            {"input_tokens": 5, "output_tokens": 1}
        ).stored()
    )  # type: ignore[union-attr]


def test_estimate_input_tokens() -> None:
    assert estimate_input_tokens({}) == 1
    assert estimate_input_tokens({"messages": [{"role": "user", "content": "a" * 400}]}) == 100 + 4
    assert estimate_input_tokens({"system": "b" * 40, "messages": [{"role": "user", "content": "a" * 40}]}) == 20 + 4
    # CJK counts by UTF-8 bytes: 3 per character
    assert estimate_input_tokens({"messages": [{"role": "user", "content": "中" * 40}]}) == 30 + 4
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x" * 100_000}}
    assert estimate_input_tokens({"messages": [{"role": "user", "content": [image]}]}) == 1600 + 4
    full = estimate_input_tokens(CLAUDE_CODE_REQUEST)
    tools_only = len(orjson.dumps(CLAUDE_CODE_TOOLS)) // 4
    assert tools_only < full < tools_only + 200
    # odd input never raises
    assert (
        estimate_input_tokens(
            {"system": [None, {"type": "text"}], "messages": [None, {"content": [1, None]}], "tools": "x"}
        )
        >= 1
    )
