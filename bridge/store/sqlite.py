"""The embedded store: one SQLite file, one process, one thread that owns the connection.

Every verb runs as one transaction on a single worker thread, so verbs never interleave
and a verb that returns has committed (WAL, ``synchronous=FULL``: a commit survives the
process being killed and the machine losing power). One ``serve`` per file is enforced
with an ``flock`` on ``<file>.lock``, which the kernel drops when the process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

from bridge.model import (
    CANCELED,
    DELIVERED,
    DELIVERING,
    ENDED_STATES,
    EXPIRED_ERROR,
    TRACKING,
    UNDELIVERABLE,
    Attempt,
    DeliveryWork,
    Job,
    NewJob,
    PollRecord,
    Recorded,
    WatchWork,
    callback_body,
    new_job_id,
)
from bridge.store import queries
from bridge.store.base import Conflict, StoreError
from bridge.store.rules import first_delivery, job_from_row, same_metadata

T = TypeVar("T")

# The most verbs one group commit takes, so one group's latency stays bounded.
GROUP_LIMIT = 256


class _Verb(NamedTuple):
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


def _store_error(exc: Exception) -> StoreError:
    return exc if isinstance(exc, StoreError) else StoreError(str(exc))


_JOB_COLUMNS = """
    j.id, j.tenant, j.kind, j.token, j.callback_url, j.metadata, j.state, j.outcome,
    j.up_status, j.up_error, j.up_result, j.polls_base, j.polls, j.last_polled_at,
    j.attempts, j.last_attempt_at, j.last_response_status, j.last_error,
    j.next_attempt_at, j.delivered_at, j.created_at, j.updated_at, j.deadline_at,
    w.status AS w_status, w.error AS w_error, w.result AS w_result, w.polls AS w_polls,
    w.last_polled_at AS w_last_polled_at, w.next_poll_at AS w_next_poll_at
"""
_JOB_SELECT = f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN watches w ON w.id = j.watch_id"


def migrations() -> list[tuple[int, str]]:
    """The numbered schema scripts, in order."""
    return queries.migrations("sqlite")


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


class SQLiteStore:
    def __init__(self, path: str) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        self._conn: sqlite3.Connection | None = None
        self._lock: FileLock | None = None
        self._queue: list[_Verb] = []
        self._flusher: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @classmethod
    async def open(cls, path: str, *, exclusive: bool = True, migrate: bool = True) -> SQLiteStore:
        """Open (and by default lock and migrate) the file; StoreError with a clear message."""
        store = cls(path)
        try:
            await store._call(store._open_sync, exclusive, migrate)
        except BaseException:
            await store.close()
            raise
        return store

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
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open database {self.path}: {exc}") from None
        self._conn = conn
        if migrate:
            self._migrate_sync()
        if exclusive:
            # This process holds the file alone: any lease in it belonged to one that died.
            with self._tx() as c:
                c.execute("UPDATE watches SET lease_owner = NULL, lease_until = NULL")
                c.execute("UPDATE jobs SET lease_owner = NULL, lease_until = NULL")

    def _migrate_sync(self) -> int:
        conn = self._db()
        try:
            with self._tx() as c:
                current = c.execute("PRAGMA user_version").fetchone()[0]
                for version, script in migrations():
                    if version > current:
                        for statement in script.split(";\n"):
                            if statement.strip():
                                c.execute(statement)
                        c.execute(f"PRAGMA user_version = {version:d}")
                        current = version
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot migrate database {self.path}: {exc}") from None
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

    def _job_by_id(self, conn: sqlite3.Connection, tenant: str, job_id: str) -> Job | None:
        row = conn.execute(f"{_JOB_SELECT} WHERE j.id = ? AND j.tenant = ?", (job_id, tenant))
        found = row.fetchone()
        return job_from_row(found) if found else None

    # -- verbs -----------------------------------------------------------------------------

    async def ping(self) -> None:
        def ping_sync() -> None:
            try:
                self._db().execute("SELECT 1").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from None

        await self._verb(ping_sync)

    async def register(
        self, new: NewJob, *, now: float, first_poll_at: float, deadline_at: float
    ) -> tuple[Job, bool]:
        job_id = new_job_id(now)
        return await self._verb(self._register_sync, new, job_id, now, first_poll_at, deadline_at)

    def _register_sync(
        self, new: NewJob, job_id: str, now: float, first_poll_at: float, deadline_at: float
    ) -> tuple[Job, bool]:
        with self._tx() as c:
            watch = c.execute(
                "SELECT id, owner, next_poll_at FROM watches WHERE kind = ? AND token = ?",
                (new.kind, new.token),
            ).fetchone()
            if watch is not None and watch["owner"] != new.tenant:
                raise Conflict("this token is registered by another tenant")
            existing = c.execute(
                f"{_JOB_SELECT} WHERE j.tenant = ? AND j.kind = ? AND j.token = ?"
                " AND j.callback_url = ? AND j.state <> 'canceled'",
                (new.tenant, new.kind, new.token, new.callback_url),
            ).fetchone()
            if existing is not None:
                job = job_from_row(existing)
                if same_metadata(job.metadata, new.metadata):
                    return job, False
                raise Conflict(
                    "a job for this kind, token and callback_url exists with other metadata"
                )
            if watch is None:
                watch_id = c.execute(
                    "INSERT INTO watches (kind, token, owner, next_poll_at, created_at, armed_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (new.kind, new.token, new.tenant, first_poll_at, now, now),
                ).lastrowid
            elif watch["next_poll_at"] is None:
                # The watch had ended: poll again for the newcomer, starting afresh.
                watch_id = watch["id"]
                c.execute(
                    "UPDATE watches SET next_poll_at = ?, status = NULL, error = NULL,"
                    " result = NULL, not_found = 0, failures = 0, interval = NULL,"
                    " last_change_at = NULL, last_polled_at = NULL, armed_at = ? WHERE id = ?",
                    (first_poll_at, now, watch_id),
                )
            else:
                # A live watch: its next poll is the newcomer's first one, no later than promised.
                watch_id = watch["id"]
                c.execute(
                    "UPDATE watches SET next_poll_at = min(next_poll_at, ?) WHERE id = ?",
                    (first_poll_at, watch_id),
                )
            c.execute(
                "INSERT INTO jobs (id, tenant, watch_id, kind, token, callback_url, metadata,"
                " state, polls_base, created_at, updated_at, deadline_at)"
                " SELECT ?, ?, ?, ?, ?, ?, ?, ?, polls, ?, ?, ? FROM watches WHERE id = ?",
                (
                    job_id,
                    new.tenant,
                    watch_id,
                    new.kind,
                    new.token,
                    new.callback_url,
                    new.metadata,
                    TRACKING,
                    now,
                    now,
                    deadline_at,
                    watch_id,
                ),
            )
            created = self._job_by_id(c, new.tenant, job_id)
            assert created is not None
            return created, True

    async def get_job(self, tenant: str, job_id: str) -> Job | None:
        return await self._verb(self._job_by_id, self._db(), tenant, job_id)

    async def list_jobs(
        self,
        tenant: str,
        *,
        state: str | None = None,
        kind: str | None = None,
        token: int | None = None,
        limit: int = 100,
        before: int | None = None,
    ) -> tuple[list[Job], int | None]:
        where = ["j.tenant = ?"]
        args: list[Any] = [tenant]
        for column, value in (("j.state", state), ("j.kind", kind), ("j.token", token)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("j.seq < ?")
            args.append(before)
        sql = (
            f"SELECT j.seq AS seq, {_JOB_COLUMNS} FROM jobs j JOIN watches w ON w.id = j.watch_id"
            f" WHERE {' AND '.join(where)} ORDER BY j.seq DESC LIMIT ?"
        )
        args.append(limit + 1)

        def list_sync() -> tuple[list[Job], int | None]:
            rows = self._db().execute(sql, args).fetchall()
            more = len(rows) > limit
            rows = rows[:limit]
            return [job_from_row(r) for r in rows], (rows[-1]["seq"] if more else None)

        return await self._verb(list_sync)

    async def cancel(self, tenant: str, job_id: str, *, now: float) -> tuple[Job, bool] | None:
        def cancel_sync() -> tuple[Job, bool] | None:
            with self._tx() as c:
                job = self._job_by_id(c, tenant, job_id)
                if job is None:
                    return None
                if job.state == CANCELED:
                    return job, False
                if job.state in ENDED_STATES:
                    raise Conflict(f"the job is already {job.state}")
                # Freeze what the job saw, then let the watch go idle if nobody else needs it.
                c.execute(
                    "UPDATE jobs SET state = ?, up_status = ?, up_error = ?, up_result = ?,"
                    " polls = ?, last_polled_at = ?, next_attempt_at = NULL, ended_at = ?,"
                    " updated_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                    (
                        CANCELED,
                        job.upstream_status,
                        job.upstream_error,
                        job.upstream_result,
                        job.polls,
                        job.last_polled_at,
                        now,
                        now,
                        job_id,
                    ),
                )
                self._idle_watch_if_unwatched(c, job_id)
                canceled = self._job_by_id(c, tenant, job_id)
                assert canceled is not None
                return canceled, True

        return await self._verb(cancel_sync)

    @staticmethod
    def _idle_watch_if_unwatched(c: sqlite3.Connection, job_id: str) -> None:
        c.execute(
            "UPDATE watches SET next_poll_at = NULL, lease_owner = NULL, lease_until = NULL"
            " WHERE id = (SELECT watch_id FROM jobs WHERE id = ?)"
            " AND NOT EXISTS (SELECT 1 FROM jobs t WHERE t.watch_id = watches.id"
            " AND t.state = 'tracking')",
            (job_id,),
        )

    async def redeliver(self, tenant: str, job_id: str, *, now: float) -> Job | None:
        def redeliver_sync() -> Job | None:
            with self._tx() as c:
                job = self._job_by_id(c, tenant, job_id)
                if job is None:
                    return None
                if job.state not in ("delivered", "undeliverable"):
                    raise Conflict(
                        f"only a delivered or undeliverable job can be redelivered; "
                        f"this one is {job.state}"
                    )
                c.execute(
                    "UPDATE jobs SET state = ?, next_attempt_at = ?, delivered_at = NULL,"
                    " round_attempts = 0, ended_at = NULL, updated_at = ? WHERE id = ?",
                    (DELIVERING, now, now, job_id),
                )
                return self._job_by_id(c, tenant, job_id)

        return await self._verb(redeliver_sync)

    async def attempts(self, tenant: str, job_id: str) -> list[Attempt] | None:
        def attempts_sync() -> list[Attempt] | None:
            db = self._db()
            if (
                db.execute(
                    "SELECT 1 FROM jobs WHERE id = ? AND tenant = ?", (job_id, tenant)
                ).fetchone()
                is None
            ):
                return None
            rows = db.execute(
                "SELECT n, at, duration_ms, response_status, error FROM attempts"
                " WHERE job_id = ? ORDER BY n",
                (job_id,),
            ).fetchall()
            return [Attempt(*r) for r in rows]

        return await self._verb(attempts_sync)

    async def signing_secret(self, tenant: str, *, generate: Callable[[], str], now: float) -> str:
        candidate = generate()

        def secret_sync() -> str:
            with self._tx() as c:
                c.execute(
                    "INSERT INTO signing_secrets (tenant, secret, created_at) VALUES (?, ?, ?)"
                    " ON CONFLICT (tenant) DO NOTHING",
                    (tenant, candidate, now),
                )
                row = c.execute(
                    "SELECT secret FROM signing_secrets WHERE tenant = ?", (tenant,)
                ).fetchone()
                return str(row[0])

        return await self._verb(secret_sync)

    async def count_by_state(self) -> dict[str, int]:
        def count_sync() -> dict[str, int]:
            rows = self._db().execute("SELECT state, count(*) FROM jobs GROUP BY state")
            return {state: n for state, n in rows}

        return await self._verb(count_sync)

    async def purge_ended(self, *, before: float, batch: int = 500) -> int:
        def purge_batch() -> int:
            with self._tx() as c:
                ids = [
                    r[0]
                    for r in c.execute(
                        "SELECT id FROM jobs WHERE ended_at < ? LIMIT ?", (before, batch)
                    )
                ]
                if not ids:
                    return 0
                marks = ",".join("?" * len(ids))
                c.execute(f"DELETE FROM attempts WHERE job_id IN ({marks})", ids)
                c.execute(f"DELETE FROM jobs WHERE id IN ({marks})", ids)
                # A watch nobody refers to any more frees its token for any tenant.
                c.execute(
                    "DELETE FROM watches WHERE next_poll_at IS NULL AND NOT EXISTS"
                    " (SELECT 1 FROM jobs j WHERE j.watch_id = watches.id)"
                )
                return len(ids)

        total = 0
        # Small transactions, so registrations are never held behind a long delete.
        while (n := await self._verb(purge_batch)) > 0:
            total += n
        return total

    # -- the scheduler's verbs -----------------------------------------------------------

    async def claim_due_watches(
        self,
        owner: str,
        *,
        now: float,
        lease: float,
        limit: int,
        skip_kinds: tuple[str, ...] = (),
    ) -> list[WatchWork]:
        marks = ",".join("?" * len(skip_kinds))
        skip = f" AND kind NOT IN ({marks})" if skip_kinds else ""

        def claim_sync() -> list[WatchWork]:
            with self._tx() as c:
                rows = c.execute(
                    "SELECT id, kind, token, next_poll_at, status, interval, not_found, failures,"
                    " coalesce(armed_at, created_at), last_polled_at"
                    " FROM watches WHERE next_poll_at <= ?"
                    " AND (lease_until IS NULL OR lease_until < ?)"
                    f"{skip} ORDER BY next_poll_at LIMIT ?",
                    (now, now, *skip_kinds, limit),
                ).fetchall()
                c.executemany(
                    "UPDATE watches SET lease_owner = ?, lease_until = ? WHERE id = ?",
                    [(owner, now + lease, r["id"]) for r in rows],
                )
                return [WatchWork(*r) for r in rows]

        return await self._verb(claim_sync)

    async def record_poll(
        self, watch_id: int, owner: str, record: PollRecord, *, lease: float = 0, deliver: int = 0
    ) -> list[Recorded]:
        return await self._verb(self._record_poll_sync, watch_id, owner, record, lease, deliver)

    def _record_poll_sync(
        self, watch_id: int, owner: str, rec: PollRecord, lease: float, deliver: int
    ) -> list[Recorded]:
        with self._tx() as c:
            w = c.execute("SELECT * FROM watches WHERE id = ?", (watch_id,)).fetchone()
            if w is None:
                return []
            status, error, result = (
                (rec.status, rec.error, rec.result_json)
                if rec.answered
                else (w["status"], w["error"], w["result"])
            )
            polls = w["polls"] + 1
            if rec.learned:
                c.executemany(
                    "INSERT INTO durations (kind, bucket, weight) VALUES (?, ?, ?)"
                    " ON CONFLICT (kind, bucket) DO UPDATE SET weight = weight + excluded.weight",
                    [(w["kind"], b, weight) for b, weight in rec.learned],
                )
            recorded: list[Recorded] = []
            if rec.outcome is not None:
                recorded = self._hand_outcome(
                    c,
                    w,
                    rec,
                    status=status,
                    error=error,
                    result=result,
                    polls=polls,
                    lease=(owner, rec.polled_at + lease, deliver),
                )
            tracking = c.execute(
                "SELECT count(*) FROM jobs WHERE watch_id = ? AND state = 'tracking'",
                (watch_id,),
            ).fetchone()[0]
            if not tracking:
                next_poll_at = None
            elif rec.outcome is not None:
                # Jobs that joined while the deciding poll was in flight get a poll of their own.
                next_poll_at = rec.polled_at
            else:
                next_poll_at = rec.next_poll_at
            c.execute(
                "UPDATE watches SET status = ?, error = ?, result = ?, polls = ?,"
                " not_found = ?, failures = ?, interval = ?, last_polled_at = ?,"
                " last_change_at = CASE WHEN ? THEN ? ELSE last_change_at END,"
                " next_poll_at = ?, lease_owner = NULL, lease_until = NULL WHERE id = ?",
                (
                    status,
                    error,
                    result,
                    polls,
                    rec.not_found,
                    rec.failures,
                    rec.interval,
                    rec.polled_at,
                    rec.changed,
                    rec.polled_at,
                    next_poll_at,
                    watch_id,
                ),
            )
            return recorded

    @staticmethod
    def _hand_outcome(
        c: sqlite3.Connection,
        w: sqlite3.Row,
        rec: PollRecord,
        *,
        status: str | None,
        error: str | None,
        result: str | None,
        polls: int,
        lease: tuple[str, float, int],
    ) -> list[Recorded]:
        assert rec.outcome is not None
        owner, lease_until, deliver = lease
        jobs = c.execute(
            "SELECT id, tenant, kind, token, callback_url, metadata, polls_base, attempts"
            " FROM jobs WHERE watch_id = ? AND state = 'tracking' AND created_at <= ?"
            " ORDER BY seq",
            (w["id"], rec.started_at),
        ).fetchall()
        updates = []
        recorded = []
        for n, j in enumerate(jobs):
            body = callback_body(
                job_id=j["id"],
                kind=j["kind"],
                token=j["token"],
                outcome=rec.outcome,
                error=rec.outcome_error,
                result_json=result,
                metadata_json=j["metadata"],
                seen_at=rec.polled_at,
            )
            leased = n < deliver
            updates.append(
                (
                    rec.outcome,
                    status,
                    error,
                    result,
                    polls - j["polls_base"],
                    rec.polled_at,
                    rec.polled_at,
                    body,
                    rec.polled_at,
                    rec.polled_at,
                    owner if leased else None,
                    lease_until if leased else None,
                    j["id"],
                )
            )
            work = first_delivery(j, body, rec.polled_at) if leased else None
            recorded.append(Recorded(j["id"], j["kind"], j["token"], rec.outcome, work))
        c.executemany(
            "UPDATE jobs SET state = 'delivering', outcome = ?, up_status = ?, up_error = ?,"
            " up_result = ?, polls = ?, last_polled_at = ?, outcome_at = ?, body = ?,"
            " next_attempt_at = ?, round_attempts = 0, updated_at = ?,"
            " lease_owner = ?, lease_until = ? WHERE id = ?",
            updates,
        )
        return recorded

    async def expire_due(self, *, now: float) -> list[Recorded]:
        def expire_sync() -> list[Recorded]:
            with self._tx() as c:
                rows = c.execute(
                    "SELECT j.id, j.kind, j.token, j.metadata, j.polls_base, j.watch_id,"
                    " w.status, w.error, w.result, w.polls, w.last_polled_at"
                    " FROM jobs j JOIN watches w ON w.id = j.watch_id"
                    " WHERE j.state = 'tracking' AND j.deadline_at <= ?",
                    (now,),
                ).fetchall()
                for r in rows:
                    body = callback_body(
                        job_id=r["id"],
                        kind=r["kind"],
                        token=r["token"],
                        outcome="expired",
                        error=EXPIRED_ERROR,
                        result_json=r["result"],
                        metadata_json=r["metadata"],
                        seen_at=now,
                    )
                    c.execute(
                        "UPDATE jobs SET state = 'delivering', outcome = 'expired',"
                        " up_status = ?, up_error = ?, up_result = ?, polls = ?,"
                        " last_polled_at = ?, outcome_at = ?, body = ?, next_attempt_at = ?,"
                        " round_attempts = 0, updated_at = ? WHERE id = ?",
                        (
                            r["status"],
                            r["error"],
                            r["result"],
                            r["polls"] - r["polls_base"],
                            r["last_polled_at"],
                            now,
                            body,
                            now,
                            now,
                            r["id"],
                        ),
                    )
                    self._idle_watch_if_unwatched(c, r["id"])
                return [Recorded(r["id"], r["kind"], r["token"], "expired") for r in rows]

        return await self._verb(expire_sync)

    async def claim_due_deliveries(
        self, owner: str, *, now: float, lease: float, limit: int
    ) -> list[DeliveryWork]:
        def claim_sync() -> list[DeliveryWork]:
            with self._tx() as c:
                rows = c.execute(
                    "SELECT id, tenant, kind, token, callback_url, body, attempts,"
                    " round_attempts, outcome_at, next_attempt_at FROM jobs"
                    " WHERE state = 'delivering' AND next_attempt_at <= ?"
                    " AND (lease_until IS NULL OR lease_until < ?)"
                    " ORDER BY next_attempt_at LIMIT ?",
                    (now, now, limit),
                ).fetchall()
                c.executemany(
                    "UPDATE jobs SET lease_owner = ?, lease_until = ? WHERE id = ?",
                    [(owner, now + lease, r["id"]) for r in rows],
                )
                return [DeliveryWork(*r) for r in rows]

        return await self._verb(claim_sync)

    async def record_attempt(
        self,
        job_id: str,
        owner: str,
        attempt: Attempt,
        *,
        next_state: str,
        next_attempt_at: float | None,
    ) -> bool:
        finished_at = attempt.at + attempt.duration_ms / 1000

        def record_sync() -> bool:
            with self._tx() as c:
                c.execute(
                    "INSERT OR REPLACE INTO attempts"
                    " (job_id, n, at, duration_ms, response_status, error)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (
                        job_id,
                        attempt.n,
                        attempt.at,
                        attempt.duration_ms,
                        attempt.response_status,
                        attempt.error,
                    ),
                )
                c.execute(
                    "UPDATE jobs SET attempts = max(attempts, ?),"
                    " round_attempts = round_attempts + 1, last_attempt_at = ?,"
                    " last_response_status = ?, last_error = ?, updated_at = ?,"
                    " lease_owner = NULL, lease_until = NULL WHERE id = ?",
                    (
                        attempt.n,
                        attempt.at,
                        attempt.response_status,
                        attempt.error,
                        finished_at,
                        job_id,
                    ),
                )
                # A job canceled while its attempt was on the wire stays canceled.
                changed = c.execute(
                    "UPDATE jobs SET state = ?, next_attempt_at = ?,"
                    " delivered_at = CASE WHEN ? THEN ? ELSE delivered_at END,"
                    " ended_at = CASE WHEN ? THEN ? ELSE NULL END"
                    " WHERE id = ? AND state = 'delivering'",
                    (
                        next_state,
                        next_attempt_at,
                        next_state == DELIVERED,
                        finished_at,
                        next_state in (DELIVERED, UNDELIVERABLE),
                        finished_at,
                        job_id,
                    ),
                ).rowcount
                return bool(changed)

        return await self._verb(record_sync)

    async def durations(self) -> dict[str, list[tuple[int, float]]]:
        def durations_sync() -> dict[str, list[tuple[int, float]]]:
            out: dict[str, list[tuple[int, float]]] = {}
            for kind, bucket, weight in self._db().execute(
                "SELECT kind, bucket, weight FROM durations ORDER BY kind, bucket"
            ):
                out.setdefault(kind, []).append((bucket, weight))
            return out

        return await self._verb(durations_sync)

    async def scale_durations(self, kind: str, factor: float) -> None:
        def scale_sync() -> None:
            with self._tx() as c:
                c.execute("UPDATE durations SET weight = weight * ? WHERE kind = ?", (factor, kind))

        await self._verb(scale_sync)

    async def set_pause(self, key: str, reason: str, until: float, kind: str | None) -> None:
        def set_sync() -> None:
            with self._tx() as c:
                if until <= 0:
                    c.execute("DELETE FROM pauses WHERE key = ?", (key,))
                    return
                c.execute(
                    "INSERT INTO pauses (key, reason, until, kind) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (key) DO UPDATE SET reason = excluded.reason,"
                    " until = max(pauses.until, excluded.until), kind = excluded.kind",
                    (key, reason, until, kind),
                )

        await self._verb(set_sync)

    async def pauses(self) -> list[tuple[str, str, float, str | None]]:
        def pauses_sync() -> list[tuple[str, str, float, str | None]]:
            rows = self._db().execute("SELECT key, reason, until, kind FROM pauses ORDER BY key")
            return [(r[0], r[1], float(r[2]), r[3]) for r in rows]

        return await self._verb(pauses_sync)

    async def listen_pauses(self, callback: Callable[[], None]) -> None:
        """One process per file: its own pauses are already in memory."""

    async def backlog(self, *, now: float) -> dict[str, tuple[int, float | None]]:
        def backlog_sync() -> dict[str, tuple[int, float | None]]:
            db = self._db()
            polls = db.execute(
                "SELECT count(*), min(next_poll_at) FROM watches WHERE next_poll_at <= ?"
                " AND (lease_until IS NULL OR lease_until < ?)",
                (now, now),
            ).fetchone()
            deliveries = db.execute(
                "SELECT count(*), min(next_attempt_at) FROM jobs WHERE state = 'delivering'"
                " AND next_attempt_at <= ? AND (lease_until IS NULL OR lease_until < ?)",
                (now, now),
            ).fetchone()
            return {"poll": (polls[0], polls[1]), "delivery": (deliveries[0], deliveries[1])}

        return await self._verb(backlog_sync)

    async def release(self, owner: str) -> None:
        def release_sync() -> None:
            with self._tx() as c:
                c.execute(
                    "UPDATE watches SET lease_owner = NULL, lease_until = NULL"
                    " WHERE lease_owner = ?",
                    (owner,),
                )
                c.execute(
                    "UPDATE jobs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?",
                    (owner,),
                )

        await self._verb(release_sync)

    async def next_due(self) -> float | None:
        def next_due_sync() -> float | None:
            row = (
                self._db()
                .execute(
                    "SELECT min(t) FROM ("
                    " SELECT min(next_poll_at) AS t FROM watches"
                    "  WHERE next_poll_at IS NOT NULL AND lease_until IS NULL"
                    " UNION ALL SELECT min(next_attempt_at) FROM jobs"
                    "  WHERE state = 'delivering' AND lease_until IS NULL"
                    " UNION ALL SELECT min(deadline_at) FROM jobs WHERE state = 'tracking')"
                )
                .fetchone()
            )
            return float(row[0]) if row[0] is not None else None

        return await self._verb(next_due_sync)
