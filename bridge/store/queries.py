"""Named SQL and the operations a verb program yields.

The statements live in ``sql/<dialect>/queries.sql`` under ``-- name: <name>`` headers;
``sql/common/queries.sql`` holds those that both dialects run as they are written. Every
statement takes ``:name`` parameters. How they are bound is the driver's choice
(``Placeholder``): SQLite binds them from a dict as they stand; the PostgreSQL driver
has them rewritten to ``$1..$n`` here, once, at import.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal, TypeAlias, TypeVar

T = TypeVar("T")

Shape = Literal["rows", "row", "val", "exec", "many", "notify"]


# One request of a verb program to its driver: (shape, name, params). The name is the
# query's, or a channel for "notify"; params a dict, a list of dicts for "many", the
# payload for "notify". A plain tuple: a verb makes one per statement.
Op: TypeAlias = tuple[Shape, str, Any]


# A verb: yields Ops, is sent each one's result, returns the verb's result.
Program: TypeAlias = Generator[Op, Any, T]


def rows(name: str, params: Mapping[str, Any] | None = None, /, **more: Any) -> Op:
    """Every row."""
    return ("rows", name, _params(params, more))


def row(name: str, params: Mapping[str, Any] | None = None, /, **more: Any) -> Op:
    """The first row, or None."""
    return ("row", name, _params(params, more))


def val(name: str, params: Mapping[str, Any] | None = None, /, **more: Any) -> Op:
    """The first row's first value, or None."""
    return ("val", name, _params(params, more))


def exec(name: str, params: Mapping[str, Any] | None = None, /, **more: Any) -> Op:
    """Run it for its effect; the result is how many rows it touched."""
    return ("exec", name, _params(params, more))


def _params(params: Mapping[str, Any] | None, more: dict[str, Any]) -> Mapping[str, Any]:
    # A verb that keeps its parameters in one dict passes it as it is: no copy per query.
    if params is None:
        return more
    return {**params, **more} if more else params


def many(name: str, params: list[dict[str, Any]]) -> Op:
    """Run it once for each dict (nothing when there are none)."""
    return ("many", name, params)


def notify(channel: str, payload: str) -> Op:
    """Tell every process listening on ``channel``, at commit (a no-op for one process)."""
    return ("notify", channel, payload)


@dataclass(frozen=True, slots=True)
class Query:
    name: str
    text: str  # as the driver sends it
    params: tuple[str, ...]  # the named parameters, in the order PostgreSQL's $n take them


# String literals, quoted identifiers, comments and :: casts pass unchanged; :name is a
# parameter. One scan from the left, so a quote inside a comment starts no literal.
_TOKENS = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|::|:([A-Za-z_]\w*)""")
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


# How a driver spells the n-th distinct parameter (1-based) called ``name``; None keeps
# ``:name`` as written.
Placeholder: TypeAlias = Callable[[int, str], str] | None


def _bind(sql: str, placeholder: Placeholder) -> tuple[str, tuple[str, ...]]:
    names: list[str] = []

    def one(m: re.Match[str]) -> str:
        if m[1] is None:
            return m[0]
        if m[1] not in names:
            names.append(m[1])
        return placeholder(names.index(m[1]) + 1, m[1]) if placeholder else m[0]

    return _TOKENS.sub(one, sql), tuple(names)


def parse(text: str, *, placeholder: Placeholder = None) -> dict[str, Query]:
    """The queries in one file: a ``-- name:`` header, then the statement. Whole-line
    comments (the why of each statement) and blank lines stay in the file."""
    parts = _HEADER.split(text)
    out: dict[str, Query] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("--")]
        sql, names = _bind("\n".join(lines).rstrip().rstrip(";"), placeholder)
        if name in out:
            raise ValueError(f"query {name} is defined twice")
        out[name] = Query(name, sql, names)
    return out


def _read(*path: str) -> str:
    return resources.files("bridge.store").joinpath("sql", *path).read_text(encoding="utf-8")


def load(dialect: str, placeholder: Placeholder = None) -> dict[str, Query]:
    """The common queries and the dialect's own; a name may stand in only one of them."""
    common = parse(_read("common", "queries.sql"), placeholder=placeholder)
    own = parse(_read(dialect, "queries.sql"), placeholder=placeholder)
    if both := common.keys() & own.keys():
        raise ValueError(f"queries both common and {dialect}-specific: {sorted(both)}")
    return common | own


def migrations(dialect: str) -> list[tuple[int, str]]:
    """The numbered schema scripts (``NNN_name.sql``), in order."""
    folder = resources.files("bridge.store").joinpath("sql", dialect)
    out = []
    for entry in folder.iterdir():
        number, _, rest = entry.name.partition("_")
        if number.isdigit() and rest.endswith(".sql"):
            out.append((int(number), entry.read_text(encoding="utf-8")))
    return sorted(out)
