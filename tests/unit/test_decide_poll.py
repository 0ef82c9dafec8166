"""decide_poll by table: a watch, what its poll saw, the pauses in force -> what follows.

Pure: no store, no network, no clock but the times passed in. ``rand`` 0.5 is the middle
of the jitter, so intervals come out exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from bridge import pollplan
from bridge.model import NOT_FOUND_ERROR, PollRecord, WatchWork, not_found_error
from bridge.pacing import PauseBoard, TakePause
from bridge.polldecision import (
    NotFoundSeen,
    Paused,
    PollBounds,
    PollDecision,
    PollEvent,
    PollFailed,
    RejectedAgain,
    Resumed,
    StatusChanged,
    ThrottledSeen,
    decide_poll,
)
from bridge.upstream import (
    Garbage,
    NotFound,
    Observation,
    Rejected,
    Status,
    Throttled,
    Transient,
)

T0 = 1_800_000_000.0
ARMED = T0 - 30.0  # the watch has been tracking for 30 s
STARTED = T0 - 0.2  # the request went out 200 ms before its answer was in
BOUNDS = PollBounds(min_interval=2.0, max_interval=60.0)
RESULT = {"uuid": "u-1"}
FAILED_ERROR = "CorruptFile: the input is not a video"
DETAIL = "Incorrect authentication credentials."

WATCH = WatchWork(
    id=7,
    kind="video",
    token=42,
    due_at=T0 - 1,
    status="processing",
    interval=4.0,
    not_found=0,
    failures=0,
    armed_at=ARMED,
    last_polled_at=T0 - 5,
)


def record(**changes: Any) -> PollRecord:
    """A poll record that kept everything of WATCH; ``changes`` say what the poll changed."""
    fields: dict[str, Any] = {
        "started_at": STARTED,
        "polled_at": T0,
        "next_poll_at": T0 + 6.0,
        "not_found": 0,
        "failures": 0,
        "interval": 4.0,
        "answered": False,
    }
    fields.update(changes)
    return PollRecord(**fields)


def status(value: str, *, error: str | None = None) -> Status:
    return Status(status=value, error=error, result=RESULT)  # type: ignore[arg-type]


def answered(value: str, interval: float, **changes: Any) -> PollRecord:
    fields: dict[str, Any] = {
        "answered": True,
        "status": value,
        "result_json": '{"uuid":"u-1"}',
        "interval": interval,
        "next_poll_at": T0 + interval,
    }
    return record(**{**fields, **changes})


@dataclass
class Case:
    watch: WatchWork
    observation: Observation
    record: PollRecord
    take: TakePause | None = None
    lift: tuple[str, ...] = ()
    events: tuple[PollEvent, ...] = ()
    pauses: list[TakePause] = field(default_factory=list)  # in force before the answer
    rand: float = 0.5


LEARNED = tuple(pollplan.spread(T0 - 5 - ARMED, STARTED - ARMED))

CASES = {
    # -- status answers: the growth rule, counters reset, outcomes --------------------------
    "first answer starts at the minimum": Case(
        replace(WATCH, status=None, interval=None, last_polled_at=None),
        status("pending"),
        answered("pending", 2.0, changed=True),
        events=(StatusChanged("pending", None),),
    ),
    "unchanged status grows the interval by half": Case(
        WATCH, status("processing"), answered("processing", 6.0)
    ),
    "a change falls back to the minimum": Case(
        replace(WATCH, status="pending", interval=9.0),
        status("processing"),
        answered("processing", 2.0, changed=True),
        events=(StatusChanged("processing", "pending"),),
    ),
    "growth stops at the maximum": Case(
        replace(WATCH, interval=50.0), status("processing"), answered("processing", 60.0)
    ),
    "jitter moves the interval by at most a tenth": Case(
        WATCH,
        status("processing"),
        answered("processing", 6.0, next_poll_at=T0 + 5.4),
        rand=0.0,
    ),
    "a status answer ends 404 and failure streaks": Case(
        replace(WATCH, not_found=2, failures=3),
        status("processing"),
        answered("processing", 6.0),
    ),
    "finished first seen: the outcome, and how long it took is learned": Case(
        WATCH,
        status("finished"),
        answered("finished", 2.0, changed=True, outcome="finished", learned=LEARNED),
        events=(StatusChanged("finished", "processing"),),
    ),
    "failed carries Uploadcare's error": Case(
        WATCH,
        status("failed", error=FAILED_ERROR),
        answered(
            "failed",
            2.0,
            error=FAILED_ERROR,
            changed=True,
            outcome="failed",
            outcome_error=FAILED_ERROR,
            learned=LEARNED,
        ),
        events=(StatusChanged("failed", "processing"),),
    ),
    "an end seen before (a re-poll for a late joiner) is not learned twice": Case(
        replace(WATCH, status="canceled"),
        status("canceled"),
        answered("canceled", 6.0, outcome="canceled"),
    ),
    # -- 404 ----------------------------------------------------------------------------------
    "a 404 counts a miss and polls again after the minimum": Case(
        replace(WATCH, failures=2),
        NotFound(),
        record(not_found=1, next_poll_at=T0 + 2.0),
        events=(NotFoundSeen(1),),
    ),
    "the third 404 in a row ends the watch as not_found": Case(
        replace(WATCH, not_found=2),
        NotFound(),
        record(
            not_found=3,
            next_poll_at=T0 + 2.0,
            outcome="not_found",
            outcome_error=NOT_FOUND_ERROR,
        ),
        events=(NotFoundSeen(3),),
    ),
    # -- 429 ----------------------------------------------------------------------------------
    "a 429 pauses everyone; the watch polls in the second after the pause": Case(
        replace(WATCH, failures=1, not_found=1),
        Throttled(retry_after=2.0),
        record(failures=1, not_found=1, next_poll_at=T0 + 2.5),
        take=TakePause("default:throttled", "throttled (429)", T0 + 2.0),
        events=(ThrottledSeen(2.0),),
    ),
    "a 429's slack is jittered over the whole second": Case(
        WATCH,
        Throttled(retry_after=2.0),
        record(next_poll_at=T0 + 2.0),
        take=TakePause("default:throttled", "throttled (429)", T0 + 2.0),
        events=(ThrottledSeen(2.0),),
        rand=0.0,
    ),
    # -- rejections ---------------------------------------------------------------------------
    "a 401 pauses everyone for 5 s": Case(
        WATCH,
        Rejected(401, DETAIL),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("default:rejected", "credentials rejected (401)", T0 + 5.0, None, 1),
        events=(Paused("credentials rejected (401)", DETAIL, 5.0),),
    ),
    "a repeated rejection after its pause grows the pause": Case(
        WATCH,
        Rejected(403, DETAIL),
        record(next_poll_at=T0 + 20.0),
        take=TakePause("default:rejected", "credentials rejected (403)", T0 + 20.0, None, 3),
        events=(Paused("credentials rejected (403)", DETAIL, 20.0),),
        pauses=[TakePause("default:rejected", "credentials rejected (401)", T0 - 1, None, 2)],
    ),
    "a rejection while its pause is in force (in flight then) does not grow it": Case(
        WATCH,
        Rejected(401, DETAIL),
        record(next_poll_at=T0 + 3.0),
        events=(RejectedAgain(401),),  # logged (its request id), no new pause
        pauses=[TakePause("default:rejected", "credentials rejected (401)", T0 + 3.0, None, 2)],
    ),
    # -- clock skew: a 401 to a request whose Date was more than 5 minutes off ----------------
    "a 401 with this host 10 minutes behind is clock skew, not the keys": Case(
        WATCH,
        Rejected(401, DETAIL, skew=600.4, request_id="req-1"),
        record(next_poll_at=T0 + 5.0),
        take=TakePause(
            "default:rejected",
            "clock skew (this host is 600 s behind Uploadcare)",
            T0 + 5.0,
            None,
            1,
        ),
        events=(
            Paused(
                "clock skew (this host is 600 s behind Uploadcare)", DETAIL, 5.0, "req-1", 600.4
            ),
        ),
    ),
    "a 401 with this host ahead is clock skew the other way": Case(
        WATCH,
        Rejected(401, DETAIL, skew=-301.6),
        record(next_poll_at=T0 + 5.0),
        take=TakePause(
            "default:rejected",
            "clock skew (this host is 302 s ahead of Uploadcare)",
            T0 + 5.0,
            None,
            1,
        ),
        events=(
            Paused(
                "clock skew (this host is 302 s ahead of Uploadcare)", DETAIL, 5.0, None, -301.6
            ),
        ),
    ),
    "a 401 under a skew of 5 minutes or less is the keys": Case(
        WATCH,
        Rejected(401, DETAIL, skew=300.0),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("default:rejected", "credentials rejected (401)", T0 + 5.0, None, 1),
        events=(Paused("credentials rejected (401)", DETAIL, 5.0),),
    ),
    "a 400 under a large skew is clock skew too (Uploadcare's 'Date should be within')": Case(
        WATCH,
        Rejected(400, "Date should be within 0:15:00 of our server time.", skew=1200.0),
        record(next_poll_at=T0 + 5.0),
        take=TakePause(
            "default:rejected",
            "clock skew (this host is 1200 s behind Uploadcare)",
            T0 + 5.0,
            None,
            1,
        ),
        events=(
            Paused(
                "clock skew (this host is 1200 s behind Uploadcare)",
                "Date should be within 0:15:00 of our server time.",
                5.0,
                None,
                1200.0,
            ),
        ),
    ),
    "a 403 under a large skew is still the keys (only a 400 or 401 is skew's)": Case(
        WATCH,
        Rejected(403, DETAIL, skew=900.0),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("default:rejected", "credentials rejected (403)", T0 + 5.0, None, 1),
        events=(Paused("credentials rejected (403)", DETAIL, 5.0),),
    ),
    "a 401 with no known skew (simple auth, no Date) is the keys": Case(
        WATCH,
        Rejected(401, DETAIL, skew=None),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("default:rejected", "credentials rejected (401)", T0 + 5.0, None, 1),
        events=(Paused("credentials rejected (401)", DETAIL, 5.0),),
    ),
    "a skewed 401 after skew pauses grows the pause like any rejection": Case(
        WATCH,
        Rejected(401, DETAIL, skew=-1000.0),
        record(next_poll_at=T0 + 10.0),
        take=TakePause(
            "default:rejected",
            "clock skew (this host is 1000 s ahead of Uploadcare)",
            T0 + 10.0,
            None,
            2,
        ),
        events=(
            Paused(
                "clock skew (this host is 1000 s ahead of Uploadcare)", DETAIL, 10.0, None, -1000.0
            ),
        ),
        pauses=[
            TakePause(
                "default:rejected",
                "clock skew (this host is 999 s ahead of Uploadcare)",
                T0 - 1,
                None,
                1,
            )
        ],
    ),
    "a 400 naming no kind is a request rejected": Case(
        WATCH,
        Rejected(400, "Bad request."),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("default:rejected", "request rejected (400)", T0 + 5.0, None, 1),
        events=(Paused("request rejected (400)", "Bad request.", 5.0),),
    ),
    "a 406 is a request rejected": Case(
        WATCH,
        Rejected(406, "Incorrect Accept header."),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("default:rejected", "request rejected (406)", T0 + 5.0, None, 1),
        events=(Paused("request rejected (406)", "Incorrect Accept header.", 5.0),),
    ),
    "a 400 naming a kind pauses that kind only, beside a pause of everyone": Case(
        WATCH,
        Rejected(400, "Video conversion feature is not available", kind="video"),
        record(next_poll_at=T0 + 5.0),
        take=TakePause(
            "default:rejected:video", "video conversion refused (400)", T0 + 5.0, "video", 1
        ),
        events=(
            Paused(
                "video conversion refused (400)", "Video conversion feature is not available", 5.0
            ),
        ),
        pauses=[TakePause("default:rejected", "credentials rejected (401)", T0 + 3.0, None, 1)],
    ),
    "a good answer lifts the rejection pauses of everyone and of its kind": Case(
        WATCH,
        status("pending"),
        answered("pending", 2.0, changed=True),
        lift=("default:rejected", "default:rejected:video"),
        events=(
            Resumed("default:rejected"),
            Resumed("default:rejected:video"),
            StatusChanged("pending", "processing"),
        ),
        pauses=[
            TakePause("default:rejected", "credentials rejected (401)", T0 - 1, None, 2),
            TakePause(
                "default:rejected:video", "video conversion refused (400)", T0 + 9, "video", 1
            ),
            TakePause(
                "default:rejected:document", "document conversion refused (400)", T0 + 9, None, 1
            ),
            TakePause("default:throttled", "throttled (429)", T0 - 1),
        ],
    ),
    "a pause not counted here (adopted from the store) is not lifted": Case(
        WATCH,
        status("processing"),
        answered("processing", 6.0),
        pauses=[TakePause("default:rejected", "credentials rejected (401)", T0 - 1)],
    ),
    # -- projects: every pause is the watch's project's ------------------------------------
    "a third 404 in another project names that project": Case(
        replace(WATCH, not_found=2, project="shop"),
        NotFound(),
        record(
            not_found=3,
            next_poll_at=T0 + 2.0,
            outcome="not_found",
            outcome_error="token not known to Uploadcare project shop",
        ),
        events=(NotFoundSeen(3),),
    ),
    "a 429 in another project pauses that project": Case(
        replace(WATCH, project="shop"),
        Throttled(retry_after=2.0),
        record(next_poll_at=T0 + 2.5),
        take=TakePause("shop:throttled", "throttled (429)", T0 + 2.0, project="shop"),
        events=(ThrottledSeen(2.0),),
    ),
    "a rejection in another project pauses that project, whatever others count": Case(
        replace(WATCH, project="shop"),
        Rejected(401, DETAIL),
        record(next_poll_at=T0 + 5.0),
        take=TakePause("shop:rejected", "credentials rejected (401)", T0 + 5.0, None, 1, "shop"),
        events=(Paused("credentials rejected (401)", DETAIL, 5.0),),
        pauses=[TakePause("default:rejected", "credentials rejected (401)", T0 + 3.0, None, 3)],
    ),
    "a good answer lifts only its own project's rejection pauses": Case(
        replace(WATCH, project="shop"),
        status("processing"),
        answered("processing", 6.0),
        lift=("shop:rejected",),
        events=(Resumed("shop:rejected"),),
        pauses=[
            TakePause("default:rejected", "credentials rejected (401)", T0 - 1, None, 2),
            TakePause("shop:rejected", "credentials rejected (401)", T0 - 1, None, 1, "shop"),
        ],
    ),
    # -- transient failures -------------------------------------------------------------------
    "a 5xx backs off from twice the minimum": Case(
        replace(WATCH, not_found=1),
        Transient("http 503"),
        record(not_found=1, failures=1, next_poll_at=T0 + 4.0),
        events=(PollFailed("http 503", 1),),
    ),
    "failures in a row double the backoff up to the maximum": Case(
        replace(WATCH, failures=4),
        Transient("timeout"),
        record(failures=5, next_poll_at=T0 + 60.0),
        events=(PollFailed("timeout", 5),),
    ),
    # -- request ids: every answer that is not a 2xx carries its own into its event ----------
    "a 404's request id": Case(
        WATCH,
        NotFound("req-404"),
        record(not_found=1, next_poll_at=T0 + 2.0),
        events=(NotFoundSeen(1, "req-404"),),
    ),
    "a 429's request id": Case(
        WATCH,
        Throttled(2.0, "req-429"),
        record(next_poll_at=T0 + 2.5),
        take=TakePause("default:throttled", "throttled (429)", T0 + 2.0),
        events=(ThrottledSeen(2.0, "req-429"),),
    ),
    "a 5xx's request id": Case(
        WATCH,
        Transient("http 502", "req-502"),
        record(failures=1, next_poll_at=T0 + 4.0),
        events=(PollFailed("http 502", 1, "req-502"),),
    ),
    "a rejection's request id, in its pause or in force": Case(
        WATCH,
        Rejected(400, "Bad request.", request_id="req-400"),
        record(next_poll_at=T0 + 3.0),
        events=(RejectedAgain(400, "req-400"),),
        pauses=[TakePause("default:rejected", "request rejected (400)", T0 + 3.0, None, 1)],
    ),
    "garbage is a failure like any other": Case(
        replace(WATCH, failures=1),
        Garbage("body is not JSON"),
        record(failures=2, next_poll_at=T0 + 8.0),
        events=(PollFailed("body is not JSON", 2),),
    ),
}


def decide(case: Case, plan: pollplan.Plan | None = None) -> PollDecision:
    board = PauseBoard(lambda: T0)
    for pause in case.pauses:
        board.take(pause)
    return decide_poll(
        case.watch,
        case.observation,
        plan=plan,
        bounds=BOUNDS,
        started=STARTED,
        now=T0,
        rand=case.rand,
        pauses=board,
    )


@pytest.mark.parametrize("name", list(CASES))
def test_decide_poll(name: str) -> None:
    case = CASES[name]
    got = decide(case)
    assert got.record == case.record
    assert got.take == case.take
    assert got.lift == case.lift
    assert got.events == case.events


def test_the_not_found_error_names_the_project() -> None:
    assert not_found_error("default") == NOT_FOUND_ERROR
    assert not_found_error("staging") == "token not known to Uploadcare project staging"


def test_a_learned_plan_sets_the_interval() -> None:
    weights: list[float] = []
    for _ in range(100):
        weights = pollplan.add(weights, pollplan.spread(120.0, 120.0))
    plan = pollplan.make_plan(weights)
    assert plan is not None
    # 30 s in, nothing ends before ~120 s: one jump, as far as the maximum allows.
    got = decide(Case(WATCH, status("processing"), record()), plan)
    assert got.record.interval == 60.0
    assert got.record.next_poll_at == T0 + 60.0


def test_it_reads_the_pauses_and_changes_none() -> None:
    board = PauseBoard(lambda: T0)
    board.take(TakePause("default:rejected", "credentials rejected (401)", T0 + 3.0, None, 1))
    for observation in (Rejected(401, DETAIL), Throttled(5.0), status("pending")):
        decide_poll(
            WATCH,
            observation,
            plan=None,
            bounds=BOUNDS,
            started=STARTED,
            now=T0,
            rand=0.5,
            pauses=board,
        )
    assert board.reasons() == {("credentials rejected (401)", "default")}
    assert board.rejections("default:rejected") == 1
