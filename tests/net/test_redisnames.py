"""Every Redis key name, letter for letter: a changed name strands the data stored under the old one."""

from __future__ import annotations

import pytest

from gateway.net import redisnames

EXPECTED = [
    (redisnames.counts("sk", "2026-03-01"), "sk:v5:{sk}:counts:2026-03-01"),
    (redisnames.conversation("sk", "ab12"), "sk:v5:{sk}:aff:ab12"),
    (redisnames.response("sk", "cd34"), "sk:v5:{sk}:resp:cd34"),
    (redisnames.cooldown("sk"), "sk:v5:{sk}:cooldown"),
    (redisnames.probation("sk"), "sk:v5:{sk}:probation"),
    (redisnames.fails("sk"), "sk:v5:{sk}:fails"),
    (redisnames.user_daily("sk", "2026-03-01"), "sk:v5:{sk}:udaily:2026-03-01"),
    (redisnames.user_rpm("sk", "2026-03-01T12:34"), "sk:v5:{sk}:urpm:2026-03-01T12:34"),
    (redisnames.user_streams("sk", "u-1"), "sk:v5:{sk}:ustreams:u-1"),
    (redisnames.token_daily("sk", "2026-03-01"), "sk:v5:{sk}:tdaily:2026-03-01"),
    (redisnames.token_rpm("sk", "2026-03-01T12:34"), "sk:v5:{sk}:trpm:2026-03-01T12:34"),
    (redisnames.token_spend("sk", "2026-03-01"), "sk:v5:{sk}:tspend:2026-03-01"),
    (redisnames.pool_meta("sk", "m0a1b"), "sk:v5:{sk}:pool:m0a1b"),
    (redisnames.pool_avail("sk", "m0a1b"), "sk:v5:{sk}:avail:m0a1b"),
    (redisnames.pool_resting("sk", "m0a1b"), "sk:v5:{sk}:resting:m0a1b"),
    (redisnames.revived("sk"), "sk:v5:{sk}:revived"),
    (redisnames.key_window("sk", "k1"), "sk:v5:{sk}:kwin:k1"),
    (redisnames.key_in_flight("sk", "k1"), "sk:v5:{sk}:kfly:k1"),
    (redisnames.key_tokens("sk", "k1"), "sk:v5:{sk}:ktok:k1"),
    (redisnames.key_tokens_sum("sk", "k1"), "sk:v5:{sk}:ktoksum:k1"),
    (redisnames.model_counts("sk", "2026-03-01"), "sk:v5:{sk}:mcounts:2026-03-01"),
    (redisnames.events("sk"), "sk:v1:{sk}:events"),
    (redisnames.usage_spool("sk"), "sk:v1:{sk}:usage:spool"),
    (redisnames.health_backoff("sk"), "sk:v1:{sk}:health"),
    (redisnames.job_lease("sk", "rollover"), "sk:v1:{sk}:lease:rollover"),
    (redisnames.keyrings("sk"), "sk:v1:{sk}:keyrings"),
    (redisnames.session("sk", "abc_DEF-1"), "sk:v1:{sk}:session:abc_DEF-1"),
    (redisnames.oauth_state("sk", "st4te"), "sk:v1:{sk}:oauth:st4te"),
    (redisnames.login_link("sk", "5ha"), "sk:v1:{sk}:loginlink:5ha"),
    (redisnames.key_tests("sk", "u-1", "2026-03-01T12:34"), "sk:v1:{sk}:keytests:u-1:2026-03-01T12:34"),
]


@pytest.mark.parametrize(("built", "expected"), EXPECTED, ids=[e.split(":")[3] for _, e in EXPECTED])
def test_every_key_name_is_what_it_has_always_been(built: str, expected: str) -> None:
    assert built == expected


def test_the_prefix_is_the_hash_tag_of_every_name() -> None:
    """One hash tag, so every key of a gateway is in one Redis Cluster slot."""
    for built, _ in EXPECTED:
        assert built.startswith(("sk:v1:{sk}:", "sk:v5:{sk}:"))
        assert built.count("{") == 1 and built.count("}") == 1
    assert redisnames.session("gw-2", "x") == "gw-2:v1:{gw-2}:session:x"
