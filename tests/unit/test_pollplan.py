"""When to poll next: jitter, backoffs, the growth rule, the learned plan, its frontier."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge import pollplan

MIN, MAX = 2.0, 60.0


@pytest.mark.parametrize(("rand", "expected"), [(0.0, 9.0), (0.5, 10.0), (0.999999, 11.0)])
def test_jitter_bounds(rand: float, expected: float) -> None:
    assert pollplan.jittered(10.0, 0.1, rand) == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("failures", "expected"), [(1, 4.0), (2, 8.0), (3, 16.0), (5, 60.0), (100, 60.0)]
)
def test_failure_backoff(failures: int, expected: float) -> None:
    assert pollplan.failure_backoff(failures, 2.0, 60.0) == expected


@pytest.mark.parametrize(("pauses", "expected"), [(1, 5.0), (2, 10.0), (3, 20.0), (20, 600.0)])
def test_pause_backoff(pauses: int, expected: float) -> None:
    assert pollplan.pause_backoff(pauses) == expected


def history(durations: list[float]) -> list[float]:
    weights: list[float] = []
    for d in durations:
        weights = pollplan.add(weights, pollplan.spread(d, d))
    return weights


def test_growth_rule_starts_low_grows_and_falls_back() -> None:
    assert pollplan.growth_interval(None, False, MIN, MAX) == MIN
    assert pollplan.growth_interval(2.0, False, MIN, MAX) == 3.0
    assert pollplan.growth_interval(50.0, False, MIN, MAX) == MAX
    assert pollplan.growth_interval(50.0, True, MIN, MAX) == MIN


def test_spread_shares_one_unit_over_the_interval_in_time() -> None:
    assert pollplan.spread(5.0, 5.0) == [(pollplan.bucket_of(5.0), 1.0)]
    parts = pollplan.spread(1.0, 11.0)
    assert math.isclose(sum(w for _, w in parts), 1.0)
    # Evenly in time: the bucket holding 8-11 s gets more than the one holding 1-1.09 s.
    assert dict(parts)[pollplan.bucket_of(10.0)] > dict(parts)[pollplan.bucket_of(1.0)]
    assert pollplan.spread(0.0, 0.1) == [(0, 1.0)]
    assert pollplan.bucket_of(10**9) == pollplan.BUCKETS - 1


def test_no_plan_without_enough_history() -> None:
    assert pollplan.make_plan([]) is None
    assert pollplan.make_plan(history([30.0] * 49)) is None
    assert pollplan.make_plan(history([30.0] * 50)) is not None


def test_the_plan_skips_the_early_quiet_and_spends_at_most_the_budget() -> None:
    rng = random.Random(3)
    durations = [30.0 * math.exp(0.5 * rng.gauss(0, 1)) for _ in range(5000)]
    plan = pollplan.make_plan(history(durations))
    assert plan is not None
    start = plan.dense[0][0]
    late = sum(d < start for d in durations) / len(durations)
    assert 8.0 < start < 15.0 and late <= pollplan.LATE_BUDGET
    assert plan.horizon >= max(durations)


def test_a_gap_nothing_finishes_in_is_skipped() -> None:
    rng = random.Random(4)
    durations = [rng.uniform(0.5, 3.0) for _ in range(300)]
    durations += [rng.uniform(20.0, 120.0) for _ in range(700)]
    plan = pollplan.make_plan(history(durations))
    assert plan is not None
    # Dense over the fast failures, a jump over the quiet 3-20 s, dense over the slow ones
    # (whose low-hazard start may be skipped too, within the budget).
    assert plan.dense[0][0] <= 0.5 and plan.dense[0][1] < 4.0
    assert 16.0 < plan.dense[1][0] <= 30.0
    step = pollplan.next_interval(
        plan, elapsed=4.0, previous=2.0, changed=False, min_interval=MIN, max_interval=MAX
    )
    assert 4.0 + step * 1.1 <= plan.dense[1][0] + MIN and 4.0 + step * 0.9 > 15.0
    inside = pollplan.next_interval(
        plan, elapsed=40.0, previous=2.0, changed=False, min_interval=MIN, max_interval=MAX
    )
    assert inside == MIN


def test_past_the_horizon_the_growth_rule_holds() -> None:
    plan = pollplan.make_plan(history([10.0] * 100))
    assert plan is not None
    late = plan.horizon + 1
    grown = pollplan.next_interval(
        plan, elapsed=late, previous=4.0, changed=False, min_interval=MIN, max_interval=MAX
    )
    assert grown == 6.0


@given(
    durations=st.lists(st.floats(0.01, 200_000.0), min_size=0, max_size=120),
    elapsed=st.floats(0.0, 200_000.0),
    previous=st.none() | st.floats(0.1, 1000.0),
    changed=st.booleans(),
    bounds=st.tuples(st.floats(0.1, 30.0), st.floats(0.1, 600.0)).map(sorted),
)
def test_every_interval_stays_within_the_bounds(
    durations: list[float],
    elapsed: float,
    previous: float | None,
    changed: bool,
    bounds: list[float],
) -> None:
    lo, hi = bounds
    plan = pollplan.make_plan(history(durations))
    step = pollplan.next_interval(
        plan, elapsed=elapsed, previous=previous, changed=changed, min_interval=lo, max_interval=hi
    )
    assert lo <= step <= hi
