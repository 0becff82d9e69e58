"""The donor's rules on /keys in a real headless Chromium (issue #22): set in the add form's folded
Rules fieldset, shown on the key against its caps, a bad one refused at its field, one cleared in
the edit form while the others stay."""

from __future__ import annotations

import json

from tests.browser import test_browser
from tests.browser.test_browser import Page, expect, fill_key, shot, sign_in
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream

pytestmark = test_browser.pytestmark
provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
browser, page = test_browser.browser, test_browser.page  # fixtures

STORED = "SELECT rpm_limit, max_concurrent, model_daily_limits, min_trust_level, allowed_users FROM shared_keys"


async def test_set_and_clear_a_keys_rules_in_the_browser(site: Site, page: Page, fake_upstream: FakeUpstream) -> None:
    await sign_in(page, site, "/keys")
    form = page.locator("#add-key")
    await fill_key(form, "free tier", fake_upstream.base_url, "gpt-4o-mini")
    rules = form.locator("[data-rules-fields]")
    await expect(rules.get_by_label("Calls per minute")).to_be_hidden()  # folded until asked for
    await rules.locator("summary").click()
    await rules.get_by_label("Calls per minute").fill("10")
    await rules.get_by_label("Calls at once").fill("2")
    await rules.get_by_label("Calls a day per model").fill("nope=5")
    await rules.get_by_label("Minimum trust level").select_option("1")
    await rules.get_by_label("Only these users").fill("alice, bob")

    await form.get_by_role("button", name="Add key").click()  # a model the key does not serve
    await expect(form.locator('[data-error-for="model_daily_limits"]')).to_contain_text("does not serve")
    await rules.get_by_label("Calls a day per model").fill("gpt-4o-mini=50")
    await form.get_by_role("button", name="Add key").click()

    item = page.locator("#key-list [data-key-id]", has_text="free tier")
    await expect(item.locator("[data-rules] .chip")).to_have_text(
        ["RPM 0/10 (last 60 s)", "concurrent 0/2", "gpt-4o-mini 0/50 today", "trust level ≥ 1", "only for: alice, bob"]
    )
    async with site.pool.acquire() as conn:
        row = dict(await conn.fetchrow(STORED))
    assert {**row, "model_daily_limits": json.loads(row["model_daily_limits"])} == {
        "rpm_limit": 10,
        "max_concurrent": 2,
        "model_daily_limits": {"gpt-4o-mini": 50},
        "min_trust_level": 1,
        "allowed_users": ["alice", "bob"],
    }
    await shot(page, "keys-rules.png")

    # Edit: clear the per-minute cap; the others stay.
    await item.locator("details.edit > summary").click()
    edit_rules = item.locator("[data-rules-fields]")
    await edit_rules.locator("summary").click()
    await expect(edit_rules.get_by_label("Calls per minute")).to_have_value("10")
    await edit_rules.get_by_label("Calls per minute").fill("")
    await item.get_by_role("button", name="Save").click()
    await expect(item.locator("[data-rules] .chip")).to_have_text(
        ["concurrent 0/2", "gpt-4o-mini 0/50 today", "trust level ≥ 1", "only for: alice, bob"]
    )
    async with site.pool.acquire() as conn:
        assert (await conn.fetchrow(STORED))["rpm_limit"] is None
        assert (await conn.fetchrow(STORED))["max_concurrent"] == 2
