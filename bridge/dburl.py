"""PostgreSQL URLs: checked strictly, and described without their secrets.

A database URL holds a password, so no message may show it. ``describe`` is the one
way the bridge spells a URL for people (settings, start-up errors, store errors): it
shows the scheme, user, host, port and database, nothing else. ``check`` refuses a URL
that Python and asyncpg could read differently (an unencoded ``@``, ``/``, ``?``, ``#`` or
``%`` in the password moves the boundaries between the parts), and its messages quote no
part of the URL: in a URL that does not parse, any part might be the password.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote, urlsplit

__all__ = ["PostgresURL", "check", "describe", "secrets"]

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432

ENCODE_HINT = (
    "a password must be percent-encoded (/ as %2F, # as %23, ? as %3F, @ as %40, % as %25)"
)
_FORM = "postgresql://user:password@host:port/database"
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


class PostgresURL(NamedTuple):
    """The parts of a checked URL that may be shown; the password is not among them."""

    scheme: str
    user: str
    host: str
    port: int
    database: str


def _fail(problem: str) -> ValueError:
    return ValueError(f"{problem}; expected {_FORM}; {ENCODE_HINT}")


def check(url: str) -> PostgresURL:
    """The showable parts of ``url``; ValueError (quoting nothing of it) if it is not a
    URL that Python and asyncpg both read the same way."""
    if any(c.isspace() or ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in url):
        raise _fail("the URL holds whitespace or a control character")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in SCHEMES:
        raise _fail("not a postgresql:// URL")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _fail("the URL does not parse") from None
    netloc = parts.netloc
    if "#" in url:
        raise _fail("the URL does not parse ('#' starts a fragment)")
    # asyncpg splits user-info from host at the FIRST '@', Python at the last: two '@', or
    # one after the host (in the path, query or fragment), means a password was cut.
    if netloc.count("@") > 1 or "@" in url[len(scheme) + 3 + len(netloc) :]:
        raise _fail("the URL does not parse")
    userinfo, _, hostport = netloc.rpartition("@")
    if _BAD_ESCAPE.search(userinfo) or _BAD_ESCAPE.search(parts.path):
        raise _fail("a '%' that does not start a %XX escape")
    if "," in hostport:
        raise _fail("one host only")
    try:
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        raise _fail("the port is not a number from 1 to 65535") from None
    if not host:
        raise _fail("no host")
    if port is None and hostport.endswith(":"):
        raise _fail("an empty port")
    if port == 0:
        raise _fail("the port is not a number from 1 to 65535")
    database = parts.path[1:] if parts.path.startswith("/") else parts.path
    if "/" in database:
        raise _fail("the database name holds a '/'")
    user = userinfo.partition(":")[0]
    return PostgresURL(scheme.lower(), unquote(user), host, port or DEFAULT_PORT, unquote(database))


def describe(url: str) -> str:
    """``postgresql://user@host:port/database`` for messages: never a password, never the
    query; for a URL that does not pass :func:`check`, only that it does not parse."""
    try:
        p = check(url)
    except ValueError:
        return "(an unparseable PostgreSQL URL)"
    host = f"[{p.host}]" if ":" in p.host else p.host
    user = f"{p.user}@" if p.user else ""
    return f"{p.scheme}://{user}{host}:{p.port}/{p.database}"


def secrets(url: str) -> tuple[str, ...]:
    """Every spelling of the password ``url`` carries (user-info or ``?password=``), for
    redaction in logs."""
    found: set[str] = set()
    try:
        parts = urlsplit(url)
        if parts.password:
            found |= {parts.password, unquote(parts.password)}
        for name, value in parse_qsl(parts.query):
            if name == "password" and value:
                found.add(value)
    except ValueError:
        pass
    return tuple(sorted(s for s in found if s))
