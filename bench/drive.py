"""The driver's side: creating conversions, registering them, watching progress."""

from __future__ import annotations

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import aiohttp

from bench.children import BenchError
from bench.stats import Samples, parse_metrics
from bench.workload import JobSpec

T = TypeVar("T")

# A request to a loaded system on two cores can take a while; minutes would mean it hangs.
REQUEST_TIMEOUT: Final = aiohttp.ClientTimeout(total=120)


def say(text: str) -> None:
    """A progress line: stderr, so that stdout holds only the JSON figures."""
    print(f"bench: {text}", file=sys.stderr, flush=True)


def session(connections: int) -> aiohttp.ClientSession:
    # Keep-alive with a pool as large as the concurrency asked for: a new connection per
    # request would measure the kernel's handshakes, not the servers.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections, limit_per_host=connections),
        timeout=REQUEST_TIMEOUT,
    )


async def get_json(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> Any:
    try:
        async with http.get(url, **kwargs) as response:
            if response.status != 200:
                raise BenchError(f"GET {url} answered {response.status}: {await response.text()}")
            return await response.json()
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(f"GET {url} failed: {exc!r}") from None


async def scrape(http: aiohttp.ClientSession, base_url: str) -> Samples:
    try:
        async with http.get(f"{base_url}/metrics") as response:
            return parse_metrics(await response.text())
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise BenchError(f"could not scrape {base_url}/metrics: {exc!r}") from None


@dataclass(frozen=True, slots=True)
class Created:
    """A conversion made at the upstream: its token and when it ends (None: never)."""

    spec: JobSpec
    token: int
    finish_at: float | None


@dataclass
class Registration:
    """What the registration phase did: every job, and when the phase began and ended."""

    created: list[Created] = field(default_factory=list)
    started: float = math.nan  # Unix time the first request went out
    ended: float = math.nan  # Unix time the last registration was answered

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def per_second(self) -> float | None:
        return len(self.created) / self.seconds if self.seconds > 0 else None


class Registrar:
    """Registers a workload with ``clients`` concurrent clients over keep-alive connections.

    Each client takes the next chunk of ``batch`` jobs, creates their conversions at the
    upstream in one control call, then registers them one by one; a conversion therefore
    starts just before its registration (with ``batch`` 1, one control call before).
    ``rate`` (jobs per second) holds each chunk back until its turn; None: as fast as
    the system takes them.
    """

    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        upstream_url: str,
        target_url: str,
        headers: Mapping[str, str],
        callback_url: str,
        clients: int,
        batch: int = 1,
        rate: float | None = None,
    ) -> None:
        self.http = http
        self.upstream_url = upstream_url
        self.target_url = target_url
        self.headers = dict(headers)
        self.callback_url = callback_url
        self.clients = clients
        self.batch = batch
        self.rate = rate
        self.done = 0
        self.result = Registration()

    async def run(self, jobs: Sequence[JobSpec]) -> Registration:
        chunks = iter([jobs[i : i + self.batch] for i in range(0, len(jobs), self.batch)])
        self.result.started = time.time()
        begun = time.monotonic()
        await gather_all(self._client(chunks, begun) for _ in range(self.clients))
        self.result.ended = time.time()
        self.result.created.sort(key=lambda c: c.spec.index)
        return self.result

    async def _client(self, chunks: Iterator[Sequence[JobSpec]], begun: float) -> None:
        # One iterator shared by all clients: each chunk goes to exactly one of them.
        for chunk in chunks:
            if self.rate is not None:
                await asyncio.sleep(max(0.0, begun + chunk[0].index / self.rate - time.monotonic()))
            for created in await self._create(chunk):
                await self._register(created)
                self.result.created.append(created)
                self.done += 1

    async def _create(self, chunk: Sequence[JobSpec]) -> list[Created]:
        body = {
            "jobs": [
                {
                    "kind": spec.kind,
                    "outcome": spec.outcome,
                    "duration": spec.duration if math.isfinite(spec.duration) else None,
                }
                for spec in chunk
            ]
        }
        url = f"{self.upstream_url}/_bench/jobs"
        try:
            async with self.http.post(url, json=body) as response:
                answer = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BenchError(f"the upstream did not create conversions: {exc!r}") from None
        return [
            Created(spec, int(made["token"]), made["finish_at"])
            for spec, made in zip(chunk, answer["jobs"], strict=True)
        ]

    async def _register(self, created: Created) -> None:
        body = {
            "token": created.token,
            "kind": created.spec.kind,
            "callback_url": self.callback_url,
            "metadata": {"n": created.spec.index},
        }
        url = f"{self.target_url}/v1/jobs"
        try:
            async with self.http.post(url, json=body, headers=self.headers) as response:
                if response.status != 201:
                    text = (await response.text())[:300]
                    raise BenchError(f"registration refused: {response.status} {text}")
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise BenchError(f"registration failed: {exc!r}") from None


async def gather_all(coros: Iterable[Awaitable[None]]) -> None:
    """Runs them all; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(_awaited(coro))
    except BaseExceptionGroup as failed:
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


async def _awaited(awaitable: Awaitable[None]) -> None:
    await awaitable


@contextlib.asynccontextmanager
async def background(coro: Awaitable[T]) -> AsyncIterator[asyncio.Future[T]]:
    """Runs ``coro`` as a task for the ``async with`` body and cancels it if still running."""
    task = asyncio.ensure_future(coro)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, BenchError):
                await task


class Ticker:
    """Calls ``show`` at most every ``every`` seconds (a progress line)."""

    def __init__(self, every: float, show: Callable[[], None]) -> None:
        self.every = every
        self.show = show
        self._last = time.monotonic()

    def tick(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last >= self.every:
            self._last = now
            self.show()
