"""Model prices, and the cost of a usage record: USD per million tokens, cached in process.

    Prices.get(model) -> Price | None      admins' set > `[prices."<model>"]` > the price library
    cost(price, prompt, completion, cache_read, cache_write) -> float | None

The default source is `genai-prices` (pydantic's, MIT): a maintained, dated price table for every
major provider bundled in the wheel, so a lookup works offline and never calls out (we never
enable its auto-update). It matches names the way providers spell them (`gpt-4o-2024-08-06`,
`claude-sonnet-4-5`, with or without a `provider/` prefix) and knows cache read and write prices.
Prices are matched on the name the upstream was asked for (after per-key names and aliases).

Admins' prices live in PostgreSQL (`model_prices`, `PUT /api/prices`); a `prices` event reloads
them in every process within a second. Lookups are memoised per model until the next reload.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import structlog
from aiohttp import web

from gateway.errors import POSTGRES_DOWN
from gateway.store import modelnames

log = structlog.get_logger(__name__)

RELOAD_SECONDS = 60.0  # also without events: a lost event is repaired within a minute
PER = 1_000_000
FIELDS = ("input", "output", "cache_read", "cache_write")


# USD per call of the features billed per call, when a model's price does not say (list prices:
# Anthropic's web search $10 per 1,000; OpenAI's file search $2.50 per 1,000, a code interpreter
# container $0.03, a medium image about $0.04; a code execution call is counted as $0.05, an
# hour of its container). `[prices."<model>"] web_search_call = …` sets a model's own.
CALL_PRICES = {
    "web_search": 0.01,
    "web_fetch": 0.0,  # tokens only
    "code_execution": 0.05,
    "file_search": 0.0025,
    "code_interpreter": 0.03,
    "image_generation": 0.04,
    "computer_use": 0.0,  # tokens only
}


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. A cache price of None is charged at the input price. `calls`: USD
    per call of a feature, where the model's price sets its own (else CALL_PRICES)."""

    input: float
    output: float
    cache_read: float | None = None
    cache_write: float | None = None
    source: str = "library"  # library | config | admin
    calls: tuple[tuple[str, float], ...] = ()

    @classmethod
    def configured(cls, table: Mapping[str, float | None]) -> Price:
        """A `[prices."<model>"]` table as the configuration checked it."""
        calls = tuple(
            (k.removesuffix("_call"), float(v)) for k, v in table.items() if k.endswith("_call") and v is not None
        )
        tokens = {k: v for k, v in table.items() if k in FIELDS}
        return cls(**tokens, source="config", calls=calls)  # type: ignore[arg-type]

    def per_call(self, feature: str) -> float:
        return next((usd for name, usd in self.calls if name == feature), CALL_PRICES.get(feature, 0.0))

    def as_dict(self) -> dict[str, Any]:
        return {
            "input": self.input,
            "output": self.output,
            "cache_read": self.cache_read,
            "cache_write": self.cache_write,
            "source": self.source,
        }


def cost(
    price: Price | None,
    prompt: int | None,
    completion: int | None,
    cache_read: int | None = None,
    cache_write: int | None = None,
    calls: Mapping[str, int] | None = None,
) -> float | None:
    """USD for one call. `prompt` includes the cache tokens (read from and written to the cache);
    the rest of it is charged at the input price; `calls` (server tool calls by feature) at their
    price per call. None without a price or without tokens."""
    if price is None or (prompt is None and completion is None):
        return None
    per_call = sum(n * price.per_call(feature) for feature, n in calls.items()) if calls else 0.0
    read, write = cache_read or 0, cache_write or 0
    fresh = max(0, (prompt or 0) - read - write)
    total = (
        fresh * price.input
        + read * (price.input if price.cache_read is None else price.cache_read)
        + write * (price.input if price.cache_write is None else price.cache_write)
        + (completion or 0) * price.output
    )
    return round(total / PER + per_call, 10)


def library_price(model: str, when: datetime | None = None) -> Price | None:
    """The price library's price for `model` (its base tier), or None when it does not know it."""
    from genai_prices import data_snapshot, types  # ~0.2 s to import: only when first asked

    snapshot = data_snapshot.get_snapshot()
    try:
        _, info = snapshot.find_provider_model(model, None, None, None)
    except LookupError:
        if "/" not in model:
            return None
        try:  # "openai/gpt-4o" as some upstreams (OpenRouter and the like) name models
            _, info = snapshot.find_provider_model(model.split("/", 1)[1], None, None, None)
        except LookupError:
            return None
    prices = info.get_prices(when or datetime.now(UTC))

    def per_million(name: str) -> float | None:
        value = getattr(prices, name, None)
        if isinstance(value, types.TieredPrices):
            value = value.base
        return None if value is None else float(value)

    input_, output = per_million("input_mtok"), per_million("output_mtok")
    if input_ is None and output is None:
        return None
    return Price(input_ or 0.0, output or 0.0, per_million("cache_read_mtok"), per_million("cache_write_mtok"))


def checked(model: str, value: Any, source: str) -> Price:
    """A price from the config or the API: {"input": …, "output": …, "cache_read"?: …, "cache_write"?: …}."""
    if not isinstance(value, Mapping) or set(value) - set(FIELDS) or not {"input", "output"} <= set(value):
        raise ValueError(f"the price of {model!r} needs input and output (and may have cache_read, cache_write)")
    out: dict[str, float | None] = {}
    for name in FIELDS:
        v = value.get(name)
        if v is None and name in ("cache_read", "cache_write"):
            out[name] = None
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v < 1e6:
            raise ValueError(f"{name} of {model!r} must be a number of USD per million tokens, 0 or more")
        out[name] = float(v)
    return Price(source=source, **out)  # type: ignore[arg-type]


SELECT_PRICES = "SELECT model, input, output, cache_read, cache_write FROM model_prices"


async def load(pool: asyncpg.Pool) -> dict[str, Price]:
    async with pool.acquire(timeout=5) as conn:
        return await admin_prices(conn)


async def admin_prices(conn: asyncpg.Connection) -> dict[str, Price]:
    rows = await conn.fetch(SELECT_PRICES, timeout=10)
    return {
        r["model"]: Price(
            float(r["input"]),
            float(r["output"]),
            None if r["cache_read"] is None else float(r["cache_read"]),
            None if r["cache_write"] is None else float(r["cache_write"]),
            "admin",
        )
        for r in rows
    }


class Prices:
    """The prices in force in this process."""

    def __init__(self, pool: asyncpg.Pool | None, configured: Mapping[str, Price] | None = None) -> None:
        self._pool = pool
        self.configured = dict(configured or {})
        self.admin: dict[str, Price] = {}
        self._memo: dict[str, Price | None] = {}
        self._dirty = asyncio.Event()
        self.loaded = asyncio.Event()

    def get(self, model: str) -> Price | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        price = self.admin.get(model) or self.configured.get(model) or library_price(model)
        self._memo[model] = price
        return price

    def invalidate(self, _: str = "") -> None:
        self._dirty.set()

    async def reload(self) -> None:
        if self._pool is not None:
            self.admin = await load(self._pool)
        self._memo = {}
        self.loaded.set()

    async def run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._dirty.wait(), RELOAD_SECONDS)
            except TimeoutError:
                pass
            self._dirty.clear()
            try:
                await self.reload()
            except POSTGRES_DOWN as e:
                log.warning("prices_reload_failed", error=str(e))


def unpriced(prices: Prices, models: Sequence[str]) -> str | None:
    """The first of a key's models (`available_models` entries) whose upstream name has no price:
    a budget in money cannot be kept on a key that serves it."""
    for name in modelnames.upstream_names(list(models)) or ():
        if prices.get(name) is None:
            return name
    return None


PRICES: web.AppKey[Prices] = web.AppKey("prices", Prices)
