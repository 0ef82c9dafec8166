"""The domain: jobs, their states and outcomes, and how a job is shown. No I/O here."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal
from urllib.parse import urlsplit, urlunsplit

Kind = Literal["video", "document"]
KINDS: Final = ("video", "document")

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

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def new_job_id(now: float | None = None) -> str:
    """``job_`` and a ULID: 48 bits of milliseconds then 80 random bits, Crockford base32."""
    ms = int((time.time() if now is None else now) * 1000)
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "job_" + "".join(reversed(chars))


def rfc3339(ts: float | None) -> str | None:
    """Seconds since the epoch as RFC 3339 UTC with ``Z`` (milliseconds kept)."""
    if ts is None:
        return None
    dt = datetime.fromtimestamp(ts, UTC)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    ms = dt.microsecond // 1000
    return f"{text}.{ms:03d}Z" if ms else f"{text}Z"


def compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    """One spelling per JSON value, for comparing metadata (``1``, ``1.0`` and ``true`` differ)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


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
            "kind": self.kind,
            "token": self.token,
            "callback_url": redact_url(self.callback_url),
            "metadata": json.loads(self.metadata) if self.metadata is not None else None,
            "state": self.state,
            "outcome": self.outcome,
            "upstream": {
                "status": self.upstream_status,
                "error": self.upstream_error,
                "result": (
                    json.loads(self.upstream_result) if self.upstream_result is not None else None
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

    def to_api(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "at": rfc3339(self.at),
            "duration_ms": self.duration_ms,
            "response_status": self.response_status,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class NewJob:
    """A validated registration, before the store gives it an id."""

    tenant: str
    kind: str
    token: int
    callback_url: str
    metadata: str | None  # compact JSON text
