"""A donor's rules for their key (DESIGN.md "Donors' rules for their keys"), as the relay reads them.

Caps (`rpm_limit`, `tpm_limit`, `max_concurrent`, `model_daily_limits`) are enforced by the
balancer inside the pick's one Redis call; the audience (`min_trust_level`, `allowed_users`) and
`allowed_features` decide which keys are candidates for a caller at all, so they shape the pools
the key index hands the balancer. `upstream_kind` changes what a 401/403 does to the key.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def folded(username: str) -> str:
    """A username as the users table compares it: NFKC, case folded."""
    return unicodedata.normalize("NFKC", username).casefold()


@dataclass(frozen=True, slots=True)
class KeyRules:
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_concurrent: int | None = None
    model_daily_limits: Mapping[str, int] = field(default_factory=dict)  # by the name the key serves
    min_trust_level: int = 0
    allowed_users: frozenset[str] = frozenset()  # folded usernames; empty: everyone
    allowed_features: frozenset[str] = frozenset()
    relay: bool = False  # upstream_kind = relay
    auth_cooldowns: int = 0  # a relay key's auth failures through cooldowns in a row

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> KeyRules:
        limits = row["model_daily_limits"]
        if isinstance(limits, str):
            limits = json.loads(limits)
        rules = cls(
            rpm_limit=row["rpm_limit"],
            tpm_limit=row["tpm_limit"],
            max_concurrent=row["max_concurrent"],
            model_daily_limits={str(m): int(n) for m, n in (limits or {}).items()},
            min_trust_level=row["min_trust_level"],
            allowed_users=frozenset(folded(u) for u in row["allowed_users"] or ()),
            allowed_features=frozenset(row["allowed_features"] or ()),
            relay=row["upstream_kind"] == "relay",
            auth_cooldowns=row["auth_cooldowns"],
        )
        return NO_RULES if rules == NO_RULES else rules

    @property
    def capped(self) -> bool:
        """Whether the balancer has a per-minute or concurrency cap to keep for this key."""
        return bool(self.rpm_limit or self.tpm_limit or self.max_concurrent)

    @property
    def open_to_all(self) -> bool:
        return self.min_trust_level <= 0 and not self.allowed_users

    def admits(self, trust_level: int, username: str, features: frozenset[str] = frozenset()) -> bool:
        """May this key serve a caller, and the paid features its request uses?"""
        audience = self.open_to_all or self.refuses(trust_level, username) is None
        return audience and features <= self.allowed_features

    def caps_for(self, model: str, models: tuple[str, ...], aliases: Mapping[str, tuple[str, ...]]) -> str:
        """The caps as the balancer's pool of `model` files them after the daily limit (see
        `picks.Candidate.caps`): with the daily limit of the model the key serves it under
        (`model` itself, or the alias's target); "" for a key without caps."""
        if not self.capped and not self.model_daily_limits:
            return ""
        served = model if model in models else next((t for t in aliases.get(model, ()) if t in models), model)
        per_model = self.model_daily_limits.get(served, 0)
        return f"|{self.rpm_limit or 0}|{self.max_concurrent or 0}|{self.tpm_limit or 0}|{per_model}|{served}"

    def refuses(self, trust_level: int, username: str) -> str | None:
        """Why this key may not serve a caller (None: it may). `trust_level` -1: no trust claim."""
        if self.min_trust_level > 0 and trust_level < self.min_trust_level:
            return "trust_level"
        if self.allowed_users and folded(username) not in self.allowed_users:
            return "not_on_list"
        return None


NO_RULES = KeyRules()


class Ruled:
    """A model some of whose keys have an audience: the key index keeps its pools per audience."""

    __slots__ = ("lists",)

    def __init__(self, lists: bool) -> None:
        self.lists = lists  # some key names its users: the audience includes the username
