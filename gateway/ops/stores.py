"""Where the gateway's state lives: the configured PostgreSQL and Redis, or embedded ones.

`open_stores(config)` returns the configuration with both URLs filled in and the encryption
secret set, plus the embedded servers to stop afterwards (None when both stores are external).
With an external database the secret must be configured; in embedded mode it is generated once
into `data_dir/secret.key` (mode 0600) and reused.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import structlog

from gateway.config import Config, ConfigError
from gateway.ops import embedded

log = structlog.get_logger(__name__)

SECRET_FILE = "secret.key"


def open_stores(config: Config) -> tuple[Config, embedded.Embedded | None]:
    secret = config.security.key_encryption_secret
    if not secret:
        if config.database.url:
            raise ConfigError(
                "KEY_ENCRYPTION_SECRET (security.key_encryption_secret) is required when the database is "
                "external; generate one with: python -c 'import secrets; print(secrets.token_urlsafe(48))'"
            )
        secret = _embedded_secret(config.data_dir)
        config = config.replace("security", key_encryption_secret=secret)
    if not config.embedded:
        return config, None
    emb = embedded.start(config.data_dir, postgres=not config.database.url, redis=not config.redis.url)
    if not config.database.url:
        config = config.replace("database", url=emb.database_url)
    if not config.redis.url:
        config = config.replace("redis", url=emb.redis_url)
    return config, emb


def _embedded_secret(data_dir: Path) -> str:
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / SECRET_FILE
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        secret = secrets.token_urlsafe(48)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
        log.info("encryption_secret_generated", path=str(path), note="back this file up with the database")
        return secret
    if len(secret) < 32:
        raise ConfigError(f"{path} holds a key encryption secret shorter than 32 characters")
    log.info("encryption_secret_loaded", path=str(path))
    return secret
