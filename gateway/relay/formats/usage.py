"""Token usage, the one type every format reads into and writes from (`Usage`).

Counts are kept in Anthropic's terms: `input_tokens` excludes the cached part, so the whole prompt
is `prompt_tokens` = input + cache read + cache creation (OpenAI's `prompt_tokens`). Readers never
raise: a count that is missing, negative or not an integer is 0. What the usage log stores is
`Usage.stored()`: a cache count of 0 is NULL there, whichever format and whether streamed or not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(slots=True)
class Usage:
    input_tokens: int = 0  # without the cached part (Anthropic's meaning)
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_creation_tokens: int = 0
    tool_calls: dict[str, int] | None = None  # server tool calls by feature (relay/features.py)

    @property
    def prompt_tokens(self) -> int:
        return self.input_tokens + self.cache_read_tokens + self.cache_creation_tokens

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.output_tokens

    def stored(self) -> tuple[int, int, int | None, int | None]:
        """(prompt, completion, cache read, cache creation) as the usage log keeps them."""
        return (
            self.prompt_tokens,
            self.output_tokens,
            self.cache_read_tokens or None,
            self.cache_creation_tokens or None,
        )


def as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def openai_usage(usage: Any) -> Usage | None:
    """An OpenAI `usage` object (chat/completions, or the Responses API's `input_tokens` names),
    or None when there is none. `prompt_tokens` includes cached tokens
    (`prompt_tokens_details.cached_tokens`; DeepSeek: `prompt_cache_hit_tokens`), which are split
    off into `cache_read_tokens`."""
    if not isinstance(usage, dict):
        return None
    if "prompt_tokens" in usage or "input_tokens" not in usage:
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details")
    else:  # the Responses API
        prompt, completion = usage.get("input_tokens"), usage.get("output_tokens")
        details = usage.get("input_tokens_details")
    prompt = as_int(prompt)
    cached = as_int(details.get("cached_tokens")) if isinstance(details, dict) else 0
    cached = min(cached or as_int(usage.get("prompt_cache_hit_tokens")), prompt)
    return Usage(prompt - cached, as_int(completion), cached, 0)


def anthropic_usage(usage: Any) -> Usage | None:
    """An Anthropic `usage` object (a Message's, or a stream's message_start/message_delta), or None."""
    if not isinstance(usage, dict):
        return None
    return Usage(
        as_int(usage.get("input_tokens")),
        as_int(usage.get("output_tokens")),
        as_int(usage.get("cache_read_input_tokens")),
        as_int(usage.get("cache_creation_input_tokens")),
    )


def gemini_usage(meta: Any) -> Usage | None:
    """Gemini's `usageMetadata`, or None. `promptTokenCount` includes the cached part
    (`cachedContentTokenCount`) and excludes tool-use prompts (`toolUsePromptTokenCount`, added);
    thoughts (`thoughtsTokenCount`) are billed as output, beside `candidatesTokenCount`."""
    if not isinstance(meta, dict):
        return None
    prompt = as_int(meta.get("promptTokenCount")) + as_int(meta.get("toolUsePromptTokenCount"))
    cached = min(as_int(meta.get("cachedContentTokenCount")), prompt)
    output = as_int(meta.get("candidatesTokenCount")) + as_int(meta.get("thoughtsTokenCount"))
    return Usage(prompt - cached, output, cached, 0)


def gemini_usage_dict(usage: Usage | None) -> dict:
    """Gemini `usageMetadata` for an answer; the cached count only when there is one."""
    usage = usage or Usage()
    out = {
        "promptTokenCount": usage.prompt_tokens,
        "candidatesTokenCount": usage.output_tokens,
        "totalTokenCount": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        out["cachedContentTokenCount"] = usage.cache_read_tokens
    return out


def anthropic_usage_dict(usage: Usage | None) -> dict:
    """Anthropic `usage` for an answer; cache reads only when there are any."""
    if usage is None:
        return {"input_tokens": 0, "output_tokens": 0}
    out = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens}
    if usage.cache_read_tokens:
        out["cache_read_input_tokens"] = usage.cache_read_tokens
    return out


def openai_usage_dict(usage: Usage | None) -> dict:
    """OpenAI `usage`: prompt_tokens counts the cached and cache-written tokens too."""
    usage = usage or Usage()
    out: dict[str, Any] = {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
    }
    if usage.cache_read_tokens:
        out["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return out
