"""The loop: claim due work, run it under the limits, record what happened.

Thin glue around the pure decisions: a poll's observation becomes a ``PollRecord`` and a
pause change (``polldecision.decide_poll``), an attempt's result becomes the job's next
state (``model.retry_delay``), and the store commits each before anything depends on it.

``start()`` runs the loop; ``run_once()`` instead takes one step and runs what it claimed
to the end, for tests and tools that drive the scheduler on a clock of their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import socket
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from bridge import model
from bridge.delivery import AttemptResult, Deliverer
from bridge.fairness import CircuitEvent, DeliveryGate, Refusal, Ticket, Verdict, host_key, verdict
from bridge.metrics import Metrics
from bridge.model import Attempt, DeliveryWork, Kind, PollRecord, Recorded, WatchWork
from bridge.pacing import PauseBoard, RateLimiter
from bridge.polldecision import (
    NotFoundSeen,
    Paused,
    PollBounds,
    PollEvent,
    RejectedAgain,
    Resumed,
    StatusChanged,
    ThrottledSeen,
    decide_poll,
)
from bridge.pollplan import Plan, add, make_plan, needs_decay
from bridge.settings import Settings
from bridge.store.base import StoreError
from bridge.store.engine import Store
from bridge.store.verbs import Around
from bridge.upstream import Observation, Transient, known_status
from bridge.webhooks import SecretBook

log = structlog.get_logger("bridge.scheduler")

# The longest the loop sleeps without looking at the store: bounds how late work found
# by other means (another replica, a clock jump) can start.
MAX_IDLE = 0.5
# The shortest the idle loop sleeps: work falling due within it is claimed together, in one
# transaction, instead of one claim per poll (at a few hundred polls a second, the claims
# were as costly as the polls). Bounds the scheduler lag it adds.
BATCH_WINDOW = 0.01
# How often tracking jobs are checked against their deadline.
EXPIRY_EVERY = 1.0
# The most callbacks of one outcome a poll starts itself (most watches have one job).
HAND_OFF = 8
# How often the poll plans are rebuilt from the durations the store has learned.
PLAN_EVERY = 5.0
# A callback claimed longer ago than this re-reads its job's state right before it is
# sent: a DELETE on another replica whose notice was lost still stops it within 1 s.
CANCEL_RECHECK = 0.5
PAUSED_MESSAGE = (
    "Uploadcare refused the bridge's requests for this project; check its keys "
    "(UPLOADCARE_PUBLIC_KEY and UPLOADCARE_SECRET_KEY for 'default', else its entry in "
    "BRIDGE_UPLOADCARE_PROJECTS and UPLOADCARE_SECRET_KEY_<NAME>), BRIDGE_UPSTREAM_AUTH and "
    "the project's features. No job fails because of this; polling of the project resumes "
    "after the pause."
)
CLOCK_SKEW_MESSAGE = (
    "Uploadcare refused a request signed with a Date too far from its clock: fix this "
    "host's clock (NTP: chrony or systemd-timesyncd), not the keys. No job fails because "
    "of this; polling resumes after the pause."
)
# A watch of a project this process has no keys for (removed from the configuration).
NO_KEYS = "no keys configured for this project"
ROUND_SPENT = "the retry schedule's time ran out while the receiver's circuit was open"


class ProjectStatus(Protocol):
    """One project's client (``bridge.upstream.UpstreamClient``, with that project's keys)."""

    async def status(self, kind: Kind, token: int) -> Observation: ...


class StatusSource(Protocol):
    """Where polls ask: the status of ``token`` in ``project``'s token space
    (``ProjectClients``: one ``UpstreamClient`` per project)."""

    async def status(self, project: str, kind: Kind, token: int) -> Observation: ...


class ProjectClients:
    """A ``StatusSource`` from one client per project. A watch of a project with no client
    (taken out of the configuration after jobs were registered in it) is a transient
    failure: it backs off, and its jobs expire at their deadline unless the keys return."""

    def __init__(self, clients: Mapping[str, ProjectStatus]) -> None:
        self.clients = dict(clients)

    async def status(self, project: str, kind: Kind, token: int) -> Observation:
        client = self.clients.get(project)
        if client is None:
            return Transient(NO_KEYS)
        return await client.status(kind, token)


@dataclass(slots=True)
class StepReport:
    """What one ``run_once`` did: counted while it runs, read once it returns."""

    expired: int = 0  # jobs that reached their deadline
    polled: int = 0  # polls whose request went out
    deferred: int = 0  # claimed polls given back: a pause or the rate limit held them
    outcomes: int = 0  # jobs that polls gave an outcome
    attempted: int = 0  # callback attempts made
    delivered: int = 0  # ... of which the receiver took
    held: int = 0  # claimed callbacks given back unstarted: their host or tenant was full

    @property
    def idle(self) -> bool:
        return self == StepReport()


@dataclass(slots=True, eq=False)
class _Waiting:
    """A claimed callback waiting in this process for its host's or tenant's cap."""

    work: DeliveryWork
    step: _Step
    claimed: float  # monotonic, when it was claimed


@dataclass(slots=True, eq=False)
class _Step:
    """One look at the store: the work it started (and the callbacks its polls handed off),
    and what came of it. The loop takes one per tick and reads none of it."""

    stepping: bool = False  # run_once: never wait on a clock, give back what would
    tasks: set[asyncio.Task[None]] = field(default_factory=set)  # not yet done
    done: StepReport = field(default_factory=StepReport)


class Scheduler:
    """``clock`` is the wall clock every recorded time comes from; ``monotonic`` measures how
    long claimed work waited (the rate limiter's clock too, unless a ``limiter`` is given).
    A test that steps the scheduler passes one virtual clock as both."""

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        upstream: StatusSource,
        deliverer: Deliverer,
        secrets: SecretBook,
        metrics: Metrics,
        pauses: PauseBoard,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
        limiters: Mapping[str, RateLimiter] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.upstream = upstream
        self.deliverer = deliverer
        self.secrets = secrets
        self.metrics = metrics
        self.pauses = pauses
        self.clock = clock
        self.monotonic = monotonic
        self.rand = rand
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}"
        # BRIDGE_UPSTREAM_RPS is each project's: Uploadcare throttles projects one by one.
        self.limiters: dict[str, RateLimiter] = dict(limiters or {})
        self._upstream_slots = asyncio.Semaphore(settings.upstream_concurrency)
        self._polls: set[asyncio.Task[None]] = set()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._in_flight: dict[str, bool] = {}  # job id -> canceled while in flight
        self._claimed_at: dict[str, float] = {}  # job id -> when its callback was claimed
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()  # set when a stop begins
        self._sleeping_until = 0.0  # when the idle loop will look again by itself
        self._short_of_slots = False  # the last look left due work for lack of free slots
        self._stopping = False
        self._stop_began: float | None = None  # monotonic, when the stop began
        self._loop_task: asyncio.Task[None] | None = None
        self._next_expiry = 0.0
        self._next_plan = 0.0
        self.plans: dict[str, Plan | None] = {}
        self.bounds = PollBounds(settings.poll_min_interval, settings.poll_max_interval)
        self._notices: set[asyncio.Task[None]] = set()
        self._unknown_seen: set[str] = set()  # statuses Uploadcare added, warned about once
        self._started: set[asyncio.Task[None] | None] = set()  # polls whose request went out
        # Delivery slots promised to polls recording an outcome right now (see _poll).
        self._reserved = 0
        self._give_back = False  # a step left claimed polls unstarted: release their leases
        # Claim no more polls than the rate limit lets start well within the lease: a poll
        # must start with at least BRIDGE_UPSTREAM_TIMEOUT of its lease left (see _poll).
        self._start_within = settings.lease - settings.upstream_timeout
        projects = max(1, len(settings.projects))
        self._claim_window = max(1, int(settings.upstream_rps * projects * self._start_within / 2))
        # Fairness of callbacks (bridge/fairness.py): caps and circuits, in this process.
        self.gate = DeliveryGate(
            host_cap=settings.callback_host_concurrency,
            tenant_cap=settings.callback_tenant_concurrency,
            clock=monotonic,
        )
        self._round_length = sum(settings.callback_retry_schedule)
        self._held = False  # the last look left due callbacks to the gate (full, or a circuit)
        # Claimed callbacks a host's or tenant's cap held back, per host, oldest first: a
        # finished attempt starts the next at once, not after a claim round trip (with one
        # busy receiver that round trip per callback halved delivery throughput).
        self._waiting: dict[str, deque[_Waiting]] = {}
        self._waiting_tenants: dict[str, int] = {}
        # A waiting callback must start with its attempt's whole timeout left on its lease.
        self._wait_within = settings.lease - settings.callback_timeout
        self._tickets: dict[str, Ticket] = {}  # job id -> its attempt's place at the gate

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._run(), name="scheduler")

    async def run_once(self) -> StepReport:
        """One look at the store, and everything it claimed run to the end.

        Expires what reached its deadline, adopts pauses stored by other processes, rebuilds
        the poll plans when due, claims due polls and due callbacks, then waits until every
        poll is recorded and every callback attempt (those claimed, and the first ones the
        polls' outcomes handed off) is made and recorded. It never waits on a clock: a
        claimed poll that a pause or the rate limit holds back is given back to the store,
        due as it was, and counted as deferred. Steps may overlap (a test holding one
        step's poll in flight while the next runs); each waits for and reports its own
        work. After a stop began it does nothing. Not for a scheduler that was ``start()``-ed.
        """
        if self._loop_task is not None:
            raise RuntimeError("run_once() steps a scheduler whose loop is not running")
        step = _Step(stepping=True)
        if self._stopping:
            return step.done
        await self._look(self.clock(), step)
        while step.tasks:
            await asyncio.wait(set(step.tasks))
        if leftover := self._give_back_waiting(step):
            with contextlib.suppress(StoreError):
                await self._return_unstarted(leftover, step)
        if step.done.deferred:
            self._give_back = True
        if self._give_back and not self._polls and not self._deliveries:
            # Only once nothing is in flight: release gives back every lease this owner holds.
            self._give_back = False
            await self.store.release(self.owner)
        return step.done

    def wake(self, due: float | None = None) -> None:
        """Look at the store now; with ``due``, only if the loop would look later than that.

        Registrations call this for every new job: at a thousand a second, waking for each
        was a thousand needless claim transactions.
        """
        if due is None or due < self._sleeping_until:
            self._wake.set()

    def note_canceled(self, job_id: str) -> None:
        """A job was canceled (through this process's API, or another replica's notice):
        an attempt not yet sent must not start."""
        if job_id in self._in_flight:
            self._in_flight[job_id] = True

    async def may_send(self, job_id: str) -> bool:
        """Right before a claimed callback goes on the wire: False if its job was canceled.

        Free for a fresh claim: the in-flight map, which DELETEs here and other replicas'
        cancel notices mark. A claim older than CANCEL_RECHECK also re-reads the job, so
        that no attempt starts later than 1 s after a DELETE anywhere, notices or not.
        """
        if self._in_flight.get(job_id):
            return False
        claimed = self._claimed_at.get(job_id)
        if (
            self.store.shared
            and claimed is not None
            and self.monotonic() - claimed > CANCEL_RECHECK
        ):
            # One process per SQLite file: every DELETE came through this one's map.
            return await self.store.delivery_live(job_id)
        return True

    async def listen_for_notices(self) -> None:
        """Hear other replicas' pauses, cancels and key rotations as they commit (PostgreSQL)."""
        await self.store.listen_pauses(self._pause_notice)
        await self.store.listen_cancels(self.note_canceled)
        await self.store.listen_signing(self.secrets.forget)

    def stop_claiming(self) -> None:
        """The first step of a shutdown: take no new work; what is in flight goes on.

        The grace ``stop`` gives counts from the first call of this, so that the time the
        server spends draining API requests in between is not given twice.
        """
        if self._stop_began is None:
            self._stop_began = self.monotonic()
        self._stopping = True
        self._stopped.set()
        self._wake.set()

    async def stop(self, grace: float) -> None:
        """Stop claiming, give in-flight work what is left of ``grace`` seconds since the
        stop began, then give back leases."""
        self.stop_claiming()
        assert self._stop_began is not None
        grace = max(0.0, grace - (self.monotonic() - self._stop_began))
        if self._loop_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for task in self._polls - self._started:
            # Still waiting for a rate slot or a pause: give it back now, not at the grace.
            task.cancel()
        pending = self._polls | self._deliveries
        if pending:
            _, late = await asyncio.wait(pending, timeout=grace)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)
                log.warning("shutdown_cut_work_short", tasks=len(late))
        with contextlib.suppress(StoreError):
            await self.store.release(self.owner)

    def _pause_notice(self) -> None:
        task = asyncio.create_task(self.pauses.adopt(self.store, self.clock()))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _run(self) -> None:
        try:
            await self.listen_for_notices()
        except StoreError as exc:
            # Pauses still reach this process each second through the store, and a cancel
            # through may_send's re-read.
            log.warning("pause_notices_unavailable", error=str(exc))
        while not self._stopping:
            try:
                busy = await self._look(self.clock(), _Step())
            except StoreError as exc:
                log.error("store_unavailable", error=str(exc))
                busy = False
                await self._back_off(1.0)
            except Exception:
                log.exception("scheduler_tick_failed")
                busy = False
                await self._back_off(1.0)
            if busy or self._stopping:
                continue
            await self._idle()

    async def _back_off(self, seconds: float) -> None:
        """Wait after a failed look, but not past the start of a stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def _idle(self) -> None:
        # Until the sleep is known, any wake counts: a job committed after next_due looked
        # must not wait out the whole sleep.
        self._sleeping_until = math.inf
        timeout = MAX_IDLE
        with contextlib.suppress(StoreError):
            # Callbacks the gate holds wait for it (a finished attempt wakes the loop, a
            # circuit's next probe is known), not a claim every BATCH_WINDOW; polls and
            # deadlines still wake it when they fall due.
            due = await self.store.next_due(callbacks=not self._held)
            if self._held and (probe := self.gate.next_probe_at()) is not None:
                at_probe = self.clock() + probe - self.monotonic()
                due = at_probe if due is None else min(due, at_probe)
            if due is not None:
                timeout = min(timeout, max(BATCH_WINDOW, due - self.clock()))
        if timeout > 0:
            self._sleeping_until = self.clock() + timeout
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
        self._sleeping_until = 0.0
        self._wake.clear()

    async def _look(self, now: float, step: _Step) -> bool:
        """One look at the store; True if it found a full batch (more may be due).

        The loop expires jobs and adopts pauses once a second; a step does it every time.
        """
        full = False
        if step.stepping or now >= self._next_expiry:
            self._next_expiry = now + EXPIRY_EVERY
            await self.pauses.adopt(self.store, now)
            expired = await self.store.expire_due(now=now)
            step.done.expired += len(expired)
            self._outcomes(expired)
        if now >= self._next_plan:
            self._next_plan = now + PLAN_EVERY
            await self._replan()
        free = self.settings.upstream_concurrency - len(self._polls)
        paused_projects, paused_kinds = self.pauses.paused(now)
        self._short_of_slots = free <= 0 or self._delivery_room() <= 0
        if free > 0:
            limit = min(free, self._claim_window)
            watches = await self.store.claim_due_watches(
                self.owner,
                now=now,
                lease=self.settings.lease,
                limit=limit,
                skip_projects=paused_projects,
                skip_kinds=paused_kinds,
            )
            claimed = self.monotonic()
            for w in watches:
                self._spawn(self._polls, self._poll(w, claimed, step), step)
            full = full or len(watches) == limit
            self._short_of_slots |= len(watches) == free
        free = self._delivery_room()
        if free > 0:
            around = self._around()
            deliveries = await self.store.claim_due_deliveries(
                self.owner, now=now, lease=self.settings.lease, limit=free, around=around
            )
            refused = [d for d in deliveries if not self._start_delivery(d, step)]
            await self._return_unstarted(refused, step)
            # Given-back work is left out of the next claim (its host or tenant is full now),
            # so a full batch still means more may be due; but not when all went back.
            full = full or (len(deliveries) == free and len(refused) < free)
            self._held = bool(refused or around.tenants or around.hosts or around.held_hosts)
            self._short_of_slots |= len(deliveries) == free or self._held
        return full

    def _delivery_room(self) -> int:
        return self.settings.callback_concurrency - len(self._deliveries) - self._reserved

    def _around(self) -> Around:
        """What the delivery claim leaves alone: this process may not start it now."""
        _, held = self.gate.closed_hosts()
        # Each host and tenant may have its cap in flight and as much again waiting here.
        hosts_left, tenants_left = self.gate.rooms()
        host_room = self._room(hosts_left, self._waiting_per_host(), self.gate.host_cap)
        tenant_room = self._room(tenants_left, self._waiting_tenants, self.gate.tenant_cap)
        return Around(
            tuple(t for t, n in tenant_room if n <= 0),
            tuple(h for h, n in host_room if n <= 0),
            tuple(held),
            self._round_length,
            host_room=tuple(host_room),
            tenant_room=tuple(tenant_room),
            host_cap=2 * self.gate.host_cap,
            tenant_cap=2 * self.gate.tenant_cap,
        )

    def _waiting_per_host(self) -> dict[str, int]:
        return {h: len(q) for h, q in self._waiting.items()}

    @staticmethod
    def _room(
        in_flight_room: list[tuple[str, int]], waiting: dict[str, int], cap: int
    ) -> list[tuple[str, int]]:
        """What a claim may take per name: the cap's room in flight plus the room to wait."""
        room = {name: left + cap for name, left in in_flight_room}
        for name, n in waiting.items():
            room[name] = room.get(name, 2 * cap) - n
        return sorted(room.items())

    def _start_delivery(self, d: DeliveryWork, step: _Step) -> bool:
        """Start a claimed callback if the gate lets it; False: give it back unstarted."""
        host = host_key(d.callback_url)
        ticket = self._admit(host, d)
        if isinstance(ticket, Refusal):
            if ticket is not Refusal.CIRCUIT:
                return self._wait_for_slot(host, d, step, self.monotonic())
            if self.clock() >= d.round_started_at + self._round_length:
                self._spawn(self._deliveries, self._end_round(d), step)
                return True
            return False
        self._launch(d, ticket, step, self.monotonic())
        return True

    def _admit(self, host: str, d: DeliveryWork) -> Ticket | Refusal:
        if len(self._deliveries) >= self.settings.callback_concurrency:
            return Refusal.HOST  # every slot is taken: wait like a full host's callback
        return self.gate.admit(host, d.tenant)

    def _launch(self, d: DeliveryWork, ticket: Ticket, step: _Step, claimed: float) -> None:
        self._in_flight[d.job_id] = False
        self._claimed_at[d.job_id] = claimed
        self._tickets[d.job_id] = ticket
        self._spawn(self._deliveries, self._deliver(d, ticket, step), step)

    def _wait_for_slot(self, host: str, d: DeliveryWork, step: _Step, claimed: float) -> bool:
        """Keep a callback its host's or tenant's cap refused, to start as one of theirs
        ends; False when as many wait already as the cap (it is given back)."""
        queue = self._waiting.get(host)
        if (
            self._stopping
            or (queue is not None and len(queue) >= self.gate.host_cap)
            or self._waiting_tenants.get(d.tenant, 0) >= self.gate.tenant_cap
        ):
            return False
        self._waiting.setdefault(host, deque()).append(_Waiting(d, step, claimed))
        self._waiting_tenants[d.tenant] = self._waiting_tenants.get(d.tenant, 0) + 1
        return True

    def _unwait(self, host: str) -> _Waiting:
        queue = self._waiting[host]
        w = queue.popleft()
        if not queue:
            del self._waiting[host]
        self._left_waiting(w.work)
        return w

    def _left_waiting(self, d: DeliveryWork) -> None:
        n = self._waiting_tenants[d.tenant] - 1
        if n:
            self._waiting_tenants[d.tenant] = n
        else:
            del self._waiting_tenants[d.tenant]

    def _start_waiting(self) -> None:
        """Start the waiting callbacks the gate now admits; give back those that cannot
        start in time (their lease) or that a circuit now holds."""
        if not self._waiting:
            return
        if self._stopping:
            # Nothing new starts: their leases go back with the rest when the stop ends.
            self._waiting.clear()
            self._waiting_tenants.clear()
            return
        now = self.monotonic()
        back: dict[int, tuple[_Step, list[DeliveryWork]]] = {}
        for host in list(self._waiting):
            while host in self._waiting:
                head = self._waiting[host][0]
                if now - head.claimed > self._wait_within:
                    ticket: Ticket | Refusal = Refusal.CIRCUIT
                else:
                    ticket = self._admit(host, head.work)
                if ticket is Refusal.HOST or ticket is Refusal.TENANT:
                    break
                w = self._unwait(host)
                if isinstance(ticket, Ticket):
                    self._launch(w.work, ticket, w.step, w.claimed)
                else:
                    back.setdefault(id(w.step), (w.step, []))[1].append(w.work)
        for step, works in back.values():
            self._spawn(self._deliveries, self._return_later(works, step), step)

    async def _return_later(self, works: list[DeliveryWork], step: _Step) -> None:
        with contextlib.suppress(StoreError):
            await self._return_unstarted(works, step)

    def _give_back_waiting(self, step: _Step) -> list[DeliveryWork]:
        """Take this step's waiting callbacks out of the queues (to be given back)."""
        mine: list[DeliveryWork] = []
        for host in list(self._waiting):
            kept = deque(w for w in self._waiting[host] if w.step is not step)
            for w in self._waiting[host]:
                if w.step is step:
                    mine.append(w.work)
            self._waiting[host] = kept
            while host in self._waiting and not self._waiting[host]:
                del self._waiting[host]
        for d in mine:
            self._left_waiting(d)
        return mine

    async def _return_unstarted(self, refused: list[DeliveryWork], step: _Step) -> None:
        """Claimed callbacks the gate refused go back due as they were, no attempt spent."""
        if refused:
            step.done.held += len(refused)
            await self.store.release_deliveries(self.owner, [d.job_id for d in refused])

    async def _replan(self) -> None:
        """Rebuild each kind's poll plan from the durations the store holds (any replica's)."""
        for kind, pairs in (await self.store.durations()).items():
            weights = add([], pairs)
            if needs_decay(weights):
                await self.store.scale_durations(kind, 0.5)
                weights = [w * 0.5 for w in weights]
            plan = make_plan(weights)
            self.metrics.poll_plan_samples.labels(kind).set(plan.samples if plan else 0)
            if plan != self.plans.get(kind):
                self.plans[kind] = plan
                if plan is not None:
                    log.info(
                        "poll_plan_learned",
                        kind=kind,
                        samples=round(plan.samples),
                        dense_from_s=round(plan.dense[0][0], 2) if plan.dense else None,
                        horizon_s=round(plan.horizon, 2),
                    )

    def _spawn(self, group: set[asyncio.Task[None]], work: Any, step: _Step) -> None:
        task: asyncio.Task[None] = asyncio.create_task(work)
        group.add(task)
        step.tasks.add(task)

        def finished(t: asyncio.Task[None]) -> None:
            group.discard(t)
            step.tasks.discard(t)
            if self._short_of_slots:
                # Due work was left for want of a slot: this freed one may take it.
                self._wake.set()

        task.add_done_callback(finished)

    # -- polling ---------------------------------------------------------------------------

    def limiter(self, project: str) -> RateLimiter:
        """The project's rate limiter (BRIDGE_UPSTREAM_RPS is per project)."""
        limiter = self.limiters.get(project)
        if limiter is None:
            limiter = RateLimiter(self.settings.upstream_rps, clock=self.monotonic)
            self.limiters[project] = limiter
        return limiter

    async def _poll(self, w: WatchWork, claimed: float, step: _Step) -> None:
        """Wait for a rate slot of the watch's project and no pause of it, ask, decide,
        record, start the outcome's callbacks.

        In a step, a poll that would have to wait is given back instead.
        """
        limiter = self.limiter(w.project)

        def pause_left() -> float:
            return self.pauses.left(w.project, w.kind)

        try:
            async with self._upstream_slots:
                if not step.stepping:
                    await limiter.acquire(pause_left)
                elif not limiter.try_acquire(pause_left):
                    step.done.deferred += 1
                    return  # not started: run_once gives its lease back
                if self._stopping:
                    return  # not started: given back with the leases when the stop ends
                self._started.add(asyncio.current_task())
                if self.monotonic() - claimed > self._start_within:
                    # Held back so long (a long pause) that the lease could lapse mid-request
                    # and another replica poll the same token: leave it to the next claim.
                    log.info("poll_lease_lapsed", project=w.project, kind=w.kind, token=w.token)
                    return
                started = self.clock()
                step.done.polled += 1
                self.metrics.scheduler_lag.observe(max(0.0, started - w.due_at))
                observation = await self.upstream.status(w.project, w.kind, w.token)  # type: ignore[arg-type]
            now = self.clock()
            record = self._decide(w, observation, started, now)
            await self.pauses.share(self.store)
            recorded = await self._record(w, record)
        except Exception:
            log.exception("poll_failed", project=w.project, kind=w.kind, token=w.token)
            return
        finally:
            self._started.discard(asyncio.current_task())
        step.done.outcomes += len(recorded)
        self._outcomes(recorded)
        refused = []
        for r in recorded:
            # Once a stop began, nothing new starts: the lease goes back with the others.
            started = r.delivery is None or self._stopping or self._start_delivery(r.delivery, step)
            if not started and r.delivery is not None:
                refused.append(r.delivery)
        with contextlib.suppress(StoreError):
            await self._return_unstarted(refused, step)  # else they wait for their lease to lapse
        if any(r.delivery is None for r in recorded):
            self._wake.set()

    async def _record(self, w: WatchWork, record: PollRecord) -> list[Recorded]:
        """Commit a poll; an outcome's first callbacks come back leased, to start at once.

        Without this the callback waited for the loop to wake and claim it (a store round
        trip behind whatever else the store was doing): the bench's delivery overhead.
        """
        if record.outcome is None or self._stopping:
            return await self.store.record_poll(w.id, self.owner, record)
        room = max(0, min(HAND_OFF, self._delivery_room()))
        self._reserved += room
        try:
            return await self.store.record_poll(
                w.id, self.owner, record, lease=self.settings.lease, deliver=room
            )
        finally:
            self._reserved -= room

    def _decide(self, w: WatchWork, obs: Observation, started: float, now: float) -> PollRecord:
        """Apply the pure decision: its pause change to the board, its events to the log."""
        decision = decide_poll(
            w,
            obs,
            plan=self.plans.get(w.kind),
            bounds=self.bounds,
            started=started,
            now=now,
            rand=self.rand(),
            pauses=self.pauses,
        )
        for key in decision.lift:
            self.pauses.lift(key)
        if decision.take is not None:
            self.pauses.take(decision.take)
        for event in decision.events:
            self._report(w, event)
        return decision.record

    def _report(self, w: WatchWork, event: PollEvent) -> None:
        log_kw = {"project": w.project, "kind": w.kind, "token": w.token}
        if isinstance(event, StatusChanged):
            log.debug(
                "upstream_status_changed", status=event.status, previous=event.previous, **log_kw
            )
            if not known_status(event.status) and event.status not in self._unknown_seen:
                self._unknown_seen.add(event.status)
                log.warning("upstream_status_unknown", status=event.status, **log_kw)
        elif isinstance(event, Resumed):
            log.info("upstream_resumed", pause=event.key)
        elif isinstance(event, NotFoundSeen):
            log.info(
                "upstream_not_found",
                misses=event.misses,
                upstream_request_id=event.request_id,
                **log_kw,
            )
        elif isinstance(event, ThrottledSeen):
            log.warning(
                "upstream_throttled",
                retry_after_s=event.retry_after,
                upstream_request_id=event.request_id,
                **log_kw,
            )
        elif isinstance(event, Paused):
            log.error(
                "upstream_paused",
                project=w.project,
                reason=event.reason,
                detail=event.detail,
                pause_s=event.pause_s,
                skew_s=None if event.skew is None else round(event.skew, 1),
                upstream_request_id=event.request_id,
                message=PAUSED_MESSAGE if event.skew is None else CLOCK_SKEW_MESSAGE,
            )
        elif isinstance(event, RejectedAgain):
            log.info(
                "upstream_rejected",
                code=event.code,
                upstream_request_id=event.request_id,
                **log_kw,
            )
        else:
            log.warning(
                "upstream_poll_failed",
                reason=event.reason,
                failures=event.failures,
                upstream_request_id=event.request_id,
                **log_kw,
            )

    def _outcomes(self, recorded: list[Recorded]) -> None:
        for r in recorded:
            self.metrics.outcomes.labels(r.kind, r.outcome).inc()
            log.info(
                "job_outcome",
                job_id=r.job_id,
                project=r.project,
                kind=r.kind,
                token=r.token,
                outcome=r.outcome,
            )

    # -- delivery --------------------------------------------------------------------------

    async def _deliver(self, d: DeliveryWork, ticket: Ticket, step: _Step) -> None:
        res = None
        try:
            res = await self._attempt(d, ticket, step)
        except Exception:
            log.exception("delivery_failed", job_id=d.job_id, kind=d.kind, token=d.token)
        finally:
            self._in_flight.pop(d.job_id, None)
            self._claimed_at.pop(d.job_id, None)
            self._done_at_gate(d.job_id, res)

    def _done_at_gate(self, job_id: str, res: AttemptResult | None) -> None:
        """The attempt left its host (answered, failed or never sent): its place at the
        gate goes to the next callback waiting, while its own record is still being
        written."""
        ticket = self._tickets.pop(job_id, None)
        if ticket is None:
            return
        seen = Verdict.NOTHING if res is None else verdict(res.result, res.status)
        self._circuit(ticket.host, self.gate.finish(ticket, seen))
        self._start_waiting()

    def _circuit(self, host: str, event: CircuitEvent | None) -> None:
        if event is None:
            return
        self.metrics.callback_circuits_open.set(self.gate.open_circuits())
        if event is CircuitEvent.OPENED:
            log.warning(
                "callback_circuit_opened", host=host, open_circuits=self.gate.open_circuits()
            )
        else:
            log.info("callback_circuit_closed", host=host, open_circuits=self.gate.open_circuits())
            self._wake.set()  # the callbacks that waited for it are due

    async def _end_round(self, d: DeliveryWork) -> None:
        """A round that lasted the schedule's length while its host's circuit held it."""
        try:
            ended = await self.store.end_round(
                d.job_id, self.owner, now=self.clock(), round_length=self._round_length
            )
        except Exception:
            log.exception("delivery_failed", job_id=d.job_id, kind=d.kind, token=d.token)
            return
        if ended:
            self.metrics.deliveries.labels("undeliverable").inc()
            log.warning(
                "job_undeliverable",
                job_id=d.job_id,
                kind=d.kind,
                token=d.token,
                n=d.attempts,
                status=None,
                error=ROUND_SPENT,
            )

    async def _attempt(self, d: DeliveryWork, ticket: Ticket, step: _Step) -> AttemptResult | None:
        """One attempt and its record; the result, or None when none was sent."""
        kw = {"job_id": d.job_id, "kind": d.kind, "token": d.token}
        signing = await self.secrets.for_tenant(d.tenant)
        # The last check before the wire: a cancel on any replica stops the attempt here.
        if not await self.may_send(d.job_id):
            log.info("delivery_skipped_canceled", **kw)
            return None
        self.metrics.scheduler_lag.observe(max(0.0, self.clock() - d.due_at))
        res = await self.deliverer.attempt(
            d.callback_url, d.body, model.webhook_id(d.job_id), signing
        )
        step.done.attempted += 1
        self.metrics.callback_attempts.labels(res.result).inc()
        self.metrics.callback_duration.observe(res.duration)
        # Rounds the circuit of their host holds end by time (SPEC "Fairness"); others end
        # when the schedule is spent, however long jitter and Retry-After made them.
        held = ticket.probe or self.gate.is_open(ticket.host)
        state, next_at = self._after_attempt(d, res, held=held)
        self._done_at_gate(d.job_id, res)
        attempt = Attempt(
            n=d.attempts + 1,
            at=res.started_at,
            duration_ms=round(res.duration * 1000),
            response_status=res.status,
            error=res.error,
            response_excerpt=res.excerpt,
            response_content_type=res.content_type,
        )
        changed = await self.store.record_attempt(
            d.job_id, self.owner, attempt, next_state=state, next_attempt_at=next_at
        )
        if not changed:
            log.info("callback_attempt_after_cancel", n=attempt.n, result=res.result, **kw)
            return res
        if state == model.DELIVERED:
            step.done.delivered += 1
            self.metrics.deliveries.labels("delivered").inc()
            if d.first_round:  # a redelivery days later is not the outcome's latency
                finished = res.started_at + res.duration
                self.metrics.notification_latency.observe(max(0.0, finished - d.outcome_at))
            log.info("job_delivered", n=attempt.n, status=res.status, **kw)
        elif state == model.UNDELIVERABLE:
            self.metrics.deliveries.labels("undeliverable").inc()
            log.warning("job_undeliverable", n=attempt.n, status=res.status, error=res.error, **kw)
        else:
            log.info(
                "callback_retry_scheduled",
                n=attempt.n,
                result=res.result,
                status=res.status,
                error=res.error,
                next_attempt_at=model.rfc3339(next_at),
                **kw,
            )
        return res

    def _after_attempt(
        self, d: DeliveryWork, res: AttemptResult, *, held: bool = False
    ) -> tuple[str, float | None]:
        if res.delivered:
            return model.DELIVERED, None
        if res.gone:
            return model.UNDELIVERABLE, None
        delay = model.retry_delay(
            d.round_attempts + 1,
            self.settings.callback_retry_schedule,
            res.retry_after,
            self.rand(),
        )
        finished = res.started_at + res.duration
        if delay is None or (held and finished >= d.round_started_at + self._round_length):
            # The schedule is spent, or a round its host's circuit held has lasted as long
            # as the schedule.
            return model.UNDELIVERABLE, None
        return model.DELIVERING, finished + delay
