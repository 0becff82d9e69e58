"""The /keys page's format select in a real headless Chromium (issue #13): an Anthropic key donated,
tested in its format, shown as such, and switched to OpenAI-compatible in its edit form."""

from __future__ import annotations

import re

from tests.browser import test_browser
from tests.browser.test_browser import DONOR_KEY, Page, expect, shot, sign_in
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.fake_upstream import FakeUpstream

pytestmark = test_browser.pytestmark
provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
browser, page = test_browser.browser, test_browser.page  # fixtures


async def test_donate_an_anthropic_key_in_the_browser(site: Site, page: Page, fake_upstream: FakeUpstream) -> None:
    fake_upstream.models = ["gpt-4o-mini", "claude-sonnet-4-5"]
    await sign_in(page, site, "/keys")
    form = page.locator("#add-key")
    await expect(form.get_by_label("API format")).to_have_value("openai")
    await form.get_by_label("Name").fill("Claude")
    await form.get_by_label("API format").select_option(label="Anthropic")
    await form.get_by_label("Base URL").fill(fake_upstream.base_url)
    await form.get_by_label("API key").fill(DONOR_KEY)
    await form.get_by_label("Models").fill("claude-sonnet-4-5")

    await form.get_by_role("button", name="Test").click()
    await expect(form.locator("[data-result]")).to_contain_text(re.compile(r"Test passed · \d+ ms"))
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/messages"], "tested as Anthropic"
    await form.get_by_role("button", name="Add key").click()

    item = page.locator("#key-list [data-key-id]", has_text="Claude")
    await expect(item).to_have_count(1)
    await expect(item.locator("[data-api-format]")).to_have_text("Anthropic")
    await expect(form.get_by_label("API format")).to_have_value("openai")  # the form was reset
    async with site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT api_format FROM shared_keys WHERE name = 'Claude'") == "anthropic"
    await shot(page, "keys-anthropic.png")

    # Edit: another format is tested again, with the stored key.
    fake_upstream.requests.clear()
    await item.locator("details.edit > summary").click()
    await expect(item.locator('select[name="api_format"]')).to_have_value("anthropic")
    await item.locator('select[name="api_format"]').select_option("openai")
    await item.get_by_role("button", name="Save").click()
    await expect(item.locator("[data-api-format]")).to_have_text("OpenAI-compatible")
    assert [r.path for r in fake_upstream.requests] == ["/v1/models", "/v1/chat/completions"]
    async with site.pool.acquire() as conn:
        assert await conn.fetchval("SELECT api_format FROM shared_keys WHERE name = 'Claude'") == "openai"
