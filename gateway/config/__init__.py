"""Configuration: `config.toml` (or `SHAREKEY_CONFIG` / `--config`), then environment overrides.

Every key lives in a frozen dataclass section. A key can be set in the TOML file, as
`SHAREKEY_<SECTION>_<KEY>` in the environment (dots in a section name become underscores), or by
one of the short names operators expect (`DATABASE_URL`, `REDIS_URL`, `KEY_ENCRYPTION_SECRET`,
`KEY_ENCRYPTION_OLD_SECRETS`). Unknown keys and bad values raise `ConfigError`, whose message
names the key; the CLI turns it into exit code 2.
"""

from gateway.config.loading import load, to_toml_names
from gateway.config.sections import (
    OIDC_SECTION,
    RESERVED_PROVIDER_NAMES,
    Balancer,
    Config,
    Database,
    GitHub,
    Health,
    Limits,
    LinuxDo,
    Logging,
    Models,
    Oidc,
    Redis,
    Security,
    Server,
    Storage,
    Tracing,
    TrustLevel,
    Upstream,
    Usage,
)
from gateway.config.values import ConfigError

__all__ = [
    "OIDC_SECTION",
    "RESERVED_PROVIDER_NAMES",
    "Balancer",
    "Config",
    "ConfigError",
    "Database",
    "GitHub",
    "Health",
    "Limits",
    "LinuxDo",
    "Logging",
    "Models",
    "Oidc",
    "Redis",
    "Security",
    "Server",
    "Storage",
    "Tracing",
    "TrustLevel",
    "Upstream",
    "Usage",
    "load",
    "to_toml_names",
]
