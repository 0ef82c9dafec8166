"""Fair delivery, stepped on a virtual clock: per-host caps, and the per-host circuit.

The outcomes come from expiry (each job's deadline set by the test), so no poll is
needed to make callbacks due, and their due order is the order of the deadlines.
Receivers are real loopback servers; a hung one holds each request until the test lets
it go. No assertion is about time.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bridge.model import Job, NewJob
from tests.harness import hung, receiver
from tests.service.test_scheduler_steps import STUCK, Rig, metric, rig


async def expiring(r: Rig, tenant: str, url: str, token: int, after: float) -> Job:
    """A job whose outcome (``expired``) comes ``after`` seconds from now: its callback is
    due then. Its first poll is far later, so no upstream request is made."""
    now = r.clock()
    job, created = await r.store.register(
        NewJob(tenant, "video", token, url, None),
        now=now,
        first_poll_at=now + 3600,
        deadline_at=now + after,
    )
    assert created
    return job


async def attempts(r: Rig, tenant: str, job: Job) -> tuple[str, int]:
    seen = await r.store.get_job(tenant, job.id)
    assert seen is not None
    return seen.state, seen.attempts


async def test_a_hung_receiver_does_not_hold_another_tenants_callbacks(tmp_path: Path) -> None:
    """Tenant B's 24 callbacks to a receiver that never answers are due before tenant A's;
    with 4 delivery slots and a host cap of 2, A's are delivered while B's hang."""
    env = {"BRIDGE_CALLBACK_CONCURRENCY": "4", "BRIDGE_CALLBACK_HOST_CONCURRENCY": "2"}
    async with rig(tmp_path, **env) as r, hung() as b_rec:
        t0 = r.clock()
        b_jobs = [await expiring(r, "beta", f"{b_rec.url}/b/{i}", 1000 + i, 0.5) for i in range(24)]
        a_jobs = [await expiring(r, "alpha", f"{r.rec.url}/a/{i}", 2000 + i, 1.0) for i in range(3)]

        r.clock.now = t0 + 0.5
        b_step = asyncio.create_task(r.sched.run_once())  # B's attempts hang: it never ends
        await b_rec.wait_for(2)
        r.clock.now = t0 + 1.0
        first = await r.step()  # A's, claimed around B's full host
        assert (first.attempted, first.delivered) == (2, 2)
        second = await r.step()
        assert (second.attempted, second.delivered) == (1, 1)
        assert sorted(c.path for c in r.rec.calls) == ["/a/0", "/a/1", "/a/2"]
        for j in a_jobs:
            assert await attempts(r, "alpha", j) == ("delivered", 1)
        # B's requests are still hung: two of them (its host's cap), two more claimed and
        # waiting in this process for a place, the rest unclaimed; no attempt spent.
        assert b_rec.arrived == 2 and not b_step.done()
        spent = [(await attempts(r, "beta", j))[1] for j in b_jobs]
        assert sorted(spent) == [0] * 24  # the two on the wire are recorded when they end

        b_rec.release()
        # The two that waited start as the hung two end, in the same step.
        assert (await asyncio.wait_for(b_step, STUCK)).delivered == 4
        for _ in range(11):
            await r.step()
        states = [await attempts(r, "beta", j) for j in b_jobs]
        assert states == [("delivered", 1)] * 24


async def test_a_callback_waiting_for_its_hosts_cap_starts_as_the_one_ahead_ends(
    tmp_path: Path,
) -> None:
    """With one busy receiver, each callback used to wait for a claim round trip after a
    place freed (and was claimed only to be given back when none had): now a claim takes
    as many again as the cap, which wait here and start the moment an attempt ends,
    never more than the cap at once."""
    async with rig(tmp_path, BRIDGE_CALLBACK_HOST_CONCURRENCY="1") as r, hung() as slow:
        t0 = r.clock()
        jobs = [await expiring(r, "alpha", f"{slow.url}/w/{i}", 500 + i, 0.5) for i in range(3)]
        r.clock.now = t0 + 0.5
        step = asyncio.create_task(r.sched.run_once())
        await slow.wait_for(1)
        # One on the wire (the cap), one claimed and waiting, one left in the store.
        states = [await attempts(r, "alpha", j) for j in jobs]
        assert states == [("delivering", 0)] * 3 and slow.arrived == 1
        slow.release()
        report = await asyncio.wait_for(step, STUCK)
        assert (report.attempted, report.delivered, report.held) == (2, 2, 0)
        assert (await r.step()).delivered == 1
        assert [await attempts(r, "alpha", j) for j in jobs] == [("delivered", 1)] * 3


async def test_a_failing_host_opens_its_circuit_and_a_probe_closes_it(tmp_path: Path) -> None:
    env = {"BRIDGE_CALLBACK_RETRY_SCHEDULE": "10s,10s,10s"}
    async with rig(tmp_path, **env) as r, receiver() as down:
        t0 = r.clock()
        down.default = 503
        failing = [await expiring(r, "alpha", f"{down.url}/j/{i}", 100 + i, 0.5) for i in range(5)]
        waiting = [await expiring(r, "alpha", f"{down.url}/k/{i}", 200 + i, 1.0) for i in range(3)]
        elsewhere = await expiring(r, "alpha", r.rec.url + "/other", 300, 1.0)
        assert metric(r, "bridge_callback_circuits_open") == 0

        opened = await r.at(0.5, t0)
        assert (opened.attempted, opened.delivered) == (5, 0)
        assert metric(r, "bridge_callback_circuits_open") == 1

        # Due, but the circuit holds them: not claimed, no attempt spent. Other hosts go on.
        held = await r.at(1.0, t0)
        assert (held.attempted, held.delivered) == (1, 1)
        assert await attempts(r, "alpha", elsewhere) == ("delivered", 1)
        assert [await attempts(r, "alpha", j) for j in waiting] == [("delivering", 0)] * 3
        assert len(down.calls) == 5

        # The probe, a second after the circuit opened: one attempt, which fails; the
        # other two are given back unstarted.
        probed = await r.at(1.5, t0)
        assert (probed.attempted, probed.held) == (1, 2)
        assert sorted([(await attempts(r, "alpha", j))[1] for j in waiting]) == [0, 0, 1]
        assert metric(r, "bridge_callback_circuits_open") == 1
        # The next probe waits twice as long.
        assert (await r.at(3.4, t0)).attempted == 0

        down.default = 200
        closing = await r.at(3.5, t0)
        assert (closing.attempted, closing.delivered) == (1, 1)
        assert metric(r, "bridge_callback_circuits_open") == 0
        rest = await r.step()
        assert (rest.attempted, rest.delivered) == (1, 1)
        states = [await attempts(r, "alpha", j) for j in waiting]
        assert sorted(states) == [("delivered", 1), ("delivered", 1), ("delivering", 1)]
        # The failed ones retry on their own schedule, ten seconds after their failure.
        assert (await r.at(10.4, t0)).idle
        later = await r.at(10.6, t0)
        assert (later.attempted, later.delivered) == (5, 5)
        assert [await attempts(r, "alpha", j) for j in failing] == [("delivered", 2)] * 5
        last = await r.at(11.6, t0)
        assert (last.attempted, last.delivered) == (1, 1)
        assert [(await attempts(r, "alpha", j))[0] for j in waiting] == ["delivered"] * 3


async def test_a_round_ends_at_the_schedules_length_while_the_circuit_holds_it(
    tmp_path: Path,
) -> None:
    env = {"BRIDGE_CALLBACK_RETRY_SCHEDULE": "10s,10s"}  # a round lasts 20 s
    async with rig(tmp_path, **env) as r, receiver() as down:
        t0 = r.clock()
        down.default = 503
        failing = [await expiring(r, "alpha", f"{down.url}/j/{i}", 100 + i, 0.5) for i in range(5)]
        late = await expiring(r, "alpha", f"{down.url}/late", 200, 1.0)
        assert (await r.at(0.5, t0)).attempted == 5
        assert (await r.at(1.0, t0)).attempted == 0  # the circuit holds the late one

        # Twenty seconds on, every round here has lasted the schedule's length. One probe
        # goes (the late job's only attempt, which fails: its round is over too); the
        # others end without an attempt, their counts unchanged.
        over = await r.at(21.0, t0)
        assert over.attempted == 1
        assert await attempts(r, "alpha", late) == ("undeliverable", 1)
        assert [await attempts(r, "alpha", j) for j in failing] == [("undeliverable", 1)] * 5
        assert metric(r, "bridge_deliveries_total", outcome="undeliverable") == 6
        assert len(down.calls) == 6
