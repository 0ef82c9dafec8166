"""PostgreSQL for tests, on ``BRIDGE_TEST_POSTGRES_URL``.

``postgres_store`` gives a migrated store alone in this process's shared schema, emptied back
to what the migrations left before each use; ``fresh_schema`` gives a schema no other test
uses, for the tests of migrating and of creating the schema. Running the seven migrations
took 0.1-0.2 s of server time per store, most of the fast tiers' PostgreSQL time; emptying
the tables takes a few milliseconds (test_store.py holds the emptied schema to what a fresh
migration leaves).

Without the variable, PostgreSQL params skip here; CI (``CI=true``) refuses to run without
it (see conftest.py), so they never skip silently there.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import dataclasses
import os
import secrets
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.store.postgres_driver import PostgresStore, quote_ident

POSTGRES_URL = os.environ.get("BRIDGE_TEST_POSTGRES_URL", "")
needs_postgres = pytest.mark.skipif(not POSTGRES_URL, reason="BRIDGE_TEST_POSTGRES_URL is not set")
# A store fixture's param that runs only where PostgreSQL is given.
POSTGRES = pytest.param("postgres", marks=needs_postgres)


async def _admin() -> Any:
    import asyncpg

    return await asyncpg.connect(POSTGRES_URL)


def _schema_name() -> str:
    # The pid keeps parallel test processes (pytest-xdist workers) apart.
    return f"bridge_test_{os.getpid()}_{secrets.token_hex(4)}"


async def _drop(name: str) -> None:
    admin = await _admin()
    try:
        await admin.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A schema name no other test uses; the schema (made by the store) is dropped after."""
    name = _schema_name()
    try:
        yield name
    finally:
        await _drop(name)


@dataclasses.dataclass(frozen=True)
class _Shared:
    """This process's migrated schema and how to put it back as the migrations left it."""

    schema: str
    empty: str  # deletes every row (referencing tables first), sequences back to their start
    seed: dict[str, tuple[list[str], list[tuple[Any, ...]]]]  # table: (columns, rows) migrated


_shared: _Shared | None = None


async def _snapshot(admin: Any, schema: str) -> _Shared:
    tables = [
        r["tablename"]
        for r in await admin.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
        )
    ]
    # (referencing, referenced) foreign keys inside the schema: a referencing table's rows go
    # first, so each DELETE leaves nothing that points at a missing row.
    edges = {
        (r["child"], r["parent"])
        for r in await admin.fetch(
            "SELECT c.conrelid::regclass::text AS child, c.confrelid::regclass::text AS parent"
            " FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
            " WHERE c.contype = 'f' AND n.nspname = $1",
            schema,
        )
    }
    names = {f"{quote_ident(schema)}.{quote_ident(t)}": t for t in tables}
    names.update({quote_ident(t): t for t in tables})
    refs = {(names.get(c, c), names.get(p, p)) for c, p in edges if c != p}
    order: list[str] = []
    left = list(tables)
    while left:
        # A table no remaining table references can go now.
        ready = [t for t in left if not any(p == t and c in left for c, p in refs)]
        assert ready, f"a foreign key cycle among {left}"
        order += ready
        left = [t for t in left if t not in ready]
    sequences = await admin.fetch(
        "SELECT sequencename, start_value FROM pg_sequences WHERE schemaname = $1", schema
    )
    q = quote_ident(schema)
    empty = [f"DELETE FROM {q}.{quote_ident(t)}" for t in order]
    empty += [
        f"SELECT setval('{q}.{quote_ident(s['sequencename'])}', {int(s['start_value'])}, false)"
        for s in sequences
    ]
    seed: dict[str, tuple[list[str], list[tuple[Any, ...]]]] = {}
    for t in tables:
        columns = [
            r["column_name"]
            for r in await admin.fetch(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = $1"
                " AND table_name = $2 AND is_generated = 'NEVER' ORDER BY ordinal_position",
                schema,
                t,
            )
        ]
        rows = await admin.fetch(
            f"SELECT {', '.join(quote_ident(c) for c in columns)} FROM {q}.{quote_ident(t)}"
        )
        if rows:
            seed[t] = (columns, [tuple(r) for r in rows])
    return _Shared(schema, ";\n".join(empty), seed)


async def shared_schema() -> str:
    """This process's migrated schema, holding just what the migrations left in it."""
    global _shared
    admin = await _admin()
    try:
        if _shared is None:
            name = _schema_name()
            atexit.register(lambda: asyncio.run(_drop(name)))
            await (await PostgresStore.open(POSTGRES_URL, schema=name)).close()
            _shared = await _snapshot(admin, name)
        else:
            async with admin.transaction():
                await admin.execute(_shared.empty)
                for table, (columns, rows) in _shared.seed.items():
                    await admin.copy_records_to_table(
                        table, records=rows, columns=columns, schema_name=_shared.schema
                    )
        return _shared.schema
    finally:
        await admin.close()


@contextlib.asynccontextmanager
async def postgres_store(**kw: Any) -> AsyncIterator[PostgresStore]:
    """A migrated store alone in this process's shared schema, as the migrations left it.

    Tests in one process run one at a time, and each store is closed before the next test
    takes the schema (the schema is emptied as the next one takes it, so a test that failed
    half-way leaves nothing behind).
    """
    store = await PostgresStore.open(POSTGRES_URL, schema=await shared_schema(), **kw)
    try:
        yield store
    finally:
        await store.close()


async def contents(schema: str) -> dict[str, Any]:
    """Every table's rows (sorted) and every sequence's state in ``schema``: what a test sees."""
    admin = await _admin()
    try:
        found: dict[str, Any] = {}
        for r in await admin.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
        ):
            rows = await admin.fetch(
                f"SELECT * FROM {quote_ident(schema)}.{quote_ident(r['tablename'])}"
            )
            found[r["tablename"]] = sorted(repr(tuple(row.items())) for row in rows)
        for r in await admin.fetch(
            "SELECT sequencename, last_value, start_value FROM pg_sequences"
            " WHERE schemaname = $1 ORDER BY 1",
            schema,
        ):
            found[f"sequence {r['sequencename']}"] = (r["last_value"], r["start_value"])
        return found
    finally:
        await admin.close()


async def fetchval(schema: str, sql: str) -> Any:
    """One value from ``sql`` run in ``schema``, on a connection of its own."""
    admin = await _admin()
    try:
        await admin.execute(f"SET search_path = {quote_ident(schema)}")
        return await admin.fetchval(sql)
    finally:
        await admin.close()
