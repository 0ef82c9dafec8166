"""Upstream politeness: the pauses that stop a project's polling (or one of its kinds'),
and the rate limit (one per project: Uploadcare throttles each project on its own)."""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from bridge.model import DEFAULT_PROJECT, rfc3339

# Pause keys, one set per project: "<project>:throttled" (a 429), "<project>:rejected"
# (keys or request refused) and "<project>:rejected:<kind>" (a 400 naming one kind's
# feature). Project names hold no ":", so a key's project is what comes before the first.
THROTTLED = "throttled"
REJECTED = "rejected"


def throttled_key(project: str) -> str:
    return f"{project}:{THROTTLED}"


def rejected_key(project: str, kind: str | None) -> str:
    """The pause key a rejection takes: the project's (every kind), or one kind's."""
    return f"{project}:{REJECTED}" if kind is None else f"{project}:{REJECTED}:{kind}"


def key_project(key: str) -> str:
    """The project a pause key belongs to."""
    return key.partition(":")[0]


@dataclass(frozen=True, slots=True)
class Pause:
    reason: str  # a sentence, e.g. "credentials rejected (401)"; also the metric label
    until: float
    kind: str | None = None  # None: every kind
    project: str = DEFAULT_PROJECT


@dataclass(frozen=True, slots=True)
class TakePause:
    """A pause a poll's answer calls for (a 429, or a rejection of the keys or the request).

    ``rejections`` is how many rejections in a row ``key`` has now seen; None for a pause
    that is not a rejection (a 429), which leaves the count as it is.
    """

    key: str
    reason: str
    until: float
    kind: str | None = None
    rejections: int | None = None
    project: str = DEFAULT_PROJECT


class PauseStore(Protocol):
    """The two store verbs pauses travel by between the processes on one database."""

    async def set_pause(
        self,
        key: str,
        reason: str,
        until: float,
        kind: str | None,
        *,
        project: str = DEFAULT_PROJECT,
        at: float | None = None,
    ) -> None: ...

    async def pauses(self) -> list[tuple[str, str, float, str | None, str]]: ...


class PauseBoard:
    """The one owner of upstream pauses.

    It holds the pauses in force (per project: ``throttled_key``, ``rejected_key``), the
    count of rejections in a row under each key, which of its pauses changed since they
    were last written to the store (``share``) and which it took from the store
    (``adopt``). The scheduler applies poll decisions to it (``take``, ``lift``); the
    rate limiters ask it how long a project's kind must wait (``left``); ``/readyz`` and
    the ``bridge_upstream_paused`` gauge report what it holds (``describe``, ``reasons``),
    for each of ``projects`` (the configured ones) and any other a pause names.
    """

    def __init__(
        self, clock: Callable[[], float], projects: Iterable[str] = (DEFAULT_PROJECT,)
    ) -> None:
        self._clock = clock
        self.projects = tuple(projects)
        self._pauses: dict[str, Pause] = {}
        self._rejections: dict[str, int] = {}  # pause key -> rejections in a row
        self._changed: set[str] = set()  # pause keys to write to the store
        self._adopted: set[str] = set()  # pause keys taken from the store, not set here
        self._at: dict[str, float] = {}  # pause key -> when it was taken or lifted here

    # -- what decisions read ---------------------------------------------------------------

    def get(self, key: str) -> Pause | None:
        return self._pauses.get(key)

    def rejections(self, key: str) -> int:
        """Rejections in a row under ``key`` (0 when the last answer was a good one)."""
        return self._rejections.get(key, 0)

    # -- changes -----------------------------------------------------------------------------

    def take(self, change: TakePause) -> None:
        self._pauses[change.key] = Pause(change.reason, change.until, change.kind, change.project)
        if change.rejections is not None:
            self._rejections[change.key] = change.rejections
        self._changed.add(change.key)
        self._at[change.key] = self._clock()
        self._adopted.discard(change.key)

    def lift(self, key: str) -> None:
        """A good answer: the pause under ``key`` ends here, and its count starts again."""
        self._rejections.pop(key, None)
        self._pauses.pop(key, None)
        self._changed.add(key)
        self._at[key] = self._clock()

    async def share(self, store: PauseStore) -> None:
        """Write pauses taken or lifted here, so every process on the database honours them
        (and the store moves the deadlines of the jobs they hold)."""
        while self._changed:
            key = self._changed.pop()
            pause = self._pauses.get(key)
            at = self._at.pop(key, None)
            if pause is None:
                await store.set_pause(key, "", 0, None, project=key_project(key), at=at)
            else:
                await store.set_pause(
                    key, pause.reason, pause.until, pause.kind, project=pause.project, at=at
                )

    async def adopt(self, store: PauseStore, now: float) -> None:
        """Take up pauses other processes stored (a 429 seen by any replica stops them all,
        for that project)."""
        stored = await store.pauses()
        for key, reason, until, kind, project in stored:
            mine = self._pauses.get(key)
            if until > now and (mine is None or mine.until < until):
                self._pauses[key] = Pause(reason, until, kind, project)
                self._adopted.add(key)
        # A pause taken from the store and since lifted there (a good answer elsewhere)
        # is lifted here too.
        for key in self._adopted - {row[0] for row in stored}:
            self._adopted.discard(key)
            self._pauses.pop(key, None)

    # -- what is reported and obeyed -------------------------------------------------------

    def active(self) -> list[Pause]:
        now = self._clock()
        return sorted(
            (p for p in self._pauses.values() if p.until > now), key=lambda p: p.until, reverse=True
        )

    @staticmethod
    def _shown(active: list[Pause]) -> dict[str, Any]:
        """One ``upstream`` object: ``ok``, or the pause that ends last."""
        if not active:
            return {"state": "ok"}
        first = active[0]
        out: dict[str, Any] = {
            "state": "paused",
            "reason": first.reason,
            "until": rfc3339(first.until),
        }
        if first.kind is not None:
            out["kind"] = first.kind
        return out

    def describe(self) -> dict[str, Any]:
        """The ``upstream`` object of ``/readyz``: paused when any project is (the pause
        that ends last shown), and under ``projects`` the same object for each project."""
        active = self.active()
        out = self._shown(active)
        names = dict.fromkeys([*self.projects, *sorted({p.project for p in active})])
        out["projects"] = {
            name: self._shown([p for p in active if p.project == name]) for name in names
        }
        return out

    def reasons(self) -> set[tuple[str, str]]:
        """The (reason, project) pairs polling is paused for now: the
        ``bridge_upstream_paused`` labels at 1."""
        return {(p.reason, p.project) for p in self.active()}

    def paused(self, now: float) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """The projects paused for every kind, and the (project, kind) pairs paused on
        their own."""
        active = [p for p in self._pauses.values() if p.until > now]
        return (
            tuple(sorted({p.project for p in active if p.kind is None})),
            tuple(sorted({(p.project, p.kind) for p in active if p.kind is not None})),
        )

    def until(self, project: str, kind: str, now: float) -> float:
        """When requests of ``project`` for ``kind`` may go out again (in the past: now)."""
        ends = [
            p.until
            for p in self._pauses.values()
            if p.project == project and p.kind in (None, kind)
        ]
        return max(ends, default=now)

    def left(self, project: str, kind: str) -> float:
        """Seconds before a request of ``project`` for ``kind`` may go out (zero or less:
        it may now)."""
        now = self._clock()
        return self.until(project, kind, now) - now


class RateLimiter:
    """At most ``rps`` requests in any one-second window, spaced evenly.

    Even spacing rather than a bursty bucket: Uploadcare sees a steady trickle. Spacing
    alone does not hold the limit where Uploadcare counts, though: a request woken a few
    milliseconds late and the next one on time reach it closer than ``1/rps`` apart, and
    some second then holds one request too many (the bench saw 202 at 200 rps). So the
    spacing has a 2% margin, and a request also waits until the one ``floor(rps)`` sends
    back went out more than ``WINDOW`` seconds ago, measured on what was actually sent.

    ``clock`` and ``sleep`` are what it measures and waits with; a scheduler stepped on a
    virtual clock uses ``try_acquire``, which never waits.
    """

    SPACING_MARGIN = 1.02
    # A second, and room for requests to be delayed unevenly on their way out.
    WINDOW = 1.05

    def __init__(
        self,
        rps: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._interval = self.SPACING_MARGIN / rps
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._sent: deque[float] = deque(maxlen=max(1, math.floor(rps)))

    async def acquire(self, pause_left: Callable[[], float] = lambda: 0.0) -> None:
        """Wait for a slot; while ``pause_left()`` is positive, no request goes out."""
        while True:
            wait = pause_left()
            if wait > 0:
                await self._sleep(wait)
                continue
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
            if slot > now:
                await self._sleep(slot - now)
            # A pause that began while this request waited for its slot still holds it.
            if pause_left() <= 0 and await self._window_allows(pause_left):
                self._sent.append(self._clock())
                return

    def try_acquire(self, pause_left: Callable[[], float] = lambda: 0.0) -> bool:
        """Take a slot if one is free now and no pause holds; never waits (False: none)."""
        if pause_left() > 0:
            return False
        now = self._clock()
        if self._next > now or self._window_full(now):
            return False
        self._next = now + self._interval
        self._sent.append(now)
        return True

    def _window_full(self, now: float) -> bool:
        return len(self._sent) == self._sent.maxlen and self._sent[0] + self.WINDOW > now

    async def _window_allows(self, pause_left: Callable[[], float]) -> bool:
        """Wait until the last second's sends leave room; False if a pause began meanwhile."""
        while self._window_full(now := self._clock()):
            await self._sleep(self._sent[0] + self.WINDOW - now)
            if pause_left() > 0:
                return False
        return True


def retry_gate(
    pauses: PauseBoard, limiter: RateLimiter, project: str = DEFAULT_PROJECT
) -> Callable[[str], Awaitable[bool]]:
    """What an in-request retry of a ``kind`` poll of ``project`` waits for (that project's
    ``UpstreamClient``'s ``before_retry``; ``limiter`` is the project's): False under a
    pause of the project, even one taken while the first try was failing (the watch is
    tried again after it instead); else True once a rate slot is taken."""

    async def gate(kind: str) -> bool:
        if pauses.left(project, kind) > 0:
            return False
        await limiter.acquire(lambda: pauses.left(project, kind))
        return True

    return gate
