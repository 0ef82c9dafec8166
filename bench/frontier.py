"""The polling-efficiency frontier: upstream requests per job against detection latency.

The poll policy is pure (``bridge.pollplan``), so it can be driven with a virtual clock
over thousands of simulated conversions in seconds, with the same functions, jitter
and learning loop the scheduler uses. For each duration distribution this prints, for
fixed intervals (a hand-written poller: a poll every T seconds, no jitter) and for the
bridge's policy (the growth rule with no history, then the learned plan), the mean
requests per job and the p95 and worst detection latency (Uploadcare-side finish ->
the poll that sees it). Each of the bridge's policies is then compared with the fixed
interval that has the same p95 on the same conversions (found by bisection): a savings
ratio above 1 means the bridge needs that many times fewer requests per job.
"""

from __future__ import annotations

import argparse
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.stats import quantile
from bridge import pollplan
from bridge.settings import parse_duration

FIXED_INTERVALS = (0.5, 1.0, 2.0, 5.0)
# Share of a conversion spent "pending" before "processing", as the fake upstream does.
PENDING_SHARE = 0.3
# The scheduler rebuilds its plans from the store this often; in the simulation, after
# this many conversions have been seen to end.
REPLAN_EVERY = 100

Sampler = Callable[[random.Random], float]


def lognormal(median: float, sigma: float) -> Sampler:
    return lambda rng: median * math.exp(sigma * rng.gauss(0.0, 1.0))


def uniform(lo: float, hi: float) -> Sampler:
    return lambda rng: rng.uniform(lo, hi)


def mix(fast_share: float, fast_hi: float, slow_lo: float, slow_hi: float) -> Sampler:
    """Fast failures (0.5 s to ``fast_hi``) with slow successes (uniform)."""

    def draw(rng: random.Random) -> float:
        if rng.random() < fast_share:
            return rng.uniform(0.5, fast_hi)
        return rng.uniform(slow_lo, slow_hi)

    return draw


DISTRIBUTIONS: dict[str, tuple[str, Sampler]] = {
    "lognormal": ("log-normal, median 30 s, sigma 0.5 (the default)", lognormal(30.0, 0.5)),
    "uniform": ("uniform 5-120 s", uniform(5.0, 120.0)),
    "mix": (
        "30% fast failures (0.5-3 s), 70% slow successes (uniform 20-120 s)",
        mix(0.3, 3.0, 20.0, 120.0),
    ),
}


@dataclass(frozen=True)
class Pacing:
    initial_delay: float
    min_interval: float
    max_interval: float


@dataclass
class Tally:
    requests: list[int]
    latencies: list[float]

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies)
        return {
            "requests_per_job": round(sum(self.requests) / len(self.requests), 3),
            "p50_detection_s": round(quantile(lat, 0.50), 3),
            "p95_detection_s": round(quantile(lat, 0.95), 3),
            "max_detection_s": round(lat[-1], 3),
        }


def fixed_interval(durations: list[float], interval: float) -> Tally:
    """A hand-written poller: polls at once, then at T, 2T, ... until it sees the end.

    Polling at once is what such pollers do (the official JS client asks, then waits
    500 ms, then asks again); the bridge's counterpart is its first poll, one
    ``BRIDGE_POLL_INITIAL_DELAY`` after registration.
    """
    requests, latencies = [], []
    for d in durations:
        n = max(1, math.ceil(d / interval))
        requests.append(n + 1)
        latencies.append(n * interval - d)
    return Tally(requests, latencies)


def bridge_policy(
    durations: list[float], pacing: Pacing, rng: random.Random, *, learn: bool
) -> Tally:
    """The scheduler's decisions for each conversion, learning as conversions end.

    Conversions are simulated one after another; each polls under the plan built from
    the conversions that ended before it, rebuilt every ``REPLAN_EVERY`` of them, as the
    scheduler rebuilds its plans from the store every few seconds.
    """
    weights: list[float] = []
    plan: pollplan.Plan | None = None
    requests, latencies = [], []
    for n, d in enumerate(durations):
        polls, seen_at, last_running = poll_one(d, plan, pacing, rng)
        requests.append(polls)
        latencies.append(seen_at - d)
        if not learn:
            continue
        weights = pollplan.add(weights, pollplan.spread(last_running, seen_at))
        if pollplan.needs_decay(weights):
            weights = [w * 0.5 for w in weights]
        if (n + 1) % REPLAN_EVERY == 0:
            plan = pollplan.make_plan(weights)
    return Tally(requests, latencies)


def poll_one(
    duration: float, plan: pollplan.Plan | None, pacing: Pacing, rng: random.Random
) -> tuple[int, float, float]:
    """Polls of one conversion: how many, when the end was seen, the last poll before."""
    t = pacing.initial_delay
    last_running = 0.0
    previous: float | None = None
    status: str | None = None
    polls = 0
    while True:
        polls += 1
        if t >= duration:
            return polls, t, last_running
        now_status = "pending" if t < PENDING_SHARE * duration else "processing"
        interval = pollplan.next_interval(
            plan,
            elapsed=t,
            previous=previous,
            changed=now_status != status,
            min_interval=pacing.min_interval,
            max_interval=pacing.max_interval,
        )
        status, previous, last_running = now_status, interval, t
        t += pollplan.jittered(interval, pollplan.POLL_JITTER, rng.random())


def fixed_at_p95(durations: list[float], p95: float) -> tuple[float, dict[str, float]]:
    """The fixed interval whose p95 detection latency is ``p95`` on these conversions, and
    its figures: found by bisection on the interval, each step a full simulation."""
    lo, hi = 0.01, max(durations) + 1
    for _ in range(40):
        mid = (lo + hi) / 2
        if fixed_interval(durations, mid).summary()["p95_detection_s"] < p95:
            lo = mid
        else:
            hi = mid
    return hi, fixed_interval(durations, hi).summary()


def frontier(name: str, jobs: int, warmup: int, pacing: Pacing, seed: int) -> dict[str, Any]:
    title, sampler = DISTRIBUTIONS[name]
    rng = random.Random(seed)
    durations = [sampler(rng) for _ in range(warmup + jobs)]
    measured = durations[warmup:]
    fixed = {f"fixed_{t:g}s": fixed_interval(measured, t).summary() for t in FIXED_INTERVALS}
    growth = bridge_policy(measured, pacing, random.Random(seed + 1), learn=False).summary()
    learned_all = bridge_policy(durations, pacing, random.Random(seed + 2), learn=True)
    learned = Tally(learned_all.requests[warmup:], learned_all.latencies[warmup:]).summary()
    out: dict[str, Any] = {
        "distribution": title,
        **fixed,
        "bridge_growth_rule": growth,
        "bridge_learned": learned,
    }
    for label, row in (("growth_rule", growth), ("learned", learned)):
        interval, same = fixed_at_p95(measured, row["p95_detection_s"])
        out[f"fixed_at_{label}_p95"] = {"interval_s": round(interval, 3), **same}
        out[f"{label}_savings_vs_fixed"] = round(
            same["requests_per_job"] / row["requests_per_job"], 3
        )
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("frontier mode")
    group.add_argument(
        "--frontier-jobs", type=int, default=20_000, help="simulated conversions per policy"
    )
    group.add_argument(
        "--frontier-warmup",
        type=int,
        default=2_000,
        help="conversions the learned policy sees before it is measured",
    )
    group.add_argument(
        "--distribution",
        choices=[*DISTRIBUTIONS, "all"],
        default="all",
        help="which duration distribution to simulate",
    )


def _pacing(args: argparse.Namespace) -> Pacing:
    def get(name: str, default: str) -> float:
        value = getattr(args, name, None)
        return value if isinstance(value, float) else parse_duration(value or default)

    return Pacing(
        initial_delay=get("initial_delay", "1s"),
        min_interval=get("min_interval", "2s"),
        max_interval=get("max_interval", "60s"),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    pacing = _pacing(args)
    seed = getattr(args, "seed", None) or 1
    names = list(DISTRIBUTIONS) if args.distribution == "all" else [args.distribution]
    results = {
        name: frontier(name, args.frontier_jobs, args.frontier_warmup, pacing, seed)
        for name in names
    }
    return {
        "mode": "frontier",
        "pacing": {
            "initial_delay_s": pacing.initial_delay,
            "min_interval_s": pacing.min_interval,
            "max_interval_s": pacing.max_interval,
        },
        "jobs_per_policy": args.frontier_jobs,
        "warmup_jobs": args.frontier_warmup,
        "results": results,
        "seconds": round(time.perf_counter() - started, 2),
    }
