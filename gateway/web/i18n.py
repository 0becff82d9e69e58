"""The one message catalogue of the pages, in Chinese (zh-CN) and English, and language choice.

A page's language is the `lang` cookie (set by the switch in the header), else the best match in
`Accept-Language`, else Chinese. Templates call `t("key", name=…)`; the scripts get the `js.*`
messages as a JSON block. Placeholders use `str.format` names and are the same in both languages
(a test checks). Messages are plain text: Jinja escapes them, and what is filled into them.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from gateway.web.signin import i18n_signin, sessions

LANGUAGES = ("zh-CN", "en")
DEFAULT = "zh-CN"
COOKIE = "lang"

MESSAGES: dict[str, dict[str, str]] = {
    # layout
    "site.name": {"zh-CN": "sharekey 共享密钥", "en": "sharekey"},
    "site.tagline": {"zh-CN": "社区共享的 OpenAI 兼容网关", "en": "A community shared-key gateway"},
    "nav.keys": {"zh-CN": "我的密钥", "en": "My keys"},
    "nav.tokens": {"zh-CN": "网关令牌", "en": "Gateway tokens"},
    "nav.main": {"zh-CN": "主导航", "en": "Main navigation"},
    "auth.login": {"zh-CN": "使用 Linux.do 登录", "en": "Sign in with Linux.do"},
    "auth.logout": {"zh-CN": "退出登录", "en": "Sign out"},
    "auth.avatar": {"zh-CN": "{name} 的头像", "en": "{name}'s avatar"},
    "lang.switch": {"zh-CN": "语言", "en": "Language"},
    "footer.text": {
        "zh-CN": "密钥加密保存，只用于转发请求，永远不会显示给任何人。",
        "en": "Keys are stored encrypted, used only to forward requests, and never shown to anyone.",
    },
    # /keys
    "keys.title": {"zh-CN": "我的密钥", "en": "My keys"},
    "keys.intro": {
        "zh-CN": "捐赠一个 OpenAI 兼容或 Anthropic 的 API 密钥：网关会在每日额度内把社区成员的请求分配给它，"
        "并在感谢榜上记下你的贡献。",
        "en": "Donate an OpenAI-compatible or Anthropic API key: the gateway shares it among community "
        "members within its daily limit, and credits you on the thanks board.",
    },
    "keys.add": {"zh-CN": "添加密钥", "en": "Add a key"},
    "keys.list": {"zh-CN": "已捐赠的密钥（{count}）", "en": "Your keys ({count})"},
    "keys.list_page": {"zh-CN": "已捐赠的密钥（本页 {count} 个）", "en": "Your keys ({count} on this page)"},
    "keys.more": {"zh-CN": "更多密钥 →", "en": "More keys →"},
    "keys.first": {"zh-CN": "← 回到第一页", "en": "← Back to the first page"},
    "keys.empty": {
        "zh-CN": "你还没有捐赠密钥。填写上面的表单即可添加第一个。",
        "en": "You have not donated a key yet. Use the form above to add your first.",
    },
    "field.name": {"zh-CN": "名称", "en": "Name"},
    "field.name.hint": {"zh-CN": "只有你自己能看到，例如“我的 DeepSeek”。", "en": "For you to tell keys apart."},
    "field.base_url": {"zh-CN": "接口地址（Base URL）", "en": "Base URL"},
    "field.base_url.hint": {
        "zh-CN": "接口地址，通常以 /v1 结尾；Anthropic 填 https://api.anthropic.com 即可。",
        "en": "The endpoint, usually ending in /v1; for Anthropic, https://api.anthropic.com will do.",
    },
    "field.api_format": {"zh-CN": "接口格式", "en": "API format"},
    "field.api_format.hint": {
        "zh-CN": "上游说哪种接口：OpenAI 兼容（/chat/completions）或 Anthropic（/messages）。",
        "en": "What the upstream speaks: OpenAI-compatible (/chat/completions) or Anthropic (/messages).",
    },
    "format.openai": {"zh-CN": "OpenAI 兼容", "en": "OpenAI-compatible"},
    "format.anthropic": {"zh-CN": "Anthropic", "en": "Anthropic"},
    "field.api_key": {"zh-CN": "API 密钥", "en": "API key"},
    "field.api_key.hint": {
        "zh-CN": "加密保存，之后不会再显示。",
        "en": "Stored encrypted; it is never shown again.",
    },
    "field.api_key.keep": {
        "zh-CN": "留空则保留原密钥；修改接口地址时必须重新填写。",
        "en": "Leave empty to keep the stored key; required when the base URL changes.",
    },
    "field.available_models": {"zh-CN": "模型", "en": "Models"},
    "field.available_models.hint": {
        "zh-CN": "用逗号分隔，例如 gpt-4o-mini, gpt-4o",
        "en": "Comma-separated, e.g. gpt-4o-mini, gpt-4o",
    },
    "field.daily_limit": {"zh-CN": "每日调用上限", "en": "Daily limit"},
    "field.daily_limit.hint": {"zh-CN": "每天最多被调用的次数。", "en": "Calls per day at most."},
    "field.daily_budget_usd": {"zh-CN": "每日预算（美元）", "en": "Daily budget (USD)"},
    "field.daily_budget_usd.hint": {
        "zh-CN": "可选。按模型价格估算的当日花费达到后，密钥休息到明天。",
        "en": "Optional. Once the day's estimated spend reaches it, the key rests until tomorrow.",
    },
    "field.description": {"zh-CN": "说明", "en": "Description"},
    "field.description.hint": {
        "zh-CN": "可选，例如来源或注意事项。",
        "en": "Optional: where it comes from, any notes.",
    },
    "field.tags": {"zh-CN": "标签", "en": "Tags"},
    "field.tags.hint": {"zh-CN": "可选，用逗号分隔。", "en": "Optional, comma-separated."},
    "button.test": {"zh-CN": "测试", "en": "Test"},
    "button.add": {"zh-CN": "添加密钥", "en": "Add key"},
    "button.edit": {"zh-CN": "编辑", "en": "Edit"},
    "button.save": {"zh-CN": "保存", "en": "Save"},
    "button.pause": {"zh-CN": "暂停", "en": "Pause"},
    "button.resume": {"zh-CN": "恢复", "en": "Resume"},
    "button.delete": {"zh-CN": "删除", "en": "Delete"},
    "status.active": {"zh-CN": "使用中", "en": "Active"},
    "status.paused": {"zh-CN": "已暂停", "en": "Paused"},
    "status.cooling": {"zh-CN": "冷却中", "en": "Cooling down"},
    "status.disabled": {"zh-CN": "已停用", "en": "Disabled"},
    "key.masked": {"zh-CN": "密钥", "en": "Key"},
    "key.models": {"zh-CN": "模型", "en": "Models"},
    "key.today": {"zh-CN": "今日", "en": "Today"},
    "key.spend_today": {"zh-CN": "今日花费", "en": "Spent today"},
    "key.spend_chart": {
        "zh-CN": "近 {days} 天每日花费（美元），共 ${total}",
        "en": "Spend per day (USD), last {days} days: ${total} in total",
    },
    "key.total": {"zh-CN": "累计调用", "en": "Total calls"},
    "key.tokens": {"zh-CN": "累计 tokens", "en": "Total tokens"},
    "key.last_used": {"zh-CN": "最近使用", "en": "Last used"},
    "key.last_error": {"zh-CN": "最近错误", "en": "Last error"},
    "key.never": {"zh-CN": "从未", "en": "never"},
    # /tokens
    "tokens.title": {"zh-CN": "网关令牌", "en": "Gateway tokens"},
    "tokens.intro": {
        "zh-CN": "在任意 OpenAI SDK 中把令牌当作 API Key 使用，Base URL 设为 {base_url}。",
        "en": "Use a token as the API key of any OpenAI SDK, with the base URL {base_url}.",
    },
    "tokens.create": {"zh-CN": "创建令牌", "en": "Create a token"},
    "tokens.label": {"zh-CN": "备注", "en": "Label"},
    "tokens.label.hint": {
        "zh-CN": "可选，帮你记住它用在哪里，例如“笔记本”。",
        "en": "Optional: where you will use it, e.g. “laptop”.",
    },
    "tokens.button.create": {"zh-CN": "创建令牌", "en": "Create token"},
    "tokens.new": {
        "zh-CN": "新令牌已创建。请立即复制：它只显示这一次。",
        "en": "Your new token. Copy it now: it will not be shown again.",
    },
    "tokens.button.copy": {"zh-CN": "复制", "en": "Copy"},
    "tokens.list": {"zh-CN": "有效令牌（{count}）", "en": "Active tokens ({count})"},
    "tokens.empty": {"zh-CN": "还没有令牌。", "en": "No tokens yet."},
    "tokens.col.label": {"zh-CN": "备注", "en": "Label"},
    "tokens.col.token": {"zh-CN": "令牌", "en": "Token"},
    "tokens.col.created": {"zh-CN": "创建时间", "en": "Created"},
    "tokens.col.last_used": {"zh-CN": "最近使用", "en": "Last used"},
    "tokens.button.revoke": {"zh-CN": "吊销", "en": "Revoke"},
    "tokens.unlabelled": {"zh-CN": "（无备注）", "en": "(no label)"},
    # / and /thanks: the thanks board
    "nav.thanks": {"zh-CN": "感谢榜", "en": "Thanks board"},
    "home.title": {"zh-CN": "社区共享密钥", "en": "Community shared keys"},
    "home.hero": {
        "zh-CN": "{donors} 位捐赠者，{keys} 个密钥，为社区服务",
        "en": "{donors} donors, {keys} keys, serving the community",
    },
    "home.lead": {
        "zh-CN": "这里的每一次调用，都由社区成员捐赠的 API 密钥完成。谢谢你们！",
        "en": "Every call through this gateway is served by an API key a community member donated. Thank you!",
    },
    "home.now_serving": {"zh-CN": "正在服务", "en": "Now serving"},
    "home.served": {"zh-CN": "刚刚完成了最近一次请求，谢谢！", "en": "served the latest request. Thank you!"},
    "home.served_anonymous": {
        "zh-CN": "一位匿名捐赠者刚刚完成了最近一次请求，谢谢！",
        "en": "An anonymous donor served the latest request. Thank you!",
    },
    "home.served_at": {"zh-CN": "时间：{time}", "en": "At {time}"},
    "home.nothing_served": {
        "zh-CN": "还没有完成过请求。第一次会由谁的密钥来完成呢？",
        "en": "No request has been served yet. Whose key will serve the first?",
    },
    "home.top_today": {"zh-CN": "今日贡献", "en": "Today's top donors"},
    "home.full_board": {"zh-CN": "查看完整感谢榜", "en": "See the full board"},
    "home.pool_chart": {"zh-CN": "近 30 天每日调用", "en": "Calls per day, last 30 days"},
    "home.health": {"zh-CN": "密钥池状态", "en": "Pool health"},
    "home.capacity": {"zh-CN": "今日各模型额度", "en": "Capacity today, by model"},
    "home.capacity.legend": {
        "zh-CN": "填充部分为今日已用，其余为剩余；右侧为剩余 / 每日总额度。",
        "en": "Filled: used today; the rest is left. On the right: calls left / daily limit.",
    },
    "home.capacity.empty": {"zh-CN": "目前没有正在服务的模型。", "en": "No model is being served right now."},
    "home.donate": {"zh-CN": "捐赠一个密钥", "en": "Donate a key"},
    "home.donate.lead": {
        "zh-CN": "有闲置的 API 额度？分享给社区，你的名字会出现在这里。",
        "en": "Have spare API credit? Share it with the community, and see your name here.",
    },
    "stat.calls_today": {"zh-CN": "今日调用", "en": "Calls today"},
    "stat.value_today": {"zh-CN": "今日捐赠价值", "en": "Value donated today"},
    "stat.calls_left": {"zh-CN": "今日剩余额度", "en": "Calls left today"},
    "stat.active_keys": {"zh-CN": "可用密钥", "en": "Active keys"},
    "stat.models": {"zh-CN": "模型", "en": "Models"},
    "stat.donors": {"zh-CN": "捐赠者", "en": "Donors"},
    "thanks.title": {"zh-CN": "感谢榜", "en": "Thanks board"},
    "thanks.lead": {
        "zh-CN": "感谢每一位分享密钥的社区成员。按所选时间段内完成的调用次数排名。",
        "en": "Thank you to everyone who shares a key. Ranked by calls served in the chosen period.",
    },
    "thanks.live": {"zh-CN": "实时 · 每几秒更新", "en": "Live · updates every few seconds"},
    "thanks.more": {"zh-CN": "另有 {count} 位捐赠者。", "en": "And {count} more donors."},
    "thanks.period_total": {
        "zh-CN": "{period}共完成 {calls} 次调用，{tokens} tokens，价值 {value}。",
        "en": "{period}: {calls} calls served, {tokens} tokens, worth {value}.",
    },
    "period.label": {"zh-CN": "时间段", "en": "Period"},
    "period.today": {"zh-CN": "今天", "en": "Today"},
    "period.7d": {"zh-CN": "近 7 天", "en": "Last 7 days"},
    "period.30d": {"zh-CN": "近 30 天", "en": "Last 30 days"},
    "period.all": {"zh-CN": "全部", "en": "All time"},
    "thanks.ranking": {"zh-CN": "捐赠者排行", "en": "Donors"},
    "board.key_one": {"zh-CN": "1 个密钥", "en": "1 key"},
    "board.key_count": {"zh-CN": "{count} 个密钥", "en": "{count} keys"},
    "board.last_served": {"zh-CN": "最近服务 {time}", "en": "last served {time}"},
    "board.rank": {"zh-CN": "排名", "en": "Rank"},
    "board.donor": {"zh-CN": "捐赠者", "en": "Donor"},
    "board.calls": {"zh-CN": "调用", "en": "Calls"},
    "board.tokens": {"zh-CN": "Tokens", "en": "Tokens"},
    "board.value": {"zh-CN": "价值", "en": "Value"},
    "board.value_title": {
        "zh-CN": "按模型价格估算的调用价值（美元）",
        "en": "What the calls served are worth at the models' prices (USD)",
    },
    "board.share": {"zh-CN": "今日占比", "en": "Share today"},
    "board.trend": {"zh-CN": "近 30 天", "en": "30 days"},
    "board.anonymous": {"zh-CN": "匿名捐赠者", "en": "Anonymous donor"},
    "board.healthy": {"zh-CN": "正常", "en": "healthy"},
    "board.unhealthy": {"zh-CN": "需要关注", "en": "needs attention"},
    "board.no_keys": {"zh-CN": "暂无可用密钥", "en": "no active key"},
    "board.empty": {
        "zh-CN": "这个时间段还没有贡献记录。",
        "en": "Nobody has served a call in this period yet.",
    },
    "board.spark": {
        "zh-CN": "近 30 天每日调用，共 {calls} 次",
        "en": "Calls per day over the last 30 days: {calls} in all",
    },
    "board.share_of": {"zh-CN": "占今日调用的 {percent}%", "en": "{percent}% of today's calls"},
    "chart.day": {"zh-CN": "{day}：{calls} 次调用", "en": "{day}: {calls} calls"},
    "chart.pool": {
        "zh-CN": "近 30 天每日调用次数，今天 {today} 次",
        "en": "Calls per day over the last 30 days; {today} today",
    },
    "chart.capacity": {"zh-CN": "今日各模型已用与剩余额度", "en": "Calls used and left today, by model"},
    "chart.capacity.row": {
        "zh-CN": "{model}：今日已用 {used}，剩余 {left}，共 {limit}",
        "en": "{model}: {used} used today, {left} left of {limit}",
    },
    "error.bad_period": {
        "zh-CN": "时间段只能是 today、7d、30d 或 all。",
        "en": "The period must be today, 7d, 30d or all.",
    },
    "error.bad_after": {
        "zh-CN": "这个分页链接无效（after= 参数不是上一页给出的值）。请从第一页重新打开“我的密钥”。",
        "en": "This page link is not valid (its after= value is not one a previous page gave). "
        "Open your keys again from the first page.",
    },
    "error.board_unavailable": {
        "zh-CN": "暂时无法读取感谢榜，请稍后再试。",
        "en": "The thanks board cannot be read right now; please try again shortly.",
    },
    # /keys: how the donor appears on the board
    "me.board": {"zh-CN": "感谢榜上的你", "en": "You on the thanks board"},
    "me.shown_as": {"zh-CN": "你的贡献显示为：{name}", "en": "Your calls are credited to: {name}"},
    "me.anonymous_now": {
        "zh-CN": "你的贡献以“匿名捐赠者”显示，不显示名字和头像。",
        "en": "Your calls are credited to “Anonymous donor”, without your name or avatar.",
    },
    "me.anonymous.hint": {
        "zh-CN": "匿名时，感谢榜和响应头 X-Sharekey-Provider 都不会显示你的名字；调用次数仍会计入总数。",
        "en": "When anonymous, neither the board nor the X-Sharekey-Provider header names you; "
        "your calls still count in the totals.",
    },
    "me.go_anonymous": {"zh-CN": "改为匿名显示", "en": "Appear anonymously"},
    "me.show_name": {"zh-CN": "显示我的名字", "en": "Show my name"},
    # errors and refusals
    "error.title": {"zh-CN": "出错了", "en": "Something went wrong"},
    "error.retry": {"zh-CN": "重新登录", "en": "Sign in again"},
    "error.not_found": {"zh-CN": "页面不存在。", "en": "There is no such page."},
    "error.unavailable": {
        "zh-CN": "暂时无法验证登录状态，请稍后再试。",
        "en": "Cannot verify sign-ins right now; please try again shortly.",
    },
    "error.csrf": {
        "zh-CN": "这个请求不是从本站页面发出的，已被拒绝。请刷新页面后重试。",
        "en": "This request did not come from the gateway's own pages and was refused. Reload the page and try again.",
    },
    "login.title": {"zh-CN": "无法登录", "en": "Sign-in failed"},
    "login.not_configured": {
        "zh-CN": "本网关尚未配置 Linux.do 登录（oauth.linuxdo.client_id）。",
        "en": "Sign-in with Linux.do is not configured on this gateway (oauth.linuxdo.client_id).",
    },
    "login.cancelled": {
        "zh-CN": "登录已在 Linux.do 取消或被拒绝授权。",
        "en": "The sign-in was cancelled or not authorised on Linux.do.",
    },
    "login.state_missing": {
        "zh-CN": "登录回调缺少必要参数。请从本站重新开始登录。",
        "en": "The sign-in callback is missing its parameters. Please start the sign-in again from this site.",
    },
    "login.state_invalid": {
        "zh-CN": "登录链接已过期或已被使用过。请重新登录。",
        "en": "This sign-in link has expired or has already been used. Please sign in again.",
    },
    "login.state_browser": {
        "zh-CN": "这次登录是在另一个浏览器（或已清除的会话）中发起的，已被拒绝。请在当前浏览器重新登录。",
        "en": "This sign-in was started in another browser (or a cleared session) and was refused. "
        "Please sign in again in this browser.",
    },
    "login.provider_failed": {
        "zh-CN": "Linux.do 未能确认这次登录，请稍后重试。",
        "en": "Linux.do could not confirm the sign-in. Please try again shortly.",
    },
    "login.inactive": {
        "zh-CN": "你的 Linux.do 账号尚未激活，暂时不能使用本网关。",
        "en": "Your Linux.do account is not active, so it cannot use this gateway yet.",
    },
    "login.silenced": {
        "zh-CN": "你的 Linux.do 账号已被禁言，暂时不能使用本网关。",
        "en": "Your Linux.do account is silenced, so it cannot use this gateway for now.",
    },
    "login.trust_level": {
        "zh-CN": "本网关要求 Linux.do 信任等级至少为 {required}，你当前的等级是 {level}。",
        "en": "This gateway requires Linux.do trust level {required} or higher; yours is {level}.",
    },
    # messages for the scripts
    "js.testing": {"zh-CN": "正在测试…", "en": "Testing…"},
    "js.saving": {"zh-CN": "正在保存…", "en": "Saving…"},
    "js.test_ok": {"zh-CN": "测试通过 · {ms} ms · 模型：{models}", "en": "Test passed · {ms} ms · models: {models}"},
    "js.test_failed": {"zh-CN": "测试失败：{error}", "en": "Test failed: {error}"},
    "js.added": {"zh-CN": "已添加，实时测试通过。", "en": "Added; its live test passed."},
    "js.saved": {"zh-CN": "已保存。", "en": "Saved."},
    "js.confirm_delete": {
        "zh-CN": "确定删除密钥“{name}”吗？此操作无法撤销。",
        "en": "Delete the key “{name}”? This cannot be undone.",
    },
    "js.confirm_revoke": {
        "zh-CN": "确定吊销令牌“{name}”吗？使用它的程序会立即失效。",
        "en": "Revoke the token “{name}”? Programs using it stop working at once.",
    },
    "js.copied": {"zh-CN": "已复制", "en": "Copied"},
    "js.error": {"zh-CN": "操作失败（{status}）：{message}", "en": "That did not work ({status}): {message}"},
    "js.network": {"zh-CN": "网络错误，请重试。", "en": "Network error; please try again."},
    "js.signed_out": {
        "zh-CN": "登录已过期，请刷新页面重新登录。",
        "en": "Your session ended; reload to sign in again.",
    },
}
MESSAGES.update(i18n_signin.MESSAGES)


def language(request: web.Request) -> str:
    """The `lang` cookie if valid, else the best `Accept-Language` match, else Chinese."""
    chosen = sessions.get_cookie(request, COOKIE)
    if chosen in LANGUAGES:
        return chosen
    return from_accept_language(request.headers.get("Accept-Language", ""))


def from_accept_language(header: str) -> str:
    best, best_q = DEFAULT, 0.0
    for part in header.split(","):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                continue
        primary = tag.strip().lower().split("-")[0]
        lang = {"zh": "zh-CN", "en": "en"}.get(primary)
        if lang and q > best_q:
            best, best_q = lang, q
    return best


def translator(lang: str) -> Callable[..., str]:
    lang = lang if lang in LANGUAGES else DEFAULT

    def t(key: str, **values: object) -> str:
        text = MESSAGES[key][lang]
        return text.format(**values) if values else text

    return t


def script_messages(lang: str) -> dict[str, str]:
    """The `js.*` messages, unformatted: the scripts fill `{…}` themselves."""
    lang = lang if lang in LANGUAGES else DEFAULT
    return {key[3:]: texts[lang] for key, texts in MESSAGES.items() if key.startswith("js.")}
