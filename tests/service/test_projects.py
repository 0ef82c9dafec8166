"""Several Uploadcare projects, end to end in process: one token number in two projects is
two conversions; each project has its own keys, budget, pauses and readiness entry.

The projects are those of one fake upstream (``FakeConfig.extra_keys``): each key pair
its own token space, throttle and canned answers, chosen by the public key a request is
signed with, as at Uploadcare. The scheduler is stepped with run_once() on
a virtual clock, as in test_scheduler_steps.py (first poll 1 s after registration, then
2 s; rand 0.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge import keys
from bridge import settings as settings_mod
from bridge.app import create_app, open_scheduler
from bridge.fake_upstream import FakeConfig, FakeUpstream, running
from bridge.metrics import Metrics
from bridge.model import Job, NewJob
from bridge.netpolicy import NetworkPolicy
from bridge.pacing import PauseBoard
from bridge.scheduler import Scheduler, StepReport
from bridge.settings import Settings
from bridge.store import Store, open_store
from bridge.webhooks import SecretBook
from tests.conftest import ALPHA, BETA, UC_PUBLIC, UC_SECRET, FakeClock, base_env
from tests.harness import Receiver, receiver

STUCK = 10.0
PROJECTS = {
    "BRIDGE_UPLOADCARE_PROJECTS": "shop:pub-shop,staging:pub-staging",
    "UPLOADCARE_SECRET_KEY_SHOP": "sec-shop",
    "UPLOADCARE_SECRET_KEY_STAGING": "sec-staging",
    "BRIDGE_TENANT_PROJECTS": "alpha:shop+staging,beta:staging",
}
SHOP, STAGING = "pub-shop", "pub-staging"  # the projects' public keys at the fake


@dataclass
class Rig:
    clock: FakeClock
    settings: Settings
    store: Store
    fake: FakeUpstream
    rec: Receiver
    metrics: Metrics
    pauses: PauseBoard
    sched: Scheduler = field(init=False)

    async def register(self, project: str, token: int, path: str, tenant: str = "alpha") -> Job:
        now = self.clock()
        job, created = await self.store.register(
            NewJob(tenant, "video", token, self.rec.url + path, None, project),
            now=now,
            first_poll_at=now + self.settings.poll_initial_delay,
            deadline_at=now + self.settings.job_deadline,
        )
        assert created
        return job

    async def at(self, offset: float, start: float) -> StepReport:
        self.clock.now = start + offset
        return await asyncio.wait_for(self.sched.run_once(), STUCK)

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    def callbacks(self) -> dict[str, dict[str, Any]]:
        """Each callback's body by the path it came to."""
        return {c.path: c.json() for c in self.rec.calls}


@contextlib.asynccontextmanager
async def rig(
    tmp_path: Path, *, other: FakeUpstream | None = None, **env: str
) -> AsyncIterator[Rig]:
    """The bridge on one fake serving every project; with ``other``, the projects ``other``
    serves are its own, the two fakes behind one URL (a fake's clock is all its projects')."""
    clock = FakeClock(start=float(int(time.time())))
    keys = {SHOP: "sec-shop", STAGING: "sec-staging"}
    if other is not None:
        other.clock = clock
        keys = {k: v for k, v in keys.items() if k not in other.projects}
    config = FakeConfig(
        public_key=UC_PUBLIC, secret_key=UC_SECRET, extra_keys=keys, clock=clock, seed=1
    )
    async with contextlib.AsyncExitStack() as stack:
        up = await stack.enter_async_context(running(config, "127.0.0.1", 0))
        url = up.url
        if other is not None:
            url = await stack.enter_async_context(by_key(up.fake, other))
        rec = await stack.enter_async_context(receiver())
        settings = settings_mod.load(
            base_env(tmp_path, BRIDGE_UPSTREAM_URL=url, **{**PROJECTS, **env})
        )
        store = await open_store(settings.database)
        metrics = Metrics()
        metrics.add_projects(settings.projects)
        r = Rig(clock, settings, store, up.fake, rec, metrics, PauseBoard(clock, settings.projects))
        secrets = SecretBook(settings.webhook_secrets, store, clock)
        try:
            async with open_scheduler(
                settings,
                store,
                secrets=secrets,
                metrics=metrics,
                pauses=r.pauses,
                policy=NetworkPolicy(allow=settings.callback_allow_networks),
                clock=clock,
                monotonic=clock,
                rand=lambda: 0.5,
            ) as sched:
                r.sched = sched
                try:
                    yield r
                finally:
                    await sched.stop(0)
        finally:
            await store.close()


@contextlib.asynccontextmanager
async def by_key(*fakes: FakeUpstream) -> AsyncIterator[str]:
    """One URL in front of several fakes: each request goes to the fake serving the public
    key it is signed with, and its answer is stamped (Date, request id) by that fake."""
    chosen = web.RequestKey("chosen_fake", FakeUpstream)

    def pick(request: web.Request) -> FakeUpstream:
        _, _, credentials = request.headers.get("Authorization", "").partition(" ")
        public = credentials.strip().partition(":")[0]
        request[chosen] = next((f for f in fakes if public in f.projects), fakes[0])
        return request[chosen]

    async def status(request: web.Request) -> web.StreamResponse:
        return await pick(request).handle_status(request)

    async def stamp(request: web.Request, response: web.StreamResponse) -> None:
        if chosen in request:
            await request[chosen].stamp(request, response)

    app = web.Application()
    app.on_response_prepare.append(stamp)
    app.router.add_get("/convert/{kind:video|document}/status/{token}/", status)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def api(r: Rig) -> AsyncIterator[TestClient[Any, Any]]:
    """The HTTP API on the rig's store, clock and pause board (its scheduler is the rig's)."""
    app = create_app(r.settings, clock=r.clock, store=r.store, with_scheduler=False)
    app[keys.PAUSES] = r.pauses
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client


def auth(secret: str = ALPHA) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_one_token_in_two_projects_is_two_jobs_with_each_projects_result(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        r.fake.add_job("video", token=777, outcome="finished", duration=0.5, project=SHOP)
        r.fake.add_job(
            "video", token=777, outcome="failed", duration=0.5, error="bad input", project=STAGING
        )
        shop = await r.register("shop", 777, "/shop")
        staging = await r.register("staging", 777, "/staging")
        assert shop.id != staging.id

        done = await r.at(1.0, t0)
        assert (done.polled, done.outcomes, done.delivered) == (2, 2, 2)
        # Each project was asked with its own keys, once, about its own token.
        assert [q.token for q in r.fake.status_requests(project=SHOP)] == [777]
        assert [q.token for q in r.fake.status_requests(project=STAGING)] == [777]
        assert r.fake.status_requests(project=UC_PUBLIC) == []
        bodies = r.callbacks()
        assert bodies["/shop"]["type"] == "video.conversion.finished"
        assert bodies["/staging"]["type"] == "video.conversion.failed"
        assert bodies["/shop"]["data"]["project"] == "shop"
        assert bodies["/staging"]["data"]["project"] == "staging"
        assert bodies["/shop"]["data"]["result"] == r.fake.job("video", 777, project=SHOP).result
        assert (
            bodies["/staging"]["data"]["result"] == r.fake.job("video", 777, project=STAGING).result
        )
        assert bodies["/shop"]["data"]["result"] != bodies["/staging"]["data"]["result"]
        assert bodies["/staging"]["data"]["error"] == "bad input"
        seen = await r.store.get_job("alpha", shop.id)
        assert seen is not None and (seen.project, seen.outcome) == ("shop", "finished")


async def test_a_429_in_one_project_pauses_only_that_project(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        r.fake.add_job("video", token=1, duration=600, project=SHOP)
        r.fake.add_job("video", token=2, outcome="finished", duration=2.5, project=STAGING)
        await r.register("shop", 1, "/shop")
        await r.register("staging", 2, "/staging")
        r.fake.respond_next(429, retry_after=5, project=SHOP)

        first = await r.at(1.0, t0)
        assert first.polled == 2
        assert [q.status for q in r.fake.status_requests(project=SHOP)] == [429]
        assert [q.status for q in r.fake.status_requests(project=STAGING)] == [200]
        # The pause is the shop project's, for every replica (the store holds it).
        assert [row[0] for row in await r.store.pauses()] == ["shop:throttled"]
        assert r.pauses.paused(r.clock()) == (("shop",), ())
        assert r.metric("bridge_upstream_throttled_total", project="shop") == 1.0
        assert r.metric("bridge_upstream_throttled_total", project="staging") == 0.0
        assert r.metric("bridge_upstream_requests_total", code="429", project="shop") == 1.0
        assert r.metric("bridge_upstream_requests_total", code="200", project="staging") == 1.0

        async with api(r) as client:
            ready = await (await client.get("/readyz")).json()
            upstream = ready["upstream"]
            assert (ready["status"], upstream["state"]) == ("ready", "paused")
            assert upstream["reason"] == "throttled (429)"
            assert upstream["projects"]["shop"]["state"] == "paused"
            assert upstream["projects"]["shop"]["reason"] == "throttled (429)"
            assert upstream["projects"]["staging"] == {"state": "ok"}
            assert upstream["projects"]["default"] == {"state": "ok"}
            text = await (await client.get("/metrics")).text()
            assert 'bridge_upstream_paused{project="shop",reason="throttled (429)"} 1.0' in text

        # The other project keeps polling and delivering while the shop project waits.
        during = await r.at(3.0, t0)
        assert (during.polled, during.outcomes, during.delivered) == (1, 1, 1)
        assert r.callbacks()["/staging"]["data"]["project"] == "staging"
        assert len(r.fake.status_requests(project=SHOP)) == 1  # nothing went to the paused project
        for offset in (4.0, 5.9):
            await r.at(offset, t0)
        assert len(r.fake.status_requests(project=SHOP)) == 1

        await r.at(6.5, t0)  # Retry-After has passed (and the half-second slack)
        assert [q.status for q in r.fake.status_requests(project=SHOP)] == [429, 200]
        assert r.pauses.describe()["state"] == "ok"


async def test_a_rejection_pauses_its_project_only(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        r.fake.add_job("video", token=1, duration=600, project=SHOP)
        r.fake.add_job("video", token=1, duration=600, project=STAGING)
        await r.register("shop", 1, "/shop")
        await r.register("staging", 1, "/staging")
        r.fake.respond_next(401, project=STAGING)
        assert (await r.at(1.0, t0)).polled == 2
        assert r.pauses.paused(r.clock()) == (("staging",), ())
        described = r.pauses.describe()["projects"]
        assert described["staging"]["reason"] == "credentials rejected (401)"
        assert described["shop"] == {"state": "ok"}
        assert (await r.at(3.0, t0)).polled == 1  # shop, on its growth rule
        assert len(r.fake.status_requests(project=STAGING)) == 1


async def test_three_404s_name_the_project(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        # Known to shop, not to staging.
        r.fake.add_job("video", token=55, duration=600, project=SHOP)
        j = await r.register("staging", 55, "/nf")
        for offset in (1.0, 3.0, 5.0):
            await r.at(offset, t0)
        assert [q.status for q in r.fake.status_requests(project=STAGING)] == [404, 404, 404]
        body = r.callbacks()["/nf"]
        assert body["type"] == "video.conversion.not_found"
        assert body["data"]["error"] == "token not known to Uploadcare project staging"
        assert body["data"]["project"] == "staging"
        done = await r.store.get_job("alpha", j.id)
        assert done is not None and done.outcome == "not_found"
        assert r.fake.status_requests(project=SHOP) == []


async def test_registration_takes_the_tenants_projects_only(tmp_path: Path) -> None:
    async with rig(tmp_path) as r, api(r) as client:
        url = r.rec.url + "/h"

        async def post(body: dict[str, Any], secret: str = ALPHA) -> tuple[int, Any]:
            resp = await client.post("/v1/jobs", json=body, headers=auth(secret))
            return resp.status, await resp.json()

        # alpha may use shop and staging: it must say which.
        status, problem = await post({"token": 9, "callback_url": url})
        assert status == 422
        assert problem["errors"] == [{"field": "project", "message": "project is required"}]
        for project in ("default", "nope", "SHOP", 7, None, ["shop"]):
            status, problem = await post({"token": 9, "callback_url": url, "project": project})
            assert status == 422, project
            assert problem["errors"] == [{"field": "project", "message": "project is not allowed"}]
            assert "nope" not in json.dumps(problem)
        status, made = await post({"token": 9, "callback_url": url, "project": "shop"})
        assert status == 201 and made["project"] == "shop"
        again, same = await post({"token": 9, "callback_url": url, "project": "shop"})
        assert (again, same["id"]) == (200, made["id"])

        # beta may use staging only: it may leave the project out, and gets staging.
        status, beta_job = await post({"token": 9, "callback_url": url}, BETA)
        assert status == 201 and beta_job["project"] == "staging"
        status, problem = await post({"token": 10, "callback_url": url, "project": "shop"}, BETA)
        assert status == 422 and problem["errors"][0]["message"] == "project is not allowed"
        # Token 9 of staging is beta's now: alpha, which may use staging too, is refused.
        status, _ = await post({"token": 9, "callback_url": url, "project": "staging"})
        assert status == 409

        listed = await (await client.get("/v1/jobs?project=shop", headers=auth())).json()
        assert [j["id"] for j in listed["items"]] == [made["id"]]
        every = await (await client.get("/v1/jobs?project=", headers=auth())).json()
        assert [j["id"] for j in every["items"]] == [made["id"]]
        none = await (await client.get("/v1/jobs?project=staging", headers=auth())).json()
        assert none["items"] == []
        bad = await client.get("/v1/jobs?project=Not%20One", headers=auth())
        assert bad.status == 422

        resp = await client.post(
            "/v1/redeliveries", json={"state": "delivered", "project": "shop"}, headers=auth(BETA)
        )
        assert resp.status == 422
        resp = await client.post(
            "/v1/redeliveries", json={"state": "delivered", "project": "shop"}, headers=auth()
        )
        assert resp.status == 202


async def test_a_skewed_clock_pauses_its_project_as_clock_skew_and_the_other_keeps_going(
    tmp_path: Path,
) -> None:
    """Staging's Uploadcare clock is 20 minutes behind this host: it refuses every signed
    request (401, as past 15 minutes Uploadcare does), and the bridge says clock skew for
    staging only, with its direction and size, while shop keeps delivering."""
    staging = FakeUpstream(
        FakeConfig(public_key=STAGING, secret_key="sec-staging", clock_offset=-1200.0)
    )
    async with rig(tmp_path, other=staging) as r:
        t0 = r.clock()
        r.fake.add_job("video", token=1, outcome="finished", duration=2.5, project=SHOP)
        staging.add_job("video", token=2, outcome="finished", duration=0.5)
        await r.register("shop", 1, "/shop")
        await r.register("staging", 2, "/staging")

        assert (await r.at(1.0, t0)).polled == 2
        assert [q.status for q in staging.status_requests()] == [401]
        assert [q.status for q in r.fake.status_requests(project=SHOP)] == [200]
        assert r.pauses.paused(r.clock()) == (("staging",), ())
        skew = r.metrics.registry.get_sample_value(
            "bridge_upstream_clock_skew_seconds", {"project": "staging"}
        )
        assert skew is not None and abs(skew + 1200) <= 1.5
        shop_skew = r.metrics.registry.get_sample_value(
            "bridge_upstream_clock_skew_seconds", {"project": "shop"}
        )
        assert shop_skew is not None and abs(shop_skew) <= 1.5

        async with api(r) as client:
            projects = (await (await client.get("/readyz")).json())["upstream"]["projects"]
        reason = projects["staging"]["reason"]
        # Date has whole seconds: twenty minutes of skew reads as 1199 to 1201 s.
        pattern = r"clock skew \(this host is (1199|1200|1201) s ahead of Uploadcare\)"
        assert re.fullmatch(pattern, reason), reason
        assert projects["shop"] == {"state": "ok"}
        assert projects["default"] == {"state": "ok"}

        # Shop keeps polling and delivering; nothing more goes to the paused staging.
        during = await r.at(3.0, t0)
        assert (during.polled, during.delivered) == (1, 1)
        assert r.callbacks()["/shop"]["data"]["project"] == "shop"
        assert len(staging.status_requests()) == 1
