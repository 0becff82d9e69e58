"""Days in the configured time zone: the day a call counts on, and its bounds in epoch ms.

Days never overlap, so every process that asks about the same instant names the same day; the
balancer checks the caller's guess against Redis' clock (see `balancer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo


@dataclass(frozen=True, slots=True)
class Day:
    name: str
    start_ms: int
    end_ms: int  # exclusive


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def day_start_ms(day: date, tz: ZoneInfo) -> int:
    """The first instant whose local date is `day`. Local midnight is usually it; where DST skips
    midnight, of its two readings (PEP 495 folds) the one that really falls on `day` is."""
    stamps = sorted({datetime.combine(day, dtime(), tzinfo=tz).replace(fold=fold).timestamp() for fold in (0, 1)})
    # A date that never happened (Samoa skipped 2011-12-30) has no first instant: take the later reading.
    start = next((s for s in stamps if datetime.fromtimestamp(s, tz).date() == day), stamps[-1])
    return int(start * 1000)


def day_bounds(now_ms: int, tz: ZoneInfo) -> Day:
    """The local day holding `now_ms`, with its bounds; days never overlap, so every process
    that asks about the same instant names the same day."""
    local = datetime.fromtimestamp(now_ms // 1000, tz).date()
    return Day(local.isoformat(), day_start_ms(local, tz), day_start_ms(local + timedelta(days=1), tz))
