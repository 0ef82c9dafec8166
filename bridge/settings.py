"""Configuration: one frozen Settings object, built from the environment in one place.

Every setting that is not a secret can also be given as a ``bridge serve`` flag of the
same name (``BRIDGE_POLL_MAX_INTERVAL`` is ``--poll-max-interval``); flags win over the
environment. Secrets come only from the environment, or from ``NAME_FILE``.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bridge import dburl
from bridge.callback_hosts import CallbackHosts, parse_callback_hosts
from bridge.model import SIGNATURE_SCHEMES
from bridge.netpolicy import IPNetwork, parse_networks

SECRET_VARS = (
    "BRIDGE_API_KEYS",
    "UPLOADCARE_SECRET_KEY",
    "BRIDGE_WEBHOOK_SECRETS",
    "BRIDGE_DATABASE_URL",
    "BRIDGE_UPSTREAM_PROXY",
)

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
# \Z, not $: "$" also matches before a trailing newline.
PROJECT_RE = re.compile(r"^[a-z0-9-]{1,32}\Z")
# The project UPLOADCARE_PUBLIC_KEY / UPLOADCARE_SECRET_KEY configure (model.DEFAULT_PROJECT).
DEFAULT_PROJECT = "default"
_DURATION_RE = re.compile(r"^(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h)?$")
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


class SettingsError(Exception):
    """A bad setting. ``str()`` is one line that names the variable, never a secret value."""

    def __init__(self, var: str, message: str) -> None:
        super().__init__(f"{var}: {message}")
        self.var = var


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """``2.5`` or ``250ms``/``5s``/``5m``/``24h`` in seconds; ValueError when malformed."""
    m = _DURATION_RE.match(text.strip())
    if not m:
        raise ValueError(
            f"{text!r} is not a duration (a number of seconds like 2.5, or 250ms, 5s, 5m, 24h)"
        )
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds == 0 and not allow_zero:
        raise ValueError(f"{text!r} must be greater than zero")
    return seconds


@dataclass(frozen=True)
class Database:
    """Where the store lives. ``str()`` never shows a password."""

    scheme: str  # "sqlite" or "postgresql"
    path: str = ""  # sqlite file
    dsn: str = field(default="", repr=False)  # postgresql URL, password included

    def __str__(self) -> str:
        if self.scheme == "sqlite":
            return f"sqlite:{self.path}"
        return dburl.describe(self.dsn)

    @property
    def password(self) -> str | None:
        if self.scheme != "postgresql":
            return None
        pw = urlsplit(self.dsn).password
        return unquote(pw) if pw else None


def parse_database_url(url: str) -> Database:
    if url.startswith("sqlite:///"):
        path = url[len("sqlite:///") :]
        if not path or path == "/":
            raise ValueError(
                "a sqlite URL needs a file: sqlite:///bridge.db or sqlite:////abs/path.db"
            )
        return Database("sqlite", path=path)
    if url.startswith(tuple(f"{scheme}://" for scheme in dburl.SCHEMES)):
        dburl.check(url)  # its message quotes no part of the URL
        return Database("postgresql", dsn=url)
    raise ValueError(
        "expected sqlite:///relative.db, sqlite:////absolute.db or postgresql://user:pass@host:port/db"
    )


@dataclass(frozen=True)
class WebhookSecret:
    """A Standard Webhooks secret; ``tenant`` None means it serves every tenant without its own."""

    tenant: str | None
    secret: str = field(repr=False)


def validate_whsec(secret: str) -> str:
    if not secret.startswith("whsec_"):
        raise ValueError("each secret starts with whsec_ followed by base64")
    try:
        key = base64.b64decode(secret[len("whsec_") :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must be base64 after the prefix") from None
    if len(key) < 16:
        raise ValueError("a whsec_ secret must hold at least 16 bytes of key")
    return secret


def parse_webhook_secrets(text: str) -> tuple[WebhookSecret, ...]:
    out: list[WebhookSecret] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        tenant: str | None = None
        if ":" in entry:
            tenant, entry = (p.strip() for p in entry.split(":", 1))
            if not _TENANT_RE.match(tenant):
                raise ValueError("a tenant name is letters, digits, '_', '.' or '-'")
        out.append(WebhookSecret(tenant, validate_whsec(entry)))
    return tuple(out)


def parse_signature_schemes(text: str) -> tuple[tuple[str, str], ...]:
    """``tenant:v1a`` entries (``tenant:v1`` is the default, and allowed)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        tenant, sep, scheme = (p.strip() for p in entry.partition(":"))
        if not sep or not _TENANT_RE.match(tenant):
            raise ValueError(f"expected comma-separated tenant:v1a entries, not {entry!r}")
        if scheme not in SIGNATURE_SCHEMES:
            raise ValueError(f"unknown signature scheme {scheme!r} (known: v1, v1a)")
        if out.setdefault(tenant, scheme) != scheme:
            raise ValueError(f"tenant {tenant!r} is given two schemes")
    return tuple(out.items())


def parse_api_keys(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    seen: dict[str, str] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, secret = entry.partition(":")
        name, secret = name.strip(), secret.strip()
        if not sep or not name or not secret:
            raise ValueError("expected comma-separated name:secret pairs")
        if not _TENANT_RE.match(name):
            raise ValueError("a tenant name is letters, digits, '_', '.' or '-'")
        if seen.get(secret, name) != name:
            raise ValueError("one secret is given to two tenants")
        seen[secret] = name
        pairs.append((name, secret))
    return tuple(pairs)


@dataclass(frozen=True)
class Project:
    """An Uploadcare project: its name (the API's ``project``) and its REST API keys."""

    name: str
    public_key: str
    secret_key: str = field(default="", repr=False)


def project_secret_var(name: str) -> str:
    """``UPLOADCARE_SECRET_KEY_<NAME>``: the name upper-cased, ``-`` as ``_``."""
    return "UPLOADCARE_SECRET_KEY_" + name.upper().replace("-", "_")


def parse_uploadcare_projects(text: str) -> tuple[tuple[str, str], ...]:
    """``name:public_key`` pairs (the project ``default`` is UPLOADCARE_PUBLIC_KEY's)."""
    out: dict[str, str] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        name, sep, public_key = (p.strip() for p in entry.partition(":"))
        if not sep or not name or not public_key:
            raise ValueError("expected comma-separated name:public_key pairs")
        if not PROJECT_RE.match(name):
            raise ValueError(
                "a project name is 1 to 32 lower-case letters, digits or '-' "
                f"(one entry names {name[:40]!r})"
            )
        if name == DEFAULT_PROJECT:
            raise ValueError(
                "the project 'default' is UPLOADCARE_PUBLIC_KEY and UPLOADCARE_SECRET_KEY; "
                "give the others other names"
            )
        if name in out:
            raise ValueError(f"project {name!r} is given twice")
        out[name] = public_key
    return tuple(out.items())


def parse_tenant_projects(text: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """``tenant:project[+project...]`` entries: the projects each named tenant may use."""
    out: dict[str, tuple[str, ...]] = {}
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        tenant, sep, names = (p.strip() for p in entry.partition(":"))
        if not sep or not _TENANT_RE.match(tenant):
            raise ValueError(f"expected comma-separated tenant:project[+project...], not {entry!r}")
        projects = tuple(dict.fromkeys(n.strip() for n in names.split("+")))
        for name in projects:
            if not PROJECT_RE.match(name):
                raise ValueError(
                    f"tenant {tenant!r}: a project name is 1 to 32 lower-case letters, digits "
                    "or '-'"
                )
        if tenant in out:
            raise ValueError(f"tenant {tenant!r} is given twice")
        out[tenant] = projects
    return tuple(out.items())


def _parse_schedule(text: str) -> tuple[float, ...]:
    delays = tuple(parse_duration(p) for p in text.split(",") if p.strip())
    if not delays:
        raise ValueError("needs at least one delay")
    return delays


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise ValueError("a port is 0 to 65535 (0: any free port)")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise ValueError("must be a positive number")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return value

    return parse


def _http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("expected an absolute http(s) URL")
    return text.strip().rstrip("/")


def parse_proxy(text: str) -> str | None:
    """``BRIDGE_UPSTREAM_PROXY``: ``http://[user:pass@]host[:port][/]``; "" (unset) is None.

    A secret (its user-info is a password): no message quotes any part of it.
    """
    value = text.strip()
    if not value:
        return None
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise ValueError("not a URL: expected http://[user:password@]host:port") from None
    if parts.scheme != "http":
        raise ValueError(
            "expected an http:// proxy URL (http://[user:password@]host:port); the "
            "connection to the proxy is plain HTTP, upstream requests tunnel through it"
        )
    if not parts.hostname:
        raise ValueError("the proxy URL has no host: expected http://[user:password@]host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("a proxy URL is only http://[user:password@]host:port")
    if port == 0:
        raise ValueError("the proxy URL's port must be 1 to 65535")
    return value.rstrip("/")


def _text(text: str) -> str:
    return text.strip()


@dataclass(frozen=True)
class _Var:
    env: str
    attr: str
    default: str | None
    parse: Callable[[str], Any]
    secret: bool = False
    help: str = ""

    @property
    def flag(self) -> str:
        name = self.env.removeprefix("BRIDGE_")
        return "--" + name.lower().replace("_", "-")


_VARS: tuple[_Var, ...] = (
    _Var("BRIDGE_HOST", "host", "127.0.0.1", _text, help="address the API listens on"),
    _Var("BRIDGE_PORT", "port", "8080", _port, help="port the API listens on (0: any free port)"),
    _Var(
        "BRIDGE_DATABASE_URL",
        "database",
        "sqlite:///bridge.db",
        parse_database_url,
        secret=True,
        help="where jobs are kept: a SQLite file or a PostgreSQL database",
    ),
    _Var(
        "BRIDGE_API_KEYS",
        "api_keys",
        "",
        parse_api_keys,
        secret=True,
        help="name:secret pairs, one per tenant, that authenticate /v1 requests",
    ),
    _Var("UPLOADCARE_PUBLIC_KEY", "uploadcare_public_key", "", _text, help="REST API public key"),
    _Var(
        "UPLOADCARE_SECRET_KEY",
        "uploadcare_secret_key",
        "",
        _text,
        secret=True,
        help="REST API secret key, which signs every upstream request",
    ),
    _Var(
        "BRIDGE_UPLOADCARE_PROJECTS",
        "uploadcare_projects",
        "",
        parse_uploadcare_projects,
        help="further Uploadcare projects, name:public_key pairs; each one's secret key is "
        "UPLOADCARE_SECRET_KEY_<NAME> (upper case, '-' as '_')",
    ),
    _Var(
        "BRIDGE_TENANT_PROJECTS",
        "tenant_projects",
        "",
        parse_tenant_projects,
        help="tenant:project[+project...] entries: the projects whose tokens a tenant may "
        "register (a tenant not named may use 'default', if there is one)",
    ),
    _Var(
        "BRIDGE_UPSTREAM_URL",
        "upstream_url",
        "https://api.uploadcare.com",
        _http_url,
        help="base URL of Uploadcare's REST API",
    ),
    _Var(
        "BRIDGE_UPSTREAM_AUTH",
        "upstream_auth",
        "signed",
        _choice("signed", "simple"),
        help="how upstream requests authenticate: signed (an HMAC signature) or simple "
        "(the secret key itself, for tests only)",
    ),
    _Var(
        "BRIDGE_UPSTREAM_RPS",
        "upstream_rps",
        "20",
        _positive_float,
        help="upstream requests per second, at most",
    ),
    _Var(
        "BRIDGE_UPSTREAM_CONCURRENCY",
        "upstream_concurrency",
        "32",
        _positive_int,
        help="upstream requests in flight, at most",
    ),
    _Var(
        "BRIDGE_UPSTREAM_TIMEOUT",
        "upstream_timeout",
        "10s",
        parse_duration,
        help="how long one upstream request may take before it counts as failed",
    ),
    _Var(
        "BRIDGE_UPSTREAM_PROXY",
        "upstream_proxy",
        "",
        parse_proxy,
        secret=True,
        help="an http:// proxy for upstream requests only; callbacks never use a proxy",
    ),
    _Var(
        "BRIDGE_POLL_INITIAL_DELAY",
        "poll_initial_delay",
        "1s",
        lambda t: parse_duration(t, allow_zero=True),
        help="first poll after a registration",
    ),
    _Var(
        "BRIDGE_POLL_MIN_INTERVAL",
        "poll_min_interval",
        "2s",
        parse_duration,
        help="shortest time between two polls of one conversion",
    ),
    _Var(
        "BRIDGE_POLL_MAX_INTERVAL",
        "poll_max_interval",
        "60s",
        parse_duration,
        help="longest time between two polls of one conversion",
    ),
    _Var(
        "BRIDGE_JOB_DEADLINE",
        "job_deadline",
        "24h",
        parse_duration,
        help="a job still converting this long after registration ends as expired",
    ),
    _Var(
        "BRIDGE_WEBHOOK_SECRETS",
        "webhook_secrets",
        "",
        parse_webhook_secrets,
        secret=True,
        help="whsec_... or tenant:whsec_... entries that sign callbacks",
    ),
    _Var(
        "BRIDGE_SIGNATURE_SCHEMES",
        "signature_schemes",
        "",
        parse_signature_schemes,
        help="tenant:v1a entries: tenants whose callbacks are signed with Ed25519 only",
    ),
    _Var(
        "BRIDGE_SECRET_ROTATION_OVERLAP",
        "secret_rotation_overlap",
        "24h",
        parse_duration,
        help="how long a rotated-out generated secret or key keeps signing",
    ),
    _Var(
        "BRIDGE_CALLBACK_TIMEOUT",
        "callback_timeout",
        "15s",
        parse_duration,
        help="how long one delivery attempt may take, connect included",
    ),
    _Var(
        "BRIDGE_CALLBACK_RETRY_SCHEDULE",
        "callback_retry_schedule",
        "5s,5m,30m,2h,5h,10h,14h,20h,24h",
        _parse_schedule,
        help="delays between callback attempts after the first",
    ),
    _Var(
        "BRIDGE_CALLBACK_CONCURRENCY",
        "callback_concurrency",
        "64",
        _positive_int,
        help="callback deliveries in flight, at most",
    ),
    _Var(
        "BRIDGE_CALLBACK_HOST_CONCURRENCY",
        "callback_host_concurrency",
        "8",
        _positive_int,
        help="callback deliveries in flight to one host (host and port), at most",
    ),
    _Var(
        "BRIDGE_CALLBACK_TENANT_CONCURRENCY",
        "callback_tenant_concurrency",
        "16",
        _positive_int,
        help="callback deliveries in flight for one tenant, at most",
    ),
    _Var(
        "BRIDGE_CALLBACK_ALLOW_NETWORKS",
        "callback_allow_networks",
        "",
        parse_networks,  # strict: host bits set is a mistake to name, not a range to widen
        help="CIDRs exempt from the callback network policy",
    ),
    _Var(
        "BRIDGE_CALLBACK_HOSTS",
        "callback_hosts",
        "",
        parse_callback_hosts,
        help="[tenant:]host, *.domain or CIDR entries: the hosts callbacks may go to",
    ),
    _Var(
        "BRIDGE_RETENTION",
        "retention",
        "720h",
        parse_duration,
        help="how long finished jobs are kept before they are deleted with their attempts",
    ),
    _Var(
        "BRIDGE_LEASE",
        "lease",
        "30s",
        parse_duration,
        help="how long a replica owns the work it claimed (PostgreSQL)",
    ),
    _Var(
        "BRIDGE_SHUTDOWN_GRACE",
        "shutdown_grace",
        "20s",
        parse_duration,
        help="time given to in-flight work on SIGTERM or SIGINT",
    ),
    _Var(
        "BRIDGE_LOG_FORMAT",
        "log_format",
        "json",
        _choice("json", "console"),
        help="json (one object per line) or console (for people)",
    ),
    _Var(
        "BRIDGE_LOG_LEVEL",
        "log_level",
        "info",
        _choice("debug", "info", "warning", "error"),
        help="the least severe log level written: debug, info, warning or error",
    ),
)


_DEFAULTS = {var.env: var.default for var in _VARS if var.default}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database: Database = field(default_factory=lambda: Database("sqlite", path="bridge.db"))
    api_keys: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    insecure_no_auth: bool = False
    uploadcare_public_key: str = ""
    uploadcare_secret_key: str = field(default="", repr=False)
    # BRIDGE_UPLOADCARE_PROJECTS: (name, public key); their secret keys, read from
    # UPLOADCARE_SECRET_KEY_<NAME>, as (name, secret) for those that have one.
    uploadcare_projects: tuple[tuple[str, str], ...] = ()
    project_secrets: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    tenant_projects: tuple[tuple[str, tuple[str, ...]], ...] = ()
    upstream_url: str = "https://api.uploadcare.com"
    upstream_auth: str = "signed"
    upstream_rps: float = 20.0
    upstream_concurrency: int = 32
    upstream_timeout: float = 10.0
    upstream_proxy: str | None = field(default=None, repr=False)  # a secret (user-info)
    poll_initial_delay: float = 1.0
    poll_min_interval: float = 2.0
    poll_max_interval: float = 60.0
    job_deadline: float = 86400.0
    webhook_secrets: tuple[WebhookSecret, ...] = field(default=(), repr=False)
    signature_schemes: tuple[tuple[str, str], ...] = ()  # (tenant, scheme) not v1's default
    secret_rotation_overlap: float = 86400.0
    callback_timeout: float = 15.0
    callback_retry_schedule: tuple[float, ...] = (
        5.0,
        300.0,
        1800.0,
        7200.0,
        18000.0,
        36000.0,
        50400.0,
        72000.0,
        86400.0,
    )
    callback_concurrency: int = 64
    # Per process; a cap above callback_concurrency simply never binds (no error).
    callback_host_concurrency: int = 8
    callback_tenant_concurrency: int = 16
    callback_allow_networks: tuple[IPNetwork, ...] = ()
    callback_hosts: CallbackHosts = field(default_factory=CallbackHosts)
    retention: float = 720 * 3600.0
    lease: float = 30.0
    shutdown_grace: float = 20.0
    log_format: str = "json"
    log_level: str = "info"

    @property
    def tenants(self) -> tuple[str, ...]:
        """Every tenant the API can authenticate, in the order the keys were given."""
        if not self.api_keys:
            return ("default",)
        return tuple(dict.fromkeys(name for name, _ in self.api_keys))

    @property
    def projects(self) -> dict[str, Project]:
        """Every configured Uploadcare project by name: ``default`` (UPLOADCARE_PUBLIC_KEY)
        first when set, then BRIDGE_UPLOADCARE_PROJECTS in order. A project whose secret key
        is missing has an empty one (``check_serve`` refuses to start with it)."""
        out: dict[str, Project] = {}
        if self.uploadcare_public_key:
            out[DEFAULT_PROJECT] = Project(
                DEFAULT_PROJECT, self.uploadcare_public_key, self.uploadcare_secret_key
            )
        secrets = dict(self.project_secrets)
        for name, public_key in self.uploadcare_projects:
            out[name] = Project(name, public_key, secrets.get(name, ""))
        return out

    def projects_for(self, tenant: str) -> tuple[str, ...]:
        """The projects whose tokens ``tenant`` may register: its BRIDGE_TENANT_PROJECTS
        entry, else ``default`` when that project exists, else none."""
        named = dict(self.tenant_projects).get(tenant)
        if named is not None:
            return named
        return (DEFAULT_PROJECT,) if DEFAULT_PROJECT in self.projects else ()

    def scheme_for(self, tenant: str) -> str:
        """How ``tenant``'s callbacks are signed: ``v1`` (HMAC) unless configured ``v1a``."""
        return dict(self.signature_schemes).get(tenant, "v1")

    def secret_values(self) -> list[str]:
        """Every secret string this configuration holds, for redaction in logs."""
        values = [s for _, s in self.api_keys]
        values += [w.secret for w in self.webhook_secrets]
        if self.uploadcare_secret_key:
            values.append(self.uploadcare_secret_key)
        values += [secret for _, secret in self.project_secrets]
        if self.database.scheme == "postgresql":
            values += dburl.secrets(self.database.dsn)
        if self.upstream_proxy is not None:
            values += proxy_secrets(self.upstream_proxy)
        return [v for v in values if v]

    def check_serve(self) -> None:
        """What ``serve`` needs beyond a valid configuration."""
        if not self.uploadcare_public_key and not self.uploadcare_projects:
            raise SettingsError(
                "UPLOADCARE_PUBLIC_KEY",
                "not set; give your Uploadcare project's public key (or name projects in "
                "BRIDGE_UPLOADCARE_PROJECTS)",
            )
        if self.uploadcare_public_key and not self.uploadcare_secret_key:
            raise SettingsError(
                "UPLOADCARE_SECRET_KEY",
                "not set; give your Uploadcare project's secret key "
                "(or UPLOADCARE_SECRET_KEY_FILE)",
            )
        for project in self.projects.values():
            if not project.secret_key:
                var = project_secret_var(project.name)
                raise SettingsError(
                    var,
                    f"not set; give the secret key of Uploadcare project {project.name!r} "
                    f"(or {var}_FILE)",
                )
        if not self.api_keys and not self.insecure_no_auth:
            raise SettingsError(
                "BRIDGE_API_KEYS",
                "not set; give name:secret pairs, or start with --insecure-no-auth to accept "
                "every request as tenant 'default'",
            )


def proxy_secrets(proxy: str) -> list[str]:
    """What of a proxy URL must never be logged: the whole URL, its user-info, its password
    (as written and decoded). Not the user name alone: it may be a common word."""
    parts = urlsplit(proxy)
    out = [proxy]
    if "@" in parts.netloc:
        userinfo = parts.netloc.rpartition("@")[0]
        out.append(userinfo)
        if parts.password:
            out += [parts.password, unquote(parts.password)]
    return out


def _empty(default: str | None) -> str:
    if default:
        return f"set but empty; give a value, or unset it for the default ({default})"
    return "set but empty; give a value, or unset it"


def read_var(env: Mapping[str, str], name: str, *, secret: bool = False) -> str | None:
    """The raw value of variable ``name``, from NAME or (``secret``) NAME_FILE; None if unset.

    Set but empty (or only whitespace) is a bad value, never "use the default": a
    template that left a value out must not start a service configured by accident. A
    file's value is its content without trailing line breaks; an empty one is bad too.
    """
    value = env.get(name)
    if value is not None and not value.strip():
        raise SettingsError(name, _empty(_DEFAULTS.get(name)))
    if secret:
        file_var = name + "_FILE"
        path = env.get(file_var)
        if path is not None:
            if not path.strip():
                raise SettingsError(file_var, "set but empty; give the path of a file, or unset it")
            if value is not None:
                raise SettingsError(name, f"set either {name} or {file_var}, not both")
            try:
                value = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise SettingsError(file_var, f"cannot read {path}: {exc.strerror}") from None
            except UnicodeDecodeError:
                raise SettingsError(file_var, f"{path} is not UTF-8 text") from None
            if not value.strip():
                raise SettingsError(file_var, f"{path} is empty")
    return value


def load(env: Mapping[str, str], flags: Mapping[str, Any] | None = None) -> Settings:
    """Build and validate Settings; raises SettingsError naming the first bad variable."""
    flags = flags or {}
    values: dict[str, Any] = {}
    for var in _VARS:
        raw = flags.get(var.attr) if not var.secret else None
        if raw is not None and not str(raw).strip():
            raise SettingsError(var.env, f"{var.flag} is empty; give a value, or leave it out")
        if raw is None:
            raw = read_var(env, var.env, secret=var.secret)
        if raw is None:
            raw = var.default
        assert raw is not None
        try:
            values[var.attr] = var.parse(raw)
        except ValueError as exc:
            # A secret's value is never echoed: the parsers' messages for secrets name no value.
            raise SettingsError(var.env, str(exc)) from None
    values["insecure_no_auth"] = bool(flags.get("insecure_no_auth", False))
    if (
        values["uploadcare_secret_key"]
        and not values["uploadcare_public_key"]
        and values["uploadcare_projects"]
    ):
        raise SettingsError(
            "UPLOADCARE_SECRET_KEY",
            "set without UPLOADCARE_PUBLIC_KEY: the project 'default' needs both (the "
            "projects of BRIDGE_UPLOADCARE_PROJECTS take UPLOADCARE_SECRET_KEY_<NAME>)",
        )
    # Each further project's secret key, by a name made from the project's.
    secrets: list[tuple[str, str]] = []
    for name, _ in values["uploadcare_projects"]:
        raw = read_var(env, project_secret_var(name), secret=True)
        if raw is not None:
            secrets.append((name, raw.strip()))
    values["project_secrets"] = tuple(secrets)
    settings = Settings(**values)
    _check_consistency(settings)
    return settings


def _check_consistency(s: Settings) -> None:
    if s.poll_min_interval > s.poll_max_interval:
        raise SettingsError(
            "BRIDGE_POLL_MIN_INTERVAL",
            f"{s.poll_min_interval:g}s is above BRIDGE_POLL_MAX_INTERVAL "
            f"({s.poll_max_interval:g}s)",
        )
    longest = max(s.callback_timeout, s.upstream_timeout)
    if s.lease <= longest:
        raise SettingsError(
            "BRIDGE_LEASE",
            f"{s.lease:g}s must be longer than BRIDGE_CALLBACK_TIMEOUT ({s.callback_timeout:g}s) "
            f"and BRIDGE_UPSTREAM_TIMEOUT ({s.upstream_timeout:g}s)",
        )
    tenants = set(s.tenants)
    if s.api_keys or s.insecure_no_auth:
        for name in sorted(s.callback_hosts.tenants() - tenants):
            raise SettingsError(
                "BRIDGE_CALLBACK_HOSTS",
                f"names tenant {name!r}, which has no key in BRIDGE_API_KEYS; refused rather "
                "than ignored, since a misspelt tenant could be left unrestricted",
            )
    for w in s.webhook_secrets:
        if w.tenant is not None and tenants and w.tenant not in tenants and s.api_keys:
            raise SettingsError(
                "BRIDGE_WEBHOOK_SECRETS",
                f"names tenant {w.tenant!r}, which has no key in BRIDGE_API_KEYS",
            )
        if w.tenant is not None and s.scheme_for(w.tenant) == "v1a":
            raise SettingsError(
                "BRIDGE_WEBHOOK_SECRETS",
                f"names tenant {w.tenant!r}, whose callbacks BRIDGE_SIGNATURE_SCHEMES signs "
                "with v1a (its own Ed25519 key pair) only; remove that entry",
            )
    _check_tenant_projects(s, tenants)
    if s.api_keys or s.insecure_no_auth:
        for name, _ in s.signature_schemes:
            if name not in tenants:
                raise SettingsError(
                    "BRIDGE_SIGNATURE_SCHEMES",
                    f"names tenant {name!r}, which has no key in BRIDGE_API_KEYS",
                )


def _check_tenant_projects(s: Settings, tenants: set[str]) -> None:
    projects = s.projects
    for tenant, names in s.tenant_projects:
        if (s.api_keys or s.insecure_no_auth) and tenant not in tenants:
            raise SettingsError(
                "BRIDGE_TENANT_PROJECTS",
                f"names tenant {tenant!r}, which has no key in BRIDGE_API_KEYS",
            )
        for name in names:
            if name not in projects:
                raise SettingsError(
                    "BRIDGE_TENANT_PROJECTS",
                    f"gives tenant {tenant!r} project {name!r}, which is not configured "
                    "(BRIDGE_UPLOADCARE_PROJECTS, or UPLOADCARE_PUBLIC_KEY for 'default')",
                )


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting that is not a secret; None means 'from the environment'."""
    for var in _VARS:
        if var.secret:
            continue
        default = f" (default {var.default})" if var.default else ""
        parser.add_argument(
            var.flag,
            dest=var.attr,
            default=None,
            metavar="VALUE",
            help=f"{var.help or var.env}{default}; env {var.env}",
        )
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="accept /v1 requests without a bearer secret, all as tenant 'default'",
    )


def settings_vars() -> tuple[_Var, ...]:
    """Every variable :func:`load` reads (``env``, ``attr``, ``flag``, ``secret``, ``default``)."""
    return _VARS
