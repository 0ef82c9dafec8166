"""``--mode scale``: the bridge alone, many jobs that never end, a rate limit that binds.

Registers ``--jobs`` conversions that never finish, then watches for ``--observe`` seconds
while the poll demand (every job, every interval) exceeds ``--rps``: the request rate the
upstream saw, per second and in the busiest sliding second (which must stay within the
limit), how late the scheduler runs, what is left due, and how fast the list API answers
with that many jobs in the database.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench import workload
from bench.children import Child, Fleet, usage
from bench.drive import Registrar, Registration, background, get_json, say, scrape, session
from bench.stats import (
    Samples,
    by_label,
    histogram,
    histogram_delta,
    histogram_quantile,
    mapping_float,
    max_sliding,
    past_last_bound,
    per_second,
    rounded,
    spread,
)
from bench.systems import Secrets, start_bridge, start_upstream

# Conversions created per control call: here nothing is timed from their start.
BATCH: Final = 100
PROGRESS_JOBS: Final = 5000
# List requests per second during the observation: a steady trickle, like a dashboard.
LIST_RPS: Final = 5.0
LIST_LIMIT: Final = "100"
# One cycle of list requests: newest first, filtered, then a first page and three more
# pages deep through the cursor.
STEPS: Final = ("list", "filtered", "list", "paged", "paged", "paged")
# Never called: the jobs never end. The discard port, on loopback, which the bench allows.
CALLBACK_URL: Final = "http://127.0.0.1:9/hook"
LAG: Final = "bridge_scheduler_lag_seconds"


async def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    jobs = workload.never_ending(args.jobs)
    keys = Secrets()
    async with Fleet(workdir / "scale") as fleet, session(args.clients + 8) as http:
        upstream = await start_upstream(fleet, keys, args.seed)
        bridge, where = await start_bridge(fleet, args, upstream, keys, args.rps)
        say(f"scale: registering {len(jobs)} never-ending jobs, upstream limit {args.rps:g}/s")
        registrar = Registrar(
            http,
            upstream_url=upstream.url,
            target_url=bridge.url,
            headers=keys.bearer,
            callback_url=CALLBACK_URL,
            clients=args.clients,
            batch=BATCH,
        )
        registration = await _register(fleet, registrar, jobs)
        registered = usage(bridge.pid)
        say(f"scale: observing for {args.observe:g}s")
        before = await scrape(http, bridge.url)
        start = time.time()
        latencies = await _probe_lists(fleet, http, bridge, keys.bearer, args.observe)
        end = time.time()
        after = await scrape(http, bridge.url)
        times = await get_json(
            http,
            f"{upstream.url}/_bench/status-times",
            params={"since": repr(start), "until": repr(end)},
        )
        final = usage(bridge.pid)
    rates = _rates(times["times"], start, end, args.rps)
    figures: dict[str, Any] = {
        "bridge_module_path": where["path"],
        "bridge_version": where["version"],
        "jobs": len(registration.created),
        "registration_seconds": rounded(registration.seconds, 2),
        "registrations_per_second": rounded(registration.per_second, 1),
        "rss_after_registration_mb": rounded(registered.rss_mb, 1),
        "peak_rss_mb": rounded(final.peak_rss_mb, 1),
        "cpu_seconds_total": rounded(final.cpu_seconds, 2),
        "observe_seconds": rounded(end - start, 2),
        "upstream_rps_limit": args.rps,
        "upstream_requests_per_second": rates,
        **_scheduler(before, after),
        "list_latency_ms": latencies,
    }
    problems = []
    if rates["max_sliding_window"] > args.rps:
        problems.append(
            f"the upstream saw {rates['max_sliding_window']} status requests within one second, "
            f"over BRIDGE_UPSTREAM_RPS={args.rps:g}"
        )
    return {"bridge": figures}, problems


async def _register(
    fleet: Fleet, registrar: Registrar, jobs: list[workload.JobSpec]
) -> Registration:
    shown = 0
    async with background(registrar.run(jobs)) as registering:
        while not registering.done():
            fleet.check()
            if registrar.done >= shown + PROGRESS_JOBS:
                shown = registrar.done - registrar.done % PROGRESS_JOBS
                elapsed = time.time() - registrar.result.started
                say(f"  registered {registrar.done}/{len(jobs)} ({registrar.done / elapsed:.0f}/s)")
            await asyncio.sleep(0.2)
        registration = registering.result()
    say(
        f"  registered {len(jobs)} in {registration.seconds:.1f}s "
        f"({registration.per_second or 0:.0f}/s)"
    )
    return registration


async def _probe_lists(
    fleet: Fleet,
    http: aiohttp.ClientSession,
    bridge: Child,
    headers: Mapping[str, str],
    seconds: float,
) -> dict[str, Any]:
    """Steady list requests for ``seconds``; latency per kind of request."""
    samples: dict[str, list[float]] = {step: [] for step in STEPS}
    cursor: str | None = None
    begun = time.monotonic()
    for n, step in enumerate(itertools.cycle(STEPS)):
        if time.monotonic() >= begun + seconds:
            break
        fleet.check()
        params = {"limit": LIST_LIMIT}
        if step == "filtered":
            params.update(state="tracking", kind="video")
        elif step == "paged" and cursor is not None:
            params["cursor"] = cursor
        started = time.perf_counter()
        page = await get_json(http, f"{bridge.url}/v1/jobs", params=params, headers=headers)
        samples[step].append((time.perf_counter() - started) * 1000)
        if step != "filtered":
            cursor = page.get("next_cursor")
        await asyncio.sleep(max(0.0, begun + (n + 1) / LIST_RPS - time.monotonic()))
    return {
        step: {**_percentiles(values), "count": len(values)} for step, values in samples.items()
    }


def _percentiles(values: list[float]) -> dict[str, float | None]:
    quantiles = spread(values)
    return {"p50": quantiles["p50"], "p99": quantiles["p99"]}


def _rates(times: list[float], start: float, end: float, limit: float) -> dict[str, Any]:
    windows = per_second(times, start, end)
    sliding = max_sliding(times)
    return {
        "mean": rounded(len(times) / (end - start), 1),
        "max_window": max(windows),
        "max_sliding_window": sliding,
        "within_limit": sliding <= limit,
        "per_second": windows,
    }


def _scheduler(before: Samples, after: Samples) -> dict[str, Any]:
    whole = histogram(after, LAG)
    return {
        "scheduler_lag_p99_s": rounded(histogram_quantile(whole, 0.99)),
        # True: the p99 is past the histogram's last finite bucket, and the figure a floor.
        "scheduler_lag_p99_is_floor": past_last_bound(whole, 0.99),
        "scheduler_lag_p99_observe_s": rounded(
            histogram_quantile(histogram_delta(whole, histogram(before, LAG)), 0.99)
        ),
        "backlog": mapping_float(by_label(after, "bridge_backlog", "work")),
        "backlog_oldest_seconds": mapping_float(
            by_label(after, "bridge_backlog_oldest_seconds", "work")
        ),
        "jobs_by_state": mapping_float(by_label(after, "bridge_jobs", "state")),
    }
