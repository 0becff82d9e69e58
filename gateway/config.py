"""Configuration: `config.toml` (or `SHAREKEY_CONFIG` / `--config`), then environment overrides.

Every key lives in a frozen dataclass section. A key can be set in the TOML file, as
`SHAREKEY_<SECTION>_<KEY>` in the environment (dots in a section name become underscores), or by
one of the short names operators expect (`DATABASE_URL`, `REDIS_URL`, `KEY_ENCRYPTION_SECRET`,
`KEY_ENCRYPTION_OLD_SECRETS`). Unknown keys and bad values raise `ConfigError`, whose message
names the key; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway import config_values
from gateway.config_values import ConfigError


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # 0: one process per CPU
    public_url: str = "http://127.0.0.1:8080"
    shutdown_grace_seconds: float = 30.0
    cors_origins: tuple[str, ...] = ("*",)  # /v1 only: "*", or the origins to echo; empty: no CORS


@dataclass(frozen=True, slots=True)
class Database:
    url: str = field(default="", repr=False)  # empty: embedded PostgreSQL under data_dir
    # Prepared statements kept per connection; 0 behind pgbouncer in transaction mode or the
    # Supabase pooler (port 6543), where a connection's statements do not follow it.
    statement_cache_size: int = 100


@dataclass(frozen=True, slots=True)
class Redis:
    url: str = field(default="", repr=False)  # empty: embedded Redis under data_dir
    key_prefix: str = "sk"  # every key is "<prefix>:v1:{<prefix>}:…" (one Cluster hash slot)
    timeout: float = 2.0  # every pick answers (or fails closed) within this, whatever Redis does


@dataclass(frozen=True, slots=True)
class Storage:
    data_dir: str = "./data"


@dataclass(frozen=True, slots=True)
class Security:
    key_encryption_secret: str = field(default="", repr=False)
    old_key_encryption_secrets: tuple[str, ...] = field(default=(), repr=False)
    allow_private_upstreams: bool = False
    allow_http_upstreams: bool = False


@dataclass(frozen=True, slots=True)
class Balancer:
    timezone: str = "Asia/Shanghai"
    max_attempts: int = 3
    cooldown_seconds: int = 60
    failures_before_cooldown: int = 3
    affinity_seconds: int = 300  # a user's conversation stays on its key this long after its last request; 0: off
    response_affinity_seconds: int = 86400  # a user's previous_response_id stays with its key; 0: off


@dataclass(frozen=True, slots=True)
class Upstream:
    connect_timeout: float = 10.0
    first_token_timeout: float = 120.0
    idle_timeout: float = 60.0
    total_timeout: float = 600.0
    test_timeout: float = 20.0
    max_response_bytes: int = 64 * 1024 * 1024  # a non-stream answer, decoded
    max_event_bytes: int = 8 * 1024 * 1024  # one server-sent event of a stream
    proxy_url: str = field(default="", repr=False)  # http(s):// or socks5://, credentials allowed: never shown


@dataclass(frozen=True, slots=True)
class Limits:
    user_daily_requests: int = 1000
    # Per Linux.do trust level 0, 1, 2, …; a level beyond the list uses its last entry. Empty:
    # user_daily_requests for everyone.
    user_daily_requests_by_trust_level: tuple[int, ...] = ()
    user_requests_per_minute: int = 60
    user_concurrent_streams: int = 4
    max_body_bytes: int = 32 * 1024 * 1024  # requests with images run past 4 MiB
    max_n: int = 1
    max_output_tokens: int = 0  # 0: no cap
    key_tests_per_minute: int = 10


@dataclass(frozen=True, slots=True)
class Health:
    interval_seconds: int = 300
    method: str = "models"  # "models": GET /models; "completion": a 1-token call


@dataclass(frozen=True, slots=True)
class Usage:
    retention_days: int = 90  # usage rows older than this are deleted; 0 keeps them forever


@dataclass(frozen=True, slots=True)
class LinuxDo:
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    redirect_uri: str = ""
    min_trust_level: int = 1
    authorize_url: str = "https://connect.linux.do/oauth2/authorize"
    token_url: str = "https://connect.linux.do/oauth2/token"
    userinfo_url: str = "https://connect.linux.do/api/user"
    avatar_base_url: str = "https://linux.do"


@dataclass(frozen=True, slots=True)
class GitHub:
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    authorize_url: str = "https://github.com/login/oauth/authorize"
    token_url: str = "https://github.com/login/oauth/access_token"
    user_url: str = "https://api.github.com/user"


@dataclass(frozen=True, slots=True)
class Oidc:
    """One `[oauth.oidc.<name>]` table: an OpenID Connect provider found by discovery."""

    issuer: str = ""  # discovery at <issuer>/.well-known/openid-configuration
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scopes: tuple[str, ...] = ("openid", "profile")
    trust_claim: str = ""  # a numeric claim taken as the trust level; empty: limits.user_daily_requests


OIDC_SECTION = "oauth.oidc"
RESERVED_PROVIDER_NAMES = frozenset({"linuxdo", "github", "link", "login", "logout"})


@dataclass(frozen=True, slots=True)
class Models:
    # {"public name" = ["name a key serves", …]}: a request for the alias may be served by any key
    # that serves the alias or one of its targets. Admins can add more at /api/models/aliases.
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Logging:
    level: str = "info"  # debug | info | warning | error
    format: str = "auto"  # auto | json | console


@dataclass(frozen=True, slots=True)
class Config:
    server: Server = field(default_factory=Server)
    database: Database = field(default_factory=Database)
    redis: Redis = field(default_factory=Redis)
    storage: Storage = field(default_factory=Storage)
    security: Security = field(default_factory=Security)
    balancer: Balancer = field(default_factory=Balancer)
    upstream: Upstream = field(default_factory=Upstream)
    limits: Limits = field(default_factory=Limits)
    health: Health = field(default_factory=Health)
    usage: Usage = field(default_factory=Usage)
    oauth_linuxdo: LinuxDo = field(default_factory=LinuxDo)
    oauth_github: GitHub = field(default_factory=GitHub)
    oauth_oidc: dict[str, Oidc] = field(default_factory=dict)  # [oauth.oidc.<name>]; TOML only
    models: Models = field(default_factory=Models)
    logging: Logging = field(default_factory=Logging)
    # [prices."<model>"] input, output, cache_read, cache_write: USD per million tokens, overriding
    # the price library for that model (the name the upstream is asked for). SHAREKEY_PRICES: JSON.
    prices: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return Path(self.storage.data_dir).expanduser().resolve()

    @property
    def embedded(self) -> bool:
        """True when either store has no URL: `serve` then runs it under data_dir."""
        return not self.database.url or not self.redis.url

    def replace(self, section: str, **changes: Any) -> Config:
        return dataclasses.replace(self, **{section: dataclasses.replace(getattr(self, section), **changes)})


# TOML section name -> Config attribute. "oauth.linuxdo" is a nested table in TOML.
SECTIONS: dict[str, str] = {
    "server": "server",
    "database": "database",
    "redis": "redis",
    "storage": "storage",
    "security": "security",
    "balancer": "balancer",
    "upstream": "upstream",
    "limits": "limits",
    "health": "health",
    "usage": "usage",
    "oauth.linuxdo": "oauth_linuxdo",
    "oauth.github": "oauth_github",
    "models": "models",
    "logging": "logging",
}

SHORT_ENV: dict[str, tuple[str, str]] = {
    "DATABASE_URL": ("database", "url"),
    "REDIS_URL": ("redis", "url"),
    "KEY_ENCRYPTION_SECRET": ("security", "key_encryption_secret"),
    "KEY_ENCRYPTION_OLD_SECRETS": ("security", "old_key_encryption_secrets"),
}

CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("health", "method"): ("models", "completion"),
    ("logging", "level"): ("debug", "info", "warning", "error"),
    ("logging", "format"): ("auto", "json", "console"),
}

ENV_PREFIX = "SHAREKEY_"
PRICES_TABLE = "prices"
PRICES_ENV = "SHAREKEY_PRICES"
ENV_NOT_KEYS = {"SHAREKEY_CONFIG", PRICES_ENV}


def load(path: str | os.PathLike[str] | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Build the configuration: defaults, then the TOML file, then the environment."""
    env = os.environ if env is None else env
    path = path or env.get("SHAREKEY_CONFIG") or ("config.toml" if Path("config.toml").is_file() else None)
    raw: dict[str, dict[str, Any]] = {}
    if path:
        raw = _read_toml(Path(path))
    prices = config_values.prices("prices", raw.pop(PRICES_TABLE, {}), from_env=False)
    if env.get(PRICES_ENV):
        prices = config_values.prices(PRICES_ENV, env[PRICES_ENV], from_env=True)
    values: dict[str, dict[str, Any]] = {attr: {} for attr in SECTIONS.values()}
    oidc: dict[str, Oidc] = {}
    for name, table in raw.items():
        if name.startswith(OIDC_SECTION + "."):
            oidc[name.removeprefix(OIDC_SECTION + ".")] = _oidc(name, table)
            continue
        for key, value in table.items():
            values[SECTIONS[name]][key] = _coerce(name, key, value, from_env=False)
    for env_name, (section, key) in SHORT_ENV.items():
        if env.get(env_name):
            values[section][key] = _coerce(section, key, env[env_name], from_env=True)
    for env_name, (section, key) in _long_env_names().items():
        if env_name in env:
            values[section][key] = _coerce(_toml_name(section), key, env[env_name], from_env=True)
    known = set(_long_env_names()) | ENV_NOT_KEYS
    for env_name in env:
        if env_name.startswith(ENV_PREFIX) and env_name not in known:
            raise ConfigError(f"unknown configuration variable {env_name}")
    config = Config(**{attr: _section_class(attr)(**kw) for attr, kw in values.items()}, prices=prices, oauth_oidc=oidc)
    _validate(config)
    return config


def _read_toml(path: Path) -> dict[str, dict[str, Any]]:
    try:
        with path.open("rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    out: dict[str, dict[str, Any]] = {}
    if PRICES_TABLE in doc:  # a table of tables named by model, not a section of fixed keys
        out[PRICES_TABLE] = doc.pop(PRICES_TABLE)
    for name, table in _flatten_tables(doc):
        if name.startswith(OIDC_SECTION + "."):
            out[name] = table
            continue
        if name not in SECTIONS:
            raise ConfigError(f"unknown configuration section [{name}] in {path}")
        known = {f.name for f in dataclasses.fields(_section_class(SECTIONS[name]))}
        for key in table:
            if key not in known:
                raise ConfigError(f"unknown configuration key {name}.{key} in {path}")
        out[name] = table
    return out


def _flatten_tables(doc: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """[oauth.linuxdo] parses as {"oauth": {"linuxdo": {...}}}; yield ("oauth.linuxdo", {...})."""
    tables = []
    for name, value in doc.items():
        full = f"{prefix}{name}"
        if not isinstance(value, dict):
            raise ConfigError(f"unknown configuration key {full}: keys belong in a [section]")
        if full in SECTIONS:
            tables.append((full, value))
        elif full == OIDC_SECTION:
            tables.extend((f"{full}.{provider}", table) for provider, table in _oidc_tables(value))
        elif any(s.startswith(full + ".") for s in SECTIONS):
            tables.extend(_flatten_tables(value, full + "."))
        else:
            raise ConfigError(f"unknown configuration section [{full}]")
    return tables


def _oidc_tables(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """[oauth.oidc.<name>] tables: one per provider, named by the operator."""
    out = []
    for provider, table in doc.items():
        full = f"{OIDC_SECTION}.{provider}"
        if not isinstance(table, dict):
            raise ConfigError(f"{full} must be a table: [{full}]")
        ok = provider.isascii() and provider.replace("-", "").replace("_", "").isalnum() and len(provider) <= 32
        if not ok or provider != provider.lower() or provider in RESERVED_PROVIDER_NAMES:
            raise ConfigError(
                f"[{full}]: a provider name is 1 to 32 lower-case letters, digits, '-' or '_', "
                f"and not one of {', '.join(sorted(RESERVED_PROVIDER_NAMES))}"
            )
        out.append((provider, table))
    return out


def _oidc(name: str, table: dict[str, Any]) -> Oidc:
    hints = typing.get_type_hints(Oidc)
    known = {f.name: f for f in dataclasses.fields(Oidc)}
    kw = {}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(f"unknown configuration key {name}.{key}")
        kw[key] = config_values.typed(f"{name}.{key}", hints[key], value, from_env=False, secret=not known[key].repr)
    provider = Oidc(**kw)
    for key in ("issuer", "client_id", "client_secret"):
        if not getattr(provider, key):
            raise ConfigError(f"configuration key {name}.{key}: required")
    if not provider.issuer.startswith(("https://", "http://")):
        raise ConfigError(f"configuration key {name}.issuer: must be an http(s) URL")
    if "openid" not in provider.scopes:
        raise ConfigError(f'configuration key {name}.scopes: must include "openid"')
    return provider


def _section_class(attr: str) -> type:
    return _SECTION_TYPES[attr]


_SECTION_TYPES: dict[str, type] = {
    "server": Server,
    "database": Database,
    "redis": Redis,
    "storage": Storage,
    "security": Security,
    "balancer": Balancer,
    "upstream": Upstream,
    "limits": Limits,
    "health": Health,
    "usage": Usage,
    "oauth_linuxdo": LinuxDo,
    "oauth_github": GitHub,
    "models": Models,
    "logging": Logging,
}


def _toml_name(attr: str) -> str:
    return next(name for name, a in SECTIONS.items() if a == attr)


def _long_env_names() -> dict[str, tuple[str, str]]:
    names = {}
    for toml_name, attr in SECTIONS.items():
        for f in dataclasses.fields(_SECTION_TYPES[attr]):
            env_name = f"{ENV_PREFIX}{toml_name.replace('.', '_')}_{f.name}".upper()
            names[env_name] = (attr, f.name)
    return names


def _field_type(attr: str, key: str) -> Any:
    hints = typing.get_type_hints(_SECTION_TYPES[attr])
    return hints[key]


def _coerce(section: str, key: str, value: Any, *, from_env: bool) -> Any:
    attr = SECTIONS.get(section, section)
    name = f"{_toml_name(attr)}.{key}"
    return config_values.typed(name, _field_type(attr, key), value, from_env=from_env, secret=_is_secret(attr, key))


def _is_secret(attr: str, key: str) -> bool:
    f = next(f for f in dataclasses.fields(_SECTION_TYPES[attr]) if f.name == key)
    return not f.repr


def _validate(config: Config) -> None:
    config_values.validate(config, CHOICES)


def to_toml_names() -> list[str]:
    """Every key as `section.key`, for documentation checks."""
    return [f"{name}.{f.name}" for name, attr in SECTIONS.items() for f in dataclasses.fields(_SECTION_TYPES[attr])]
