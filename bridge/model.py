"""The domain: jobs, their states and outcomes, and how a job is shown. No I/O here."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import urlsplit, urlunsplit

import orjson

from bridge.pollplan import jittered

# The conversion kinds, and the statuses a conversion ends in: declared here once, for the
# Uploadcare client, the API and the scheduler alike.
Kind: TypeAlias = Literal["video", "document"]
KINDS: Final[tuple[Kind, ...]] = ("video", "document")
TERMINAL_STATUSES: Final = frozenset({"finished", "failed", "canceled"})

TRACKING: Final = "tracking"
DELIVERING: Final = "delivering"
DELIVERED: Final = "delivered"
UNDELIVERABLE: Final = "undeliverable"
CANCELED: Final = "canceled"
STATES: Final = (TRACKING, DELIVERING, DELIVERED, UNDELIVERABLE, CANCELED)
# States after which a job waits only for retention.
ENDED_STATES: Final = (DELIVERED, UNDELIVERABLE, CANCELED)

OUTCOMES: Final = ("finished", "failed", "canceled", "expired", "not_found")

MAX_TOKEN: Final = 2**53 - 1

# The Uploadcare project UPLOADCARE_PUBLIC_KEY / UPLOADCARE_SECRET_KEY configure, and that
# every job registered before projects existed belongs to.
DEFAULT_PROJECT: Final = "default"

# What an attempt keeps of the receiver's answer: the first KiB of its body, and its
# Content-Type cut to this many characters.
MAX_EXCERPT: Final = 1024
MAX_CONTENT_TYPE: Final = 255

# POST /v1/redeliveries: at most this many jobs per request, and this many by default.
MAX_REDELIVERIES: Final = 10_000
DEFAULT_REDELIVERIES: Final = 1_000

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


# Every pair of base32 digits, so a ULID takes 13 lookups of 10 bits instead of 26 of 5.
_PAIRS = tuple(a + b for a in _CROCKFORD for b in _CROCKFORD)


def new_job_id(now: float | None = None) -> str:
    """``job_`` and a ULID: 48 bits of milliseconds then 80 random bits, Crockford base32."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    return "job_" + "".join([_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def rfc3339(ts: float | None) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC with ``Z`` (milliseconds kept)."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    ms = dt.microsecond // 1000
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def compact_json(value: Any) -> str:
    """Compact JSON text; ValueError for a number that is not finite (``Infinity`` and
    ``NaN`` are not JSON: nothing that stores or sends this text may hold them)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def stored_json(text: str) -> Any:
    """A JSON text the store holds. Rows written before bodies were I-JSON may hold
    ``Infinity`` or ``NaN``: they read as null, as the API has always shown them."""
    return json.loads(text, parse_constant=lambda _: None)


def fast_json(value: Any, default: Callable[[Any], Any] | None = None) -> bytes:
    """Compact UTF-8 JSON, rendered by orjson (a job in a sixth of the json module's time).

    What orjson refuses, integers past 64 bits in a caller's metadata among them, goes to
    the json module, in the same compact form, rather than failing the answer or the line.
    """
    try:
        return orjson.dumps(value, default=default, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:
        text = json.dumps(value, default=default, ensure_ascii=False, separators=(",", ":"))
        return text.encode()


def canonical_json(value: Any) -> str:
    """One spelling per JSON value, for comparing metadata: members in name order, numbers
    by numeric value (``1``, ``1.0`` and ``1e0`` are one number), ``true`` not a number."""
    return json.dumps(_by_value(value), separators=(",", ":"), ensure_ascii=False, sort_keys=True)


def _by_value(value: Any) -> Any:
    """``value`` with every integral float as the int it equals (exactly: 1e300 too)."""
    if isinstance(value, float):
        return int(value) if value.is_integer() else value
    if isinstance(value, dict):
        return {k: _by_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_by_value(v) for v in value]
    return value


def redact_url(url: str) -> str:
    """The URL with any user-info shown as ``***``."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit((parts.scheme, "***@" + host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True, slots=True)
class Job:
    """A job as the store returns it; times are seconds since the epoch."""

    id: str
    tenant: str
    project: str
    kind: str
    token: int
    callback_url: str
    metadata: str | None  # compact JSON text as registered
    state: str
    outcome: str | None
    upstream_status: str | None
    upstream_error: str | None
    upstream_result: str | None  # JSON text
    polls: int
    last_polled_at: float | None
    next_poll_at: float | None
    attempts: int
    last_attempt_at: float | None
    last_response_status: int | None
    last_error: str | None
    next_attempt_at: float | None
    delivered_at: float | None
    created_at: float
    updated_at: float
    deadline_at: float

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "project": self.project,
            "kind": self.kind,
            "token": self.token,
            "callback_url": redact_url(self.callback_url),
            "metadata": stored_json(self.metadata) if self.metadata is not None else None,
            "state": self.state,
            "outcome": self.outcome,
            "upstream": {
                "status": self.upstream_status,
                "error": self.upstream_error,
                "result": (
                    stored_json(self.upstream_result) if self.upstream_result is not None else None
                ),
                "polls": self.polls,
                "last_polled_at": rfc3339(self.last_polled_at),
                "next_poll_at": rfc3339(self.next_poll_at),
            },
            "delivery": {
                "attempts": self.attempts,
                "last_attempt_at": rfc3339(self.last_attempt_at),
                "last_response_status": self.last_response_status,
                "last_error": self.last_error,
                "next_attempt_at": rfc3339(self.next_attempt_at),
                "delivered_at": rfc3339(self.delivered_at),
            },
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "deadline_at": rfc3339(self.deadline_at),
        }


@dataclass(frozen=True, slots=True)
class Attempt:
    n: int
    at: float
    duration_ms: int
    response_status: int | None
    error: str | None
    # The first MAX_EXCERPT bytes of the answer's body, as they came, and its Content-Type
    # (bounded, control characters removed): None for an empty body or no answer.
    response_excerpt: bytes | None = None
    response_content_type: str | None = None

    def to_api(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "at": rfc3339(self.at),
            "duration_ms": self.duration_ms,
            "response_status": self.response_status,
            "error": self.error,
            # Decoded only to be shown: a character cut at the end becomes U+FFFD.
            "response_excerpt": (
                self.response_excerpt.decode("utf-8", "replace") if self.response_excerpt else None
            ),
            "response_content_type": self.response_content_type,
        }


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated registration, before the store gives it an id."""

    tenant: str
    kind: str
    token: int
    callback_url: str
    metadata: str | None  # compact JSON text
    project: str = DEFAULT_PROJECT


# -- pure decisions --------------------------------------------------------------------------
# What a callback carries and when it is tried again. No I/O; randomness passed in. (When a
# watch is polled next is bridge.pollplan's; what a poll's answer means, bridge.polldecision's.)


def webhook_id(job_id: str) -> str:
    """The Standard Webhooks message id: stable for the job across attempts and redeliveries."""
    return "msg_" + job_id.removeprefix("job_")


def retry_delay(
    round_attempts: int,
    schedule: tuple[float, ...],
    retry_after: float | None,
    rand: float,
) -> float | None:
    """The wait before the next callback attempt, or None when the schedule is spent.

    ``round_attempts`` counts the attempts made so far in this round, the failed one
    included. The schedule's delay gets ±20% jitter, then a Retry-After raises the wait
    to at least its value, then the wait is capped at the schedule's longest delay.
    """
    if round_attempts > len(schedule):
        return None
    delay = jittered(schedule[round_attempts - 1], 0.2, rand)
    if retry_after is not None:
        delay = max(delay, retry_after)
    return min(delay, max(schedule))


def callback_body(
    *,
    job_id: str,
    project: str,
    kind: str,
    token: int,
    outcome: str,
    error: str | None,
    result_json: str | None,
    metadata_json: str | None,
    seen_at: float,
) -> bytes:
    """The callback's bytes: fixed when the outcome is recorded, the same on every attempt."""
    body = {
        "type": f"{kind}.conversion.{outcome}",
        "timestamp": rfc3339(seen_at),
        "data": {
            "job_id": job_id,
            "project": project,
            "kind": kind,
            "token": token,
            "status": outcome,
            "error": error,
            "result": stored_json(result_json) if result_json is not None else None,
            "metadata": stored_json(metadata_json) if metadata_json is not None else None,
        },
    }
    return compact_json(body).encode()


EXPIRED_ERROR: Final = "the conversion was still not finished at the job's deadline"
# 404s in a row after which a watch's jobs end as not_found.
NOT_FOUND_LIMIT: Final = 3


def not_found_error(project: str) -> str:
    """The error of a watch's jobs after NOT_FOUND_LIMIT 404s in a row: the token is not
    one of that project's (a staging token registered against production, say)."""
    return f"token not known to Uploadcare project {project}"


NOT_FOUND_ERROR: Final = not_found_error(DEFAULT_PROJECT)


@dataclass(frozen=True, slots=True)
class WatchWork:
    """A claimed (project, kind, token) watch, due for a poll."""

    id: int
    kind: str
    token: int
    due_at: float
    status: str | None
    interval: float | None
    not_found: int
    failures: int
    armed_at: float  # when this round of tracking began: the poll plan's zero
    last_polled_at: float | None
    project: str = DEFAULT_PROJECT


@dataclass(frozen=True, slots=True)
class PollRecord:
    """What one poll found and what follows from it, for the store to commit at once."""

    started_at: float  # when the request went out: only jobs registered by then get an outcome
    polled_at: float
    next_poll_at: float
    not_found: int
    failures: int
    interval: float | None
    answered: bool  # a status answer: status, error and result replace the watch's
    status: str | None = None
    error: str | None = None
    result_json: str | None = None
    changed: bool = False
    outcome: str | None = None
    outcome_error: str | None = None
    # Seen to end: how long the conversion took, as weights on the duration histogram's
    # buckets (bridge.pollplan.spread), added in the same transaction.
    learned: tuple[tuple[int, float], ...] = ()


@dataclass(frozen=True, slots=True)
class DeliveryWork:
    """A claimed callback, due for an attempt."""

    job_id: str
    tenant: str
    kind: str
    token: int
    callback_url: str
    body: bytes
    attempts: int
    round_attempts: int
    outcome_at: float
    due_at: float
    round_started_at: float  # the outcome for the first round, the request for a redelivery

    @property
    def first_round(self) -> bool:
        """Whether this is the outcome's first round of attempts, not a redelivery (a new
        round keeps counting ``attempts`` from where the last one ended)."""
        return self.attempts == self.round_attempts


@dataclass(frozen=True, slots=True)
class Recorded:
    """A job that received its outcome; ``delivery`` when its first attempt was leased
    to the recorder in the same transaction (no claim round trip before it starts)."""

    job_id: str
    kind: str
    token: int
    outcome: str
    delivery: DeliveryWork | None = None
    project: str = DEFAULT_PROJECT


# Standard Webhooks' signature schemes: HMAC-SHA256 with a shared secret, Ed25519.
SIGNATURE_SCHEMES: Final = ("v1", "v1a")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One key that signs a tenant's callbacks.

    ``v1``: ``secret`` is a ``whsec_`` secret and ``public_key`` is None. ``v1a``: ``secret``
    is the ``whsk_`` private key and ``public_key`` its ``whpk_``. ``expires_at`` is when a
    rotated-out key stops signing (None: the current one, or a configured secret).
    ``generated``: the bridge made it (and rotates it); False for a configured secret.
    """

    scheme: str
    secret: str = field(repr=False)
    public_key: str | None = None
    expires_at: float | None = None
    generated: bool = True

    def to_api(self) -> dict[str, Any]:
        """What a receiver configures: never the private key of a ``v1a`` pair."""
        if self.scheme == "v1a":
            return {
                "scheme": self.scheme,
                "public_key": self.public_key,
                "expires_at": rfc3339(self.expires_at),
            }
        return {
            "scheme": self.scheme,
            "secret": self.secret,
            "expires_at": rfc3339(self.expires_at),
        }

    @property
    def shown(self) -> str:
        """The value a receiver verifies with: the secret (v1) or the public key (v1a)."""
        if self.scheme == "v1a":
            return self.public_key or ""
        return self.secret
