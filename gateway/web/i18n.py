"""The one message catalogue of the pages, in Chinese (zh-CN) and English, and language choice.

The messages are data: `web/messages.toml` and the sign-in wing's `web/signin/messages.toml`,
read once at import into `MESSAGES` (a message repeated across them, or missing a language,
fails the import).

A page's language is the `lang` cookie (set by the switch in the header), else the best match in
`Accept-Language`, else Chinese. Templates call `t("key", name=…)`; the scripts get the `js.*`
messages as a JSON block. Placeholders use `str.format` names and are the same in both languages
(a test checks). Messages are plain text: Jinja escapes them, and what is filled into them.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from importlib import resources

from aiohttp import web

from gateway.web.signin import sessions

LANGUAGES = ("zh-CN", "en")
DEFAULT = "zh-CN"
COOKIE = "lang"

CATALOGUES = (("gateway.web", "messages.toml"), ("gateway.web.signin", "messages.toml"))


def load(catalogues: tuple[tuple[str, str], ...] = CATALOGUES) -> dict[str, dict[str, str]]:
    """The catalogue files, merged in order, each message in every language (or an error at import).
    They ship as package data, so a built wheel reads the same files."""
    messages: dict[str, dict[str, str]] = {}
    for package, name in catalogues:
        table = tomllib.loads((resources.files(package) / name).read_text(encoding="utf-8"))
        for key, texts in table.items():
            if key in messages or set(texts) != set(LANGUAGES) or not all(isinstance(t, str) for t in texts.values()):
                raise ValueError(f"{package}/{name}: message {key!r} is repeated or not in {', '.join(LANGUAGES)}")
            messages[key] = texts
    return messages


MESSAGES = load()


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
