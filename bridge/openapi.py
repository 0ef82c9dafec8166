"""The OpenAPI 3.1 document of the ``/v1`` API; a test holds it to the router."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from bridge import __version__
from bridge.model import (
    DEFAULT_PROJECT,
    DEFAULT_REDELIVERIES,
    DELIVERED,
    EXPIRED_ERROR,
    KINDS,
    MAX_CONTENT_TYPE,
    MAX_EXCERPT,
    MAX_REDELIVERIES,
    MAX_TOKEN,
    NOT_FOUND_ERROR,
    OUTCOMES,
    STATES,
    UNDELIVERABLE,
)

_TIME = {"type": "string", "format": "date-time"}
_TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
_JOB_ID = {"type": "string", "pattern": "^job_[0-9a-z]{26}$"}


def _up_to(limit: int) -> str:
    """A regex for the decimal spellings (no sign, no leading zero) of 1 to ``limit``."""
    digits = str(limit)
    width = len(digits)
    alternatives = [f"[1-9][0-9]{{0,{width - 2}}}"] if width > 1 else []
    for i, digit in enumerate(digits):
        low, high = (1 if i == 0 else 0), int(digit) - 1
        if high >= low:
            rest = width - i - 1
            alternatives.append(
                digits[:i]
                + (f"[{low}-{high}]" if high > low else str(low))
                + (f"[0-9]{{{rest}}}" if rest else "")
            )
    alternatives.append(digits)
    return "^(?:" + "|".join(alternatives) + ")$"


# A token as a string: the digits of 1 to 2^53-1, exactly what the server accepts.
_TOKEN_DIGITS = {"type": "string", "pattern": _up_to(MAX_TOKEN)}
# An Uploadcare project's name (BRIDGE_UPLOADCARE_PROJECTS; "default" for
# UPLOADCARE_PUBLIC_KEY's).
_PROJECT: dict[str, Any] = {
    "type": "string",
    "pattern": "^[a-z0-9-]{1,32}$",
    "examples": [DEFAULT_PROJECT],
}
_TOKEN_IN = {
    "description": "1 to 2^53-1: a JSON number written without a fraction or exponent "
    "(1.0 is refused, though JSON Schema counts it as an integer), or a string of its digits",
    "oneOf": [
        {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN},
        _TOKEN_DIGITS,
    ],
}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }


def _ok(
    description: str,
    schema: str,
    headers: dict[str, Any] | None = None,
    links: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
    }
    if headers:
        out["headers"] = headers
    if links:
        out["links"] = links
    return out


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "schema": schema,
        "allowEmptyValue": True,
        "description": "an empty value is the same as none",
    }


_LOCATION = {"Location": {"schema": {"type": "string"}, "description": "the job's URL"}}
# What a registration's answer leads to: every operation on the job, by its id.
_JOB_LINKS = {
    name: {"operationId": operation, "parameters": {"job_id": "$response.body#/id"}}
    for name, operation in (
        ("GetJob", "getJob"),
        ("CancelJob", "cancelJob"),
        ("RedeliverJob", "redeliverJob"),
        ("ListAttempts", "listAttempts"),
    )
}
_JOB_PARAM = {"name": "job_id", "in": "path", "required": True, "schema": _JOB_ID}
# What every /v1 operation may answer besides its own statuses: no bearer secret, a
# database that does not answer, and (a bug, never an input) an internal error.
_AUTH = {
    "401": _problem("missing or wrong bearer secret"),
    "500": _problem("an internal error (a bug: no input is meant to cause it); it is logged"),
    "503": _problem("the database is not available; try again"),
}

_EXPIRES = {
    "type": ["string", "null"],
    "format": "date-time",
    "description": "when a rotated-out key stops signing; null for a current one",
}

_SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "errors": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["field", "message"],
                    "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    },
    "Registration": {
        "type": "object",
        "additionalProperties": False,
        "required": ["token", "callback_url"],
        "properties": {
            "token": _TOKEN_IN,
            "kind": {"enum": list(KINDS), "default": KINDS[0]},
            "project": {
                **_PROJECT,
                "description": "the Uploadcare project the token comes from: one the tenant "
                "may use (BRIDGE_TENANT_PROJECTS). May be omitted when the tenant may use "
                "only one; otherwise 422 'project is required'. A project the tenant may "
                "not use, or that does not exist: 422 'project is not allowed'",
            },
            "callback_url": {
                "type": "string",
                "format": "uri",
                "maxLength": 2048,
                "description": "absolute http(s) URL allowed by the callback network policy "
                "and by the tenant's BRIDGE_CALLBACK_HOSTS entries, if any; "
                "user-info is sent as HTTP Basic credentials and shown as ***",
                "examples": ["https://example.com/hooks/uc"],
            },
            "metadata": {
                "type": ["object", "null"],
                "description": "at most 4 KiB as compact UTF-8 JSON; echoed in the callback",
            },
        },
    },
    "Job": {
        "type": "object",
        "required": [
            "id",
            "project",
            "kind",
            "token",
            "callback_url",
            "metadata",
            "state",
            "outcome",
            "upstream",
            "delivery",
            "created_at",
            "updated_at",
            "deadline_at",
        ],
        "properties": {
            "id": _JOB_ID,
            "project": {**_PROJECT, "description": "the Uploadcare project of the token"},
            "kind": {"enum": list(KINDS)},
            "token": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN},
            "callback_url": {"type": "string", "description": "user-info shown as ***"},
            "metadata": {"type": ["object", "null"]},
            "state": {"enum": list(STATES)},
            "outcome": {"enum": [*OUTCOMES, None]},
            "upstream": {
                "type": "object",
                "required": [
                    "status",
                    "error",
                    "result",
                    "polls",
                    "last_polled_at",
                    "next_poll_at",
                ],
                "properties": {
                    "status": {"type": ["string", "null"]},
                    "error": {"type": ["string", "null"]},
                    "result": {"type": ["object", "null"]},
                    "polls": {"type": "integer", "minimum": 0},
                    "last_polled_at": _TIME_OR_NULL,
                    "next_poll_at": _TIME_OR_NULL,
                },
            },
            "delivery": {
                "type": "object",
                "required": [
                    "attempts",
                    "last_attempt_at",
                    "last_response_status",
                    "last_error",
                    "next_attempt_at",
                    "delivered_at",
                ],
                "properties": {
                    "attempts": {"type": "integer", "minimum": 0},
                    "last_attempt_at": _TIME_OR_NULL,
                    "last_response_status": {"type": ["integer", "null"]},
                    "last_error": {"type": ["string", "null"]},
                    "next_attempt_at": _TIME_OR_NULL,
                    "delivered_at": _TIME_OR_NULL,
                },
            },
            "created_at": _TIME,
            "updated_at": _TIME,
            "deadline_at": _TIME,
        },
    },
    "JobList": {
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Job"}},
            "next_cursor": {"type": ["string", "null"]},
        },
    },
    "Attempts": {
        "type": "object",
        "required": ["items"],
        "properties": {
            "items": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": [
                        "n",
                        "at",
                        "duration_ms",
                        "response_status",
                        "error",
                        "response_excerpt",
                        "response_content_type",
                    ],
                    "properties": {
                        "n": {"type": "integer", "minimum": 1},
                        "at": _TIME,
                        "duration_ms": {"type": "integer", "minimum": 0},
                        "response_status": {"type": ["integer", "null"]},
                        "error": {"type": ["string", "null"]},
                        "response_excerpt": {
                            "type": ["string", "null"],
                            "description": f"the first {MAX_EXCERPT} bytes of the receiver's "
                            "answer body decoded as UTF-8 with replacement (a character cut "
                            "at the end becomes U+FFFD); null for an empty body or no answer",
                        },
                        "response_content_type": {
                            "type": ["string", "null"],
                            "maxLength": MAX_CONTENT_TYPE,
                            "description": "the answer's Content-Type header, control "
                            "characters removed; null when there was none",
                        },
                    },
                },
            }
        },
    },
    "Redeliveries": {
        "type": "object",
        "additionalProperties": False,
        "required": ["state"],
        "properties": {
            "state": {"enum": [UNDELIVERABLE, DELIVERED]},
            "kind": {"enum": list(KINDS)},
            "project": {
                **_PROJECT,
                "description": "only the jobs of this Uploadcare project: one the tenant may "
                "use (422 'project is not allowed' otherwise)",
            },
            "since": {
                **_TIME,
                "description": "RFC 3339; inclusive bound on when the job's last round ended",
            },
            "until": {
                **_TIME,
                "description": "RFC 3339; exclusive bound on when the job's last round ended",
            },
            "limit": {
                "type": "integer",
                "minimum": 1,
                "maximum": MAX_REDELIVERIES,
                "default": DEFAULT_REDELIVERIES,
                "description": "at most this many jobs, the earliest-ended first",
            },
        },
    },
    "RedeliveriesStarted": {
        "type": "object",
        "additionalProperties": False,
        "required": ["count", "remaining"],
        "properties": {
            "count": {
                "type": "integer",
                "minimum": 0,
                "description": "jobs that started a new round",
            },
            "remaining": {
                "type": "integer",
                "minimum": 0,
                "description": "jobs that match as well but are past the limit",
            },
        },
    },
    "SigningSecrets": {
        "type": "object",
        "required": ["secrets", "keys"],
        "properties": {
            "secrets": {
                "type": "array",
                "items": {"type": "string", "pattern": "^whsec_"},
                "description": "the v1 secrets in force (none for a v1a tenant)",
            },
            "keys": {
                "type": "array",
                "items": {"$ref": "#/components/schemas/SigningKey"},
                "description": "every secret or public key in force, the current one first",
            },
        },
    },
    "SigningKey": {
        "description": "a v1 secret or a v1a public key (a private key is never shown)",
        "oneOf": [
            {
                "type": "object",
                "required": ["scheme", "secret", "expires_at"],
                "additionalProperties": False,
                "properties": {
                    "scheme": {"const": "v1"},
                    "secret": {"type": "string", "pattern": "^whsec_"},
                    "expires_at": _EXPIRES,
                },
            },
            {
                "type": "object",
                "required": ["scheme", "public_key", "expires_at"],
                "additionalProperties": False,
                "properties": {
                    "scheme": {"const": "v1a"},
                    "public_key": {"type": "string", "pattern": "^whpk_"},
                    "expires_at": _EXPIRES,
                },
            },
        ],
    },
}

_PATHS: dict[str, Any] = {
    "/v1/jobs": {
        "post": {
            "operationId": "registerJob",
            "summary": "Register a conversion token and the URL to call when it ends",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Registration"}}
                },
            },
            "responses": {
                "201": _ok("registered", "Job", _LOCATION, _JOB_LINKS),
                "200": _ok("the same registration was made before", "Job", _LOCATION, _JOB_LINKS),
                "400": _problem(
                    "the body is not I-JSON (RFC 7493): not UTF-8, not JSON, a member named "
                    "twice, a number that is not finite, a lone surrogate, or nesting deeper "
                    "than 32 levels"
                ),
                **_AUTH,
                "408": _problem("the body did not arrive in time"),
                "409": _problem("registered with other metadata, or by another tenant"),
                "413": _problem("the body is over 64 KiB"),
                "415": _problem("the body is not application/json"),
                "422": _problem(
                    "validation failed, the network policy and the tenant's projects "
                    "included ('project is required', 'project is not allowed'); an unknown "
                    'field is reported once, as field "(unknown)"'
                ),
            },
        },
        "get": {
            "operationId": "listJobs",
            "summary": "This tenant's jobs, newest first",
            # An empty value (``?state=``) is the same as none: allowEmptyValue.
            "parameters": [
                _query("state", {"enum": list(STATES)}),
                _query("kind", {"enum": list(KINDS)}),
                _query("project", _PROJECT),
                _query("token", _TOKEN_DIGITS),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": 500, "default": 100}),
                _query("cursor", {"type": "string"}),
            ],
            "responses": {
                "200": _ok("a page of jobs", "JobList"),
                **_AUTH,
                "422": _problem(
                    'a bad filter; an unknown parameter is reported once, as field "(unknown)"'
                ),
            },
        },
    },
    "/v1/jobs/{job_id}": {
        "parameters": [_JOB_PARAM],
        "get": {
            "operationId": "getJob",
            "responses": {"200": _ok("the job", "Job"), **_AUTH, "404": _problem("no such job")},
        },
        "delete": {
            "operationId": "cancelJob",
            "summary": "Stop tracking or delivering (the conversion itself goes on)",
            "responses": {
                "200": _ok("canceled", "Job"),
                **_AUTH,
                "404": _problem("no such job"),
                "409": _problem("already delivered or undeliverable"),
            },
        },
    },
    "/v1/jobs/{job_id}/redeliver": {
        "parameters": [_JOB_PARAM],
        "post": {
            "operationId": "redeliverJob",
            "summary": "Send the same callback again, in a new round of attempts",
            "responses": {
                "202": _ok("a new round has started", "Job"),
                **_AUTH,
                "404": _problem("no such job"),
                "409": _problem("the job is not delivered or undeliverable"),
            },
        },
    },
    "/v1/jobs/{job_id}/attempts": {
        "parameters": [_JOB_PARAM],
        "get": {
            "operationId": "listAttempts",
            "responses": {
                "200": _ok("every callback attempt", "Attempts"),
                **_AUTH,
                "404": _problem("no such job"),
            },
        },
    },
    "/v1/redeliveries": {
        "post": {
            "operationId": "redeliverJobs",
            "summary": "Bulk redelivery after a receiver outage: a new round for every "
            "matching job, as POST /v1/jobs/{job_id}/redeliver starts one",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Redeliveries"}}
                },
            },
            "responses": {
                "202": _ok("the new rounds have started", "RedeliveriesStarted"),
                "400": _problem(
                    "the body is not I-JSON (RFC 7493): not UTF-8, not JSON, a member named "
                    "twice, a number that is not finite, a lone surrogate, or nesting deeper "
                    "than 32 levels"
                ),
                **_AUTH,
                "408": _problem("the body did not arrive in time"),
                "413": _problem("the body is over 64 KiB"),
                "415": _problem("the body is not application/json"),
                "422": _problem(
                    'validation failed; an unknown field is reported once, as field "(unknown)"'
                ),
            },
        }
    },
    "/v1/signing-secrets": {
        "get": {
            "operationId": "getSigningSecrets",
            "summary": "The secrets that sign this tenant's callbacks",
            "responses": {"200": _ok("the secrets", "SigningSecrets"), **_AUTH},
        }
    },
    "/v1/signing-secrets/rotate": {
        "post": {
            "operationId": "rotateSigningSecret",
            "summary": "Make a new generated secret (or v1a key pair) that signs from now on",
            "description": "The one it replaces keeps signing beside it until "
            "BRIDGE_SECRET_ROTATION_OVERLAP has passed; every replica signs with the new one "
            "within 5 s. No body, or {}.",
            "requestBody": {
                "required": False,
                "content": {"application/json": {"schema": {"type": "object", "maxProperties": 0}}},
            },
            "responses": {
                "201": _ok("the new key (v1: the secret; v1a: the public key)", "SigningKey"),
                "400": _problem("the body is not I-JSON (RFC 7493)"),
                **_AUTH,
                "408": _problem("the body did not arrive in time"),
                "409": _problem(
                    "BRIDGE_WEBHOOK_SECRETS entries sign this tenant's callbacks: they are "
                    "rotated by configuration"
                ),
                "413": _problem("the body is over 64 KiB"),
                "415": _problem("a body that is not application/json"),
                "422": _problem('a body other than {}: reported as field "(unknown)"'),
            },
        }
    },
}


# -- the event catalog: what the bridge POSTs to callback URLs -------------------------------

# Per outcome: what data.error holds, and a sentence for the event's description.
_EVENT_ERRORS: dict[str, tuple[dict[str, Any], str]] = {
    "finished": (
        {"type": ["string", "null"], "description": "Uploadcare's error as given (normally null)"},
        "The conversion finished: data.result holds Uploadcare's result.",
    ),
    "failed": (
        {"type": ["string", "null"], "description": "Uploadcare's error as given"},
        "Uploadcare reported the conversion failed: data.error says why, as Uploadcare put it.",
    ),
    "canceled": (
        {"type": ["string", "null"], "description": "Uploadcare's error as given"},
        "The conversion was canceled at Uploadcare.",
    ),
    "expired": (
        {"type": "string", "description": "a sentence saying why", "examples": [EXPIRED_ERROR]},
        "The conversion was still not finished at the job's deadline (BRIDGE_JOB_DEADLINE).",
    ),
    "not_found": (
        {"type": "string", "description": "a sentence saying why", "examples": [NOT_FOUND_ERROR]},
        "Uploadcare does not know the token in the job's project (it answered 404 three "
        "times in a row); the error names the project.",
    ),
}


def event_type(kind: str, outcome: str) -> str:
    return f"{kind}.conversion.{outcome}"


def _schema_name(kind: str, outcome: str) -> str:
    """``video``, ``not_found`` -> ``VideoConversionNotFound``."""
    words = [kind, "conversion", *outcome.split("_")]
    return "".join(w.capitalize() for w in words)


def _event_schema(kind: str, outcome: str) -> dict[str, Any]:
    error, _ = _EVENT_ERRORS[outcome]
    return {
        "title": event_type(kind, outcome),
        "type": "object",
        "additionalProperties": False,
        "required": ["type", "timestamp", "data"],
        "properties": {
            "type": {"const": event_type(kind, outcome)},
            "timestamp": {**_TIME, "description": "when the bridge saw the outcome"},
            "data": {
                "type": "object",
                "additionalProperties": False,
                "required": [
                    "job_id",
                    "project",
                    "kind",
                    "token",
                    "status",
                    "error",
                    "result",
                    "metadata",
                ],
                "properties": {
                    "job_id": _JOB_ID,
                    "project": {
                        **_PROJECT,
                        "description": "the Uploadcare project the token comes from",
                    },
                    "kind": {"const": kind},
                    "token": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN},
                    "status": {"const": outcome},
                    "error": error,
                    "result": {
                        "type": ["object", "null"],
                        "description": "Uploadcare's result as it last came (null when "
                        "there was none)",
                    },
                    "metadata": {
                        "type": ["object", "null"],
                        "description": "the job's metadata as registered (null when none)",
                    },
                },
            },
        },
    }


def _header(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "in": "header",
        "required": True,
        "description": description,
        "schema": {"type": "string", **schema},
    }


_B64 = "[A-Za-z0-9+/]+={0,2}"
# The Standard Webhooks headers of every callback (https://www.standardwebhooks.com/).
_WEBHOOK_HEADERS = [
    _header(
        "webhook-id",
        "the message id: the same on every attempt and redelivery of this job's callback; "
        "dedupe on it",
        {"pattern": "^msg_[0-9a-z]{26}$"},
    ),
    _header(
        "webhook-timestamp",
        "unix seconds when this attempt was signed; refuse one too far from your clock",
        {"pattern": "^[0-9]{1,12}$"},
    ),
    _header(
        "webhook-signature",
        'space-separated signatures of "{webhook-id}.{webhook-timestamp}.{body}": '
        "v1,<base64 HMAC-SHA256> for each whsec_ secret in force (v1a,<base64 Ed25519> "
        "for a tenant signed with key pairs); accept the callback when one verifies",
        {"pattern": f"^v1a?,{_B64}( v1a?,{_B64})*$"},
    ),
    _header(
        "user-agent",
        "the bridge and its version",
        {"pattern": "^uploadcare-bridge/[^ ]+$"},
    ),
]

_RECEIVER_ANSWERS = {
    "2XX": {"description": "taken: the job is delivered"},
    "410": {"description": "gone: the job is undeliverable at once, no further attempt"},
    "429": {
        "description": "retried; a Retry-After (seconds or HTTP date) raises the wait to at "
        "least its value",
    },
    "503": {
        "description": "retried; a Retry-After (seconds or HTTP date) raises the wait to at "
        "least its value",
    },
    "default": {
        "description": "any other status (3xx included: redirects are never followed), a "
        "timeout or a connection error: retried on BRIDGE_CALLBACK_RETRY_SCHEDULE, then "
        "undeliverable",
    },
}


def _webhook(kind: str, outcome: str) -> dict[str, Any]:
    _, sentence = _EVENT_ERRORS[outcome]
    name = _schema_name(kind, outcome)
    return {
        "post": {
            "operationId": name[0].lower() + name[1:],
            "summary": f"A {kind} conversion ended: {outcome}",
            "description": sentence + " POSTed to the job's callback_url, signed (Standard "
            "Webhooks); the body is the same bytes on every attempt. User-info in the "
            "callback_url is sent as HTTP Basic credentials.",
            "security": [],
            "parameters": _WEBHOOK_HEADERS,
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}
                },
            },
            "responses": _RECEIVER_ANSWERS,
        }
    }


EVENT_TYPES: tuple[str, ...] = tuple(event_type(k, o) for k in KINDS for o in OUTCOMES)
_EVENT_SCHEMAS = {_schema_name(k, o): _event_schema(k, o) for k in KINDS for o in OUTCOMES}
_WEBHOOKS = {event_type(k, o): _webhook(k, o) for k in KINDS for o in OUTCOMES}


@cache
def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "uploadcare-bridge",
            "version": __version__,
            "description": "Register Uploadcare conversion tokens; get a signed callback "
            "(Standard Webhooks) when each conversion ends.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _PATHS,
        "webhooks": _WEBHOOKS,
        "components": {
            "schemas": {**_SCHEMAS, **_EVENT_SCHEMAS},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


def document() -> dict[str, Any]:
    """The document (shared: do not mutate)."""
    return _document()


def event_schema_ref(event: str) -> str | None:
    """The ``#/components/...`` reference of an event type's body schema; None if unknown."""
    operation = document()["webhooks"].get(event)
    if operation is None:
        return None
    ref: str = operation["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    return ref


def text() -> str:
    """The document as committed in docs/openapi.json: two-space indents, keys in the
    order the code gives them, UTF-8, a trailing newline."""
    return json.dumps(document(), indent=2, ensure_ascii=False) + "\n"
