"""A local stand-in for Uploadcare's conversion API. A development tool, not Uploadcare.

It serves ``POST /convert/{kind}/`` and ``GET /convert/{kind}/status/{token}/`` shaped
like the recorded answers in ``tests/fixtures/uploadcare``: jobs move ``pending`` ->
``processing`` -> ``finished`` (or ``failed`` / ``canceled`` with configured odds) as its
clock advances. It checks ``Accept`` (406), both auth schemes (401) and can throttle (429).

Tests drive it through the ``FakeUpstream`` object stored on the app under ``FAKE``::

    async with running(FakeConfig(seed=1, clock=clock)) as server:
        fake = server.fake                      # same as server.app[FAKE]
        token = fake.add_job("video", outcome="failed", duration=5)
        fake.respond_next(429, retry_after=2)   # the next status request is throttled
        ...                                      # point the code under test at server.url
        assert [r.status for r in fake.status_requests(token=token)] == [429, 200]

Processing order for a status request: a queued canned response (``respond_next``) wins
over everything; then ``Accept`` (406), authentication (401), throttling (429), a
disabled kind (400), an unknown token (404), the job's status (200). ``POST`` requests
take the same checks without canned responses. Every request is recorded in
``FakeUpstream.requests``. Signed requests must carry a ``Date`` header, but how far it
is from now is not checked (Uploadcare may; the fake's clock is often simulated).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import json
import math
import random
import re
import signal
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
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
    "FakeUpstream",
    "RequestRecord",
    "RunningFake",
    "add_arguments",
    "config_from_args",
    "create_app",
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
    """

    public_key: str = DEFAULT_PUBLIC_KEY
    secret_key: str = DEFAULT_SECRET_KEY
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

    def __post_init__(self) -> None:
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


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request the fake received and what it answered.

    ``at`` is the fake's ``clock``; ``monotonic`` is ``time.monotonic()``, for tests whose
    clock is simulated but that also need real time. ``kind``/``token`` are None when the
    path holds none (``token`` also when not a number). ``status`` is None when the
    connection was reset without an answer. ``auth`` is the scheme the request claimed.
    ``canned`` marks answers taken from ``respond_next``.
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


@dataclass(frozen=True, slots=True)
class CannedResponse:
    """A queued answer for status requests (``respond_next``, ``reset_next``).

    ``reset`` drops the connection instead of answering; ``status`` is then unused.
    """

    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0
    reset: bool = False
    kind: Kind | None = None
    token: int | None = None

    def matches(self, kind: str, token: int | None) -> bool:
        return (self.kind is None or self.kind == kind) and (
            self.token is None or self.token == token
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


class FakeUpstream:
    """State and test hooks of one fake upstream app (``app[FAKE]``).

    Hooks:

    - ``add_job(kind, outcome=..., duration=...) -> token``: a job with a forced outcome.
    - ``respond_next(status, times=..., retry_after=..., delay=..., ...)``: canned answers
      for the next status requests (429, 5xx, 401, slow answers); ``reset_next(...)``:
      connection resets instead.
    - ``requests`` / ``status_requests(kind=, token=)``: the request log.
    - ``set_throttle(rps, burst)``, ``set_disabled_kinds(kinds)``: change behaviour live.
    - ``jobs`` / ``job(kind, token)`` / ``status_of(kind, token)``: inspect jobs.
    """

    def __init__(self, config: FakeConfig) -> None:
        self.config = config
        self.clock = config.clock
        self.requests: list[RequestRecord] = []
        self.jobs: dict[tuple[Kind, int], FakeJob] = {}
        self._tokens: set[int] = set()
        self._rng = random.Random(config.seed)
        self._canned: list[_Queued] = []
        self._bucket: _Bucket | None = None
        self._disabled: frozenset[Kind] = frozenset(config.disabled_kinds)
        self.set_throttle(config.throttle_rps, config.throttle_burst)

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
    ) -> int:
        """Creates a job as if converted now and returns its token.

        ``duration`` (default: random within the config bounds) is when it reaches
        ``outcome``; ``math.inf`` keeps it going forever. ``pending_for`` (default 30% of
        the duration) is how long it says ``pending`` before ``processing``; 0 skips that.
        ``outcome`` ``"cancelled"`` forces that spelling. ``error`` replaces the sentence
        a ``failed`` job reports. ``token`` picks the token (it must be unused).
        """
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
            kind,
            outcome=outcome,
            duration=duration,
            pending_for=pending_for,
            error=error,
            token=token,
            path=path,
        ).token

    def job(self, kind: Kind, token: int) -> FakeJob:
        return self.jobs[(kind, token)]

    def status_of(self, kind: Kind, token: int) -> WireStatus:
        """What a status request for this job would say now (KeyError when unknown)."""
        return self.jobs[(kind, token)].status_at(self.clock())

    def _random_job(self, kind: Kind, path: str) -> FakeJob:
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
            kind, outcome=outcome, duration=duration, pending_for=pending_for, path=path
        )

    def _new_job(
        self,
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
            token = self._fresh_token()
        elif token < 1 or token in self._tokens:
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
        self.jobs[(kind, token)] = job
        self._tokens.add(token)
        return job

    def _fresh_token(self) -> int:
        while True:  # tokens are unique across kinds, like Uploadcare's
            token = self._rng.randint(10_000_000, 999_999_999)
            if token not in self._tokens:
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
    ) -> None:
        """Answers the next ``times`` status requests with ``status``, ahead of any check.

        Queued answers are used first in, first out; one limited to ``kind`` and/or
        ``token`` is skipped by requests it does not match. The body defaults to
        Uploadcare's text for the status (``{"detail": ...}``; 503 plain text); ``detail``
        replaces the text, ``body`` the whole body (a mapping is sent as JSON). For a 400
        limited to a ``kind`` the default text names that kind's feature. ``retry_after``
        becomes the ``Retry-After`` header (a 429 without it has none, to exercise the
        client's default). ``delay`` waits that many real seconds before answering (for
        timeouts; the handler is cancelled if the client gives up first). A 200 needs a
        ``body``.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        if not 100 <= status <= 599:
            raise ValueError("status must be an HTTP status code")
        if status == 200 and body is None:
            raise ValueError("a canned 200 needs a body")
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
        )
        self._canned.append(_Queued(canned, times))

    def reset_next(
        self,
        *,
        times: int = 1,
        delay: float = 0.0,
        kind: Kind | None = None,
        token: int | None = None,
    ) -> None:
        """Drops the connection of the next ``times`` status requests without an answer.

        Queued with, and consumed in the same order as, ``respond_next`` answers; the
        request log shows these with ``status`` None.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        canned = CannedResponse(
            status=0, body=b"", content_type="", delay=delay, reset=True, kind=kind, token=token
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

    def _take_canned(self, kind: str, token: int | None) -> CannedResponse | None:
        for i, queued in enumerate(self._canned):
            if queued.response.matches(kind, token):
                queued.remaining -= 1
                if queued.remaining == 0:
                    del self._canned[i]
                return queued.response
        return None

    # Live behaviour

    def set_throttle(self, rps: float | None, burst: float | None = None) -> None:
        """Throttles above ``rps`` requests per second (None: never). Starts with a full bucket."""
        if rps is None:
            self._bucket = None
            return
        if not rps > 0:
            raise ValueError("rps must be positive")
        capacity = burst if burst is not None else max(1.0, rps)
        self._bucket = _Bucket(rps, capacity, capacity, self.clock())

    def set_disabled_kinds(self, kinds: frozenset[Kind]) -> None:
        """Kinds whose requests answer 400 "... conversion feature is not available ..."."""
        self._disabled = frozenset(kinds)

    # Request log

    def status_requests(
        self, kind: str | None = None, token: int | None = None
    ) -> list[RequestRecord]:
        """Logged ``GET .../status/...`` requests, optionally for one kind and/or token."""
        return [
            r
            for r in self.requests
            if r.method == "GET"
            and "/status/" in r.path
            and (kind is None or r.kind == kind)
            and (token is None or r.token == token)
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
            )
        )
        excess = len(self.requests) - self.config.request_log_limit
        # Trimmed in batches: deleting from the front of a list costs its whole length.
        if excess > self.config.request_log_limit // 10:
            del self.requests[:excess]

    def _check(self, request: web.Request, body: bytes, kind: Kind) -> web.Response | None:
        """The checks every API request goes through, in Uploadcare's (DRF's) order."""
        if not _accepts(request.headers.get("Accept", "")):
            return _detail(406, DETAIL_BAD_ACCEPT, content_type=JSON_TYPE)
        problem = self._authenticate(request, body)
        if problem is not None:
            return _detail(401, problem, headers={"WWW-Authenticate": 'Uploadcare realm="api"'})
        if self._bucket is not None:
            wait = self._bucket.take(self.clock())
            if wait is not None:
                return _detail(429, _throttled_detail(wait), headers={"Retry-After": str(wait)})
        if kind in self._disabled:
            return _detail(400, _feature_unavailable(kind))
        return None

    def _authenticate(self, request: web.Request, body: bytes) -> str | None:
        """None when the credentials are right, else the 401 detail."""
        header = request.headers.get("Authorization", "")
        scheme, _, credentials = header.partition(" ")
        public, sep, proof = credentials.strip().partition(":")
        if scheme not in ("Uploadcare", "Uploadcare.Simple") or not sep:
            return DETAIL_BAD_CREDENTIALS
        if not hmac.compare_digest(public.encode(), self.config.public_key.encode()):
            return f"Public key {public} not found."
        if scheme == "Uploadcare.Simple":
            if hmac.compare_digest(proof.encode(), self.config.secret_key.encode()):
                return None
            return DETAIL_SECRET_NOT_FOUND
        date = request.headers.get("Date")
        if not date:
            return DETAIL_BAD_CREDENTIALS
        expected = sign(
            self.config.secret_key,
            request.method,
            body,
            request.headers.get("Content-Type", ""),
            date,
            request.raw_path,
        )
        if hmac.compare_digest(proof.encode(), expected.encode()):
            return None
        return DETAIL_BAD_SIGNATURE

    async def handle_status(self, request: web.Request) -> web.StreamResponse:
        kind = _kind(request)
        raw_token = request.match_info["token"]
        token = int(raw_token) if raw_token.isascii() and raw_token.isdigit() else None
        canned = self._take_canned(kind, token)
        if canned is not None:
            return await self._give_canned(request, canned, kind, token)
        response = self._check(request, b"", kind)
        if response is None:
            job = self.jobs.get((kind, token)) if token is not None else None
            if job is None:
                response = _detail(404, DETAIL_NOT_FOUND)
            else:
                response = _json(200, job.body_at(self.clock()))
        self._record(request, response.status, kind=kind, token=token)
        return response

    async def _give_canned(
        self, request: web.Request, canned: CannedResponse, kind: str, token: int | None
    ) -> web.StreamResponse:
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
        response = web.Response(
            status=canned.status, body=canned.body, headers=dict(canned.headers)
        )
        response.content_type = canned.content_type
        return response

    async def handle_convert(self, request: web.Request) -> web.StreamResponse:
        kind = _kind(request)
        body = await request.read()
        response = self._check(request, body, kind)
        if response is None:
            response = self._convert(kind, body)
        self._record(request, response.status, kind=kind, token=None)
        return response

    def _convert(self, kind: Kind, body: bytes) -> web.Response:
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
            job = self._random_job(kind, path)
            entry: dict[str, Any] = {
                "original_source": path,
                "token": job.token,
                "uuid": job.result["uuid"],
            }
            if kind == "video":
                entry["thumbnails_group_uuid"] = job.result["thumbnails_group_uuid"]
            results.append(entry)
        return _json(200, {"result": results, "problems": problems}, content_type=JSON_TYPE)


# --- HTTP helpers ------------------------------------------------------------------------


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
            note="development tool: a stand-in for Uploadcare's conversion API, not Uploadcare",
        )
        await asyncio.Event().wait()


def _duration(text: str) -> float:
    """Seconds from ``2.5``, ``250ms``, ``5s``, ``2m`` or ``1h`` (zero allowed)."""
    try:
        return parse_duration(text, allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
        "--public-key", default=DEFAULT_PUBLIC_KEY, help="public key to accept (%(default)s)"
    )
    parser.add_argument(
        "--secret-key",
        default=DEFAULT_SECRET_KEY,
        help="secret key to accept, for both auth schemes (default: the demo key)",
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
        help="answer 429 with Retry-After above this many requests per second (default: never)",
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
        help="answer 400 'conversion feature is not available' for this kind (repeatable)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for reproducible runs")


def config_from_args(args: argparse.Namespace) -> FakeConfig:
    """A ``FakeConfig`` from the flags of ``add_arguments`` (ValueError when inconsistent)."""
    return FakeConfig(
        public_key=args.public_key,
        secret_key=args.secret_key,
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
