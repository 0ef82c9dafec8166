"""Upstream politeness: the pauses that stop all (or one kind's) polling for a while."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bridge.model import rfc3339


@dataclass(frozen=True, slots=True)
class Pause:
    reason: str  # a sentence, e.g. "credentials rejected (401)"; also the metric label
    until: float
    kind: str | None = None  # None: every kind


class PauseBoard:
    """The pauses in force; what ``/readyz`` and ``bridge_upstream_paused`` report."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._pauses: dict[str, Pause] = {}

    def set(self, key: str, pause: Pause) -> None:
        self._pauses[key] = pause

    def clear(self, key: str) -> None:
        self._pauses.pop(key, None)

    def active(self) -> list[Pause]:
        now = self._clock()
        return sorted(
            (p for p in self._pauses.values() if p.until > now), key=lambda p: p.until, reverse=True
        )

    def describe(self) -> dict[str, Any]:
        active = self.active()
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
