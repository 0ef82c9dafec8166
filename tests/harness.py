"""A real receiver and a real bridge on loopback, wired to the fake upstream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge import settings as settings_mod
from bridge.app import create_app
from bridge.fake_upstream import FakeConfig, RunningFake, running
from tests import catalog
from tests.conftest import ALPHA, UC_PUBLIC, UC_SECRET, base_env

# Fast pacing so a conversion of a fraction of a second is seen within a few polls.
FAST = {
    "BRIDGE_POLL_INITIAL_DELAY": "0",
    "BRIDGE_POLL_MIN_INTERVAL": "50ms",
    "BRIDGE_POLL_MAX_INTERVAL": "200ms",
    "BRIDGE_UPSTREAM_RPS": "2000",
    "BRIDGE_UPSTREAM_TIMEOUT": "2s",
    "BRIDGE_CALLBACK_TIMEOUT": "2s",
    "BRIDGE_CALLBACK_RETRY_SCHEDULE": "100ms,100ms,100ms",
    "BRIDGE_LEASE": "5s",
    "BRIDGE_SHUTDOWN_GRACE": "2s",
}


@dataclass
class Call:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic()

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """Records every callback; answers from a per-path plan, else ``default``."""

    url: str = ""
    calls: list[Call] = field(default_factory=list)
    plans: dict[str, deque[tuple[int, dict[str, str]]]] = field(
        default_factory=lambda: defaultdict(deque)
    )
    default: int = 200
    delay: float = 0.0  # seconds before answering, for every call
    _arrived: asyncio.Condition = field(default_factory=asyncio.Condition)

    def plan(self, path: str, *answers: int | tuple[int, dict[str, str]]) -> str:
        for a in answers:
            self.plans[path].append(a if isinstance(a, tuple) else (a, {}))
        return self.url + path

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if "webhook-id" in request.headers:  # a callback (tests also post other things here)
            catalog.check(body)
        self.calls.append(Call(request.path, dict(request.headers), body, time.monotonic()))
        async with self._arrived:
            self._arrived.notify_all()
        if self.delay:
            await asyncio.sleep(self.delay)
        queue = self.plans.get(request.path)
        status, headers = queue.popleft() if queue else (self.default, {})
        return web.Response(status=status, headers=headers, text="ok")

    def at(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        async def wait() -> None:
            async with self._arrived:
                await self._arrived.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)


@contextlib.asynccontextmanager
async def serving(
    handle: Callable[[web.Request], Awaitable[web.StreamResponse]], shutdown_timeout: float = 0.5
) -> AsyncIterator[str]:
    """``handle`` answering every method and path on a free loopback port; its base URL."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


class Hung:
    """A receiver that holds every request until ``release``."""

    def __init__(self) -> None:
        self.url = ""
        self.arrived = 0
        self._go = asyncio.Event()
        self._seen = asyncio.Condition()

    async def handle(self, request: web.Request) -> web.Response:
        catalog.check(await request.read())
        self.arrived += 1
        async with self._seen:
            self._seen.notify_all()
        await self._go.wait()
        return web.Response(status=200)

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async def wait() -> None:
            async with self._seen:
                await self._seen.wait_for(lambda: self.arrived >= count)

        await asyncio.wait_for(wait(), timeout)

    def release(self) -> None:
        self._go.set()


@contextlib.asynccontextmanager
async def hung() -> AsyncIterator[Hung]:
    h = Hung()
    async with serving(h.handle, shutdown_timeout=0.1) as h.url:
        try:
            yield h
        finally:
            h.release()


@contextlib.asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    async with serving(rec.handle) as rec.url:
        yield rec


@contextlib.asynccontextmanager
async def fake_upstream(**config: Any) -> AsyncIterator[RunningFake]:
    cfg = FakeConfig(
        public_key=UC_PUBLIC, secret_key=UC_SECRET, min_duration=0.1, max_duration=0.5, **config
    )
    async with running(cfg, host="127.0.0.1", port=0) as fake:
        yield fake


@contextlib.asynccontextmanager
async def bridge(
    tmp_path: Path, upstream_url: str, **env: str | None
) -> AsyncIterator[TestClient[Any, Any]]:
    settings = settings_mod.load(
        base_env(tmp_path, BRIDGE_UPSTREAM_URL=upstream_url, **{**FAST, **env})
    )
    app = create_app(settings)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


async def register(
    client: TestClient[Any, Any],
    token: int,
    url: str,
    *,
    kind: str = "video",
    secret: str = ALPHA,
    metadata: Any = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"token": token, "kind": kind, "callback_url": url}
    if metadata is not None:
        body["metadata"] = metadata
    resp = await client.post("/v1/jobs", json=body, headers={"Authorization": f"Bearer {secret}"})
    assert resp.status in (200, 201), await resp.text()
    return await resp.json()  # type: ignore[no-any-return]


async def job(client: TestClient[Any, Any], job_id: str, secret: str = ALPHA) -> dict[str, Any]:
    resp = await client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {secret}"})
    assert resp.status == 200
    return await resp.json()  # type: ignore[no-any-return]


async def wait_state(
    client: TestClient[Any, Any],
    job_id: str,
    states: tuple[str, ...],
    timeout: float = 30.0,
    secret: str = ALPHA,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        current = await job(client, job_id, secret)
        if current["state"] in states:
            return current
        if time.monotonic() > deadline:
            raise AssertionError(f"{job_id} stayed {current['state']}: {current}")
        await asyncio.sleep(0.05)
