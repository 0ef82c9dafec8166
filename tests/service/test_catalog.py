"""The event catalog: the OpenAPI document's ``webhooks`` section, as served and committed.

docs/openapi.json is the served document, byte for byte; the document is valid OpenAPI
3.1; and a callback of each of the ten event types, made end to end (the fake upstream's
outcomes, the deadline, three 404s), validates against its event type's schema.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate

from bridge import openapi
from bridge.model import KINDS, OUTCOMES
from tests import catalog
from tests.service.test_scheduler_steps import rig

Client = TestClient[Any, Any]
REGENERATE = "docs/openapi.json differs from the served document: run `make openapi` and commit it"


async def test_the_committed_document_is_the_served_one(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    served = await resp.json()
    committed = catalog.COMMITTED.read_text(encoding="utf-8")
    assert json.loads(committed) == served, REGENERATE
    assert committed == openapi.text(), REGENERATE  # its spelling too: what `make openapi` writes


def test_the_document_is_valid_openapi_3_1() -> None:
    validate(openapi.document())


def test_the_catalog_has_one_event_per_kind_and_outcome_with_its_headers() -> None:
    webhooks = openapi.document()["webhooks"]
    assert sorted(webhooks) == sorted(f"{k}.conversion.{o}" for k in KINDS for o in OUTCOMES)
    assert len(webhooks) == 10
    for event, item in webhooks.items():
        operation = item["post"]
        headers = {p["name"] for p in operation["parameters"] if p["in"] == "header"}
        assert {"webhook-id", "webhook-timestamp", "webhook-signature"} <= headers, event
        assert {"2XX", "410", "default"} <= operation["responses"].keys(), event
        schema = openapi.document()["components"]["schemas"][
            openapi.event_schema_ref(event).rsplit("/", 1)[1]  # type: ignore[union-attr]
        ]
        assert schema["properties"]["type"] == {"const": event}


BODY: dict[str, Any] = {
    "type": "video.conversion.finished",
    "timestamp": "2026-11-29T04:31:12Z",
    "data": {
        "job_id": "job_01jdx2v9q4k8m3n6p7r5s2t0wa",
        "project": "default",
        "kind": "video",
        "token": 426339926,
        "status": "finished",
        "error": None,
        "result": {"uuid": "u"},
        "metadata": {"order": "A-1001"},
    },
}


def _with(path: str, value: Any) -> bytes:
    body = json.loads(json.dumps(BODY))
    *parents, last = path.split(".")
    target = body
    for p in parents:
        target = target[p]
    if value is _DROP:
        del target[last]
    else:
        target[last] = value
    return json.dumps(body).encode()


_DROP = object()


def test_the_schemas_refuse_what_is_not_sent() -> None:
    """The check can fail: each of these is a body the bridge does not send."""
    assert catalog.problems(json.dumps(BODY).encode()) == []
    for path, value in [
        ("type", "video.conversion.done"),
        ("data.status", "failed"),  # the status is the type's outcome
        ("data.kind", "document"),  # and the kind its kind
        ("data.project", _DROP),
        ("data.token", "426339926"),  # a JSON number
        ("data.token", 0),
        ("data.job_id", "job_1"),
        ("data.extra", 1),  # additionalProperties: false
        ("extra", 1),
        ("timestamp", "yesterday"),
        ("data.result", []),
        ("data.metadata", _DROP),
    ]:
        assert catalog.problems(_with(path, value)), (path, value)
    expired = json.loads(json.dumps(BODY))
    expired["type"] = "video.conversion.expired"
    expired["data"]["status"] = "expired"
    assert catalog.problems(json.dumps(expired).encode())  # expired always says why
    expired["data"]["error"] = "the deadline passed"
    assert catalog.problems(json.dumps(expired).encode()) == []


def test_a_receiver_seeing_a_body_outside_the_catalog_fails_its_test() -> None:
    catalog.check(_with("data.project", _DROP))
    assert catalog.INVALID  # the autouse fixture would fail this test: clear it here
    catalog.INVALID.clear()


@pytest.mark.parametrize("spelling", ["canceled", "cancelled"])
async def test_every_event_type_arrives_and_validates(tmp_path: Path, spelling: str) -> None:
    async with rig(tmp_path, BRIDGE_JOB_DEADLINE="10s") as r:
        t0 = r.clock()
        for kind in KINDS:
            for outcome in ("finished", "failed", spelling):
                token = r.fake.add_job(kind, outcome=outcome, duration=0.5)  # type: ignore[arg-type]
                await r.register(token, f"/{kind}/{outcome}", kind=kind)
            forever = r.fake.add_job(kind, duration=math.inf)
            await r.register(forever, f"/{kind}/expired", kind=kind)
            await r.register(900_000_000 + KINDS.index(kind), f"/{kind}/not_found", kind=kind)
        # Small steps: the rate limiter spaces requests on the virtual clock too.
        for quarter in range(4, 41):
            await r.at(quarter / 4, t0)

        seen: dict[str, dict[str, Any]] = {}
        for call in r.rec.calls:
            payload = await r.verified(call)  # the signature verifies, too
            assert catalog.problems(call.body) == [], payload
            seen[payload["type"]] = payload
        assert sorted(seen) == sorted(f"{k}.conversion.{o}" for k in KINDS for o in OUTCOMES)
        assert len(r.rec.calls) == 10
