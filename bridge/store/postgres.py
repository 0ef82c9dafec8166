"""The shared store: one PostgreSQL database, any number of replicas (asyncpg pool).

Every verb is one transaction (READ COMMITTED) and returns only after it committed.
Observable behaviour is the SQLite store's; what replicas add:

- Due work is claimed in one statement with ``FOR UPDATE SKIP LOCKED``: concurrent
  claimers never wait for each other nor take the same row. Due-ness compares with the
  ``now`` the caller passes (the application clock that computed the due times); leases
  are set and compared on the database's clock, so replicas whose clocks disagree still
  agree on who holds what.
- Writers that touch a watch and its jobs lock the watch row first, then the jobs: that
  serializes registration, polls, cancellation, expiry and retention per (kind, token),
  and one lock order keeps them free of deadlocks. A deadlock or serialization failure
  the server reports anyway is retried.
- Migrations run under a transaction-scoped advisory lock, so replicas starting at once
  apply each one exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import asyncpg

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

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    Conn: TypeAlias = PoolConnectionProxy[asyncpg.Record]

T = TypeVar("T")

# The database's clock, in the application's unit. statement_timestamp() rather than
# clock_timestamp(): it is stable, one instant for the whole statement, so a claim's
# filter and the lease it sets read the same clock once (and the planner may treat it as
# a constant); a claim is one statement, so it is the moment the claim ran.
DB_NOW = "extract(epoch FROM statement_timestamp())::float8"
# NOTIFY channel on which a stored pause is announced to every replica.
PAUSE_CHANNEL = "bridge_pauses"

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

_JOB_COLUMNS = """
    j.id, j.tenant, j.kind, j.token, j.callback_url, j.metadata, j.state, j.outcome,
    j.up_status, j.up_error, j.up_result, j.polls_base, j.polls, j.last_polled_at,
    j.attempts, j.last_attempt_at, j.last_response_status, j.last_error,
    j.next_attempt_at, j.delivered_at, j.created_at, j.updated_at, j.deadline_at,
    w.status AS w_status, w.error AS w_error, w.result AS w_result, w.polls AS w_polls,
    w.last_polled_at AS w_last_polled_at, w.next_poll_at AS w_next_poll_at
"""
_JOB_SELECT = f"SELECT {_JOB_COLUMNS} FROM jobs j JOIN watches w ON w.id = j.watch_id"

# "= ANY (ARRAY(...))" rather than a join: a generic plan (asyncpg prepares statements)
# cannot tell that LIMIT $3 is small and would hash-join against a scan of the table.
_CLAIM_WATCHES = f"""
WITH due AS (
    SELECT id FROM watches
     WHERE next_poll_at <= $1
       AND (lease_until IS NULL OR lease_until < {DB_NOW})
       AND kind <> ALL($4::text[])
     ORDER BY next_poll_at
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE watches w SET lease_owner = $2, lease_until = {DB_NOW} + $5::float8
     WHERE w.id = ANY (ARRAY(SELECT id FROM due))
    RETURNING w.id, w.kind, w.token, w.next_poll_at, w.status, w."interval", w.not_found,
              w.failures, coalesce(w.armed_at, w.created_at), w.last_polled_at
)
SELECT * FROM claimed ORDER BY next_poll_at, id
"""

_CLAIM_DELIVERIES = f"""
WITH due AS (
    SELECT seq FROM jobs
     WHERE state = 'delivering' AND next_attempt_at <= $1
       AND (lease_until IS NULL OR lease_until < {DB_NOW})
     ORDER BY next_attempt_at
     LIMIT $3
       FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE jobs j SET lease_owner = $2, lease_until = {DB_NOW} + $4::float8
     WHERE j.seq = ANY (ARRAY(SELECT seq FROM due))
    RETURNING j.seq, j.id, j.tenant, j.kind, j.token, j.callback_url, j.body, j.attempts,
              j.round_attempts, j.outcome_at, j.next_attempt_at
)
SELECT * FROM claimed ORDER BY next_attempt_at, seq
"""

# Hand an outcome to many jobs in one statement: per-job id, body and polls_base come in
# as arrays; what the poll saw is the same for all.
_HAND_OUTCOME = f"""
UPDATE jobs j SET state = 'delivering', outcome = $3, up_status = $4, up_error = $5,
       up_result = $6, polls = $7 - j.polls_base, last_polled_at = $8, outcome_at = $9,
       body = u.body, next_attempt_at = $9, round_attempts = 0, updated_at = $9,
       lease_owner = CASE WHEN u.n <= $10 THEN $11 END,
       lease_until = CASE WHEN u.n <= $10 THEN {DB_NOW} + $12::float8 END
  FROM unnest($1::text[], $2::bytea[]) WITH ORDINALITY AS u(id, body, n)
 WHERE j.id = u.id
"""

# A lease is given back by the owner that holds it, or when the work stops being live
# (``ended``). A replica recording late, after its lease ran out and another took the work
# over, must not end the other's lease on work still live. Leases therefore only ever sit
# on live work (a polled watch, a delivering job), which keeps release() on the small
# partial indexes and lets a claim, which changes no indexed column, be a HOT update.
_GIVE_BACK_LEASE = """
lease_owner = CASE WHEN lease_owner = {owner} OR {ended} THEN NULL ELSE lease_owner END,
lease_until = CASE WHEN lease_owner = {owner} OR {ended} THEN NULL ELSE lease_until END
"""


def migrations() -> list[tuple[int, str]]:
    """The numbered schema scripts, in order."""
    return queries.migrations("postgres")


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier, whatever it holds."""
    return '"' + name.replace('"', '""') + '"'


def describe_dsn(dsn: str) -> str:
    """``host:port/db`` for messages: never the user-info."""
    try:
        parts = urlsplit(dsn)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
    except ValueError:
        return "(an unparsable URL)"
    return f"{host}:{port}{parts.path or '/'}"


class PostgresStore:
    def __init__(self, dsn: str, schema: str | None = None) -> None:
        self.where = describe_dsn(dsn)
        self.dsn = dsn
        self.schema = schema
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._listener: asyncpg.Connection[asyncpg.Record] | None = None
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
    ) -> PostgresStore:
        """Connect a pool (and by default migrate); StoreError with a one-line message.

        ``schema``, when given, is created if missing and is every connection's search_path.
        """
        settings: dict[str, str] = {}
        if schema is not None:
            settings["search_path"] = quote_ident(schema)
        if "application_name" not in parse_qs(urlsplit(dsn).query):
            settings["application_name"] = "uploadcare-bridge"
        store = cls(dsn, schema)
        try:
            store._pool = await asyncpg.create_pool(
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
                f"cannot connect to PostgreSQL at {store.where}: {store._reason(exc)}"
            ) from None
        try:
            if schema is not None:
                name = schema
                await store._run(lambda c: store._create_schema(c, name))
            if migrate:
                await store.migrate()
        except BaseException:
            await store.close()
            raise
        return store

    @staticmethod
    async def _create_schema(c: Conn, schema: str) -> None:
        # IF NOT EXISTS alone still races in the catalog when replicas start together.
        await c.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended('uploadcare-bridge:schema:' || $1, 0))",
            schema,
        )
        await c.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(schema)}")

    async def migrate(self) -> int:
        """Apply pending migrations under an advisory lock; return the schema version."""

        async def migrate_tx(c: Conn) -> int:
            await c.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended("
                "'uploadcare-bridge:migrate:' || coalesce(current_schema(), ''), 0))"
            )
            await c.execute(
                "CREATE TABLE IF NOT EXISTS schema_version ("
                " version integer PRIMARY KEY, applied_at double precision NOT NULL)"
            )
            current: int = await c.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")
            for version, script in migrations():
                if version > current:
                    await c.execute(script)
                    await c.execute(
                        f"INSERT INTO schema_version (version, applied_at) VALUES ($1, {DB_NOW})",
                        version,
                    )
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

    @staticmethod
    async def _job_by_id(c: Conn, tenant: str, job_id: str, *, lock: bool = False) -> Job | None:
        found = await c.fetchrow(
            f"{_JOB_SELECT} WHERE j.id = $1 AND j.tenant = $2{' FOR UPDATE OF j' if lock else ''}",
            job_id,
            tenant,
        )
        return job_from_row(found) if found else None

    @staticmethod
    async def _idle_watch_if_unwatched(c: Conn, watch_ids: list[int]) -> None:
        await c.execute(
            "UPDATE watches SET next_poll_at = NULL, lease_owner = NULL, lease_until = NULL"
            " WHERE id = ANY($1::bigint[]) AND NOT EXISTS (SELECT 1 FROM jobs t"
            " WHERE t.watch_id = watches.id AND t.state = 'tracking')",
            watch_ids,
        )

    # -- verbs -----------------------------------------------------------------------------

    async def ping(self) -> None:
        async def ping_q(c: Conn) -> None:
            await c.fetchval("SELECT 1")

        try:
            await asyncio.wait_for(self._run(ping_q, tx=False), 5)
        except TimeoutError:
            raise StoreError(f"PostgreSQL at {self.where} did not answer within 5s") from None

    async def register(
        self, new: NewJob, *, now: float, first_poll_at: float, deadline_at: float
    ) -> tuple[Job, bool]:
        job_id = new_job_id(now)
        return await self._run(
            lambda c: self._register_tx(c, new, job_id, now, first_poll_at, deadline_at)
        )

    async def _lock_or_make_watch(
        self, c: Conn, new: NewJob, now: float, first_poll_at: float
    ) -> tuple[asyncpg.Record | None, int]:
        """The (kind, token) watch locked for this transaction; None as the row if just made."""
        while True:
            watch = await c.fetchrow(
                "SELECT id, owner, next_poll_at FROM watches WHERE kind = $1 AND token = $2"
                " FOR UPDATE",
                new.kind,
                new.token,
            )
            if watch is not None:
                return watch, int(watch["id"])
            made = await c.fetchval(
                "INSERT INTO watches (kind, token, owner, next_poll_at, created_at, armed_at)"
                " VALUES ($1, $2, $3, $4, $5, $5)"
                " ON CONFLICT (kind, token) DO NOTHING RETURNING id",
                new.kind,
                new.token,
                new.tenant,
                first_poll_at,
                now,
            )
            if made is not None:
                return None, int(made)
            # Another registration made it after our look: read (and lock) theirs.

    async def _register_tx(
        self,
        c: Conn,
        new: NewJob,
        job_id: str,
        now: float,
        first_poll_at: float,
        deadline_at: float,
    ) -> tuple[Job, bool]:
        # The watch row lock serializes every registration of this (kind, token).
        watch, watch_id = await self._lock_or_make_watch(c, new, now, first_poll_at)
        if watch is not None and watch["owner"] != new.tenant:
            raise Conflict("this token is registered by another tenant")
        updated_watch = watch is None
        while True:
            existing = await c.fetchrow(
                f"{_JOB_SELECT} WHERE j.tenant = $1 AND j.kind = $2 AND j.token = $3"
                " AND j.callback_url = $4 AND j.state <> 'canceled'",
                new.tenant,
                new.kind,
                new.token,
                new.callback_url,
            )
            if existing is not None:
                job = job_from_row(existing)
                if same_metadata(job.metadata, new.metadata):
                    return job, False
                raise Conflict(
                    "a job for this kind, token and callback_url exists with other metadata"
                )
            if not updated_watch:
                assert watch is not None
                updated_watch = True
                if watch["next_poll_at"] is None:
                    # The watch had ended: poll again for the newcomer, starting afresh.
                    await c.execute(
                        "UPDATE watches SET next_poll_at = $1, status = NULL, error = NULL,"
                        ' result = NULL, not_found = 0, failures = 0, "interval" = NULL,'
                        " last_change_at = NULL, last_polled_at = NULL, armed_at = $3"
                        " WHERE id = $2",
                        first_poll_at,
                        watch_id,
                        now,
                    )
                else:
                    # A live watch: its next poll is the newcomer's first, no later than promised.
                    await c.execute(
                        "UPDATE watches SET next_poll_at = least(next_poll_at, $1) WHERE id = $2",
                        first_poll_at,
                        watch_id,
                    )
            inserted = await c.fetchval(
                "INSERT INTO jobs (id, tenant, watch_id, kind, token, callback_url, metadata,"
                " state, polls_base, created_at, updated_at, deadline_at)"
                " SELECT $1, $2, $3, $4, $5, $6, $7, $8, polls, $9, $9, $10 FROM watches"
                " WHERE id = $3"
                " ON CONFLICT (tenant, kind, token, callback_url) WHERE state <> 'canceled'"
                " DO NOTHING RETURNING id",
                job_id,
                new.tenant,
                watch_id,
                new.kind,
                new.token,
                new.callback_url,
                new.metadata,
                TRACKING,
                now,
                deadline_at,
            )
            if inserted is not None:
                break
            # A duplicate committed despite the watch lock: decide against it, as above.
        created = await self._job_by_id(c, new.tenant, job_id)
        assert created is not None
        return created, True

    async def get_job(self, tenant: str, job_id: str) -> Job | None:
        return await self._run(lambda c: self._job_by_id(c, tenant, job_id), tx=False)

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
        where = ["j.tenant = $1"]
        args: list[Any] = [tenant]
        for column, value in (("j.state", state), ("j.kind", kind), ("j.token", token)):
            if value is not None:
                args.append(value)
                where.append(f"{column} = ${len(args)}")
        if before is not None:
            args.append(before)
            where.append(f"j.seq < ${len(args)}")
        args.append(limit + 1)
        sql = (
            f"SELECT j.seq AS seq, {_JOB_COLUMNS} FROM jobs j JOIN watches w ON w.id = j.watch_id"
            f" WHERE {' AND '.join(where)} ORDER BY j.seq DESC LIMIT ${len(args)}"
        )

        async def list_q(c: Conn) -> tuple[list[Job], int | None]:
            rows = await c.fetch(sql, *args)
            more = len(rows) > limit
            rows = rows[:limit]
            return [job_from_row(r) for r in rows], (int(rows[-1]["seq"]) if more else None)

        return await self._run(list_q, tx=False)

    async def cancel(self, tenant: str, job_id: str, *, now: float) -> tuple[Job, bool] | None:
        async def cancel_tx(c: Conn) -> tuple[Job, bool] | None:
            watch_id = await c.fetchval(
                "SELECT watch_id FROM jobs WHERE id = $1 AND tenant = $2", job_id, tenant
            )
            if watch_id is None:
                return None
            # Watch first, then the job: the lock order of every writer.
            await c.execute("SELECT 1 FROM watches WHERE id = $1 FOR UPDATE", watch_id)
            job = await self._job_by_id(c, tenant, job_id, lock=True)
            if job is None:
                return None
            if job.state == CANCELED:
                return job, False
            if job.state in ENDED_STATES:
                raise Conflict(f"the job is already {job.state}")
            # Freeze what the job saw, then let the watch go idle if nobody else needs it.
            await c.execute(
                "UPDATE jobs SET state = $1, up_status = $2, up_error = $3, up_result = $4,"
                " polls = $5, last_polled_at = $6, next_attempt_at = NULL, ended_at = $7,"
                " updated_at = $7, lease_owner = NULL, lease_until = NULL WHERE id = $8",
                CANCELED,
                job.upstream_status,
                job.upstream_error,
                job.upstream_result,
                job.polls,
                job.last_polled_at,
                now,
                job_id,
            )
            await self._idle_watch_if_unwatched(c, [watch_id])
            canceled = await self._job_by_id(c, tenant, job_id)
            assert canceled is not None
            return canceled, True

        return await self._run(cancel_tx)

    async def redeliver(self, tenant: str, job_id: str, *, now: float) -> Job | None:
        async def redeliver_tx(c: Conn) -> Job | None:
            job = await self._job_by_id(c, tenant, job_id, lock=True)
            if job is None:
                return None
            if job.state not in (DELIVERED, UNDELIVERABLE):
                raise Conflict(
                    f"only a delivered or undeliverable job can be redelivered; "
                    f"this one is {job.state}"
                )
            await c.execute(
                "UPDATE jobs SET state = $1, next_attempt_at = $2, delivered_at = NULL,"
                " round_attempts = 0, ended_at = NULL, updated_at = $2 WHERE id = $3",
                DELIVERING,
                now,
                job_id,
            )
            return await self._job_by_id(c, tenant, job_id)

        return await self._run(redeliver_tx)

    async def attempts(self, tenant: str, job_id: str) -> list[Attempt] | None:
        async def attempts_q(c: Conn) -> list[Attempt] | None:
            if await c.fetchval("SELECT 1 FROM jobs WHERE id = $1 AND tenant = $2", job_id, tenant):
                rows = await c.fetch(
                    "SELECT n, at, duration_ms, response_status, error FROM attempts"
                    " WHERE job_id = $1 ORDER BY n",
                    job_id,
                )
                return [Attempt(*r) for r in rows]
            return None

        return await self._run(attempts_q)

    async def signing_secret(self, tenant: str, *, generate: Callable[[], str], now: float) -> str:
        candidate = generate()

        async def secret_tx(c: Conn) -> str:
            # The first replica to insert wins; every other one reads the winner's secret.
            await c.execute(
                "INSERT INTO signing_secrets (tenant, secret, created_at) VALUES ($1, $2, $3)"
                " ON CONFLICT (tenant) DO NOTHING",
                tenant,
                candidate,
                now,
            )
            secret = await c.fetchval(
                "SELECT secret FROM signing_secrets WHERE tenant = $1", tenant
            )
            return str(secret)

        return await self._run(secret_tx)

    async def count_by_state(self) -> dict[str, int]:
        async def count_q(c: Conn) -> dict[str, int]:
            rows = await c.fetch("SELECT state, count(*) AS n FROM jobs GROUP BY state")
            return {r["state"]: int(r["n"]) for r in rows}

        return await self._run(count_q, tx=False)

    async def purge_ended(self, *, before: float, batch: int = 500) -> int:
        async def purge_batch(c: Conn) -> tuple[int, bool]:
            rows = await c.fetch(
                "SELECT id, watch_id FROM jobs WHERE ended_at < $1 ORDER BY ended_at LIMIT $2",
                before,
                batch,
            )
            if not rows:
                return 0, False
            watch_ids = sorted({int(r["watch_id"]) for r in rows})
            # Watches first (in id order), then jobs: the lock order of every writer.
            await c.execute(
                "SELECT 1 FROM watches WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                watch_ids,
            )
            # Attempts go with their job (ON DELETE CASCADE). The condition is checked again
            # on the locked rows: a job redelivered meanwhile stays.
            deleted = await c.fetch(
                "DELETE FROM jobs WHERE id = ANY($1::text[]) AND ended_at < $2 RETURNING id",
                [r["id"] for r in rows],
                before,
            )
            # A watch nobody refers to any more frees its token for any tenant.
            await c.execute(
                "DELETE FROM watches WHERE id = ANY($1::bigint[]) AND next_poll_at IS NULL"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.watch_id = watches.id)",
                watch_ids,
            )
            return len(deleted), True

        total = 0
        # Small transactions, so registrations are never held behind a long delete.
        while True:
            n, more = await self._run(purge_batch)
            total += n
            if not more:
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
        async def claim_q(c: Conn) -> list[WatchWork]:
            rows = await c.fetch(_CLAIM_WATCHES, now, owner, limit, list(skip_kinds), lease)
            return [WatchWork(*r) for r in rows]

        # One statement: its own transaction.
        return await self._run(claim_q, tx=False)

    async def record_poll(
        self, watch_id: int, owner: str, record: PollRecord, *, lease: float = 0, deliver: int = 0
    ) -> list[Recorded]:
        return await self._run(
            lambda c: self._record_poll_tx(c, watch_id, owner, record, lease, deliver)
        )

    async def _record_poll_tx(
        self,
        c: Conn,
        watch_id: int,
        owner: str,
        rec: PollRecord,
        lease: float,
        deliver: int,
    ) -> list[Recorded]:
        # Applied whoever records (SQLite's semantics): a late record from a replica whose
        # lease ran out still carries a real observation, and an outcome must not be lost.
        w = await c.fetchrow("SELECT * FROM watches WHERE id = $1 FOR UPDATE", watch_id)
        if w is None:
            return []
        status, error, result = (
            (rec.status, rec.error, rec.result_json)
            if rec.answered
            else (w["status"], w["error"], w["result"])
        )
        polls = w["polls"] + 1
        if rec.learned:
            await c.executemany(
                "INSERT INTO durations (kind, bucket, weight) VALUES ($1, $2, $3)"
                " ON CONFLICT (kind, bucket) DO UPDATE"
                " SET weight = durations.weight + excluded.weight",
                [(w["kind"], b, weight) for b, weight in rec.learned],
            )
        recorded: list[Recorded] = []
        if rec.outcome is not None:
            recorded = await self._hand_outcome(
                c,
                watch_id,
                rec,
                status=status,
                error=error,
                result=result,
                polls=polls,
                lease=(owner, lease, deliver),
            )
        tracking = await c.fetchval(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE watch_id = $1 AND state = 'tracking')",
            watch_id,
        )
        if not tracking:
            next_poll_at = None
        elif rec.outcome is not None:
            # Jobs that joined while the deciding poll was in flight get a poll of their own.
            next_poll_at = rec.polled_at
        else:
            next_poll_at = rec.next_poll_at
        await c.execute(
            "UPDATE watches SET status = $1, error = $2, result = $3, polls = $4,"
            ' not_found = $5, failures = $6, "interval" = $7, last_polled_at = $8,'
            " last_change_at = CASE WHEN $9 THEN $8 ELSE last_change_at END,"
            " next_poll_at = $10,"
            f" {_GIVE_BACK_LEASE.format(owner='$11', ended='$10::float8 IS NULL')}"
            " WHERE id = $12",
            status,
            error,
            result,
            polls,
            rec.not_found,
            rec.failures,
            rec.interval,
            rec.polled_at,
            rec.changed,
            next_poll_at,
            owner,
            watch_id,
        )
        return recorded

    @staticmethod
    async def _hand_outcome(
        c: Conn,
        watch_id: int,
        rec: PollRecord,
        *,
        status: str | None,
        error: str | None,
        result: str | None,
        polls: int,
        lease: tuple[str, float, int],
    ) -> list[Recorded]:
        assert rec.outcome is not None
        owner, lease_s, deliver = lease
        # Locked and re-checked: a job canceled meanwhile keeps its cancellation.
        jobs = await c.fetch(
            "SELECT id, tenant, kind, token, callback_url, metadata, attempts FROM jobs"
            " WHERE watch_id = $1 AND state = 'tracking' AND created_at <= $2"
            " ORDER BY seq FOR UPDATE",
            watch_id,
            rec.started_at,
        )
        if not jobs:
            return []
        bodies = [
            callback_body(
                job_id=j["id"],
                kind=j["kind"],
                token=j["token"],
                outcome=rec.outcome,
                error=rec.outcome_error,
                result_json=result,
                metadata_json=j["metadata"],
                seen_at=rec.polled_at,
            )
            for j in jobs
        ]
        await c.execute(
            _HAND_OUTCOME,
            [j["id"] for j in jobs],
            bodies,
            rec.outcome,
            status,
            error,
            result,
            polls,
            rec.polled_at,
            rec.polled_at,
            deliver,
            owner,
            lease_s,
        )
        return [
            Recorded(
                j["id"],
                j["kind"],
                j["token"],
                rec.outcome,
                first_delivery(j, body, rec.polled_at) if n < deliver else None,
            )
            for n, (j, body) in enumerate(zip(jobs, bodies, strict=True))
        ]

    async def expire_due(self, *, now: float) -> list[Recorded]:
        async def expire_tx(c: Conn) -> list[Recorded]:
            watch_ids = [
                int(r["watch_id"])
                for r in await c.fetch(
                    "SELECT DISTINCT watch_id FROM jobs"
                    " WHERE state = 'tracking' AND deadline_at <= $1 ORDER BY watch_id",
                    now,
                )
            ]
            if not watch_ids:
                return []
            await c.execute(
                "SELECT 1 FROM watches WHERE id = ANY($1::bigint[]) ORDER BY id FOR UPDATE",
                watch_ids,
            )
            # Re-read under the locks: another replica may have expired them first.
            rows = await c.fetch(
                "SELECT j.id, j.kind, j.token, j.metadata, j.polls_base,"
                " w.status, w.error, w.result, w.polls, w.last_polled_at"
                " FROM jobs j JOIN watches w ON w.id = j.watch_id"
                " WHERE j.state = 'tracking' AND j.deadline_at <= $1"
                " AND j.watch_id = ANY($2::bigint[]) ORDER BY j.seq FOR UPDATE OF j",
                now,
                watch_ids,
            )
            if not rows:
                return []
            await c.executemany(
                "UPDATE jobs SET state = 'delivering', outcome = 'expired',"
                " up_status = $1, up_error = $2, up_result = $3, polls = $4,"
                " last_polled_at = $5, outcome_at = $6, body = $7, next_attempt_at = $6,"
                " round_attempts = 0, updated_at = $6 WHERE id = $8",
                [
                    (
                        r["status"],
                        r["error"],
                        r["result"],
                        r["polls"] - r["polls_base"],
                        r["last_polled_at"],
                        now,
                        callback_body(
                            job_id=r["id"],
                            kind=r["kind"],
                            token=r["token"],
                            outcome="expired",
                            error=EXPIRED_ERROR,
                            result_json=r["result"],
                            metadata_json=r["metadata"],
                            seen_at=now,
                        ),
                        r["id"],
                    )
                    for r in rows
                ],
            )
            await self._idle_watch_if_unwatched(c, watch_ids)
            return [Recorded(r["id"], r["kind"], r["token"], "expired") for r in rows]

        return await self._run(expire_tx)

    async def claim_due_deliveries(
        self, owner: str, *, now: float, lease: float, limit: int
    ) -> list[DeliveryWork]:
        async def claim_q(c: Conn) -> list[DeliveryWork]:
            rows = await c.fetch(_CLAIM_DELIVERIES, now, owner, limit, lease)
            return [
                DeliveryWork(
                    job_id=r["id"],
                    tenant=r["tenant"],
                    kind=r["kind"],
                    token=r["token"],
                    callback_url=r["callback_url"],
                    body=r["body"],
                    attempts=r["attempts"],
                    round_attempts=r["round_attempts"],
                    outcome_at=r["outcome_at"],
                    due_at=r["next_attempt_at"],
                )
                for r in rows
            ]

        return await self._run(claim_q, tx=False)

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

        async def record_tx(c: Conn) -> bool:
            # Applied whoever records, as in SQLite: an attempt that reached the receiver
            # is a fact, and a delivered outcome must never be dropped for a lapsed lease.
            state = await c.fetchval("SELECT state FROM jobs WHERE id = $1 FOR UPDATE", job_id)
            if state is None:  # purged meanwhile
                return False
            await c.execute(
                "INSERT INTO attempts (job_id, n, at, duration_ms, response_status, error)"
                " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (job_id, n) DO UPDATE SET"
                " at = excluded.at, duration_ms = excluded.duration_ms,"
                " response_status = excluded.response_status, error = excluded.error",
                job_id,
                attempt.n,
                attempt.at,
                attempt.duration_ms,
                attempt.response_status,
                attempt.error,
            )
            await c.execute(
                "UPDATE jobs SET attempts = greatest(attempts, $1),"
                " round_attempts = round_attempts + 1, last_attempt_at = $2,"
                " last_response_status = $3, last_error = $4, updated_at = $5,"
                f" {_GIVE_BACK_LEASE.format(owner='$6', ended='false')} WHERE id = $7",
                attempt.n,
                attempt.at,
                attempt.response_status,
                attempt.error,
                finished_at,
                owner,
                job_id,
            )
            if state != DELIVERING:
                # A job canceled while its attempt was on the wire stays canceled.
                return False
            ended = next_state in (DELIVERED, UNDELIVERABLE)
            await c.execute(
                "UPDATE jobs SET state = $1, next_attempt_at = $2,"
                " delivered_at = CASE WHEN $3 THEN $4 ELSE delivered_at END,"
                " ended_at = CASE WHEN $5 THEN $4 ELSE NULL END,"
                f" {_GIVE_BACK_LEASE.format(owner='NULL', ended='$5')} WHERE id = $6",
                next_state,
                next_attempt_at,
                next_state == DELIVERED,
                finished_at,
                ended,
                job_id,
            )
            return True

        return await self._run(record_tx)

    async def durations(self) -> dict[str, list[tuple[int, float]]]:
        async def durations_q(c: Conn) -> dict[str, list[tuple[int, float]]]:
            out: dict[str, list[tuple[int, float]]] = {}
            for r in await c.fetch("SELECT kind, bucket, weight FROM durations ORDER BY 1, 2"):
                out.setdefault(r["kind"], []).append((r["bucket"], r["weight"]))
            return out

        return await self._run(durations_q, tx=False)

    async def scale_durations(self, kind: str, factor: float) -> None:
        async def scale_q(c: Conn) -> None:
            await c.execute(
                "UPDATE durations SET weight = weight * $1 WHERE kind = $2", factor, kind
            )

        await self._run(scale_q, tx=False)

    async def set_pause(self, key: str, reason: str, until: float, kind: str | None) -> None:
        async def set_tx(c: Conn) -> None:
            if until <= 0:
                await c.execute("DELETE FROM pauses WHERE key = $1", key)
                return
            await c.execute(
                "INSERT INTO pauses (key, reason, until, kind) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (key) DO UPDATE SET reason = excluded.reason,"
                " until = greatest(pauses.until, excluded.until), kind = excluded.kind",
                key,
                reason,
                until,
                kind,
            )

        async def set_and_tell(c: Conn) -> None:
            await set_tx(c)
            # Delivered at commit: every replica listening adopts the pause within milliseconds.
            await c.execute(f"SELECT pg_notify('{PAUSE_CHANNEL}', $1)", key)

        await self._run(set_and_tell)

    async def listen_pauses(self, callback: Callable[[], None]) -> None:
        if self._listener is not None:
            return
        settings = {"search_path": quote_ident(self.schema)} if self.schema else {}
        try:
            self._listener = await asyncpg.connect(self.dsn, server_settings=settings)
            await self._listener.add_listener(PAUSE_CHANNEL, lambda *_: callback())
        except Exception as exc:
            raise StoreError(
                f"cannot listen on PostgreSQL at {self.where}: {self._reason(exc)}"
            ) from None

    async def pauses(self) -> list[tuple[str, str, float, str | None]]:
        async def pauses_q(c: Conn) -> list[tuple[str, str, float, str | None]]:
            rows = await c.fetch("SELECT key, reason, until, kind FROM pauses ORDER BY key")
            return [(r[0], r[1], float(r[2]), r[3]) for r in rows]

        return await self._run(pauses_q, tx=False)

    async def backlog(self, *, now: float) -> dict[str, tuple[int, float | None]]:
        # The claims' conditions: due by the caller's clock, unleased by the database's.
        sql = (
            "SELECT"
            " (SELECT row(count(*), min(next_poll_at)) FROM watches WHERE next_poll_at <= $1"
            f"   AND (lease_until IS NULL OR lease_until < {DB_NOW})),"
            " (SELECT row(count(*), min(next_attempt_at)) FROM jobs"
            "   WHERE state = 'delivering' AND next_attempt_at <= $1"
            f"   AND (lease_until IS NULL OR lease_until < {DB_NOW}))"
        )

        async def backlog_q(c: Conn) -> dict[str, tuple[int, float | None]]:
            row = await c.fetchrow(sql, now)
            assert row is not None
            (polls, oldest_poll), (deliveries, oldest_delivery) = row[0], row[1]
            return {
                "poll": (int(polls), oldest_poll),
                "delivery": (int(deliveries), oldest_delivery),
            }

        return await self._run(backlog_q, tx=False)

    async def release(self, owner: str) -> None:
        async def release_tx(c: Conn) -> None:
            # Leases sit only on live work (see _GIVE_BACK_LEASE): the partial indexes of
            # the claims find them without reading the whole tables.
            await c.execute(
                "UPDATE watches SET lease_owner = NULL, lease_until = NULL"
                " WHERE lease_owner = $1 AND next_poll_at IS NOT NULL",
                owner,
            )
            await c.execute(
                "UPDATE jobs SET lease_owner = NULL, lease_until = NULL"
                " WHERE lease_owner = $1 AND state = 'delivering'",
                owner,
            )

        await self._run(release_tx)

    async def next_due(self) -> float | None:
        # Work under a live lease is another worker's; a lease that ran out (its holder
        # died) makes the work due again, as the claims see it.
        sql = (
            "SELECT least("
            " (SELECT min(next_poll_at) FROM watches WHERE next_poll_at IS NOT NULL"
            f"   AND (lease_until IS NULL OR lease_until < {DB_NOW})),"
            " (SELECT min(next_attempt_at) FROM jobs WHERE state = 'delivering'"
            f"   AND (lease_until IS NULL OR lease_until < {DB_NOW})),"
            " (SELECT min(deadline_at) FROM jobs WHERE state = 'tracking'))"
        )

        async def next_q(c: Conn) -> float | None:
            value = await c.fetchval(sql)
            return float(value) if value is not None else None

        return await self._run(next_q, tx=False)
