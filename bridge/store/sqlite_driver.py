"""The embedded store: one SQLite file, one process, one thread that owns the connection.

Every verb runs as one transaction on a single worker thread, so verbs never interleave
and a verb that returns has committed (WAL, ``synchronous=FULL``: a commit survives the
process being killed and the machine losing power). A verb's program runs to its end on
that thread: no hop back to the event loop between its statements. One ``serve`` per file
is enforced with an ``flock`` on ``<file>.lock``, which the kernel drops when the process
dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from bridge.store import verbs
from bridge.store.base import StoreError
from bridge.store.engine import Store
from bridge.store.queries import Op, Program, load, migrations
from bridge.store.rules import url_digest

T = TypeVar("T")

QUERIES = load("sqlite")

# The most verbs one group commit takes, so one group's latency stays bounded.
GROUP_LIMIT = 256


class _Verb(NamedTuple):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


def _store_error(exc: Exception) -> StoreError:
    return exc if isinstance(exc, StoreError) else StoreError(str(exc))


# Each statement's text, and the parameters it reads with json_each(): a list goes in as
# JSON text. sqlite3 takes the names a statement has from the dict, and leaves the rest.
_STATEMENTS = {
    name: (query.text, tuple(re.findall(r"json_each\(:(\w+)\)", query.text)))
    for name, query in QUERIES.items()
}


def _sha256(text: str | None) -> bytes | None:
    return None if text is None else url_digest(text)


def _bind(lists: tuple[str, ...], params: dict[str, Any]) -> dict[str, Any]:
    return params | {n: json.dumps(params[n]) for n in lists}


class FileLock:
    """An exclusive ``flock`` beside the database file; the kernel releases it on any exit."""

    def __init__(self, db_path: str) -> None:
        self.path = db_path + ".lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StoreError(
                f"database {os.path.abspath(self.path[: -len('.lock')])} is in use by another "
                f"bridge process (pid {holder}); stop it, or set BRIDGE_DATABASE_URL to another "
                "file (SQLite serves one process; use PostgreSQL for replicas)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class SQLiteDriver:
    shared = False  # one process holds the file (FileLock)

    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock: FileLock | None = None
        self._queue: list[_Verb] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str, *, exclusive: bool = True, migrate: bool = True) -> SQLiteDriver:
        """Open (and by default lock and migrate) the file; StoreError with a clear message."""
        driver = cls(path)
        try:
            await driver._call(driver._open_sync, exclusive, migrate)
        except BaseException:
            await driver.close()
            raise
        return driver

    def _open_sync(self, exclusive: bool, migrate: bool) -> None:
        parent = Path(self.path).parent
        if not parent.is_dir():
            raise StoreError(f"cannot open database {self.path}: folder {parent} does not exist")
        if exclusive:
            self._lock = FileLock(self.path)
            self._lock.acquire()
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 5000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # Migration 003 fills jobs.url_digest with it; verbs compute it in Python.
            conn.create_function("bridge_sha256", 1, _sha256, deterministic=True)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._conn = conn
        if migrate:
            self._migrate_sync()
        if exclusive:
            # This process holds the file alone: any lease in it belonged to one that died.
            with self._tx() as c:
                c.execute(QUERIES["forget_watch_leases"].text)
                c.execute(QUERIES["forget_job_leases"].text)

    def _migrate_sync(self) -> int:
        conn = self._db()
        # Foreign keys off while the schema changes (it cannot change inside a transaction):
        # a table rebuilt the way SQLite documents it (007's watches) is dropped and its
        # successor renamed into its place, which a live REFERENCES would follow or refuse.
        # Every reference is checked before the migration commits.
        conn.execute("PRAGMA foreign_keys = OFF")
        try:
            with self._tx() as c:
                current = c.execute("PRAGMA user_version").fetchone()[0]
                for version, script in migrations("sqlite"):
                    if version > current:
                        for statement in script.split(";\n"):
                            if statement.strip():
                                c.execute(statement)
                        c.execute(f"PRAGMA user_version = {version:d}")
                        current = version
                if c.execute("PRAGMA foreign_key_check").fetchone() is not None:
                    raise sqlite3.IntegrityError("a foreign key is broken after the migration")
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot migrate database {self.path}: {exc}") from None
        finally:
            conn.execute("PRAGMA foreign_keys = ON")
        return int(conn.execute("PRAGMA user_version").fetchone()[0])

    async def migrate(self) -> int:
        """Apply pending migrations; return the schema version."""
        return await self._call(self._migrate_sync)

    async def close(self) -> None:
        def close_sync() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._lock is not None:
                self._lock.release()
                self._lock = None

        with contextlib.suppress(StoreError):  # already closed
            await self._call(close_sync)
        self._executor.shutdown(wait=True)

    # -- running programs ------------------------------------------------------------------

    async def run(self, program: Callable[[], Program[T]], *, tx: bool = True) -> T:
        return await self._verb(self._run_sync, program, tx)

    def _run_sync(self, program: Callable[[], Program[T]], tx: bool) -> T:
        if not tx:
            return self._steps(self._db(), program())
        with self._tx() as c:
            return self._steps(c, program())

    def _steps(self, c: sqlite3.Connection, program: Program[T]) -> T:
        send, do = program.send, self._do
        try:
            op = send(None)
            while True:
                op = send(do(c, op))
        except StopIteration as done:
            return cast(T, done.value)

    @staticmethod
    def _do(c: sqlite3.Connection, op: Op) -> Any:
        shape, name, params = op
        if shape == "notify":  # one process: its own pauses are already in memory
            return None
        text, lists = _STATEMENTS[name]
        if shape == "many":
            c.executemany(text, [_bind(lists, p) for p in params] if lists else params)
            return None
        cursor = c.execute(text, _bind(lists, params) if lists else params)
        if shape == "exec":
            return cursor.rowcount
        if shape == "rows":
            return cursor.fetchall()
        found = cursor.fetchone()
        return found if shape == "row" or found is None else found[0]

    async def ping(self) -> None:
        try:
            await self.run(verbs.ping, tx=False)
        except sqlite3.Error as exc:
            raise StoreError(str(exc)) from None

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """One process per file: what it would hear, it already knows."""

    # -- plumbing --------------------------------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` alone on the store's thread (opening, migrating, closing)."""
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, fn, *args)
        except RuntimeError:  # the executor is shut down: the store was closed
            raise StoreError("the store is closed") from None
        return await future

    async def _verb(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the next group commit; return once that commit is durable.

        Verbs that arrive while the thread is busy wait for it together and then share
        one transaction and one fsync, each under its own savepoint, so a verb that fails
        undoes only itself. Under load this turns one fsync per verb into one per group;
        alone, a verb runs at once as before.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(_Verb(fn, args, future))
        if self._flusher is None:
            self._flusher = loop.create_task(self._flush())
        return cast(T, await future)

    async def _flush(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                group, self._queue = self._queue[:GROUP_LIMIT], self._queue[GROUP_LIMIT:]
                try:
                    outcomes = await loop.run_in_executor(self._executor, self._run_group, group)
                except RuntimeError:  # the executor is shut down: the store was closed
                    outcomes = [(False, StoreError("the store is closed"))] * len(group)
                for verb, (ok, value) in zip(group, outcomes, strict=True):
                    if verb.future.done():  # its caller gave up waiting
                        continue
                    if ok:
                        verb.future.set_result(value)
                    else:
                        verb.future.set_exception(value)
        finally:
            self._flusher = None

    def _run_group(self, group: list[_Verb]) -> list[tuple[bool, Any]]:
        if len(group) == 1:
            return [self._run_one(group[0])]
        try:
            conn = self._db()
            conn.execute("BEGIN IMMEDIATE")
        except (sqlite3.Error, StoreError) as exc:
            return [(False, _store_error(exc))] * len(group)
        outcomes = [self._run_one(verb) for verb in group]
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            return [(False, _store_error(exc))] * len(group)
        return outcomes

    @staticmethod
    def _run_one(verb: _Verb) -> tuple[bool, Any]:
        try:
            return True, verb.fn(*verb.args)
        except Exception as exc:
            return False, exc

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError("the store is closed")
        return self._conn

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._db()
        if conn.in_transaction:
            # Inside a group commit: a savepoint, so a failure undoes this verb alone.
            conn.execute("SAVEPOINT verb")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK TO verb")
                conn.execute("RELEASE verb")
                raise
            conn.execute("RELEASE verb")
            return
        # IMMEDIATE takes the write lock up front, so a read-then-write never has to upgrade.
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


class SQLiteStore(Store):
    """The Store on one SQLite file."""

    def __init__(self, driver: SQLiteDriver) -> None:
        super().__init__(driver)
        self.path = driver.path

    @classmethod
    async def open(cls, path: str, **kw: Any) -> SQLiteStore:
        """``SQLiteDriver.open``'s store."""
        return cls(await SQLiteDriver.open(path, **kw))
