"""Callers this process has seen refused for their per-minute limit, until that minute is over:
their next request is refused from its head alone, before its body is read (a 32 MiB body then
costs nothing to refuse, and asks nothing of Redis).

The balancer's pick stays the judge; this only remembers its last word, per process, for the
seconds it said to wait. A caller over the limit therefore costs each process one body read per
minute at most. The table is bounded: past `MAX` callers, the expired ones go, then the oldest.
"""

from __future__ import annotations

import math
import time

from aiohttp import web

MAX = 10_000


class OverLimit:
    def __init__(self) -> None:
        self._until: dict[str, float] = {}

    def note(self, user_id: str, retry_after: float) -> None:
        if len(self._until) >= MAX:
            now = time.monotonic()
            self._until = {u: t for u, t in self._until.items() if t > now}
            while len(self._until) >= MAX:
                del self._until[next(iter(self._until))]
        self._until.pop(user_id, None)
        self._until[user_id] = time.monotonic() + max(1.0, retry_after)

    def retry_after(self, user_id: str) -> int | None:
        """Seconds this caller must still wait, or None (the common case: one dict look-up)."""
        until = self._until.get(user_id)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._until[user_id]
            return None
        return math.ceil(left)


OVER_LIMIT: web.AppKey[OverLimit] = web.AppKey("over_limit", OverLimit)
