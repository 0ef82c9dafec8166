"""The scheduler stepped with run_once() on a virtual clock.

The service tier: in process, with real HTTP on loopback (the fake upstream and a
receiver), a real SQLite file and a virtual clock that only the test moves. Nothing here
waits on the wall clock: time passes by ``clock.advance``, and a poll is kept "in flight"
by holding its answer (``Held``) rather than by a slow server.

Settings are the defaults (first poll 1 s after registration, intervals 2-60 s, 20
requests a second), with the jitter fixed at its middle (``rand`` 0.5), so every time
below is exact.

The redesign's acceptance line, "a scheduler test drives a late joiner, a 429 pause and a
redeliver through run_once() on a virtual clock", is ``test_a_late_joiner_gets_a_poll_of_
its_own``, ``test_a_429_pause_holds_every_request_until_retry_after`` and
``test_a_redeliver_sends_the_same_callback_again``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from standardwebhooks.webhooks import Webhook
from structlog.testing import capture_logs

from bridge import settings as settings_mod
from bridge.app import open_scheduler
from bridge.fake_upstream import FakeConfig, FakeUpstream, running
from bridge.metrics import Metrics
from bridge.model import Job, NewJob, rfc3339
from bridge.netpolicy import NetworkPolicy
from bridge.pacing import PauseBoard
from bridge.scheduler import Scheduler, StatusSource, StepReport
from bridge.settings import Settings
from bridge.store import Store, open_store
from bridge.upstream import Observation
from bridge.webhooks import SecretBook, SigningKey
from tests.conftest import UC_PUBLIC, UC_SECRET, FakeClock, base_env
from tests.harness import Call, Receiver, receiver

# A safety net for awaiting events, not a measure of anything: no assertion is about time.
STUCK = 10.0


class Held:
    """The real upstream client, with a gate: while closed, each answer (already back from
    the fake) is kept from the scheduler until the test lets it through, so the poll stays
    in flight as long as the test needs. Open, it passes answers straight on."""

    def __init__(self, inner: StatusSource) -> None:
        self.inner = inner
        self.open = True
        self.held: list[tuple[int, asyncio.Event]] = []  # (token, gate), oldest first
        self._arrived = asyncio.Condition()

    async def status(self, project: str, kind: Any, token: int) -> Observation:
        observation = await self.inner.status(project, kind, token)
        if not self.open:
            gate = asyncio.Event()
            self.held.append((token, gate))
            async with self._arrived:
                self._arrived.notify_all()
            await gate.wait()
        return observation

    async def wait_for(self, count: int) -> None:
        """Until ``count`` answers are held."""

        async def wait() -> None:
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.held) >= count)

        await asyncio.wait_for(wait(), STUCK)

    def release(self, token: int | None = None) -> None:
        """Let the oldest held answer (of ``token``) through."""
        for i, (held, gate) in enumerate(self.held):
            if token is None or held == token:
                del self.held[i]
                gate.set()
                return
        raise AssertionError(f"no answer held for {token}")


@dataclass
class Rig:
    tmp_path: Path
    clock: FakeClock
    settings: Settings
    store: Store
    fake: FakeUpstream
    rec: Receiver
    metrics: Metrics
    pauses: PauseBoard
    secrets: SecretBook
    sched: Scheduler = field(init=False)
    upstream: Held = field(init=False)

    async def register(self, token: int, path: str = "/h", *, kind: str = "video") -> Job:
        """As ``POST /v1/jobs`` does it: straight into the store, on the virtual clock."""
        now = self.clock()
        job, created = await self.store.register(
            NewJob("alpha", kind, token, self.rec.url + path, json.dumps({"path": path})),
            now=now,
            first_poll_at=now + self.settings.poll_initial_delay,
            deadline_at=now + self.settings.job_deadline,
        )
        assert created
        return job

    async def job(self, job_id: str) -> Job:
        job = await self.store.get_job("alpha", job_id)
        assert job is not None
        return job

    async def step(self, sched: Scheduler | None = None) -> StepReport:
        return await asyncio.wait_for((sched or self.sched).run_once(), STUCK)

    async def at(self, offset: float, start: float) -> StepReport:
        """Set the clock to ``start + offset`` and take a step."""
        assert start + offset >= self.clock()
        self.clock.now = start + offset
        return await self.step()

    def requests(self, token: int | None = None) -> list[Any]:
        return self.fake.status_requests(token=token)

    async def verified(self, call: Call) -> dict[str, Any]:
        """The callback's payload, its Standard Webhooks signature checked."""
        (key,) = await self.secrets.for_tenant("alpha")
        secret = key.secret
        headers = {k.lower(): v for k, v in call.headers.items()}
        payload: dict[str, Any] = Webhook(secret).verify(call.body, headers)
        return payload

    @contextlib.asynccontextmanager
    async def scheduler(self) -> AsyncIterator[Scheduler]:
        """A scheduler on this rig's store and clock (a process of its own: its own owner)."""
        async with open_scheduler(
            self.settings,
            self.store,
            secrets=self.secrets,
            metrics=self.metrics,
            pauses=self.pauses,
            policy=NetworkPolicy(allow=self.settings.callback_allow_networks),
            clock=self.clock,
            monotonic=self.clock,
            rand=lambda: 0.5,
        ) as sched:
            sched.upstream = held = Held(sched.upstream)
            try:
                yield sched
            finally:
                held.open = True
                for _, gate in held.held:
                    gate.set()
                await sched.stop(0)


@contextlib.asynccontextmanager
async def rig(tmp_path: Path, **env: str) -> AsyncIterator[Rig]:
    # The virtual clock starts at the real time (a whole second, so that the sums below are
    # exact): receivers check a signature's timestamp against theirs (Standard Webhooks
    # allows five minutes).
    clock = FakeClock(start=float(int(time.time())))
    config = FakeConfig(public_key=UC_PUBLIC, secret_key=UC_SECRET, clock=clock, seed=1)
    async with running(config, host="127.0.0.1", port=0) as up, receiver() as rec:
        settings = settings_mod.load(base_env(tmp_path, BRIDGE_UPSTREAM_URL=up.url, **env))
        store = await open_store(settings.database)
        try:
            r = Rig(
                tmp_path,
                clock,
                settings,
                store,
                up.fake,
                rec,
                Metrics(),
                PauseBoard(clock),
                SecretBook(
                    settings.webhook_secrets,
                    store,
                    clock,
                    schemes=settings.signature_schemes,
                    overlap=settings.secret_rotation_overlap,
                ),
            )
            async with r.scheduler() as sched:
                r.sched = sched
                assert isinstance(sched.upstream, Held)
                r.upstream = sched.upstream
                yield r
        finally:
            await store.close()


def metric(r: Rig, name: str, **labels: str) -> float:
    value = r.metrics.registry.get_sample_value(name, labels or None)
    return value or 0.0


# -- fan-out and the late joiner ----------------------------------------------------------------


async def test_one_poll_serves_every_job_watching_a_token(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("video", outcome="finished", duration=2.5)
        jobs = [await r.register(token, f"/fan/{i}") for i in range(3)]

        assert (await r.step()).idle  # the first poll is 1 s after registration
        assert r.requests() == []

        first = await r.at(1.0, t0)
        assert (first.polled, first.outcomes) == (1, 0)
        for j in jobs:
            seen = await r.job(j.id)
            assert seen.polls == 1 and seen.upstream_status in ("pending", "processing")

        assert (await r.at(2.9, t0)).idle  # the next poll is the minimum interval later
        done = await r.at(3.0, t0)
        assert (done.polled, done.outcomes, done.attempted, done.delivered) == (1, 3, 3, 3)
        assert len(r.requests(token)) == 2  # two requests served three jobs
        assert sorted(c.path for c in r.rec.calls) == ["/fan/0", "/fan/1", "/fan/2"]
        for call in r.rec.calls:
            payload = await r.verified(call)
            assert payload["data"]["status"] == "finished"
            assert payload["data"]["metadata"] == {"path": call.path}
        for j in jobs:
            seen = await r.job(j.id)
            assert (seen.state, seen.outcome, seen.polls) == ("delivered", "finished", 2)


async def test_a_late_joiner_gets_a_poll_of_its_own(tmp_path: Path) -> None:
    """A job that registers while a poll of its watch is in flight is not given that poll's
    outcome: only jobs registered before the poll started are. It gets the next poll."""
    async with rig(tmp_path) as r:
        token = r.fake.add_job("video", outcome="finished", duration=0.5)
        early = await r.register(token, "/early")
        r.clock.advance(1.0)

        r.upstream.open = False
        step = asyncio.create_task(r.sched.run_once())
        await r.upstream.wait_for(1)  # the poll went out at t0+1; its answer is held
        r.clock.advance(0.1)
        late = await r.register(token, "/late")  # registered after the poll started
        r.upstream.open = True
        r.upstream.release()
        first = await asyncio.wait_for(step, STUCK)
        assert (first.polled, first.outcomes, first.delivered) == (1, 1, 1)
        assert [c.path for c in r.rec.calls] == ["/early"]
        still = await r.job(late.id)
        assert (still.state, still.outcome) == ("tracking", None)

        # The poll that decided left the watch due at once, for the late joiner.
        second = await r.step()
        assert (second.polled, second.outcomes, second.delivered) == (1, 1, 1)
        requests = r.requests(token)
        assert len(requests) == 2 and requests[1].at == r.clock() >= late.created_at
        assert [c.path for c in r.rec.calls] == ["/early", "/late"]
        payload = await r.verified(r.rec.calls[1])
        assert payload["data"]["job_id"] == late.id
        # Its outcome is the second poll's, made after it registered.
        assert payload["timestamp"] == rfc3339(requests[1].at)
        assert (await r.job(early.id)).polls == 1
        assert (await r.step()).idle


async def test_a_job_joining_during_a_poll_gets_its_first_poll_on_time(tmp_path: Path) -> None:
    """A job that registers while a poll of its watch is in flight is polled
    BRIDGE_POLL_INITIAL_DELAY after it registered, not when the in-flight poll's growth
    rule would have it, and that poll does not count in its polls."""
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("video", duration=600)
        early = await r.register(token, "/early")
        r.clock.advance(1.0)

        r.upstream.open = False
        step = asyncio.create_task(r.sched.run_once())
        await r.upstream.wait_for(1)  # the poll went out at t0+1; its answer is held
        r.clock.advance(0.1)
        late = await r.register(token, "/late")  # first poll promised at t0+2.1
        r.upstream.open = True
        r.upstream.release()
        assert (await asyncio.wait_for(step, STUCK)).polled == 1
        seen_early, seen_late = await r.job(early.id), await r.job(late.id)
        assert (seen_early.polls, seen_late.polls) == (1, 0)
        # The in-flight poll's own rule said t0+1.1+2; the newcomer was promised t0+2.1.
        assert seen_late.next_poll_at == t0 + 2.1

        assert (await r.at(2.09, t0)).idle
        assert (await r.at(2.1, t0)).polled == 1
        assert [q.at for q in r.requests(token)] == [t0 + 1.0, t0 + 2.1]
        assert ((await r.job(early.id)).polls, (await r.job(late.id)).polls) == (2, 1)


# -- pauses -------------------------------------------------------------------------------------


async def test_a_429_pause_holds_every_request_until_retry_after(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        tokens = [r.fake.add_job("video", duration=600) for _ in range(3)]
        for token in tokens:
            await r.register(token)
        r.fake.respond_next(429, retry_after=5)

        throttled = await r.at(1.0, t0)
        # One request went out and was throttled; the others (held by the rate limit at
        # the same instant) were given back, still due.
        assert (throttled.polled, throttled.deferred) == (1, 2)
        assert [q.status for q in r.requests()] == [429]
        assert r.pauses.describe()["reason"] == "throttled (429)"
        assert r.pauses.reasons() == {("throttled (429)", "default")}
        assert metric(r, "bridge_upstream_throttled_total", project="default") == 1.0
        assert [row[0] for row in await r.store.pauses()] == ["default:throttled"]  # all replicas

        for offset in (1.1, 2.0, 4.0, 5.9):
            assert (await r.at(offset, t0)).idle, offset
        assert len(r.requests()) == 1  # nothing at all went upstream during the pause

        # Retry-After has passed: polling resumes, a request at a time as the limit spaces them.
        resumed = await r.at(6.0, t0)
        assert (resumed.polled, resumed.deferred) == (1, 1)
        assert r.pauses.describe()["state"] == "ok"
        await r.at(6.06, t0)
        await r.at(6.5, t0)  # the throttled watch: half a second after the pause (jitter 0.5)
        after = r.requests()[1:]
        assert len(after) == 3 and {q.token for q in after} == set(tokens)
        assert all(q.status == 200 and q.at >= t0 + 6.0 for q in after)


async def test_a_rejection_pause_grows_on_repeats_and_a_good_answer_lifts_it(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        a = r.fake.add_job("video", duration=600)
        b = r.fake.add_job("video", duration=600)
        await r.register(a, "/a")
        r.fake.respond_next(401, times=2)
        r.clock.advance(1.0)

        # A's poll goes out at t0+1 and its 401 is held in flight; B registers, and its
        # poll goes out at t0+2 while A's is still in flight.
        r.upstream.open = False
        first = asyncio.create_task(r.sched.run_once())
        await r.upstream.wait_for(1)
        await r.register(b, "/b")
        r.clock.advance(1.0)
        second = asyncio.create_task(r.sched.run_once())
        await r.upstream.wait_for(2)
        r.clock.advance(0.5)
        r.upstream.open = True
        r.upstream.release(a)
        assert (await asyncio.wait_for(first, STUCK)).polled == 1
        paused_until = t0 + 2.5 + 5.0  # the first rejection: 5 s from when it was seen
        assert r.pauses.describe()["reason"] == "credentials rejected (401)"
        assert metric(r, "bridge_upstream_throttled_total", project="default") == 0.0
        r.upstream.release(b)
        assert (await asyncio.wait_for(second, STUCK)).polled == 1
        # B's 401 was in flight when the pause began: the same episode, not a longer pause.
        pause = r.pauses.get("default:rejected")
        assert pause is not None and pause.until == paused_until
        assert r.pauses.rejections("default:rejected") == 1
        assert await r.store.pauses() == [
            ("default:rejected", "credentials rejected (401)", paused_until, None, "default")
        ]
        jobs, _ = await r.store.list_jobs("alpha")
        # No job fails for it; both watches wait for the end of the pause.
        assert [j.state for j in jobs] == ["tracking", "tracking"]
        assert {j.next_poll_at for j in jobs} == {paused_until}

        assert (await r.at(7.4, t0)).idle  # nothing during the pause
        r.fake.respond_next(401)
        again = await r.at(7.5, t0)
        assert (again.polled, again.deferred) == (1, 1)
        pause = r.pauses.get("default:rejected")
        assert pause is not None and pause.until == t0 + 7.5 + 10.0  # grown: 5 s, then 10 s
        assert r.pauses.rejections("default:rejected") == 2
        assert len(r.requests()) == 3

        assert (await r.at(17.4, t0)).idle
        good = await r.at(17.5, t0)  # Uploadcare answers again
        assert good.polled == 1
        assert (
            r.pauses.get("default:rejected") is None
            and r.pauses.rejections("default:rejected") == 0
        )
        assert r.pauses.describe()["state"] == "ok"
        assert await r.store.pauses() == []  # lifted for every replica too
        assert (await r.at(17.56, t0)).polled == 1  # the other watch, given back, goes now

        # The count started again: the next rejection pauses for 5 s, not 20.
        r.fake.respond_next(401)
        await r.at(19.5, t0)
        pause = r.pauses.get("default:rejected")
        assert pause is not None and pause.until == t0 + 19.5 + 5.0


async def test_a_credentials_pause_moves_the_deadline_and_no_job_expires(
    tmp_path: Path,
) -> None:
    """Keys rejected for longer than the job's deadline: the job does not expire; once
    Uploadcare answers again it is tracked to its outcome, and its deadline has moved by
    the time polling was paused."""
    async with rig(tmp_path, BRIDGE_JOB_DEADLINE="10s") as r:
        t0 = r.clock()
        token = r.fake.add_job("video", outcome="finished", duration=19)
        j = await r.register(token, "/paused")
        assert j.deadline_at == t0 + 10
        r.fake.respond_next(401, times=2)

        assert (await r.at(1.0, t0)).polled == 1  # 401: paused 5 s
        assert (await r.at(6.0, t0)).polled == 1  # 401 again: paused 10 s more
        assert r.pauses.get("default:rejected") is not None
        for offset in (10.0, 12.0, 15.9):  # past the original deadline, still paused
            assert (await r.at(offset, t0)).idle, offset
        assert (await r.job(j.id)).state == "tracking"

        resumed = await r.at(16.0, t0)  # Uploadcare answers again
        assert (resumed.polled, resumed.expired) == (1, 0)
        assert r.pauses.describe()["state"] == "ok"
        # Paused from t0+1 to t0+16: the deadline moved by those 15 s.
        moved = await r.job(j.id)
        assert moved.deadline_at == t0 + 25
        assert moved.to_api()["deadline_at"] == rfc3339(t0 + 25)

        delivered = 0
        for offset in (18.0, 21.0):  # the growth rule: 2 s, then 3 s
            delivered += (await r.at(offset, t0)).delivered
        assert delivered == 1
        done = await r.job(j.id)
        assert (done.state, done.outcome, done.deadline_at) == ("delivered", "finished", t0 + 25)
        payload = await r.verified(r.rec.calls[0])
        assert payload["data"]["status"] == "finished"
        assert [q.status for q in r.requests()] == [401, 401, 200, 200, 200]


# -- failures, 404s and the deadline --------------------------------------------------------------


async def test_transient_failures_back_off(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("document", duration=14)
        j = await r.register(token, "/doc", kind="document")
        r.fake.respond_next(503, times=2)

        assert (await r.at(1.0, t0)).polled == 1
        assert (await r.job(j.id)).next_poll_at == t0 + 1.0 + 4.0  # twice the minimum
        assert (await r.at(4.9, t0)).idle
        assert (await r.at(5.0, t0)).polled == 1
        assert (await r.job(j.id)).next_poll_at == t0 + 5.0 + 8.0  # doubled
        assert (await r.at(12.9, t0)).idle
        assert (await r.at(13.0, t0)).polled == 1  # answered: the growth rule again
        seen = await r.job(j.id)
        assert seen.state == "tracking" and seen.upstream_status == "processing"
        assert seen.next_poll_at == t0 + 13.0 + 2.0
        assert [q.status for q in r.requests()] == [503, 503, 200]
        assert metric(r, "bridge_upstream_requests_total", code="503", project="default") == 2.0

        done = await r.at(15.0, t0)
        assert (done.outcomes, done.delivered) == (1, 1)


async def test_three_404s_end_as_not_found(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        j = await r.register(987654321, "/nf")
        for n, offset in enumerate((1.0, 3.0), start=1):
            report = await r.at(offset, t0)
            assert (report.polled, report.outcomes) == (1, 0)
            assert (await r.job(j.id)).next_poll_at == t0 + offset + 2.0, n
        third = await r.at(5.0, t0)
        assert (third.polled, third.outcomes, third.delivered) == (1, 1, 1)
        assert [q.status for q in r.requests()] == [404, 404, 404]
        payload = await r.verified(r.rec.calls[0])
        assert payload["type"] == "video.conversion.not_found"
        assert payload["data"]["error"] == "token not known to Uploadcare project default"
        assert payload["data"]["project"] == "default"
        assert (await r.job(j.id)).outcome == "not_found"
        assert (await r.at(60.0, t0)).idle  # the watch ended: no more polls


async def test_a_job_still_tracking_at_its_deadline_expires(tmp_path: Path) -> None:
    async with rig(tmp_path, BRIDGE_JOB_DEADLINE="10s") as r:
        t0 = r.clock()
        j = await r.register(r.fake.add_job("video", duration=math.inf), "/exp")
        polled = 0
        for offset in (1.0, 3.0, 6.0):  # 2 s, then 3 s (growing by half)
            polled += (await r.at(offset, t0)).polled
        assert polled == 3
        assert (await r.at(9.99, t0)).expired == 0
        expiry = await r.at(10.0, t0)
        assert (expiry.expired, expiry.polled, expiry.attempted, expiry.delivered) == (1, 0, 1, 1)
        payload = await r.verified(r.rec.calls[0])
        assert payload["data"]["status"] == "expired"
        assert payload["data"]["result"]["uuid"]  # the last result seen
        assert (await r.job(j.id)).state == "delivered"
        assert metric(r, "bridge_outcomes_total", kind="video", outcome="expired") == 1.0


# -- redelivery -----------------------------------------------------------------------------------


async def test_a_redeliver_sends_the_same_callback_again(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("video", outcome="finished", duration=0.5)
        j = await r.register(token, "/redeliver")
        delivered = await r.at(1.0, t0)
        assert delivered.delivered == 1
        assert (await r.job(j.id)).state == "delivered"

        r.clock.advance(60.0)
        again = await r.store.redeliver("alpha", j.id, now=r.clock())
        assert again is not None and again.state == "delivering"
        redelivered = await r.step()
        assert (redelivered.polled, redelivered.attempted, redelivered.delivered) == (0, 1, 1)

        first, second = r.rec.at("/redeliver")
        assert first.headers["webhook-id"] == second.headers["webhook-id"] == "msg_" + j.id[4:]
        assert first.body == second.body  # the same bytes
        assert int(second.headers["webhook-timestamp"]) - int(
            first.headers["webhook-timestamp"]
        ) in (59, 60, 61)  # signed afresh, at the attempt's (virtual) time
        assert await r.verified(first) == await r.verified(second)
        done = await r.job(j.id)
        assert (done.state, done.attempts) == ("delivered", 2)
        # Both rounds count as deliveries; only the first is the outcome's latency.
        assert metric(r, "bridge_deliveries_total", outcome="delivered") == 2.0
        assert metric(r, "bridge_notification_latency_seconds_count") == 1.0
        assert metric(r, "bridge_notification_latency_seconds_sum") < 1.0
        attempts = await r.store.attempts("alpha", j.id)
        assert attempts is not None and [a.n for a in attempts] == [1, 2]
        assert (await r.step()).idle


class CanceledElsewhere:
    """The rig's secrets, read right before an attempt is sent; the first read stands for
    another replica's DELETE landing meanwhile (no notice reaches this one) while
    ``wait`` seconds pass on the clock."""

    def __init__(self, r: Rig, job_id: str, wait: float) -> None:
        self.r, self.job_id, self.wait = r, job_id, wait
        self.inner = r.sched.secrets

    async def for_tenant(self, tenant: str) -> list[SigningKey]:
        if self.wait is not None:
            assert await self.r.store.cancel("alpha", self.job_id, now=self.r.clock())
            self.r.clock.advance(self.wait)
            self.wait = None
        return list(await self.inner.for_tenant(tenant))


async def test_a_claim_older_than_half_a_second_rereads_a_cancel_before_sending(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        # Other replicas exist only on a shared (PostgreSQL) database: the re-read is for
        # them, so this real SQLite store stands in for one here (the contract tests hold
        # both engines to the cancel itself).
        r.store.driver.shared = True  # type: ignore[misc]
        token = r.fake.add_job("video", outcome="finished", duration=0.5)
        j = await r.register(token, "/canceled")
        r.clock.advance(1.0)
        # The poll hands the callback off to this scheduler; before it is sent, the job is
        # canceled on "another replica" and 0.6 s pass.
        r.sched.secrets = CanceledElsewhere(r, j.id, 0.6)  # type: ignore[assignment]
        report = await r.step()
        assert (report.outcomes, report.attempted) == (1, 0)
        assert r.rec.calls == []
        done = await r.job(j.id)
        assert (done.state, done.attempts) == ("canceled", 0)


# -- shutdown -------------------------------------------------------------------------------------


async def test_stop_gives_back_a_poll_cut_short(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("video", outcome="finished", duration=0.5)
        j = await r.register(token, "/cut")
        r.clock.advance(1.0)
        r.upstream.open = False
        step = asyncio.create_task(r.sched.run_once())
        await r.upstream.wait_for(1)

        await r.sched.stop(0)  # no grace: the poll in flight is cut short
        report = await asyncio.wait_for(step, STUCK)
        assert (report.polled, report.outcomes) == (1, 0)
        assert (await r.step()).idle  # a stopped scheduler takes no more work
        assert (await r.job(j.id)).state == "tracking"

        # Its lease was given back: another process takes the watch at once, not after it.
        async with r.scheduler() as other:
            taken = await r.step(other)
            assert (taken.polled, taken.outcomes, taken.delivered) == (1, 1, 1)
        assert len(r.requests(token)) == 2
        assert r.clock() == t0 + 1.0


async def test_stop_starts_no_callback_and_leaves_it_due(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("video", outcome="finished", duration=0.5)
        jobs = [await r.register(token, f"/stop/{i}") for i in range(2)]
        r.clock.advance(1.0)
        r.upstream.open = False
        step = asyncio.create_task(r.sched.run_once())
        await r.upstream.wait_for(1)

        r.sched.stop_claiming()  # the stop begins while the poll is in flight
        stopping = asyncio.create_task(r.sched.stop(5.0))
        r.upstream.release()
        report = await asyncio.wait_for(step, STUCK)
        await asyncio.wait_for(stopping, STUCK)
        # The poll in flight was recorded, but no callback started once the stop began.
        assert (report.polled, report.outcomes, report.attempted) == (1, 2, 0)
        assert r.rec.calls == []
        for j in jobs:
            seen = await r.job(j.id)
            assert (seen.state, seen.attempts, seen.next_attempt_at) == (
                "delivering",
                0,
                t0 + 1.0,
            )

        async with r.scheduler() as other:
            taken = await r.step(other)
        assert (taken.polled, taken.attempted, taken.delivered) == (0, 2, 2)
        assert sorted(c.path for c in r.rec.calls) == ["/stop/0", "/stop/1"]


async def test_the_stop_grace_counts_from_when_the_stop_began(tmp_path: Path) -> None:
    """SIGTERM: the server drains API requests after the scheduler stops claiming, then
    stops the scheduler. The grace is counted once, from the start of the stop: time spent
    draining is not given again (the whole stop fits in the grace plus a second)."""
    async with rig(tmp_path) as r:
        token = r.fake.add_job("video", outcome="finished", duration=0.5)
        await r.register(token, "/slow")
        r.rec.delay = 3600.0  # the receiver never answers within the test
        r.clock.advance(1.0)
        step = asyncio.create_task(r.sched.run_once())
        await r.rec.wait_for(lambda: len(r.rec.calls) == 1, timeout=STUCK)

        r.sched.stop_claiming()
        r.clock.advance(60.0)  # the server's drain took the whole grace
        with capture_logs() as logs:
            await asyncio.wait_for(r.sched.stop(60.0), STUCK)  # nothing left to give
        report = await asyncio.wait_for(step, STUCK)
        assert report.attempted == 0  # cut short: no attempt recorded
        assert "shutdown_cut_work_short" in [e["event"] for e in logs]


# -- what Uploadcare may add ----------------------------------------------------------------


async def test_a_status_uploadcare_adds_is_tracked_by_the_growth_rule(tmp_path: Path) -> None:
    """A status this contract does not know (a future ``queued``) is no error: the job keeps
    tracking, shows it, and is polled by the growth rule (not backed off as garbage)."""
    async with rig(tmp_path) as r:
        t0 = r.clock()
        token = r.fake.add_job("video", outcome="finished", duration=1000)
        j = await r.register(token, "/queued")
        queued = {"status": "queued", "error": None, "result": {"uuid": "out-1"}}
        r.fake.respond_next(200, body=queued, times=3)

        with capture_logs() as logs:
            assert (await r.at(1.0, t0)).polled == 1
        seen = await r.job(j.id)
        assert (seen.state, seen.upstream_status) == ("tracking", "queued")
        assert json.loads(seen.upstream_result or "null") == {"uuid": "out-1"}
        # The growth rule: the minimum interval first (garbage would back off to 4 s) ...
        assert seen.next_poll_at == t0 + 1.0 + 2.0
        assert (await r.at(3.0, t0)).polled == 1
        # ... then longer while the status stays the same.
        second = (await r.job(j.id)).next_poll_at
        assert second is not None and second > t0 + 3.0 + 2.0
        assert metric(r, "bridge_upstream_requests_total", code="200", project="default") == 2.0
        assert (await r.job(j.id)).state == "tracking"
        unknown = [e for e in logs if e["event"] == "upstream_status_unknown"]
        assert unknown == [
            {
                "event": "upstream_status_unknown",
                "status": "queued",
                "project": "default",
                "kind": "video",
                "token": token,
                "log_level": "warning",
            }
        ]
