"""Configuration values: typing what TOML and the environment give, and the checks across keys.

`sections` owns the sections and `loading` where values come from; this module turns each value
into its field's type and checks the whole, raising `ConfigError` with a message that names the key.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import ipaddress
import json
import typing
import urllib.parse
import zoneinfo
from typing import Any

from redis.asyncio.connection import parse_url

from gateway.config.sections import FEATURES, TRUST_LEVEL_FIELDS, Config, TrustLevel


class ConfigError(Exception):
    """A configuration problem, phrased for the operator; names the offending key."""


def typed(name: str, kind: Any, value: Any, *, from_env: bool, secret: bool) -> Any:
    """`value` (from TOML, or a string from the environment) as the field's type, or a
    ConfigError naming the key (and the value, unless the field is a secret)."""
    where = "environment value" if from_env else "value"
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if from_env and isinstance(value, str) and value.lower() in _BOOLS:
                return _BOOLS[value.lower()]
            raise ValueError
        if kind is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int):
                return value
            if from_env:
                return int(value)
            raise ValueError
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, int | float):
                return float(value)
            if from_env:
                return float(value)
            raise ValueError
        if kind is str:
            if isinstance(value, str):
                return value
            raise ValueError
        if kind == dict[int, TrustLevel]:
            return trust_levels_table(name, value, from_env=from_env)
        if typing.get_origin(kind) is dict:  # [models] aliases: {"public" = ["target", …]}
            if from_env and isinstance(value, str):
                value = json.loads(value)
            if isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(t, str) for t in v)
                for k, v in value.items()
            ):
                return {k.strip(): tuple(t.strip() for t in v) for k, v in value.items()}
            raise ValueError
        if typing.get_origin(kind) is tuple:
            item = typing.get_args(kind)[0]
            if from_env and isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
                return tuple(int(v) for v in value) if item is int else tuple(value)
            if isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return tuple(value)
            raise ValueError
    except (ValueError, TypeError):
        pass
    expected = _TYPE_WORDS.get(kind, "a list of integers" if "int" in str(kind) else "a list of strings")
    if typing.get_origin(kind) is dict:
        expected = 'a table of lists of names ({"public" = ["target", …]}; JSON in the environment)'
    shown = "" if secret else f" {value!r}"
    raise ConfigError(f"configuration key {name}: {where}{shown} is not {expected}")


def trust_levels_table(name: str, value: Any, *, from_env: bool) -> dict[int, TrustLevel]:
    """[limits.trust_levels."N"] daily_requests, requests_per_minute, concurrent_streams (0 =
    unlimited), models (names and aliases): {N: TrustLevel}."""
    if from_env and isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            value = None
    if not isinstance(value, dict):
        raise ConfigError(f"configuration key {name}: is not a table of trust levels (JSON in the environment)")
    out: dict[int, TrustLevel] = {}
    for level, table in value.items():
        where = f'{name}."{level}"'
        if not (isinstance(level, str) and level.isdigit() and len(level) <= 2):
            raise ConfigError(f"configuration key {where}: a trust level is a number from 0 to 99")
        if not isinstance(table, dict) or set(table) - set(TRUST_LEVEL_FIELDS):
            raise ConfigError(f"configuration key {where}: takes only {', '.join(TRUST_LEVEL_FIELDS)}")
        kw: dict[str, Any] = {}
        for field, v in table.items():
            if field == "models":
                if not isinstance(v, list) or not all(isinstance(m, str) and m.strip() for m in v):
                    raise ConfigError(f"configuration key {where}.models: is not a list of model names")
                kw[field] = tuple(m.strip() for m in v)
            elif isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"configuration key {where}.{field}: {v!r} is not an integer, 0 (unlimited) or more")
            else:
                kw[field] = v
        out[int(level)] = TrustLevel(**kw)
    return out


PRICE_FIELDS = ("input", "output", "cache_read", "cache_write")
# USD per call of a feature billed per call (see relay/features.py), e.g. web_search_call = 0.01
CALL_FIELDS = tuple(f"{f}_call" for f in FEATURES if f not in ("mcp", "container", "background", "service_tier"))


def prices_table(name: str, value: Any, *, from_env: bool) -> dict[str, dict[str, float | None]]:
    """[prices."<model>"] input = …, output = …, cache_read = …, cache_write = … (USD per million
    tokens; the cache prices are optional): {model: {field: number or None}}."""
    try:
        if from_env and isinstance(value, str):
            value = json.loads(value)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise ConfigError(f"configuration key {name}: is not a table of models' prices (JSON in the environment)")
    out: dict[str, dict[str, float | None]] = {}
    for model, table in value.items():
        where = f"{name}.{json.dumps(model)}" if name == "prices" else f"{name} [{model!r}]"
        if (
            not isinstance(table, dict)
            or set(table) - set(PRICE_FIELDS) - set(CALL_FIELDS)
            or not {"input", "output"} <= set(table)
        ):
            raise ConfigError(
                f"configuration key {where}: needs input and output (and may have cache_read, cache_write), "
                f"in USD per million tokens, and USD per call of {', '.join(CALL_FIELDS)}"
            )
        row: dict[str, float | None] = {"cache_read": None, "cache_write": None}
        for field, v in table.items():
            if isinstance(v, bool) or not isinstance(v, int | float) or v < 0:
                raise ConfigError(f"configuration key {where}.{field}: {v!r} is not a number of USD, 0 or more")
            row[field] = float(v)
        out[model.strip()] = row
    return out


_BOOLS = {"true": True, "1": True, "yes": True, "on": True, "false": False, "0": False, "no": False, "off": False}
_TYPE_WORDS: dict[Any, str] = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def validate(config: Config, choices: dict[tuple[str, str], tuple[str, ...]]) -> None:
    """Checks across keys and of values' ranges, after every key has its type."""

    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f"configuration key {key}: {why}")

    if not 0 <= config.server.port <= 65535:
        raise bad("server.port", f"{config.server.port} is not a port number (0-65535)")
    for name in ("header_timeout", "body_timeout"):
        if getattr(config.server, name) <= 0:
            raise bad(f"server.{name}", "must be greater than 0")
    if config.limits.max_inflight_body_bytes < config.limits.max_body_bytes:
        raise bad("limits.max_inflight_body_bytes", "must be at least limits.max_body_bytes")
    if config.server.workers < 0:
        raise bad("server.workers", "must be 0 (one per CPU) or more")
    for (section, key), allowed in choices.items():
        value = getattr(getattr(config, section), key)
        if value not in allowed:
            raise bad(f"{section}.{key}", f"{value!r} is not one of {', '.join(allowed)}")
    try:
        zoneinfo.ZoneInfo(config.balancer.timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise bad("balancer.timezone", f"{config.balancer.timezone!r} is not a known time zone") from None
    if any(n < 0 for n in config.limits.user_daily_requests_by_trust_level):
        raise bad("limits.user_daily_requests_by_trust_level", "limits must be 0 (unlimited) or more")
    for cidr in config.server.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise bad("server.trusted_proxies", f"{cidr!r} is not an address or CIDR") from None
    if config.limits.unknown_token_lookups_per_minute < 0:
        raise bad("limits.unknown_token_lookups_per_minute", "must be 0 (unlimited) or more")
    if config.health.interval_seconds < 0:
        raise bad("health.interval_seconds", "must be 0 (no health checks) or more")
    if config.usage.retention_days < 0:
        raise bad("usage.retention_days", "must be 0 (keep forever) or more")
    if config.database.statement_cache_size < 0:
        raise bad("database.statement_cache_size", "must be 0 (no prepared statements kept) or more")
    if config.balancer.max_attempts < 1:
        raise bad("balancer.max_attempts", "must be at least 1")
    secret = config.security.key_encryption_secret
    if secret and len(secret) < 32:
        raise bad("security.key_encryption_secret", "must be at least 32 characters")
    for old in config.security.old_key_encryption_secrets:
        if len(old) < 32:
            raise bad("security.old_key_encryption_secrets", "every secret must be at least 32 characters")
    for section, key in (("database", "url"), ("redis", "url")):
        url = getattr(getattr(config, section), key)
        schemes = ("postgres://", "postgresql://") if section == "database" else ("redis://", "rediss://", "unix://")
        if url and not url.startswith(schemes):
            raise bad(f"{section}.url", f"must start with {' or '.join(schemes)}")
    _redis_topology(config, bad)
    prefix = config.redis.key_prefix
    if not prefix or any(c in prefix for c in "{}: "):
        raise bad("redis.key_prefix", "must be non-empty, without braces, colons or spaces")
    for f in dataclasses.fields(config.upstream):
        if f.type in ("float", "int", float, int) and getattr(config.upstream, f.name) <= 0:
            raise bad(f"upstream.{f.name}", "must be greater than 0")
    unknown = [f for f in config.upstream.allowed_features if f not in FEATURES]
    if unknown:
        raise bad("upstream.allowed_features", f"{unknown[0]!r} is not one of {', '.join(FEATURES)}")
    if config.redis.timeout <= 0:
        raise bad("redis.timeout", "must be greater than 0")
    endpoint = config.tracing.otlp_endpoint
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise bad("tracing.otlp_endpoint", "must be an http:// or https:// URL (the OTLP/HTTP collector)")
    if endpoint and _missing("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"):
        raise bad(
            "tracing.otlp_endpoint", "is set but OpenTelemetry is not installed (pip install 'sharekey[tracing]')"
        )
    if not 0 <= config.tracing.sample_ratio <= 1:
        raise bad("tracing.sample_ratio", "must be from 0 to 1")
    proxy = config.upstream.proxy_url
    if proxy and not _proxy_url_ok(proxy):
        # The URL may carry credentials: never repeat it.
        raise bad("upstream.proxy_url", "must be http://, https:// or socks5://host:port (user:password@ allowed)")


def _missing(*modules: str) -> bool:
    """Whether any of these is not installed (looked up, not imported)."""
    try:
        return any(importlib.util.find_spec(m) is None for m in modules)
    except ModuleNotFoundError:  # a parent package is missing
        return True


def _redis_topology(config: Config, bad: Any) -> None:
    """The URL parses as redis-py reads it, and cluster and sentinels are asked for with their keys."""
    r = config.redis
    if r.url:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(r.url).query)
        if "cluster" in query:
            raise bad("redis.url", "takes no cluster= option: set redis.cluster = true instead")
        try:
            parse_url(r.url)
        except (ValueError, TypeError) as e:  # a node list, a bad port: the URL is never repeated
            raise bad(
                "redis.url", f"is not a Redis URL redis-py can read ({type(e).__name__}); one node per URL"
            ) from None
    if r.cluster and r.sentinels:
        raise bad("redis.sentinels", "cannot be used with redis.cluster = true")
    if r.sentinels and not r.sentinel_service:
        raise bad("redis.sentinel_service", "must name the master when redis.sentinels is set")
    for address in r.sentinels:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise bad("redis.sentinels", f"{address!r} is not host:port")


def _proxy_url_ok(url: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https", "socks5")
        and bool(parts.hostname)
        and parts.path in ("", "/")
        and not parts.query
        and not parts.fragment
        and (port is not None or parts.scheme != "socks5")
    )
