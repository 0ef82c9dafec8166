"""When to poll next: every rule that sets a watch's next poll, in one place.

The growth rule, the jitter, the backoff after transient failures, the pause after
rejections, and a plan learned from how long conversions take. Pure functions and
values, no I/O: ``bridge.polldecision`` applies them to what a poll saw, the store keeps
the learned histogram, and ``bench/frontier.py`` drives them with a virtual clock.

Why a plan beats a fixed interval. A poll is worth making where a conversion is likely
to have just finished. Let S(t) be the share of conversions still running t seconds
after registration and f(t) the density of finishes. Polling every g seconds around t
costs about S(t)/g requests per job per second; widening g past the target latency L
saves requests in proportion to S(t) and makes late only the finishes inside the gap,
in proportion to f(t). The best trade is therefore bang-bang on the hazard h = f/S:
poll every L (the minimum interval) where the hazard is high, and jump as far as the
maximum interval allows where it is low, until the conversions made late by the jumps
reach a small budget of all of them. For the usual shape (few conversions finish
early, most in a band, a thin tail) the cheap region is the start: every job pays for
the polls there and almost none finishes in it. Regions where nothing was ever seen to
finish (between fast failures and slow successes) cost nothing to skip.

With too little history, or past the longest conversion seen, the plan steps aside
and the simple growth rule holds: start at the minimum, grow by half while the status
does not change, back to the minimum when it does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

# Growth of the interval while the status does not change (no-history rule).
POLL_GROWTH: Final = 1.5
# Every poll interval moves by up to this share either way, so watches registered
# together drift apart instead of polling in lockstep.
POLL_JITTER: Final = 0.1
# After a 429, a watch's next poll comes this long past the pause's end, give or take all
# of it (0 to 1 s): the watches the pause held do not all go at its first instant.
THROTTLE_SLACK: Final = 0.5
# The pause after rejections (400, 401, 403, 406): the first, doubling to the longest.
PAUSE_FIRST: Final = 5.0
PAUSE_LONGEST: Final = 600.0

# The duration histogram: log-spaced buckets, 8 per doubling (each about 9% wide), from
# 0.25 s to 2^17 s (36 h, past the longest job deadline worth setting).
BUCKET_BASE: Final = 0.25
BUCKETS_PER_DOUBLING: Final = 8
BUCKETS: Final = 19 * BUCKETS_PER_DOUBLING
EDGES: Final[tuple[float, ...]] = tuple(
    BUCKET_BASE * 2.0 ** (i / BUCKETS_PER_DOUBLING) for i in range(BUCKETS + 1)
)

# Conversions of a kind seen finish before their history steers polling.
MIN_SAMPLES: Final = 50.0
# History is halved when it passes this weight, so it follows a change within a few
# thousand conversions and old habits fade.
HISTORY_CAP: Final = 4000.0
# The share of conversions the plan may notice later than the minimum interval.
LATE_BUDGET: Final = 0.04


def jittered(value: float, fraction: float, rand: float) -> float:
    """``value`` moved by up to ±``fraction`` of itself; ``rand`` is uniform in [0, 1)."""
    return value * (1 + fraction * (2 * rand - 1))


def failure_backoff(failures: int, min_interval: float, max_interval: float) -> float:
    """After ``failures`` consecutive transient failures of one watch (1, 2, ...)."""
    return min(max_interval, min_interval * 2.0 ** min(failures, 30))


def pause_backoff(pauses: int, first: float = PAUSE_FIRST, longest: float = PAUSE_LONGEST) -> float:
    """How long polling stops after the ``pauses``-th rejection in a row (1, 2, ...)."""
    return min(longest, first * 2.0 ** min(pauses - 1, 30))


def growth_interval(
    previous: float | None, changed: bool, min_interval: float, max_interval: float
) -> float:
    """Start at the minimum, grow while nothing changes, fall back when something does."""
    if previous is None or changed:
        return min_interval
    return min(max_interval, max(min_interval, previous * POLL_GROWTH))


def bucket_of(seconds: float) -> int:
    """The histogram bucket holding a duration (clamped to the first and last)."""
    if seconds <= EDGES[0]:
        return 0
    return min(BUCKETS - 1, bisect.bisect_right(EDGES, seconds) - 1)


def spread(lo: float, hi: float) -> list[tuple[int, float]]:
    """One observation, "finished after ``lo`` and by ``hi`` seconds", as bucket weights.

    Polls only bound a finish between the last poll that saw it running and the one
    that saw it done, so the unit weight is spread evenly in time over that interval
    (a point when the two coincide). This keeps jobs noticed after a long jump from
    piling up at the jump's end and pretending nothing finishes inside it.
    """
    lo = max(0.0, min(lo, hi))
    first, last = bucket_of(lo), bucket_of(hi)
    if first == last or hi - lo <= 0:
        return [(last, 1.0)]
    out = []
    for b in range(first, last + 1):
        overlap = min(hi, EDGES[b + 1]) - max(lo, EDGES[b])
        if b == 0:  # the first bucket also holds everything below its lower edge
            overlap = min(hi, EDGES[1]) - lo
        if overlap > 0:
            out.append((b, overlap / (hi - lo)))
    return out


def add(weights: Sequence[float], increments: Iterable[tuple[int, float]]) -> list[float]:
    out = list(weights) if weights else [0.0] * BUCKETS
    for b, w in increments:
        out[b] += w
    return out


@dataclass(frozen=True, slots=True)
class Plan:
    """Where to poll densely, learned from one kind's history.

    ``dense`` holds sorted, disjoint (start, end) ranges of elapsed seconds where polls
    come every minimum interval; elsewhere before ``horizon`` the next poll jumps to the
    next dense range (at most the maximum interval ahead); from ``horizon`` on, past the
    longest conversion seen, the growth rule holds.
    """

    dense: tuple[tuple[float, float], ...]
    horizon: float
    samples: float


def make_plan(weights: Sequence[float], budget: float = LATE_BUDGET) -> Plan | None:
    """The plan for a histogram, or None when it holds too little to steer by."""
    total = sum(weights)
    if total < MIN_SAMPLES:
        return None
    last = max(b for b, w in enumerate(weights) if w > 0)
    # Hazard of each bucket: its share of finishes per second among jobs still running.
    ranked = []
    survival = 1.0
    for b in range(last + 1):
        mass = weights[b] / total
        width = EDGES[b + 1] - EDGES[b]
        hazard = mass / (max(survival, 1e-12) * width)
        ranked.append((hazard, b, mass))
        survival -= mass
    ranked.sort()
    sparse = set()
    spent = 0.0
    for _, b, mass in ranked:
        if spent + mass > budget:
            break
        spent += mass
        sparse.add(b)
    dense: list[tuple[float, float]] = []
    for b in range(last + 1):
        if b in sparse:
            continue
        start = 0.0 if b == 0 else EDGES[b]
        if dense and dense[-1][1] >= start:
            dense[-1] = (dense[-1][0], EDGES[b + 1])
        else:
            dense.append((start, EDGES[b + 1]))
    return Plan(dense=tuple(dense), horizon=EDGES[last + 1], samples=total)


def next_interval(
    plan: Plan | None,
    *,
    elapsed: float,
    previous: float | None,
    changed: bool,
    min_interval: float,
    max_interval: float,
    jitter: float = POLL_JITTER,
) -> float:
    """Seconds until the next poll of a watch ``elapsed`` seconds into its tracking.

    Always within [min_interval, max_interval]. ``jitter`` is the share by which the
    caller will move the interval either way: a long jump is aimed so that, jittered,
    it lands no more than a minimum interval past where dense polling begins.
    """
    if plan is None or elapsed >= plan.horizon:
        return growth_interval(previous, changed, min_interval, max_interval)
    target = plan.horizon - elapsed  # only sparse buckets left before the horizon
    for start, end in plan.dense:
        if elapsed < start:
            target = start - elapsed
            break
        if elapsed < end:
            return min_interval
    target = min(target, (target + min_interval) / (1 + jitter))
    return min(max_interval, max(min_interval, target))


def needs_decay(weights: Sequence[float]) -> bool:
    """Whether a history has passed the cap and should be halved."""
    return sum(weights) > HISTORY_CAP
