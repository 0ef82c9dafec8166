"""The work offered: how many conversions, of which kind, how long each takes, how it ends."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

from bridge.model import Kind
from bridge.settings import parse_duration

Outcome: TypeAlias = Literal["finished", "failed"]
# One draw: how long the conversion takes (seconds) and how it ends.
Sampler: TypeAlias = Callable[[random.Random], tuple[float, Outcome]]

# The shortest fast failure of a ``mix``: a conversion refused at once still takes a moment.
FAST_LO = 0.5


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One conversion of the workload. ``duration`` ``math.inf``: it never ends."""

    index: int
    kind: Kind
    duration: float
    outcome: Outcome


@dataclass(frozen=True)
class Durations:
    """A parsed ``--durations`` spec: its text (for the report) and how to draw from it."""

    text: str
    draw: Sampler


def _seconds(text: str) -> float:
    return parse_duration(text)


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{text!r} is not a non-negative number")
    return value


def _lognormal(median: float, sigma: float) -> Sampler:
    return lambda rng: (median * math.exp(sigma * rng.gauss(0.0, 1.0)), "finished")


def _uniform(lo: float, hi: float) -> Sampler:
    return lambda rng: (rng.uniform(lo, hi), "finished")


def _mix(share: float, fast_hi: float, slow_lo: float, slow_hi: float) -> Sampler:
    def draw(rng: random.Random) -> tuple[float, Outcome]:
        if rng.random() < share:
            return rng.uniform(FAST_LO, fast_hi), "failed"
        return rng.uniform(slow_lo, slow_hi), "finished"

    return draw


def parse_durations(text: str) -> Durations:
    """``lognormal:MEDIAN:SIGMA``, ``uniform:LO:HI`` or ``mix:P:FAST_HI:SLOW_LO:SLOW_HI``.

    Times take the bridge's duration syntax (``2.5``, ``250ms``, ``30s``, ``2m``). A ``mix``
    is a share P of fast failures, uniform in (0.5 s, FAST_HI), and successes uniform in
    (SLOW_LO, SLOW_HI). ValueError says what is wrong.
    """
    name, _, rest = text.strip().partition(":")
    parts = rest.split(":") if rest else []
    if name == "lognormal" and len(parts) == 2:
        return Durations(text, _lognormal(_seconds(parts[0]), _number(parts[1])))
    if name == "uniform" and len(parts) == 2:
        lo, hi = _seconds(parts[0]), _seconds(parts[1])
        if lo > hi:
            raise ValueError("uniform:LO:HI needs LO <= HI")
        return Durations(text, _uniform(lo, hi))
    if name == "mix" and len(parts) == 4:
        share = _number(parts[0])
        fast_hi, slow_lo, slow_hi = (_seconds(p) for p in parts[1:])
        if share > 1 or fast_hi < FAST_LO or slow_lo > slow_hi:
            raise ValueError(
                "mix:P:FAST_HI:SLOW_LO:SLOW_HI needs P <= 1, FAST_HI >= 0.5s, LO <= HI"
            )
        return Durations(text, _mix(share, fast_hi, slow_lo, slow_hi))
    raise ValueError(
        f"{text!r} is not a duration spec: lognormal:MEDIAN:SIGMA, uniform:LO:HI "
        "or mix:P:FAST_HI:SLOW_LO:SLOW_HI (e.g. uniform:1s:4s)"
    )


def _kind(index: int) -> Kind:
    # Alternating, so that any prefix of the workload is half video, half document.
    return "video" if index % 2 == 0 else "document"


def plan(jobs: int, durations: Durations, seed: int) -> list[JobSpec]:
    """``jobs`` conversions drawn from ``durations``; the same seed gives the same list."""
    rng = random.Random(seed)
    out = []
    for index in range(jobs):
        duration, outcome = durations.draw(rng)
        out.append(JobSpec(index, _kind(index), duration, outcome))
    return out


def never_ending(jobs: int) -> list[JobSpec]:
    """Conversions that never finish: every job stays tracking for the whole run."""
    return [JobSpec(index, _kind(index), math.inf, "finished") for index in range(jobs)]
