"""The /keys paste box in a real headless Chromium (issue #24): many keys, one a line, each shown
with its mask and outcome; the added ones appear in the list, and no key stays on the page."""

from __future__ import annotations

from tests.browser import test_browser
from tests.browser.test_browser import Page, expect, shot, sign_in
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream

pytestmark = test_browser.pytestmark
provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
browser, page = test_browser.browser, test_browser.page  # fixtures

GOOD = ["sk-pasted-good-key-aaaa1111", "sk-pasted-good-key-bbbb2222"]
BAD = "sk-pasted-bad-key-cccc3333"


async def test_paste_many_keys_and_see_each_outcome(site: Site, page: Page, fake_upstream: FakeUpstream) -> None:
    fake_upstream.valid_keys = set(GOOD)
    await sign_in(page, site, "/keys")
    form = page.locator("#import-many")
    await form.get_by_role("button", name="Test and import").click()  # nothing filled in
    await expect(form.locator('[data-error-for="base_url"]')).to_be_visible()
    await form.get_by_label("Base URL").fill(fake_upstream.base_url)
    await form.get_by_label("Models").fill("gpt-4o-mini")
    await form.get_by_label("Daily limit").fill("80")
    await form.get_by_label("Keys (one a line)").fill(f"# mine\n{GOOD[0]}\n\n{BAD}\n{GOOD[0]}\n{GOOD[1]}\n")
    await form.get_by_role("button", name="Test and import").click()

    await expect(form.locator("[data-import-results] li")).to_have_text(
        [
            "sk-…1111: added",
            "sk-…3333: failed (the key failed its live test: the upstream rejected the key)",
            "sk-…1111: already shared, not stored again",
            "sk-…2222: added",
        ]
    )
    await expect(form.locator("[data-result]")).to_have_text("2 added, 1 duplicate, 1 failed.")
    await expect(form.get_by_label("Keys (one a line)")).to_have_value("")
    names = page.locator("#key-list [data-key-id] h3")
    await expect(names).to_have_text(["imported-1", "imported-2"])
    assert not [k for k in (*GOOD, BAD) if k in await page.content()]
    await shot(page, "keys-import.png")
