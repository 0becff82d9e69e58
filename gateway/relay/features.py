"""What a request asks an upstream to run beyond tokens: refused unless the operator allows it,
and counted where it ran, so that it is priced and counts toward budgets (DESIGN "What reaches a
donor's key").

    check(body, client, allowed)          400 feature_not_allowed naming the field, before any pick
    betas(value, globs) -> (kept, dropped) the anthropic-beta values that may pass
    anthropic_calls(usage) / response_calls(obj) -> {"web_search": 3, …} or None

Features (`config.FEATURES`): Anthropic's server tools (`web_search_*`, `web_fetch_*`,
`code_execution_*`), `mcp_servers`, `container`; OpenAI's built-in tools (`web_search*`,
`file_search`, `code_interpreter`, `image_generation`, `mcp`, `computer_use*`) and chat's
`web_search_options`; Gemini's `googleSearch`, `googleSearchRetrieval` (web_search), `urlContext`
(web_fetch), `codeExecution` (code_execution) and its other built-in tools; `background: true`; a
`service_tier` other than the standard one. Tools the
caller runs itself (functions, custom tools, Anthropic's bash/text editor/computer/memory, OpenAI's
local shell and apply_patch) cost tokens only and always pass; a tool type we do not know is
refused, since we cannot tell what it costs.

The check reads the body as parsed (`handlers.read_json`): a body without any of `FIELDS` at its
top (most of them) costs one look at its keys, cheaper than a scan of the raw bytes, and a name
written with escapes (`"tool\\u0073"`, which the upstream reads as `tools`) is seen as what it is.
`FIELDS` are also decision fields (`handlers.refuse_duplicates`): given twice, the upstream might
keep the one we did not check.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from collections.abc import Sequence
from typing import Any

from gateway.apiformat import ApiFormat
from gateway.errors import BadRequest

FIELDS = frozenset({"tools", "mcp_servers", "container", "background", "service_tier", "web_search_options"})

OPENAI_FREE = frozenset({"function", "custom", "local_shell", "shell", "apply_patch"})
OPENAI_TOOLS = {
    "web_search": "web_search",
    "file_search": "file_search",
    "code_interpreter": "code_interpreter",
    "image_generation": "image_generation",
    "mcp": "mcp",
    "computer_use": "computer_use",
}
ANTHROPIC_FREE = ("bash_", "text_editor_", "computer_", "memory_")
ANTHROPIC_TOOLS = {"web_search_": "web_search", "web_fetch_": "web_fetch", "code_execution_": "code_execution"}
# A Gemini Tool is an object with one member per kind; these run at Google, billed beyond tokens.
GEMINI_FREE = frozenset({"functionDeclarations", "function_declarations"})
GEMINI_TOOLS = {
    "googleSearch": "web_search",
    "google_search": "web_search",
    "googleSearchRetrieval": "web_search",
    "google_search_retrieval": "web_search",
    "urlContext": "web_fetch",
    "url_context": "web_fetch",
    "codeExecution": "code_execution",
    "code_execution": "code_execution",
}
STANDARD_TIERS = {ApiFormat.OPENAI: (None, "auto", "default"), ApiFormat.ANTHROPIC: (None, "auto", "standard_only")}
# Anthropic's usage.server_tool_use counters, by feature.
ANTHROPIC_COUNTERS = {
    "web_search_requests": "web_search",
    "web_fetch_requests": "web_fetch",
    "code_execution_requests": "code_execution",
}
# A Responses API output item of one of these types is one call of the feature.
RESPONSE_ITEMS = {
    "web_search_call": "web_search",
    "file_search_call": "file_search",
    "code_interpreter_call": "code_interpreter",
    "image_generation_call": "image_generation",
    "computer_call": "computer_use",
}


def check(body: dict[str, Any], client: ApiFormat, allowed: Sequence[str]) -> frozenset[str]:
    """Refuse the first feature the body asks for that the operator has not allowed; else the
    features it uses (only keys whose donors allow them all may serve it)."""
    if FIELDS.isdisjoint(body):
        return frozenset()
    found = _features(body, client)
    for field, value, feature in found:
        if feature is None:
            raise BadRequest(
                f"'{field}' {value!r} is a tool type this gateway does not know; it cannot tell what it costs.",
                code="feature_not_allowed",
            )
        if feature not in allowed:
            raise BadRequest(
                f"'{field}' {value!r} is a paid feature ({feature}) that this gateway does not allow.",
                code="feature_not_allowed",
            )
    return frozenset(feature for _, _, feature in found if feature)


def _features(body: dict[str, Any], client: ApiFormat) -> list[tuple[str, Any, str | None]]:
    """(field, value, feature or None for an unknown tool type) for everything billed beyond tokens."""
    found: list[tuple[str, Any, str | None]] = []
    tools = body.get("tools")
    if client == ApiFormat.GEMINI:
        return _gemini_tools(tools)
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind is None or not isinstance(kind, str):
            continue  # a function in Anthropic's shape (no type); other odd shapes are the upstream's to refuse
        feature = _anthropic_tool(kind) if client == ApiFormat.ANTHROPIC else _openai_tool(kind)
        if feature != "":
            found.append((f"tools[{i}].type", kind, feature))
    if client == ApiFormat.ANTHROPIC:
        if body.get("mcp_servers"):
            found.append(("mcp_servers", "…", "mcp"))
        if body.get("container") is not None:
            found.append(("container", body["container"] if isinstance(body["container"], str) else "…", "container"))
    if body.get("web_search_options") is not None:
        found.append(("web_search_options", "…", "web_search"))
    if body.get("background") is True:
        found.append(("background", True, "background"))
    tier = body.get("service_tier")
    if tier not in STANDARD_TIERS[client]:
        found.append(("service_tier", tier, "service_tier"))
    return found


def _gemini_tools(tools: Any) -> list[tuple[str, Any, str | None]]:
    found: list[tuple[str, Any, str | None]] = []
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        for kind in tool if isinstance(tool, dict) else ():
            if kind not in GEMINI_FREE:
                found.append((f"tools[{i}]", kind, GEMINI_TOOLS.get(kind)))
    return found


def _openai_tool(kind: str) -> str | None:
    """ "" for a free tool, the feature for a billed one, None for an unknown type."""
    if kind in OPENAI_FREE:
        return ""
    for prefix, feature in OPENAI_TOOLS.items():
        if kind.startswith(prefix):  # web_search_preview, web_search_2025_08_26, computer_use_preview
            return feature
    return None


def _anthropic_tool(kind: str) -> str | None:
    if kind == "custom" or kind.startswith(ANTHROPIC_FREE):
        return ""
    for prefix, feature in ANTHROPIC_TOOLS.items():
        if kind.startswith(prefix):
            return feature
    return None


@functools.lru_cache(maxsize=8)
def _pattern(globs: tuple[str, ...]) -> re.Pattern[str]:
    return re.compile("|".join(fnmatch.translate(g) for g in globs) or "(?!)")


def betas(value: str, globs: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The comma-separated anthropic-beta values that match a glob of `[upstream] anthropic_betas`,
    and those that do not (dropped, and named in the request's log line)."""
    pattern = _pattern(globs)
    kept, dropped = [], []
    for name in (v.strip() for v in value.split(",")):
        if name:
            (kept if pattern.fullmatch(name) else dropped).append(name)
    return kept, dropped


def anthropic_calls(usage: Any) -> dict[str, int] | None:
    """Server tool calls from an Anthropic `usage` (`server_tool_use`), or None."""
    counters = usage.get("server_tool_use") if isinstance(usage, dict) else None
    if not isinstance(counters, dict):
        return None
    calls = {
        feature: n
        for name, feature in ANTHROPIC_COUNTERS.items()
        if isinstance(n := counters.get(name), int) and not isinstance(n, bool) and n > 0
    }
    return calls or None


def response_calls(obj: Any) -> dict[str, int] | None:
    """Built-in tool calls in a Responses API object (or the response a stream event carries)."""
    if isinstance(obj, dict) and isinstance(obj.get("response"), dict):
        obj = obj["response"]
    output = obj.get("output") if isinstance(obj, dict) else None
    if not isinstance(output, list):
        return None
    calls: dict[str, int] = {}
    for item in output:
        feature = RESPONSE_ITEMS.get(item.get("type")) if isinstance(item, dict) else None
        if feature is not None:
            calls[feature] = calls.get(feature, 0) + 1
    return calls or None
