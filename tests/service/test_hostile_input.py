"""Hostile input against the real in-process app: no 500, no echo, only I-JSON stored or sent.

One app serves the whole module (without a scheduler: nothing registered here is ever
polled or called back); every case and example uses tokens of its own or expects the
idempotency answers (200, 409) that sharing one brings.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge import keys, model
from bridge import settings as settings_mod
from bridge.app import create_app
from bridge.openapi import document as openapi_document
from tests.conftest import ALPHA, base_env
from tests.hostile import CANARY, CASES, Case

pytestmark = pytest.mark.asyncio(loop_scope="module")

Client = TestClient[Any, Any]
CALLBACK = "http://127.0.0.1:9/hooks/uc"  # loopback (allowed by base_env); never called
AUTH = {"Authorization": f"Bearer {ALPHA}"}
# Every status a registration may answer; 500 is never one of them.
REGISTRATION_STATUSES = {200, 201, 400, 409, 413, 415, 422}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Client]:
    tmp: Path = tmp_path_factory.mktemp("hostile")
    app = create_app(settings_mod.load(base_env(tmp)), with_scheduler=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        yield c


def strict(text: str | bytes) -> Any:
    """What a strict receiver (JavaScript's JSON.parse, Go, serde) makes of a text."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=refuse)


async def send(client: Client, case: Case, callback: str = CALLBACK) -> Any:
    headers = {**AUTH, "Content-Type": "application/json", **case.headers}
    return await client.request(
        case.method,
        case.path,
        data=case.body_for(callback) if case.method == "POST" else None,
        headers=headers,
        skip_auto_headers=["Content-Type"],
    )


async def assert_round_trip(client: Client, answer: dict[str, Any]) -> None:
    """The job reads back as answered, and the callback it would get is strict JSON."""
    resp = await client.get(f"/v1/jobs/{answer['id']}", headers=AUTH)
    assert resp.status == 200
    assert strict(await resp.read()) == answer
    job = await client.app[keys.STORE].get_job("alpha", answer["id"])
    assert job is not None
    body = model.callback_body(
        job_id=job.id,
        project=job.project,
        kind=job.kind,
        token=job.token,
        outcome="finished",
        error=None,
        result_json=None,
        metadata_json=job.metadata,
        seen_at=job.created_at,
    )
    assert strict(body)["data"]["metadata"] == answer["metadata"]


_TEMPLATES = (
    (re.compile(r"/v1/jobs/[^/]+/(redeliver|attempts)"), "/v1/jobs/{job_id}/"),
    (re.compile(r"/v1/jobs/[^/]+"), "/v1/jobs/{job_id}"),
    (re.compile(r"/v1/jobs"), "/v1/jobs"),
    (re.compile(r"/v1/redeliveries"), "/v1/redeliveries"),
)


def _operation(case: Case) -> dict[str, Any] | None:
    """The OpenAPI operation the case calls, None for a route outside /v1."""
    path = case.path.partition("?")[0]
    for pattern, template in _TEMPLATES:
        if found := pattern.fullmatch(path):
            name = template + (found.group(1) if found.groups() else "")
            return openapi_document()["paths"][name][case.method.lower()]  # type: ignore[no-any-return]
    return None


# -- the corpus -------------------------------------------------------------------------------


async def test_the_corpus_is_large_and_named_once() -> None:
    assert len(CASES) >= 50
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
async def test_hostile_case(client: Client, case: Case) -> None:
    resp = await send(client, case)
    text = await resp.read()
    assert resp.status != 500, text
    assert resp.status == case.status, text
    assert CANARY.encode() not in text
    if (operation := _operation(case)) is not None:
        assert str(resp.status) in operation["responses"], "not in /openapi.json"
    if resp.status >= 400:
        assert resp.headers["Content-Type"].startswith("application/problem+json")
        problem = strict(text)
        assert problem["status"] == resp.status
        # Nothing the caller named comes back, redacted or not.
        assert ALPHA.encode() not in text and b"***" not in text
        for error in problem.get("errors", []):
            assert error["field"] in {"", "(unknown)", "token", "kind", "callback_url",
                                      "metadata", "state", "limit", "cursor", "project",
                                      "since", "until"}  # fmt: skip
    elif resp.status == 201:
        await assert_round_trip(client, strict(text))


async def test_unknown_fields_are_reported_once_without_their_names(client: Client) -> None:
    body = {"token": 3, "callback_url": CALLBACK, ALPHA: 1, "x" * 30: 2, "kind": "audio"}
    resp = await client.post("/v1/jobs", json=body, headers=AUTH)
    problem = strict(await resp.read())
    assert resp.status == 422
    assert problem["errors"] == [
        {"field": "(unknown)", "message": "unknown field"},
        {"field": "kind", "message": "kind must be 'video' or 'document'"},
    ]


async def test_an_empty_query_parameter_is_the_same_as_none(client: Client) -> None:
    async def listing(query: str) -> Any:
        resp = await client.get(f"/v1/jobs{query}", headers=AUTH)
        assert resp.status == 200, await resp.text()
        return strict(await resp.read())

    everything = await listing("?limit=500")
    for name in ("state", "kind", "token", "cursor"):
        assert await listing(f"?limit=500&{name}=") == everything, name
    assert await listing("?state=&kind=&token=&cursor=&limit=500") == everything
    assert await listing("?limit=") == await listing("")
    assert await listing("?state=&state=tracking&limit=500") == await listing(
        "?state=tracking&limit=500"
    )


# -- generated I-JSON edge cases --------------------------------------------------------------

_SPECIAL_NUMBERS = st.sampled_from(
    ["1e999", "-1e999", "1E400", "NaN", "Infinity", "-Infinity", "-0", "0.0e-999", "1.0",
     "1e2", "123456789012345678901234567890", "9007199254740993", "-1.7976931348623157e308"]
)  # fmt: skip
_NUMBERS = (
    st.integers(-(10**30), 10**30).map(str)
    | st.floats(allow_nan=False, allow_infinity=False).map(repr)
    | _SPECIAL_NUMBERS
)
_LONE = st.integers(0xD800, 0xDFFF).map(lambda c: f"\\u{c:04x}")
_STRINGS = (
    st.text(max_size=6).map(lambda s: json.dumps(s, ensure_ascii=False))
    | st.text(max_size=6).map(json.dumps)  # \u escapes, pairs for what is astral
    | st.tuples(st.text("ab", max_size=2), _LONE).map(lambda t: f'"{t[0]}{t[1]}"')
)
# Few names, spelled several ways: "a" and "\u0061" are one name, so duplicates come often.
_NAMES = (
    st.sampled_from(['"a"', '"b"', '"\\u0061"', '"ключ"', '"🔑"', '"\\ud83d\\udd11"']) | _STRINGS
)


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(members: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in members) + "}"


_VALUES = st.recursive(
    _NUMBERS | _STRINGS | st.sampled_from(["true", "false", "null"]),
    lambda inner: (
        st.lists(inner, max_size=4).map(_array)
        | st.lists(st.tuples(_NAMES, inner), max_size=4).map(_object)
    ),
    max_leaves=12,
)
# Some values wrapped in arrays, deep enough to cross the 32 levels now and then.
_DEEP = st.tuples(st.integers(0, 40), _VALUES).map(lambda t: "[" * t[0] + t[1] + "]" * t[0])
_METADATA = st.lists(st.tuples(_NAMES, _VALUES | _DEEP), max_size=4).map(_object)
_TOKENS = st.integers(1, 30).map(str) | _SPECIAL_NUMBERS | st.just('"7"')


def _expected_bad(text: str) -> bool:
    """Whether the text breaks I-JSON, judged by a lenient parse and a walk of its value."""
    bad = False

    def pairs(members: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal bad
        bad |= len({k for k, _ in members}) != len(members)
        return dict(members)

    def constant(name: str) -> float:
        nonlocal bad
        bad = True
        return 0.0

    value = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)

    def lone(text: str) -> bool:
        return any(0xD800 <= ord(c) <= 0xDFFF for c in text)

    def walk(v: Any, depth: int) -> bool:  # ``depth``: the level ``v`` sits at
        if isinstance(v, float):
            return not math.isfinite(v)
        if isinstance(v, str):
            return lone(v)
        if isinstance(v, dict):
            return depth > 32 or any(lone(k) or walk(c, depth + 1) for k, c in v.items())
        if isinstance(v, list):
            return depth > 32 or any(walk(c, depth + 1) for c in v)
        return False

    return bad or walk(value, 1)


@given(token=_TOKENS, metadata=_METADATA, extra=st.none() | _VALUES)
@settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
async def test_generated_i_json_edge_cases(
    client: Client, token: str, metadata: str, extra: str | None
) -> None:
    members = [("token", token), ("callback_url", json.dumps(CALLBACK)), ("metadata", metadata)]
    if extra is not None:
        members.append(('"extra"', extra))
    text = "{" + ",".join(f'"{k}":{v}' if not k.startswith('"') else f"{k}:{v}"
                          for k, v in members) + "}"  # fmt: skip
    body = text.encode("utf-8", "surrogatepass")  # an escaped surrogate stays an escape
    resp = await client.post(
        "/v1/jobs", data=body, headers={**AUTH, "Content-Type": "application/json"}
    )
    answer = await resp.read()
    assert resp.status in REGISTRATION_STATUSES, answer
    if _expected_bad(text):
        assert resp.status == 400, (text, answer)
        return
    assert resp.status != 400, (text, answer)
    if resp.status in (200, 201):
        job = strict(answer)
        sent = json.loads(text)["metadata"]
        assert model.canonical_json(job["metadata"]) == model.canonical_json(sent)
        await assert_round_trip(client, job)


# -- the last line of defence -----------------------------------------------------------------


async def test_a_bug_answers_a_fixed_500_and_logs_the_route_not_the_body(
    tmp_path: Path,
) -> None:
    async def broken(request: web.Request) -> web.Response:
        await request.read()
        raise RuntimeError(f"a bug that quotes {CANARY}")

    app = create_app(settings_mod.load(base_env(tmp_path)), with_scheduler=False)
    app.router.add_post("/v1/broken/{thing}", broken)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        with structlog.testing.capture_logs() as logs:
            resp = await c.post(f"/v1/broken/{CANARY}", data=CANARY + "-body", headers=AUTH)
        text = await resp.read()
    assert resp.status == 500
    assert resp.headers["Content-Type"].startswith("application/problem+json")
    assert strict(text) == {
        "type": "about:blank",
        "title": "Internal Server Error",
        "status": 500,
        "detail": "internal error; it has been logged",
    }
    assert b"Traceback" not in text and CANARY.encode() not in text
    failed = [e for e in logs if e["event"] == "request_failed"]
    assert len(failed) == 1
    assert failed[0]["method"] == "POST" and failed[0]["route"] == "/v1/broken/{thing}"
    assert failed[0]["log_level"] == "error" and failed[0].get("exc_info")
    assert CANARY + "-body" not in repr(failed[0])
