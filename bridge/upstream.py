"""The Uploadcare status client: one status request, signed, classified.

This module holds no scheduling state. ``UpstreamClient.status`` sends one logical request
(with at most two quick in-request retries of a failed connection) and turns whatever
happened into an ``Observation``; what to do next (poll again, pause, back off) is
``bridge.polldecision``'s to decide.

Secrets: the secret key lives only in a private attribute. It is never part of a repr,
an exception, an ``Observation`` or a log line; error texts Uploadcare sends back are
scrubbed of it, because simple-auth error messages can echo what the caller sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import platform
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from typing import Any, Final, Literal, TypeAlias

import aiohttp
import structlog
from aiohttp_retry import ExponentialRetry, RetryClient
from yarl import URL

from bridge import __version__, ijson
from bridge.model import KINDS, TERMINAL_STATUSES, Kind

__all__ = [
    "ACCEPT",
    "DEFAULT_RETRY_AFTER",
    "MAX_BODY_BYTES",
    "SKEW_WARN_SECONDS",
    "TERMINAL_STATUSES",
    "AuthScheme",
    "Garbage",
    "Kind",
    "NotFound",
    "Observation",
    "Rejected",
    "RequestHook",
    "RetryGate",
    "SkewHook",
    "Status",
    "StatusValue",
    "Throttled",
    "Transient",
    "UpstreamClient",
    "known_status",
    "parse_date",
    "parse_retry_after",
    "parse_status_body",
    "request_id_of",
    "sign",
    "skew_sentence",
    "user_agent_for",
]

# The statuses this contract knows; Uploadcare may add others (``queued``), which are kept
# as given and tracked like ``processing``.
StatusValue: TypeAlias = str
AuthScheme: TypeAlias = Literal["signed", "simple"]
# ``on_request(code, seconds, project)``: one HTTP request sent upstream and how it ended.
RequestHook: TypeAlias = Callable[[str, float, str], None]
# ``on_clock_skew(project, seconds)``: Uploadcare's clock minus ours, from an answer's Date.
SkewHook: TypeAlias = Callable[[str, float], None]
# Awaited before an in-request retry of ``kind``: False withholds the retry (a pause began).
RetryGate: TypeAlias = Callable[[Kind], Awaitable[bool]]

ACCEPT: Final = "application/vnd.uploadcare-v0.7+json"
SIGNED_CONTENT_TYPE: Final = "application/json"
# Uploadcare's status answers are a few hundred bytes; anything near this is not one.
MAX_BODY_BYTES: Final = 64 * 1024
DEFAULT_RETRY_AFTER: Final = 15.0
DETAIL_MAX_CHARS: Final = 200
REDACTED: Final = "***"

# In-request retries are for a connection that failed before any answer; they must stay
# short, since anything longer is the scheduler's business (it backs off durably).
RETRY_ATTEMPTS: Final = 3  # the first try and at most two retries
RETRY_START: Final = 0.05  # ExponentialRetry waits start * 2**n: 0.1 s, then 0.2 s
RETRY_MAX_WAIT: Final = 0.2

_STATUS_VALUES: Final[dict[str, str]] = {
    "pending": "pending",
    "processing": "processing",
    "finished": "finished",
    "failed": "failed",
    "canceled": "canceled",
    # The API's schema spells it this way while its prose says "canceled".
    "cancelled": "canceled",
}
# What a status Uploadcare adds may look like: a short word. Anything else is not a status.
_STATUS_WORD: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,31}")
_REJECTED_CODES: Final = frozenset({400, 401, 403, 406})
_KIND_FEATURE: Final = re.compile(rf"\b({'|'.join(KINDS)})\s+conversion\b", re.IGNORECASE)
_CONTROL_CHARS: Final = re.compile(r"[\x00-\x1f\x7f]+")
_RETRY_AFTER_SECONDS: Final = re.compile(r"\d+(?:\.\d+)?")
# Upstream-controlled text going into log lines: bounded, and no control or format chars.
REQUEST_ID_MAX_CHARS: Final = 128
_UNPRINTABLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
# Clock skew past this is worth a warning (SPEC: 60 s); the warning ends below the lower
# mark, so a skew hovering at the threshold (Date has whole seconds) warns once, not per poll.
SKEW_WARN_SECONDS: Final = 60.0
SKEW_CLEAR_SECONDS: Final = 50.0

_log = structlog.get_logger(__name__)


# --- Observations: what one status request found out -----------------------------------


@dataclass(frozen=True, slots=True)
class Status:
    """A well-formed 200: the conversion's status (``cancelled`` read as ``canceled``).

    A status this contract does not know (``known`` False) is not an error: the watch keeps
    tracking and shows it, and the poll plan's growth rule paces it.
    """

    status: StatusValue
    error: str | None
    result: dict[str, Any] | None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def known(self) -> bool:
        return known_status(self.status)


@dataclass(frozen=True, slots=True)
class NotFound:
    """404: Uploadcare does not know this (kind, token).

    ``request_id`` (on this and every other answer that is not a 2xx) is the answer's
    ``X-Uploadcare-Request-Id``, cleaned for a log line (``request_id_of``), or None. It
    describes the answer, not what it means, so it takes no part in ``==`` (nor does
    ``Rejected.skew``, a measurement).
    """

    request_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Throttled:
    """429: send nothing upstream for ``retry_after`` seconds (never negative)."""

    retry_after: float
    request_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Rejected:
    """400, 401, 403 or 406: credentials or request format are wrong, not the job.

    ``kind`` is set when a 400 names one kind's feature ("Video conversion feature is not
    available for this project."), so only that kind needs pausing. ``detail`` is
    Uploadcare's text, scrubbed of the secret key and truncated.

    ``skew`` is Uploadcare's clock minus this host's (seconds; from this answer's ``Date``,
    else the last answer's) when the request was signed, so that a refusal may be for a
    ``Date`` too far off; None for simple auth (no ``Date`` is checked) or when unknown.
    """

    code: int
    detail: str
    kind: Kind | None = None
    skew: float | None = field(default=None, compare=False)
    request_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Transient:
    """Worth trying again later: 5xx, timeout, connection error, unexpected status."""

    reason: str
    # When an answer came (a 5xx, an unexpected status).
    request_id: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class Garbage:
    """A 200 whose body is not the expected JSON."""

    reason: str
    request_id: str | None = field(default=None, compare=False)


Observation: TypeAlias = Status | NotFound | Throttled | Rejected | Transient | Garbage


# --- Pure helpers ------------------------------------------------------------------------


def sign(secret_key: str, method: str, body: bytes, content_type: str, date: str, uri: str) -> str:
    """Hex HMAC-SHA1 of Uploadcare's string to sign.

    ``METHOD\\nmd5hex(body)\\nContent-Type\\nDate\\nURI``, URI being path plus query.
    """
    string_to_sign = "\n".join(
        (method.upper(), hashlib.md5(body).hexdigest(), content_type, date, uri)
    )
    return hmac.new(
        secret_key.encode("utf-8"), string_to_sign.encode("utf-8"), hashlib.sha1
    ).hexdigest()


def parse_retry_after(value: str | None, now: float) -> float:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date).

    ``now`` is the current Unix time, for HTTP-dates. A date in the past gives 0; a missing
    or unparseable value gives ``DEFAULT_RETRY_AFTER``.
    """
    if value is None:
        return DEFAULT_RETRY_AFTER
    value = value.strip()
    if _RETRY_AFTER_SECONDS.fullmatch(value):
        seconds = float(value)
        return seconds if math.isfinite(seconds) else DEFAULT_RETRY_AFTER
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return DEFAULT_RETRY_AFTER
    if when.tzinfo is None:  # RFC 9110 dates are GMT; a naive parse means no zone was given
        return DEFAULT_RETRY_AFTER
    return max(0.0, when.timestamp() - now)


def parse_date(value: str | None) -> float | None:
    """An HTTP ``Date`` (RFC 9110: IMF-fixdate, GMT) as Unix time; None if absent or unreadable."""
    if value is None:
        return None
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None
    return when.timestamp()


def request_id_of(value: str | None) -> str | None:
    """``X-Uploadcare-Request-Id`` as it may go into a log line: control, format and
    unassigned characters dropped, at most ``REQUEST_ID_MAX_CHARS``; None if nothing is left."""
    if value is None:
        return None
    # Bound the work before filtering: a header may be kilobytes long.
    kept = "".join(
        c
        for c in value[: REQUEST_ID_MAX_CHARS * 4]
        if unicodedata.category(c) not in _UNPRINTABLE_CATEGORIES
    ).strip()
    return kept[:REQUEST_ID_MAX_CHARS] or None


def user_agent_for(public_key: str) -> str:
    """``uploadcare-bridge/<version>/<public key> (Python/<x.y.z>)``: the convention of
    Uploadcare's own clients (the public key is not a secret; it names the project)."""
    return f"uploadcare-bridge/{__version__}/{public_key} (Python/{platform.python_version()})"


def skew_sentence(skew: float) -> str:
    """``this host is N s behind Uploadcare`` (``skew`` positive: their clock is ahead) or
    ``... ahead of Uploadcare``, N in whole seconds."""
    side = "behind" if skew > 0 else "ahead of"
    return f"this host is {round(abs(skew))} s {side} Uploadcare"


def parse_status_body(body: bytes) -> Status | Garbage:
    """A 200 body as ``Status``, or ``Garbage`` saying what is wrong with it."""
    try:
        # I-JSON, as the API takes: what the bridge stores and sends on must be JSON.
        data = ijson.loads(body)
    except ValueError:  # NotIJSON and TooManyDigits are ValueErrors
        return Garbage("body is not JSON")
    if not isinstance(data, dict):
        return Garbage("body is not a JSON object")
    raw_status = data.get("status")
    if not isinstance(raw_status, str) or not _STATUS_WORD.fullmatch(raw_status):
        return Garbage("missing or malformed status")
    error = data.get("error")
    if error is not None and not isinstance(error, str):
        return Garbage("error is not a string or null")
    result = data.get("result")
    if result is not None and not isinstance(result, dict):
        return Garbage("result is not an object or null")
    return Status(status=_STATUS_VALUES.get(raw_status, raw_status), error=error, result=result)


def known_status(status: str) -> bool:
    """Whether ``status`` is one this contract names (after reading ``cancelled``)."""
    return status in _STATUS_VALUES.values()


def _redact(text: str, secret: str) -> str:
    # An empty secret would "occur" between every two characters.
    return text.replace(secret, REDACTED) if secret else text


def _error_detail(body: bytes, secret: str) -> str:
    """A short, single-line, secret-free rendering of an error body."""
    text = body.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        data = None
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        text = data["detail"]
    # Redact before truncating, so a secret cut in two by truncation cannot leak a part.
    text = _CONTROL_CHARS.sub(" ", _redact(text, secret)).strip()
    if len(text) > DETAIL_MAX_CHARS:
        text = text[: DETAIL_MAX_CHARS - 1] + "…"
    return text


def _kind_named(detail: str) -> Kind | None:
    named = {m.lower() for m in _KIND_FEATURE.findall(detail)}
    # Exactly one kind named: that kind's feature is off. None or several: the request's.
    return next((k for k in KINDS if named == {k}), None)


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None when it is longer than ``limit`` bytes (reading stops there)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(limit + 1 - size)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return None


# --- The client --------------------------------------------------------------------------


class _ConnectionFailed(aiohttp.ClientConnectionError):
    """A connection failed before any answer; the only thing retried within a request.

    Raised by the attempt middleware in place of aiohttp's own exception: aiohttp silently
    resends an idempotent request once after a reset, which would hide a request from the
    metrics hook and exceed the retry budget, and it does not resend this class.
    """

    def __init__(self, cause: BaseException) -> None:
        super().__init__(type(cause).__name__)
        self.cause_name = type(cause).__name__


class _RetryWithheld(aiohttp.ClientError):
    """The retry gate said no (a 429 or rejection pause began): nothing more goes out."""


class _Attempts:
    """Reports every HTTP request of one ``status`` call to the hook, exactly once each."""

    def __init__(
        self,
        hook: RequestHook | None,
        kind: Kind,
        before_retry: RetryGate | None = None,
        *,
        project: str = "default",
        now: Callable[[], float] = time.time,
        on_skew: Callable[[float], None] | None = None,
    ) -> None:
        self._hook = hook
        self._kind = kind
        self._before_retry = before_retry
        self._project = project
        self._now = now
        self._on_skew = on_skew
        self._sent = 0
        self._open_since: float | None = None
        self.last_failure: str | None = None  # a Transient reason for the latest failed try
        self.skew: float | None = None  # from the latest answer's Date, when it had one

    async def middleware(
        self, request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        self._sent += 1
        # A retry is a request like any other: it waits for its rate slot too, and a pause
        # taken since the first try (a 429 or a rejection seen by another poll) stops it:
        # the scheduler tries the watch again later, after the pause.
        if (
            self._sent > 1
            and self._before_retry is not None
            and not await self._before_retry(self._kind)
        ):
            raise _RetryWithheld("retry withheld by a pause")
        self._open_since = time.monotonic()
        sent_at = self._now()
        try:
            response = await handler(request)
        except TimeoutError:  # ServerTimeoutError is a ClientConnectionError too: test first
            self.finish("timeout")
            self.last_failure = "timeout"
            raise
        except aiohttp.ClientConnectionError as exc:
            self.finish("error")
            self.last_failure = f"connection error: {type(exc).__name__}"
            raise _ConnectionFailed(exc) from exc
        except aiohttp.ClientError as exc:
            self.finish("error")
            self.last_failure = f"connection error: {type(exc).__name__}"
            raise
        # CancelledError leaves the attempt open: the caller knows whether it was our
        # deadline (a timeout) or someone else's cancellation.
        self._clock_check(response, sent_at)
        return response

    def _clock_check(self, response: aiohttp.ClientResponse, sent_at: float) -> None:
        """Uploadcare's clock minus ours, from the answer's ``Date`` (any status).

        Ours is the middle of the request's flight (sent, headers back), the best guess at
        when Uploadcare stamped it; ``Date`` has whole seconds, so this is good to about one.
        """
        theirs = parse_date(response.headers.get("Date"))
        if theirs is None:
            return
        ours = (sent_at + self._now()) / 2
        self.skew = theirs - ours
        if self._on_skew is not None:
            self._on_skew(self.skew)

    @property
    def open(self) -> bool:
        return self._open_since is not None

    def finish(self, code: str) -> None:
        if self._open_since is None:
            return
        duration = time.monotonic() - self._open_since
        self._open_since = None
        if self._hook is None:
            return
        try:
            self._hook(code, duration, self._project)
        except Exception:  # a metrics hook must never break polling
            _log.exception("upstream_request_hook_failed", code=code)


class UpstreamClient:
    """Asks Uploadcare for the status of one conversion and classifies the answer.

    ``timeout`` bounds a whole ``status`` call, in-request retries included, so that a
    lease longer than it always outlasts the call. ``on_request(code, seconds, project)``
    is called once for every HTTP request actually sent, retries included; ``code`` is the
    HTTP status as a string, ``"timeout"`` or ``"error"``, and ``project`` the name this
    client was given (the Uploadcare project whose keys it holds). A request abandoned
    because the caller cancelled ``status`` is not reported. ``on_clock_skew(project,
    seconds)`` is called for every answer with a readable ``Date``: Uploadcare's clock
    minus this host's (``clock_skew`` keeps the latest); past ``SKEW_WARN_SECONDS`` either
    way the client logs ``upstream_clock_skew`` once, until the skew is small again.
    ``proxy`` is an ``http://`` forward proxy URL every request goes through (its
    user-info is sent as ``Proxy-Authorization``). ``user_agent`` defaults to
    ``user_agent_for(public_key)``. ``before_retry(kind)`` is awaited before
    each in-request retry (the caller's rate limiter and pauses), so retries count against
    the same budget as first tries; when it answers False the retry is not sent and the
    call reports the failure that led to it. The session must have no ``base_url``
    and no ``raise_for_status``; it is shared and never closed here.
    """

    __slots__ = (
        "_auth",
        "_base_url",
        "_before_retry",
        "_now",
        "_on_clock_skew",
        "_on_request",
        "_project",
        "_proxy",
        "_public_key",
        "_retry",
        "_secret_key",
        "_session",
        "_skew",
        "_skew_warned",
        "_timeout",
        "_user_agent",
    )

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        public_key: str,
        secret_key: str,
        auth: AuthScheme = "signed",
        timeout: float = 10.0,
        user_agent: str | None = None,
        on_request: RequestHook | None = None,
        before_retry: RetryGate | None = None,
        now: Callable[[], float] = time.time,
        project: str = "default",
        on_clock_skew: SkewHook | None = None,
        proxy: str | None = None,
    ) -> None:
        if auth not in ("signed", "simple"):
            raise ValueError("auth must be 'signed' or 'simple'")
        if not timeout > 0:
            raise ValueError("timeout must be positive")
        self._session = session
        self._base_url = base_url.rstrip("/")
        self._public_key = public_key
        self._secret_key = secret_key
        self._auth: AuthScheme = auth
        self._timeout = timeout
        self._user_agent = user_agent if user_agent is not None else user_agent_for(public_key)
        self._on_request = on_request
        self._before_retry = before_retry
        self._now = now  # wall clock: the Date header, HTTP-date Retry-After, clock skew
        self._project = project
        self._on_clock_skew = on_clock_skew
        self._skew: float | None = None
        self._skew_warned = False
        # aiohttp turns the URL's user-info into Proxy-Authorization: on each request to
        # an http:// upstream, on the CONNECT to an https:// one (where proxy_headers would
        # reach only the CONNECT, and not a plain request at all).
        self._proxy = URL(proxy) if proxy is not None else None
        self._retry = RetryClient(
            client_session=session,
            retry_options=ExponentialRetry(
                attempts=RETRY_ATTEMPTS,
                start_timeout=RETRY_START,
                max_timeout=RETRY_MAX_WAIT,
                factor=2.0,
                statuses=set(),
                exceptions={_ConnectionFailed},
                retry_all_server_errors=False,  # 5xx is rescheduled durably, not here
            ),
        )

    def __repr__(self) -> str:
        return (
            f"UpstreamClient(project={self._project!r}, base_url={self._base_url!r}, "
            f"public_key={self._public_key!r}, auth={self._auth!r}, timeout={self._timeout!r})"
        )

    @property
    def project(self) -> str:
        return self._project

    @property
    def clock_skew(self) -> float | None:
        """Uploadcare's clock minus this host's, from the latest answer with a ``Date``."""
        return self._skew

    def _saw_skew(self, skew: float) -> None:
        self._skew = skew
        if self._on_clock_skew is not None:
            try:
                self._on_clock_skew(self._project, skew)
            except Exception:  # a metrics hook must never break polling
                _log.exception("upstream_request_hook_failed", code="clock_skew")
        if not self._skew_warned and abs(skew) > SKEW_WARN_SECONDS:
            self._skew_warned = True
            _log.warning(
                "upstream_clock_skew",
                project=self._project,
                skew_s=round(skew, 1),
                message=f"{skew_sentence(skew)}; Uploadcare refuses signed requests whose "
                "Date is more than a few minutes off. Fix this host's clock (NTP: chrony or "
                "systemd-timesyncd)",
            )
        elif self._skew_warned and abs(skew) < SKEW_CLEAR_SECONDS:
            self._skew_warned = False
            _log.info("upstream_clock_skew_resolved", project=self._project, skew_s=round(skew, 1))

    def _headers(self, uri: str) -> dict[str, str]:
        headers = {"Accept": ACCEPT, "User-Agent": self._user_agent}
        if self._auth == "simple":
            headers["Authorization"] = f"Uploadcare.Simple {self._public_key}:{self._secret_key}"
        else:
            date = formatdate(self._now(), usegmt=True)
            signature = sign(self._secret_key, "GET", b"", SIGNED_CONTENT_TYPE, date, uri)
            headers["Date"] = date
            headers["Content-Type"] = SIGNED_CONTENT_TYPE
            headers["Authorization"] = f"Uploadcare {self._public_key}:{signature}"
        return headers

    async def status(self, kind: Kind, token: int) -> Observation:
        """One status request for (kind, token), classified. Never raises for I/O trouble."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r}")
        if isinstance(token, bool) or not isinstance(token, int) or token < 1:
            raise ValueError("token must be a positive integer")
        url = URL(f"{self._base_url}/convert/{kind}/status/{token}/")
        attempts = _Attempts(
            self._on_request,
            kind,
            self._before_retry,
            project=self._project,
            now=self._now,
            on_skew=self._saw_skew,
        )
        try:
            async with asyncio.timeout(self._timeout):
                return await self._send(url, attempts)
        except TimeoutError:
            if attempts.open:
                attempts.finish("timeout")
                return Transient("timeout")
            # Either aiohttp's own timeout (already reported) or our deadline striking while
            # waiting to retry, when the failure that led to the retry is the better reason.
            return Transient(attempts.last_failure or "timeout")
        except _ConnectionFailed as exc:
            return Transient(f"connection error: {exc.cause_name}")
        except _RetryWithheld:
            return Transient(attempts.last_failure or "connection error")
        except aiohttp.ClientError as exc:
            attempts.finish("error")
            return Transient(f"connection error: {type(exc).__name__}")

    async def _send(self, url: URL, attempts: _Attempts) -> Observation:
        async with self._retry.get(
            url,
            headers=self._headers(url.raw_path_qs),
            # Per attempt; the asyncio.timeout around the call bounds all of them together.
            timeout=aiohttp.ClientTimeout(total=self._timeout),
            # A redirect would carry credentials elsewhere and break the signature anyway.
            allow_redirects=False,
            middlewares=(attempts.middleware,),
            proxy=self._proxy,
        ) as response:
            try:
                body = await _read_limited(response, MAX_BODY_BYTES)
            except TimeoutError:
                attempts.finish("timeout")
                return Transient("timeout")
            attempts.finish(str(response.status))
            headers = response.headers
            return self._classify(
                response.status,
                headers.get("Retry-After"),
                body,
                request_id_of(headers.get("X-Uploadcare-Request-Id")),
                attempts.skew,
            )

    def _classify(
        self,
        code: int,
        retry_after: str | None,
        body: bytes | None,
        request_id: str | None = None,
        skew: float | None = None,
    ) -> Observation:
        if code == 200:
            if body is None:
                return Garbage(f"body over {MAX_BODY_BYTES} bytes", request_id)
            parsed = parse_status_body(body)
            if isinstance(parsed, Garbage):
                return Garbage(parsed.reason, request_id)
            return parsed
        if code == 404:
            return NotFound(request_id)
        if code == 429:
            return Throttled(parse_retry_after(retry_after, self._now()), request_id)
        if code in _REJECTED_CODES:
            # Only a signed request carries a Date Uploadcare can find too far off.
            if self._auth == "signed" and skew is None:
                skew = self._skew  # this answer had no Date: the last one's
            elif self._auth != "signed":
                skew = None
            if body is None:
                return Rejected(code, "error body too large", None, skew, request_id)
            detail = _error_detail(body, self._secret_key)
            kind = _kind_named(detail) if code == 400 else None
            return Rejected(code, detail, kind, skew, request_id)
        return Transient(f"http {code}", request_id)
