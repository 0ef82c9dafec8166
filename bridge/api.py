"""The HTTP API: handlers, validation, problem+json errors and bearer auth."""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import datetime
from http import HTTPStatus
from typing import Any, NoReturn
from urllib.parse import urlsplit

import structlog
from aiohttp import web
from yarl import URL

from bridge import ijson, keys
from bridge.callback_hosts import HOSTS_MESSAGE
from bridge.model import (
    DEFAULT_REDELIVERIES,
    DELIVERED,
    KINDS,
    MAX_REDELIVERIES,
    MAX_TOKEN,
    STATES,
    UNDELIVERABLE,
    NewJob,
    compact_json,
    fast_json,
    redact_url,
)
from bridge.netpolicy import PolicyViolation
from bridge.openapi import document as openapi_document
from bridge.store import Conflict, StoreError
from bridge.store.base import BadCursor
from bridge.webhooks import ConfiguredSecrets

log = structlog.get_logger("bridge.api")

MAX_BODY = 64 * 1024
# Seconds a client has to send a request body (64 KiB at most) once its headers are in.
BODY_TIMEOUT = 10.0
MAX_METADATA = 4 * 1024
MAX_URL = 2048
_FIELDS = frozenset({"token", "kind", "project", "callback_url", "metadata"})
# Fixed sentences: an answer never repeats the project the caller named, so it cannot tell
# which projects exist beyond the tenant's own.
PROJECT_REQUIRED = "project is required"
PROJECT_NOT_ALLOWED = "project is not allowed"
_PROJECT = re.compile(r"^[a-z0-9-]{1,32}\Z")
_KIND_MESSAGE = "kind must be " + " or ".join(repr(k) for k in KINDS)
# \Z, not $: "$" also matches before a trailing newline.
_JOB_ID = re.compile(r"^job_[0-9a-z]{26}\Z")
_DIGITS = re.compile(r"^[1-9][0-9]{0,15}\Z")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._\-]{1,64}\Z")
# What an error names in place of anything the caller made up: a problem detail never
# repeats a name or value the caller sent, so no answer can tell whether it equals a secret.
UNKNOWN = "(unknown)"
INTERNAL_ERROR = "internal error; it has been logged"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Problem(Exception):
    """An RFC 9457 problem; raised anywhere in a handler, rendered by the middleware."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}

    def response(self) -> web.Response:
        # Details and errors are the API's own sentences and field names, never the caller's
        # words (see UNKNOWN), so nothing here needs redacting.
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": _phrase(self.status),
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        return web.Response(
            status=self.status,
            text=json.dumps(body),
            content_type="application/problem+json",
            headers=self.headers,
        )


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _invalid(errors: list[dict[str, str]]) -> NoReturn:
    raise Problem(422, "the request is not valid; see errors", errors=errors)


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=fast_json(data),
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )


# -- middleware ------------------------------------------------------------------------------


@web.middleware
async def request_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A request id on every request and its log lines; problems and crashes as problem+json."""
    given = request.headers.get("X-Request-Id", "")
    # An id to find the request's lines by, not a secret: no need for the OS's randomness.
    request_id = given if _REQUEST_ID.match(given) else f"{random.getrandbits(128):032x}"
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    started = time.perf_counter()
    try:
        response = await handler(request)
    except Problem as problem:
        response = problem.response()
    except web.HTTPException as exc:
        if exc.status >= 400:
            # aiohttp's own (404, 405, 413…): its standard phrase, never a reason with input.
            headers = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
            response = Problem(exc.status, _phrase(exc.status), headers=headers).response()
        else:
            raise
    except StoreError as exc:
        log.error("store_unavailable", error=str(exc))
        response = Problem(503, "the database is not available; try again").response()
    except Exception:
        # A bug, whatever the input: a fixed answer, no traceback or message in it. The log
        # gets the traceback and the route, never the body.
        log.exception("request_failed", method=request.method, route=_route(request))
        response = Problem(500, INTERNAL_ERROR).response()
    response.headers["X-Request-Id"] = request_id
    log.info(
        "http_request",
        method=request.method,
        path=request.path,
        status=response.status,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return response


def _route(request: web.Request) -> str | None:
    """The matched route's template (``/v1/jobs/{job_id}``), not the path the caller sent."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else None


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path.startswith("/v1/"):
        tenant = request.app[keys.AUTH].tenant(request.headers.get("Authorization"))
        if tenant is None:
            raise Problem(
                401,
                "a valid 'Authorization: Bearer <secret>' header is required",
                headers={"WWW-Authenticate": 'Bearer realm="uploadcare-bridge"'},
            )
        request[keys.TENANT] = tenant
        structlog.contextvars.bind_contextvars(tenant=tenant)
    return await handler(request)


# -- registration ----------------------------------------------------------------------------


async def _read_body(request: web.Request) -> bytes:
    if request.content_type != "application/json":
        raise Problem(415, "send the body as application/json")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise Problem(413, f"the body is over {MAX_BODY} bytes")
    chunks: list[bytes] = []
    size = 0
    try:
        # A client that sends its body slowly, or never, does not hold the handler for long.
        async with asyncio.timeout(BODY_TIMEOUT):
            while chunk := await request.content.read(MAX_BODY + 1 - size):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_BODY:
                    raise Problem(413, f"the body is over {MAX_BODY} bytes")
    except TimeoutError:
        raise Problem(408, f"the body did not arrive within {BODY_TIMEOUT:g}s") from None
    return b"".join(chunks)


def _decode(body: bytes) -> Any:
    """The body's value: I-JSON only (RFC 7493), else 400 with a sentence saying why."""
    try:
        return ijson.loads(body)
    except ijson.TooManyDigits:
        _invalid([{"field": "", "message": "a number in the body has too many digits"}])
    except ijson.NotIJSON as exc:
        raise Problem(400, str(exc)) from None


def _token(value: Any, field: str = "token") -> tuple[int | None, str | None]:
    message = f"{field} must be an integer from 1 to 2^53-1, as a number or a string of digits"
    if isinstance(value, bool):
        return None, message
    if isinstance(value, int):
        return (value, None) if 1 <= value <= MAX_TOKEN else (None, message)
    if isinstance(value, str) and _DIGITS.match(value):
        number = int(value)
        return (number, None) if number <= MAX_TOKEN else (None, message)
    return None, message


_ASCII_INVISIBLE = re.compile(r"[\x00-\x20\x7f]")
_UNSEEN_MESSAGE = "callback_url must not contain whitespace, control or format characters"


def _invisible(text: str, *, space: bool = False) -> bool:
    """Whether ``text`` holds whitespace (but a plain space where ``space``), a control
    character (C0, DEL, C1) or a format character (bidi controls, zero-width ones...)."""
    if text.isascii():
        found = _ASCII_INVISIBLE.search(text.replace(" ", "") if space else text)
        return found is not None
    return any(
        (c.isspace() and not (space and c == " ")) or unicodedata.category(c) in ("Cc", "Cf")
        for c in text
    )


def _callback_url(value: Any) -> str | None:
    """A syntax problem with the URL, or None; the network policy is checked apart.

    Whitespace, control and format characters are refused as written and as yarl (which
    aiohttp delivers with) decodes each part: a percent-encoded one too, but for a plain
    space (``%20``) in the user-info (sent as Basic credentials, where a space is
    ordinary), path, query or fragment.
    """
    if not isinstance(value, str):
        return "callback_url must be a string"
    if len(value) > MAX_URL:
        return f"callback_url is over {MAX_URL} characters"
    if _invisible(value):
        return _UNSEEN_MESSAGE
    try:
        parts = urlsplit(value)
        port = parts.port
        url = URL(value)
        decoded = [url.host or ""]
        decoded_rest = [url.user or "", url.password or "", url.path, url.query_string]
        decoded_rest.append(url.fragment)
        port = url.port if port is None else port
    except ValueError:
        return "callback_url is not a valid URL"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "callback_url must be an absolute http or https URL"
    if port == 0:
        return "callback_url must not use port 0"
    if any(_invisible(p) for p in decoded) or any(_invisible(p, space=True) for p in decoded_rest):
        return _UNSEEN_MESSAGE
    return None


def _registration_project(
    allowed: tuple[str, ...], data: dict[str, Any]
) -> tuple[str | None, str | None]:
    """The project a registration names, or the one its tenant may use when it names none."""
    if "project" not in data:
        return (allowed[0], None) if len(allowed) == 1 else (None, PROJECT_REQUIRED)
    project = data["project"]
    if isinstance(project, str) and project in allowed:
        return project, None
    return None, PROJECT_NOT_ALLOWED


async def _validate_registration(request: web.Request, tenant: str, data: Any) -> NewJob:
    if not isinstance(data, dict):
        _invalid([{"field": "", "message": "the body must be a JSON object"}])
    errors: list[dict[str, str]] = []
    if not data.keys() <= _FIELDS:
        # Once, however many: neither their names nor their number is repeated.
        errors.append({"field": UNKNOWN, "message": "unknown field"})

    token: int | None = None
    if "token" not in data:
        errors.append({"field": "token", "message": "token is required"})
    else:
        token, message = _token(data["token"])
        if message:
            errors.append({"field": "token", "message": message})

    kind = data.get("kind", KINDS[0])
    if kind not in KINDS:
        errors.append({"field": "kind", "message": _KIND_MESSAGE})

    project, message = _registration_project(_projects(request, tenant), data)
    if message:
        errors.append({"field": "project", "message": message})

    url = data.get("callback_url")
    url_problem = "callback_url is required" if url is None else _callback_url(url)
    if url_problem:
        errors.append({"field": "callback_url", "message": url_problem})

    metadata = data.get("metadata")
    metadata_text: str | None = None
    if metadata is not None:
        if not isinstance(metadata, dict):
            errors.append({"field": "metadata", "message": "metadata must be a JSON object"})
        else:
            metadata_text = compact_json(metadata)
            if len(metadata_text.encode()) > MAX_METADATA:
                errors.append(
                    {
                        "field": "metadata",
                        "message": f"metadata is over {MAX_METADATA} bytes as compact JSON",
                    }
                )
    if errors:
        _invalid(errors)

    assert isinstance(url, str) and isinstance(project, str) and token is not None
    if not request.app[keys.SETTINGS].callback_hosts.allows(tenant, url):
        _invalid([{"field": "callback_url", "message": HOSTS_MESSAGE}])
    try:
        await request.app[keys.POLICY].check_url(url)
    except PolicyViolation as exc:
        _invalid([{"field": "callback_url", "message": str(exc)}])
    return NewJob(
        tenant=tenant,
        kind=kind,
        token=token,
        callback_url=url,
        metadata=metadata_text,
        project=project,
    )


def _location(job_id: str) -> dict[str, str]:
    return {"Location": f"/v1/jobs/{job_id}"}


async def register(request: web.Request) -> web.Response:
    tenant = request[keys.TENANT]
    data = _decode(await _read_body(request))
    new = await _validate_registration(request, tenant, data)
    settings = request.app[keys.SETTINGS]
    now = request.app[keys.CLOCK]()
    try:
        job, created = await request.app[keys.STORE].register(
            new,
            now=now,
            first_poll_at=now + settings.poll_initial_delay,
            deadline_at=now + settings.job_deadline,
        )
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    if created:
        if (scheduler := request.app.get(keys.SCHEDULER)) is not None:
            scheduler.wake(due=now + settings.poll_initial_delay)  # it may be due sooner
        request.app[keys.METRICS].jobs_registered.labels(job.kind).inc()
        log.info(
            "job_registered",
            job_id=job.id,
            project=job.project,
            kind=job.kind,
            token=job.token,
            callback_url=redact_url(job.callback_url),
        )
    return _json(job.to_api(), status=201 if created else 200, headers=_location(job.id))


# -- reads and commands ----------------------------------------------------------------------


def _job_id(request: web.Request) -> str:
    job_id = request.match_info["job_id"]
    if not _JOB_ID.match(job_id):
        raise Problem(404, "no such job")
    return job_id


async def get_job(request: web.Request) -> web.Response:
    job = await request.app[keys.STORE].get_job(request[keys.TENANT], _job_id(request))
    if job is None:
        raise Problem(404, "no such job")
    return _json(job.to_api())


def _choice(name: str, allowed: tuple[str, ...]) -> Callable[[str], tuple[Any, str | None]]:
    def parse(value: str) -> tuple[Any, str | None]:
        if value in allowed:
            return value, None
        return None, f"{name} must be one of: {', '.join(allowed)}"

    return parse


def _limit(value: str) -> tuple[Any, str | None]:
    if value.isascii() and value.isdigit() and len(value) <= 3 and 1 <= int(value) <= 500:
        return int(value), None
    return None, "limit must be an integer from 1 to 500"


def _project_filter(value: str) -> tuple[Any, str | None]:
    # A name the tenant may not use (or no longer may) matches none of its jobs, or the
    # jobs it registered there before: no need to refuse it.
    if _PROJECT.match(value):
        return value, None
    return None, "project must be 1 to 32 lower-case letters, digits or '-'"


def _cursor(value: str) -> tuple[Any, str | None]:
    # Opaque: the store opens it for the tenant (BadCursor, see list_jobs).
    return value, None


# Query parameter -> (keyword for Store.list_jobs, parser giving (value, error)).
_LIST_PARAMS: dict[str, tuple[str, Callable[[str], tuple[Any, str | None]]]] = {
    "state": ("state", _choice("state", STATES)),
    "kind": ("kind", _choice("kind", KINDS)),
    "project": ("project", _project_filter),
    "token": ("token", _token),
    "limit": ("limit", _limit),
    "cursor": ("before", _cursor),
}


def _list_filters(query: Any) -> dict[str, Any]:
    errors: list[dict[str, str]] = []
    out: dict[str, Any] = {"limit": 100}
    # An unknown name, even without a value, is a mistake worth saying (without its name).
    if not set(query) <= _LIST_PARAMS.keys():
        errors.append({"field": UNKNOWN, "message": "unknown parameter"})
    for name in sorted(set(query) & _LIST_PARAMS.keys()):
        # An empty value (``?state=``) is the same as none.
        values = [v for v in query.getall(name) if v]
        if not values:
            continue
        if len(values) > 1:
            errors.append({"field": name, "message": f"{name} is given more than once"})
            continue
        keyword, parse = _LIST_PARAMS[name]
        value, message = parse(values[0])
        if message:
            errors.append({"field": name, "message": message})
        else:
            out[keyword] = value
    if errors:
        _invalid(errors)
    return out


async def list_jobs(request: web.Request) -> web.Response:
    filters = _list_filters(request.query)
    try:
        jobs, next_cursor = await request.app[keys.STORE].list_jobs(request[keys.TENANT], **filters)
    except BadCursor:
        _invalid([{"field": "cursor", "message": BadCursor.MESSAGE}])
    return _json({"items": [j.to_api() for j in jobs], "next_cursor": next_cursor})


async def cancel_job(request: web.Request) -> web.Response:
    try:
        found = await request.app[keys.STORE].cancel(
            request[keys.TENANT], _job_id(request), now=request.app[keys.CLOCK]()
        )
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    if found is None:
        raise Problem(404, "no such job")
    job, changed = found
    if changed:
        if (scheduler := request.app.get(keys.SCHEDULER)) is not None:
            scheduler.note_canceled(job.id)
        log.info("job_canceled", job_id=job.id, kind=job.kind, token=job.token)
    return _json(job.to_api())


async def redeliver_job(request: web.Request) -> web.Response:
    try:
        job = await request.app[keys.STORE].redeliver(
            request[keys.TENANT], _job_id(request), now=request.app[keys.CLOCK]()
        )
    except Conflict as exc:
        raise Problem(409, str(exc)) from None
    if job is None:
        raise Problem(404, "no such job")
    log.info("job_redelivery_requested", job_id=job.id, kind=job.kind, token=job.token)
    if (scheduler := request.app.get(keys.SCHEDULER)) is not None:
        scheduler.wake()
    return _json(job.to_api(), status=202)


# -- bulk redelivery -------------------------------------------------------------------------

_REDELIVERY_FIELDS = frozenset({"state", "kind", "project", "since", "until", "limit"})
_REDELIVERY_STATES = (UNDELIVERABLE, DELIVERED)
# RFC 3339 (section 5.6): a full date, "T" (or a space), a time, and an offset; no more.
_RFC3339 = re.compile(
    r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.(\d+))?(?:[Zz]|[+-]\d{2}:\d{2})\Z",
    re.ASCII,
)


def _time(value: Any, field: str) -> tuple[float | None, str | None]:
    message = f"{field} must be an RFC 3339 time with an offset, like 2026-11-29T04:30:00Z"
    if not isinstance(value, str) or len(value) > 64 or not (match := _RFC3339.match(value)):
        return None, message
    text = value.upper().replace("Z", "+00:00")
    if match[1] is not None and len(match[1]) > 6:  # finer than microseconds: cut, not refused
        text = text.replace("." + match[1], "." + match[1][:6], 1)
    # A leap second (23:59:60) is the second after :59, which Python cannot spell.
    leap = text[17:19] == "60"
    if leap:
        text = text[:17] + "59" + text[19:]
    try:
        return datetime.fromisoformat(text).timestamp() + leap, None
    except (ValueError, OverflowError):  # a 30th of February, a 25th hour
        return None, message


def _projects(request: web.Request, tenant: str) -> tuple[str, ...]:
    """The projects whose tokens this tenant may register, and whose jobs it may name in
    a bulk redelivery (BRIDGE_TENANT_PROJECTS; ``default`` for a tenant not named)."""
    return request.app[keys.SETTINGS].projects_for(tenant)


def _redelivery_limit(value: Any) -> tuple[int | None, str | None]:
    # A JSON number without a fraction: 1.0 arrives as a float, and is refused.
    if type(value) is int and 1 <= value <= MAX_REDELIVERIES:
        return value, None
    return None, f"limit must be an integer from 1 to {MAX_REDELIVERIES}"


def _validate_redeliveries(request: web.Request, tenant: str, data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        _invalid([{"field": "", "message": "the body must be a JSON object"}])
    errors: list[dict[str, str]] = []
    if not data.keys() <= _REDELIVERY_FIELDS:
        errors.append({"field": UNKNOWN, "message": "unknown field"})
    out: dict[str, Any] = {"limit": DEFAULT_REDELIVERIES}
    if "state" not in data:
        errors.append({"field": "state", "message": "state is required"})
    for field, allowed in (("state", _REDELIVERY_STATES), ("kind", KINDS)):
        if field not in data:
            continue
        if data[field] in allowed:
            out[field] = data[field]
        else:
            must = f"{field} must be " + " or ".join(repr(v) for v in allowed)
            errors.append({"field": field, "message": must})
    if "project" in data:
        project = data["project"]
        if isinstance(project, str) and project in _projects(request, tenant):
            out["project"] = project
        else:
            errors.append({"field": "project", "message": PROJECT_NOT_ALLOWED})
    parsers = (("since", _time), ("until", _time), ("limit", lambda v, _: _redelivery_limit(v)))
    for field, parse in parsers:
        if field in data:
            value, message = parse(data[field], field)
            if message:
                errors.append({"field": field, "message": message})
            else:
                out[field] = value
    if errors:
        _invalid(errors)
    return out


async def redeliver_jobs(request: web.Request) -> web.Response:
    """POST /v1/redeliveries: a new round for every matching job, in one transaction."""
    tenant = request[keys.TENANT]
    data = _decode(await _read_body(request))
    filters = _validate_redeliveries(request, tenant, data)
    count, remaining = await request.app[keys.STORE].redeliver_many(
        tenant, now=request.app[keys.CLOCK](), **filters
    )
    log.info("jobs_redelivery_requested", count=count, remaining=remaining)
    if count and (scheduler := request.app.get(keys.SCHEDULER)) is not None:
        scheduler.wake()
    return _json({"count": count, "remaining": remaining}, status=202)


async def list_attempts(request: web.Request) -> web.Response:
    attempts = await request.app[keys.STORE].attempts(request[keys.TENANT], _job_id(request))
    if attempts is None:
        raise Problem(404, "no such job")
    return _json({"items": [a.to_api() for a in attempts]})


async def signing_secrets(request: web.Request) -> web.Response:
    found = await request.app[keys.SECRETS].for_tenant(request[keys.TENANT])
    return _json(
        {
            "secrets": [k.secret for k in found if k.scheme == "v1"],
            "keys": [k.to_api() for k in found],  # a v1a private key never: see to_api
        }
    )


async def _empty_body(request: web.Request) -> None:
    """No body, or ``{}``: anything else is refused as every body is (415, 413, 400, 422)."""
    if not request.body_exists:
        return
    body = await _read_body(request)
    if not body:  # an empty chunked body is no body
        return
    data = _decode(body)
    if not isinstance(data, dict):
        _invalid([{"field": "", "message": "the body must be empty or {}"}])
    if data:
        _invalid([{"field": UNKNOWN, "message": "unknown field"}])


async def rotate_signing_secret(request: web.Request) -> web.Response:
    await _empty_body(request)
    tenant = request[keys.TENANT]
    book = request.app[keys.SECRETS]
    try:
        key = await book.rotate(tenant)
    except ConfiguredSecrets:
        raise Problem(
            409,
            "this tenant's signing secrets come from BRIDGE_WEBHOOK_SECRETS: rotate them by "
            "configuration (add the new one, restart, drop the old one)",
        ) from None
    log.info(
        "signing_key_rotated",
        scheme=key.scheme,
        overlap_s=request.app[keys.SETTINGS].secret_rotation_overlap,
    )
    return _json(key.to_api(), status=201)


# -- operational routes ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    upstream = request.app[keys.PAUSES].describe()
    try:
        await request.app[keys.STORE].ping()
    except StoreError:
        return _json({"status": "unavailable", "upstream": upstream}, status=503)
    return _json({"status": "ready", "upstream": upstream})


async def metrics(request: web.Request) -> web.Response:
    m = request.app[keys.METRICS]
    # Gauges of the shared database are read at scrape time, so they cannot drift.
    store = request.app[keys.STORE]
    m.set_job_counts(await store.count_by_state())
    now = request.app[keys.CLOCK]()
    m.set_backlog(await store.backlog(now=now), now)
    m.set_paused(request.app[keys.PAUSES].reasons())
    return web.Response(
        body=m.exposition(), headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}
    )


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_document())


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/jobs", register)
    app.router.add_get("/v1/jobs", list_jobs)
    app.router.add_get("/v1/jobs/{job_id}", get_job)
    app.router.add_delete("/v1/jobs/{job_id}", cancel_job)
    app.router.add_post("/v1/jobs/{job_id}/redeliver", redeliver_job)
    app.router.add_get("/v1/jobs/{job_id}/attempts", list_attempts)
    app.router.add_post("/v1/redeliveries", redeliver_jobs)
    app.router.add_get("/v1/signing-secrets", signing_secrets)
    app.router.add_post("/v1/signing-secrets/rotate", rotate_signing_secret)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
