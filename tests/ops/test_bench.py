"""``python -m bench``: the benchmark runs end to end and reports every figure, sanely.

These are smoke tests of the program, not benchmarks: nothing here asserts on speed. The
one property checked on the figures is the bridge's rate limit, which is a correctness
promise (no one-second window over ``BRIDGE_UPSTREAM_RPS``), not a timing.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.stats import (
    histogram_delta,
    histogram_quantile,
    max_sliding,
    past_last_bound,
    per_second,
    quantile,
)
from bench.workload import never_ending, parse_durations, plan
from tests.conftest import ROOT

FAST_PACING = ["--initial-delay", "0.1s", "--min-interval", "0.2s", "--max-interval", "1s"]
SPREADS = ("end_to_end_latency_s", "detection_latency_s", "delivery_overhead_s")
SYSTEM_KEYS = {
    "jobs",
    "wall_seconds",
    "jobs_per_second",
    "upstream_requests_per_job",
    "callback_attempts_per_job",
    *SPREADS,
    "registrations_per_second",
    "peak_rss_mb",
    "cpu_seconds_per_1000_jobs",
}
RATIO_KEYS = {
    "jobs_per_second",
    "upstream_requests_per_job",
    "end_to_end_p50",
    "end_to_end_p99",
    "cpu_seconds_per_1000_jobs",
    "peak_rss_mb",
}
SCALE_RPS = 50


def run_bench(*args: str, timeout: float = 100) -> tuple[int, dict[str, Any], str]:
    """Exit status, the JSON on stdout, and stderr of one ``python -m bench`` run."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    try:
        figures = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(f"no JSON on stdout (exit {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc.returncode, figures, proc.stderr


def test_compare_reports_every_figure_for_both_systems() -> None:
    code, result, err = run_bench("--jobs", "40", "--durations", "uniform:0.2s:0.6s", *FAST_PACING)
    assert code == 0, err
    assert result["mode"] == "compare"
    assert {"cpu_model", "cores", "python", "options"} <= set(result["machine"])
    assert result["machine"]["options"]["jobs"] == 40
    for system in ("reference", "bridge"):
        figures = result[system]
        assert set(figures) >= SYSTEM_KEYS, system
        assert figures["jobs"] == figures["delivered"] == 40
        assert figures["outcomes"] == {"finished": 40}
        assert figures["upstream_requests_per_job"] >= 1
        assert figures["callback_attempts_per_job"] >= 1
        for name in SPREADS:
            spread = figures[name]
            assert 0 <= spread["p50"] <= spread["p95"] <= spread["p99"], (system, name)
        for name in ("wall_seconds", "jobs_per_second", "registrations_per_second"):
            assert figures[name] > 0, (system, name)
        assert figures["peak_rss_mb"] > 0
        assert figures["cpu_seconds_per_1000_jobs"] >= 0
        assert figures["signatures"]["checked"] >= 1
        assert figures["signatures"]["failed"] == 0
    bridge = result["bridge"]
    assert bridge["scheduler_lag_p99_s"] >= 0
    assert Path(bridge["bridge_module_path"]) == ROOT / "bridge"
    assert set(result["ratios"]) == RATIO_KEYS
    assert all(value > 0 for value in result["ratios"].values()), result["ratios"]
    assert "reference:" in err and "bridge:" in err  # progress went to stderr


@pytest.fixture(scope="module")
def scale_run() -> tuple[int, dict[str, Any], str]:
    return run_bench("--mode", "scale", "--jobs", "300", "--observe", "3", "--rps", str(SCALE_RPS))


def test_scale_reports_every_figure(scale_run: tuple[int, dict[str, Any], str]) -> None:
    _, result, err = scale_run
    assert result["mode"] == "scale"
    bridge = result["bridge"]
    assert bridge["jobs"] == 300
    assert bridge["registrations_per_second"] > 0
    assert bridge["rss_after_registration_mb"] > 0
    assert bridge["peak_rss_mb"] >= bridge["rss_after_registration_mb"]
    assert bridge["upstream_rps_limit"] == SCALE_RPS
    rates = bridge["upstream_requests_per_second"]
    assert {"mean", "max_window", "max_sliding_window", "per_second"} <= set(rates)
    assert rates["max_window"] <= rates["max_sliding_window"]
    assert bridge["scheduler_lag_p99_s"] >= 0
    assert {"poll", "delivery"} <= set(bridge["backlog"])
    assert {"poll", "delivery"} <= set(bridge["backlog_oldest_seconds"])
    assert bridge["jobs_by_state"]["tracking"] == 300  # the conversions never end
    for kind in ("list", "filtered", "paged"):
        latency = bridge["list_latency_ms"][kind]
        assert latency["count"] >= 1, kind
        assert 0 < latency["p50"] <= latency["p99"], kind
    assert "registered 300" in err


def test_scale_never_exceeds_the_rate_limit(scale_run: tuple[int, dict[str, Any], str]) -> None:
    code, result, err = scale_run
    rates = result["bridge"]["upstream_requests_per_second"]
    assert rates["max_sliding_window"] <= SCALE_RPS, rates
    assert code == 0, err


def test_bad_options_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--durations", "gamma:1s"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "not a duration spec" in proc.stderr


# --- the pure parts --------------------------------------------------------------------


def test_duration_specs() -> None:
    rng = random.Random(3)
    uniform = parse_durations("uniform:1s:4s")
    assert all(1 <= uniform.draw(rng)[0] <= 4 for _ in range(200))
    mix = parse_durations("mix:0.3:2s:10s:20s")
    draws = [mix.draw(rng) for _ in range(2000)]
    fast = [d for d, outcome in draws if outcome == "failed"]
    assert all(0.5 <= d <= 2 for d in fast)
    assert all(10 <= d <= 20 for d, outcome in draws if outcome == "finished")
    assert 0.25 < len(fast) / len(draws) < 0.35
    lognormal = sorted(parse_durations("lognormal:30s:0.5").draw(rng)[0] for _ in range(2001))
    assert 25 < lognormal[1000] < 35
    for bad in ("uniform:4s:1s", "lognormal:30s", "mix:2:1s:1s:2s", "exp:1s"):
        with pytest.raises(ValueError):
            parse_durations(bad)


def test_plans_are_seeded_and_half_video() -> None:
    durations = parse_durations("uniform:1s:4s")
    assert plan(100, durations, 7) == plan(100, durations, 7)
    assert plan(100, durations, 7) != plan(100, durations, 8)
    assert sum(spec.kind == "video" for spec in plan(100, durations, 7)) == 50
    assert all(math.isinf(spec.duration) for spec in never_ending(10))


def test_histogram_quantile_interpolates_inside_the_bucket() -> None:
    buckets = [(0.1, 10.0), (0.5, 90.0), (1.0, 100.0), (math.inf, 100.0)]
    assert histogram_quantile(buckets, 0.5) == pytest.approx(0.1 + 0.4 * 40 / 80)
    assert histogram_quantile(buckets, 0.05) == pytest.approx(0.05)
    assert histogram_quantile([(1.0, 0.0), (math.inf, 0.0)], 0.99) is None
    # A rank past the last finite bound: that bound, nothing better is known.
    assert histogram_quantile([(1.0, 1.0), (math.inf, 10.0)], 0.99) == 1.0
    assert past_last_bound([(1.0, 1.0), (math.inf, 10.0)], 0.99)
    assert not past_last_bound(buckets, 0.99)
    later = [(0.1, 15.0), (0.5, 95.0), (1.0, 110.0), (math.inf, 110.0)]
    assert histogram_delta(later, buckets) == [
        (0.1, 5.0),
        (0.5, 5.0),
        (1.0, 10.0),
        (math.inf, 10.0),
    ]


def test_request_windows() -> None:
    times = [10.0 + i * 0.1 for i in range(30)]  # 10 per second for 3 seconds
    assert per_second(times, 10.0, 13.0) == [10, 10, 10]
    assert max_sliding(times) == 10
    assert max_sliding([*times, 10.95]) == 11
    assert max_sliding([]) == 0
    assert quantile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5


def test_frontier_mode_prints_every_policy_for_every_distribution() -> None:
    code, result, err = run_bench(
        "--mode", "frontier", "--frontier-jobs", "2000", "--frontier-warmup", "500"
    )
    assert code == 0, err
    assert set(result["results"]) == {"lognormal", "uniform", "mix"}
    for row in result["results"].values():
        policies = {k for k in row if k.startswith(("fixed_", "bridge_")) and "_at_" not in k}
        assert policies == {
            "fixed_0.5s",
            "fixed_1s",
            "fixed_2s",
            "fixed_5s",
            "bridge_growth_rule",
            "bridge_learned",
        }
        for name in policies:
            assert row[name]["requests_per_job"] >= 1
            assert 0 <= row[name]["p95_detection_s"] <= row[name]["max_detection_s"]
        assert row["learned_savings_vs_fixed"] > 0
