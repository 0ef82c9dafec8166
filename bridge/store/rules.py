"""The store's rules, once for every engine: plain values in, plain values out, no database.

A verb program reads rows, asks a rule what follows, and writes what it answers. The
dicts a rule returns are named after the parameters of the statement that writes them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Protocol

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
    SigningKey,
    callback_body,
    canonical_json,
    stored_json,
)
from bridge.store.base import Conflict


class Row(Protocol):
    """A row as a driver hands it over (sqlite3.Row, asyncpg.Record), or a dict: by name."""

    def __getitem__(self, column: str, /) -> Any: ...


# A Job's fields are its row's columns but for what it has seen of its watch (between).
_HEAD = itemgetter(
    "id", "tenant", "project", "kind", "token", "callback_url", "metadata", "state", "outcome"
)
_TAIL = itemgetter(
    "attempts", "last_attempt_at", "last_response_status", "last_error", "next_attempt_at",
    "delivered_at", "created_at", "updated_at", "deadline_at",
)  # fmt: skip


def job_from_row(r: Row) -> Job:
    """A Job from a row of the job queries (``jobs`` with its watch's ``w_`` columns)."""
    # A tracking job sees its watch live; any other keeps what it saw when it stopped tracking.
    seen: tuple[Any, ...]
    if r["state"] == TRACKING:
        polls = r["w_polls"] - r["polls_base"]
        seen = (r["w_status"], r["w_error"], r["w_result"], polls, r["w_last_polled_at"])
        seen += (r["w_next_poll_at"],)
    else:
        seen = (r["up_status"], r["up_error"], r["up_result"], r["polls"], r["last_polled_at"])
        seen += (None,)
    return Job(*_HEAD(r), *seen, *_TAIL(r))


def signing_key_from_row(r: Row) -> SigningKey:
    """A generated signing key from a ``signing_keys`` row."""
    expires = r["expires_at"]
    return SigningKey(
        r["scheme"], r["secret"], r["public_key"], None if expires is None else float(expires)
    )


def page(rows: Sequence[Row], limit: int) -> tuple[list[Job], int | None]:
    """A listing page from up to ``limit + 1`` rows, newest first; the cursor when more follow."""
    more = len(rows) > limit
    rows = rows[:limit]
    return [job_from_row(r) for r in rows], (int(rows[-1]["seq"]) if more else None)


# -- registration ----------------------------------------------------------------------------


def url_digest(url: str) -> bytes:
    """What registration's unique index holds for a callback URL: SHA-256 of its UTF-8.

    A digest, not the URL: a 2048-character URL of 4-byte characters is past what a
    PostgreSQL index row holds. Equality is still checked on the URL itself.
    """
    return hashlib.sha256(url.encode("utf-8", "surrogatepass")).digest()


def same_metadata(stored: str | None, new: str | None) -> bool:
    """Whether two metadata JSON texts hold the same JSON value: members in any order,
    numbers by numeric value (``1`` and ``1.0`` are the same; ``true`` is not ``1``)."""
    if stored is None or new is None:
        return stored is new
    return canonical_json(stored_json(stored)) == canonical_json(stored_json(new))


def registration(owner: str | None, existing: Job | None, new: NewJob) -> Job | None:
    """What a registration meets: the job to answer as it is, or None to make one.

    ``owner`` is the tenant of the (project, kind, token) watch, None when this registration
    made it.
    """
    if owner is not None and owner != new.tenant:
        raise Conflict("this token is registered by another tenant")
    if existing is None:
        return None
    if same_metadata(existing.metadata, new.metadata):
        return existing
    raise Conflict(
        "a job for this project, kind, token and callback_url exists with other metadata"
    )


@dataclass(frozen=True, slots=True)
class Arming:
    next_poll_at: float
    afresh: bool  # the watch had ended: forget what its last round saw


def arm(next_poll_at: float | None, first_poll_at: float) -> Arming:
    """How an existing watch takes a newcomer (the watch made for it is armed already)."""
    if next_poll_at is None:
        # The watch had ended: poll again for the newcomer, starting afresh.
        return Arming(first_poll_at, afresh=True)
    # A live watch: its next poll is the newcomer's first one, no later than promised.
    return Arming(min(next_poll_at, first_poll_at), afresh=False)


# -- polls and outcomes ------------------------------------------------------------------------


def seen(watch: Row, rec: PollRecord) -> dict[str, Any]:
    """What the watch has seen after the poll: an answer replaces what it saw before,
    anything else keeps it; every poll counts."""
    if rec.answered:
        status, error, result = rec.status, rec.error, rec.result_json
    else:
        status, error, result = watch["status"], watch["error"], watch["result"]
    return {
        "status": status,
        "error": error,
        "result": result,
        "polls": watch["polls"] + 1,
        "last_polled_at": rec.polled_at,
    }


def polled(
    watch: Row, rec: PollRecord, seen: Mapping[str, Any], promised: float | None = None
) -> dict[str, Any]:
    """The watch row after the poll, while a job still tracks it (``record_watch`` idles
    a watch nobody tracks: no next poll, and its lease goes, whoever holds it).

    ``promised`` is the earliest first poll promised to a job that registered while this
    poll was in flight: the poll is not its, so the next one comes no later than that.
    """
    # After an outcome, jobs that joined while the deciding poll was in flight get a poll
    # of their own, at once.
    next_poll_at = rec.polled_at if rec.outcome is not None else rec.next_poll_at
    if promised is not None:
        next_poll_at = min(next_poll_at, promised)
    return {
        **seen,
        "not_found": rec.not_found,
        "failures": rec.failures,
        "interval": rec.interval,
        "last_change_at": rec.polled_at if rec.changed else watch["last_change_at"],
        "next_poll_at": next_poll_at,
    }


def handed(job: Row, outcome: str, error: str | None, seen: Row, at: float) -> dict[str, Any]:
    """A tracking job given its outcome at ``at``: it keeps what its watch has ``seen``,
    and its callback body is fixed now, the same on every attempt. Not leased."""
    body = callback_body(
        job_id=job["id"],
        project=job["project"],
        kind=job["kind"],
        token=job["token"],
        outcome=outcome,
        error=error,
        result_json=seen["result"],
        metadata_json=job["metadata"],
        seen_at=at,
    )
    return {
        "job_id": job["id"],
        "outcome": outcome,
        "up_status": seen["status"],
        "up_error": seen["error"],
        "up_result": seen["result"],
        "polls": seen["polls"] - job["polls_base"],
        "last_polled_at": seen["last_polled_at"],
        "at": at,
        "body": body,
        "lease_owner": None,
        "lease": None,
    }


def outcome(
    jobs: Sequence[Row], rec: PollRecord, seen: Row, *, owner: str, lease: float, deliver: int
) -> tuple[list[dict[str, Any]], list[Recorded]]:
    """A poll's outcome for every job it decides, in registration order; the first
    ``deliver`` come back with their first callback leased to ``owner``."""
    assert rec.outcome is not None
    updates, recorded = [], []
    for n, job in enumerate(jobs):
        update = handed(job, rec.outcome, rec.outcome_error, seen, rec.polled_at)
        work = None
        if n < deliver:
            update |= {"lease_owner": owner, "lease": lease}
            work = first_delivery(job, update["body"], rec.polled_at)
        updates.append(update)
        recorded.append(
            Recorded(job["id"], job["kind"], job["token"], rec.outcome, work, job["project"])
        )
    return updates, recorded


def first_delivery(job: Row, body: bytes, at: float) -> DeliveryWork:
    """A job's first callback attempt, handed to the poll that recorded its outcome at ``at``."""
    return DeliveryWork(
        job["id"],
        job["tenant"],
        job["kind"],
        job["token"],
        job["callback_url"],
        body,
        job["attempts"],
        0,
        at,
        at,
        at,
    )


def expiry(row: Row, now: float) -> dict[str, Any]:
    """A tracking job past its deadline (``row``: the job with what its watch has seen)."""
    return handed(row, "expired", EXPIRED_ERROR, row, now)


# -- paused time, credited to deadlines -----------------------------------------------------

Span = tuple[float, float]  # (since, until): polling of a kind paused over it


def widen(span: Span | None, at: float, until: float) -> tuple[Span | None, Span]:
    """A pause taken at ``at`` until ``until``: the span it opens or widens, and the one it
    leaves to settle (a span that ended before this pause began). Overlapping and
    extended pauses widen one span, so each stretch of paused time counts once."""
    if span is None:
        return None, (at, until)
    since, end = span
    if at <= end:
        return None, (since, max(end, until))
    return span, (at, until)


def narrow(span: Span | None, at: float, others_until: float | None) -> Span | None:
    """A pause lifted at ``at`` (a good answer): the span ends then, unless other pauses
    of the kind still hold it (``others_until``, the latest of their ends)."""
    if span is None:
        return None
    since, end = span
    held = at if others_until is None else max(at, others_until)
    return since, max(since, min(end, held))


# -- the API's changes and callback attempts ---------------------------------------------------


def cancel(job: Job) -> dict[str, Any] | None:
    """What a canceled job keeps (what it saw, frozen); None when it is canceled already."""
    if job.state == CANCELED:
        return None
    if job.state in ENDED_STATES:
        raise Conflict(f"the job is already {job.state}")
    return {
        "up_status": job.upstream_status,
        "up_error": job.upstream_error,
        "up_result": job.upstream_result,
        "polls": job.polls,
        "last_polled_at": job.last_polled_at,
    }


def redeliver(job: Job) -> None:
    """Only an ended delivery starts a new round."""
    if job.state not in (DELIVERED, UNDELIVERABLE):
        raise Conflict(
            f"only a delivered or undeliverable job can be redelivered; this one is {job.state}"
        )


def bulk_redeliverable(state: str) -> None:
    """Bulk redelivery takes one of the states a single redelivery starts from."""
    if state not in (DELIVERED, UNDELIVERABLE):
        raise ValueError(f"bulk redelivery is of delivered or undeliverable jobs, not {state}")


def attempted(
    job: Row, attempt: Attempt, *, next_state: str, next_attempt_at: float | None
) -> tuple[dict[str, Any], bool]:
    """The attempt's row and the job's after it, and whether the attempt decided its state.

    The attempt counts whoever records it and whatever the job became meanwhile; a job
    canceled while its attempt was on the wire stays canceled.
    """
    finished_at = attempt.at + attempt.duration_ms / 1000
    live = job["state"] == DELIVERING
    ended = live and next_state in (DELIVERED, UNDELIVERABLE)
    return {
        "n": attempt.n,
        "at": attempt.at,
        "duration_ms": attempt.duration_ms,
        "response_status": attempt.response_status,
        "error": attempt.error,
        "response_excerpt": attempt.response_excerpt,
        "response_content_type": attempt.response_content_type,
        "attempts": max(job["attempts"], attempt.n),
        "finished_at": finished_at,
        "state": next_state if live else job["state"],
        "next_attempt_at": next_attempt_at if live else job["next_attempt_at"],
        "delivered_at": finished_at if live and next_state == DELIVERED else job["delivered_at"],
        "ended_at": (finished_at if ended else None) if live else job["ended_at"],
        "ended": ended,  # no more attempts: its lease goes, whoever holds it
    }, live
