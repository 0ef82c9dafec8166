"""The slow-tenant case on the wall clock: a tenant whose receiver never answers does not
slow another tenant's callbacks.

Issue 13 measured it before the caps: tenant B pointing 24 jobs at a receiver that never
answers slowed tenant A's deliveries from 2.0 s to 16.6 s (4 delivery slots). Here A's
jobs are timed unloaded and then behind B's 24 hung callbacks, with the defaults (64
slots, 8 per host, 16 per tenant) and with 4 slots and 2 per host. What is asserted is
the mechanism (every A callback delivered at its first attempt while B's receiver still
holds each request it got, and B's host never more than its cap at once); the times are
printed, not asserted, since a loaded machine would make any bound flaky.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ALPHA, BETA
from tests.harness import bridge, fake_upstream, hung, receiver, register

A_JOBS = 10
B_JOBS = 24


async def a_delivery_seconds(tmp_path: Path, *, loaded: bool, **env: str) -> list[float]:
    """Seconds from registering each of A's jobs to its callback arriving."""
    tmp_path.mkdir()
    async with (
        fake_upstream() as up,
        receiver() as a_rec,
        hung() as b_rec,
        bridge(tmp_path, up.url, BRIDGE_CALLBACK_TIMEOUT="60s", BRIDGE_LEASE="90s", **env) as c,
    ):
        if loaded:
            for i in range(B_JOBS):
                token = up.fake.add_job("video", duration=0.05)
                await register(c, token, f"{b_rec.url}/b/{i}", secret=BETA)
            cap = int(env.get("BRIDGE_CALLBACK_HOST_CONCURRENCY", "8"))
            await b_rec.wait_for(cap, timeout=30)  # B's host holds as many as it may
        started: dict[str, float] = {}
        for i in range(A_JOBS):
            token = up.fake.add_job("video", duration=0.3)
            path = f"/a/{i}"
            await register(c, token, a_rec.url + path)
            started[path] = time.monotonic()
        await a_rec.wait_for(lambda: len(a_rec.calls) >= A_JOBS, timeout=60)
        took = [call.at - started[call.path] for call in a_rec.calls]
        if loaded:
            cap = int(env.get("BRIDGE_CALLBACK_HOST_CONCURRENCY", "8"))
            assert b_rec.arrived == cap  # never more than its cap on the wire, all still hung
            listed = await c.get("/v1/jobs", headers={"Authorization": f"Bearer {ALPHA}"})
            jobs: list[Any] = (await listed.json())["items"]
            assert [j["delivery"]["attempts"] for j in jobs] == [1] * A_JOBS
        return took


@pytest.mark.parametrize(
    "env",
    [{}, {"BRIDGE_CALLBACK_CONCURRENCY": "4", "BRIDGE_CALLBACK_HOST_CONCURRENCY": "2"}],
    ids=["defaults", "4-slots"],
)
async def test_a_hung_tenant_does_not_slow_another(tmp_path: Path, env: dict[str, str]) -> None:
    unloaded = await a_delivery_seconds(tmp_path / "unloaded", loaded=False, **env)
    loaded = await a_delivery_seconds(tmp_path / "loaded", loaded=True, **env)
    a, b = statistics.median(unloaded), statistics.median(loaded)
    print(
        f"\nA's callbacks, median from registration: {a:.2f} s unloaded, {b:.2f} s behind "
        f"{B_JOBS} hung callbacks of tenant B ({b / a:.2f}x); worst {max(loaded):.2f} s"
    )
