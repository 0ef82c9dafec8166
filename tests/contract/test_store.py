"""The store contract, run against every store implementation the suite can reach."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from bridge.model import (
    EXPIRED_ERROR,
    NOT_FOUND_ERROR,
    Attempt,
    DeliveryWork,
    NewJob,
    PollRecord,
    Recorded,
    SigningKey,
    callback_body,
)
from bridge.settings import Database
from bridge.store import Conflict, Store, StoreError, open_store
from bridge.store.base import BadCursor
from bridge.store.postgres_driver import PostgresStore
from bridge.store.queries import migrations
from bridge.store.sqlite_driver import SQLiteStore
from bridge.store.verbs import Around
from tests import pg

T0 = 1_800_000_000.0


def pg_migrations() -> list[tuple[int, str]]:
    return migrations("postgres")


def sqlite_migrations() -> list[tuple[int, str]]:
    return migrations("sqlite")


@pytest.fixture(params=["sqlite", pg.POSTGRES])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        s = await SQLiteStore.open(str(tmp_path / "store.db"))
        yield s
        await s.close()
    else:
        async with pg.postgres_store() as p:
            yield p


async def rows_in(store: Store, table: str) -> int:
    """How many rows ``table`` holds: what no verb shows (attempts of a purged job)."""
    if isinstance(store, SQLiteStore):
        with contextlib.closing(sqlite3.connect(store.path)) as db:
            return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    assert isinstance(store, PostgresStore) and store.schema is not None
    return int(await pg.fetchval(store.schema, f"SELECT count(*) FROM {table}"))


def job(
    token: int = 1, tenant: str = "alpha", url: str = "http://127.0.0.1:9/h", **kw: str
) -> NewJob:
    return NewJob(
        tenant=tenant,
        kind=kw.get("kind", "video"),
        token=token,
        callback_url=url,
        metadata=kw.get("metadata"),
        project=kw.get("project", "default"),
    )


async def reg(store: Store, new: NewJob, now: float = T0) -> tuple[str, bool]:
    j, created = await store.register(new, now=now, first_poll_at=now + 1, deadline_at=now + 86400)
    return j.id, created


async def test_register_and_read_back(store: Store) -> None:
    j, created = await store.register(
        job(metadata='{"a":1}'), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10
    )
    assert created
    assert (j.state, j.outcome, j.polls, j.next_poll_at, j.deadline_at) == (
        "tracking",
        None,
        0,
        T0 + 1,
        T0 + 10,
    )
    assert await store.get_job("alpha", j.id) == j
    assert await store.get_job("beta", j.id) is None


async def test_idempotent_and_conflicting_registrations(store: Store) -> None:
    first, _ = await reg(store, job(metadata='{"a":1,"b":2}'))
    again, created = await reg(store, job(metadata='{"b":2,"a":1}'))
    assert (again, created) == (first, False)
    with pytest.raises(Conflict):
        await reg(store, job(metadata='{"a":1}'))
    with pytest.raises(Conflict):
        await reg(store, job(tenant="beta"))


async def test_concurrent_duplicates_make_one_job(store: Store) -> None:
    results = await asyncio.gather(*(reg(store, job(token=5)) for _ in range(20)))
    assert len({r[0] for r in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_a_new_job_pulls_a_live_watch_poll_forward(store: Store) -> None:
    a, _ = await reg(store, job(token=9, url="http://127.0.0.1:9/a"), now=T0)
    b, _ = await reg(store, job(token=9, url="http://127.0.0.1:9/b"), now=T0 - 0.5)
    ja, jb = await store.get_job("alpha", a), await store.get_job("alpha", b)
    assert ja is not None and jb is not None
    assert ja.next_poll_at == jb.next_poll_at == T0 + 0.5


async def test_cancel_idles_the_watch_and_a_new_job_wakes_it(store: Store) -> None:
    a, _ = await reg(store, job(token=3))
    result = await store.cancel("alpha", a, now=T0 + 5)
    assert result is not None
    canceled, changed = result
    assert changed and canceled.state == "canceled" and canceled.next_poll_at is None
    again = await store.cancel("alpha", a, now=T0 + 6)
    assert again is not None and again[1] is False
    assert await store.cancel("beta", a, now=T0) is None
    b, created = await reg(store, job(token=3), now=T0 + 10)
    assert created and b != a
    jb = await store.get_job("alpha", b)
    assert jb is not None and jb.next_poll_at == T0 + 11


async def test_redeliver_needs_an_ended_delivery(store: Store) -> None:
    a, _ = await reg(store, job())
    with pytest.raises(Conflict):
        await store.redeliver("alpha", a, now=T0)
    assert await store.redeliver("beta", a, now=T0) is None


async def test_listing_pages_newest_first(store: Store) -> None:
    ids = [(await reg(store, job(token=t)))[0] for t in range(1, 8)]
    page, cursor = await store.list_jobs("alpha", limit=3)
    assert [j.id for j in page] == ids[::-1][:3]
    assert cursor is not None
    page2, cursor2 = await store.list_jobs("alpha", limit=3, before=cursor)
    assert [j.id for j in page2] == ids[::-1][3:6]
    page3, cursor3 = await store.list_jobs("alpha", limit=3, before=cursor2)
    assert [j.id for j in page3] == ids[:1] and cursor3 is None
    assert (await store.list_jobs("beta"))[0] == []


async def test_cursors_are_sealed_for_their_tenant_with_a_kept_key(
    store: Store, tmp_path: Path
) -> None:
    for t in range(1, 4):
        await reg(store, job(token=t))
    _, cursor = await store.list_jobs("alpha", limit=1)
    assert cursor is not None
    with pytest.raises(BadCursor):
        await store.list_jobs("beta", before=cursor)
    for junk in ("", "djE6Mw", cursor[:-2], cursor + "A", "\u00e9" * 55):
        with pytest.raises(BadCursor):
            await store.list_jobs("alpha", before=junk)
    # Another server on the database (or this one after a restart) opens it: the key is kept.
    if isinstance(store, SQLiteStore):
        other: Store = await SQLiteStore.open(store.path, exclusive=False)
    else:
        assert isinstance(store, PostgresStore) and store.schema is not None
        other = await PostgresStore.open(pg.POSTGRES_URL, schema=store.schema)
    try:
        page, _ = await other.list_jobs("alpha", limit=5, before=cursor)
        assert [j.token for j in page] == [2, 1]
    finally:
        await other.close()


async def test_counts_and_retention(store: Store) -> None:
    keep, _ = await reg(store, job(token=1))
    old, _ = await reg(store, job(token=2))
    recent, _ = await reg(store, job(token=3))
    await store.cancel("alpha", old, now=T0 + 10)
    await store.cancel("alpha", recent, now=T0 + 100)
    assert await store.count_by_state() == {"tracking": 1, "canceled": 2}
    assert await store.purge_ended(before=T0 + 50) == 1
    assert await store.get_job("alpha", old) is None
    assert await store.get_job("alpha", recent) is not None
    assert await store.get_job("alpha", keep) is not None
    # Ownership outlives retention: the purged job's token is still alpha's, not free.
    with pytest.raises(Conflict, match="another tenant"):
        await reg(store, job(token=2, tenant="beta"))
    assert await rows_in(store, "watches") == 3  # kept, idle, as the owner's record
    # Its owner registers it again: the idle watch is armed afresh.
    again, created = await reg(store, job(token=2), now=T0 + 200)
    assert created
    j = await store.get_job("alpha", again)
    assert j is not None and (j.state, j.polls, j.next_poll_at) == ("tracking", 0, T0 + 201)


async def test_ownership_survives_a_purge_of_a_watched_token(store: Store) -> None:
    # A token whose only job was delivered, then purged: beta still cannot take it.
    gone, _ = await reg(store, job(token=11))
    (w,) = await store.claim_due_watches("p", now=T0 + 1, lease=LONG, limit=1)
    done = seen(T0 + 1, T0 + 1, status="finished", result='{"uuid":"u"}', outcome="finished")
    await store.record_poll(w.id, "p", done)
    await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
    ok = attempt(1, T0 + 2, 200)
    assert await store.record_attempt(gone, "a", ok, next_state="delivered", next_attempt_at=None)
    assert await store.purge_ended(before=T0 + 10) == 1
    with pytest.raises(Conflict):
        await reg(store, job(token=11, tenant="beta"), now=T0 + 20)
    # What the watch saw (the file's uuid) went with the jobs; a new round starts afresh.
    mine, _ = await reg(store, job(token=11), now=T0 + 30)
    j = await store.get_job("alpha", mine)
    assert j is not None and (j.upstream_status, j.upstream_result) == (None, None)


@pytest.mark.parametrize("char", ["\u20ac", "\U0001f600"])  # 3 and 4 bytes in UTF-8
async def test_a_2048_character_non_ascii_url_registers(store: Store, char: str) -> None:
    head = "http://127.0.0.1:9/"
    url = head + char * (2048 - len(head))
    other = head + char * (2047 - len(head)) + "x"
    assert len(url) == len(other) == 2048
    first, created = await reg(store, job(token=12, url=url))
    assert created
    assert await reg(store, job(token=12, url=url)) == (first, False)  # idempotent
    second, created = await reg(store, job(token=12, url=other))
    assert created and second != first
    j = await store.get_job("alpha", first)
    assert j is not None and j.callback_url == url


def keys_made(*secrets: str) -> Callable[[], tuple[str, str | None]]:
    made = iter(secrets)
    return lambda: (next(made), None)


async def test_signing_secret_is_made_once(store: Store, tmp_path: Path) -> None:
    made = keys_made("whsec_first", "whsec_second", "whsec_third")
    first = await store.signing_keys("alpha", "v1", generate=made, now=T0)
    second = await store.signing_keys("alpha", "v1", generate=made, now=T0)
    assert first == second == [SigningKey("v1", "whsec_first")]
    other = await store.signing_keys("beta", "v1", generate=made, now=T0)
    assert other == [SigningKey("v1", "whsec_second")]
    # Each scheme has its own: a pair for v1a, beside alpha's v1 secret.
    pair = await store.signing_keys("alpha", "v1a", generate=lambda: ("whsk_a", "whpk_a"), now=T0)
    assert pair == [SigningKey("v1a", "whsk_a", "whpk_a")]


async def test_a_rotation_keeps_the_replaced_key_for_the_overlap_only(store: Store) -> None:
    made = keys_made("whsec_one", "whsec_two", "whsec_three")
    await store.signing_keys("alpha", "v1", generate=made, now=T0)
    after = await store.rotate_signing_key("alpha", "v1", generate=made, now=T0 + 10, overlap=60)
    assert after == [SigningKey("v1", "whsec_two"), SigningKey("v1", "whsec_one", None, T0 + 70)]
    never = keys_made()  # a current key exists: nothing is generated
    assert await store.signing_keys("alpha", "v1", generate=never, now=T0 + 69) == after
    assert await store.signing_keys("alpha", "v1", generate=never, now=T0 + 70) == after[:1]
    # Rotating again within the overlap: only the key it replaces stays, never three.
    again = await store.rotate_signing_key("alpha", "v1", generate=made, now=T0 + 20, overlap=60)
    assert again == [
        SigningKey("v1", "whsec_three"),
        SigningKey("v1", "whsec_two", None, T0 + 80),
    ]
    # Other tenants and schemes are untouched.
    beta = await store.signing_keys("beta", "v1", generate=keys_made("whsec_b"), now=T0 + 20)
    assert beta == [SigningKey("v1", "whsec_b")]


async def test_rotations_at_once_leave_two_keys_in_force(store: Store) -> None:
    await store.signing_keys("alpha", "v1a", generate=lambda: ("whsk_0", "whpk_0"), now=T0)
    pairs = iter([("whsk_1", "whpk_1"), ("whsk_2", "whpk_2")])
    results = await asyncio.gather(
        *(
            store.rotate_signing_key(
                "alpha", "v1a", generate=lambda: next(pairs), now=T0 + 1, overlap=60
            )
            for _ in range(2)
        )
    )
    final = await store.signing_keys("alpha", "v1a", generate=keys_made(), now=T0 + 2)
    assert len(final) == 2 and final[0].expires_at is None and final[1].expires_at == T0 + 61
    # The later rotation's key is current; the earlier one's signs beside it.
    assert final in results
    assert {k.secret for k in final} == {"whsk_1", "whsk_2"}


# -- the scheduler's verbs -------------------------------------------------------------------

LONG = 30.0  # a lease no test outlives


def seen(
    started: float,
    polled: float,
    *,
    next_at: float | None = None,
    status: str | None = "processing",
    result: str | None = None,
    outcome: str | None = None,
    changed: bool = True,
) -> PollRecord:
    """A poll that got a status answer."""
    return PollRecord(
        started_at=started,
        polled_at=polled,
        next_poll_at=polled + 2 if next_at is None else next_at,
        not_found=0,
        failures=0,
        interval=2.0,
        answered=True,
        status=status,
        result_json=result,
        changed=changed,
        outcome=outcome,
        outcome_error=None,
    )


async def reg_at(store: Store, new: NewJob, now: float, first_poll_at: float) -> str:
    j, _ = await store.register(new, now=now, first_poll_at=first_poll_at, deadline_at=now + 86400)
    return j.id


async def delivering(store: Store, token: int, at: float = T0 + 1, **kw: str) -> str:
    """A job whose outcome (``finished``) was recorded at ``at``: its first attempt is due."""
    job_id, _ = await reg(store, job(token=token, **kw), now=at - 1)
    claimed = await store.claim_due_watches("poller", now=at, lease=LONG, limit=1)
    assert [w.token for w in claimed] == [token]
    recorded = await store.record_poll(
        claimed[0].id, "poller", seen(at, at, status="finished", outcome="finished")
    )
    assert [r.job_id for r in recorded] == [job_id]
    return job_id


def attempt(n: int, at: float, status: int | None, error: str | None = None) -> Attempt:
    return Attempt(n=n, at=at, duration_ms=50, response_status=status, error=error)


async def test_claim_takes_due_watches_earliest_first(store: Store) -> None:
    await reg_at(store, job(token=1), T0, T0 + 1)
    await reg_at(store, job(token=2), T0, T0 + 3)
    await reg_at(store, job(token=3), T0, T0 + 2)
    await reg_at(store, job(token=4, kind="document"), T0, T0 + 1.5)
    await reg_at(store, job(token=5), T0, T0 + 20)
    first = await store.claim_due_watches(
        "a", now=T0 + 2.5, lease=LONG, limit=10, skip_kinds=(("default", "document"),)
    )
    assert [(w.kind, w.token, w.due_at) for w in first] == [
        ("video", 1, T0 + 1),
        ("video", 3, T0 + 2),
    ]
    assert all((w.status, w.interval, w.not_found, w.failures) == (None, None, 0, 0) for w in first)
    # Claimed work stays with its owner; the limit counts; nothing not yet due comes.
    assert [
        w.token for w in await store.claim_due_watches("a", now=T0 + 10, lease=LONG, limit=1)
    ] == [4]
    assert [
        w.token for w in await store.claim_due_watches("b", now=T0 + 10, lease=LONG, limit=5)
    ] == [2]
    assert await store.claim_due_watches("b", now=T0 + 10, lease=LONG, limit=5) == []
    assert [
        w.token for w in await store.claim_due_watches("b", now=T0 + 25, lease=LONG, limit=5)
    ] == [5]


async def test_tenants_take_turns_at_due_polls(store: Store) -> None:
    """SPEC "Polling": tenant X's 300 due watches, all older than tenant Y's 10, do not
    keep Y's out of a claim of 20: each tenant's most overdue first, in turns."""
    xs = [job(token=10_000 + i, tenant="x") for i in range(300)]
    for start in range(0, len(xs), 100):
        await asyncio.gather(
            *(
                reg_at(store, n, T0, T0 + 1 + i * 0.001)
                for i, n in enumerate(xs[start : start + 100], start)
            )
        )
    for i in range(10):
        await reg_at(store, job(token=20_000 + i, tenant="y"), T0, T0 + 5 + i)
    claimed = await store.claim_due_watches("a", now=T0 + 100, lease=LONG, limit=20)
    tokens = [w.token for w in claimed]
    assert len(tokens) == 20
    assert sorted(t for t in tokens if t >= 20_000) == [20_000 + i for i in range(10)]
    assert sorted(t for t in tokens if t < 20_000) == [10_000 + i for i in range(10)]
    # Earliest first within what was claimed; the next claim goes on with X's backlog.
    assert [w.due_at for w in claimed] == sorted(w.due_at for w in claimed)
    more = await store.claim_due_watches("a", now=T0 + 100, lease=LONG, limit=5)
    assert [w.token for w in more] == [10_010 + i for i in range(5)]
    # With one tenant alone it is the plain due order.
    assert [
        w.token for w in await store.claim_due_watches("b", now=T0 + 1.0205, lease=LONG, limit=3)
    ] == [10_015, 10_016, 10_017]


async def test_a_lease_keeps_work_from_others_until_it_runs_out(store: Store) -> None:
    await reg(store, job(token=1))
    claimed = await store.claim_due_watches("a", now=T0 + 2, lease=0.2, limit=5)
    assert len(claimed) == 1
    assert await store.claim_due_watches("b", now=T0 + 2, lease=LONG, limit=5) == []
    assert await store.claim_due_watches("a", now=T0 + 2, lease=LONG, limit=5) == []
    assert await store.next_due() == T0 + 86400  # the leased poll aside: the deadline
    await asyncio.sleep(0.3)  # PostgreSQL leases run on the database's clock
    taken = await store.claim_due_watches("b", now=T0 + 2.3, lease=LONG, limit=5)
    assert [w.id for w in taken] == [claimed[0].id]


async def test_concurrent_claimers_never_share_work(store: Store) -> None:
    for token in range(1, 201):
        await reg_at(store, job(token=token), T0, T0 + 1)
    # One token watched by 200 jobs: one poll's outcome makes 200 callbacks due.
    for n in range(200):
        await reg_at(store, job(token=1000, url=f"http://127.0.0.1:9/{n}"), T0, T0 + 1)

    async def claimer(owner: str, deliveries: bool) -> list[object]:
        got: list[object] = []
        while True:
            if deliveries:
                work: list[object] = [
                    d.job_id
                    for d in await store.claim_due_deliveries(
                        owner, now=T0 + 5, lease=LONG, limit=7
                    )
                ]
            else:
                work = [
                    w.id
                    for w in await store.claim_due_watches(owner, now=T0 + 5, lease=LONG, limit=7)
                ]
            if not work:
                return got
            got += work
            await asyncio.sleep(0)

    a, b = await asyncio.gather(claimer("a", False), claimer("b", False))
    assert a and b  # both took part
    assert not set(a) & set(b) and len(a) + len(b) == len(set(a) | set(b)) == 201
    shared = await store.claim_due_watches("x", now=T0 + 5, lease=LONG, limit=1)
    assert shared == []
    await store.release("a")
    await store.release("b")
    watch = next(
        w
        for w in await store.claim_due_watches("x", now=T0 + 5, lease=LONG, limit=300)
        if w.token == 1000
    )
    recorded = await store.record_poll(
        watch.id, "x", seen(T0 + 5, T0 + 5, status="finished", outcome="finished")
    )
    assert len(recorded) == 200
    a, b = await asyncio.gather(claimer("a", True), claimer("b", True))
    assert a and b
    assert not set(a) & set(b) and len(set(a) | set(b)) == 200 == len(a) + len(b)


async def test_record_poll_updates_the_watch_and_gives_back_the_lease(store: Store) -> None:
    job_id, _ = await reg(store, job(token=1))
    (w,) = await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=5)
    recorded = await store.record_poll(
        w.id, "a", seen(T0 + 1.1, T0 + 1.2, next_at=T0 + 5, result='{"uuid":"u"}')
    )
    assert recorded == []
    j = await store.get_job("alpha", job_id)
    assert j is not None
    assert (j.state, j.upstream_status, j.upstream_result, j.polls) == (
        "tracking",
        "processing",
        '{"uuid":"u"}',
        1,
    )
    assert (j.last_polled_at, j.next_poll_at) == (T0 + 1.2, T0 + 5)
    assert await store.claim_due_watches("b", now=T0 + 4.9, lease=LONG, limit=5) == []
    (again,) = await store.claim_due_watches("b", now=T0 + 5, lease=LONG, limit=5)
    assert (again.id, again.status, again.interval, again.due_at) == (
        w.id,
        "processing",
        2.0,
        T0 + 5,
    )
    # A poll without an answer keeps what was seen, counts, and carries the counters.
    failed = PollRecord(
        started_at=T0 + 5,
        polled_at=T0 + 6,
        next_poll_at=T0 + 9,
        not_found=0,
        failures=1,
        interval=2.0,
        answered=False,
    )
    assert await store.record_poll(w.id, "b", failed) == []
    j = await store.get_job("alpha", job_id)
    assert j is not None and (j.upstream_status, j.polls, j.next_poll_at) == (
        "processing",
        2,
        T0 + 9,
    )
    (third,) = await store.claim_due_watches("c", now=T0 + 9, lease=LONG, limit=5)
    assert (third.failures, third.status) == (1, "processing")


async def test_an_outcome_goes_to_every_job_registered_by_the_poll(store: Store) -> None:
    a, _ = await reg(store, job(token=7, url="http://127.0.0.1:9/a"), now=T0)
    b, _ = await reg(
        store, job(token=7, url="http://127.0.0.1:9/b", metadata='{"o":1}'), now=T0 + 0.5
    )
    (w,) = await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=5)
    # c joins while the deciding poll (sent at T0 + 1.2) is on the wire.
    c, _ = await reg(store, job(token=7, url="http://127.0.0.1:9/c"), now=T0 + 1.3)
    result = '{"uuid":"u","thumbnails_group_uuid":"g~1"}'
    recorded = await store.record_poll(
        w.id, "a", seen(T0 + 1.2, T0 + 1.4, status="finished", result=result, outcome="finished")
    )
    assert recorded == [Recorded(a, "video", 7, "finished"), Recorded(b, "video", 7, "finished")]
    ja, jc = await store.get_job("alpha", a), await store.get_job("alpha", c)
    assert ja is not None and jc is not None
    assert (ja.state, ja.outcome, ja.upstream_status, ja.upstream_result, ja.polls) == (
        "delivering",
        "finished",
        "finished",
        result,
        1,
    )
    assert (ja.next_attempt_at, ja.last_polled_at, ja.next_poll_at) == (T0 + 1.4, T0 + 1.4, None)
    # The newcomer stays tracking and its watch is due again at once.
    assert (jc.state, jc.outcome, jc.next_poll_at) == ("tracking", None, T0 + 1.4)
    work = await store.claim_due_deliveries("d", now=T0 + 2, lease=LONG, limit=10)
    assert sorted(work, key=lambda d: d.job_id) == sorted(
        [
            DeliveryWork(
                job_id=job_id,
                tenant="alpha",
                kind="video",
                token=7,
                callback_url=f"http://127.0.0.1:9/{name}",
                body=callback_body(
                    job_id=job_id,
                    project="default",
                    kind="video",
                    token=7,
                    outcome="finished",
                    error=None,
                    result_json=result,
                    metadata_json=meta,
                    seen_at=T0 + 1.4,
                ),
                attempts=0,
                round_attempts=0,
                outcome_at=T0 + 1.4,
                due_at=T0 + 1.4,
                round_started_at=T0 + 1.4,
            )
            for job_id, name, meta in ((a, "a", None), (b, "b", '{"o":1}'))
        ],
        key=lambda d: d.job_id,
    )
    (w2,) = await store.claim_due_watches("a", now=T0 + 1.4, lease=LONG, limit=5)
    recorded = await store.record_poll(
        w2.id, "a", seen(T0 + 2, T0 + 2.1, status="finished", result=result, outcome="finished")
    )
    assert recorded == [Recorded(c, "video", 7, "finished")]
    jc = await store.get_job("alpha", c)
    # Only its own poll counts: the one in flight when it registered does not.
    assert jc is not None and (jc.state, jc.polls) == ("delivering", 1)
    # Nobody tracks the watch any more: it idles.
    assert await store.claim_due_watches("a", now=T0 + 1000, lease=LONG, limit=5) == []


async def test_a_job_joining_during_a_poll_keeps_its_first_poll(store: Store) -> None:
    a = await reg_at(store, job(token=8, url="http://127.0.0.1:9/a"), T0, T0 + 1)
    (w,) = await store.claim_due_watches("p", now=T0 + 1, lease=LONG, limit=5)
    # c registers at T0 + 1.3, its first poll promised at T0 + 2.3, while the poll that
    # went out at T0 + 1.2 is on the wire; that poll's own rule says T0 + 60.
    c = await reg_at(store, job(token=8, url="http://127.0.0.1:9/c"), T0 + 1.3, T0 + 2.3)
    await store.record_poll(w.id, "p", seen(T0 + 1.2, T0 + 1.4, next_at=T0 + 60))
    ja, jc = await store.get_job("alpha", a), await store.get_job("alpha", c)
    assert ja is not None and jc is not None
    assert (ja.polls, jc.polls) == (1, 0)  # the poll that started before c is not c's
    assert ja.next_poll_at == jc.next_poll_at == T0 + 2.3
    assert await store.claim_due_watches("p", now=T0 + 2.29, lease=LONG, limit=5) == []
    (w,) = await store.claim_due_watches("p", now=T0 + 2.3, lease=LONG, limit=5)
    await store.record_poll(w.id, "p", seen(T0 + 2.3, T0 + 2.4, next_at=T0 + 60))
    jc = await store.get_job("alpha", c)
    assert jc is not None and (jc.polls, jc.next_poll_at) == (1, T0 + 60)


async def test_three_404s_end_in_not_found(store: Store) -> None:
    job_id, _ = await reg(store, job(token=404, metadata='{"k":"v"}'))
    recorded: list[Recorded] = []
    for misses in (1, 2, 3):
        (w,) = await store.claim_due_watches("a", now=T0 + 10 * misses, lease=LONG, limit=5)
        assert w.not_found == misses - 1
        recorded = await store.record_poll(
            w.id,
            "a",
            PollRecord(
                started_at=T0 + 10 * misses,
                polled_at=T0 + 10 * misses,
                next_poll_at=T0 + 10 * misses + 2,
                not_found=misses,
                failures=0,
                interval=None,
                answered=False,
                outcome="not_found" if misses == 3 else None,
                outcome_error=NOT_FOUND_ERROR if misses == 3 else None,
            ),
        )
    assert recorded == [Recorded(job_id, "video", 404, "not_found")]
    j = await store.get_job("alpha", job_id)
    assert j is not None
    assert (j.state, j.outcome, j.upstream_status, j.polls) == ("delivering", "not_found", None, 3)
    (d,) = await store.claim_due_deliveries("d", now=T0 + 30, lease=LONG, limit=5)
    assert d.body == callback_body(
        job_id=job_id,
        project="default",
        kind="video",
        token=404,
        outcome="not_found",
        error=NOT_FOUND_ERROR,
        result_json=None,
        metadata_json='{"k":"v"}',
        seen_at=T0 + 30,
    )


async def test_expire_due_gives_expired_past_the_deadline(store: Store) -> None:
    soon, _ = await store.register(job(token=1), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10)
    late, _ = await store.register(job(token=2), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 99)
    (w,) = await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=1)
    await store.record_poll(w.id, "a", seen(T0 + 1, T0 + 1.5, next_at=T0 + 50, result='{"p":1}'))
    assert await store.expire_due(now=T0 + 9.9) == []
    assert await store.expire_due(now=T0 + 10) == [Recorded(soon.id, "video", 1, "expired")]
    assert await store.expire_due(now=T0 + 10) == []
    j = await store.get_job("alpha", soon.id)
    assert j is not None
    assert (j.state, j.outcome, j.upstream_status, j.polls, j.next_attempt_at) == (
        "delivering",
        "expired",
        "processing",
        1,
        T0 + 10,
    )
    (d,) = await store.claim_due_deliveries("d", now=T0 + 10, lease=LONG, limit=5)
    assert d.body == callback_body(
        job_id=soon.id,
        project="default",
        kind="video",
        token=1,
        outcome="expired",
        error=EXPIRED_ERROR,
        result_json='{"p":1}',
        metadata_json=None,
        seen_at=T0 + 10,
    )
    # The expired job's watch idles; the other one is still polled.
    due = await store.claim_due_watches("a", now=T0 + 60, lease=LONG, limit=5)
    assert [w.token for w in due] == [2]
    jl = await store.get_job("alpha", late.id)
    assert jl is not None and jl.state == "tracking"


async def test_claim_due_deliveries_earliest_first_under_lease(store: Store) -> None:
    third = await delivering(store, 1, at=T0 + 3)
    first = await delivering(store, 2, at=T0 + 1)
    second = await delivering(store, 3, at=T0 + 2)
    assert await store.claim_due_deliveries("a", now=T0 + 0.5, lease=LONG, limit=5) == []
    got = await store.claim_due_deliveries("a", now=T0 + 5, lease=LONG, limit=2)
    assert [(d.job_id, d.due_at) for d in got] == [(first, T0 + 1), (second, T0 + 2)]
    assert [
        d.job_id for d in await store.claim_due_deliveries("b", now=T0 + 5, lease=LONG, limit=5)
    ] == [third]
    assert await store.claim_due_deliveries("b", now=T0 + 5, lease=LONG, limit=5) == []


async def test_a_delivery_claim_takes_no_more_than_each_host_and_tenant_has_room_for(
    store: Store,
) -> None:
    """Claiming callbacks only to give them back cost two writes each when one receiver
    took everything: a claim takes at most the room each host and tenant has left."""
    a_url, b_url = "http://127.0.0.1:9/a", "http://127.0.0.2:9/b"
    for n in range(12):  # host A's callbacks come due first
        await delivering(store, 100 + n, at=T0 + 1 + n * 0.01, url=a_url)
    for n in range(3):
        await delivering(store, 200 + n, at=T0 + 2 + n * 0.01, url=b_url, tenant="beta")
    around = Around(
        host_room=(("127.0.0.1:9", 2),),  # six of eight in flight
        host_cap=8,
        tenant_cap=16,
    )
    got = await store.claim_due_deliveries("a", now=T0 + 5, lease=LONG, limit=50, around=around)
    hosts = [d.callback_url for d in got]
    assert hosts.count(a_url) == 2 and hosts.count(b_url) == 3
    # Nothing of a host in flight: its whole cap; a tenant's room bounds the claim too.
    around = Around(tenant_room=(("alpha", 1),), host_cap=8, tenant_cap=16)
    got = await store.claim_due_deliveries("b", now=T0 + 5, lease=LONG, limit=50, around=around)
    assert [d.callback_url for d in got] == [a_url]
    got = await store.claim_due_deliveries(
        "c", now=T0 + 5, lease=LONG, limit=50, around=Around(host_cap=4, tenant_cap=16)
    )
    assert [d.callback_url for d in got] == [a_url] * 4


async def test_record_attempt_retry_then_delivered(store: Store) -> None:
    job_id = await delivering(store, 1)
    (d,) = await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
    failed = attempt(1, T0 + 2, 500, "HTTP 500")
    assert await store.record_attempt(
        job_id, "a", failed, next_state="delivering", next_attempt_at=T0 + 10
    )
    j = await store.get_job("alpha", job_id)
    assert j is not None
    assert (j.state, j.attempts, j.last_response_status, j.last_error) == (
        "delivering",
        1,
        500,
        "HTTP 500",
    )
    assert (j.last_attempt_at, j.next_attempt_at, j.updated_at) == (T0 + 2, T0 + 10, T0 + 2 + 0.05)
    assert await store.claim_due_deliveries("b", now=T0 + 9, lease=LONG, limit=5) == []
    (retry,) = await store.claim_due_deliveries("b", now=T0 + 10, lease=LONG, limit=5)
    assert (retry.attempts, retry.round_attempts, retry.body) == (1, 1, d.body)
    ok = attempt(2, T0 + 10, 204)
    assert await store.record_attempt(job_id, "b", ok, next_state="delivered", next_attempt_at=None)
    j = await store.get_job("alpha", job_id)
    assert j is not None
    assert (j.state, j.attempts, j.delivered_at, j.next_attempt_at) == (
        "delivered",
        2,
        T0 + 10 + 0.05,
        None,
    )
    assert await store.attempts("alpha", job_id) == [failed, ok]
    assert await store.attempts("beta", job_id) is None
    assert await store.count_by_state() == {"delivered": 1}
    assert await store.next_due() is None


async def test_a_410_is_undeliverable_and_redelivery_continues_the_numbers(store: Store) -> None:
    job_id = await delivering(store, 1)
    await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
    gone = attempt(1, T0 + 2, 410)
    assert await store.record_attempt(
        job_id, "a", gone, next_state="undeliverable", next_attempt_at=None
    )
    j = await store.get_job("alpha", job_id)
    assert j is not None and (j.state, j.delivered_at) == ("undeliverable", None)
    redone = await store.redeliver("alpha", job_id, now=T0 + 20)
    assert redone is not None
    assert (redone.state, redone.next_attempt_at, redone.attempts) == ("delivering", T0 + 20, 1)
    with pytest.raises(Conflict):  # a round is running
        await store.redeliver("alpha", job_id, now=T0 + 21)
    (d,) = await store.claim_due_deliveries("a", now=T0 + 20, lease=LONG, limit=5)
    assert (d.attempts, d.round_attempts) == (1, 0)


async def test_redeliver_after_delivered(store: Store) -> None:
    job_id = await delivering(store, 1)
    (first,) = await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
    await store.record_attempt(
        job_id, "a", attempt(1, T0 + 2, 200), next_state="delivered", next_attempt_at=None
    )
    redone = await store.redeliver("alpha", job_id, now=T0 + 30)
    assert redone is not None
    assert (redone.state, redone.delivered_at, redone.next_attempt_at) == (
        "delivering",
        None,
        T0 + 30,
    )
    assert await store.purge_ended(before=T0 + 1000) == 0  # running again: not ended
    (again,) = await store.claim_due_deliveries("a", now=T0 + 30, lease=LONG, limit=5)
    assert (again.body, again.attempts, again.round_attempts) == (first.body, 1, 0)
    assert await store.record_attempt(
        job_id, "a", attempt(2, T0 + 31, 200), next_state="delivered", next_attempt_at=None
    )
    j = await store.get_job("alpha", job_id)
    assert j is not None and (j.state, j.attempts, j.delivered_at) == ("delivered", 2, T0 + 31.05)
    assert [a.n for a in await store.attempts("alpha", job_id) or []] == [1, 2]


async def ended(
    store: Store, token: int, state: str, at: float, tenant: str = "alpha", kind: str = "video"
) -> str:
    """A job whose first round ended ``state`` by an attempt at ``at`` (ended at + 0.05)."""
    job_id = await delivering(store, token, at=at - 1, tenant=tenant, kind=kind)
    (d,) = await store.claim_due_deliveries("a", now=at, lease=LONG, limit=5)
    assert d.job_id == job_id
    status = 200 if state == "delivered" else 410
    assert await store.record_attempt(
        job_id, "a", attempt(1, at, status), next_state=state, next_attempt_at=None
    )
    return job_id


async def test_bulk_redelivery_counts_filters_and_leaves_others_alone(store: Store) -> None:
    u1 = await ended(store, 1, "undeliverable", T0 + 10)
    bu = await ended(store, 2, "undeliverable", T0 + 12, tenant="beta")
    d1 = await ended(store, 3, "delivered", T0 + 15)
    u2 = await ended(store, 4, "undeliverable", T0 + 20, kind="document")
    u3 = await ended(store, 5, "undeliverable", T0 + 30)
    tracking, _ = await reg(store, job(token=6), now=T0 + 40)

    # The limit takes the earliest-ended first; the rest is counted.
    started = await store.redeliver_many("alpha", state="undeliverable", limit=2, now=T0 + 100)
    assert started == (2, 1)
    for job_id in (u1, u2):
        j = await store.get_job("alpha", job_id)
        assert j is not None
        assert (j.state, j.next_attempt_at, j.attempts, j.delivered_at) == (
            "delivering",
            T0 + 100,
            1,
            None,
        )
    states = {
        job_id: (await store.get_job(tenant, job_id)).state  # type: ignore[union-attr]
        for tenant, job_id in (("alpha", u3), ("beta", bu), ("alpha", d1), ("alpha", tracking))
    }
    assert states == {
        u3: "undeliverable",
        bu: "undeliverable",
        d1: "delivered",
        tracking: "tracking",
    }

    # Rounds running now are not matched again; a kind filter; other tenants' jobs stay.
    assert await store.redeliver_many(
        "alpha", state="undeliverable", kind="document", limit=10, now=T0 + 101
    ) == (0, 0)
    assert await store.redeliver_many(
        "alpha", state="undeliverable", kind="video", limit=10, now=T0 + 101
    ) == (1, 0)
    assert await store.redeliver_many("alpha", state="undeliverable", limit=10, now=T0 + 102) == (
        0,
        0,
    )
    beta = await store.get_job("beta", bu)
    assert beta is not None and beta.state == "undeliverable"

    # since is inclusive, until exclusive, on when the last round ended (T0 + 15.05).
    assert await store.redeliver_many(
        "alpha", state="delivered", until=T0 + 15.05, limit=10, now=T0 + 103
    ) == (0, 0)
    assert await store.redeliver_many(
        "alpha", state="delivered", since=T0 + 15.06, limit=10, now=T0 + 103
    ) == (0, 0)
    assert await store.redeliver_many(
        "alpha", state="delivered", since=T0 + 15.05, until=T0 + 15.06, limit=10, now=T0 + 103
    ) == (1, 0)

    # Each new round is exactly a redelivery's: the same body, attempts continuing, and the
    # round's clock (round_started_at) starting at the request.
    claimed = await store.claim_due_deliveries("b", now=T0 + 103, lease=LONG, limit=10)
    assert sorted(d.job_id for d in claimed) == sorted([u1, u2, u3, d1])
    for d in claimed:
        assert (d.attempts, d.round_attempts) == (1, 0)
    assert {d.job_id: d.round_started_at for d in claimed} == {
        u1: T0 + 100,
        u2: T0 + 100,
        u3: T0 + 101,
        d1: T0 + 103,
    }
    with pytest.raises(ValueError):
        await store.redeliver_many("alpha", state="delivering", limit=10, now=T0 + 104)


async def test_bulk_redelivery_is_bounded_by_its_limit(store: Store) -> None:
    for token in range(1, 8):
        await ended(store, token, "undeliverable", T0 + token)
    assert await store.redeliver_many("alpha", state="undeliverable", limit=3, now=T0 + 50) == (
        3,
        4,
    )
    assert await store.redeliver_many("alpha", state="undeliverable", limit=3, now=T0 + 51) == (
        3,
        1,
    )
    assert await store.redeliver_many("alpha", state="undeliverable", limit=3, now=T0 + 52) == (
        1,
        0,
    )
    claimed = await store.claim_due_deliveries("b", now=T0 + 52, lease=LONG, limit=10)
    # Earliest-ended first: the first three tokens went in the first request.
    firsts = sorted((d.round_started_at, d.token) for d in claimed)
    assert [t for at, t in firsts if at == T0 + 50] == [1, 2, 3]


async def test_attempts_keep_the_answer_excerpt_and_content_type(store: Store) -> None:
    job_id = await delivering(store, 1)
    await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
    failed = dataclasses.replace(
        attempt(1, T0 + 2, 500, "HTTP 500"),
        response_excerpt=b"<h1>oops \xc3\xa9</h1>\x00\xc3",
        response_content_type="text/html; charset=utf-8",
    )
    await store.record_attempt(job_id, "a", failed, next_state="delivering", next_attempt_at=T0 + 9)
    assert await store.attempts("alpha", job_id) == [failed]


async def test_a_job_canceled_during_its_attempt_stays_canceled(store: Store) -> None:
    job_id = await delivering(store, 1)
    await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
    result = await store.cancel("alpha", job_id, now=T0 + 1.5)
    assert result is not None and result[0].state == "canceled"
    late = attempt(1, T0 + 1.2, 200)
    assert not await store.record_attempt(
        job_id, "a", late, next_state="delivered", next_attempt_at=None
    )
    j = await store.get_job("alpha", job_id)
    assert j is not None
    assert (j.state, j.outcome, j.attempts, j.delivered_at) == ("canceled", "finished", 1, None)
    assert await store.attempts("alpha", job_id) == [late]
    assert await store.claim_due_deliveries("a", now=T0 + 100, lease=LONG, limit=5) == []


async def test_purge_ended_deletes_attempts_too(store: Store) -> None:
    gone = await delivering(store, 1)
    kept = await delivering(store, 2)
    for job_id in (gone, kept):
        await store.claim_due_deliveries("a", now=T0 + 1, lease=LONG, limit=5)
        await store.record_attempt(
            job_id, "a", attempt(1, T0 + 2, 500), next_state="delivering", next_attempt_at=T0 + 3
        )
    await store.claim_due_deliveries("a", now=T0 + 3, lease=LONG, limit=5)
    await store.record_attempt(
        gone, "a", attempt(2, T0 + 3, 200), next_state="delivered", next_attempt_at=None
    )
    assert await rows_in(store, "attempts") == 3
    assert await store.purge_ended(before=T0 + 3.05) == 0  # ended at T0 + 3.05, not before
    assert await store.purge_ended(before=T0 + 4, batch=1) == 1
    assert await store.get_job("alpha", gone) is None
    assert await store.attempts("alpha", kept) == [attempt(1, T0 + 2, 500)]
    assert await rows_in(store, "attempts") == 1
    assert await rows_in(store, "watches") == 2  # the purged job's stays: its owner's record


async def test_release_gives_back_every_lease_of_its_owner(store: Store) -> None:
    await delivering(store, 1)
    await reg(store, job(token=2))
    assert len(await store.claim_due_watches("a", now=T0 + 5, lease=LONG, limit=5)) == 1
    assert len(await store.claim_due_deliveries("a", now=T0 + 5, lease=LONG, limit=5)) == 1
    await store.release("b")
    assert await store.claim_due_watches("b", now=T0 + 5, lease=LONG, limit=5) == []
    assert await store.claim_due_deliveries("b", now=T0 + 5, lease=LONG, limit=5) == []
    await store.release("a")
    assert len(await store.claim_due_watches("b", now=T0 + 5, lease=LONG, limit=5)) == 1
    assert len(await store.claim_due_deliveries("b", now=T0 + 5, lease=LONG, limit=5)) == 1


async def test_next_due_is_the_earliest_unleased_work(store: Store) -> None:
    assert await store.next_due() is None
    await store.register(job(token=1), now=T0, first_poll_at=T0 + 5, deadline_at=T0 + 500)
    assert await store.next_due() == T0 + 5
    await store.claim_due_watches("a", now=T0 + 5, lease=LONG, limit=5)
    assert await store.next_due() == T0 + 500
    await delivering(store, 2, at=T0 + 7)
    assert await store.next_due() == T0 + 7
    # Callbacks the delivery gate holds do not wake the loop; polls and deadlines still do.
    assert await store.next_due(callbacks=False) == T0 + 500
    await store.claim_due_deliveries("a", now=T0 + 7, lease=LONG, limit=5)
    assert await store.next_due() == T0 + 500
    await store.release("a")
    assert await store.next_due() == T0 + 5


async def test_pauses_are_shared_and_never_shortened(store: Store) -> None:
    assert await store.pauses() == []
    await store.set_pause("throttled", "throttled (429)", T0 + 10, None)
    await store.set_pause("throttled", "throttled (429)", T0 + 5, None)
    await store.set_pause("rejected:video", "video conversion refused (400)", T0 + 3, "video")
    assert await store.pauses() == [
        ("rejected:video", "video conversion refused (400)", T0 + 3, "video", "default"),
        ("throttled", "throttled (429)", T0 + 10, None, "default"),
    ]
    await store.set_pause("throttled", "throttled (429)", T0 + 20, None)
    await store.set_pause("rejected:video", "", 0, None)
    assert await store.pauses() == [("throttled", "throttled (429)", T0 + 20, None, "default")]


async def test_no_job_expires_while_paused_and_pauses_move_deadlines(store: Store) -> None:
    early, _ = await store.register(job(token=1), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10)
    doc, _ = await store.register(
        job(token=2, kind="document"), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10
    )
    # Credentials rejected at T0 + 5 for 5 s, then (growing backoff) for 10 s more, and a
    # 429 overlapping both: one span, T0 + 5 to T0 + 20, counted once.
    await store.set_pause("rejected", "credentials rejected (401)", T0 + 10, None, at=T0 + 5)
    later, _ = await store.register(
        job(token=3), now=T0 + 8, first_poll_at=T0 + 9, deadline_at=T0 + 18
    )
    await store.set_pause("throttled", "throttled (429)", T0 + 12, None, at=T0 + 9)
    await store.set_pause("rejected", "credentials rejected (401)", T0 + 20, None, at=T0 + 10)
    for now in (T0 + 10, T0 + 15, T0 + 19.9):
        assert await store.expire_due(now=now) == []  # no job expires while paused
    assert await store.expire_due(now=T0 + 20) == []
    shown = {j.id: j.deadline_at for j in (await store.list_jobs("alpha"))[0]}
    # Each moved by the paused time after it registered: 15 s, and 12 s for the one
    # registered during the pause.
    assert shown == {early.id: T0 + 25, doc.id: T0 + 25, later.id: T0 + 30}
    # Settled once: later expiries move nothing more.
    assert await store.expire_due(now=T0 + 24) == []
    assert await store.expire_due(now=T0 + 25) == [
        Recorded(early.id, "video", 1, "expired"),
        Recorded(doc.id, "document", 2, "expired"),
    ]
    assert (await store.get_job("alpha", later.id)).deadline_at == T0 + 30  # type: ignore[union-attr]


async def test_a_kind_pause_lifted_early_moves_only_its_kind(store: Store) -> None:
    video, _ = await store.register(job(token=1), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10)
    doc, _ = await store.register(
        job(token=2, kind="document"), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10
    )
    await store.set_pause("rejected:video", "video refused (400)", T0 + 60, "video", at=T0 + 2)
    assert await store.expire_due(now=T0 + 10) == [Recorded(doc.id, "document", 2, "expired")]
    # A good answer at T0 + 6 lifts it: the video job's deadline moves by 4 s.
    await store.set_pause("rejected:video", "", 0, None, at=T0 + 6)
    assert await store.expire_due(now=T0 + 13.9) == []
    assert (await store.get_job("alpha", video.id)).deadline_at == T0 + 14  # type: ignore[union-attr]
    assert await store.expire_due(now=T0 + 14) == [Recorded(video.id, "video", 1, "expired")]


async def test_paused_time_is_kept_across_a_restart_and_by_every_replica(
    store: Store, tmp_path: Path
) -> None:
    j, _ = await store.register(job(token=1), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10)
    await store.set_pause("throttled", "throttled (429)", T0 + 15, None, at=T0 + 5)
    if isinstance(store, SQLiteStore):
        await store.close()
        other: Store = await SQLiteStore.open(store.path)
    else:
        assert isinstance(store, PostgresStore) and store.schema is not None
        other = await PostgresStore.open(pg.POSTGRES_URL, schema=store.schema)
    try:
        assert await other.expire_due(now=T0 + 12) == []
        assert await other.expire_due(now=T0 + 19.9) == []
        assert await other.expire_due(now=T0 + 20) == [Recorded(j.id, "video", 1, "expired")]
    finally:
        await other.close()


async def test_backlog_counts_due_unleased_work(store: Store) -> None:
    assert await store.backlog(now=T0) == {"poll": (0, None), "delivery": (0, None)}
    await delivering(store, 1, at=T0 + 2)
    await reg_at(store, job(token=2), T0, T0 + 3)
    await reg_at(store, job(token=3), T0, T0 + 4)
    assert await store.backlog(now=T0 + 3.5) == {"poll": (1, T0 + 3), "delivery": (1, T0 + 2)}
    await store.claim_due_deliveries("a", now=T0 + 5, lease=LONG, limit=5)
    assert await store.backlog(now=T0 + 5) == {"poll": (2, T0 + 3), "delivery": (0, None)}


async def test_two_tenants_racing_for_a_token_one_wins(store: Store) -> None:
    tenants = [f"tenant{n}" for n in range(8)]
    results = await asyncio.gather(
        *(reg(store, job(token=77, tenant=t)) for t in tenants), return_exceptions=True
    )
    won = [t for t, r in zip(tenants, results, strict=True) if isinstance(r, tuple)]
    assert len(won) == 1 and results.count(results[tenants.index(won[0])]) == 1
    assert all(isinstance(r, Conflict) for r in results if not isinstance(r, tuple))
    _, again = await reg(store, job(token=77, tenant=won[0]))
    assert again is False


async def test_concurrent_jobs_on_one_token_share_one_watch(store: Store) -> None:
    results = await asyncio.gather(
        *(reg(store, job(token=8, url=f"http://127.0.0.1:9/{n}")) for n in range(20))
    )
    assert len({job_id for job_id, _ in results}) == 20 and all(c for _, c in results)
    assert len(await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=50)) == 1


# -- SQLite specifics ------------------------------------------------------------------------


async def test_one_process_per_file(tmp_path: Path) -> None:
    path = str(tmp_path / "one.db")
    first = await SQLiteStore.open(path)
    with pytest.raises(StoreError, match="in use by another bridge process"):
        await SQLiteStore.open(path)
    # A reader that does not take the lock (bridge secret) still works.
    reader = await SQLiteStore.open(path, exclusive=False)
    await reader.ping()
    await reader.close()
    await first.close()
    again = await SQLiteStore.open(path)
    await again.close()


async def test_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        await SQLiteStore.open(str(tmp_path / "no" / "such" / "dir.db"))


async def test_data_survives_reopen(tmp_path: Path) -> None:
    path = str(tmp_path / "again.db")
    s = await SQLiteStore.open(path)
    a, _ = await reg(s, job(token=42, metadata='{"k":"v"}'))
    await s.close()
    s = await SQLiteStore.open(path)
    try:
        j = await s.get_job("alpha", a)
        assert j is not None and j.token == 42 and j.metadata == '{"k":"v"}'
        assert await s.migrate() == sqlite_migrations()[-1][0]
    finally:
        await s.close()


async def test_secrets_generated_before_rotation_stay_current(tmp_path: Path) -> None:
    """Migration 006: each tenant's generated secret becomes its current v1 key."""
    path = tmp_path / "old.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.create_function("bridge_sha256", 1, lambda text: b"", deterministic=True)
        for version, script in sqlite_migrations():
            if version <= 4:
                db.executescript(script)
        db.execute("INSERT INTO signing_secrets VALUES ('alpha', 'whsec_old', 1.0)")
        db.execute("PRAGMA user_version = 4")
        db.commit()
    s = await SQLiteStore.open(str(path))
    try:
        never = keys_made()
        assert await s.signing_keys("alpha", "v1", generate=never, now=T0) == [
            SigningKey("v1", "whsec_old")
        ]
    finally:
        await s.close()


# -- PostgreSQL specifics --------------------------------------------------------------------


@pg.needs_postgres
async def test_the_shared_test_schema_is_emptied_to_what_a_fresh_migration_leaves() -> None:
    """The PostgreSQL ``store`` shares one migrated schema per test process (tests/pg.py):
    each test must find it just as a fresh migration leaves a schema, rows and sequences."""
    async with pg.postgres_store() as dirty:
        job_id = await delivering(dirty, 5)
        await dirty.cancel("alpha", job_id, now=T0 + 3)
        await dirty.set_pause("rejected:video", "video conversion refused (400)", T0 + 9, "video")
        await dirty.signing_keys("alpha", "v1", generate=lambda: ("whsec_x", None), now=T0)
        assert dirty.schema is not None
        assert await pg.fetchval(dirty.schema, "SELECT count(*) FROM jobs") > 0
    async with pg.postgres_store() as shared, pg.fresh_schema() as name:
        await (await PostgresStore.open(pg.POSTGRES_URL, schema=name)).close()
        assert shared.schema is not None
        emptied, fresh = await pg.contents(shared.schema), await pg.contents(name)
        # When each migration ran differs; which ran must not.
        emptied.pop("schema_version"), fresh.pop("schema_version")
        versions = "SELECT string_agg(version::text, ',' ORDER BY version) FROM schema_version"
        assert await pg.fetchval(shared.schema, versions) == await pg.fetchval(name, versions)
        assert emptied == fresh
        assert (await reg(shared, job(token=1)))[1] and (await reg(shared, job(token=2)))[1]


@pg.needs_postgres
async def test_replicas_starting_at_once_migrate_once() -> None:
    async with pg.fresh_schema() as schema:
        stores = await asyncio.gather(
            *(PostgresStore.open(pg.POSTGRES_URL, schema=schema) for _ in range(6))
        )
        try:
            latest = pg_migrations()[-1][0]
            assert await asyncio.gather(*(s.migrate() for s in stores)) == [latest] * 6
            # Each version applied once.
            applied = len(pg_migrations())
            assert await pg.fetchval(schema, "SELECT count(*) FROM schema_version") == applied
            # Every replica sees what another wrote.
            a, _ = await reg(stores[0], job(token=42, metadata='{"k":"v"}'))
            j = await stores[5].get_job("alpha", a)
            assert j is not None and j.metadata == '{"k":"v"}'
        finally:
            await asyncio.gather(*(s.close() for s in stores))


@pg.needs_postgres
async def test_leases_run_on_the_database_clock() -> None:
    async with pg.postgres_store() as store:
        await reg(store, job(token=1))
        assert len(await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=5)) == 1
        # A replica whose clock runs an hour ahead still sees the lease as live.
        assert await store.claim_due_watches("b", now=T0 + 3600, lease=LONG, limit=5) == []


@pg.needs_postgres
async def test_a_late_record_keeps_the_new_owners_lease() -> None:
    async with pg.postgres_store() as store:
        job_id, _ = await reg(store, job(token=1))
        (w,) = await store.claim_due_watches("a", now=T0 + 1, lease=0.1, limit=5)
        await asyncio.sleep(0.2)
        assert len(await store.claim_due_watches("b", now=T0 + 1, lease=LONG, limit=5)) == 1
        # "a" records late: its observation counts, but "b" keeps the work it holds.
        await store.record_poll(w.id, "a", seen(T0 + 1, T0 + 2, next_at=T0 + 2))
        j = await store.get_job("alpha", job_id)
        assert j is not None and (j.polls, j.upstream_status) == (1, "processing")
        assert await store.claim_due_watches("c", now=T0 + 5, lease=LONG, limit=5) == []
        await store.record_poll(w.id, "b", seen(T0 + 1, T0 + 3, next_at=T0 + 4))
        assert len(await store.claim_due_watches("c", now=T0 + 5, lease=LONG, limit=5)) == 1


@pg.needs_postgres
async def test_a_cancel_on_one_replica_reaches_the_others_at_once() -> None:
    async with pg.postgres_store() as a:
        assert a.schema is not None
        b = await PostgresStore.open(pg.POSTGRES_URL, schema=a.schema)
        try:
            job_id = await delivering(a, 5)
            (d,) = await a.claim_due_deliveries("a", now=T0 + 2, lease=LONG, limit=5)
            heard: asyncio.Queue[str] = asyncio.Queue()
            await a.listen_cancels(heard.put_nowait)
            await a.listen_pauses(lambda: heard.put_nowait("(a pause)"))
            assert await a.delivery_live(d.job_id)
            assert await b.cancel("alpha", job_id, now=T0 + 3) is not None
            # Delivered at the cancel's commit; the wait is a safety net, not a measure.
            assert await asyncio.wait_for(heard.get(), 10) == job_id
            # The backstop that needs no notice: the job's state, read afresh.
            assert not await a.delivery_live(job_id)
            await b.set_pause("throttled", "throttled (429)", T0 + 9, None)
            assert await asyncio.wait_for(heard.get(), 10) == "(a pause)"
        finally:
            await b.close()


@pg.needs_postgres
async def test_open_store_takes_postgresql_urls() -> None:
    for scheme in ("postgresql", "postgres"):
        url = pg.POSTGRES_URL.replace("postgresql://", f"{scheme}://", 1)
        store = await open_store(Database("postgresql", dsn=url), exclusive=True, migrate=False)
        try:
            assert isinstance(store, PostgresStore)
            await store.ping()
        finally:
            await store.close()


@pg.needs_postgres
async def test_a_missing_database_is_a_one_line_store_error() -> None:
    parts = urlsplit(pg.POSTGRES_URL)
    url = urlunsplit((parts.scheme, parts.netloc, "/bridge_no_such_database", parts.query, ""))
    with pytest.raises(StoreError) as err:
        await PostgresStore.open(url)
    message = str(err.value)
    assert message.startswith("cannot connect to PostgreSQL at ")
    assert "/bridge_no_such_database: " in message and "\n" not in message
    assert not parts.password or parts.password not in message


async def test_an_unreachable_server_is_a_store_error_without_the_password() -> None:
    url = "postgresql://bridge:s3cr%2Ft@127.0.0.1:1/bridge"
    with pytest.raises(StoreError) as err:
        await open_store(Database("postgresql", dsn=url))
    message = str(err.value)
    assert message.startswith(
        "cannot connect to PostgreSQL at postgresql://bridge@127.0.0.1:1/bridge: "
    )
    assert "s3cr" not in message and "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


@pg.needs_postgres
async def test_a_closed_store_raises_store_error() -> None:
    async with pg.postgres_store() as store:
        await store.close()
        with pytest.raises(StoreError):
            await store.ping()
        with pytest.raises(StoreError):
            await store.get_job("alpha", "job_x")
        await store.close()  # twice is fine


async def test_concurrent_verbs_fail_alone_and_all_commit(store: Store, tmp_path: Path) -> None:
    """Verbs that arrive together (SQLite commits them as one group) keep their own results:
    a conflict undoes only itself, and every success is there after a reopen."""
    await reg(store, job(token=7, tenant="beta"))
    news = [job(token=100 + n) for n in range(120)]
    news += [job(token=7)] * 5  # another tenant's token: 409 each, amid the group
    news += [job(token=100, metadata='{"other":1}')] * 5  # same job, other metadata: 409
    results = await asyncio.gather(*(reg(store, n) for n in news), return_exceptions=True)
    conflicts = [r for r in results if isinstance(r, Conflict)]
    made = [r for r in results if isinstance(r, tuple)]
    assert len(conflicts) == 10, results[-10:]
    assert len(made) == 120 and all(created for _, created in made)
    if isinstance(store, SQLiteStore):
        await store.close()
        reopened = await SQLiteStore.open(store.path)
        try:
            counts = await reopened.count_by_state()
        finally:
            await reopened.close()
    else:
        counts = await store.count_by_state()
    assert counts == {"tracking": 121}


async def test_a_watch_knows_when_its_tracking_began_and_was_last_polled(store: Store) -> None:
    await reg(store, job(token=3), now=T0)
    (w,) = await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=5)
    assert (w.armed_at, w.last_polled_at) == (T0, None)
    await store.record_poll(w.id, "a", seen(T0 + 1, T0 + 1.5, next_at=T0 + 4))
    (w,) = await store.claim_due_watches("a", now=T0 + 4, lease=LONG, limit=5)
    assert (w.armed_at, w.last_polled_at) == (T0, T0 + 1.5)
    done = seen(T0 + 4, T0 + 4.2, status="finished", outcome="finished")
    await store.record_poll(w.id, "a", done)
    # The watch ended; a newcomer arms it again, and its plan's clock starts afresh.
    await reg(store, job(token=3, url="http://127.0.0.1:9/other"), now=T0 + 100)
    (w,) = await store.claim_due_watches("a", now=T0 + 101, lease=LONG, limit=5)
    assert (w.armed_at, w.last_polled_at, w.status) == (T0 + 100, None, None)


async def test_learned_durations_add_up_per_kind_and_fade(store: Store) -> None:
    assert await store.durations() == {}
    await reg(store, job(token=5), now=T0)
    await reg(store, job(token=6, kind="document"), now=T0)
    watches = await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=5)
    by_kind = {w.kind: w for w in watches}
    for kind, learned in (("video", ((40, 0.25), (41, 0.75))), ("document", ((40, 1.0),))):
        record = dataclasses.replace(
            seen(T0 + 1, T0 + 1.1, status="finished", outcome="finished"), learned=learned
        )
        await store.record_poll(by_kind[kind].id, "a", record)
    assert await store.durations() == {"document": [(40, 1.0)], "video": [(40, 0.25), (41, 0.75)]}
    await store.scale_durations("video", 0.5)
    assert await store.durations() == {
        "document": [(40, 1.0)],
        "video": [(40, 0.125), (41, 0.375)],
    }


async def test_an_outcome_can_come_back_with_its_callback_leased(store: Store) -> None:
    first, _ = await reg(store, job(token=9, url="http://127.0.0.1:9/a"), now=T0)
    second, _ = await reg(store, job(token=9, url="http://127.0.0.1:9/b"), now=T0)
    (w,) = await store.claim_due_watches("a", now=T0 + 1, lease=LONG, limit=5)
    done = seen(T0 + 1, T0 + 1.2, status="finished", outcome="finished")
    recorded = await store.record_poll(w.id, "a", done, lease=LONG, deliver=1)
    assert [(r.job_id, r.delivery is not None) for r in recorded] == [
        (first, True),
        (second, False),
    ]
    handed = recorded[0].delivery
    assert handed is not None
    assert (handed.job_id, handed.attempts, handed.round_attempts, handed.outcome_at) == (
        first,
        0,
        0,
        T0 + 1.2,
    )
    assert b'"status":"finished"' in handed.body
    # The handed-off callback is leased to "a": another claimer gets only the other one.
    claimed = await store.claim_due_deliveries("b", now=T0 + 2, lease=LONG, limit=5)
    assert [d.job_id for d in claimed] == [second]
    attempt = Attempt(n=1, at=T0 + 2, duration_ms=5, response_status=204, error=None)
    assert await store.record_attempt(
        first, "a", attempt, next_state="delivered", next_attempt_at=None
    )


async def test_only_postgresql_is_shared_by_replicas(store: Store) -> None:
    # The scheduler re-reads a waiting callback's job before sending only where another
    # process could have canceled it: one process holds a SQLite file.
    assert store.shared is isinstance(store, PostgresStore)


# -- projects: the watch is (project, kind, token) ------------------------------------------


async def test_one_token_in_two_projects_is_two_watches_and_two_jobs(store: Store) -> None:
    a, _ = await reg(store, job(token=5, project="shop"))
    b, created = await reg(store, job(token=5, project="staging"))
    assert created and a != b
    # Ownership is per (project, kind, token): another tenant takes the token elsewhere.
    c, _ = await reg(store, job(token=5, tenant="beta", project="blog"))
    with pytest.raises(Conflict):
        await reg(store, job(token=5, tenant="beta", project="shop"))
    # Idempotency is per project too.
    assert await reg(store, job(token=5, project="shop")) == (a, False)
    shop = await store.get_job("alpha", a)
    assert shop is not None and (shop.project, shop.to_api()["project"]) == ("shop", "shop")
    listed, _ = await store.list_jobs("alpha", project="staging")
    assert [j.id for j in listed] == [b]
    assert {j.id for j in (await store.list_jobs("alpha"))[0]} == {a, b}
    assert [j.id for j in (await store.list_jobs("beta", project="blog"))[0]] == [c]

    claimed = await store.claim_due_watches("p", now=T0 + 1, lease=LONG, limit=10)
    assert sorted((w.project, w.token) for w in claimed) == [
        ("blog", 5),
        ("shop", 5),
        ("staging", 5),
    ]
    by_project = {w.project: w for w in claimed}
    recorded = await store.record_poll(
        by_project["staging"].id,
        "p",
        seen(T0 + 1, T0 + 1.2, status="finished", result='{"uuid":"s"}', outcome="finished"),
        lease=LONG,
        deliver=1,
    )
    # The staging watch's outcome goes to the staging job only, its body naming the project.
    assert [r.job_id for r in recorded] == [b]
    delivery = recorded[0].delivery
    assert delivery is not None
    data = json.loads(delivery.body)["data"]
    assert (data["project"], data["result"]) == ("staging", {"uuid": "s"})
    still = await store.get_job("alpha", a)
    assert still is not None and (still.state, still.upstream_status) == ("tracking", None)


async def test_a_claim_skips_paused_projects_and_paused_project_kinds(store: Store) -> None:
    await reg_at(store, job(token=1, project="a"), T0, T0 + 1)
    await reg_at(store, job(token=2, project="b"), T0, T0 + 1)
    await reg_at(store, job(token=3, project="b", kind="document"), T0, T0 + 1)
    await reg_at(store, job(token=4, project="c", kind="document"), T0, T0 + 1)
    claimed = await store.claim_due_watches(
        "p",
        now=T0 + 2,
        lease=LONG,
        limit=10,
        skip_projects=("a",),
        skip_kinds=(("b", "document"),),
    )
    assert sorted((w.project, w.kind, w.token) for w in claimed) == [
        ("b", "video", 2),
        ("c", "document", 4),
    ]


async def test_a_project_pause_holds_and_moves_only_that_projects_deadlines(
    store: Store,
) -> None:
    held, _ = await store.register(
        job(token=1, project="shop"), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10
    )
    other, _ = await store.register(
        job(token=1, project="blog"), now=T0, first_poll_at=T0 + 1, deadline_at=T0 + 10
    )
    await store.set_pause(
        "shop:throttled", "throttled (429)", T0 + 15, None, project="shop", at=T0 + 5
    )
    assert await store.pauses() == [("shop:throttled", "throttled (429)", T0 + 15, None, "shop")]
    # The blog project was never paused: its job expires on time; shop's waits.
    assert await store.expire_due(now=T0 + 10) == [
        Recorded(other.id, "video", 1, "expired", project="blog")
    ]
    assert await store.expire_due(now=T0 + 15) == []
    moved = await store.get_job("alpha", held.id)
    assert moved is not None and moved.deadline_at == T0 + 20
    assert await store.expire_due(now=T0 + 20) == [
        Recorded(held.id, "video", 1, "expired", project="shop")
    ]
    # A lift of a project's pause removes that project's key only.
    await store.set_pause(
        "shop:rejected", "credentials rejected (401)", T0 + 60, None, project="shop", at=T0 + 30
    )
    await store.set_pause("shop:rejected", "", 0, None, project="shop", at=T0 + 31)
    assert [row[0] for row in await store.pauses()] == ["shop:throttled"]


async def test_bulk_redelivery_filters_by_project(store: Store) -> None:
    shop = await delivering(store, 1, project="shop")
    blog = await delivering(store, 2, project="blog")
    for job_id in (shop, blog):
        await store.record_attempt(
            job_id, "d", attempt(1, T0 + 1, 200), next_state="delivered", next_attempt_at=None
        )
    count, remaining = await store.redeliver_many(
        "alpha", state="delivered", project="shop", limit=10, now=T0 + 5
    )
    assert (count, remaining) == (1, 0)
    assert (await store.get_job("alpha", shop)).state == "delivering"  # type: ignore[union-attr]
    assert (await store.get_job("alpha", blog)).state == "delivered"  # type: ignore[union-attr]


async def test_rows_from_before_projects_are_the_default_project(tmp_path: Path) -> None:
    """Migration 007 on SQLite: the watches table is rebuilt, every row kept as 'default'."""
    path = tmp_path / "v6.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.create_function("bridge_sha256", 1, lambda text: b"d", deterministic=True)
        for version, script in sqlite_migrations():
            if version <= 6:
                db.executescript(script)
        db.execute(
            "INSERT INTO watches (id, kind, token, owner, next_poll_at, created_at) "
            "VALUES (3, 'video', 5, 'alpha', 1.0, 1.0)"
        )
        db.execute(
            "INSERT INTO jobs (id, tenant, watch_id, kind, token, callback_url, state, "
            "polls_base, created_at, updated_at, deadline_at, url_digest) VALUES "
            "('job_old', 'alpha', 3, 'video', 5, 'http://127.0.0.1:9/h', 'tracking', 0, "
            "1.0, 1.0, 99999999999.0, x'00')"
        )
        db.execute("INSERT INTO pauses VALUES ('throttled', 'throttled (429)', 9e12, NULL)")
        db.execute("PRAGMA user_version = 6")
        db.commit()
    s = await SQLiteStore.open(str(path))
    try:
        old = await s.get_job("alpha", "job_old")
        assert old is not None and (old.project, old.token) == ("default", 5)
        assert await s.pauses() == [("default:throttled", "throttled (429)", 9e12, None, "default")]
        # The old watch is the default project's: the same token elsewhere is another one.
        assert (await reg(s, job(token=5, tenant="beta", project="shop")))[1]
        with pytest.raises(Conflict):
            await reg(s, job(token=5, tenant="beta"))
        (w,) = await s.claim_due_watches("p", now=2.0, lease=LONG, limit=5)
        assert (w.id, w.project) == (3, "default")
    finally:
        await s.close()
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        assert db.execute("PRAGMA user_version").fetchone()[0] == 7


@pg.needs_postgres
async def test_rows_from_before_projects_are_the_default_project_on_postgres(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bridge.store import postgres_driver

    async with pg.fresh_schema() as schema:
        with monkeypatch.context() as m:
            m.setattr(
                postgres_driver, "migrations", lambda d: [x for x in migrations(d) if x[0] <= 6]
            )
            old = await PostgresStore.open(pg.POSTGRES_URL, schema=schema)
            await old.close()
        await pg.fetchval(
            schema,
            "WITH w AS (INSERT INTO watches (kind, token, owner, next_poll_at, created_at) "
            "VALUES ('video', 5, 'alpha', 1.0, 1.0) RETURNING id) "
            "INSERT INTO jobs (id, tenant, watch_id, kind, token, callback_url, state, "
            "polls_base, created_at, updated_at, deadline_at, url_digest) "
            "SELECT 'job_old', 'alpha', id, 'video', 5, 'http://127.0.0.1:9/h', 'tracking', 0, "
            "1.0, 1.0, 99999999999.0, '\\x00'::bytea FROM w",
        )
        await pg.fetchval(
            schema, "INSERT INTO pauses VALUES ('throttled', 'throttled (429)', 9e12, NULL)"
        )
        s = await PostgresStore.open(pg.POSTGRES_URL, schema=schema)
        try:
            found = await s.get_job("alpha", "job_old")
            assert found is not None and found.project == "default"
            assert await s.pauses() == [
                ("default:throttled", "throttled (429)", 9e12, None, "default")
            ]
            assert (await reg(s, job(token=5, tenant="beta", project="shop")))[1]
            with pytest.raises(Conflict):
                await reg(s, job(token=5, tenant="beta"))
        finally:
            await s.close()
