"""``--mode compare``: the reference poller, then the bridge, on the same workload.

Each system gets fresh upstream and receiver processes, so that neither inherits the
other's state or memory. Per system the figures are: throughput (first registration to
last callback), upstream status requests and callback attempts per job, the latency from
the Uploadcare-side finish to the receiver split at the detecting poll, and the system's
own process's CPU and peak memory.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

import aiohttp

from bench import workload
from bench.children import BenchError, Child, Fleet, usage
from bench.drive import (
    Registrar,
    Registration,
    Ticker,
    background,
    get_json,
    say,
    scrape,
    session,
)
from bench.receiver import HOOK_PATH
from bench.stats import histogram, histogram_quantile, ratio, rounded, spread
from bench.systems import (
    UNLIMITED_RPS,
    Secrets,
    start_bridge,
    start_receiver,
    start_reference,
    start_upstream,
)

SYSTEMS: Final = ("reference", "bridge")
PROGRESS_EVERY: Final = 2.0
POLL_RECEIVER_EVERY: Final = 0.25
# Figures compared as bridge / reference, and where each is found in a system's figures.
RATIOS: Final[Mapping[str, Callable[[Mapping[str, Any]], Any]]] = {
    "jobs_per_second": lambda f: f["jobs_per_second"],
    "upstream_requests_per_job": lambda f: f["upstream_requests_per_job"],
    "end_to_end_p50": lambda f: f["end_to_end_latency_s"]["p50"],
    "end_to_end_p99": lambda f: f["end_to_end_latency_s"]["p99"],
    "cpu_seconds_per_1000_jobs": lambda f: f["cpu_seconds_per_1000_jobs"],
    "peak_rss_mb": lambda f: f["peak_rss_mb"],
}


async def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], list[str]]:
    """The figures of both systems (or the one not skipped) and what went wrong."""
    jobs = workload.plan(args.jobs, args.durations, args.seed)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for system in SYSTEMS:
        if getattr(args, f"skip_{system}"):
            continue
        say(f"{system}: {len(jobs)} jobs, durations {args.durations.text}")
        try:
            figures, trouble = await measure(system, args, jobs, workdir / system)
        except BenchError as exc:
            raise BenchError(f"{system}: {exc}") from None
        out[system] = figures
        problems += [f"{system}: {text}" for text in trouble]
    if "reference" in out and "bridge" in out:
        out["ratios"] = {
            name: ratio(get(out["bridge"]), get(out["reference"])) for name, get in RATIOS.items()
        }
    else:
        out["ratios"] = dict.fromkeys(RATIOS)
    return out, problems


async def measure(
    system: str, args: argparse.Namespace, jobs: list[workload.JobSpec], workdir: Path
) -> tuple[dict[str, Any], list[str]]:
    keys = Secrets()
    async with Fleet(workdir) as fleet, session(args.clients + 8) as http:
        upstream = await start_upstream(fleet, keys, args.seed)
        receiver = await start_receiver(fleet, keys)
        extra: dict[str, Any] = {}
        if system == "bridge":
            target, where = await start_bridge(fleet, args, upstream, keys, UNLIMITED_RPS)
            extra = {"bridge_module_path": where["path"], "bridge_version": where["version"]}
        else:
            target = await start_reference(fleet, args, upstream, keys)
        before = usage(target.pid)
        registrar = Registrar(
            http,
            upstream_url=upstream.url,
            target_url=target.url,
            headers=keys.bearer if system == "bridge" else {},
            callback_url=receiver.url + HOOK_PATH,
            clients=args.clients,
            rate=args.rate,
        )
        registration = await _register_and_wait(fleet, http, registrar, jobs, receiver, args)
        after = usage(target.pid)
        upstream_report = await get_json(http, f"{upstream.url}/_bench/report")
        receiver_report = await get_json(http, f"{receiver.url}/_bench/report")
        if system == "bridge":
            lag = histogram(await scrape(http, target.url), "bridge_scheduler_lag_seconds")
            extra["scheduler_lag_p99_s"] = rounded(histogram_quantile(lag, 0.99))
            extra["scheduler_lag_s"] = {
                f"p{round(q * 100)}": rounded(histogram_quantile(lag, q)) for q in (0.5, 0.95)
            }
    figures = figures_of(registration, upstream_report, receiver_report)
    cpu = after.cpu_seconds - before.cpu_seconds
    figures.update(
        {
            "cpu_seconds": rounded(cpu, 2),
            "cpu_seconds_total": rounded(after.cpu_seconds, 2),
            "cpu_seconds_per_1000_jobs": rounded(cpu * 1000 / len(jobs), 3),
            "peak_rss_mb": rounded(after.peak_rss_mb, 1),
            **extra,
        }
    )
    return figures, _trouble(receiver_report)


async def _register_and_wait(
    fleet: Fleet,
    http: aiohttp.ClientSession,
    registrar: Registrar,
    jobs: list[workload.JobSpec],
    receiver: Child,
    args: argparse.Namespace,
) -> Registration:
    """Registers every job, then waits for every callback; loud when one does not come."""
    total, delivered = len(jobs), 0
    ticker = Ticker(
        PROGRESS_EVERY,
        lambda: say(f"  registered {registrar.done}/{total}, delivered {delivered}/{total}"),
    )
    deadline = math.inf
    async with background(registrar.run(jobs)) as registering:
        while True:
            fleet.check()
            if registering.done() and math.isinf(deadline):
                registering.result()  # a refused registration ends the run here
                deadline = time.monotonic() + args.timeout
            delivered = int((await get_json(http, f"{receiver.url}/_bench/count"))["delivered"])
            ticker.tick()
            if registering.done() and delivered >= total:
                ticker.tick(force=True)
                return registering.result()
            if time.monotonic() > deadline:
                raise BenchError(await _missing(http, receiver, registrar, args.timeout))
            await asyncio.sleep(POLL_RECEIVER_EVERY)


async def _missing(
    http: aiohttp.ClientSession, receiver: Child, registrar: Registrar, timeout: float
) -> str:
    report = await get_json(http, f"{receiver.url}/_bench/report")
    arrived = {int(token) for token in report["arrivals"]}
    missing = [c for c in registrar.result.created if c.token not in arrived]
    shown = ", ".join(f"{c.spec.kind} {c.token}" for c in missing[:5])
    return (
        f"{len(missing)} of {len(registrar.result.created)} callbacks did not arrive within "
        f"{timeout:g}s after the last registration (e.g. {shown})"
    )


def _by_token(raw: Mapping[str, float]) -> dict[int, float]:
    return {int(token): float(at) for token, at in raw.items()}


def figures_of(
    registration: Registration, upstream: Mapping[str, Any], receiver: Mapping[str, Any]
) -> dict[str, Any]:
    arrivals = _by_token(receiver["arrivals"])
    detected = _by_token(upstream["detected"])
    end_to_end, detection, overhead = [], [], []
    for created in registration.created:
        arrived, seen = arrivals.get(created.token), detected.get(created.token)
        if created.finish_at is None:
            continue
        if arrived is not None:
            end_to_end.append(arrived - created.finish_at)
        if seen is not None:
            detection.append(seen - created.finish_at)
        if arrived is not None and seen is not None:
            overhead.append(arrived - seen)
    jobs = len(registration.created)
    wall = max(arrivals.values(), default=registration.ended) - registration.started
    return {
        "jobs": jobs,
        "delivered": len(arrivals),
        "outcomes": receiver["outcomes"],
        "wall_seconds": rounded(wall, 3),
        "jobs_per_second": rounded(jobs / wall if wall > 0 else None, 2),
        "registration_seconds": rounded(registration.seconds, 3),
        "registrations_per_second": rounded(registration.per_second, 1),
        "upstream_requests_per_job": rounded(upstream["status_requests"] / jobs, 3),
        "callback_attempts_per_job": rounded(receiver["attempts"] / jobs, 3),
        "duplicate_callbacks": receiver["duplicates"],
        "end_to_end_latency_s": spread(end_to_end),
        "detection_latency_s": spread(detection),
        "delivery_overhead_s": spread(overhead),
        "signatures": {
            "checked": receiver["verified"] + receiver["failed_verification"],
            "failed": receiver["failed_verification"],
        },
    }


def _trouble(receiver: Mapping[str, Any]) -> list[str]:
    out = []
    if receiver["failed_verification"]:
        out.append(
            f"{receiver['failed_verification']} sampled callbacks failed signature "
            f"verification (e.g. {'; '.join(receiver['failures'])})"
        )
    if receiver["malformed"]:
        out.append(f"{receiver['malformed']} callbacks had no data.token/data.status")
    return out
