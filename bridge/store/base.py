"""The store's narrow interface: domain verbs, no SQL outside the implementations."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Protocol

from bridge.model import Attempt, DeliveryWork, Job, NewJob, PollRecord, Recorded, WatchWork


class StoreError(Exception):
    """The database could not be used (unreachable, locked by another process, corrupt)."""


class Conflict(Exception):
    """The request contradicts what the store holds; ``str()`` is a sentence for the caller."""


class Store(Protocol):
    async def close(self) -> None: ...

    async def migrate(self) -> int:
        """Apply pending schema migrations; return the schema version."""

    async def ping(self) -> None:
        """Raise if the database does not answer."""

    async def register(
        self, new: NewJob, *, now: float, first_poll_at: float, deadline_at: float
    ) -> tuple[Job, bool]:
        """Store a registration durably; return the job and whether it is new.

        An existing job for the same tenant, kind, token and callback URL that is not
        canceled is returned as it is when its metadata is the same, and is a Conflict
        otherwise; so is a (kind, token) that another tenant registered first.
        """

    async def get_job(self, tenant: str, job_id: str) -> Job | None: ...

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
        """Newest first; ``before`` is the cursor a previous page returned."""

    async def cancel(self, tenant: str, job_id: str, *, now: float) -> tuple[Job, bool] | None:
        """Stop a tracking or delivering job; return it and whether this call changed it.

        None when unknown; Conflict when it is delivered or undeliverable.
        """

    async def redeliver(self, tenant: str, job_id: str, *, now: float) -> Job | None:
        """Start a new delivery round of a delivered or undeliverable job."""

    async def attempts(self, tenant: str, job_id: str) -> list[Attempt] | None: ...

    async def signing_secret(self, tenant: str, *, generate: Callable[[], str], now: float) -> str:
        """The tenant's generated secret, made with ``generate`` and stored on first use."""

    async def count_by_state(self) -> dict[str, int]: ...

    async def purge_ended(self, *, before: float, batch: int = 500) -> int:
        """Delete jobs that ended before ``before``, with their attempts; return how many."""

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
        """Lease up to ``limit`` watches whose poll is due, earliest first."""

    async def record_poll(
        self, watch_id: int, owner: str, record: PollRecord, *, lease: float = 0, deliver: int = 0
    ) -> list[Recorded]:
        """Commit a poll's result; hand an outcome to every job registered before the poll.

        Up to ``deliver`` of those jobs come back with their first callback already leased
        to ``owner`` for ``lease`` seconds (``Recorded.delivery``), so the recorder can
        start them at once; the rest wait for ``claim_due_deliveries``.
        """

    async def expire_due(self, *, now: float) -> list[Recorded]:
        """Give ``expired`` to every tracking job past its deadline."""

    async def claim_due_deliveries(
        self, owner: str, *, now: float, lease: float, limit: int
    ) -> list[DeliveryWork]:
        """Lease up to ``limit`` callbacks whose attempt is due, earliest first."""

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

    async def durations(self) -> dict[str, list[tuple[int, float]]]:
        """The learned duration histogram: per kind, (bucket, weight) pairs."""

    async def scale_durations(self, kind: str, factor: float) -> None:
        """Multiply one kind's histogram by ``factor`` (how old history fades)."""

    async def set_pause(self, key: str, reason: str, until: float, kind: str | None) -> None:
        """Record an upstream pause for every process on this database to honour.

        A pause never shortens one already stored under ``key`` unless it has ended;
        ``until`` 0 ends it.
        """

    async def pauses(self) -> list[tuple[str, str, float, str | None]]:
        """Every stored pause: (key, reason, until, kind)."""

    async def listen_pauses(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever any process stores a pause (no-op for one process)."""

    async def backlog(self, *, now: float) -> dict[str, tuple[int, float | None]]:
        """Work due and not started, for ``poll`` and ``delivery``: (count, oldest due time)."""

    async def release(self, owner: str) -> None:
        """Give back every lease ``owner`` holds."""

    async def next_due(self) -> float | None:
        """When the earliest poll, callback or deadline falls due (leased work aside)."""


def encode_cursor(position: int) -> str:
    """An opaque cursor for the listing position ``position``."""
    return base64.urlsafe_b64encode(f"v1:{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor stands for; ValueError for anything this server did not hand out."""
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError("not a cursor this server gave out") from None
    prefix, _, number = text.partition(":")
    if prefix != "v1" or not number.isdigit() or len(number) > 18:
        raise ValueError("not a cursor this server gave out")
    return int(number)
