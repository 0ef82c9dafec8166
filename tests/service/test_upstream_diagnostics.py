"""What a real deployment needs to diagnose its upstream, through the real clients.

The scheduler is built by ``app.open_scheduler`` (so the upstream and callback sessions
are the ones ``serve`` uses) and stepped with ``run_once`` on a virtual clock. Uploadcare
is a scripted server on loopback that stamps its answers as a test says (``Date``,
``X-Uploadcare-Request-Id``); the egress proxy is a real forward proxy, an aiohttp app
that takes absolute-form requests and forwards them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from bridge import settings as settings_mod
from bridge.app import open_scheduler
from bridge.metrics import Metrics
from bridge.model import Job, NewJob
from bridge.netpolicy import NetworkPolicy
from bridge.pacing import PauseBoard
from bridge.scheduler import CLOCK_SKEW_MESSAGE, PAUSED_MESSAGE, Scheduler, StepReport
from bridge.settings import Settings
from bridge.store import Store, open_store
from bridge.webhooks import SecretBook
from tests.conftest import FakeClock, base_env
from tests.harness import Receiver, receiver, serving

STUCK = 10.0  # a safety net for a step, not a measure of anything
# The name the bridge is given for Uploadcare: it resolves nowhere, so only a proxy that
# maps it to the scripted server can reach it (the proxy test proves every request went
# through the proxy by the requests succeeding at all).
UPSTREAM_HOST = "uploadcare.invalid"
PROXY_USER = "egress"
PROXY_PASSWORD = "p@ss w0rd"  # percent-encoded in the URL
FINISHED = {"status": "finished", "error": None, "result": {"uuid": "u-1"}}


# --- Uploadcare, scripted ---------------------------------------------------------------------


@dataclass
class Uploadcare:
    """Answers status requests from a queue (the last answer repeats)."""

    url: str = ""
    answers: deque[tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=deque)
    seen: list[dict[str, str]] = field(default_factory=list)

    def then(self, status: int, body: dict[str, Any], **headers: str) -> None:
        self.answers.append((status, body, headers))

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append(dict(request.headers))
        status, body, headers = self.answers[0]
        if len(self.answers) > 1:
            self.answers.popleft()
        return web.json_response(body, status=status, headers=headers)


@dataclass
class Proxy:
    """A forward proxy: absolute-form requests in, forwarded (UPSTREAM_HOST mapped to
    ``target``); records each request's target and Proxy-Authorization."""

    target: str  # host:port that UPSTREAM_HOST stands for
    url: str = ""
    seen: list[tuple[str, str | None]] = field(default_factory=list)
    session: aiohttp.ClientSession | None = None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = request.raw_path  # absolute-form: http://host:port/path
        self.seen.append((target, request.headers.get("Proxy-Authorization")))
        if not target.startswith("http://"):
            return web.Response(status=400, text="a forward proxy takes absolute-form requests")
        url = URL(target)
        if url.host == UPSTREAM_HOST:
            url = URL(f"http://{self.target}{url.raw_path_qs}")
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("proxy-authorization", "proxy-connection", "host", "connection")
        }
        assert self.session is not None
        async with self.session.request(request.method, url, headers=headers) as answer:
            body = await answer.read()
            kept = {
                k: v
                for k, v in answer.headers.items()
                if k.lower() in ("content-type", "date", "retry-after", "x-uploadcare-request-id")
            }
            return web.Response(status=answer.status, body=body, headers=kept)


@contextlib.asynccontextmanager
async def uploadcare() -> AsyncIterator[Uploadcare]:
    up = Uploadcare()
    async with serving(up.handle) as up.url:
        yield up


@contextlib.asynccontextmanager
async def forward_proxy(target: str) -> AsyncIterator[Proxy]:
    proxy = Proxy(target)
    async with aiohttp.ClientSession() as session, serving(proxy.handle) as proxy.url:
        proxy.session = session
        yield proxy


# --- The bridge's scheduler, stepped ----------------------------------------------------------


@dataclass
class Bridge:
    clock: FakeClock
    settings: Settings
    store: Store
    rec: Receiver
    metrics: Metrics
    pauses: PauseBoard
    sched: Scheduler

    async def register(self, token: int, path: str = "/h") -> Job:
        now = self.clock()
        job, created = await self.store.register(
            NewJob("alpha", "video", token, self.rec.url + path, json.dumps({"path": path})),
            now=now,
            first_poll_at=now + self.settings.poll_initial_delay,
            deadline_at=now + self.settings.job_deadline,
        )
        assert created
        return job

    async def step(self, advance: float) -> StepReport:
        self.clock.advance(advance)
        return await asyncio.wait_for(self.sched.run_once(), STUCK)

    def metric(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


@contextlib.asynccontextmanager
async def bridge(tmp_path: Path, upstream_url: str, **env: str | None) -> AsyncIterator[Bridge]:
    # A virtual clock at the real time: receivers check a signature's timestamp.
    clock = FakeClock(start=float(int(time.time())))
    async with receiver() as rec:
        settings = settings_mod.load(base_env(tmp_path, BRIDGE_UPSTREAM_URL=upstream_url, **env))
        store = await open_store(settings.database)
        metrics, pauses = Metrics(), PauseBoard(clock)
        secrets = SecretBook(
            settings.webhook_secrets,
            store,
            clock,
            schemes=settings.signature_schemes,
            overlap=settings.secret_rotation_overlap,
        )
        try:
            async with open_scheduler(
                settings,
                store,
                secrets=secrets,
                metrics=metrics,
                pauses=pauses,
                policy=NetworkPolicy(allow=settings.callback_allow_networks),
                clock=clock,
                monotonic=clock,
                rand=lambda: 0.5,
            ) as sched:
                try:
                    yield Bridge(clock, settings, store, rec, metrics, pauses, sched)
                finally:
                    await sched.stop(0)
        finally:
            await store.close()


# --- The egress proxy -------------------------------------------------------------------------


async def test_every_upstream_request_goes_through_the_proxy_and_no_callback_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy in the environment is ignored by both sessions (trust_env is off): the
    # callback would otherwise go through it.
    async with uploadcare() as up, forward_proxy(up.url.removeprefix("http://")) as proxy:
        for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        port = URL(up.url).port
        proxy_url = f"http://{PROXY_USER}:p%40ss%20w0rd@{proxy.url.removeprefix('http://')}"
        up.then(200, {"status": "processing", "error": None, "result": None})
        up.then(200, FINISHED)
        async with bridge(
            tmp_path, f"http://{UPSTREAM_HOST}:{port}", BRIDGE_UPSTREAM_PROXY=proxy_url
        ) as b:
            job = await b.register(424242, "/done")
            first = await b.step(1.0)
            assert (first.polled, first.outcomes) == (1, 0)
            second = await b.step(2.0)
            assert (second.polled, second.outcomes, second.delivered) == (1, 1, 1)

            # Both polls went to the proxy, absolute-form, with the proxy's credentials
            # (the URL's user-info, decoded), and reached Uploadcare through it.
            status_url = f"http://{UPSTREAM_HOST}:{port}/convert/video/status/424242/"
            credentials = base64.b64encode(f"{PROXY_USER}:{PROXY_PASSWORD}".encode()).decode()
            assert proxy.seen == [(status_url, f"Basic {credentials}")] * 2
            assert len(up.seen) == 2
            assert all("Proxy-Authorization" not in h for h in up.seen)
            assert all(h["Authorization"].startswith("Uploadcare ") for h in up.seen)

            # The callback went straight to the receiver, never through the proxy.
            assert [c.path for c in b.rec.calls] == ["/done"]
            assert "Proxy-Authorization" not in b.rec.calls[0].headers
            assert not [t for t, _ in proxy.seen if b.rec.url in t or "/done" in t]
            delivered = await b.store.get_job("alpha", job.id)
            assert delivered is not None and delivered.state == "delivered"
            assert b.metric("bridge_upstream_requests_total", code="200", project="default") == 2.0


async def test_without_a_proxy_setting_no_request_uses_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY in the environment is not BRIDGE_UPSTREAM_PROXY: upstream requests go
    straight to Uploadcare."""
    async with uploadcare() as up, forward_proxy(up.url.removeprefix("http://")) as proxy:
        for name in ("HTTP_PROXY", "http_proxy"):
            monkeypatch.setenv(name, proxy.url)
        up.then(200, FINISHED)
        async with bridge(tmp_path, up.url) as b:
            await b.register(7)
            assert (await b.step(1.0)).delivered == 1
        assert len(up.seen) == 1 and proxy.seen == []


# --- Clock skew -------------------------------------------------------------------------------


@pytest.mark.parametrize(("offset", "side"), [(600, "behind"), (-600, "ahead of")])
async def test_a_401_under_ten_minutes_of_skew_is_reported_as_clock_skew(
    tmp_path: Path, offset: int, side: str
) -> None:
    """Uploadcare's clock is ten minutes off this host's and it refuses the signature:
    /readyz and the log say clock skew, with its direction and size, and the log says to
    fix the clock, not the keys; the pause metric's reason is the fixed `clock skew`."""
    async with uploadcare() as up:
        # The client's clock is the wall clock: Uploadcare's is ten minutes off it.
        up.then(
            401,
            {"detail": "Invalid signature. Please check your Secret key."},
            Date=formatdate(time.time() + offset, usegmt=True),
            **{"X-Uploadcare-Request-Id": "req-skew-1"},
        )
        async with bridge(tmp_path, up.url) as b:
            await b.register(11)
            with capture_logs() as logs:
                assert (await b.step(1.0)).polled == 1

            # /readyz's upstream object.
            ready = b.pauses.describe()
            assert ready["state"] == "paused"
            reason = ready["reason"]
            # Date has whole seconds: ten minutes of skew reads as 599 to 601 s.
            pattern = rf"clock skew \(this host is (599|600|601) s {side} Uploadcare\)"
            assert re.fullmatch(pattern, reason), reason

            # The metrics: the skew, and the pause under the fixed reason.
            skew = b.metric("bridge_upstream_clock_skew_seconds", project="default")
            assert skew is not None and abs(skew - offset) <= 1.5
            b.metrics.set_paused(b.pauses.reasons())
            assert b.metric("bridge_upstream_paused", reason="clock skew", project="default") == 1
            assert "this host is" not in b.metrics.exposition().decode()

            # The log: one skew warning, and the pause, saying to fix the clock.
            warnings = [e for e in logs if e["event"] == "upstream_clock_skew"]
            assert len(warnings) == 1 and warnings[0]["log_level"] == "warning"
            [paused] = [e for e in logs if e["event"] == "upstream_paused"]
            assert paused["reason"] == reason
            assert paused["message"] == CLOCK_SKEW_MESSAGE and "NTP" in paused["message"]
            assert "UPLOADCARE_SECRET_KEY" not in paused["message"]
            assert paused["upstream_request_id"] == "req-skew-1"
            assert abs(paused["skew_s"] - offset) <= 1.5


async def test_a_401_with_the_clocks_agreeing_is_still_the_keys(tmp_path: Path) -> None:
    async with uploadcare() as up:
        up.then(401, {"detail": "Incorrect authentication credentials."})  # aiohttp's own Date
        async with bridge(tmp_path, up.url) as b:
            await b.register(12)
            with capture_logs() as logs:
                await b.step(1.0)
            assert b.pauses.describe()["reason"] == "credentials rejected (401)"
            [paused] = [e for e in logs if e["event"] == "upstream_paused"]
            assert paused["message"] == PAUSED_MESSAGE and paused["skew_s"] is None
            assert not [e for e in logs if e["event"] == "upstream_clock_skew"]
            skew = b.metric("bridge_upstream_clock_skew_seconds", project="default")
            assert skew is not None and abs(skew) <= 1.5


# --- Request ids ------------------------------------------------------------------------------


async def test_every_answer_that_is_not_2xx_is_logged_with_its_request_id(
    tmp_path: Path,
) -> None:
    async with uploadcare() as up:
        up.then(404, {"detail": "Not found."}, **{"X-Uploadcare-Request-Id": "req-404"})
        up.then(503, {"detail": "down"}, **{"X-Uploadcare-Request-Id": "req-503"})
        up.then(429, {}, **{"X-Uploadcare-Request-Id": "req-429", "Retry-After": "1"})
        up.then(403, {"detail": "Forbidden."}, **{"X-Uploadcare-Request-Id": "req-403"})
        up.then(200, FINISHED, **{"X-Uploadcare-Request-Id": "req-200"})
        async with bridge(tmp_path, up.url) as b:
            await b.register(13)
            with capture_logs() as logs:
                for _ in range(8):
                    await b.step(30.0)  # past every backoff and pause
            assert len(b.rec.calls) == 1
        lines = {
            e["event"]: e for e in logs if e["event"].startswith("upstream_") and "skew" not in e
        }
        assert lines["upstream_not_found"]["upstream_request_id"] == "req-404"
        assert lines["upstream_poll_failed"]["upstream_request_id"] == "req-503"
        assert lines["upstream_throttled"]["upstream_request_id"] == "req-429"
        assert lines["upstream_paused"]["upstream_request_id"] == "req-403"
        # Never in a metric label.
        assert "req-" not in b.metrics.exposition().decode()
