"""Configuration: defaults, TOML, environment overrides, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from gateway import config as config_mod
from gateway.config import ConfigError, load, loading

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_contract() -> None:
    c = load(env={})
    assert (c.server.host, c.server.port, c.server.workers) == ("127.0.0.1", 8080, 0)
    assert c.balancer.timezone == "Asia/Shanghai" and c.balancer.max_attempts == 3
    assert c.limits.max_body_bytes == 33554432 and c.limits.max_output_tokens == 0
    assert c.oauth_linuxdo.authorize_url == "https://connect.linux.do/oauth2/authorize"
    assert c.embedded


def test_every_key_is_documented_in_the_example() -> None:
    example = load(ROOT / "config.example.toml", env={})
    assert example == load(env={}), "config.example.toml must show the defaults"
    with (ROOT / "config.example.toml").open("rb") as f:
        doc = tomllib.load(f)
    documented = {f"{section}.{key}" for section, table in loading._flatten_tables(doc) for key in table}
    assert documented == set(config_mod.to_toml_names())


def test_toml_then_environment(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nport = 9000\n[oauth.linuxdo]\nclient_id = "abc"\n[security]\nallow_http_upstreams = true\n'
    )
    c = load(path, env={"SHAREKEY_SERVER_PORT": "9100", "DATABASE_URL": "postgresql://db/x"})
    assert c.server.port == 9100
    assert c.oauth_linuxdo.client_id == "abc"
    assert c.security.allow_http_upstreams is True
    assert c.database.url == "postgresql://db/x"
    c = load(
        path, env={"SHAREKEY_OAUTH_LINUXDO_CLIENT_ID": "xyz", "KEY_ENCRYPTION_OLD_SECRETS": "a" * 32 + ", " + "b" * 32}
    )
    assert c.oauth_linuxdo.client_id == "xyz"
    assert c.security.old_key_encryption_secrets == ("a" * 32, "b" * 32)


@pytest.mark.parametrize(
    ("toml", "env", "message"),
    [
        ("[server]\nport = 'eighty'\n", {}, "server.port"),
        ("[server]\nprot = 1\n", {}, "server.prot"),
        ("[nope]\nx = 1\n", {}, "[nope]"),
        ("[server\n", {}, "not valid TOML"),
        ("", {"SHAREKEY_SERVER_PORT": "x"}, "server.port"),
        ("", {"SHAREKEY_SERVER_PORTS": "1"}, "SHAREKEY_SERVER_PORTS"),
        ("", {"SHAREKEY_SECURITY_ALLOW_PRIVATE_UPSTREAMS": "maybe"}, "security.allow_private_upstreams"),
        ("", {"SHAREKEY_BALANCER_TIMEZONE": "Mars/Base"}, "balancer.timezone"),
        ("", {"SHAREKEY_HEALTH_METHOD": "ping"}, "health.method"),
        ("[database]\nstatement_cache_size = -1\n", {}, "database.statement_cache_size"),
        ("", {"SHAREKEY_SERVER_PORT": "70000"}, "server.port"),
        ("", {"DATABASE_URL": "mysql://x"}, "database.url"),
    ],
)
def test_bad_input_names_the_key(tmp_path: Path, toml: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load(path, env=env)


def test_secrets_never_in_repr_or_errors() -> None:
    secret = "s3cret-" * 6
    c = load(
        env={"KEY_ENCRYPTION_SECRET": secret, "DATABASE_URL": "postgresql://u:pw@db/x", "REDIS_URL": "redis://:pw@r"}
    )
    assert secret not in repr(c) and "pw@" not in repr(c)
    with pytest.raises(ConfigError) as e:
        load(env={"KEY_ENCRYPTION_SECRET": "short-secret"})
    assert "short-secret" not in str(e.value)


def test_cli_exits_2_with_one_line(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\nport = 'x'\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(path), "migrate"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "server.port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_lists_of_integers(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[limits]\nuser_daily_requests_by_trust_level = [100, 1000, 2000]\n")
    assert load(path, env={}).limits.user_daily_requests_by_trust_level == (100, 1000, 2000)
    env = {"SHAREKEY_LIMITS_USER_DAILY_REQUESTS_BY_TRUST_LEVEL": "5, 50"}
    assert load(env=env).limits.user_daily_requests_by_trust_level == (5, 50)
    for bad in ("[1, 'two']", "[true]", "'100'"):
        path.write_text(f"[limits]\nuser_daily_requests_by_trust_level = {bad}\n")
        with pytest.raises(ConfigError, match="user_daily_requests_by_trust_level.*list of integers"):
            load(path, env={})
    with pytest.raises(ConfigError, match="user_daily_requests_by_trust_level"):
        load(env={"SHAREKEY_LIMITS_USER_DAILY_REQUESTS_BY_TRUST_LEVEL": "1,x"})


def test_trust_level_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[limits]\nuser_daily_requests = 50\n[limits.trust_levels."1"]\ndaily_requests = 5\nmodels = ["gpt-4o-mini"]\n'
        '[limits.trust_levels."3"]\nrequests_per_minute = 0\nconcurrent_streams = 8\n'
    )
    c = load(path, env={})
    assert c.limits.user_daily_requests == 50
    assert c.limits.trust_levels == {
        1: config_mod.TrustLevel(daily_requests=5, models=("gpt-4o-mini",)),
        3: config_mod.TrustLevel(requests_per_minute=0, concurrent_streams=8),
    }
    env = {"SHAREKEY_LIMITS_TRUST_LEVELS": '{"2": {"daily_requests": 7}}'}
    assert load(env=env).limits.trust_levels == {2: config_mod.TrustLevel(daily_requests=7)}


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('[limits.trust_levels."x"]\ndaily_requests = 1\n', 'limits.trust_levels."x": a trust level is a number'),
        ('[limits.trust_levels."1"]\ndaily = 1\n', 'limits.trust_levels."1": takes only daily_requests'),
        ('[limits.trust_levels."1"]\ndaily_requests = -1\n', 'limits.trust_levels."1".daily_requests: -1 is not'),
        ('[limits.trust_levels."1"]\nmodels = "m"\n', 'limits.trust_levels."1".models: is not a list'),
        ('[server]\ntrusted_proxies = ["10.0.0.0/33"]\n', "server.trusted_proxies: '10.0.0.0/33' is not"),
    ],
)
def test_bad_trust_levels_and_proxies_name_the_key(tmp_path: Path, table: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(table)
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace('"', '"')):
        load(path, env={})


def test_trusted_proxies_from_the_environment() -> None:
    c = load(env={"SHAREKEY_SERVER_TRUSTED_PROXIES": "10.0.0.0/8, ::1"})
    assert c.server.trusted_proxies == ("10.0.0.0/8", "::1")


def test_the_old_trust_level_key_is_read_with_one_deprecation_line() -> None:
    from structlog.testing import capture_logs

    from gateway.ops.server import warn_deprecated

    c = load(env={"SHAREKEY_LIMITS_USER_DAILY_REQUESTS_BY_TRUST_LEVEL": "10,20"})
    assert c.limits.user_daily_requests_by_trust_level == (10, 20)
    with capture_logs() as logs:
        warn_deprecated(c)
        warn_deprecated(load(env={}))
    assert [(e["event"], e["key"]) for e in logs] == [
        ("config_key_deprecated", "limits.user_daily_requests_by_trust_level")
    ]
