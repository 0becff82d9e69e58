"""The sign-in page's messages and those of sign-in links and OpenID Connect / GitHub sign-ins, in
Chinese (zh-CN) and English: part of web/i18n.py's one catalogue, which merges them in."""

from __future__ import annotations

MESSAGES: dict[str, dict[str, str]] = {
    "signin.title": {"zh-CN": "登录", "en": "Sign in"},
    "signin.with": {"zh-CN": "使用 {provider} 登录", "en": "Sign in with {provider}"},
    "signin.none": {
        "zh-CN": "本网关未配置登录方式。请向管理员索取一次性登录链接（sharekey login-link）。",
        "en": "No sign-in provider is configured. Ask the operator for a sign-in link (sharekey login-link).",
    },
    "login.cancelled_at": {
        "zh-CN": "登录已在 {provider} 取消或被拒绝授权。",
        "en": "The sign-in was cancelled at {provider}.",
    },
    "login.provider_down": {
        "zh-CN": "{provider} 未能确认这次登录，请稍后重试。",
        "en": "{provider} could not confirm the sign-in. Please try again shortly.",
    },
    "login.token_signature": {
        "zh-CN": "{provider} 的身份令牌签名无效，登录被拒绝。",
        "en": "The identity token from {provider} has no valid signature; the sign-in was refused.",
    },
    "login.token_issuer": {
        "zh-CN": "身份令牌不是由 {provider} 签发的（iss 不符），登录被拒绝。",
        "en": "The identity token was not issued by {provider} (wrong issuer); the sign-in was refused.",
    },
    "login.token_audience": {
        "zh-CN": "{provider} 的身份令牌不是签发给本网关的（aud 不符），登录被拒绝。",
        "en": "The identity token from {provider} is for someone else (wrong audience); the sign-in was refused.",
    },
    "login.token_expired": {
        "zh-CN": "{provider} 的身份令牌已过期，请重新登录。",
        "en": "The identity token from {provider} has expired. Please sign in again.",
    },
    "login.token_not_yet_valid": {
        "zh-CN": "{provider} 的身份令牌尚未生效（签发时间在未来），登录被拒绝。请检查双方的系统时间后重试。",
        "en": "The identity token from {provider} is not valid yet (issued in the future); the sign-in was refused. "
        "Check both clocks and try again.",
    },
    "login.token_claims": {
        "zh-CN": "{provider} 的身份令牌缺少签发时间或格式不正确，登录被拒绝。",
        "en": "The identity token from {provider} has no issue time or a malformed one; the sign-in was refused.",
    },
    "login.token_nonce": {
        "zh-CN": "{provider} 的身份令牌不属于这次登录（nonce 不符），登录被拒绝。",
        "en": "The identity token from {provider} belongs to another sign-in (wrong nonce); it was refused.",
    },
    "link.title": {"zh-CN": "使用登录链接登录", "en": "Sign in with a link"},
    "link.confirm": {"zh-CN": "以 {username} 的身份登录本网关？", "en": "Sign in to this gateway as {username}?"},
    "link.explain": {
        "zh-CN": "这个链接只能使用一次。只有在你向管理员索取了它（sharekey login-link）时才继续："
        "别人主动发给你的链接可能会让你登录到他的账号。",
        "en": "This link works once. Continue only if you asked the operator for it (sharekey login-link): "
        "a link someone sent you unasked may sign you in to their account.",
    },
    "link.button": {"zh-CN": "登录", "en": "Sign in"},
    "link.unknown": {
        "zh-CN": "这个登录链接无效（从未签发或不完整）。请向管理员索取新的链接（sharekey login-link）。",
        "en": "This sign-in link is not valid (never issued, or cut short). "
        "Ask the operator for a new one (sharekey login-link).",
    },
    "link.used": {
        "zh-CN": "这个登录链接已经用过了：每个链接只能使用一次。请向管理员索取新的链接。",
        "en": "This sign-in link has already been used: each link works once. Ask the operator for a new one.",
    },
    "link.expired": {
        "zh-CN": "这个登录链接已过期。请向管理员索取新的链接（sharekey login-link）。",
        "en": "This sign-in link has expired. Ask the operator for a new one (sharekey login-link).",
    },
}
