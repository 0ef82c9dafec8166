"""What one poll's answer means: the record to commit, the pause to take or lift, the events.

``decide_poll`` is pure: no I/O, no logging, no metrics, the time and the randomness passed
in. The scheduler asks Uploadcare, calls it, applies the pause change to its
``PauseBoard``, turns the events into log lines and metrics, and commits the record.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, TypeAlias

from bridge import pollplan
from bridge.model import (
    NOT_FOUND_LIMIT,
    TERMINAL_STATUSES,
    PollRecord,
    WatchWork,
    compact_json,
    not_found_error,
)
from bridge.pacing import Pause, TakePause, rejected_key, throttled_key
from bridge.upstream import (
    Garbage,
    NotFound,
    Observation,
    Rejected,
    Status,
    Throttled,
    Transient,
    skew_sentence,
)

__all__ = ["THROTTLED_REASON", "decide_poll", "rejected_key", "throttled_key"]

# Every pause is the watch's project's (bridge.pacing's keys): a 429 or a rejection in one
# project holds that project's polls only.
THROTTLED_REASON = "throttled (429)"
# A 401 to a request signed with a Date this far off is the clock's fault, not the keys'
# (Uploadcare refuses a Date more than about 15 minutes off; SPEC says over 5 minutes).
CLOCK_SKEW_LIMIT = 300.0
# The reason starts with this; the pause metric's label is this alone (no label value
# varies with the size of the skew).
CLOCK_SKEW_REASON = "clock skew"


def clock_skew_reason(skew: float) -> str:
    """``clock skew (this host is N s behind Uploadcare)`` (or ``ahead of``)."""
    return f"{CLOCK_SKEW_REASON} ({skew_sentence(skew)})"


@dataclass(frozen=True, slots=True)
class PollBounds:
    """The bounds of the adaptive interval (BRIDGE_POLL_MIN_INTERVAL / _MAX_INTERVAL)."""

    min_interval: float
    max_interval: float


class PauseView(Protocol):
    """What a decision reads of the pauses (``bridge.pacing.PauseBoard`` is one)."""

    def get(self, key: str) -> Pause | None: ...

    def rejections(self, key: str) -> int: ...


# -- what happened: the scheduler turns each into a log line (and a metric) -------------------


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """``upstream_status_changed`` (debug)."""

    status: str
    previous: str | None


@dataclass(frozen=True, slots=True)
class Resumed:
    """``upstream_resumed``: a good answer lifted the rejection pause under ``key``."""

    key: str


@dataclass(frozen=True, slots=True)
class NotFoundSeen:
    """``upstream_not_found``: the ``misses``-th 404 in a row."""

    misses: int
    request_id: str | None = None  # the answer's X-Uploadcare-Request-Id (every event here)


@dataclass(frozen=True, slots=True)
class ThrottledSeen:
    """``upstream_throttled``: a 429 (``bridge_upstream_throttled_total`` counts it as
    the request's hook sees its code)."""

    retry_after: float
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class Paused:
    """``upstream_paused``: a rejection began a pause of ``pause_s`` seconds.

    ``skew`` is set when the pause is for clock skew (a 401 to a request whose ``Date``
    was more than ``CLOCK_SKEW_LIMIT`` off): the log then says to fix the clock, not the keys.
    """

    reason: str
    detail: str
    pause_s: float
    request_id: str | None = None
    skew: float | None = None


@dataclass(frozen=True, slots=True)
class RejectedAgain:
    """``upstream_rejected``: a rejection while its pause is in force (a request that was
    in flight when it began); logged for its request id, no new pause."""

    code: int
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class PollFailed:
    """``upstream_poll_failed``: the ``failures``-th transient failure in a row."""

    reason: str
    failures: int
    request_id: str | None = None


PollEvent: TypeAlias = (
    StatusChanged | Resumed | NotFoundSeen | ThrottledSeen | Paused | RejectedAgain | PollFailed
)


@dataclass(frozen=True, slots=True)
class PollDecision:
    record: PollRecord  # for the store to commit at once
    take: TakePause | None = None  # a pause to take
    lift: tuple[str, ...] = ()  # rejection pauses a good answer ends
    events: tuple[PollEvent, ...] = ()  # in the order they are to be logged


def decide_poll(
    watch: WatchWork,
    observation: Observation,
    *,
    plan: pollplan.Plan | None,
    bounds: PollBounds,
    started: float,
    now: float,
    rand: float,
    pauses: PauseView,
) -> PollDecision:
    """What a poll of ``watch`` that went out at ``started`` and saw ``observation`` by
    ``now`` leads to. ``rand`` is uniform in [0, 1), for the jitter of the next poll."""
    w, obs = watch, observation
    # What a poll without a status answer keeps: the interval, and the counters the branch
    # below does not reset.
    base: dict[str, Any] = {
        "started_at": started,
        "polled_at": now,
        "not_found": w.not_found,
        "failures": w.failures,
        "interval": w.interval,
        "answered": False,
    }
    if isinstance(obs, Status):
        # A status answer for this kind shows requests for it are accepted again.
        keys = (rejected_key(w.project, None), rejected_key(w.project, w.kind))
        lift = tuple(key for key in keys if pauses.rejections(key) > 0)
        events: list[PollEvent] = [Resumed(key) for key in lift]
        changed = obs.status != w.status
        interval = pollplan.next_interval(
            plan,
            elapsed=now - w.armed_at,
            previous=w.interval,
            changed=changed,
            min_interval=bounds.min_interval,
            max_interval=bounds.max_interval,
        )
        learned: tuple[tuple[int, float], ...] = ()
        if obs.is_terminal and w.status not in TERMINAL_STATUSES:
            # Ended since the last poll (or since arming): between the two, it finished.
            ran = (w.last_polled_at or w.armed_at) - w.armed_at
            learned = tuple(pollplan.spread(ran, started - w.armed_at))
        if changed:
            events.append(StatusChanged(obs.status, w.status))
        record = PollRecord(
            started_at=started,
            polled_at=now,
            next_poll_at=now + pollplan.jittered(interval, pollplan.POLL_JITTER, rand),
            not_found=0,
            failures=0,
            interval=interval,
            answered=True,
            status=obs.status,
            error=obs.error,
            result_json=compact_json(obs.result) if obs.result is not None else None,
            changed=changed,
            outcome=obs.status if obs.is_terminal else None,
            outcome_error=obs.error,
            learned=learned,
        )
        return PollDecision(record, lift=lift, events=tuple(events))
    if isinstance(obs, NotFound):
        misses = w.not_found + 1
        gone = misses >= NOT_FOUND_LIMIT
        record = PollRecord(
            **{**base, "not_found": misses, "failures": 0},
            next_poll_at=now + pollplan.jittered(bounds.min_interval, pollplan.POLL_JITTER, rand),
            outcome="not_found" if gone else None,
            outcome_error=not_found_error(w.project) if gone else None,
        )
        return PollDecision(record, events=(NotFoundSeen(misses, obs.request_id),))
    if isinstance(obs, Throttled):
        until = now + obs.retry_after
        slack = pollplan.jittered(pollplan.THROTTLE_SLACK, 1.0, rand)
        return PollDecision(
            PollRecord(**base, next_poll_at=until + slack),
            take=TakePause(throttled_key(w.project), THROTTLED_REASON, until, project=w.project),
            events=(ThrottledSeen(obs.retry_after, obs.request_id),),
        )
    if isinstance(obs, Rejected):
        return _rejected(obs, w.project, base, now, pauses)
    assert isinstance(obs, Transient | Garbage)
    failures = w.failures + 1
    delay = pollplan.failure_backoff(failures, bounds.min_interval, bounds.max_interval)
    return PollDecision(
        PollRecord(
            **{**base, "failures": failures},
            next_poll_at=now + pollplan.jittered(delay, pollplan.POLL_JITTER, rand),
        ),
        events=(PollFailed(obs.reason, failures, obs.request_id),),
    )


def _rejected(
    obs: Rejected, project: str, base: dict[str, Any], now: float, pauses: PauseView
) -> PollDecision:
    key = rejected_key(project, obs.kind)
    # Uploadcare has been seen refusing a signed request's Date with a 400 ("Date should
    # be within 0:15:00 of our server time") as well as the 401 the contract names.
    skewed = obs.code in (400, 401) and obs.skew is not None and abs(obs.skew) > CLOCK_SKEW_LIMIT
    if skewed:
        assert obs.skew is not None
        reason = clock_skew_reason(obs.skew)
    elif obs.kind is not None:
        reason = f"{obs.kind} conversion refused ({obs.code})"
    elif obs.code in (401, 403):
        reason = f"credentials rejected ({obs.code})"
    else:
        reason = f"request rejected ({obs.code})"
    current = pauses.get(key)
    if current is not None and current.until > now:
        # Requests that were in flight when the pause began: the same episode, not a reason
        # to pause longer.
        return PollDecision(
            PollRecord(**base, next_poll_at=current.until),
            events=(RejectedAgain(obs.code, obs.request_id),),
        )
    rejections = pauses.rejections(key) + 1
    pause = pollplan.pause_backoff(rejections)
    until = now + pause
    return PollDecision(
        PollRecord(**base, next_poll_at=until),
        take=TakePause(key, reason, until, obs.kind, rejections, project),
        events=(Paused(reason, obs.detail, pause, obs.request_id, obs.skew if skewed else None),),
    )
