"""The configuration's sections: one frozen dataclass per TOML table, the `Config` that holds
them, and the tables that name them (TOML section -> attribute, short environment names, choices)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Features an upstream bills beyond tokens (see relay/features.py): refused unless allowed.
FEATURES = (
    "web_search", "web_fetch", "code_execution", "mcp", "container", "file_search", "code_interpreter",
    "image_generation", "computer_use", "background", "service_tier",
)  # fmt: skip
# The anthropic-beta flags Claude Code sends, and others that add no charge of their own.
ANTHROPIC_BETAS = (
    "claude-code-*", "interleaved-thinking-*", "fine-grained-tool-streaming-*", "prompt-caching-*",
    "token-efficient-tools-*", "context-management-*", "mid-conversation-tool-changes-*",
    "thinking-token-count-*", "advanced-tool-use-*", "effort-*", "output-128k-*", "per-turn-control-*",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Server:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 0  # 0: one process per CPU
    public_url: str = "http://127.0.0.1:8080"
    shutdown_grace_seconds: float = 30.0
    cors_origins: tuple[str, ...] = ("*",)  # /v1 only: "*", or the origins to echo; empty: no CORS
    header_timeout: float = 10.0  # a request's head must arrive within this (an idle connection closes)
    body_timeout: float = 60.0  # and its body within this once the head is in (408, connection closed)
    # CIDRs of the reverse proxies in front: from such a peer, X-Forwarded-For names the client
    # (its right-most address that is not a trusted proxy). Empty: the peer is the client.
    trusted_proxies: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Database:
    url: str = field(default="", repr=False)  # empty: embedded PostgreSQL under data_dir
    statement_cache_size: int = 100  # 0 behind pgbouncer in transaction mode, the Supabase pooler


@dataclass(frozen=True, slots=True)
class Redis:
    url: str = field(default="", repr=False)  # empty: embedded Redis under data_dir
    key_prefix: str = "sk"  # every key is "<prefix>:v1:{<prefix>}:…" (one Cluster hash slot)
    timeout: float = 2.0  # every pick answers (or fails closed) within this, whatever Redis does
    cluster: bool = False  # Redis Cluster: `url` may name any node; MOVED/ASK are followed
    sentinels: tuple[str, ...] = ()  # "host:port" of Redis Sentinels: the master is asked of them
    sentinel_service: str = ""  # the master's name the sentinels know (required with sentinels)
    sentinel_password: str = field(default="", repr=False)  # the sentinels' own password, if any


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
    allowed_features: tuple[str, ...] = ()  # paid features callers may use (FEATURES); none by default
    anthropic_betas: tuple[str, ...] = ANTHROPIC_BETAS  # anthropic-beta values passed on (globs)


@dataclass(frozen=True, slots=True)
class TrustLevel:
    """One `[limits.trust_levels."N"]` table: what a caller of trust level N may use. A field left
    out (None) is the default of `[limits]`; `models` empty: every model."""

    daily_requests: int | None = None
    requests_per_minute: int | None = None
    concurrent_streams: int | None = None
    models: tuple[str, ...] = ()


TRUST_LEVEL_FIELDS = ("daily_requests", "requests_per_minute", "concurrent_streams", "models")


@dataclass(frozen=True, slots=True)
class Limits:
    user_daily_requests: int = 1000
    # Deprecated by trust_levels (still read; a level's daily_requests there wins): per Linux.do
    # trust level 0, 1, 2, …; a level beyond the list uses its last entry.
    user_daily_requests_by_trust_level: tuple[int, ...] = ()
    # [limits.trust_levels."N"]: a trust level's own limits and models (TrustLevel); JSON in the
    # environment (SHAREKEY_LIMITS_TRUST_LEVELS). A level not listed: the defaults.
    trust_levels: dict[int, TrustLevel] = field(default_factory=dict)
    user_requests_per_minute: int = 60
    user_concurrent_streams: int = 4
    max_body_bytes: int = 32 * 1024 * 1024  # requests with images run past 4 MiB
    max_n: int = 1
    max_output_tokens: int = 0  # 0: no cap
    key_tests_per_minute: int = 10
    unknown_token_lookups_per_minute: int = 60  # per client address; 0: unlimited
    max_inflight_body_bytes: int = 256 * 1024 * 1024  # bodies being read at once, per process (past it: 503)


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
class Tracing:
    # OTLP/HTTP collector, e.g. http://127.0.0.1:4318 (spans go to <it>/v1/traces); empty: no tracing
    otlp_endpoint: str = ""
    service_name: str = "sharekey"
    sample_ratio: float = 1.0  # of the traces this gateway starts; a caller's sampled flag is followed


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
    tracing: Tracing = field(default_factory=Tracing)
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
    "tracing": "tracing",
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


SECTION_TYPES: dict[str, type] = {
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
    "tracing": Tracing,
}
