"""The three wire formats sharekey speaks, to clients and to keys (`ApiFormat`), and the one place
that decides which one a client speaks: by the path it called (`spoken_on`).

A key's format is how its upstream is called (`shared_keys.api_format`); a client's is the route
family it called: Anthropic's Messages API under `/v1/messages`, Gemini's under `/v1beta` and as
`/v1/models/{model}:{method}` (Google serves both versions; the GenAI SDK calls v1), OpenAI's
everywhere else.
"""

from __future__ import annotations

from enum import StrEnum


class ApiFormat(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    GEMINI = "gemini"


API_FORMATS = tuple(ApiFormat)


def spoken_on(path: str) -> ApiFormat:
    """The format of the client that called `path`."""
    if path.startswith("/v1/messages"):
        return ApiFormat.ANTHROPIC
    if path.startswith("/v1beta") or (path.startswith("/v1/models/") and ":" in path):
        return ApiFormat.GEMINI
    return ApiFormat.OPENAI
