"""The options of `sharekey tokens create` as the `POST /api/tokens` fields they fill.

Each option's text becomes the JSON value the API takes and is checked by the API's own rules
(`store.tokenfields`), so the command line stores nothing the API would refuse; a refusal names
the option and ends the command with exit code 2 (`keyoptions.options_named`).
"""

from __future__ import annotations

import argparse
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from gateway.ops import keyoptions
from gateway.store import tokenfields

# The options by the field of `/api/tokens` they fill.
TOKEN_OPTIONS = {
    "label": "--label",
    "models": "--models",
    "expires_at": "--expires",
    "daily_requests": "--daily-requests",
    "requests_per_minute": "--rpm",
    "daily_budget_usd": "--daily-budget-usd",
    "allowed_ips": "--allow-ip",
}
RELATIVE = re.compile(r"(\d{1,6})([dhm])")  # 30d, 12h, 90m: from now
ALLOW_IP_HELP = "an address or CIDR it may be used from (repeatable); default any"
UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--label", default="")
    p.add_argument("--models", metavar="M1,M2", help="the models (or aliases) the token may ask for; default all")
    p.add_argument("--expires", metavar="ISO|30d|12h", help="when the token stops working; default never")
    p.add_argument("--daily-requests", metavar="N", help="calls a day, at most")
    p.add_argument("--rpm", metavar="N", help="calls in any 60 seconds, at most")
    p.add_argument("--daily-budget-usd", metavar="USD", help="estimated cost a day, at most")
    p.add_argument("--allow-ip", metavar="CIDR", action="append", default=[], help=ALLOW_IP_HELP)


def expiry(text: str) -> str:
    """`30d` / `12h` / `90m` from now, as ISO 8601; anything else goes on as given, for the API's rule."""
    relative = RELATIVE.fullmatch(text.strip())
    if relative is None:
        return text
    amount, unit = relative.groups()
    return (datetime.now(UTC) + timedelta(**{UNITS[unit]: int(amount)})).isoformat()


def token_fields(args: argparse.Namespace) -> dict[str, Any]:
    """The options of `tokens create`, checked and cleaned as `POST /api/tokens` checks its body."""
    body: dict[str, Any] = {"label": args.label, "allowed_ips": args.allow_ip}
    if args.models is not None:
        body["models"] = keyoptions.comma_list(args.models)
    if args.expires is not None:
        body["expires_at"] = expiry(args.expires)
    if args.daily_requests is not None:
        body["daily_requests"] = keyoptions.whole(args.daily_requests)
    if args.rpm is not None:
        body["requests_per_minute"] = keyoptions.whole(args.rpm)
    if args.daily_budget_usd is not None:
        body["daily_budget_usd"] = args.daily_budget_usd.strip()
    with keyoptions.options_named(TOKEN_OPTIONS):
        return tokenfields.validate(body)
