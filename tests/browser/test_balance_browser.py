"""A token with limits made on /tokens in a real headless Chromium, then its balance read
cross-origin, the way NextChat or neko-api-key-tool read it: a page served from another origin
(another loopback port) calls the balance endpoints with fetch() and shows what they say."""

from __future__ import annotations

import re
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from gateway.relay.balancer import BALANCER
from tests.browser import test_browser
from tests.browser.test_browser import Page, expect, shot, sign_in
from tests.support import fake_linuxdo
from tests.support.fake_linuxdo import Site
from tests.support.tokenusage import call, flush

pytestmark = test_browser.pytestmark
provider, site = fake_linuxdo.provider, fake_linuxdo.site  # fixtures
browser, page = test_browser.browser, test_browser.page  # fixtures

# The other origin's page: the gateway and the token in the fragment, as a chat app keeps them.
TOOL_PAGE = """<!doctype html><meta charset="utf-8"><title>balance</title>
<p>limit <span id="limit">…</span> used <span id="used">…</span> available <span id="available">…</span>
<span id="error"></span>
<script>
(async () => {
  const [gateway, token] = decodeURIComponent(location.hash.slice(1)).split(" ");
  const headers = { Authorization: "Bearer " + token };
  try {
    const [subs, usage, newapi] = await Promise.all([
      fetch(gateway + "/v1/dashboard/billing/subscription", { headers }).then((r) => r.json()),
      fetch(gateway + "/dashboard/billing/usage?start_date=" + START + "&end_date=" + END, { headers })
        .then((r) => r.json()),
      fetch(gateway + "/api/usage/token", { headers }).then((r) => r.json()),
    ]);
    document.getElementById("limit").textContent = subs.hard_limit_usd.toFixed(2);
    document.getElementById("used").textContent = (Math.round(usage.total_usage) / 100).toFixed(2);
    document.getElementById("available").textContent = String(newapi.data.total_available);
  } catch (e) {
    document.getElementById("error").textContent = String(e);
  }
})();
</script>"""


async def test_a_page_on_another_origin_reads_the_balance(site: Site, page: Page, aiohttp_server: Any) -> None:
    await sign_in(page, site, "/tokens")
    form = page.locator("#create-token")
    await form.get_by_label("Label").fill("chat app")
    await form.locator("summary", has_text="Limits").click()
    await form.get_by_label("Models").fill("gpt-4o-mini, fast")
    await form.get_by_label("Daily budget (USD)").fill("2.50")
    await form.get_by_label("Requests a day").fill("0")
    await form.get_by_role("button", name="Create token").click()
    await expect(form.locator('[data-error-for="daily_requests"]')).to_be_visible()  # the API's refusal, by field
    await form.get_by_label("Requests a day").fill("300")
    await form.get_by_role("button", name="Create token").click()
    await expect(page.locator("#new-token-value")).to_have_text(re.compile(r"^shk_\w{38}$"))
    token = await page.locator("#new-token-value").inner_text()
    row = page.locator("#token-list tbody tr", has_text="chat app")
    await expect(row).to_contain_text("$2.50 a day")
    await expect(row).to_contain_text("models: gpt-4o-mini, fast")
    await expect(row).to_contain_text("300 calls a day")

    async with site.pool.acquire() as conn:
        token_id, user_id = await conn.fetchrow("SELECT id::text, user_id::text FROM api_tokens")
    today = date.fromisoformat(site.app[BALANCER].today())
    await flush(site.pool, [call(token_id, user_id, today, 300_000, 100_000) for _ in range(3)])  # $0.50 each

    start, end = today - timedelta(days=2), today + timedelta(days=1)

    async def tool_page(request: web.Request) -> web.Response:
        text = TOOL_PAGE.replace("START", f'"{start}"').replace("END", f'"{end}"')
        return web.Response(text=text, content_type="text/html")

    tool = web.Application()
    tool.router.add_get("/", tool_page)
    server = await aiohttp_server(tool, host="127.0.0.1")
    other_origin = str(server.make_url("/"))
    assert not other_origin.startswith(site.origin)

    await page.goto(f"{other_origin}#{site.origin} {token}")
    await expect(page.locator("#limit")).to_have_text("2.50")
    await expect(page.locator("#used")).to_have_text("1.50")
    await expect(page.locator("#available")).to_have_text(str(int(2.5 * 500_000) - int(1.5 * 500_000)))
    await expect(page.locator("#error")).to_have_text("")
    await shot(page, "balance-cross-origin.png")
