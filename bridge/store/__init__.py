"""Persistence behind one narrow interface; see base.Store."""

from __future__ import annotations

from bridge.settings import Database
from bridge.store.base import Conflict, Store, StoreError

__all__ = ["Conflict", "Store", "StoreError", "open_store"]


async def open_store(db: Database, *, exclusive: bool = True, migrate: bool = True) -> Store:
    """Open the configured database. ``exclusive`` takes SQLite's one-process lock."""
    if db.scheme == "sqlite":
        from bridge.store.sqlite import SQLiteStore

        return await SQLiteStore.open(db.path, exclusive=exclusive, migrate=migrate)
    raise StoreError(
        "BRIDGE_DATABASE_URL: PostgreSQL is not supported by this version yet; use sqlite:///file.db"
    )
