"""Checks of an Anthropic Messages body, before any key is chosen: the fields Anthropic requires,
their types and the content block types it knows, each refusal naming its field as Anthropic does
(`messages.2.content.0.type: …`). What passes goes to an `anthropic` key unchanged, or to the
translation for an `openai` key.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import BadRequest

ROLES = frozenset({"user", "assistant", "system"})  # Claude Code sends system messages in between
BLOCK_TYPES = frozenset(
    {
        "text",
        "image",
        "document",
        "search_result",
        "tool_use",
        "tool_result",
        "thinking",
        "redacted_thinking",
        "server_tool_use",
        "web_search_tool_result",
        "web_fetch_tool_result",
        "code_execution_tool_result",
        "bash_code_execution_tool_result",
        "text_editor_code_execution_tool_result",
        "tool_search_tool_result",
        "mcp_tool_use",
        "mcp_tool_result",
        "container_upload",
    }
)


def check(body: dict[str, Any], *, counting: bool = False) -> None:
    """Anthropic's required fields and types; BadRequest naming the field otherwise."""
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model: Field required (a non-empty string).", code="invalid_request_error")
    if not counting:
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise BadRequest("max_tokens: Field required (a positive integer).", code="invalid_request_error")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise BadRequest("stream: Input should be a valid boolean.", code="invalid_request_error")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise BadRequest("messages: Field required (a non-empty list).", code="invalid_request_error")
    for i, message in enumerate(msgs):
        where = f"messages.{i}"
        if not isinstance(message, dict):
            raise BadRequest(f"{where}: Input should be an object.", code="invalid_request_error")
        if message.get("role") not in ROLES:
            raise BadRequest(f"{where}.role: Input should be 'user' or 'assistant'.", code="invalid_request_error")
        _content(message.get("content"), f"{where}.content")
    system = body.get("system")
    if system is not None and not isinstance(system, str):
        _content(system, "system")
    tools = body.get("tools")
    if tools is not None and (not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools)):
        raise BadRequest("tools: Input should be a list of objects.", code="invalid_request_error")


def _content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest(f"{where}: Input should be a string or a list of blocks.", code="invalid_request_error")
    for j, block in enumerate(content):
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            raise BadRequest(f"{where}.{j}: Input should be a block with a type.", code="invalid_request_error")
        if block["type"] not in BLOCK_TYPES:
            raise BadRequest(
                f"{where}.{j}.type: unknown block type {block['type'][:40]!r}.", code="invalid_request_error"
            )
