"""kill -9 and SIGTERM against a real ``bridge serve`` process on a real SQLite file."""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.conftest import ALPHA, base_env
from tests.harness import FAST, fake_upstream, receiver
from tests.proc import BridgeProcess

H = {"Authorization": f"Bearer {ALPHA}"}


def env_for(tmp_path: Path, upstream: str, **extra: str) -> dict[str, str]:
    return base_env(
        tmp_path,
        BRIDGE_UPSTREAM_URL=upstream,
        BRIDGE_PORT="0",
        BRIDGE_LOG_LEVEL="info",
        **{**FAST, **extra},
    )


async def register_all(url: str, jobs: list[tuple[int, str]]) -> list[str]:
    ids = []
    async with aiohttp.ClientSession() as http:
        for token, callback in jobs:
            body = {"token": token, "callback_url": callback}
            async with http.post(f"{url}/v1/jobs", json=body, headers=H) as resp:
                assert resp.status == 201, await resp.text()
                ids.append((await resp.json())["id"])
    return ids


async def test_killed_twice_with_150_jobs_in_flight_delivers_all(tmp_path: Path) -> None:
    rng = random.Random(3)
    async with fake_upstream() as up, receiver() as rec:
        env = env_for(tmp_path, up.url)
        jobs = [
            (
                up.fake.add_job(rng.choice(["video"]), duration=rng.uniform(0.5, 4.0)),
                rec.url + f"/h/{i}",
            )
            for i in range(150)
        ]
        bridge = await BridgeProcess(["serve"], env).start()
        ids = await register_all(bridge.url, jobs)
        for _ in range(2):
            # Kill mid-run: some outcomes delivered, some recorded but not sent, some polling.
            await asyncio.sleep(0.8)
            await bridge.stop(signal.SIGKILL)
            bridge = await BridgeProcess(["serve"], env).start()
        try:
            await rec.wait_for(lambda: len({c.path for c in rec.calls}) == 150, timeout=60)
        finally:
            assert await bridge.stop() == 0
        per_path = Counter(c.path for c in rec.calls)
        assert set(per_path) == {f"/h/{i}" for i in range(150)}
        # Any duplicate is the same message: same webhook-id, same body.
        for path, _n in per_path.items():
            calls = rec.at(path)
            assert len({c.headers["webhook-id"] for c in calls}) == 1
            assert len({c.body for c in calls}) == 1
            assert calls[0].json()["data"]["job_id"] in ids
        duplicates = sum(n - 1 for n in per_path.values())
        print(f"\nkill -9 twice: 150 jobs, {len(rec.calls)} callbacks, {duplicates} duplicates")


async def test_sigterm_lets_in_flight_callbacks_finish(tmp_path: Path) -> None:
    async with fake_upstream() as up, receiver() as rec:
        rec.delay = 1.0  # every callback takes a second to be answered
        env = env_for(tmp_path, up.url, BRIDGE_SHUTDOWN_GRACE="5s")
        bridge = await BridgeProcess(["serve"], env).start()
        jobs = [(up.fake.add_job("video", duration=0.05), rec.url + f"/t/{i}") for i in range(5)]
        await register_all(bridge.url, jobs)
        await rec.wait_for(lambda: len(rec.calls) == 5, timeout=30)  # all on the wire
        started = time.monotonic()
        assert await bridge.stop(signal.SIGTERM) == 0
        took = time.monotonic() - started
        assert took < 5 + 3  # the grace, and a margin for a loaded machine
        events = [e["event"] for e in bridge.events()]
        assert events.count("job_delivered") == 5  # finished, and recorded, before exiting
        assert "shutdown_cut_work_short" not in events
        assert events[-1] == "stopped"


async def test_sigterm_gives_the_grace_once_when_an_api_request_hangs(tmp_path: Path) -> None:
    """An API request that never completes (a body trickling in) holds aiohttp's drain,
    which used to come on top of the scheduler's grace: the whole stop now fits in the
    grace plus a second (here with a callback hung at the receiver as well)."""
    grace = 3.0
    async with fake_upstream() as up, receiver() as rec:
        rec.delay = 60.0
        env = env_for(
            tmp_path,
            up.url,
            BRIDGE_SHUTDOWN_GRACE=f"{grace:g}s",
            BRIDGE_CALLBACK_TIMEOUT="30s",
            BRIDGE_LEASE="60s",
        )
        bridge = await BridgeProcess(["serve"], env).start()
        await register_all(
            bridge.url, [(up.fake.add_job("video", duration=0.05), rec.url + "/hung")]
        )
        await rec.wait_for(lambda: len(rec.calls) == 1, timeout=30)
        host, port = bridge.url.removeprefix("http://").rsplit(":", 1)
        _reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(
            (
                "POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Authorization: Bearer {ALPHA}\r\nContent-Length: 200\r\n\r\n{{"
            ).encode()
        )
        await writer.drain()
        await asyncio.sleep(0.3)  # the handler is now waiting for the rest of the body
        started = time.monotonic()
        assert await bridge.stop(signal.SIGTERM) == 0
        took = time.monotonic() - started
        writer.close()
        # Grace plus one second by contract; before, the drain and the grace added up (6 s).
        assert took < grace + 1.5, took
        assert "shutdown_cut_work_short" in [e["event"] for e in bridge.events()]


async def test_sigterm_cuts_work_that_outlasts_the_grace(tmp_path: Path) -> None:
    async with fake_upstream() as up, receiver() as rec:
        rec.delay = 10.0
        env = env_for(
            tmp_path,
            up.url,
            BRIDGE_SHUTDOWN_GRACE="1s",
            BRIDGE_CALLBACK_TIMEOUT="20s",
            BRIDGE_LEASE="30s",
        )
        bridge = await BridgeProcess(["serve"], env).start()
        await register_all(
            bridge.url, [(up.fake.add_job("video", duration=0.05), rec.url + "/slow")]
        )
        await rec.wait_for(lambda: len(rec.calls) == 1, timeout=30)
        started = time.monotonic()
        assert await bridge.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 1 + 3
        assert "shutdown_cut_work_short" in [e["event"] for e in bridge.events()]
        # Restarted, the cut attempt is made again (at least once).
        rec.delay = 0.0
        again = await BridgeProcess(["serve"], env).start()
        try:
            await rec.wait_for(lambda: len(rec.calls) == 2, timeout=30)
        finally:
            assert await again.stop() == 0
