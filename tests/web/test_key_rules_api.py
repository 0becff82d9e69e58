"""A donor's rules through `/api/shared-keys` (DESIGN.md "Donors' rules for their keys"): set on
create and edit, carried by the list, each bad value refused naming its field, nothing stored."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.relay.keyindex import KEY_INDEX
from tests.support.fake_upstream import FakeUpstream
from tests.web.test_keys_api import Api, api, api_config, make_api, people  # noqa: F401 (fixtures)

RULES = {
    "rpm_limit": 10,
    "tpm_limit": 100_000,
    "max_concurrent": 2,
    "model_daily_limits": {"gpt-4o-mini": 50},
    "min_trust_level": 2,
    "allowed_users": ["alice", "Bob"],
    "allowed_features": [],
    "upstream_kind": "relay",
}


async def test_rules_round_trip_and_reach_the_key_index(api: Api, fake_upstream: FakeUpstream) -> None:  # noqa: F811
    reply = await api.add(fake_upstream, **RULES)
    assert reply.status == 201, reply
    assert {k: reply.body[k] for k in RULES} == RULES
    [listed] = await api.keys()
    assert {k: listed[k] for k in RULES} == RULES
    edited = await api.call("PUT", "/api/shared-keys", {"id": listed["id"], "rpm_limit": None, "min_trust_level": 0})
    assert edited.status == 200, edited
    assert edited.body["rpm_limit"] is None and edited.body["min_trust_level"] == 0
    assert edited.body["max_concurrent"] == 2  # untouched rules stay
    index = api.app[KEY_INDEX]
    await index.reload()
    rules = index.get(listed["id"]).rules  # type: ignore[union-attr]
    assert (rules.rpm_limit, rules.max_concurrent, rules.min_trust_level) == (None, 2, 0)
    assert rules.model_daily_limits == {"gpt-4o-mini": 50} and rules.allowed_users == {"alice", "bob"}
    assert rules.relay


async def test_a_key_without_rules_lists_the_defaults(api: Api, fake_upstream: FakeUpstream) -> None:  # noqa: F811
    reply = await api.add(fake_upstream)
    body = reply.body
    assert (body["rpm_limit"], body["max_concurrent"], body["model_daily_limits"]) == (None, None, {})
    assert (body["min_trust_level"], body["allowed_users"], body["upstream_kind"]) == (0, [], "provider")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("rpm_limit", 0),
        ("rpm_limit", -3),
        ("tpm_limit", True),
        ("max_concurrent", "2"),
        ("model_daily_limits", {"not-served": 5}),
        ("model_daily_limits", {"gpt-4o-mini": 0}),
        ("model_daily_limits", [1]),
        ("min_trust_level", 5),
        ("allowed_users", "alice"),
        ("allowed_users", [""]),
        ("allowed_features", ["web_search"]),  # the operator allows none here
        ("upstream_kind", "proxy"),
        ("upstream_kind", None),
    ],
)
async def test_bad_rules_are_refused_naming_the_field(
    api: Api,  # noqa: F811
    fake_upstream: FakeUpstream,
    field: str,
    value: Any,
) -> None:
    reply = await api.add(fake_upstream, **{field: value})
    assert reply.status == 422, reply
    assert reply.body["error"]["field"] == field
    assert await api.rows() == 0
