"""Every store verb, written once as a program for any driver.

A program is a generator: it yields queries by name (``queries.Op``), is sent each one's
result, and returns the verb's result. The SQLite driver runs it to the end on its own
thread inside one transaction; the PostgreSQL driver awaits each query inside one, and
runs it again from the start when the server asks for a retry. So a program decides only
from what it read, and keeps no state outside itself.

Writers that touch a watch and its jobs lock the watch row first, then the jobs: that
serializes registration, polls, cancellation, expiry and retention per (project, kind,
token), and
one lock order keeps them free of deadlocks (SQLite's transaction holds the whole file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from operator import itemgetter

from bridge.fairness import host_key
from bridge.model import (
    DELIVERING,
    KINDS,
    Attempt,
    DeliveryWork,
    Job,
    NewJob,
    PollRecord,
    Recorded,
    SigningKey,
    WatchWork,
)
from bridge.store import queries as q
from bridge.store import rules
from bridge.store.base import Conflict
from bridge.store.queries import Program


@dataclass(frozen=True, slots=True)
class Around:
    """What a delivery claim leaves alone (``bridge.fairness``): callbacks of these tenants
    and hosts, and those bound for ``held_hosts`` (open circuits) unless their round has
    lasted ``round_length`` seconds."""

    tenants: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    held_hosts: tuple[str, ...] = ()
    round_length: float = math.inf
    # The most a claim takes for one host or tenant: ``host_room``/``tenant_room`` for
    # those with callbacks in flight, else the whole cap.
    host_room: tuple[tuple[str, int], ...] = ()
    tenant_room: tuple[tuple[str, int], ...] = ()
    host_cap: int = 1 << 30
    tenant_cap: int = 1 << 30


# How many due callbacks a claim looks at, per callback it may take: enough that a host
# with little room left does not leave the rest of the claim empty.
CLAIM_SCAN = 4


# NOTIFY channel on which a stored pause is announced to every replica.
PAUSE_CHANNEL = "bridge_pauses"
# NOTIFY channel on which a canceled job's id is announced: a replica holding a claim on
# its callback drops the attempt before it starts.
CANCEL_CHANNEL = "bridge_cancels"
# NOTIFY channel on which a tenant whose signing keys were rotated is announced: every
# replica reads its keys again before the next callback it signs.
SIGNING_CHANNEL = "bridge_signing_keys"


def ping() -> Program[None]:
    yield q.val("ping")


def register(
    new: NewJob, job_id: str, now: float, first_poll_at: float, deadline_at: float
) -> Program[tuple[Job, bool]]:
    p = {"job_id": job_id, "now": now, "first_poll_at": first_poll_at, "deadline_at": deadline_at}
    p |= {"tenant": new.tenant, "project": new.project, "kind": new.kind, "token": new.token}
    p |= {"callback_url": new.callback_url, "metadata": new.metadata}
    p["url_digest"] = rules.url_digest(new.callback_url)
    p["callback_host"] = host_key(new.callback_url)
    # The watch row lock serializes every registration of this (project, kind, token).
    watch, made = None, 0
    while watch is None and not made:
        watch = yield q.row("watch_by_token", p)
        if watch is None:
            # Nothing when another registration made it after our look: read (and lock) theirs.
            made = yield q.exec("make_watch", p)
    # The watch made for this registration is armed already; one it found takes it on.
    arming = None if watch is None else rules.arm(watch["next_poll_at"], first_poll_at)
    p["watch_id"] = None if watch is None else watch["id"]
    # A watch this registration made has no jobs yet: nothing to compare against.
    look = watch is not None
    for _ in range(3):
        existing_id = (yield q.val("registered_job", p)) if look else None
        existing = None if existing_id is None else (yield from get_job(new.tenant, existing_id))
        kept = rules.registration(None if watch is None else watch["owner"], existing, new)
        if kept is not None:
            return kept, False
        if arming is not None:
            p["next_poll_at"] = arming.next_poll_at
            yield q.exec("rearm_watch" if arming.afresh else "pull_watch", p)
            arming = None
        if (yield q.exec("insert_job", p)):
            break
        look = True
        # A duplicate committed despite the watch lock: decide against it, as above.
    else:
        # The index holds a job whose URL has the same digest but other bytes: SHA-256
        # collided. Never a loop, never a 500.
        raise Conflict("a job for this kind and token exists with a colliding callback_url")
    created = yield from get_job(new.tenant, job_id)
    assert created is not None
    return created, True


def get_job(tenant: str, job_id: str) -> Program[Job | None]:
    found = yield q.row("job_by_id", tenant=tenant, job_id=job_id)
    return rules.job_from_row(found) if found is not None else None


def list_jobs(
    tenant: str,
    state: str | None,
    kind: str | None,
    token: int | None,
    limit: int,
    before: int | None,
    project: str | None = None,
) -> Program[tuple[list[Job], int | None]]:
    found = yield q.rows(
        "list_jobs",
        tenant=tenant,
        state=state,
        kind=kind,
        project=project,
        token=token,
        before=before,
        limit=limit + 1,
    )
    return rules.page(found, limit)


def _locked_job(tenant: str, job_id: str) -> Program[Job | None]:
    """The job, locked for this transaction (its watch, when needed, locked first)."""
    if (yield q.val("lock_job", tenant=tenant, job_id=job_id)) is None:
        return None
    return (yield from get_job(tenant, job_id))


def cancel(tenant: str, job_id: str, now: float) -> Program[tuple[Job, bool] | None]:
    watch_id = yield q.val("job_watch", tenant=tenant, job_id=job_id)
    if watch_id is None:
        return None
    # Watch first, then the job: the lock order of every writer.
    yield q.exec("lock_watches", watch_ids=[watch_id])
    job = yield from _locked_job(tenant, job_id)
    if job is None:
        return None
    frozen = rules.cancel(job)
    if frozen is None:
        return job, False
    # Freeze what the job saw, then let the watch go idle if nobody else needs it.
    yield q.exec("cancel_job", **frozen, job_id=job_id, now=now)
    yield q.exec("idle_watches", watch_ids=[watch_id])
    # Delivered at commit: a replica about to send this job's callback drops it.
    yield q.notify(CANCEL_CHANNEL, job_id)
    canceled = yield from get_job(tenant, job_id)
    assert canceled is not None
    return canceled, True


def redeliver(tenant: str, job_id: str, now: float) -> Program[Job | None]:
    job = yield from _locked_job(tenant, job_id)
    if job is None:
        return None
    rules.redeliver(job)
    yield q.exec("redeliver_job", job_id=job_id, now=now)
    return (yield from get_job(tenant, job_id))


def redeliver_many(
    tenant: str,
    state: str,
    kind: str | None,
    since: float | None,
    until: float | None,
    limit: int,
    now: float,
    project: str | None = None,
) -> Program[tuple[int, int]]:
    """Bulk redelivery: how many jobs started a new round, and how many more match."""
    rules.bulk_redeliverable(state)
    p = {"tenant": tenant, "state": state, "kind": kind, "since": since, "until": until}
    p["project"] = project
    started = yield q.exec("redeliver_jobs", p, limit=limit, now=now)
    # The started ones no longer match (they are delivering): what is left is the rest.
    remaining = yield q.val("redeliverable_count", p)
    return int(started), int(remaining)


def delivery_live(job_id: str) -> Program[bool]:
    state = yield q.val("job_state", job_id=job_id)
    return bool(state == DELIVERING)


def attempts(tenant: str, job_id: str) -> Program[list[Attempt] | None]:
    if (yield q.val("job_watch", tenant=tenant, job_id=job_id)) is None:
        return None
    return [Attempt(*r) for r in (yield q.rows("attempts", job_id=job_id))]


def signing_keys(tenant: str, scheme: str, now: float) -> Program[list[SigningKey]]:
    """The tenant's keys of ``scheme`` that sign at ``now``, the current one first."""
    found = yield q.rows("signing_keys", tenant=tenant, scheme=scheme, now=now)
    return [rules.signing_key_from_row(r) for r in found]


def offer_signing_key(
    tenant: str, scheme: str, candidate: tuple[str, str | None], now: float
) -> Program[list[SigningKey]]:
    """The keys in force, ``candidate`` (secret, public key) becoming the current one if
    there is none: the first replica to insert wins, every other one reads the winner's."""
    yield q.exec("signing_lock", tenant=tenant)
    secret, public_key = candidate
    params = {"tenant": tenant, "scheme": scheme, "secret": secret, "public_key": public_key}
    yield q.exec("offer_signing_key", params, now=now)
    return (yield from signing_keys(tenant, scheme, now))


def rotate_signing_key(
    tenant: str, scheme: str, candidate: tuple[str, str | None], now: float, overlap: float
) -> Program[list[SigningKey]]:
    """``candidate`` becomes current; the one it replaces signs ``overlap`` seconds more; any
    older one stops. Under the tenant's lock, so rotations at once run one after the other:
    two keys in force afterwards, never three, never none."""
    yield q.exec("signing_lock", tenant=tenant)
    yield q.exec("drop_retired_keys", tenant=tenant, scheme=scheme)
    yield q.exec("retire_current_key", tenant=tenant, scheme=scheme, expires_at=now + overlap)
    secret, public_key = candidate
    params = {"tenant": tenant, "scheme": scheme, "secret": secret, "public_key": public_key}
    yield q.exec("insert_signing_key", params, now=now)
    # Delivered at commit: every replica listening drops its cached keys for the tenant.
    yield q.notify(SIGNING_CHANNEL, tenant)
    return (yield from signing_keys(tenant, scheme, now))


def server_key(name: str, candidate: str, now: float) -> Program[str]:
    # As offer_signing_key: the first server to insert wins, every other one reads its key.
    yield q.exec("offer_server_key", name=name, secret=candidate, now=now)
    return str((yield q.val("server_key", name=name)))


def count_by_state() -> Program[dict[str, int]]:
    return {r[0]: int(r[1]) for r in (yield q.rows("count_by_state"))}


def purge_batch(before: float, batch: int) -> Program[tuple[int, bool]]:
    """One small transaction of retention: how many jobs went, and whether to go on."""
    found = yield q.rows("ended_jobs", before=before, batch=batch)
    if not found:
        return 0, False
    watch_ids = sorted({int(r["watch_id"]) for r in found})
    # Watches first (in id order), then jobs: the lock order of every writer.
    yield q.exec("lock_watches", watch_ids=watch_ids)
    # Attempts go with their job (ON DELETE CASCADE). The condition is checked again on
    # the locked rows: a job redelivered meanwhile stays.
    deleted = yield q.rows("delete_jobs", job_ids=[r["id"] for r in found], before=before)
    # A watch nobody refers to any more stays, idle: its owner keeps the token for good.
    yield q.exec("strip_watches", watch_ids=watch_ids)
    return len(deleted), True


# -- the scheduler's verbs -----------------------------------------------------------------


def pair_key(project: str, kind: str) -> str:
    """How a (project, kind) pair is named in the claim's and expiry's lists: project names
    hold no ``:``, so the text is one pair's."""
    return f"{project}:{kind}"


def claim_due_watches(
    owner: str,
    now: float,
    lease: float,
    limit: int,
    skip_projects: tuple[str, ...],
    skip_kinds: tuple[tuple[str, str], ...],
) -> Program[list[WatchWork]]:
    claimed = yield q.rows(
        "claim_watches",
        owner=owner,
        now=now,
        lease=lease,
        limit=limit,
        skip_projects=list(skip_projects),
        skip_pairs=[pair_key(p, k) for p, k in skip_kinds],
    )
    # Earliest first (RETURNING keeps no order): by due time, then id.
    return [WatchWork(*r) for r in sorted(claimed, key=itemgetter(3, 0))]


def record_poll(
    watch_id: int, owner: str, rec: PollRecord, lease: float, deliver: int
) -> Program[list[Recorded]]:
    # Applied whoever records: a late record from a replica whose lease ran out still
    # carries a real observation, and an outcome must not be lost.
    watch = yield q.row("watch_for_poll", watch_id=watch_id)
    if watch is None:
        return []
    seen = rules.seen(watch, rec)
    if rec.learned:
        learned = [{"kind": watch["kind"], "bucket": b, "weight": w} for b, w in rec.learned]
        yield q.many("learn_duration", learned)
    recorded: list[Recorded] = []
    if rec.outcome is not None:
        # Locked and re-checked: a job canceled meanwhile keeps its cancellation.
        jobs = yield q.rows("outcome_jobs", watch_id=watch_id, started_at=rec.started_at)
        updates, recorded = rules.outcome(
            jobs, rec, seen, owner=owner, lease=lease, deliver=deliver
        )
        yield q.many("hand_outcome", updates)
    # Jobs that joined while the request was on the wire: this poll is not theirs (it does
    # not count in their polls) and their first poll stays when it was promised.
    joined = yield q.rows("late_joiners", watch_id=watch_id, started_at=rec.started_at)
    promised = min((float(r[0]) for r in joined), default=None)
    # With nobody tracking it any more, the statement idles the watch and ends its lease.
    after = rules.polled(watch, rec, seen, promised)
    yield q.exec("record_watch", after, owner=owner, watch_id=watch_id)
    return recorded


def _settle(project: str, kind: str, span: rules.Span) -> Program[None]:
    since, until = span
    yield q.exec("settle_pause_clock", project=project, kind=kind, since=since, until=until)


def _pause_clocks() -> Program[dict[tuple[str, str], rules.Span | None]]:
    """Each (project, kind)'s open paused span, the rows locked (before any watch)."""
    found = yield q.rows("pause_clocks")
    return {(r[0], r[1]): (float(r[2]), float(r[3])) if r[2] is not None else None for r in found}


def expire_due(now: float) -> Program[list[Recorded]]:
    # Paused time first: a span that has ended moves the deadlines of the jobs it held,
    # and a (project, kind) still paused does not expire at all.
    held: list[str] = []
    for (project, kind), span in (yield from _pause_clocks()).items():
        if span is None:
            continue
        if span[1] > now:
            held.append(pair_key(project, kind))
            continue
        yield from _settle(project, kind, span)
        yield q.exec("close_pause_clock", project=project, kind=kind)
    found = yield q.rows("expiring_watches", now=now, skip_pairs=held)
    watch_ids = [int(r[0]) for r in found]
    if not watch_ids:
        return []
    yield q.exec("lock_watches", watch_ids=watch_ids)
    # Re-read under the locks: another replica may have expired them first.
    expiring = yield q.rows("expiring_jobs", now=now, watch_ids=watch_ids)
    if not expiring:
        return []
    yield q.many("hand_outcome", [rules.expiry(r, now) for r in expiring])
    yield q.exec("idle_watches", watch_ids=watch_ids)
    return [
        Recorded(r["id"], r["kind"], r["token"], "expired", project=r["project"]) for r in expiring
    ]


def claim_due_deliveries(
    owner: str, now: float, lease: float, limit: int, around: Around
) -> Program[list[DeliveryWork]]:
    claimed = yield q.rows(
        "claim_deliveries",
        owner=owner,
        now=now,
        lease=lease,
        limit=limit,
        skip_tenants=list(around.tenants),
        skip_hosts=list(around.hosts),
        held_hosts=list(around.held_hosts),
        round_length=around.round_length,
        scan=max(64, limit * CLAIM_SCAN),
        room_hosts=[h for h, _ in around.host_room],
        host_left=[n for _, n in around.host_room],
        room_tenants=[t for t, _ in around.tenant_room],
        tenant_left=[n for _, n in around.tenant_room],
        host_cap=around.host_cap,
        tenant_cap=around.tenant_cap,
    )
    # Earliest first (RETURNING keeps no order): by due time, then registration.
    claimed = sorted(claimed, key=itemgetter("next_attempt_at", "seq"))
    return [DeliveryWork(*tuple(r)[1:]) for r in claimed]


def release_deliveries(owner: str, job_ids: list[str]) -> Program[None]:
    yield q.exec("release_deliveries", owner=owner, job_ids=job_ids)


def end_round(job_id: str, owner: str, now: float, round_length: float) -> Program[bool]:
    ended = yield q.exec(
        "end_round", job_id=job_id, owner=owner, now=now, round_length=round_length
    )
    return bool(ended)


def record_attempt(
    job_id: str, owner: str, attempt: Attempt, next_state: str, next_attempt_at: float | None
) -> Program[bool]:
    # Applied whoever records: an attempt that reached the receiver is a fact, and a
    # delivered outcome must never be dropped for a lapsed lease.
    job = yield q.row("job_for_attempt", job_id=job_id)
    if job is None:  # purged meanwhile
        return False
    after, decided = rules.attempted(
        job, attempt, next_state=next_state, next_attempt_at=next_attempt_at
    )
    yield q.exec("insert_attempt", **after, job_id=job_id)
    yield q.exec("attempt_job", **after, owner=owner, job_id=job_id)
    return decided


def durations() -> Program[dict[str, list[tuple[int, float]]]]:
    out: dict[str, list[tuple[int, float]]] = {}
    for kind, bucket, weight in (yield q.rows("durations")):
        out.setdefault(kind, []).append((bucket, weight))
    return out


def scale_durations(kind: str, factor: float) -> Program[None]:
    yield q.exec("scale_durations", kind=kind, factor=factor)


def set_pause(
    key: str, reason: str, until: float, kind: str | None, project: str, at: float | None
) -> Program[None]:
    # With ``at`` (when it was taken or lifted) the pause's time is also kept per project
    # and kind, to move the deadlines of the jobs it holds (pause_clock); without, only
    # the pause.
    clocks: dict[tuple[str, str], rules.Span | None] = {}
    if at is not None:
        if until > 0:
            # The project's rows, made at its first pause, so that there is a row to lock.
            rows = [{"project": project, "kind": k} for k in KINDS]
            yield q.many("ensure_pause_clock", rows)
        clocks = yield from _pause_clocks()
    if until <= 0:
        kind = yield q.val("pause_kind", key=key)
        yield q.exec("delete_pause", key=key)
    else:
        pause = {"key": key, "reason": reason, "until": until, "kind": kind, "project": project}
        yield q.exec("store_pause", pause)
    if at is not None:
        others = [] if until > 0 else (yield q.rows("pauses"))
        for k in KINDS if kind is None else (kind,):
            span = clocks.get((project, k))
            if until > 0:
                ended, span = rules.widen(span, at, until)
                if ended is not None:
                    yield from _settle(project, k, ended)
            else:
                ends = [
                    float(r[2])
                    for r in others
                    if r[4] == project and r[3] in (None, k) and r[2] > at
                ]
                span = rules.narrow(span, at, max(ends, default=None))
            if span is not None and span != clocks.get((project, k)):
                yield q.exec(
                    "open_pause_clock", project=project, kind=k, since=span[0], until=span[1]
                )
    # Delivered at commit: every replica listening adopts the pause within milliseconds.
    yield q.notify(PAUSE_CHANNEL, key)


def pauses() -> Program[list[tuple[str, str, float, str | None, str]]]:
    return [(r[0], r[1], float(r[2]), r[3], r[4]) for r in (yield q.rows("pauses"))]


def backlog(now: float) -> Program[dict[str, tuple[int, float | None]]]:
    polls, oldest_poll, deliveries, oldest_delivery = yield q.row("backlog", now=now)
    return {"poll": (int(polls), oldest_poll), "delivery": (int(deliveries), oldest_delivery)}


def release(owner: str) -> Program[None]:
    yield q.exec("release_watches", owner=owner)
    yield q.exec("release_jobs", owner=owner)


def next_due(callbacks: bool = True) -> Program[float | None]:
    due = yield q.val("next_due", callbacks=callbacks)
    return float(due) if due is not None else None
