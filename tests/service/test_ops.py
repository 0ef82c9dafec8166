"""/openapi.json against the router, /metrics, /readyz, retention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from bridge import keys
from bridge.app import create_app, purge_once
from bridge.openapi import document as openapi_document
from bridge.settings import Settings
from tests.conftest import ALPHA, FakeClock

Client = TestClient[Any, Any]
H = {"Authorization": f"Bearer {ALPHA}"}
URL = "http://127.0.0.1:9/hooks/uc"

SPEC_FAMILIES = {
    "bridge_jobs_registered": ("counter", {"kind"}),
    "bridge_jobs": ("gauge", {"state"}),
    "bridge_outcomes": ("counter", {"kind", "outcome"}),
    "bridge_upstream_requests": ("counter", {"code", "project"}),
    "bridge_upstream_request_duration_seconds": ("histogram", set()),
    "bridge_upstream_throttled": ("counter", {"project"}),
    "bridge_upstream_paused": ("gauge", {"reason", "project"}),
    "bridge_upstream_clock_skew_seconds": ("gauge", {"project"}),
    "bridge_callback_attempts": ("counter", {"result"}),
    "bridge_callback_duration_seconds": ("histogram", set()),
    "bridge_deliveries": ("counter", {"outcome"}),
    "bridge_notification_latency_seconds": ("histogram", set()),
    "bridge_scheduler_lag_seconds": ("histogram", set()),
}


async def test_openapi_is_3_1_and_lists_every_v1_route(client: Client) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.1")
    documented = {
        (path, method.upper())
        for path, item in doc["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"}
    }
    served = {
        (route.resource.canonical, route.method)
        for route in client.app.router.routes()
        if route.resource is not None
        and route.resource.canonical.startswith("/v1/")
        and route.method != "HEAD"
    }
    assert documented == served
    # Every response code a route can answer is documented: 401 everywhere, 503 (the
    # database) and 500 (a bug, answered by the middleware as a fixed problem) too.
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            assert {"401", "500", "503"} <= set(op["responses"]), (path, method)


async def test_metrics_expose_every_spec_family_and_count_registrations(client: Client) -> None:
    for token in (1, 2, 2):
        await client.post("/v1/jobs", json={"token": token, "callback_url": URL}, headers=H)
    await client.post(
        "/v1/jobs", json={"token": 3, "kind": "document", "callback_url": URL}, headers=H
    )
    text = await (await client.get("/metrics")).text()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, (kind, labels) in SPEC_FAMILIES.items():
        assert name in families, name
        assert families[name].type == kind, name
        for sample in families[name].samples:
            assert labels <= set(sample.labels) | {"le"} or not labels, (name, sample)
    registered = {
        s.labels["kind"]: s.value
        for s in families["bridge_jobs_registered"].samples
        if s.name.endswith("_total")
    }
    assert registered == {"video": 2.0, "document": 1.0}
    jobs = {s.labels["state"]: s.value for s in families["bridge_jobs"].samples}
    assert jobs["tracking"] == 3.0 and jobs["delivered"] == 0.0


async def test_every_operation_answers_a_documented_problem_when_the_database_is_down(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings(), with_scheduler=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        resp = await c.post("/v1/jobs", json={"token": 1, "callback_url": URL}, headers=H)
        job_id = (await resp.json())["id"]
        await app[keys.STORE].close()
        doc = openapi_document()
        for path, item in doc["paths"].items():
            for method, op in item.items():
                if method == "parameters":
                    continue
                body: dict[str, Any] | None = None
                if method == "post" and path == "/v1/redeliveries":
                    body = {"state": "undeliverable"}
                elif method == "post" and path != "/v1/signing-secrets/rotate":
                    body = {"token": 2, "callback_url": URL}  # rotate: no body, or {}
                resp = await c.request(
                    method, path.replace("{job_id}", job_id), json=body, headers=H
                )
                # A store-backed answer is 503; one served from memory may still be 200.
                assert resp.status in (200, 503), (method, path, resp.status)
                assert str(resp.status) in op["responses"], (method, path)
                if resp.status == 503:
                    assert resp.headers["Content-Type"].startswith("application/problem+json")
                    assert (await resp.json())["detail"] == (
                        "the database is not available; try again"
                    )


async def test_readyz_is_503_when_the_database_does_not_answer(
    make_settings: Callable[..., Settings],
) -> None:
    app = create_app(make_settings())
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        await app[keys.STORE].close()
        resp = await c.get("/readyz")
        assert resp.status == 503
        assert (await resp.json())["upstream"] == {
            "state": "ok",
            "projects": {"default": {"state": "ok"}},
        }
        assert (await c.get("/healthz")).status == 200
        # API calls answer 503 problem+json rather than crash.
        resp = await c.get("/v1/jobs", headers=H)
        assert resp.status == 503
        assert resp.headers["Content-Type"].startswith("application/problem+json")


async def test_retention_deletes_only_old_ended_jobs(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    app: web.Application = create_app(make_settings(BRIDGE_RETENTION="1h"), clock=clock)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        ids = []
        for token in (1, 2, 3):
            resp = await c.post("/v1/jobs", json={"token": token, "callback_url": URL}, headers=H)
            ids.append((await resp.json())["id"])
        await c.delete(f"/v1/jobs/{ids[0]}", headers=H)
        clock.advance(1800)
        await c.delete(f"/v1/jobs/{ids[1]}", headers=H)
        clock.advance(1801)  # ids[0] ended 3601 s ago, ids[1] 1801 s ago
        assert await purge_once(app) == 1
        assert (await c.get(f"/v1/jobs/{ids[0]}", headers=H)).status == 404
        assert (await c.get(f"/v1/jobs/{ids[1]}", headers=H)).status == 200
        assert (await c.get(f"/v1/jobs/{ids[2]}", headers=H)).status == 200  # still tracking


async def test_backlog_metrics_show_due_unstarted_work(
    make_settings: Callable[..., Settings], clock: FakeClock
) -> None:
    # No scheduler: what is due stays due, as when every worker is busy.
    app = create_app(make_settings(), clock=clock, with_scheduler=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        for token in (1, 2):
            await c.post("/v1/jobs", json={"token": token, "callback_url": URL}, headers=H)
        clock.advance(0.5)  # the first polls fall due 1 s after registration

        async def backlog() -> dict[tuple[str, str], float]:
            text = await (await c.get("/metrics")).text()
            return {
                (s.name, s.labels["work"]): s.value
                for f in text_string_to_metric_families(text)
                if f.name.startswith("bridge_backlog")
                for s in f.samples
            }

        assert (await backlog())[("bridge_backlog", "poll")] == 0
        clock.advance(10)
        values = await backlog()
        assert values[("bridge_backlog", "poll")] == 2
        assert values[("bridge_backlog_oldest_seconds", "poll")] == 9.5
        assert values[("bridge_backlog", "delivery")] == 0
        assert values[("bridge_backlog_oldest_seconds", "delivery")] == 0
        text = await (await c.get("/metrics")).text()
        assert "process_resident_memory_bytes" in text and "python_info" in text
