"""Where values come from: defaults, then the TOML file, then the environment (`load`)."""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.sections import (
    CHOICES,
    OIDC_SECTION,
    RESERVED_PROVIDER_NAMES,
    SECTION_TYPES,
    SECTIONS,
    SHORT_ENV,
    Config,
    Oidc,
)
from gateway.config.values import ConfigError, prices_table, typed, validate

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
    prices = prices_table("prices", raw.pop(PRICES_TABLE, {}), from_env=False)
    if env.get(PRICES_ENV):
        prices = prices_table(PRICES_ENV, env[PRICES_ENV], from_env=True)
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
        kw[key] = typed(f"{name}.{key}", hints[key], value, from_env=False, secret=not known[key].repr)
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
    return SECTION_TYPES[attr]


def _toml_name(attr: str) -> str:
    return next(name for name, a in SECTIONS.items() if a == attr)


def _long_env_names() -> dict[str, tuple[str, str]]:
    names = {}
    for toml_name, attr in SECTIONS.items():
        for f in dataclasses.fields(SECTION_TYPES[attr]):
            env_name = f"{ENV_PREFIX}{toml_name.replace('.', '_')}_{f.name}".upper()
            names[env_name] = (attr, f.name)
    return names


def _field_type(attr: str, key: str) -> Any:
    hints = typing.get_type_hints(SECTION_TYPES[attr])
    return hints[key]


def _coerce(section: str, key: str, value: Any, *, from_env: bool) -> Any:
    attr = SECTIONS.get(section, section)
    name = f"{_toml_name(attr)}.{key}"
    return typed(name, _field_type(attr, key), value, from_env=from_env, secret=_is_secret(attr, key))


def _is_secret(attr: str, key: str) -> bool:
    f = next(f for f in dataclasses.fields(SECTION_TYPES[attr]) if f.name == key)
    return not f.repr


def _validate(config: Config) -> None:
    validate(config, CHOICES)


def to_toml_names() -> list[str]:
    """Every key as `section.key`, for documentation checks."""
    return [f"{name}.{f.name}" for name, attr in SECTIONS.items() for f in dataclasses.fields(SECTION_TYPES[attr])]
