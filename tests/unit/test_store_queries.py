"""The named queries: both dialects answer every name a verb asks for, with the same parameters."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from bridge.store import verbs
from bridge.store.postgres_driver import dollar
from bridge.store.queries import load, migrations, parse

SQLITE = load("sqlite")
POSTGRES = load("postgres", dollar)
# Statements a driver runs for itself, outside any verb: they have no twin.
SQLITE_ONLY = {"forget_watch_leases", "forget_job_leases"}  # the exclusive open's reset
POSTGRES_ONLY = {  # pause announcements, schema creation and migrations for replicas
    "notify",
    "schema_lock",
    "migrate_lock",
    "schema_version_table",
    "schema_version",
    "record_version",
}


def asked_for() -> set[str]:
    """Every query name verbs.py hands to an op (``q.row("name", ...)``, either arm of a
    conditional included)."""
    tree = ast.parse(Path(verbs.__file__).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "q"
            and node.func.attr != "notify"
        ):
            first = node.args[0]
            arms = [first.body, first.orelse] if isinstance(first, ast.IfExp) else [first]
            for arm in arms:
                assert isinstance(arm, ast.Constant), ast.unparse(node)
                names.add(arm.value)
    return names


def test_both_dialects_hold_the_same_names() -> None:
    assert set(SQLITE) - SQLITE_ONLY == set(POSTGRES) - POSTGRES_ONLY
    assert set(SQLITE) >= SQLITE_ONLY and set(POSTGRES) >= POSTGRES_ONLY


def test_every_name_a_verb_asks_for_is_there_and_every_query_is_asked_for() -> None:
    names = asked_for()
    assert "watch_by_token" in names and "rearm_watch" in names and "pull_watch" in names
    assert names == set(SQLITE) - SQLITE_ONLY


@pytest.mark.parametrize("name", sorted(set(SQLITE) & set(POSTGRES)))
def test_a_query_takes_the_same_parameters_in_both_dialects(name: str) -> None:
    assert set(SQLITE[name].params) == set(POSTGRES[name].params)


def test_postgres_gets_numbered_parameters_in_order_of_first_use() -> None:
    (q,) = parse(
        "-- name: q\n-- the watch's why: a :comment\n"
        "SELECT :b::float8, ':lit', \"col:x\", :a, :b -- :c's\n",
        placeholder=dollar,
    ).values()
    assert q.text == "SELECT $1::float8, ':lit', \"col:x\", $2, $1 -- :c's"
    assert q.params == ("b", "a")
    (same,) = parse("-- name: q\nSELECT :b, :a, :b;\n").values()
    assert (same.text, same.params) == ("SELECT :b, :a, :b", ("b", "a"))


def test_a_name_stands_once() -> None:
    with pytest.raises(ValueError, match="twice"):
        parse("-- name: q\nSELECT 1;\n-- name: q\nSELECT 2;\n")


def test_migrations_are_the_numbered_scripts_only() -> None:
    for dialect in ("sqlite", "postgres"):
        assert [v for v, _ in migrations(dialect)] == [1, 2, 3, 4, 5, 6, 7]
