"""Model names: what callers ask for, and what a key's upstream calls it.

A key's `available_models` entry is either a name its upstream serves under the name callers use
(`gpt-4o-mini`), or `public=upstream` (`claude-sonnet-4-5=anthropic/claude-sonnet-4.5`): callers
ask for `public`, and that key's upstream gets `upstream` in the body's `model`. Gateway-wide
aliases (`[models] aliases`, `/api/models/aliases`) name more public names, each served by any key
that serves one of its targets.
"""

from __future__ import annotations

MAX_NAME = 200


def split(entry: str) -> tuple[str, str]:
    """(public, upstream) of an `available_models` entry; both the same without `=`."""
    public, sep, upstream = entry.partition("=")
    public = public.strip()
    return (public, upstream.strip()) if sep else (public, public)


def upstream_names(entries: list[str] | None) -> list[str] | None:
    """What a key's upstream calls its models: what the live test asks it about."""
    return None if entries is None else [split(entry)[1] for entry in entries]


def join(public: str, upstream: str) -> str:
    return public if public == upstream else f"{public}={upstream}"


def problem(entry: str) -> str | None:
    """Why an entry cannot be stored, in words fit for a 422; None when it can."""
    public, sep, upstream = entry.partition("=")
    if sep and (not public.strip() or not upstream.strip()):
        return "a public=upstream entry needs both names"
    if "=" in upstream:
        return "an entry has at most one '='"
    if len(public.strip()) > MAX_NAME or len(upstream.strip()) > MAX_NAME:
        return f"every model name must be at most {MAX_NAME} characters"
    return None
