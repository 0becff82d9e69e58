"""`sharekey report`: calls, tokens and cost per donor, key and model over a period.

For operators who apportion costs. The rows are the usage log's committed calls on pooled keys
(`key_usage_logs`, the rows the thanks board credits: a donor's, never a private key's), so the
report's totals equal the board's for the same period. Periods mean what they mean on the board
(`today`, `7d`, `30d`, `all`): whole days in `balancer.timezone`, today included. The query is
bounded below by `created_at` (the index `idx_usage_logs_created`), so a 30-day report reads
30 days of rows whatever the log's length.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from decimal import Decimal
from typing import Any

import asyncpg

from gateway.config import Config
from gateway.ops.command import CliError, command

PERIODS: dict[str, int | None] = {"today": 1, "7d": 7, "30d": 30, "all": None}  # as the board's
FORMATS = ("csv", "json")
COLUMNS = (
    "donor",
    "donor_id",
    "key",
    "key_id",
    "model",
    "calls",
    "prompt_tokens",
    "completion_tokens",
    "tokens",
    "cost_usd",
)

# $1: the first instant of the period (NULL: all time). A deleted key's rows keep their donor
# (shared_key_id NULL); a deleted donor's rows were never credited and are left out, as on the board.
SELECT_REPORT = """
SELECT d.username AS donor, d.id::text AS donor_id, k.name AS key, l.shared_key_id::text AS key_id,
       l.model_used AS model, count(*) AS calls,
       coalesce(sum(l.prompt_tokens), 0)::bigint AS prompt_tokens,
       coalesce(sum(l.completion_tokens), 0)::bigint AS completion_tokens,
       coalesce(sum(l.tokens_used), 0)::bigint AS tokens,
       coalesce(sum(l.cost_estimate), 0) AS cost_usd
FROM key_usage_logs l
JOIN users d ON d.id = l.donor_id
LEFT JOIN shared_keys k ON k.id = l.shared_key_id
WHERE l.committed AND ($1::timestamptz IS NULL OR l.created_at >= $1) AND k.is_private IS NOT TRUE
GROUP BY d.username, d.id, k.name, l.shared_key_id, l.model_used
ORDER BY cost_usd DESC, calls DESC, d.username, k.name, l.model_used
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], verbose: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "report", help="calls, tokens and cost (USD) per donor, key and model over a period", parents=[verbose]
    )
    p.add_argument("--period", default="30d", help="today, 7d, 30d (the default) or all, as on the board")
    p.add_argument("--format", default="csv", help="csv (the default; a header row, a TOTAL row last) or json")
    p.set_defaults(func=_checked)


def _checked(config: Config, args: argparse.Namespace) -> int:
    """Refuse a bad option before any store is opened."""
    if args.period not in PERIODS:
        raise CliError(f"--period: {args.period!r} is not one of {', '.join(PERIODS)}")
    if args.format not in FORMATS:
        raise CliError(f"--format: {args.format!r} is not one of {', '.join(FORMATS)}")
    return command(run_report)(config, args)


async def run_report(config: Config, args: argparse.Namespace, conn: asyncpg.Connection) -> None:
    report = await build(conn, config.balancer.timezone, args.period)
    print(to_json(report) if args.format == "json" else to_csv(report), end="")


async def build(conn: asyncpg.Connection, timezone: str, period: str) -> dict[str, Any]:
    days = PERIODS[period]
    start = None
    if days is not None:
        # The first instant of the period's first local day, as the database's clock has it.
        start = await conn.fetchval(
            "SELECT ((now() AT TIME ZONE $1)::date - $2::int)::timestamp AT TIME ZONE $1", timezone, days - 1
        )
    rows = [dict(r) for r in await conn.fetch(SELECT_REPORT, start, timeout=120)]
    totals: dict[str, Any] = {c: sum(r[c] for r in rows) for c in COLUMNS[5:]}
    totals["cost_usd"] = Decimal(totals["cost_usd"])
    return {"period": period, "from": start.isoformat() if start else None, "rows": rows, "totals": totals}


def _usd(value: Decimal | int) -> str:
    return f"{Decimal(value):.6f}"


def to_csv(report: dict[str, Any]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in report["rows"]:
        w.writerow([*(r[c] or "" for c in COLUMNS[:5]), *(r[c] for c in COLUMNS[5:9]), _usd(r["cost_usd"])])
    t = report["totals"]
    w.writerow(["TOTAL", "", "", "", "", *(t[c] for c in COLUMNS[5:9]), _usd(t["cost_usd"])])
    return out.getvalue()


def to_json(report: dict[str, Any]) -> str:
    def money(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "cost_usd": float(_usd(d["cost_usd"]))}

    body = {**report, "rows": [money(r) for r in report["rows"]], "totals": money(report["totals"])}
    return json.dumps(body, ensure_ascii=False, indent=1) + "\n"
