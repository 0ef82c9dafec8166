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
THROTTLED = TakePause("default:throttled", "throttled (429)", T0 + 15)
REJECTED = TakePause("default:rejected", "credentials rejected (401)", T0 + 5, None, 1)
OK = {"state": "ok", "projects": {"default": {"state": "ok"}}}


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
    assert board.describe() == OK and board.reasons() == set()
    board.take(REJECTED)
    assert board.get("default:rejected") == Pause("credentials rejected (401)", T0 + 5)
    assert board.rejections("default:rejected") == 1
    board.take(TakePause("default:rejected", "credentials rejected (401)", T0 + 10, None, 2))
    assert board.rejections("default:rejected") == 2
    # A 429 is not a rejection: it leaves every count as it is.
    board.take(THROTTLED)
    assert board.rejections("default:throttled") == 0 and board.rejections("default:rejected") == 2
    shown = {"state": "paused", "reason": "throttled (429)", "until": "2027-01-15T08:00:15Z"}
    assert board.describe() == {**shown, "projects": {"default": shown}}
    assert board.reasons() == {
        ("throttled (429)", "default"),
        ("credentials rejected (401)", "default"),
    }
    board.lift("default:rejected")
    assert board.get("default:rejected") is None and board.rejections("default:rejected") == 0
    assert board.reasons() == {("throttled (429)", "default")}
    clock.now = T0 + 16
    assert board.reasons() == set() and board.describe() == OK


def test_a_kind_pause_holds_that_kind_only() -> None:
    clock = Clock()
    board = PauseBoard(clock)
    board.take(
        TakePause("default:rejected:video", "video conversion refused (400)", T0 + 10, "video", 1)
    )
    assert board.paused(T0) == ((), (("default", "video"),))
    assert board.left("default", "video") == 10.0 and board.left("default", "document") == 0.0
    assert board.describe()["kind"] == "video"
    board.take(THROTTLED)
    assert board.paused(T0) == (("default",), (("default", "video"),))
    assert board.left("default", "document") == 15.0


def test_a_pause_holds_its_project_only() -> None:
    clock = Clock()
    board = PauseBoard(clock, ["default", "shop", "staging"])
    board.take(TakePause("shop:throttled", "throttled (429)", T0 + 15, project="shop"))
    board.take(
        TakePause(
            "staging:rejected:document", "document conversion refused (400)", T0 + 5,
            "document", 1, "staging",
        )
    )  # fmt: skip
    assert board.paused(T0) == (("shop",), (("staging", "document"),))
    assert board.left("shop", "video") == 15.0 and board.left("default", "video") == 0.0
    assert board.left("staging", "document") == 5.0 and board.left("staging", "video") == 0.0
    throttled = {"state": "paused", "reason": "throttled (429)", "until": "2027-01-15T08:00:15Z"}
    assert board.describe() == {
        **throttled,
        "projects": {
            "default": {"state": "ok"},
            "shop": throttled,
            "staging": {
                "state": "paused",
                "reason": "document conversion refused (400)",
                "until": "2027-01-15T08:00:05Z",
                "kind": "document",
            },
        },
    }
    assert board.reasons() == {
        ("throttled (429)", "shop"),
        ("document conversion refused (400)", "staging"),
    }
    clock.now = T0 + 16
    assert board.describe()["projects"]["shop"] == {"state": "ok"}


async def test_share_writes_what_changed_and_adopt_takes_it_up(store: Store) -> None:
    here, there = PauseBoard(Clock()), PauseBoard(Clock())
    here.take(THROTTLED)
    here.take(REJECTED)
    await here.share(store)
    assert await store.pauses() == [
        ("default:rejected", "credentials rejected (401)", T0 + 5, None, "default"),
        ("default:throttled", "throttled (429)", T0 + 15, None, "default"),
    ]
    await there.adopt(store, T0)
    assert there.get("default:throttled") == Pause("throttled (429)", T0 + 15)
    assert there.reasons() == {
        ("throttled (429)", "default"),
        ("credentials rejected (401)", "default"),
    }
    # Adopted pauses are not counted as rejections seen here, nor written back.
    assert there.rejections("rejected") == 0
    await there.share(store)
    # A good answer here lifts the pause in the store; the other process follows.
    here.lift("default:rejected")
    await here.share(store)
    assert [row[0] for row in await store.pauses()] == ["default:throttled"]
    await there.adopt(store, T0 + 1)
    assert there.get("default:rejected") is None and there.get("default:throttled") is not None


async def test_a_shared_pause_keeps_its_project(store: Store) -> None:
    here, there = PauseBoard(Clock(), ["a", "b"]), PauseBoard(Clock(), ["a", "b"])
    here.take(TakePause("b:throttled", "throttled (429)", T0 + 15, project="b"))
    await here.share(store)
    assert await store.pauses() == [("b:throttled", "throttled (429)", T0 + 15, None, "b")]
    await there.adopt(store, T0)
    assert there.paused(T0) == (("b",), ())
    assert there.left("a", "video") == 0.0 and there.left("b", "video") == 15.0


async def test_adopt_never_shortens_nor_lifts_a_pause_taken_here(store: Store) -> None:
    here, there = PauseBoard(Clock()), PauseBoard(Clock())
    there.take(TakePause("default:throttled", "throttled (429)", T0 + 30))
    here.take(THROTTLED)  # ends sooner
    await here.share(store)
    await there.adopt(store, T0)
    assert there.get("default:throttled") == Pause("throttled (429)", T0 + 30)
    # Ended pauses are not adopted.
    await there.adopt(store, T0 + 20)
    assert there.get("default:throttled") == Pause("throttled (429)", T0 + 30)
    # A pause this process took itself stays when the store loses it.
    await store.set_pause("default:throttled", "", 0, None)
    await there.adopt(store, T0 + 1)
    assert there.get("default:throttled") == Pause("throttled (429)", T0 + 30)


async def test_the_retry_gate_withholds_retries_under_a_pause() -> None:
    clock = Clock()
    board = PauseBoard(clock)
    limiter = RateLimiter(20, clock=clock)
    gate = retry_gate(board, limiter)
    assert await gate("video") is True  # no pause: a rate slot, and the retry goes
    board.take(THROTTLED)  # a 429 seen by another poll while this one's first try failed
    assert await gate("video") is False and await gate("document") is False
    board.lift("default:throttled")
    board.take(
        TakePause("default:rejected:video", "video conversion rejected (400)", T0 + 5, "video", 1)
    )
    assert await gate("video") is False
    assert await gate("document") is True  # the pause holds one kind only
    # Another project's gate: the default project's pauses do not hold it.
    other = retry_gate(board, RateLimiter(20, clock=clock), "shop")
    assert await other("video") is True
