"""The shared store: one PostgreSQL database, any number of replicas (asyncpg pool).

Every verb is one transaction (READ COMMITTED) and returns only after it committed; a
single-statement verb is its own. Observable behaviour is the SQLite store's; what
replicas add (see sql/postgres/queries.sql for how each statement does it):

- Due work is claimed in one statement with ``FOR UPDATE SKIP LOCKED``: concurrent
  claimers never wait for each other nor take the same row. Due-ness compares with the
  ``now`` the caller passes (the application clock that computed the due times); leases
  are set and compared on the database's clock, so replicas whose clocks disagree still
  agree on who holds what.
- Writers lock a watch before its jobs (see verbs.py). A deadlock or serialization
  failure the server reports anyway is retried: the verb's program runs again afresh.
- Migrations run under a transaction-scoped advisory lock, so replicas starting at once
  apply each one exactly once.

This is the one Python module that knows asyncpg.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

from bridge import dburl
from bridge.store import queries as q
from bridge.store import verbs
from bridge.store.base import StoreError
from bridge.store.engine import Store
from bridge.store.queries import Op, Program, load, migrations

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

T = TypeVar("T")


def dollar(n: int, name: str) -> str:
    """asyncpg's placeholders: ``$1``, ``$2``, ... in order of first use."""
    return f"${n}"


QUERIES = load("postgres", dollar)

# Failures that mean "the database cannot be used now", shown to callers as StoreError
# (503 from the API, a logged retry in the scheduler). Anything else is a bug and raises.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # class 57: shutdown, statement canceled
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.ReadOnlySQLTransactionError,  # a failover left us on a standby
    asyncpg.InvalidAuthorizationSpecificationError,  # class 28
    asyncpg.InvalidCatalogNameError,  # the database does not exist
    asyncpg.PostgresSystemError,  # class 58: I/O errors
    asyncpg.InterfaceError,  # connection or pool closed
)
_RETRIED = (asyncpg.DeadlockDetectedError, asyncpg.SerializationError)
_TRIES = 5


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier, whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


# How a URL is shown in messages: the one spelling, shared with bridge.settings.
describe_dsn = dburl.describe


async def _do(c: Conn, op: Op) -> Any:
    shape, name, params = (
        q.exec("notify", channel=op[1], payload=op[2]) if op[0] == "notify" else op
    )
    query = QUERIES[name]
    if shape == "many":
        if params:
            await c.executemany(query.text, [[p[n] for n in query.params] for p in params])
        return None
    args = [params[n] for n in query.params]
    if shape == "rows":
        return await c.fetch(query.text, *args)
    if shape == "row":
        return await c.fetchrow(query.text, *args)
    if shape == "val":
        return await c.fetchval(query.text, *args)
    status = await c.execute(query.text, *args)  # "UPDATE 3", "INSERT 0 1", "SELECT 1"
    count = status.rpartition(" ")[2]
    return int(count) if count.isdigit() else 0


async def _steps(c: Conn, program: Program[T]) -> T:
    try:
        op = program.send(None)
        while True:
            op = program.send(await _do(c, op))
    except StopIteration as done:
        return cast(T, done.value)


class PostgresDriver:
    shared = True  # any number of replicas

    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.where = describe_dsn(dsn)
        self.dsn = dsn
        self.schema = schema
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
        self._channels: set[str] = set()
        password = urlsplit(dsn).password
        self._secrets = tuple(p for p in {password, unquote(password or "")} if p)

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        migrate: bool = True,
        schema: str | None = None,
        max_size: int = 10,
        connect_timeout: float = 10.0,
    ) -> PostgresDriver:
        """Connect a pool (and by default migrate); StoreError with a one-line message.

        ``schema``, when given, is created if missing and is every connection's search_path.
        """
        settings: dict[str, str] = {}
        if schema is not None:
            settings["search_path"] = quote_ident(schema)
        if "application_name" not in parse_qs(urlsplit(dsn).query):
            settings["application_name"] = "uploadcare-bridge"
        driver = cls(dsn, schema)
        try:
            driver._pool = await asyncpg.create_pool(
                dsn,
                min_size=1,
                max_size=max_size,
                timeout=connect_timeout,
                command_timeout=60,
                server_settings=settings,
            )
        except Exception as exc:  # at connect time, any failure is the URL's or the server's
            # No chained cause: a traceback must not carry the URL and its password.
            raise StoreError(
                f"cannot connect to PostgreSQL at {driver.where}: {driver._reason(exc)}"
            ) from None
        try:
            if schema is not None:
                name = schema
                await driver._run(lambda c: driver._create_schema(c, name))
            if migrate:
                await driver.migrate()
        except BaseException:
            await driver.close()
            raise
        return driver

    @staticmethod
    async def _create_schema(c: Conn, schema: str) -> None:
        # IF NOT EXISTS alone still races in the catalog when replicas start together.
        await _do(c, q.exec("schema_lock", schema=schema))
        await c.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")

    async def migrate(self) -> int:
        """Apply pending migrations under an advisory lock; return the schema version."""

        async def migrate_tx(c: Conn) -> int:
            await _do(c, q.exec("migrate_lock"))
            await _do(c, q.exec("schema_version_table"))
            current: int = await _do(c, q.val("schema_version"))
            for version, script in migrations("postgres"):
                if version > current:
                    await c.execute(script)
                    await _do(c, q.exec("record_version", version=version))
                    current = version
            return current

        try:
            return await self._run(migrate_tx)
        except asyncpg.PostgresError as exc:
            raise StoreError(
                f"cannot migrate PostgreSQL at {self.where}: {self._reason(exc)}"
            ) from None

    async def close(self) -> None:
        listener, self._listener = self._listener, None
        self._channels.clear()
        if listener is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(listener.close(), 5)
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), 10)
        except _UNAVAILABLE:
            pool.terminate()

    # -- running programs ------------------------------------------------------------------

    async def run(self, program: Callable[[], Program[T]], *, tx: bool = True) -> T:
        # A fresh program at every try: a retried verb decides again from what it reads.
        return await self._run(lambda c: _steps(c, program()), tx=tx)

    async def ping(self) -> None:
        try:
            await asyncio.wait_for(self.run(verbs.ping, tx=False), 5)
        except TimeoutError:
            raise StoreError(f"PostgreSQL at {self.where} did not answer within 5s") from None

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """One connection listens on every channel; one callback per channel."""
        if channel in self._channels:
            return
        settings = {"search_path": quote_ident(self.schema)} if self.schema else {}
        try:
            if self._listener is None:
                self._listener = await asyncpg.connect(self.dsn, server_settings=settings)
            await self._listener.add_listener(channel, lambda *a: callback(str(a[-1])))
            self._channels.add(channel)
        except Exception as exc:
            raise StoreError(
                f"cannot listen on PostgreSQL at {self.where}: {self._reason(exc)}"
            ) from None

    # -- plumbing --------------------------------------------------------------------------

    def _reason(self, exc: BaseException) -> str:
        lines = str(exc).strip().splitlines()
        text = lines[0] if lines else type(exc).__name__
        if isinstance(exc, TimeoutError):
            text = "timed out"
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    async def _run(self, fn: Callable[[Conn], Awaitable[T]], *, tx: bool = True) -> T:
        """Run ``fn`` on a pooled connection, in a transaction unless ``tx`` is False."""
        for attempt in range(1, _TRIES + 1):
            pool = self._pool
            if pool is None:
                raise StoreError("the store is closed")
            try:
                async with pool.acquire() as conn:
                    if not tx:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except _RETRIED as exc:
                if attempt == _TRIES:
                    raise StoreError(f"PostgreSQL at {self.where}: {self._reason(exc)}") from None
                await asyncio.sleep(0.01 * attempt * (1 + random.random()))
            except _UNAVAILABLE as exc:
                if isinstance(exc, ValueError):  # a client-side data error is a bug
                    raise
                raise StoreError(
                    f"PostgreSQL at {self.where} is unavailable: {self._reason(exc)}"
                ) from None
        raise AssertionError("unreachable")


class PostgresStore(Store):
    """The Store on one PostgreSQL database (or one schema of it)."""

    def __init__(self, driver: PostgresDriver) -> None:
        super().__init__(driver)
        self.schema = driver.schema
        self.where = driver.where

    @classmethod
    async def open(cls, dsn: str, **kw: Any) -> PostgresStore:
        """``PostgresDriver.open``'s store."""
        return cls(await PostgresDriver.open(dsn, **kw))
