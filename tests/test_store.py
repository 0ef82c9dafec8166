"""The store contract, run against every store implementation the suite can reach."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.model import NewJob
from bridge.store import Conflict, Store, StoreError
from bridge.store.sqlite import SQLiteStore

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    s = await SQLiteStore.open(str(tmp_path / "store.db"))
    yield s
    await s.close()


def job(
    token: int = 1, tenant: str = "alpha", url: str = "http://127.0.0.1:9/h", **kw: str
) -> NewJob:
    return NewJob(
        tenant=tenant,
        kind=kw.get("kind", "video"),
        token=token,
        callback_url=url,
        metadata=kw.get("metadata"),
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
    # The purged job's token is free again, for any tenant.
    _, created = await reg(store, job(token=2, tenant="beta"))
    assert created


async def test_signing_secret_is_made_once(store: Store, tmp_path: Path) -> None:
    made = iter(["whsec_first", "whsec_second", "whsec_third"])
    first = await store.signing_secret("alpha", generate=lambda: next(made), now=T0)
    second = await store.signing_secret("alpha", generate=lambda: next(made), now=T0)
    assert first == second == "whsec_first"
    other = await store.signing_secret("beta", generate=lambda: next(made), now=T0)
    assert other == "whsec_third"


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


async def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    path = tmp_path / "killed.db"
    with subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import asyncio, sys, time\n"
            "from bridge.store.sqlite import SQLiteStore\n"
            f"asyncio.run(SQLiteStore.open({str(path)!r}))\n"
            "print('locked', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    ) as holder:
        try:
            assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
            with pytest.raises(StoreError):
                await SQLiteStore.open(str(path))
            holder.kill()
            holder.wait()
            reopened = await SQLiteStore.open(str(path))
            await reopened.close()
        finally:
            holder.kill()


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
        assert await s.migrate() == 1
    finally:
        await s.close()
