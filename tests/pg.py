"""PostgreSQL for tests: a fresh schema per test on ``BRIDGE_TEST_POSTGRES_URL``.

Without the variable, PostgreSQL params skip here; CI (``CI=true``) refuses to run without
it (see conftest.py), so they never skip silently there.
"""

from __future__ import annotations

import contextlib
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


@contextlib.asynccontextmanager
async def fresh_schema() -> AsyncIterator[str]:
    """A schema name no other test uses; the schema (made by the store) is dropped after."""
    name = f"bridge_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        yield name
    finally:
        admin = await _admin()
        try:
            await admin.execute(f"DROP SCHEMA IF EXISTS {quote_ident(name)} CASCADE")
        finally:
            await admin.close()


@contextlib.asynccontextmanager
async def postgres_store(**kw: Any) -> AsyncIterator[PostgresStore]:
    """A migrated store alone in a fresh schema."""
    async with fresh_schema() as schema:
        store = await PostgresStore.open(POSTGRES_URL, schema=schema, **kw)
        try:
            yield store
        finally:
            await store.close()


async def fetchval(schema: str, sql: str) -> Any:
    """One value from ``sql`` run in ``schema``, on a connection of its own."""
    admin = await _admin()
    try:
        await admin.execute(f"SET search_path = {quote_ident(schema)}")
        return await admin.fetchval(sql)
    finally:
        await admin.close()
