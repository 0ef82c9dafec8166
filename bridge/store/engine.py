"""The Store, once: each verb's program handed to the engine's driver."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Protocol, TypeVar

from bridge import model
from bridge.model import (
    Attempt,
    DeliveryWork,
    Job,
    NewJob,
    PollRecord,
    Recorded,
    SigningKey,
    WatchWork,
)
from bridge.store import verbs
from bridge.store.base import open_cursor, seal_cursor
from bridge.store.queries import Program
from bridge.store.verbs import Around

T = TypeVar("T")


class Driver(Protocol):
    # Whether other processes may share the database (and so change it behind this one).
    shared: bool

    async def run(self, program: Callable[[], Program[T]], *, tx: bool = True) -> T:
        """Run a fresh ``program()`` to its end; in one transaction unless ``tx`` is False
        (a single statement is its own)."""

    async def ping(self) -> None: ...

    async def migrate(self) -> int: ...

    async def listen(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for each notice on ``channel`` (no-op for one process)."""

    async def close(self) -> None: ...


class Store:
    """The store's verbs, on whichever driver it was opened with (``open_store``).

    Each method hands its verb's program (``verbs``) to the driver; the driver is the
    extension point (``Driver``), not this class.
    """

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self._cursor_secret: bytes | None = None

    @property
    def shared(self) -> bool:
        """Whether replicas may share this database (PostgreSQL), so that a change made
        through another process can reach this one only through the database."""
        return self.driver.shared

    async def close(self) -> None:
        await self.driver.close()

    async def migrate(self) -> int:
        """Apply pending schema migrations; return the schema version."""
        return await self.driver.migrate()

    async def ping(self) -> None:
        """Raise if the database does not answer."""
        await self.driver.ping()

    async def register(
        self, new: NewJob, *, now: float, first_poll_at: float, deadline_at: float
    ) -> tuple[Job, bool]:
        """Store a registration durably; return the job and whether it is new.

        An existing job for the same tenant, project, kind, token and callback URL that is
        not canceled is returned as it is when its metadata is the same, and is a Conflict
        otherwise; so is a (project, kind, token) that another tenant registered first.
        """
        job_id = model.new_job_id(now)
        return await self.driver.run(
            lambda: verbs.register(new, job_id, now, first_poll_at, deadline_at)
        )

    async def get_job(self, tenant: str, job_id: str) -> Job | None:
        return await self.driver.run(lambda: verbs.get_job(tenant, job_id), tx=False)

    async def list_jobs(
        self,
        tenant: str,
        *,
        state: str | None = None,
        kind: str | None = None,
        project: str | None = None,
        token: int | None = None,
        limit: int = 100,
        before: str | None = None,
    ) -> tuple[list[Job], str | None]:
        """Newest first, and the cursor of the next page (None on the last one).

        ``before`` is a cursor a previous page returned to this tenant: opaque, sealed
        under the key the servers on this database share. BadCursor for any other.
        """
        key = await self._cursor_key()
        position = None if before is None else open_cursor(key, tenant, before)
        jobs, last = await self.driver.run(
            lambda: verbs.list_jobs(tenant, state, kind, token, limit, position, project),
            tx=False,
        )
        return jobs, None if last is None else seal_cursor(key, tenant, last)

    async def _cursor_key(self) -> bytes:
        """The key that seals listing cursors: made once for the database, then kept."""
        if self._cursor_secret is None:
            candidate = os.urandom(32).hex()
            now = time.time()
            found = await self.driver.run(lambda: verbs.server_key("cursor", candidate, now))
            self._cursor_secret = bytes.fromhex(found)
        return self._cursor_secret

    async def cancel(self, tenant: str, job_id: str, *, now: float) -> tuple[Job, bool] | None:
        """Stop a tracking or delivering job; return it and whether this call changed it.

        None when unknown; Conflict when it is delivered or undeliverable.
        """
        return await self.driver.run(lambda: verbs.cancel(tenant, job_id, now))

    async def redeliver(self, tenant: str, job_id: str, *, now: float) -> Job | None:
        """Start a new delivery round of a delivered or undeliverable job."""
        return await self.driver.run(lambda: verbs.redeliver(tenant, job_id, now))

    async def redeliver_many(
        self,
        tenant: str,
        *,
        state: str,
        kind: str | None = None,
        project: str | None = None,
        since: float | None = None,
        until: float | None = None,
        limit: int,
        now: float,
    ) -> tuple[int, int]:
        """Start a new delivery round, as ``redeliver`` does, for up to ``limit`` of the
        tenant's jobs in ``state`` (delivered or undeliverable) of ``kind`` and ``project``
        whose last round ended in [``since``, ``until``), the earliest-ended first; one
        transaction. Return how many started and how many more match."""
        return await self.driver.run(
            lambda: verbs.redeliver_many(tenant, state, kind, since, until, limit, now, project)
        )

    async def attempts(self, tenant: str, job_id: str) -> list[Attempt] | None:
        return await self.driver.run(lambda: verbs.attempts(tenant, job_id))

    async def signing_keys(
        self,
        tenant: str,
        scheme: str,
        *,
        generate: Callable[[], tuple[str, str | None]],
        now: float,
    ) -> list[SigningKey]:
        """The tenant's generated keys of ``scheme`` that sign at ``now``, the current one
        first; with none current, one made with ``generate`` (secret, public key) is stored."""
        found = await self.driver.run(lambda: verbs.signing_keys(tenant, scheme, now), tx=False)
        if found and found[0].expires_at is None:
            return found
        candidate = generate()
        return await self.driver.run(
            lambda: verbs.offer_signing_key(tenant, scheme, candidate, now)
        )

    async def rotate_signing_key(
        self,
        tenant: str,
        scheme: str,
        *,
        generate: Callable[[], tuple[str, str | None]],
        now: float,
        overlap: float,
    ) -> list[SigningKey]:
        """Make a new current key with ``generate``; the one it replaces signs ``overlap``
        seconds more, any older one stops. Announced to every replica (``listen_signing``).
        Returns the keys in force afterwards, the new one first."""
        candidate = generate()
        return await self.driver.run(
            lambda: verbs.rotate_signing_key(tenant, scheme, candidate, now, overlap)
        )

    async def listen_signing(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(tenant)`` whenever any process rotates a tenant's keys (no-op for
        one process: its own rotations reach its book directly)."""
        await self.driver.listen(verbs.SIGNING_CHANNEL, callback)

    async def count_by_state(self) -> dict[str, int]:
        return await self.driver.run(verbs.count_by_state, tx=False)

    async def purge_ended(self, *, before: float, batch: int = 500) -> int:
        """Delete jobs that ended before ``before``, with their attempts; return how many."""
        total = 0
        # Small transactions, so registrations are never held behind a long delete.
        while True:
            n, more = await self.driver.run(lambda: verbs.purge_batch(before, batch))
            total += n
            if not more:
                return total

    # -- the scheduler's verbs -------------------------------------------------------------

    async def claim_due_watches(
        self,
        owner: str,
        *,
        now: float,
        lease: float,
        limit: int,
        skip_projects: tuple[str, ...] = (),
        skip_kinds: tuple[tuple[str, str], ...] = (),
    ) -> list[WatchWork]:
        """Lease up to ``limit`` watches whose poll is due, earliest first (tenants taking
        turns), none of the paused ``skip_projects`` nor of the paused (project, kind)
        pairs ``skip_kinds``."""
        return await self.driver.run(
            lambda: verbs.claim_due_watches(owner, now, lease, limit, skip_projects, skip_kinds),
            tx=False,
        )

    async def record_poll(
        self, watch_id: int, owner: str, record: PollRecord, *, lease: float = 0, deliver: int = 0
    ) -> list[Recorded]:
        """Commit a poll's result; hand an outcome to every job registered before the poll.

        Up to ``deliver`` of those jobs come back with their first callback already leased
        to ``owner`` for ``lease`` seconds (``Recorded.delivery``), so the recorder can
        start them at once; the rest wait for ``claim_due_deliveries``.
        """
        return await self.driver.run(
            lambda: verbs.record_poll(watch_id, owner, record, lease, deliver)
        )

    async def expire_due(self, *, now: float) -> list[Recorded]:
        """Give ``expired`` to every tracking job past its deadline.

        First, paused time that has ended is credited to the deadlines of the jobs it
        held; a (project, kind) whose polling is paused now does not expire.
        """
        return await self.driver.run(lambda: verbs.expire_due(now))

    async def claim_due_deliveries(
        self, owner: str, *, now: float, lease: float, limit: int, around: Around | None = None
    ) -> list[DeliveryWork]:
        """Lease up to ``limit`` callbacks whose attempt is due, earliest first, leaving
        alone those ``around`` names (the ones this process may not start now)."""
        return await self.driver.run(
            lambda: verbs.claim_due_deliveries(owner, now, lease, limit, around or Around()),
            tx=False,
        )

    async def release_deliveries(self, owner: str, job_ids: list[str]) -> None:
        """Give back claimed callbacks unstarted: due as they were, no attempt spent."""
        await self.driver.run(lambda: verbs.release_deliveries(owner, job_ids), tx=False)

    async def end_round(self, job_id: str, owner: str, *, now: float, round_length: float) -> bool:
        """End a claimed job's round ``undeliverable`` without an attempt, if it has lasted
        ``round_length`` seconds and is still delivering; whether it did."""
        return await self.driver.run(
            lambda: verbs.end_round(job_id, owner, now, round_length), tx=False
        )

    async def record_attempt(
        self,
        job_id: str,
        owner: str,
        attempt: Attempt,
        *,
        next_state: str,
        next_attempt_at: float | None,
    ) -> bool:
        """Commit an attempt and what follows; False if the job left ``delivering`` meanwhile."""
        return await self.driver.run(
            lambda: verbs.record_attempt(job_id, owner, attempt, next_state, next_attempt_at)
        )

    async def durations(self) -> dict[str, list[tuple[int, float]]]:
        """The learned duration histogram: per kind, (bucket, weight) pairs."""
        return await self.driver.run(verbs.durations, tx=False)

    async def scale_durations(self, kind: str, factor: float) -> None:
        """Multiply one kind's histogram by ``factor`` (how old history fades)."""
        await self.driver.run(lambda: verbs.scale_durations(kind, factor), tx=False)

    async def set_pause(
        self,
        key: str,
        reason: str,
        until: float,
        kind: str | None,
        *,
        project: str = model.DEFAULT_PROJECT,
        at: float | None = None,
    ) -> None:
        """Record an upstream pause of ``project`` for every process on this database to
        honour.

        A pause never shortens one already stored under ``key`` unless it has ended;
        ``until`` 0 ends it. ``at`` is when it was taken (or lifted): given, the paused
        time is kept per project and kind, so that no job of a paused (project, kind)
        expires and each pause moves the deadlines of the jobs it held by its length
        (``expire_due``).
        """
        await self.driver.run(lambda: verbs.set_pause(key, reason, until, kind, project, at))

    async def pauses(self) -> list[tuple[str, str, float, str | None, str]]:
        """Every stored pause: (key, reason, until, kind, project)."""
        return await self.driver.run(verbs.pauses, tx=False)

    async def listen_pauses(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever any process stores a pause (no-op for one process)."""
        await self.driver.listen(verbs.PAUSE_CHANNEL, lambda _: callback())

    async def listen_cancels(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(job_id)`` whenever any process cancels a job (no-op for one
        process: the API tells its own scheduler directly)."""
        await self.driver.listen(verbs.CANCEL_CHANNEL, callback)

    async def delivery_live(self, job_id: str) -> bool:
        """Whether the job is still ``delivering``: read right before a callback is sent by
        a claim old enough that a cancel on another replica may have missed its notice."""
        return await self.driver.run(lambda: verbs.delivery_live(job_id), tx=False)

    async def backlog(self, *, now: float) -> dict[str, tuple[int, float | None]]:
        """Work due and not started, for ``poll`` and ``delivery``: (count, oldest due time)."""
        return await self.driver.run(lambda: verbs.backlog(now), tx=False)

    async def release(self, owner: str) -> None:
        """Give back every lease ``owner`` holds."""
        await self.driver.run(lambda: verbs.release(owner))

    async def next_due(self, *, callbacks: bool = True) -> float | None:
        """When the earliest poll, callback (unless not ``callbacks``) or deadline falls due
        (leased work aside)."""
        return await self.driver.run(lambda: verbs.next_due(callbacks), tx=False)
