"""The pause owner: take, lift, the rejection counts, what it reports, share and adopt.

Share and adopt run against a real SQLite store: two boards on one store stand for two
processes on one database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bridge.pacing import Pause, PauseBoard, RateLimiter, TakePause, retry_gate
from bridge.settings import Database
from bridge.store import Store, open_store

T0 = 1_800_000_000.0
THROTTLED = TakePause("throttled", "throttled (429)", T0 + 15)
REJECTED = TakePause("rejected", "credentials rejected (401)", T0 + 5, None, 1)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await open_store(Database("sqlite", path=str(tmp_path / "pauses.db")))
    try:
        yield s
    finally:
        await s.close()


def test_take_and_lift_keep_the_rejection_count() -> None:
    clock = Clock()
    board = PauseBoard(clock)
    assert board.describe() == {"state": "ok"} and board.reasons() == set()
    board.take(REJECTED)
    assert board.get("rejected") == Pause("credentials rejected (401)", T0 + 5)
    assert board.rejections("rejected") == 1
    board.take(TakePause("rejected", "credentials rejected (401)", T0 + 10, None, 2))
    assert board.rejections("rejected") == 2
    # A 429 is not a rejection: it leaves every count as it is.
    board.take(THROTTLED)
    assert board.rejections("throttled") == 0 and board.rejections("rejected") == 2
    assert board.describe() == {
        "state": "paused",
        "reason": "throttled (429)",
        "until": "2027-01-15T08:00:15Z",
    }
    assert board.reasons() == {"throttled (429)", "credentials rejected (401)"}
    board.lift("rejected")
    assert board.get("rejected") is None and board.rejections("rejected") == 0
    assert board.reasons() == {"throttled (429)"}
    clock.now = T0 + 16
    assert board.reasons() == set() and board.describe() == {"state": "ok"}


def test_a_kind_pause_holds_that_kind_only() -> None:
    clock = Clock()
    board = PauseBoard(clock)
    board.take(TakePause("rejected:video", "video conversion refused (400)", T0 + 10, "video", 1))
    assert board.paused(T0) == (False, ("video",))
    assert board.left("video") == 10.0 and board.left("document") == 0.0
    assert board.describe()["kind"] == "video"
    board.take(THROTTLED)
    assert board.paused(T0) == (True, ("video",))
    assert board.left("document") == 15.0


async def test_share_writes_what_changed_and_adopt_takes_it_up(store: Store) -> None:
    here, there = PauseBoard(Clock()), PauseBoard(Clock())
    here.take(THROTTLED)
    here.take(REJECTED)
    await here.share(store)
    assert await store.pauses() == [
        ("rejected", "credentials rejected (401)", T0 + 5, None),
        ("throttled", "throttled (429)", T0 + 15, None),
    ]
    await there.adopt(store, T0)
    assert there.get("throttled") == Pause("throttled (429)", T0 + 15)
    assert there.reasons() == {"throttled (429)", "credentials rejected (401)"}
    # Adopted pauses are not counted as rejections seen here, nor written back.
    assert there.rejections("rejected") == 0
    await there.share(store)
    # A good answer here lifts the pause in the store; the other process follows.
    here.lift("rejected")
    await here.share(store)
    assert [row[0] for row in await store.pauses()] == ["throttled"]
    await there.adopt(store, T0 + 1)
    assert there.get("rejected") is None and there.get("throttled") is not None


async def test_adopt_never_shortens_nor_lifts_a_pause_taken_here(store: Store) -> None:
    here, there = PauseBoard(Clock()), PauseBoard(Clock())
    there.take(TakePause("throttled", "throttled (429)", T0 + 30))
    here.take(THROTTLED)  # ends sooner
    await here.share(store)
    await there.adopt(store, T0)
    assert there.get("throttled") == Pause("throttled (429)", T0 + 30)
    # Ended pauses are not adopted.
    await there.adopt(store, T0 + 20)
    assert there.get("throttled") == Pause("throttled (429)", T0 + 30)
    # A pause this process took itself stays when the store loses it.
    await store.set_pause("throttled", "", 0, None)
    await there.adopt(store, T0 + 1)
    assert there.get("throttled") == Pause("throttled (429)", T0 + 30)


async def test_the_retry_gate_withholds_retries_under_a_pause() -> None:
    clock = Clock()
    board = PauseBoard(clock)
    limiter = RateLimiter(20, clock=clock)
    gate = retry_gate(board, limiter)
    assert await gate("video") is True  # no pause: a rate slot, and the retry goes
    board.take(THROTTLED)  # a 429 seen by another poll while this one's first try failed
    assert await gate("video") is False and await gate("document") is False
    board.lift("throttled")
    board.take(TakePause("rejected:video", "video conversion rejected (400)", T0 + 5, "video", 1))
    assert await gate("video") is False
    assert await gate("document") is True  # the pause holds one kind only
