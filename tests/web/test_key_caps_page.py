"""The donor's rules on `/keys` (README "Donors' rules"): each key shows what it uses now of every
cap it has, as the balancer counts it, and whom it serves; the form carries the rule fields."""

from __future__ import annotations

import asyncio
import re

from gateway.relay.keyindex import KEY_INDEX
from gateway.store import users
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream
from tests.support.seed import add_key, user_with_token
from tests.web.test_key_rules_api import RULES  # rpm 10, tpm 100,000, 2 at once, 50 a day; alice and Bob, level 2

provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def caps_shown(html: str) -> list[str]:
    return [
        re.sub(r"\s+", " ", c)
        for c in re.findall(r'<span class="chip[^"]*" data-(?:cap|audience)="[^"]+">([^<]*)<', html)
    ]


async def signed_in(site: Site) -> users.User:
    assert (await site.sign_in("alice")).status == 303
    async with site.pool.acquire() as conn:
        alice = await users.get_by_username(conn, "alice")
    assert alice is not None
    return alice


async def test_a_capped_key_shows_its_usage_against_each_cap(site: Site, fake_upstream: FakeUpstream) -> None:
    alice = await signed_in(site)
    await add_key(site.pool, site.config, alice, fake_upstream.base_url, name="capped", rules=RULES)
    await add_key(site.pool, site.config, alice, fake_upstream.base_url, name="plain", models=["o3-mini"])
    _, bob_token = await user_with_token(site.pool, "bob", trust_level=2)
    await site.app[KEY_INDEX].reload()

    html = await (await site.client.get("/keys")).text()
    assert caps_shown(html) == [
        "RPM 0/10 (last 60 s)",
        "TPM 0/100,000 (last 60 s)",
        "concurrent 0/2",
        "gpt-4o-mini 0/50 today",
        "trust level ≥ 2",
        "only for: alice, Bob",
    ]
    assert html.count("data-rules>") == 1, "the key without rules shows none"

    for _ in range(3):
        resp = await site.client.post(
            "/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {bob_token}"}
        )
        assert resp.status == 200, await resp.text()
    expected = [
        "RPM 3/10 (last 60 s)",
        "TPM 63/100,000 (last 60 s)",  # the fake upstream reports 21 tokens a call
        "concurrent 0/2",  # every call ended
        "gpt-4o-mini 3/50 today",
        "trust level ≥ 2",
        "only for: alice, Bob",
    ]
    for _ in range(100):  # a call ends (its slot freed, its tokens counted) in the background
        shown = caps_shown(await (await site.client.get("/keys")).text())
        if shown == expected:
            break
        await asyncio.sleep(0.02)
    assert shown == expected


async def test_the_page_says_so_in_chinese_and_the_form_has_the_rule_fields(
    site: Site, fake_upstream: FakeUpstream
) -> None:
    alice = await signed_in(site)
    await add_key(site.pool, site.config, alice, fake_upstream.base_url, rules={"rpm_limit": 5, "max_concurrent": 1})
    html = await (await site.client.get("/keys", headers={"Accept-Language": "zh-CN"})).text()
    assert caps_shown(html) == ["RPM 0/5（最近 60 秒）", "并发 0/1"]
    assert html.count("<summary>规则（可选）</summary>") == 2  # the add form's and the key's edit form
    # The edit form is filled with the key's rules; the add form's are empty.
    assert re.findall(r'name="rpm_limit"[^>]*value="([^"]*)"', html) == ["", "5"]
    assert re.findall(r'name="max_concurrent"[^>]*value="([^"]*)"', html) == ["", "1"]
    assert '"rules": {"allowed_features": [], "allowed_users": [], "max_concurrent": 1' in html.replace("&#34;", '"')
