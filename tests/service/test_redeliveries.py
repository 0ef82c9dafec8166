"""POST /v1/redeliveries through the API, with the scheduler stepped on a virtual clock:
after a receiver outage, one request starts a new round for every undeliverable job, and
each callback comes again with the same webhook-id and the same body."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.model import NewJob
from tests.conftest import ALPHA, BETA
from tests.service.test_scheduler_steps import rig

H = {"Authorization": f"Bearer {ALPHA}"}


async def test_bulk_redelivery_sends_the_same_callbacks_again(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        app = create_app(r.settings, clock=r.clock, store=r.store, with_scheduler=False)
        async with TestClient(TestServer(app, host="127.0.0.1")) as api:
            t0 = r.clock()
            # The receiver is down for /a and /b (410: undeliverable at once), up for /c.
            r.rec.plan("/a", 410)
            r.rec.plan("/b", 410)
            r.rec.plan("/beta", 410)
            jobs = {}
            for path in ("/a", "/b", "/c"):
                token = r.fake.add_job("video", outcome="finished", duration=0.5)
                jobs[path] = await r.register(token, path)
            token = r.fake.add_job("video", outcome="finished", duration=0.5)
            beta, _ = await r.store.register(
                NewJob("beta", "video", token, r.rec.url + "/beta", None),
                now=t0,
                first_poll_at=t0 + 1,
                deadline_at=t0 + 86400,
            )
            for quarter in range(4, 9):
                await r.at(quarter / 4, t0)
            assert {p: (await r.job(j.id)).state for p, j in jobs.items()} == {
                "/a": "undeliverable",
                "/b": "undeliverable",
                "/c": "delivered",
            }
            first = {c.path: c for c in r.rec.calls}
            assert len(first) == 4

            r.clock.advance(60)
            resp = await api.post(
                "/v1/redeliveries", json={"state": "undeliverable", "limit": 1}, headers=H
            )
            assert resp.status == 202, await resp.text()
            assert await resp.json() == {"count": 1, "remaining": 1}
            resp = await api.post("/v1/redeliveries", json={"state": "undeliverable"}, headers=H)
            assert await resp.json() == {"count": 1, "remaining": 0}
            resp = await api.post("/v1/redeliveries", json={"state": "undeliverable"}, headers=H)
            assert await resp.json() == {"count": 0, "remaining": 0}  # rounds running: skipped

            step = await r.step()
            assert (step.attempted, step.delivered) == (2, 2)
            again = r.rec.calls[4:]
            assert sorted(c.path for c in again) == ["/a", "/b"]
            for call in again:
                before = first[call.path]
                assert call.headers["webhook-id"] == before.headers["webhook-id"]
                assert call.body == before.body
                await r.verified(call)
            for path in ("/a", "/b"):
                resp = await api.get(f"/v1/jobs/{jobs[path].id}/attempts", headers=H)
                items: list[dict[str, Any]] = (await resp.json())["items"]
                assert [(a["n"], a["response_status"]) for a in items] == [(1, 410), (2, 200)]
            # The other tenant's job was not touched.
            other = await r.store.get_job("beta", beta.id)
            assert other is not None and other.state == "undeliverable"
            resp = await api.post(
                "/v1/redeliveries",
                json={"state": "undeliverable"},
                headers={"Authorization": f"Bearer {BETA}"},
            )
            assert await resp.json() == {"count": 1, "remaining": 0}


async def test_bulk_redelivery_validates_its_body(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        app = create_app(r.settings, clock=r.clock, store=r.store, with_scheduler=False)
        async with TestClient(TestServer(app, host="127.0.0.1")) as api:
            # Order of checks: 401, then 415, 413, 400, 422.
            resp = await api.post(
                "/v1/redeliveries", data=b"x", headers={"Content-Type": "text/plain"}
            )
            assert resp.status == 401
            resp = await api.post(
                "/v1/redeliveries", data=b"x", headers={**H, "Content-Type": "text/plain"}
            )
            assert resp.status == 415
            resp = await api.post(
                "/v1/redeliveries", data=b"{", headers={**H, "Content-Type": "application/json"}
            )
            assert resp.status == 400
            body = {"state": "gone", "project": "other", "limit": 0, "since": "yesterday", "x": 1}
            resp = await api.post("/v1/redeliveries", json=body, headers=H)
            assert resp.status == 422
            problem = await resp.json()
            assert problem["errors"] == [
                {"field": "(unknown)", "message": "unknown field"},
                {"field": "state", "message": "state must be 'undeliverable' or 'delivered'"},
                {"field": "project", "message": "project is not allowed"},
                {
                    "field": "since",
                    "message": "since must be an RFC 3339 time with an offset, like "
                    "2026-11-29T04:30:00Z",
                },
                {"field": "limit", "message": "limit must be an integer from 1 to 10000"},
            ]
            assert "other" not in json.dumps(problem) and "yesterday" not in json.dumps(problem)
            resp = await api.post(
                "/v1/redeliveries",
                json={"state": "delivered", "project": "default", "kind": "document"},
                headers=H,
            )
            assert (resp.status, await resp.json()) == (202, {"count": 0, "remaining": 0})
