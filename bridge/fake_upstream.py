"""A local stand-in for Uploadcare's conversion API. A development tool, not Uploadcare.

It serves ``POST /convert/{kind}/`` and ``GET /convert/{kind}/status/{token}/`` shaped
like the recorded answers in ``tests/fixtures/uploadcare``: jobs move ``pending`` ->
``processing`` -> ``finished`` (or ``failed`` / ``canceled`` with configured odds) as its
clock advances. It checks ``Accept`` (406), both auth schemes (401) and can throttle (429).

It serves one Uploadcare project per key pair (``FakeConfig.public_key``/``secret_key``,
plus ``extra_keys``): each project has its own tokens (a token of one is 404 in another,
and one number may be a job in both), its own throttle and its own disabled kinds. The
Python hooks take ``project=<public key>``; without it, ``add_job``/``job``/``status_of``
mean the first project, request-log filters and canned answers mean every project, and
``set_throttle``/``set_disabled_kinds`` change every project.

Tests drive it through the ``FakeUpstream`` object stored on the app under ``FAKE``::

    async with running(FakeConfig(seed=1, clock=clock)) as server:
        fake = server.fake                      # same as server.app[FAKE]
        token = fake.add_job("video", outcome="failed", duration=5)
        fake.respond_next(429, retry_after=2)   # the next status request is throttled
        ...                                      # point the code under test at server.url
        assert [r.status for r in fake.status_requests(token=token)] == [429, 200]

Processing order for a status request: a queued canned response (``respond_next``) wins
over everything; then ``Accept`` (406), authentication (401: an unknown public key, a
wrong secret or signature, or a signed request whose ``Date`` is more than 15 minutes
from the fake's wall clock), throttling (429), a disabled kind (400), an unknown token
(404), the job's status (200). ``POST`` requests take the same checks without canned
responses. Every answer carries ``Date`` (the fake's wall clock, ``wall_clock()`` plus
``clock_offset``) and a fresh ``X-Uploadcare-Request-Id``; every request is recorded in
``FakeUpstream.requests`` with that id.

Two clocks: ``clock`` drives the jobs and the throttle (tests often simulate it);
``wall_clock`` (default ``time.time``) plus ``clock_offset`` is the fake's idea of the
date, for ``Date`` headers and the 15-minute rule, so a test can make the bridge's host
look skewed without touching the jobs' clock.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import hmac
import json
import math
import random
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Final, Literal, TypeAlias

import structlog
from aiohttp import web

from bridge.settings import parse_duration
from bridge.upstream import ACCEPT, Kind, sign

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "DESCRIPTION",
    "FAKE",
    "CannedResponse",
    "FakeConfig",
    "FakeJob",
    "FakeProject",
    "FakeUpstream",
    "RequestRecord",
    "RunningFake",
    "add_arguments",
    "config_from_args",
    "create_app",
    "parse_keys",
    "project_keys",
    "run_from_args",
    "running",
    "serve",
]

Outcome: TypeAlias = Literal["finished", "failed", "canceled", "cancelled"]
WireStatus: TypeAlias = Literal[
    "pending", "processing", "finished", "failed", "canceled", "cancelled"
]

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PORT: Final = 8081
DEFAULT_PUBLIC_KEY: Final = "demopublickey"
DEFAULT_SECRET_KEY: Final = "demosecretkey"
DESCRIPTION: Final = (
    "Development tool: a local stand-in for Uploadcare's conversion API, for demos, "
    "development and benchmarks. It is not Uploadcare and converts nothing."
)
KINDS: Final[tuple[Kind, ...]] = ("video", "document")
JSON_TYPE: Final = "application/json"

# Texts from Uploadcare's published reference (tests/fixtures/uploadcare).
DETAIL_BAD_CREDENTIALS: Final = "Incorrect authentication credentials."
DETAIL_SECRET_NOT_FOUND: Final = "Secret key not found."
DETAIL_BAD_SIGNATURE: Final = "Invalid signature. Please check your Secret key."
DETAIL_NOT_FOUND: Final = "Not found."
DETAIL_BAD_ACCEPT: Final = (
    "Incorrect Accept header provided. Make sure to specify API version. "
    "Refer to REST API docs for details."
)
DETAIL_SIMPLE_OVER_HTTP: Final = (
    "Simple authentication over HTTP is forbidden. Please, use HTTPS or signed requests instead."
)
DETAIL_FORBIDDEN: Final = "You do not have permission to perform this action."
# Uploadcare's text for a signed request whose Date is too far from its clock.
DETAIL_DATE_SKEW: Final = "Date should be within 0:15:00 of our server time"
DATE_TOLERANCE: Final = 15 * 60.0  # seconds a signed request's Date may be off
REQUEST_ID_HEADER: Final = "X-Uploadcare-Request-Id"
TEXT_SERVICE_ERROR: Final = "Conversion service error."
_FAILED_ERRORS: Final[Mapping[Kind, str]] = {
    "video": "Video conversion failed: the source file is not a supported video.",
    "document": "Document conversion failed: the source file could not be read.",
}
_THUMBS: Final = re.compile(r"/thumbs~(\d+)/")
_log = structlog.get_logger(__name__)


def _feature_unavailable(kind: Kind) -> str:
    return f"{kind.capitalize()} conversion feature is not available for this project."


def _throttled_detail(seconds: int) -> str:
    return f"Request was throttled. Expected available in {seconds} second."


# --- Configuration and records -----------------------------------------------------------


@dataclass
class FakeConfig:
    """How the fake behaves. Durations are seconds of ``clock``; odds are 0..1.

    A conversion takes ``uniform(min_duration, max_duration)``, the first 20-50% of it
    ``pending`` and the rest ``processing``. Its outcome is ``failed`` with odds
    ``failed_rate``, ``canceled`` with odds ``canceled_rate`` (spelled ``cancelled`` with
    odds ``cancelled_spelling``), else ``finished``. Above ``throttle_rps`` requests per
    second (a token bucket holding ``throttle_burst``, default ``max(1, throttle_rps)``)
    requests get 429. A kind in ``disabled_kinds`` answers 400 "... conversion feature is
    not available ...". ``seed`` makes tokens, UUIDs, durations and outcomes reproducible.
    The request log keeps about the latest ``request_log_limit`` records, so a long benchmark
    run does not grow it without bound.

    Projects: ``public_key``/``secret_key`` is the first project; ``extra_keys`` (public key
    -> secret key) adds more, each with its own tokens, its own throttle bucket (same
    ``throttle_rps``/``throttle_burst``) and ``disabled_kinds``. ``keys`` lists them all.

    Date: the fake's wall clock is ``wall_clock() + clock_offset`` (seconds, either sign).
    It stamps every answer's ``Date`` and is what a signed request's ``Date`` must be
    within 15 minutes of.
    """

    public_key: str = DEFAULT_PUBLIC_KEY
    secret_key: str = DEFAULT_SECRET_KEY
    extra_keys: Mapping[str, str] = field(default_factory=dict)
    min_duration: float = 3.0
    max_duration: float = 12.0
    failed_rate: float = 0.1
    canceled_rate: float = 0.05
    cancelled_spelling: float = 0.5
    throttle_rps: float | None = None
    throttle_burst: float | None = None
    disabled_kinds: frozenset[Kind] = frozenset()
    seed: int | None = None
    clock: Callable[[], float] = time.monotonic
    request_log_limit: int = 100_000
    clock_offset: float = 0.0
    wall_clock: Callable[[], float] = time.time

    @property
    def keys(self) -> dict[str, str]:
        """Every project's keys, public -> secret; the first is ``public_key``'s."""
        return {self.public_key: self.secret_key, **self.extra_keys}

    def __post_init__(self) -> None:
        self.extra_keys = dict(self.extra_keys)
        for public, secret in [(self.public_key, self.secret_key), *self.extra_keys.items()]:
            _check_key_pair(public, secret)
        if self.public_key in self.extra_keys:
            raise ValueError(f"public key {self.public_key} is given twice")
        if not math.isfinite(self.clock_offset):
            raise ValueError("clock_offset must be a finite number of seconds")
        if not 0 <= self.min_duration <= self.max_duration or math.isinf(self.max_duration):
            raise ValueError("durations must satisfy 0 <= min_duration <= max_duration < inf")
        for name in ("failed_rate", "canceled_rate", "cancelled_spelling"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.failed_rate + self.canceled_rate > 1.0:
            raise ValueError("failed_rate + canceled_rate must not exceed 1")
        if self.throttle_rps is not None and not self.throttle_rps > 0:
            raise ValueError("throttle_rps must be positive")
        if self.throttle_burst is not None and not self.throttle_burst >= 1:
            raise ValueError("throttle_burst must be at least 1")
        if self.request_log_limit < 1:
            raise ValueError("request_log_limit must be at least 1")
        if not set(self.disabled_kinds) <= set(KINDS):
            raise ValueError("disabled_kinds may hold only 'video' and 'document'")


def _check_key_pair(public: str, secret: str) -> None:
    """ValueError unless both keys are non-empty and fit ``Authorization``: no space in
    either, no ``:`` in the public key. The message never shows a key."""
    if not public or ":" in public or any(c.isspace() for c in public):
        raise ValueError("a public key must be non-empty, without spaces or ':'")
    if not secret or any(c.isspace() for c in secret):
        raise ValueError("a secret key must be non-empty, without spaces")


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake received and what it answered.

    ``at`` is the fake's ``clock``; ``monotonic`` is ``time.monotonic()``, for tests whose
    clock is simulated but that also need real time. ``kind``/``token`` are None when the
    path holds none (``token`` also when not a number). ``status`` is None when the
    connection was reset without an answer. ``auth`` is the scheme the request claimed.
    ``canned`` marks answers taken from ``respond_next``. ``project`` is the public key of
    the served project the request named (None when it named none the fake serves).
    ``request_id`` is the ``X-Uploadcare-Request-Id`` of the answer, to match a log line
    of the code under test to its request.
    """

    at: float
    monotonic: float
    method: str
    path: str
    kind: str | None
    token: int | None
    status: int | None
    auth: Literal["signed", "simple"] | None
    canned: bool
    project: str | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """A queued answer for status requests (``respond_next``, ``reset_next``).

    ``reset`` drops the connection instead of answering; ``status`` is then unused.
    ``kind``, ``token`` and ``project`` (a public key the request names) narrow which
    requests take it; None matches any.
    """

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    reset: bool = False
    kind: Kind | None = None
    token: int | None = None
    project: str | None = None

    def matches(self, kind: str, token: int | None, project: str | None = None) -> bool:
        return (
            (self.kind is None or self.kind == kind)
            and (self.token is None or self.token == token)
            and (self.project is None or self.project == project)
        )


@dataclass
class FakeJob:
    """One conversion. ``duration`` may be ``math.inf``: it then never ends."""

    kind: Kind
    token: int
    created_at: float
    pending_for: float
    duration: float
    outcome: Outcome
    result: dict[str, str]
    error: str | None
    original_source: str

    def status_at(self, now: float) -> WireStatus:
        elapsed = now - self.created_at
        if elapsed < self.pending_for:
            return "pending"
        if elapsed < self.duration:
            return "processing"
        return self.outcome

    def body_at(self, now: float) -> dict[str, Any]:
        status = self.status_at(now)
        return {
            "status": status,
            "error": self.error if status == "failed" else None,
            "result": dict(self.result),
        }


@dataclass
class _Queued:
    response: CannedResponse
    remaining: int


@dataclass
class _Bucket:
    rate: float
    burst: float
    tokens: float
    updated: float

    def take(self, now: float) -> int | None:
        """Takes one token; or, when there is none, the whole seconds until there is."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return None
        return max(1, math.ceil((1.0 - self.tokens) / self.rate))


# --- The fake and its test hooks ---------------------------------------------------------


@dataclass
class FakeProject:
    """One Uploadcare project the fake serves, named by its public key.

    Its own jobs (``(kind, token) -> FakeJob``; tokens are unique across kinds within a
    project, like Uploadcare's, but not across projects), its own throttle bucket and its
    own disabled kinds. The secret key is read from the config at each request, so a test
    may change ``config.secret_key`` live.
    """

    public_key: str
    jobs: dict[tuple[Kind, int], FakeJob] = field(default_factory=dict)
    disabled: frozenset[Kind] = frozenset()
    bucket: _Bucket | None = field(default=None, repr=False)
    tokens: set[int] = field(default_factory=set, repr=False)


_REQUEST_ID: Final = web.RequestKey("fake_upstream_request_id", str)
# Headers a canned answer set itself, which ``stamp`` leaves alone (lower case).
_CANNED_HEADERS: Final = web.RequestKey("fake_upstream_canned_headers", frozenset[str])


class FakeUpstream:
    """State and test hooks of one fake upstream app (``app[FAKE]``).

    Hooks (``project`` is a public key; see the module's docstring for what None means):

    - ``add_job(kind, outcome=..., duration=..., project=...) -> token``: a job with a
      forced outcome.
    - ``respond_next(status, times=..., retry_after=..., delay=..., project=..., ...)``:
      canned answers for the next status requests (429, 5xx, 401, slow answers);
      ``reset_next(...)``: connection resets instead.
    - ``requests`` / ``status_requests(kind=, token=, project=)``: the request log.
    - ``set_throttle(rps, burst, project=)``, ``set_disabled_kinds(kinds, project=)``,
      ``set_clock_offset(seconds)``: change behaviour live.
    - ``projects`` / ``project(public_key)``: the projects served, in configuration order.
    - ``jobs`` (the first project's) / ``job(kind, token, project=)`` /
      ``status_of(kind, token, project=)``: inspect jobs.
    - ``now()``: the fake's wall clock (with the offset), as its ``Date`` headers say.
    """

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.clock = config.clock
        self.clock_offset = config.clock_offset
        self.requests: list[RequestRecord] = []
        self.projects: dict[str, FakeProject] = {
            public: FakeProject(public, disabled=frozenset(config.disabled_kinds))
            for public in config.keys
        }
        self._rng = random.Random(config.seed)
        self._canned: list[_Queued] = []
        self.set_throttle(config.throttle_rps, config.throttle_burst)

    # Projects and clocks

    def project(self, public_key: str | None = None) -> FakeProject:
        """The project with this public key (KeyError when not served); None: the first."""
        if public_key is None:
            return next(iter(self.projects.values()))
        try:
            return self.projects[public_key]
        except KeyError:
            raise KeyError(f"the fake serves no project with public key {public_key!r}") from None

    def _projects(self, public_key: str | None) -> Iterable[FakeProject]:
        return self.projects.values() if public_key is None else (self.project(public_key),)

    @property
    def jobs(self) -> dict[tuple[Kind, int], FakeJob]:
        """The first project's jobs (``project(key).jobs`` for another's)."""
        return self.project().jobs

    def now(self) -> float:
        """The fake's wall clock: ``wall_clock() + clock_offset``, in Unix seconds."""
        return self.config.wall_clock() + self.clock_offset

    def set_clock_offset(self, seconds: float) -> None:
        """Shifts the fake's wall clock (``Date`` headers and the 15-minute rule)."""
        if not math.isfinite(seconds):
            raise ValueError("the clock offset must be a finite number of seconds")
        self.clock_offset = seconds

    # Jobs

    def add_job(
        self,
        kind: Kind = "video",
        *,
        outcome: Outcome = "finished",
        duration: float | None = None,
        pending_for: float | None = None,
        error: str | None = None,
        token: int | None = None,
        path: str | None = None,
        project: str | None = None,
    ) -> int:
        """Creates a job as if converted now and returns its token.

        ``duration`` (default: random within the config bounds) is when it reaches
        ``outcome``; ``math.inf`` keeps it going forever. ``pending_for`` (default 30% of
        the duration) is how long it says ``pending`` before ``processing``; 0 skips that.
        ``outcome`` ``"cancelled"`` forces that spelling. ``error`` replaces the sentence
        a ``failed`` job reports. ``token`` picks the token (it must be unused in that
        project; another project may hold the same number). ``project`` is the public key
        of the project it belongs to (default: the first).
        """
        owner = self.project(project)
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if outcome not in ("finished", "failed", "canceled", "cancelled"):
            raise ValueError(f"unknown outcome {outcome!r}")
        if duration is None:
            duration = self._rng.uniform(self.config.min_duration, self.config.max_duration)
        if pending_for is None:
            pending_for = duration * 0.3
        if not 0 <= pending_for <= duration:
            raise ValueError("need 0 <= pending_for <= duration")
        return self._new_job(
            owner,
            kind,
            outcome=outcome,
            duration=duration,
            pending_for=pending_for,
            error=error,
            token=token,
            path=path,
        ).token

    def job(self, kind: Kind, token: int, project: str | None = None) -> FakeJob:
        return self.project(project).jobs[(kind, token)]

    def status_of(self, kind: Kind, token: int, project: str | None = None) -> WireStatus:
        """What a status request for this job would say now (KeyError when unknown)."""
        return self.job(kind, token, project).status_at(self.clock())

    def _random_job(self, owner: FakeProject, kind: Kind, path: str) -> FakeJob:
        duration = self._rng.uniform(self.config.min_duration, self.config.max_duration)
        pending_for = duration * self._rng.uniform(0.2, 0.5)
        draw = self._rng.random()
        outcome: Outcome = "finished"
        if draw < self.config.failed_rate:
            outcome = "failed"
        elif draw < self.config.failed_rate + self.config.canceled_rate:
            spelled = self._rng.random() < self.config.cancelled_spelling
            outcome = "cancelled" if spelled else "canceled"
        return self._new_job(
            owner, kind, outcome=outcome, duration=duration, pending_for=pending_for, path=path
        )

    def _new_job(
        self,
        owner: FakeProject,
        kind: Kind,
        *,
        outcome: Outcome,
        duration: float,
        pending_for: float,
        error: str | None = None,
        token: int | None = None,
        path: str | None = None,
    ) -> FakeJob:
        if token is None:
            token = self._fresh_token(owner)
        elif token < 1 or token in owner.tokens:
            raise ValueError(f"token {token} is invalid or already used")
        source_uuid = self._uuid()
        if path is None:
            fmt = "webm" if kind == "video" else "pdf"
            path = f"{source_uuid}/{kind}/-/format/{fmt}/"
        result = {"uuid": self._uuid()}
        if kind == "video":
            match = _THUMBS.search(path + "/")
            result["thumbnails_group_uuid"] = f"{self._uuid()}~{match[1] if match else 1}"
        job = FakeJob(
            kind=kind,
            token=token,
            created_at=self.clock(),
            pending_for=pending_for,
            duration=duration,
            outcome=outcome,
            result=result,
            error=(error or _FAILED_ERRORS[kind]) if outcome == "failed" else None,
            original_source=path,
        )
        owner.jobs[(kind, token)] = job
        owner.tokens.add(token)
        return job

    def _fresh_token(self, owner: FakeProject) -> int:
        while True:  # tokens are unique across kinds within a project, like Uploadcare's
            token = self._rng.randint(10_000_000, 999_999_999)
            if token not in owner.tokens:
                return token

    def _uuid(self) -> str:
        return str(uuid.UUID(int=self._rng.getrandbits(128), version=4))

    # Canned responses

    def respond_next(
        self,
        status: int,
        *,
        times: int = 1,
        retry_after: int | str | None = None,
        detail: str | None = None,
        body: bytes | str | Mapping[str, Any] | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        delay: float = 0.0,
        kind: Kind | None = None,
        token: int | None = None,
        project: str | None = None,
    ) -> None:
        """Answers the next ``times`` status requests with ``status``, ahead of any check.

        Queued answers are used first in, first out; one limited to ``kind``, ``token``
        and/or ``project`` (the public key the request names) is skipped by requests it
        does not match. The body defaults to Uploadcare's text for the status
        (``{"detail": ...}``; 503 plain text); ``detail`` replaces the text, ``body`` the
        whole body (a mapping is sent as JSON). For a 400 limited to a ``kind`` the default
        text names that kind's feature. ``retry_after`` becomes the ``Retry-After`` header
        (a 429 without it has none, to exercise the client's default). ``headers`` may
        replace the ``Date`` and ``X-Uploadcare-Request-Id`` every answer gets. ``delay``
        waits that many real seconds before answering (for timeouts; the handler is
        cancelled if the client gives up first). A 200 needs a ``body``.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if status == 200 and body is None:
            raise ValueError("a canned 200 needs a body")
        if project is not None:
            self.project(project)  # KeyError for a project the fake does not serve
        raw, default_type = self._canned_body(status, retry_after, detail, body, kind)
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        canned = CannedResponse(
            status=status,
            body=raw,
            content_type=content_type or default_type,
            headers=tuple(extra.items()),
            delay=delay,
            kind=kind,
            token=token,
            project=project,
        )
        self._canned.append(_Queued(canned, times))

    def reset_next(
        self,
        *,
        times: int = 1,
        delay: float = 0.0,
        kind: Kind | None = None,
        token: int | None = None,
        project: str | None = None,
    ) -> None:
        """Drops the connection of the next ``times`` status requests without an answer.

        Queued with, and consumed in the same order as, ``respond_next`` answers; the
        request log shows these with ``status`` None.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if project is not None:
            self.project(project)
        canned = CannedResponse(
            status=0,
            body=b"",
            content_type="",
            delay=delay,
            reset=True,
            kind=kind,
            token=token,
            project=project,
        )
        self._canned.append(_Queued(canned, times))

    @staticmethod
    def _canned_body(
        status: int,
        retry_after: int | str | None,
        detail: str | None,
        body: bytes | str | Mapping[str, Any] | None,
        kind: Kind | None,
    ) -> tuple[bytes, str]:
        if isinstance(body, bytes):
            return body, JSON_TYPE
        if isinstance(body, str):
            return body.encode(), JSON_TYPE
        if body is not None:
            return json.dumps(dict(body)).encode(), ACCEPT
        if status >= 500:
            return (detail or TEXT_SERVICE_ERROR).encode(), "text/plain"
        if detail is None:
            seconds = retry_after if isinstance(retry_after, int) else 15
            detail = {
                400: _feature_unavailable(kind) if kind else DETAIL_SIMPLE_OVER_HTTP,
                401: DETAIL_BAD_CREDENTIALS,
                403: DETAIL_FORBIDDEN,
                404: DETAIL_NOT_FOUND,
                406: DETAIL_BAD_ACCEPT,
                429: _throttled_detail(seconds),
            }.get(status, f"HTTP {status}.")
        return json.dumps({"detail": detail}).encode(), ACCEPT

    @property
    def queued_responses(self) -> int:
        """How many canned answers are still to be given."""
        return sum(q.remaining for q in self._canned)

    def clear_responses(self) -> None:
        self._canned.clear()

    def _take_canned(
        self, kind: str, token: int | None, project: str | None
    ) -> CannedResponse | None:
        for i, queued in enumerate(self._canned):
            if queued.response.matches(kind, token, project):
                queued.remaining -= 1
                if queued.remaining == 0:
                    del self._canned[i]
                return queued.response
        return None

    # Live behaviour

    def set_throttle(
        self, rps: float | None, burst: float | None = None, *, project: str | None = None
    ) -> None:
        """Throttles above ``rps`` requests per second (None: never), each project on its
        own; only ``project``'s when given. Starts with a full bucket."""
        if rps is not None and not rps > 0:
            raise ValueError("rps must be positive")
        for owner in self._projects(project):
            if rps is None:
                owner.bucket = None
            else:
                capacity = burst if burst is not None else max(1.0, rps)
                owner.bucket = _Bucket(rps, capacity, capacity, self.clock())

    def set_disabled_kinds(self, kinds: Iterable[Kind], *, project: str | None = None) -> None:
        """Kinds whose requests answer 400 "... conversion feature is not available ...",
        in every project, or only in ``project``."""
        for owner in self._projects(project):
            owner.disabled = frozenset(kinds)

    # Request log

    def status_requests(
        self, kind: str | None = None, token: int | None = None, project: str | None = None
    ) -> list[RequestRecord]:
        """Logged ``GET .../status/...`` requests, optionally for one kind, token and/or
        project (public key)."""
        return [
            r
            for r in self.requests
            if r.method == "GET"
            and "/status/" in r.path
            and (kind is None or r.kind == kind)
            and (token is None or r.token == token)
            and (project is None or r.project == project)
        ]

    def clear_log(self) -> None:
        self.requests.clear()

    # HTTP

    def _record(
        self,
        request: web.Request,
        status: int | None,
        *,
        kind: str | None,
        token: int | None,
        canned: bool = False,
    ) -> None:
        auth = request.headers.get("Authorization", "")
        scheme: Literal["signed", "simple"] | None = None
        if auth.startswith("Uploadcare.Simple "):
            scheme = "simple"
        elif auth.startswith("Uploadcare "):
            scheme = "signed"
        self.requests.append(
            RequestRecord(
                at=self.clock(),
                monotonic=time.monotonic(),
                method=request.method,
                path=request.path_qs,
                kind=kind,
                token=token,
                status=status,
                auth=scheme,
                canned=canned,
                project=self._named_project(request),
                request_id=request_id(request),
            )
        )
        excess = len(self.requests) - self.config.request_log_limit
        # Trimmed in batches: deleting from the front of a list costs its whole length.
        if excess > self.config.request_log_limit // 10:
            del self.requests[:excess]

    def _named_project(self, request: web.Request) -> str | None:
        """The public key in ``Authorization`` when it is a project's (checked or not)."""
        _, _, credentials = request.headers.get("Authorization", "").partition(" ")
        public = credentials.strip().partition(":")[0]
        return public if public in self.projects else None

    def _check(self, request: web.Request, body: bytes, kind: Kind) -> FakeProject | web.Response:
        """The checks every API request goes through, in Uploadcare's (DRF's) order: the
        project the request is for, or the answer refusing it."""
        if not _accepts(request.headers.get("Accept", "")):
            return _detail(406, DETAIL_BAD_ACCEPT, content_type=JSON_TYPE)
        owner = self._authenticate(request, body)
        if isinstance(owner, str):
            return _detail(401, owner, headers={"WWW-Authenticate": 'Uploadcare realm="api"'})
        if owner.bucket is not None:
            wait = owner.bucket.take(self.clock())
            if wait is not None:
                return _detail(429, _throttled_detail(wait), headers={"Retry-After": str(wait)})
        if kind in owner.disabled:
            return _detail(400, _feature_unavailable(kind))
        return owner

    def _authenticate(self, request: web.Request, body: bytes) -> FakeProject | str:
        """The project whose keys the request carries, else the 401 detail."""
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        public, sep, proof = credentials.strip().partition(":")
        if scheme not in ("Uploadcare", "Uploadcare.Simple") or not sep:
            return DETAIL_BAD_CREDENTIALS
        # Every public key is compared, so the time taken does not tell which one matched.
        secret = None
        for known, known_secret in self.config.keys.items():
            if hmac.compare_digest(public.encode(), known.encode()):
                secret = known_secret
        if secret is None:
            return f"Public key {public} not found."
        owner = self.projects[public]
        if scheme == "Uploadcare.Simple":
            if hmac.compare_digest(proof.encode(), secret.encode()):
                return owner
            return DETAIL_SECRET_NOT_FOUND
        date = request.headers.get("Date")
        sent = _parse_date(date) if date else None
        if date is None or sent is None:
            return DETAIL_BAD_CREDENTIALS
        if abs(sent - self.now()) > DATE_TOLERANCE:
            return DETAIL_DATE_SKEW
        expected = sign(
            secret,
            request.method,
            body,
            request.headers.get("Content-Type", ""),
            date,
            request.raw_path,
        )
        if hmac.compare_digest(proof.encode(), expected.encode()):
            return owner
        return DETAIL_BAD_SIGNATURE

    async def handle_status(self, request: web.Request) -> web.StreamResponse:
        kind = _kind(request)
        raw_token = request.match_info["token"]
        token = int(raw_token) if raw_token.isascii() and raw_token.isdigit() else None
        canned = self._take_canned(kind, token, self._named_project(request))
        if canned is not None:
            return await self._give_canned(request, canned, kind, token)
        checked = self._check(request, b"", kind)
        if isinstance(checked, web.Response):
            response = checked
        else:
            job = checked.jobs.get((kind, token)) if token is not None else None
            if job is None:
                response = _detail(404, DETAIL_NOT_FOUND)
            else:
                response = _json(200, job.body_at(self.clock()))
        self._record(request, response.status, kind=kind, token=token)
        return response

    async def _give_canned(
        self, request: web.Request, canned: CannedResponse, kind: str, token: int | None
    ) -> web.StreamResponse:
        headers = dict(canned.headers)
        request[_CANNED_HEADERS] = frozenset(name.lower() for name in headers)
        for name, value in headers.items():
            if name.lower() == REQUEST_ID_HEADER.lower():
                request[_REQUEST_ID] = value  # the log shows the id the answer carries
        # Recorded on arrival: tests ask when requests came, and a delayed answer may
        # never be written if the client gives up first.
        status = None if canned.reset else canned.status
        self._record(request, status, kind=kind, token=token, canned=True)
        if canned.delay > 0:
            await asyncio.sleep(canned.delay)
        if canned.reset:
            if request.transport is not None:
                request.transport.abort()
            # Never reaches the client: the connection is gone.
            return web.Response(status=204)
        response = web.Response(status=canned.status, body=canned.body, headers=headers)
        response.content_type = canned.content_type
        return response

    async def handle_convert(self, request: web.Request) -> web.StreamResponse:
        kind = _kind(request)
        body = await request.read()
        checked = self._check(request, body, kind)
        if isinstance(checked, web.Response):
            response = checked
        else:
            response = self._convert(checked, kind, body)
        self._record(request, response.status, kind=kind, token=None)
        return response

    def _convert(self, owner: FakeProject, kind: Kind, body: bytes) -> web.Response:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return _detail(400, "Request body is not valid JSON.")
        paths = data.get("paths") if isinstance(data, dict) else None
        if not isinstance(paths, list) or not paths:
            return _detail(400, "paths: this field is required and must be a non-empty list.")
        results: list[dict[str, Any]] = []
        problems: dict[str, str] = {}
        for path in paths:
            if not isinstance(path, str) or not _starts_with_uuid(path):
                problems[str(path)] = f'Bad path "{path}". Use "<uuid>/{kind}/-/format/<fmt>/".'
                continue
            job = self._random_job(owner, kind, path)
            entry: dict[str, Any] = {
                "original_source": path,
                "token": job.token,
                "uuid": job.result["uuid"],
            }
            if kind == "video":
                entry["thumbnails_group_uuid"] = job.result["thumbnails_group_uuid"]
            results.append(entry)
        return _json(200, {"result": results, "problems": problems}, content_type=JSON_TYPE)

    async def stamp(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer's ``Date`` (the fake's clock) and ``X-Uploadcare-Request-Id``,
        unless a canned answer set its own (``on_response_prepare``)."""
        kept = request.get(_CANNED_HEADERS, frozenset())
        if "date" not in kept:  # replaces aiohttp's own, which is the real time
            response.headers["Date"] = formatdate(self.now(), usegmt=True)
        if REQUEST_ID_HEADER.lower() not in kept:
            response.headers[REQUEST_ID_HEADER] = request_id(request)


# --- HTTP helpers ------------------------------------------------------------------------


def request_id(request: web.Request) -> str:
    """The ``X-Uploadcare-Request-Id`` of this request's answer: a fresh UUID4, made once."""
    if _REQUEST_ID not in request:
        request[_REQUEST_ID] = str(uuid.uuid4())
    return request[_REQUEST_ID]


def _parse_date(text: str) -> float | None:
    """Unix seconds of an RFC 1123 (or RFC 2822) date; None when it is not one."""
    try:
        parsed = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed.tzinfo is None:  # "-0000": UTC, by RFC 2822
        parsed = parsed.replace(tzinfo=datetime.UTC)
    try:
        return parsed.timestamp()
    except (OverflowError, ValueError):
        return None


def _kind(request: web.Request) -> Kind:
    kind = request.match_info["kind"]
    # The route pattern admits only these two.
    return "video" if kind == "video" else "document"


def _accepts(accept: str) -> bool:
    media_types = (part.split(";", 1)[0].strip().lower() for part in accept.split(","))
    return ACCEPT in media_types


def _starts_with_uuid(path: str) -> bool:
    try:
        uuid.UUID(path.split("/", 1)[0])
    except ValueError:
        return False
    return True


def _json(status: int, payload: Mapping[str, Any], *, content_type: str = ACCEPT) -> web.Response:
    response = web.Response(
        status=status, body=json.dumps(payload).encode(), headers={"Vary": "Accept"}
    )
    response.content_type = content_type
    return response


def _detail(
    status: int,
    detail: str,
    *,
    content_type: str = ACCEPT,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    response = _json(status, {"detail": detail}, content_type=content_type)
    response.headers.update(headers or {})
    return response


FAKE: Final = web.AppKey("fake_upstream", FakeUpstream)


def create_app(config: FakeConfig) -> web.Application:
    """The fake as an aiohttp app; its state and test hooks are ``app[FAKE]``."""
    app = web.Application()
    fake = FakeUpstream(config)
    app[FAKE] = fake
    app.on_response_prepare.append(fake.stamp)
    kinds = "|".join(KINDS)
    app.router.add_post(f"/convert/{{kind:{kinds}}}/", fake.handle_convert)
    app.router.add_get(f"/convert/{{kind:{kinds}}}/status/{{token}}/", fake.handle_status)
    return app


# --- Running it --------------------------------------------------------------------------


@dataclass
class RunningFake:
    """A fake serving on a socket: ``url`` is its base URL (no trailing slash)."""

    app: web.Application
    url: str
    host: str
    port: int
    fake: FakeUpstream = field(repr=False)


@contextlib.asynccontextmanager
async def running(
    config: FakeConfig, host: str = DEFAULT_HOST, port: int = 0
) -> AsyncIterator[RunningFake]:
    """Serves the fake on ``host:port`` (0 picks a free port) for the ``async with`` body."""
    app = create_app(config)
    # Handlers of clients that went away are cancelled, and shutdown does not wait long,
    # so a slow canned answer cannot hold up a test's teardown.
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        yield RunningFake(
            app=app,
            url=f"http://{shown}:{bound_port}",
            host=bound_host,
            port=bound_port,
            fake=app[FAKE],
        )
    finally:
        await runner.cleanup()


async def serve(host: str, port: int, config: FakeConfig) -> None:
    """Serves the fake until cancelled."""
    async with running(config, host, port) as server:
        _log.info(
            "fake_upstream_listening",
            url=server.url,
            public_key=config.public_key,
            public_keys=list(config.keys),
            clock_offset=config.clock_offset,
            note="development tool: a stand-in for Uploadcare's conversion API, not Uploadcare",
        )
        await asyncio.Event().wait()


def _duration(text: str) -> float:
    """Seconds from ``2.5``, ``250ms``, ``5s``, ``2m`` or ``1h`` (zero allowed)."""
    try:
        return parse_duration(text, allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _offset(text: str) -> float:
    """Signed seconds: ``-90``, ``+2.5``, or a duration with a sign (``-20m``, ``1h``)."""
    stripped = text.strip()
    sign = -1.0 if stripped.startswith("-") else 1.0
    try:
        return sign * parse_duration(stripped.lstrip("+-"), allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"want signed seconds or a signed duration (-20m), not {text!r}: {exc}"
        ) from None


def parse_keys(text: str) -> dict[str, str]:
    """``pub:secret[,pub:secret...]`` -> public -> secret, in order (ValueError when bad).

    Messages never show a secret key: only the position of a bad pair, or a public key.
    """
    keys: dict[str, str] = {}
    for number, item in enumerate(text.split(","), start=1):
        public, sep, secret = item.strip().partition(":")
        if not sep:
            raise ValueError(f"pair {number} is not public_key:secret_key")
        try:
            _check_key_pair(public, secret)
        except ValueError as exc:
            raise ValueError(f"pair {number}: {exc}") from None
        if public in keys:
            raise ValueError(f"public key {public} is given twice")
        keys[public] = secret
    return keys


def _keys(text: str) -> dict[str, str]:
    try:
        return parse_keys(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def project_keys(count: int) -> dict[str, str]:
    """Demo keys for ``count`` projects: ``demopublickey:demosecretkey`` first (the fake's
    defaults), then ``demopublickey2:demosecretkey2`` and so on."""
    if count < 1:
        raise ValueError("need at least one project")
    return {
        DEFAULT_PUBLIC_KEY + (str(n) if n > 1 else ""): DEFAULT_SECRET_KEY
        + (str(n) if n > 1 else "")
        for n in range(1, count + 1)
    }


def parse_odds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"odds must be between 0 and 1, not {text!r}")
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, not {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bridge fake-upstream`` flags (and a description, when the parser has none)."""
    if parser.description is None:
        parser.description = DESCRIPTION
    defaults = FakeConfig()
    parser.add_argument(
        "--host", default=DEFAULT_HOST, help=f"address to listen on (default {DEFAULT_HOST})"
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--public-key",
        default=None,
        help=f"public key of the one project served (default {DEFAULT_PUBLIC_KEY})",
    )
    parser.add_argument(
        "--secret-key",
        default=None,
        help="its secret key, for both auth schemes (default: the demo key)",
    )
    parser.add_argument(
        "--keys",
        type=_keys,
        default=None,
        metavar="PUB:SECRET[,PUB:SECRET...]",
        help="serve several projects, one per key pair, each with its own tokens and "
        "throttle (instead of --public-key/--secret-key)",
    )
    parser.add_argument(
        "--clock-offset",
        type=_offset,
        default=0.0,
        metavar="SECONDS",
        help="shift the fake's clock by this much (e.g. 1200 or --clock-offset=-20m): its "
        "Date headers follow, and signed requests more than 15 minutes off it get 401 "
        "(default 0)",
    )
    parser.add_argument(
        "--min-duration",
        type=_duration,
        default=defaults.min_duration,
        help="shortest conversion, e.g. 2.5 or 500ms (default %(default)ss)",
    )
    parser.add_argument(
        "--max-duration",
        type=_duration,
        default=defaults.max_duration,
        help="longest conversion (default %(default)ss)",
    )
    parser.add_argument(
        "--failed-rate",
        type=parse_odds,
        default=defaults.failed_rate,
        help="odds that a conversion fails (default %(default)s)",
    )
    parser.add_argument(
        "--canceled-rate",
        type=parse_odds,
        default=defaults.canceled_rate,
        help="odds that a conversion is canceled (default %(default)s)",
    )
    parser.add_argument(
        "--cancelled-spelling",
        type=parse_odds,
        default=defaults.cancelled_spelling,
        help="odds that a canceled job is reported as 'cancelled' (default %(default)s)",
    )
    parser.add_argument(
        "--throttle-rps",
        type=_positive,
        default=None,
        help="answer 429 with Retry-After above this many requests per second, counted "
        "per project (default: never)",
    )
    parser.add_argument(
        "--throttle-burst",
        type=_positive,
        default=None,
        help="requests allowed at once before throttling (default: max(1, --throttle-rps))",
    )
    parser.add_argument(
        "--disable-kind",
        action="append",
        choices=KINDS,
        default=[],
        help="answer 400 'conversion feature is not available' for this kind, in every "
        "project (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible runs")


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    """A ``FakeConfig`` from the flags of ``add_arguments`` (ValueError when inconsistent)."""
    keys: dict[str, str] | None = args.keys
    if keys is None:
        keys = {args.public_key or DEFAULT_PUBLIC_KEY: args.secret_key or DEFAULT_SECRET_KEY}
    elif args.public_key is not None or args.secret_key is not None:
        raise ValueError("give either --keys or --public-key/--secret-key, not both")
    (public_key, secret_key), *extra = keys.items()
    return FakeConfig(
        public_key=public_key,
        secret_key=secret_key,
        extra_keys=dict(extra),
        clock_offset=args.clock_offset,
        min_duration=args.min_duration,
        max_duration=args.max_duration,
        failed_rate=args.failed_rate,
        canceled_rate=args.canceled_rate,
        cancelled_spelling=args.cancelled_spelling,
        throttle_rps=args.throttle_rps,
        throttle_burst=args.throttle_burst,
        disabled_kinds=frozenset(args.disable_kind),
        seed=args.seed,
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Runs ``bridge fake-upstream`` until SIGINT or SIGTERM; the exit status."""
    try:
        config = config_from_args(args)
    except ValueError as exc:
        _log.error("fake_upstream_bad_configuration", error=str(exc))
        return 2
    try:
        asyncio.run(_serve_until_signalled(args.host, args.port, config))
    except OSError as exc:  # the port is taken, the address is not ours, ...
        _log.error("fake_upstream_cannot_listen", host=args.host, port=args.port, error=str(exc))
        return 1
    return 0


async def _serve_until_signalled(host: str, port: int, config: FakeConfig) -> None:
    task = asyncio.create_task(serve(host, port, config))
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await task
    _log.info("fake_upstream_stopped")
