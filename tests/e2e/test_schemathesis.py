"""Property-based API testing: schemathesis against the server's own ``/openapi.json``,
and the hostile-request corpus (tests/hostile.py) against the same live server.

A real bridge listens on 127.0.0.1 (in a thread with its own event loop, because
schemathesis' transport is synchronous). It is built so that nothing schemathesis
generates can send traffic anywhere: no scheduler (nothing is polled or delivered),
no allow list, and a resolver that knows one made-up public name and nothing else
(so no real DNS query leaves the machine either).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
import requests
import schemathesis
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from bridge import settings as settings_mod
from bridge.api import MAX_METADATA
from bridge.app import create_app
from bridge.model import compact_json
from bridge.netpolicy import NetworkPolicy
from bridge.openapi import document as openapi_document
from tests.conftest import ALPHA, base_env
from tests.hostile import CANARY, Case
from tests.hostile import CASES as HOSTILE
from tests.resolvers import StaticResolver

# Bounded so the whole file runs in seconds; raise it locally for a deeper search.
MAX_EXAMPLES = int(os.environ.get("BRIDGE_SCHEMATHESIS_EXAMPLES", "30"))
AUTH = {"Authorization": f"Bearer {ALPHA}"}
# The document's example callback host; resolves to a public address that is never dialled.
NAMES = {"example.com": ["93.184.216.34"]}


class LiveBridge:
    """The app on 127.0.0.1 in a background thread with its own event loop."""

    def __init__(self, app: web.Application) -> None:
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        self.url = ""

    def _run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()

        async def up() -> str:
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            return f"http://127.0.0.1:{self._runner.addresses[0][1]}"

        self.url = self._run(up())

    def stop(self) -> None:
        try:
            self._run(self._runner.cleanup())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()


@pytest.fixture(scope="module")
def live_bridge(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp: Path = tmp_path_factory.mktemp("schemathesis")
    # No allow list: even loopback callbacks are refused (base_env allows 127/8 otherwise).
    # And no host list: the fuzz is to reach the network policy, not stop before it.
    settings = settings_mod.load(
        base_env(tmp, BRIDGE_CALLBACK_ALLOW_NETWORKS=None, BRIDGE_CALLBACK_HOSTS=None)
    )
    assert settings.callback_allow_networks == ()
    policy = NetworkPolicy(resolver=StaticResolver(NAMES))
    server = LiveBridge(create_app(settings, policy=policy, with_scheduler=False))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api_schema(live_bridge: str) -> Any:
    # The document the server serves, not the module that builds it.
    return schemathesis.openapi.from_url(f"{live_bridge}/openapi.json")


# Operations known at collection time; the test fails if the served document lacks one.
OPERATIONS = [
    (method.upper(), path)
    for path, item in openapi_document()["paths"].items()
    for method in item
    if method != "parameters"
]
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


# The network policy cannot be written in a schema: a schema-valid callback URL is mostly
# refused (422, by design). Valid registrations are sent with this allowed one instead.
ALLOWED_CALLBACK = "https://example.com/hooks/uc"


def _prepare(case: Any) -> list[Any]:
    """Adjust a generated case for what a schema cannot say; the checks to leave out."""
    excluded: list[Any] = []
    if case.meta is None:
        return excluded
    if not case.meta.generation.mode.is_positive:
        if any(v == [] for v in (case.query or {}).values()):
            # A query parameter whose value is an empty list is not sent at all: what goes
            # on the wire may be a valid request (`{"": []}` made `?cursor=&kind=video`).
            excluded.append(negative_data_rejection)
        return excluded
    if isinstance(case.body, dict) and "project" in case.body:
        # Only configured projects are allowed; the schema can only give their name's form.
        case.body["project"] = "default"
    if case.operation.label == "POST /v1/jobs" and isinstance(case.body, dict):
        case.body["callback_url"] = ALLOWED_CALLBACK
        if isinstance(case.body.get("token"), float):
            excluded.append(positive_data_acceptance)  # 5.0 is a JSON Schema integer; refused
        metadata = case.body.get("metadata")
        if metadata is not None and len(compact_json(metadata).encode()) > MAX_METADATA:
            excluded.append(positive_data_acceptance)  # the 4 KiB limit is in prose only
    redeliveries = case.operation.label == "POST /v1/redeliveries"
    if redeliveries and isinstance(case.body, dict) and isinstance(case.body.get("limit"), float):
        excluded.append(positive_data_acceptance)  # 5.0 is a JSON Schema integer; refused
    if case.operation.label == "GET /v1/jobs" and case.query and "cursor" in case.query:
        excluded.append(positive_data_acceptance)  # only cursors the server gave out are valid
    return excluded


@pytest.fixture(scope="module")
def known_job(live_bridge: str) -> str:
    """A job that exists, so that reads and commands also answer 200/202/409, not just 404."""
    resp = requests.post(
        f"{live_bridge}/v1/jobs",
        json={"token": 426339926, "callback_url": ALLOWED_CALLBACK, "metadata": {"a": 1}},
        headers=AUTH,
        timeout=30,
    )
    assert resp.status_code in (200, 201), resp.text
    return str(resp.json()["id"])


@pytest.mark.parametrize("mode", MODES, ids=lambda m: str(m.value))
@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_api_matches_its_openapi_document(
    api_schema: Any, known_job: str, method: str, path: str, mode: GenerationMode
) -> None:
    operation = api_schema[path][method]
    strategy = operation.as_strategy(generation_mode=mode)
    if "{job_id}" in path and mode is GenerationMode.POSITIVE:
        known = operation.as_strategy(generation_mode=mode, path_parameters={"job_id": known_job})
        strategy = st.one_of(strategy, known)

    @given(case=strategy)
    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        # Every default check: no 5xx, documented status codes, content types, headers and
        # response schemas, negative data rejected, positive data accepted, auth enforced.
        case.call_and_validate(headers=AUTH, excluded_checks=_prepare(case), timeout=30)

    run()


FRESH_TOKENS = itertools.count(10**12)


def test_api_stateful_sequences(api_schema: Any) -> None:
    """Register, then read, cancel, redeliver and list attempts of what was registered (links)."""

    class Machine(api_schema.as_state_machine()):  # type: ignore[misc]
        excluded: ClassVar[dict[int, list[Any]]] = {}

        def before_call(self, case: Any) -> None:
            self.excluded[id(case)] = _prepare(case)
            positive = case.meta is not None and case.meta.generation.mode.is_positive
            if positive and isinstance(case.body, dict) and "callback_url" in case.body:
                # A fresh token each time: the answer (201) then does not depend on what
                # earlier scenarios registered, as Hypothesis needs for a replayable run.
                case.body["token"] = next(FRESH_TOKENS)

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": AUTH, "timeout": 30}

        def validate_response(
            self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any
        ) -> None:
            case.validate_response(
                response,
                excluded_checks=self.excluded.pop(id(case), []),
                headers=kwargs.get("headers"),
                transport_kwargs=kwargs,
            )

    Machine.run(
        settings=settings(
            max_examples=MAX_EXAMPLES,
            stateful_step_count=6,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
        )
    )


def test_document_is_served_without_auth(live_bridge: str) -> None:
    resp = requests.get(f"{live_bridge}/openapi.json", timeout=30)
    assert resp.status_code == 200
    assert resp.json()["openapi"].startswith("3.1")


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_corpus_answers_as_expected_and_never_500(live_bridge: str, case: Case) -> None:
    """tests/hostile.py against the live server: the statuses the fast tier sees, over a
    real socket, with the document's example callback (never dialled: no scheduler)."""
    headers = {**AUTH, "Content-Type": "application/json", **case.headers}
    resp = requests.request(
        case.method,
        f"{live_bridge}{case.path}",
        data=case.body_for(ALLOWED_CALLBACK) if case.method == "POST" else None,
        headers={k: v.encode("latin-1") for k, v in headers.items()},
        timeout=30,
    )
    assert resp.status_code != 500, resp.text
    assert resp.status_code == case.status, resp.text
    assert CANARY.encode() not in resp.content
