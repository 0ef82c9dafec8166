"""Settings: the duration grammar, defaults, cross-field checks, secrets from files."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path
from typing import Any

import pytest

from bridge.dburl import describe
from bridge.settings import (
    Settings,
    SettingsError,
    add_serve_flags,
    load,
    parse_duration,
    settings_vars,
)
from bridge.store.postgres_driver import describe_dsn


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("2.5", 2.5),
        ("250ms", 0.25),
        ("5s", 5),
        ("5m", 300),
        ("24h", 86400),
        ("0.5h", 1800),
        ("7", 7),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["", "-1", "5 s", "5sec", "1d", "abc", "1e3", "5ms5", "s", "0", "0s"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_zero_only_for_initial_delay() -> None:
    assert load({"BRIDGE_POLL_INITIAL_DELAY": "0"}).poll_initial_delay == 0
    with pytest.raises(SettingsError, match=r"^BRIDGE_POLL_MIN_INTERVAL: "):
        load({"BRIDGE_POLL_MIN_INTERVAL": "0"})


def test_defaults_match_the_spec() -> None:
    s = load({})
    assert s == Settings()
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.database.scheme == "sqlite" and s.database.path == "bridge.db"
    assert s.callback_retry_schedule == (5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)
    assert s.retention == 720 * 3600
    assert (s.upstream_rps, s.upstream_concurrency, s.callback_concurrency) == (20, 32, 64)


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"BRIDGE_PORT": "http"}, "BRIDGE_PORT"),
        ({"BRIDGE_PORT": "70000"}, "BRIDGE_PORT"),
        ({"BRIDGE_UPSTREAM_RPS": "0"}, "BRIDGE_UPSTREAM_RPS"),
        ({"BRIDGE_UPSTREAM_RPS": "nan"}, "BRIDGE_UPSTREAM_RPS"),
        ({"BRIDGE_UPSTREAM_CONCURRENCY": "1.5"}, "BRIDGE_UPSTREAM_CONCURRENCY"),
        ({"BRIDGE_UPSTREAM_AUTH": "oauth"}, "BRIDGE_UPSTREAM_AUTH"),
        ({"BRIDGE_UPSTREAM_URL": "api.uploadcare.com"}, "BRIDGE_UPSTREAM_URL"),
        ({"BRIDGE_DATABASE_URL": "mysql://x/y"}, "BRIDGE_DATABASE_URL"),
        ({"BRIDGE_DATABASE_URL": "sqlite:///"}, "BRIDGE_DATABASE_URL"),
        ({"BRIDGE_CALLBACK_RETRY_SCHEDULE": "5s,,x"}, "BRIDGE_CALLBACK_RETRY_SCHEDULE"),
        ({"BRIDGE_CALLBACK_ALLOW_NETWORKS": "10.0.0.0/33"}, "BRIDGE_CALLBACK_ALLOW_NETWORKS"),
        ({"BRIDGE_CALLBACK_ALLOW_NETWORKS": "10.20.30.40/1"}, "BRIDGE_CALLBACK_ALLOW_NETWORKS"),
        ({"BRIDGE_CALLBACK_ALLOW_NETWORKS": "fe80::%eth0/64"}, "BRIDGE_CALLBACK_ALLOW_NETWORKS"),
        ({"BRIDGE_API_KEYS": "nocolon"}, "BRIDGE_API_KEYS"),
        ({"BRIDGE_API_KEYS": "a:same,b:same"}, "BRIDGE_API_KEYS"),
        ({"BRIDGE_WEBHOOK_SECRETS": "notwhsec"}, "BRIDGE_WEBHOOK_SECRETS"),
        ({"BRIDGE_WEBHOOK_SECRETS": "whsec_!!!"}, "BRIDGE_WEBHOOK_SECRETS"),
        ({"BRIDGE_WEBHOOK_SECRETS": "whsec_c2hvcnQ="}, "BRIDGE_WEBHOOK_SECRETS"),
        ({"BRIDGE_LOG_FORMAT": "xml"}, "BRIDGE_LOG_FORMAT"),
        ({"BRIDGE_LOG_LEVEL": "loud"}, "BRIDGE_LOG_LEVEL"),
        ({"BRIDGE_POLL_MIN_INTERVAL": "90s"}, "BRIDGE_POLL_MIN_INTERVAL"),
        ({"BRIDGE_LEASE": "15s"}, "BRIDGE_LEASE"),
        ({"BRIDGE_LEASE": "20s", "BRIDGE_UPSTREAM_TIMEOUT": "25s"}, "BRIDGE_LEASE"),
        ({"BRIDGE_RETENTION": "forever"}, "BRIDGE_RETENTION"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], var: str) -> None:
    with pytest.raises(SettingsError) as info:
        load(env)
    assert str(info.value).startswith(f"{var}: ")
    assert "\n" not in str(info.value)


def test_secret_values_are_never_echoed() -> None:
    with pytest.raises(SettingsError) as info:
        load({"BRIDGE_WEBHOOK_SECRETS": "whsec_TOPSECRETVALUE!"})
    assert "TOPSECRET" not in str(info.value)
    with pytest.raises(SettingsError) as info:
        load({"BRIDGE_DATABASE_URL": "mysql://u:pa55word@h/db"})
    assert "pa55word" not in str(info.value)


def test_secrets_from_files(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("ops:s3cret-value\n")
    uc = tmp_path / "uc"
    uc.write_text("uc-secret")
    s = load({"BRIDGE_API_KEYS_FILE": str(keys), "UPLOADCARE_SECRET_KEY_FILE": str(uc)})
    assert s.api_keys == (("ops", "s3cret-value"),)
    assert s.uploadcare_secret_key == "uc-secret"


def test_secret_file_problems(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_SECRET_KEY_FILE: cannot read"):
        load({"UPLOADCARE_SECRET_KEY_FILE": str(tmp_path / "missing")})
    path = tmp_path / "k"
    path.write_text("x")
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_SECRET_KEY: set either"):
        load({"UPLOADCARE_SECRET_KEY": "a", "UPLOADCARE_SECRET_KEY_FILE": str(path)})


def test_flags_override_environment_but_not_for_secrets() -> None:
    s = load({"BRIDGE_PORT": "9000", "BRIDGE_POLL_MAX_INTERVAL": "30s"}, {"port": "9100"})
    assert s.port == 9100 and s.poll_max_interval == 30
    s = load({}, {"api_keys": "x:y", "database": "sqlite:///other.db"})
    assert s.api_keys == () and s.database.path == "bridge.db"


def test_database_urls() -> None:
    assert load({"BRIDGE_DATABASE_URL": "sqlite:////var/lib/b.db"}).database.path == "/var/lib/b.db"
    pg = load({"BRIDGE_DATABASE_URL": "postgresql://u:pw%21@db:5432/bridge"}).database
    assert pg.scheme == "postgresql" and pg.password == "pw!"
    assert "pw" not in str(pg) and "pw" not in repr(pg)


def test_webhook_secrets_per_tenant() -> None:
    shared = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    own = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"
    s = load({"BRIDGE_API_KEYS": "a:1234,b:5678", "BRIDGE_WEBHOOK_SECRETS": f"{shared}, b:{own}"})
    assert [(w.tenant, w.secret) for w in s.webhook_secrets] == [(None, shared), ("b", own)]
    with pytest.raises(SettingsError, match=r"BRIDGE_WEBHOOK_SECRETS: names tenant 'c'"):
        load({"BRIDGE_API_KEYS": "a:1234", "BRIDGE_WEBHOOK_SECRETS": f"c:{own}"})


def test_serve_requirements() -> None:
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_PUBLIC_KEY: "):
        load({}).check_serve()
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_SECRET_KEY: "):
        load({"UPLOADCARE_PUBLIC_KEY": "p"}).check_serve()
    env = {"UPLOADCARE_PUBLIC_KEY": "p", "UPLOADCARE_SECRET_KEY": "s"}
    with pytest.raises(SettingsError, match=r"^BRIDGE_API_KEYS: .*--insecure-no-auth"):
        load(env).check_serve()
    load(env, {"insecure_no_auth": True}).check_serve()
    assert load(env, {"insecure_no_auth": True}).tenants == ("default",)


def test_allow_networks() -> None:
    nets = load({"BRIDGE_CALLBACK_ALLOW_NETWORKS": "127.0.0.0/8"}).callback_allow_networks
    assert nets == (ipaddress.IPv4Network("127.0.0.0/8"),)
    assert load({}).callback_allow_networks == ()
    assert load(
        {"BRIDGE_CALLBACK_ALLOW_NETWORKS": "10.20.0.0/16, fd00::/8,::1"}
    ).callback_allow_networks == (
        ipaddress.IPv4Network("10.20.0.0/16"),
        ipaddress.IPv6Network("fd00::/8"),
        ipaddress.IPv6Network("::1/128"),
    )
    with pytest.raises(SettingsError, match=r"^BRIDGE_CALLBACK_ALLOW_NETWORKS: .*'banana'"):
        load({"BRIDGE_CALLBACK_ALLOW_NETWORKS": "banana"})


@pytest.mark.parametrize(
    ("text", "meant"),
    [
        ("10.20.30.40/1", "0.0.0.0/1"),
        ("10.20.30.40/16", "10.20.0.0/16"),
        ("127.0.0.0/8, 10.0.0.1/8", "10.0.0.0/8"),
        ("fd00::1/8", "fd00::/8"),
    ],
)
def test_allow_network_with_host_bits_is_a_bad_value(text: str, meant: str) -> None:
    """Host bits set would silently widen the exemption: refused, naming the network meant."""
    with pytest.raises(SettingsError) as info:
        load({"BRIDGE_CALLBACK_ALLOW_NETWORKS": text})
    message = str(info.value)
    assert message.startswith("BRIDGE_CALLBACK_ALLOW_NETWORKS: ")
    bad = next(p.strip() for p in text.split(",") if "/" in p and p.strip() != "127.0.0.0/8")
    assert message.endswith(f": {bad} has host bits set; did you mean {meant}?")
    assert "\n" not in message


# -- An empty variable is a bad value, not the default -------------------------------------

EVERY_VAR = [var.env for var in settings_vars()]
SECRET_VARS = [var.env for var in settings_vars() if var.secret]


@pytest.mark.parametrize("var", settings_vars(), ids=lambda v: v.env)
def test_every_variable_has_a_help_sentence(var: Any) -> None:
    # `serve --help` shows it; one that only repeats the variable's name tells nobody anything.
    words = var.help.split()
    assert len(words) >= 4 and var.env not in var.help, var.help
    assert "\n" not in var.help


def test_serve_help_shows_each_flags_sentence() -> None:
    parser = argparse.ArgumentParser()
    add_serve_flags(parser)
    text = " ".join(parser.format_help().split())
    for var in settings_vars():
        if not var.secret:
            assert " ".join(var.help.split()) in text, var.env


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
@pytest.mark.parametrize("name", EVERY_VAR)
def test_an_empty_variable_is_a_bad_value_naming_it(name: str, value: str) -> None:
    assert load({}) == Settings()  # unset: the default
    with pytest.raises(SettingsError) as info:
        load({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}: set but empty; give a value, or unset it")
    assert "\n" not in message


@pytest.mark.parametrize("var", [v for v in settings_vars() if not v.secret])
def test_an_empty_flag_is_a_bad_value_naming_its_variable(var: Any) -> None:
    with pytest.raises(SettingsError) as info:
        load({}, {var.attr: ""})
    assert str(info.value) == f"{var.env}: {var.flag} is empty; give a value, or leave it out"


@pytest.mark.parametrize("name", SECRET_VARS)
def test_an_empty_file_variable_or_file_is_a_bad_value(name: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=f"^{name}_FILE: set but empty; "):
        load({f"{name}_FILE": ""})
    for content in ("", "\n", "\r\n", "  \n"):
        path = tmp_path / "value"
        path.write_text(content)
        with pytest.raises(SettingsError) as info:
            load({f"{name}_FILE": str(path)})
        assert str(info.value) == f"{name}_FILE: {path} is empty"


def test_a_secret_file_loses_only_its_trailing_line_breaks(tmp_path: Path) -> None:
    path = tmp_path / "key"
    path.write_text("uc-secret\n")
    assert load({"UPLOADCARE_SECRET_KEY_FILE": str(path)}).uploadcare_secret_key == "uc-secret"
    path.write_text("uc-secret\r\n\n")
    assert load({"UPLOADCARE_SECRET_KEY_FILE": str(path)}).uploadcare_secret_key == "uc-secret"
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(SettingsError, match=r"^UPLOADCARE_SECRET_KEY_FILE: .* is not UTF-8"):
        load({"UPLOADCARE_SECRET_KEY_FILE": str(path)})


# -- BRIDGE_DATABASE_URL: parsed strictly, described without its password ----------------

SECRET = "S3cr3tPw"

# Each is a bad value; the password (SECRET) must appear in no message.
NASTY_DATABASE_URLS = [
    f"postgresql://bridge:12345/{SECRET}@host/db",  # '/' in the password
    f"postgresql://bridge:{SECRET}#x@host/db",  # '#'
    f"postgresql://bridge:{SECRET}?x@host/db",  # '?'
    f"postgresql://bridge:{SECRET}@x@host/db",  # '@': asyncpg and Python cut differently
    f"postgresql://bridge:{SECRET}%zz@host/db",  # a '%' that is no escape
    f"postgresql://bridge:{SECRET}%@host/db",
    f"postgresql://bridge:{SECRET}@host:port/db",  # bad ports
    f"postgresql://bridge:{SECRET}@host:70000/db",
    f"postgresql://bridge:{SECRET}@host:0/db",
    f"postgresql://bridge:{SECRET}@host:/db",
    f"postgresql://bridge:{SECRET}@host:5432,other:5432/db",
    f"postgresql://bridge:{SECRET}@/db",  # missing host
    f"postgresql://bridge:{SECRET}@",
    "postgresql://",
    f"postgresql://bridge:{SECRET}@[::1/db",
    f"postgresql://bridge:{SECRET} x@host/db",  # whitespace, control characters
    f"postgresql://bridge:{SECRET}\x7f@host/db",
    f"postgresql://bridge:{SECRET}@host/db/more",
    f"mysql://bridge:{SECRET}@host/db",  # unknown schemes
    f"postgresql+asyncpg://bridge:{SECRET}@host/db",
    f"bridge:{SECRET}@host/db",
]


@pytest.mark.parametrize("url", NASTY_DATABASE_URLS)
def test_a_database_url_that_does_not_parse_is_a_bad_value_showing_no_secret(url: str) -> None:
    with pytest.raises(SettingsError) as info:
        load({"BRIDGE_DATABASE_URL": url})
    message = str(info.value)
    assert message.startswith("BRIDGE_DATABASE_URL: ") and "\n" not in message
    assert SECRET not in message and "12345" not in message
    for part in ("x@host", "70000", "other", "db/more", "[::1"):
        assert part not in message
    if url.startswith("postgresql://") and "@" in url:
        assert "a password must be percent-encoded" in message
    assert describe(url) in ("(an unparseable PostgreSQL URL)",)


@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        ("postgresql://u:pw%21@db:5432/bridge", "postgresql://u@db:5432/bridge", "pw!"),
        ("postgres://u:a%2Fb%23c%3Fd%40e%25@db/x", "postgres://u@db:5432/x", "a/b#c?d@e%"),
        ("postgresql://u:p:w@db:6432/x", "postgresql://u@db:6432/x", "p:w"),
        ("postgresql://u@[::1]:5433/x?sslmode=require", "postgresql://u@[::1]:5433/x", None),
        ("postgresql://db/x?password=qpw", "postgresql://db:5432/x", "qpw"),
    ],
)
def test_a_database_url_is_shown_as_scheme_user_host_port_database(
    url: str, shown: str, secret: str | None
) -> None:
    database = load({"BRIDGE_DATABASE_URL": url}).database
    assert str(database) == describe(url) == describe_dsn(url) == shown
    assert repr(database).count("pw") == 0
    if secret is not None:
        assert secret in load({"BRIDGE_DATABASE_URL": url}).secret_values()


def test_callback_host_and_tenant_caps() -> None:
    s = load({})
    assert (s.callback_host_concurrency, s.callback_tenant_concurrency) == (8, 16)
    s = load(
        {"BRIDGE_CALLBACK_HOST_CONCURRENCY": "2", "BRIDGE_CALLBACK_TENANT_CONCURRENCY": "3"},
    )
    assert (s.callback_host_concurrency, s.callback_tenant_concurrency) == (2, 3)
    # A flag beats the environment, as for every setting that is not a secret.
    s = load(
        {"BRIDGE_CALLBACK_HOST_CONCURRENCY": "2"},
        {"callback_host_concurrency": "5", "callback_tenant_concurrency": "7"},
    )
    assert (s.callback_host_concurrency, s.callback_tenant_concurrency) == (5, 7)
    # A cap above BRIDGE_CALLBACK_CONCURRENCY is allowed: it just never binds.
    s = load({"BRIDGE_CALLBACK_CONCURRENCY": "4", "BRIDGE_CALLBACK_TENANT_CONCURRENCY": "100"})
    assert (s.callback_concurrency, s.callback_tenant_concurrency) == (4, 100)


@pytest.mark.parametrize(
    "var", ["BRIDGE_CALLBACK_HOST_CONCURRENCY", "BRIDGE_CALLBACK_TENANT_CONCURRENCY"]
)
@pytest.mark.parametrize("value", ["0", "-1", "1.5", "many"])
def test_callback_caps_are_positive_whole_numbers(var: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load({var: value})
    assert str(info.value).startswith(f"{var}: ")


# -- signature schemes and rotation ----------------------------------------------------------

OWN_SECRET = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"


def test_signature_schemes_and_rotation_overlap() -> None:
    s = load({})
    assert s.signature_schemes == () and s.scheme_for("default") == "v1"
    assert s.secret_rotation_overlap == 24 * 3600
    s = load(
        {
            "BRIDGE_API_KEYS": "a:1234,b:5678",
            "BRIDGE_SIGNATURE_SCHEMES": "a:v1a, b:v1",
            "BRIDGE_SECRET_ROTATION_OVERLAP": "90m",
            "BRIDGE_WEBHOOK_SECRETS": f"b:{OWN_SECRET}",
        }
    )
    assert (s.scheme_for("a"), s.scheme_for("b"), s.scheme_for("c")) == ("v1a", "v1", "v1")
    assert s.secret_rotation_overlap == 5400
    # Non-secret settings have flags.
    s = load({"BRIDGE_API_KEYS": "a:1234"}, {"signature_schemes": "a:v1a"})
    assert s.scheme_for("a") == "v1a"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_SIGNATURE_SCHEMES": "a:v2"}, "unknown signature scheme 'v2'"),
        ({"BRIDGE_SIGNATURE_SCHEMES": "a"}, "expected comma-separated tenant:v1a"),
        ({"BRIDGE_SIGNATURE_SCHEMES": "a:v1a,a:v1"}, "tenant 'a' is given two schemes"),
        ({"BRIDGE_SIGNATURE_SCHEMES": "c:v1a"}, "names tenant 'c', which has no key"),
        ({"BRIDGE_SECRET_ROTATION_OVERLAP": "0"}, "must be greater than zero"),
        ({"BRIDGE_SECRET_ROTATION_OVERLAP": "1d"}, "is not a duration"),
        (
            {"BRIDGE_SIGNATURE_SCHEMES": "a:v1a", "BRIDGE_WEBHOOK_SECRETS": f"a:{OWN_SECRET}"},
            "names tenant 'a', whose callbacks BRIDGE_SIGNATURE_SCHEMES signs with v1a",
        ),
    ],
)
def test_bad_signature_settings_name_their_variable_and_no_secret(
    env: dict[str, str], message: str
) -> None:
    var = next(iter(env)) if "WEBHOOK" not in "".join(env) else "BRIDGE_WEBHOOK_SECRETS"
    with pytest.raises(SettingsError) as info:
        load({"BRIDGE_API_KEYS": "a:1234,b:5678", **env})
    assert str(info.value).startswith(f"{var}: ") and message in str(info.value)
    assert OWN_SECRET.removeprefix("whsec_") not in str(info.value)


def test_a_shared_webhook_secret_may_stand_beside_v1a_tenants() -> None:
    s = load(
        {
            "BRIDGE_API_KEYS": "a:1234,b:5678",
            "BRIDGE_SIGNATURE_SCHEMES": "a:v1a",
            "BRIDGE_WEBHOOK_SECRETS": OWN_SECRET,
        }
    )
    assert s.scheme_for("a") == "v1a" and len(s.webhook_secrets) == 1


# -- BRIDGE_UPSTREAM_PROXY: a secret (its user-info), http:// only ---------------------------


def test_the_upstream_proxy_is_unset_by_default() -> None:
    assert load({}).upstream_proxy is None


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        ("http://proxy.internal:3128", "http://proxy.internal:3128"),
        ("http://proxy.internal:3128/", "http://proxy.internal:3128"),
        ("http://egress:p%40ss@10.0.0.5:8080", "http://egress:p%40ss@10.0.0.5:8080"),
        ("http://[fd00::5]:3128", "http://[fd00::5]:3128"),
        ("http://proxy", "http://proxy"),
    ],
)
def test_an_upstream_proxy_is_an_http_url(value: str, kept: str) -> None:
    assert load({"BRIDGE_UPSTREAM_PROXY": value}).upstream_proxy == kept


@pytest.mark.parametrize(
    "value",
    [
        "https://egress:hunter22@proxy:3128",  # TLS to the proxy: not supported
        "socks5://egress:hunter22@proxy:1080",
        "egress:hunter22@proxy:3128",
        "http://egress:hunter22@",  # no host
        "http://egress:hunter22@:3128",
        "http://egress:hunter22@proxy:99999",
        "http://egress:hunter22@proxy:0",
        "http://egress:hunter22@proxy:3128/path",
        "http://egress:hunter22@proxy:3128?x=1",
        "http://egress:hunter22@[fd00::5:3128",
    ],
)
def test_a_bad_upstream_proxy_is_a_bad_value_showing_no_user_info(value: str) -> None:
    with pytest.raises(SettingsError) as info:
        load({"BRIDGE_UPSTREAM_PROXY": value})
    message = str(info.value)
    assert message.startswith("BRIDGE_UPSTREAM_PROXY: ") and "\n" not in message
    assert "hunter22" not in message and "egress" not in message


def test_the_upstream_proxy_is_a_secret_never_a_flag(tmp_path: Path) -> None:
    assert "BRIDGE_UPSTREAM_PROXY" in [var.env for var in settings_vars() if var.secret]
    # A flag is not read (ps would show it); the environment and _FILE are.
    assert load({}, {"upstream_proxy": "http://proxy:3128"}).upstream_proxy is None
    path = tmp_path / "proxy"
    path.write_text("http://egress:s3cr3t-pw@proxy:3128\n")
    s = load({"BRIDGE_UPSTREAM_PROXY_FILE": str(path)})
    assert s.upstream_proxy == "http://egress:s3cr3t-pw@proxy:3128"
    assert "s3cr3t" not in repr(s)
    # What the log redactor is given: the URL, its user-info and its password.
    assert {"http://egress:s3cr3t-pw@proxy:3128", "egress:s3cr3t-pw", "s3cr3t-pw"} <= set(
        s.secret_values()
    )
    assert "egress" not in s.secret_values()  # a user name alone may be a common word


def test_an_upstream_proxy_without_user_info_holds_no_secret_but_itself() -> None:
    s = load({"BRIDGE_UPSTREAM_PROXY": "http://proxy:3128"})
    assert s.secret_values() == ["http://proxy:3128"]
