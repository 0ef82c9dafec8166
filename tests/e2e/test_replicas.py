"""Several ``bridge serve`` replicas on one PostgreSQL database: shared work, no loss."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ALPHA, base_env
from tests.harness import FAST, Receiver, fake_upstream, receiver
from tests.proc import BridgeProcess

PG_URL = os.environ.get("BRIDGE_TEST_POSTGRES_URL", "")
pytestmark = pytest.mark.skipif(not PG_URL, reason="needs BRIDGE_TEST_POSTGRES_URL")

H = {"Authorization": f"Bearer {ALPHA}"}
MIN_INTERVAL = 0.2


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    import asyncpg

    name = f"bridge_replicas_{os.urandom(4).hex()}"
    admin = await asyncpg.connect(PG_URL)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        parts = urlsplit(PG_URL)
        yield urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def replica_env(tmp_path: Path, db_url: str, upstream: str, **extra: str) -> dict[str, str]:
    settings = {
        **FAST,
        "BRIDGE_POLL_MIN_INTERVAL": f"{int(MIN_INTERVAL * 1000)}ms",
        "BRIDGE_POLL_MAX_INTERVAL": "1s",
        "BRIDGE_UPSTREAM_RPS": "300",
        **extra,
    }
    return base_env(
        tmp_path,
        BRIDGE_DATABASE_URL=db_url,
        BRIDGE_UPSTREAM_URL=upstream,
        BRIDGE_PORT="0",
        BRIDGE_LOG_LEVEL="info",
        **settings,
    )


async def start_replicas(n: int, env: dict[str, str]) -> list[BridgeProcess]:
    return list(await asyncio.gather(*(BridgeProcess(["serve"], env).start() for _ in range(n))))


async def register_many(
    replicas: list[BridgeProcess], jobs: list[tuple[str, int, str]], concurrency: int = 16
) -> list[str]:
    """Registers (kind, token, url) round-robin across the replicas; returns job ids."""
    gate = asyncio.Semaphore(concurrency)
    ids: list[str] = [""] * len(jobs)
    async with aiohttp.ClientSession() as http:

        async def one(i: int, kind: str, token: int, url: str) -> None:
            target = replicas[i % len(replicas)]
            async with gate:
                body = {"token": token, "kind": kind, "callback_url": url}
                async with http.post(f"{target.url}/v1/jobs", json=body, headers=H) as resp:
                    assert resp.status == 201, await resp.text()
                    ids[i] = (await resp.json())["id"]

        await asyncio.gather(*(one(i, *job) for i, job in enumerate(jobs)))
    return ids


async def upstream_requests_of(replica: BridgeProcess) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{replica.url}/metrics") as resp:
        text = await resp.text()
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "bridge_upstream_requests"
        for s in f.samples
        if s.name.endswith("_total")
    )


async def stop_all(replicas: list[BridgeProcess]) -> None:
    for r in replicas:
        if r.proc is not None and r.proc.returncode is None:
            assert await r.stop() == 0


def delivered_paths(rec: Receiver) -> set[str]:
    return {c.path for c in rec.calls}


async def test_three_replicas_share_1000_jobs(tmp_path: Path) -> None:
    rng = random.Random(11)
    async with fresh_database() as db, fake_upstream() as up, receiver() as rec:
        replicas = await start_replicas(3, replica_env(tmp_path, db, up.url))
        try:
            jobs = []
            for i in range(1000):
                kind = "video" if i % 2 else "document"
                token = up.fake.add_job(kind, duration=rng.uniform(0.3, 2.5))
                jobs.append((kind, token, rec.url + f"/r/{i}"))
            started = time.monotonic()
            ids = await register_many(replicas, jobs)
            await rec.wait_for(lambda: len(delivered_paths(rec)) == 1000, timeout=180)
            wall = time.monotonic() - started
            per_replica = [await upstream_requests_of(r) for r in replicas]
        finally:
            await stop_all(replicas)
        assert {c.json()["data"]["job_id"] for c in rec.calls} == set(ids)
        # One watch, one poller at a time: no two requests for a token closer than half
        # the minimum interval.
        by_token: dict[tuple[str | None, int | None], list[float]] = defaultdict(list)
        for r in up.fake.status_requests():
            by_token[(r.kind, r.token)].append(r.monotonic)
        closest = min(
            b - a
            for times in by_token.values()
            for a, b in zip(sorted(times), sorted(times)[1:], strict=False)
        )
        assert closest >= MIN_INTERVAL / 2, closest
        total = len(up.fake.status_requests())
        assert sum(per_replica) == total
        for share in per_replica:
            assert share >= total / 5, per_replica
        duplicates = len(rec.calls) - 1000
        print(
            f"\n3 replicas, 1000 jobs: {wall:.1f}s, {total} upstream requests "
            f"({total / 1000:.2f}/job), split {per_replica}, "
            f"closest polls {closest * 1000:.0f} ms, "
            f"{duplicates} duplicate callbacks"
        )


async def test_a_killed_replica_loses_nothing(tmp_path: Path) -> None:
    rng = random.Random(5)
    async with fresh_database() as db, fake_upstream() as up, receiver() as rec:
        env = replica_env(tmp_path, db, up.url, BRIDGE_LEASE="5s")
        replicas = await start_replicas(3, env)
        try:
            jobs = [
                (
                    "video",
                    up.fake.add_job("video", duration=rng.uniform(0.5, 4.0)),
                    rec.url + f"/k/{i}",
                )
                for i in range(300)
            ]
            await register_many(replicas, jobs)
            await rec.wait_for(lambda: len(delivered_paths(rec)) >= 60, timeout=60)
            killed_at = time.monotonic()
            await replicas[0].stop(signal.SIGKILL)
            await rec.wait_for(lambda: len(delivered_paths(rec)) == 300, timeout=120)
            finished = time.monotonic() - killed_at
        finally:
            await stop_all(replicas[1:])
        per_path = Counter(c.path for c in rec.calls)
        duplicates = sum(n - 1 for n in per_path.values())
        for path, n in per_path.items():
            if n > 1:
                calls = [c for c in rec.calls if c.path == path]
                assert len({c.headers["webhook-id"] for c in calls}) == 1
                assert len({c.body for c in calls}) == 1
        # Only what the dead replica had on the wire can come twice.
        assert duplicates <= 64
        print(
            f"\nSIGKILL of 1 of 3 replicas: all 300 delivered {finished:.1f}s after the kill "
            f"(lease 5s), {duplicates} duplicate callbacks"
        )


async def test_sigterm_gives_work_back_at_once(tmp_path: Path) -> None:
    async with fresh_database() as db, fake_upstream() as up, receiver() as rec:
        base = replica_env(tmp_path, db, up.url, BRIDGE_LEASE="30s", BRIDGE_SHUTDOWN_GRACE="3s")
        # A slow replica claims far more than it can poll at once (5 rps x 28 s / 2 = 70).
        slow_env = {**base, "BRIDGE_UPSTREAM_RPS": "5", "BRIDGE_UPSTREAM_CONCURRENCY": "100"}
        slow = await BridgeProcess(["serve"], slow_env).start()
        tokens = [up.fake.add_job("video", duration=0.05) for _ in range(80)]
        await register_many([slow], [("video", t, rec.url + f"/s/{t}") for t in tokens])
        others = await start_replicas(2, base)
        try:
            stopped_at = time.monotonic()
            assert await slow.stop(signal.SIGTERM) == 0
            assert time.monotonic() - stopped_at < 3 + 3
            given_back_at = time.monotonic()
            # Claimed by the slow replica (or by nobody) but never polled: given back.
            pending = [t for t in tokens if not up.fake.status_requests(token=t)]
            assert pending, "the slow replica polled everything; nothing was given back"
            await rec.wait_for(lambda: len(delivered_paths(rec)) == 80, timeout=60)
            first_poll = {
                t: min(
                    r.monotonic
                    for r in up.fake.status_requests(token=t)
                    if r.monotonic > given_back_at
                )
                for t in pending
            }
            latest = max(first_poll.values()) - given_back_at
        finally:
            await stop_all(others)
        # Long before the 30 s leases would have run out.
        assert latest < 2.0, latest
        print(f"\nSIGTERM: {len(pending)} given-back watches all polled within {latest:.2f}s")


async def test_a_429_seen_by_one_replica_pauses_all(tmp_path: Path) -> None:
    async with fresh_database() as db, fake_upstream() as up, receiver() as rec:
        env = replica_env(tmp_path, db, up.url, BRIDGE_UPSTREAM_CONCURRENCY="2")
        replicas = await start_replicas(3, env)
        try:
            tokens = [up.fake.add_job("video", duration=4.0) for _ in range(30)]
            await register_many(replicas, [("video", t, rec.url + "/p") for t in tokens])
            await asyncio.sleep(1.0)
            up.fake.respond_next(429, retry_after=3)
            await rec.wait_for(lambda: len(rec.calls) == 30, timeout=60)
        finally:
            await stop_all(replicas)
        log = up.fake.status_requests()
        throttled = next(r for r in log if r.status == 429)
        window = [
            r for r in log if throttled.monotonic + 0.05 < r.monotonic < throttled.monotonic + 3
        ]
        # Nothing beyond what was already in flight (3 replicas x 2 slots, less the 429).
        assert len(window) <= 5, window


async def test_every_replica_answers_the_same(tmp_path: Path) -> None:
    async with fresh_database() as db, fake_upstream() as up, receiver() as rec:
        replicas = await start_replicas(3, replica_env(tmp_path, db, up.url))
        try:
            jobs = [
                ("document", up.fake.add_job("document", duration=0.2), rec.url + f"/v/{i}")
                for i in range(40)
            ]
            ids = await register_many(replicas, jobs)
            await rec.wait_for(lambda: len(delivered_paths(rec)) == 40, timeout=60)
            await asyncio.sleep(0.5)
            views: list[Any] = []
            cursor = None
            async with aiohttp.ClientSession() as http:
                for r in replicas:
                    async with http.get(f"{r.url}/v1/jobs?limit=25", headers=H) as resp:
                        page = await resp.json()
                    # Cursors are sealed afresh each time (never the same text twice), and
                    # any replica opens the first replica's: they share the key.
                    cursor = cursor or page.pop("next_cursor")
                    page.pop("next_cursor", None)
                    async with http.get(
                        f"{r.url}/v1/jobs?limit=25&cursor={cursor}", headers=H
                    ) as resp:
                        page2 = await resp.json()
                    singles = []
                    for j in ids[:5]:
                        async with http.get(f"{r.url}/v1/jobs/{j}", headers=H) as resp:
                            singles.append(await resp.json())
                    views.append((page, page2, singles))
        finally:
            await stop_all(replicas)
        assert views[0] == views[1] == views[2]
        assert len(views[0][0]["items"]) + len(views[0][1]["items"]) == 40


async def test_every_replica_signs_with_a_rotated_secret_at_once(tmp_path: Path) -> None:
    """A rotation through one replica: callbacks that any replica sends from then on carry
    the new secret's signature (the notice reaches the others as it commits), and the old
    one's beside it for the overlap."""
    from standardwebhooks.webhooks import Webhook

    async with fresh_database() as db, fake_upstream() as up, receiver() as rec:
        replicas = await start_replicas(2, replica_env(tmp_path, db, up.url))
        try:
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{replicas[1].url}/v1/signing-secrets", headers=H) as r:
                    (old,) = (await r.json())["secrets"]
                url = f"{replicas[0].url}/v1/signing-secrets/rotate"
                async with http.post(url, headers=H) as resp:
                    assert resp.status == 201
                    new = (await resp.json())["secret"]
            jobs = [("video", up.fake.add_job("video", duration=0.2), rec.url + f"/r/{i}")
                    for i in range(30)]  # fmt: skip
            await register_many(replicas, jobs)
            await rec.wait_for(lambda: len(delivered_paths(rec)) == 30, timeout=60)
        finally:
            await stop_all(replicas)
        for call in rec.calls:
            headers = {k.lower(): v for k, v in call.headers.items()}
            assert len(headers["webhook-signature"].split()) == 2, headers
            Webhook(new).verify(call.body, headers)
            Webhook(old).verify(call.body, headers)
        # Both replicas sent some of them.
        senders = [sum(1 for e in r.events() if e["event"] == "job_delivered") for r in replicas]
        assert all(senders) and sum(senders) == 30, senders
