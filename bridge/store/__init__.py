"""Persistence: the Store's verbs (engine.py) on a SQLite or PostgreSQL driver.

docs/architecture.md has the map of this package.
"""

from __future__ import annotations

from bridge.settings import Database
from bridge.store.base import Conflict, StoreError
from bridge.store.engine import Store

__all__ = ["Conflict", "Store", "StoreError", "open_store"]


async def open_store(db: Database, *, exclusive: bool = True, migrate: bool = True) -> Store:
    """Open the configured database. ``exclusive`` takes SQLite's one-process lock.

    PostgreSQL serves any number of processes, so ``exclusive`` means nothing there.
    """
    if db.scheme == "sqlite":
        from bridge.store.sqlite_driver import SQLiteStore

        return await SQLiteStore.open(db.path, exclusive=exclusive, migrate=migrate)
    if db.scheme == "postgresql":  # postgresql:// and postgres:// URLs alike
        from bridge.store.postgres_driver import PostgresStore

        return await PostgresStore.open(db.dsn, migrate=migrate)
    raise StoreError(f"BRIDGE_DATABASE_URL: unsupported database {db}")
