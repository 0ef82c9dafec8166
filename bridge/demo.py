"""``bridge demo``: the whole flow on one machine, with no Uploadcare account.

Three servers run in this one process, all on 127.0.0.1 with ports the kernel picks: the
fake upstream (``bridge.fake_upstream``), the bridge itself on a SQLite file in a temporary
directory, and a receiver that verifies every callback with the ``standardwebhooks``
package, as a real receiver would. The demo creates conversions through the fake's
``POST /convert/{kind}/``, registers their tokens through the bridge's API, shows progress
and a line per callback, and ends with a summary computed from what happened: the fake's
request log, the receiver's calls, the job views and ``/metrics``.

With ``--projects N`` the one fake serves N Uploadcare projects (``project_keys(N)``): the
first is the bridge's ``default`` project, the others ``p2``, ``p3``... Jobs go to the
projects in turn; each conversion is created with its project's keys (the keys choose the
project at the fake), registered with its ``project``, and the summary has a line per
project.

The bridge's JSON logs go to ``bridge.log`` in the temporary directory, not to the terminal;
the directory is removed after a successful run unless ``--keep`` is given, and kept after a
failed one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import secrets
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import formatdate
from pathlib import Path
from typing import Any, Final, TextIO

import aiohttp
import structlog
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bridge import logs
from bridge import settings as settings_mod
from bridge.fake_upstream import (
    DEFAULT_PUBLIC_KEY,
    DEFAULT_SECRET_KEY,
    FakeConfig,
    RunningFake,
    parse_odds,
    project_keys,
    running,
)
from bridge.settings import DEFAULT_PROJECT, Settings, project_secret_var
from bridge.upstream import ACCEPT, Kind, sign

HOST: Final = "127.0.0.1"
TENANT: Final = "demo"
HOOK_PATH: Final = "/hooks/uc"
INTERRUPTED: Final = 130
ENDED: Final = frozenset({"delivered", "undeliverable", "canceled"})
# Fast pacing, so that conversions of a few seconds end in a few seconds more.
PACING: Final[Mapping[str, str]] = {
    "BRIDGE_POLL_INITIAL_DELAY": "200ms",
    "BRIDGE_POLL_MIN_INTERVAL": "250ms",
    "BRIDGE_POLL_MAX_INTERVAL": "2s",
    "BRIDGE_UPSTREAM_RPS": "100",
    "BRIDGE_UPSTREAM_TIMEOUT": "5s",
    "BRIDGE_CALLBACK_TIMEOUT": "5s",
    "BRIDGE_CALLBACK_RETRY_SCHEDULE": "250ms,500ms,1s,2s,4s",
    "BRIDGE_SHUTDOWN_GRACE": "2s",
}
MAX_PROJECTS: Final = 8
# How often the progress line is refreshed, and how often it is printed when not on a TTY.
TICK: Final = 0.2
PLAIN_EVERY: Final = 2.0


class DemoError(Exception):
    """The demo cannot go on; ``str()`` is one line for the user."""


@dataclass(frozen=True)
class Options:
    jobs: int = 20
    failures: float = 0.1
    timeout: float = 120.0
    min_duration: float = 1.0
    max_duration: float = 5.0
    seed: int | None = None
    projects: int = 1


@dataclass(frozen=True)
class DemoProject:
    """One Uploadcare project of the demo: its name at the bridge, its keys at the fake."""

    name: str
    public_key: str
    secret_key: str = field(repr=False)


def demo_projects(count: int) -> list[DemoProject]:
    """``default`` with the fake's first key pair, then ``p2``, ``p3``... with the next."""
    return [
        DemoProject(DEFAULT_PROJECT if n == 1 else f"p{n}", public, secret)
        for n, (public, secret) in enumerate(project_keys(count).items(), start=1)
    ]


@dataclass(frozen=True)
class Tracked:
    """One conversion the demo created and registered."""

    n: int
    kind: Kind
    token: int
    job_id: str
    project: DemoProject


@dataclass(frozen=True)
class Call:
    """One request the receiver got."""

    webhook_id: str
    verified: bool
    job_id: str | None
    type: str | None
    token: int | None
    at: float  # Unix time on arrival
    monotonic: float
    outcome_at: float | None  # the body's "timestamp": when the bridge saw the outcome
    error: str | None = None
    project: str | None = None


# --- Output ------------------------------------------------------------------------------


class Display:
    """Human output: permanent lines, and a progress line redrawn in place on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = _isatty(out)
        self._progress = ""
        self._plain_at = -math.inf
        self._plain_key: object = None

    def line(self, text: str = "") -> None:
        if self.tty and self._progress:
            self.out.write(f"\r\x1b[K{text}\n{self._progress}")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def progress(self, text: str, key: object, *, final: bool = False) -> None:
        """``key`` is what the line says apart from the clock: unchanged, no plain line."""
        if self.tty:
            if not final:
                # Longer than the terminal, the line would wrap and \r could not redraw it.
                text = text[: shutil.get_terminal_size().columns - 1]
            self.out.write(f"\r\x1b[K{text}" + ("\n" if final else ""))
            self._progress = "" if final else text
        else:
            now = time.monotonic()
            if final or (now - self._plain_at >= PLAIN_EVERY and key != self._plain_key):
                self.out.write(text + "\n")
                self._plain_at, self._plain_key = now, key
        self.out.flush()


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


# --- The receiver ------------------------------------------------------------------------


@dataclass
class Receiver:
    """Verifies each callback as a real receiver would, and dedupes on ``webhook-id``."""

    display: Display
    total: int
    url: str = ""
    webhook: Webhook | None = None
    calls: list[Call] = field(default_factory=list)
    observe: Callable[[bytes], object] | None = None  # sees every body first (tests check it)
    show_project: bool = False  # several projects: each line says the callback's

    def verified_by_job(self) -> dict[str, Call]:
        """The first verified call of every job."""
        first: dict[str, Call] = {}
        for call in self.calls:
            if call.verified and call.job_id is not None:
                first.setdefault(call.job_id, call)
        return first

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.observe is not None:
            self.observe(body)
        headers = dict(request.headers)
        webhook_id = headers.get("webhook-id", "?")
        arrived, mono = time.time(), time.monotonic()
        try:
            if self.webhook is None:
                raise WebhookVerificationError("no signing secret known yet")
            event = self.webhook.verify(body, headers)
        except (WebhookVerificationError, ValueError) as exc:
            self.calls.append(
                Call(webhook_id, False, None, None, None, arrived, mono, None, str(exc))
            )
            self.display.line(f"  REFUSED  {webhook_id}: signature did not verify ({exc})")
            return web.Response(status=401, text="signature did not verify")
        data = event.get("data") or {}
        job_id = data.get("job_id")
        duplicate = any(c.verified and c.webhook_id == webhook_id for c in self.calls)
        call = Call(
            webhook_id=webhook_id,
            verified=True,
            job_id=job_id,
            type=event.get("type"),
            token=data.get("token"),
            at=arrived,
            monotonic=mono,
            outcome_at=_parse_time(event.get("timestamp")),
            project=data.get("project"),
        )
        self.calls.append(call)
        if duplicate:
            # At least once: a repeat carries the same webhook-id, and is acknowledged unprocessed.
            self.display.line(f"  duplicate {webhook_id} acknowledged and dropped")
        else:
            self._show(call)
        return web.Response(status=204)

    def _show(self, call: Call) -> None:
        count = len(self.verified_by_job())
        width = len(str(self.total))
        after = f", {_ms(call.at - call.outcome_at)} after the outcome" if call.outcome_at else ""
        project = f"  (project {call.project})" if self.show_project else ""
        self.display.line(
            f"  [{count:>{width}}/{self.total}] {call.type or '?':<29} token {call.token!s:<9}  "
            f"{call.job_id}  verified{after}{project}"
        )


def _ms(seconds: float) -> str:
    return f"{max(0.0, seconds) * 1000:.0f}ms" if seconds < 1 else f"{seconds:.2f}s"


def _parse_time(text: Any) -> float | None:
    if not isinstance(text, str):
        return None
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


@contextlib.asynccontextmanager
async def _serve_receiver(receiver: Receiver) -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post(HOOK_PATH, receiver.handle)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        yield f"http://{HOST}:{runner.addresses[0][1]}{HOOK_PATH}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _serve_bridge(settings: Settings) -> AsyncIterator[str]:
    from bridge.app import create_app

    runner = web.AppRunner(
        create_app(settings), handle_signals=False, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, HOST, 0)
        await site.start()
        yield f"http://{HOST}:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def bridge_env(workdir: Path, upstream_url: str, api_key: str, projects: int = 1) -> dict[str, str]:
    """The bridge's configuration for the demo, as environment variables.

    With more than one project, the first stays ``default`` (UPLOADCARE_PUBLIC_KEY) and the
    others come from BRIDGE_UPLOADCARE_PROJECTS, all of them the demo tenant's.
    """
    more = demo_projects(projects)[1:]
    multi: dict[str, str] = {}
    if more:
        multi["BRIDGE_UPLOADCARE_PROJECTS"] = ",".join(f"{p.name}:{p.public_key}" for p in more)
        multi.update((project_secret_var(p.name), p.secret_key) for p in more)
        names = "+".join([DEFAULT_PROJECT, *(p.name for p in more)])
        multi["BRIDGE_TENANT_PROJECTS"] = f"{TENANT}:{names}"
    return {
        "BRIDGE_HOST": HOST,
        "BRIDGE_PORT": "0",
        "BRIDGE_DATABASE_URL": f"sqlite:///{workdir.resolve() / 'bridge.db'}",
        "BRIDGE_API_KEYS": f"{TENANT}:{api_key}",
        "UPLOADCARE_PUBLIC_KEY": DEFAULT_PUBLIC_KEY,
        "UPLOADCARE_SECRET_KEY": DEFAULT_SECRET_KEY,
        "BRIDGE_UPSTREAM_URL": upstream_url,
        # The receiver is on loopback, which the callback network policy refuses by default.
        "BRIDGE_CALLBACK_ALLOW_NETWORKS": "127.0.0.0/8",
        # And the only hosts it may call back to: every callback stays on this machine.
        "BRIDGE_CALLBACK_HOSTS": "127.0.0.0/8",
        **multi,
        **PACING,
    }


# --- Talking to the fake and the bridge --------------------------------------------------


async def create_conversion(
    http: aiohttp.ClientSession,
    fake_url: str,
    kind: Kind,
    public_key: str = DEFAULT_PUBLIC_KEY,
    secret_key: str = DEFAULT_SECRET_KEY,
) -> int:
    """``POST /convert/{kind}/`` with Uploadcare's signed auth, as a real app would; the token.

    The keys are the project's: they are what makes the conversion that project's.
    """
    fmt = "mp4" if kind == "video" else "pdf"
    body = json.dumps({"paths": [f"{uuid.uuid4()}/{kind}/-/format/{fmt}/"], "store": "1"}).encode()
    uri = f"/convert/{kind}/"
    date = formatdate(usegmt=True)
    signature = sign(secret_key, "POST", body, "application/json", date, uri)
    headers = {
        "Accept": ACCEPT,
        "Content-Type": "application/json",
        "Date": date,
        "Authorization": f"Uploadcare {public_key}:{signature}",
    }
    async with http.post(fake_url + uri, data=body, headers=headers) as resp:
        answer = await resp.json(content_type=None)
        if resp.status != 200 or not answer.get("result"):
            raise DemoError(f"the fake upstream refused a conversion: {resp.status} {answer}")
        return int(answer["result"][0]["token"])


async def _register(
    http: aiohttp.ClientSession, bridge_url: str, auth: Mapping[str, str], body: dict[str, Any]
) -> str:
    async with http.post(f"{bridge_url}/v1/jobs", json=body, headers=auth) as resp:
        answer = await resp.json(content_type=None)
        if resp.status != 201:
            raise DemoError(f"the bridge refused a registration: {resp.status} {answer}")
        return str(answer["id"])


async def _all_jobs(
    http: aiohttp.ClientSession, bridge_url: str, auth: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    jobs: dict[str, dict[str, Any]] = {}
    cursor: str | None = None
    while True:
        params = {"limit": "500", **({"cursor": cursor} if cursor else {})}
        async with http.get(f"{bridge_url}/v1/jobs", params=params, headers=auth) as resp:
            resp.raise_for_status()
            page = await resp.json()
        jobs.update((j["id"], j) for j in page["items"])
        cursor = page["next_cursor"]
        if not cursor:
            return jobs


Samples = Mapping[str, list[tuple[dict[str, str], float]]]


async def _metrics(http: aiohttp.ClientSession, bridge_url: str) -> Samples:
    """``/metrics`` samples as {sample name: [(labels, value), ...]}."""
    async with http.get(f"{bridge_url}/metrics") as resp:
        text = await resp.text()
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return out


def tally(samples: Samples, name: str, by: str, **where: str) -> dict[str, float]:
    """The samples of ``name`` whose labels match ``where``, summed by the label ``by``."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, []):
        if all(labels.get(k) == v for k, v in where.items()):
            key = labels.get(by, "")
            out[key] = out.get(key, 0.0) + value
    return out


# --- The run -----------------------------------------------------------------------------


@dataclass
class _Progress:
    total: int
    registered: int = 0
    started: float = field(default_factory=time.monotonic)

    def render(self, jobs: Mapping[str, Mapping[str, Any]]) -> tuple[str, object]:
        states = Counter(str(j["state"]) for j in jobs.values())
        done = states["delivered"]
        width = 20
        filled = round(width * done / self.total) if self.total else width
        text = (
            f"[{'#' * filled}{'.' * (width - filled)}]  registered {self.registered}/{self.total}"
            f"  tracking {states['tracking']}  delivered {done}/{self.total}"
        )
        if states["delivering"]:
            text += f"  delivering {states['delivering']}"
        if states["undeliverable"]:
            text += f"  undeliverable {states['undeliverable']}"
        key = (self.registered, tuple(sorted(states.items())))
        return f"{text}  {time.monotonic() - self.started:5.1f}s", key


async def run_demo(
    options: Options,
    out: TextIO,
    workdir: Path,
    *,
    verify_with: str | None = None,
    observe: Callable[[bytes], object] | None = None,
) -> int:
    """Runs the demo; 0 when every callback arrived verified, else 1 (raises DemoError).

    ``verify_with`` makes the receiver verify with that secret instead of the bridge's
    (tests use a wrong one to see the demo fail); ``observe`` is given every callback body
    the receiver gets (tests hold them to the event catalog).
    """
    display = Display(out)
    api_key = secrets.token_urlsafe(24)
    auth = {"Authorization": f"Bearer {api_key}"}
    projects = demo_projects(options.projects)
    fake_config = FakeConfig(
        public_key=projects[0].public_key,
        secret_key=projects[0].secret_key,
        extra_keys={p.public_key: p.secret_key for p in projects[1:]},
        min_duration=options.min_duration,
        max_duration=options.max_duration,
        failed_rate=options.failures,
        canceled_rate=0.0,
        seed=options.seed,
    )
    receiver = Receiver(display, options.jobs, observe=observe, show_project=options.projects > 1)
    try:
        async with contextlib.AsyncExitStack() as stack:
            fake = await stack.enter_async_context(running(fake_config, HOST, 0))
            receiver.url = await stack.enter_async_context(_serve_receiver(receiver))
            settings = settings_mod.load(bridge_env(workdir, fake.url, api_key, options.projects))
            logs.redactor.add(settings.secret_values())
            bridge_url = await stack.enter_async_context(_serve_bridge(settings))
            http = await stack.enter_async_context(
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
            )
            _intro(display, options, fake.url, bridge_url, receiver.url, workdir)
            async with http.get(f"{bridge_url}/v1/signing-secrets", headers=auth) as resp:
                signing = (await resp.json())["secrets"]
            receiver.webhook = Webhook(verify_with or signing[0])
            display.line(
                "The receiver verifies with the tenant's signing secret, "
                "from GET /v1/signing-secrets."
            )
            display.line()
            return await _drive(display, options, projects, fake, bridge_url, auth, http, receiver)
    except asyncio.CancelledError:
        display.line("Interrupted: stopped the bridge, the receiver and the fake upstream.")
        raise


def _intro(
    display: Display, options: Options, fake_url: str, bridge_url: str, hook: str, workdir: Path
) -> None:
    display.line(
        f"bridge demo: {options.jobs} conversions end to end on this machine, "
        "no Uploadcare account needed (Ctrl-C stops it)"
    )
    display.line(f"  fake upstream  {fake_url}  (a stand-in for Uploadcare's conversion API)")
    display.line(f"  bridge         {bridge_url}  (database {workdir / 'bridge.db'})")
    display.line(f"  receiver       {hook}  (verifies callbacks with standardwebhooks)")
    display.line(f"  bridge logs    {workdir / 'bridge.log'}")
    if options.projects > 1:
        names = ", ".join(f"{p.name} ({p.public_key})" for p in demo_projects(options.projects))
        display.line(f"  projects       {names}: one fake serves them all, jobs go to each in turn")
    display.line(
        f"Creating {options.jobs} conversions at the fake (POST /convert/{{kind}}/), "
        "registering each token with POST /v1/jobs..."
    )


async def _drive(
    display: Display,
    options: Options,
    projects: list[DemoProject],
    fake: RunningFake,
    bridge_url: str,
    auth: Mapping[str, str],
    http: aiohttp.ClientSession,
    receiver: Receiver,
) -> int:
    progress = _Progress(options.jobs)
    tracked: list[Tracked] = []
    gate = asyncio.Semaphore(8)

    async def one(n: int) -> None:
        kind: Kind = "document" if n % 3 == 0 else "video"
        project = projects[(n - 1) % len(projects)]  # round robin
        async with gate:
            try:
                token = await create_conversion(
                    http, fake.url, kind, project.public_key, project.secret_key
                )
                body = {
                    "token": token,
                    "kind": kind,
                    "project": project.name,
                    "callback_url": receiver.url,
                    "metadata": {"demo": n},
                }
                job_id = await _register(http, bridge_url, auth, body)
            except aiohttp.ClientError as exc:
                raise DemoError(
                    f"conversion {n} could not be created and registered: {exc}"
                ) from None
        tracked.append(Tracked(n, kind, token, job_id, project))
        progress.registered += 1

    registering = asyncio.create_task(
        _gather(one(n) for n in range(1, options.jobs + 1)), name="demo-register"
    )
    deadline = progress.started + options.timeout
    try:
        while True:
            jobs = await _all_jobs(http, bridge_url, auth)
            display.progress(*progress.render(jobs))
            if registering.done():
                registering.result()  # a refused conversion or registration ends the demo
                if all(j["state"] in ENDED for j in jobs.values()) and len(jobs) == options.jobs:
                    break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(TICK)
    finally:
        if not registering.done():
            registering.cancel()
            with contextlib.suppress(asyncio.CancelledError, DemoError):
                await registering
    display.progress(*progress.render(jobs), final=True)
    elapsed = time.monotonic() - progress.started
    metrics = await _metrics(http, bridge_url)
    display.line()
    rows = summary_rows(tracked, jobs, receiver, fake, metrics, elapsed)
    if len(projects) > 1:
        rows[3:3] = project_rows(projects, tracked, jobs, fake, metrics)
    for label, value in rows:
        display.line(f"  {label:<28} {value}")
    display.line()
    problems = verdict(tracked, jobs, receiver, options, fake)
    if problems:
        for problem in problems:
            display.line(f"FAILED: {problem}")
        return 1
    display.line(f"OK: all {options.jobs} callbacks arrived, each verified, in {elapsed:.1f}s.")
    return 0


async def _gather(coros: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Runs them all; the first failure cancels the rest and is raised as itself."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except ExceptionGroup as failed:
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise first from None


# --- The summary -------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p * len(ordered)) - 1)]


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    p50, p95 = percentile(values, 0.5), percentile(values, 0.95)
    return f"p50 {_ms(p50)}  p95 {_ms(p95)}  max {_ms(max(values))}"


def _counts(counter: Mapping[str, float], template: str = "{v} {k}") -> str:
    shown = [template.format(k=k, v=int(v)) for k, v in sorted(counter.items()) if v]
    return ", ".join(shown) or "none"


def summary_rows(
    tracked: list[Tracked],
    jobs: Mapping[str, Mapping[str, Any]],
    receiver: Receiver,
    fake: RunningFake,
    metrics: Samples,
    elapsed: float,
) -> list[tuple[str, str]]:
    """The summary table, from the job views, the fake's request log, the receiver and /metrics."""
    states = Counter(str(j["state"]) for j in jobs.values())
    outcomes = Counter(str(j["outcome"]) for j in jobs.values() if j["outcome"])
    per_job = [len(_polls(fake, t)) for t in tracked]
    codes = tally(metrics, "bridge_upstream_requests_total", "code")  # summed over projects
    attempts = sum(int(j["delivery"]["attempts"]) for j in jobs.values())
    results = tally(metrics, "bridge_callback_attempts_total", "result")
    first = receiver.verified_by_job()
    verified_calls = [c for c in receiver.calls if c.verified]
    duplicates = len(verified_calls) - len(first)
    latency = [c.at - c.outcome_at for c in first.values() if c.outcome_at is not None]
    end_to_end: list[float] = []
    for t in tracked:
        if (call := first.get(t.job_id)) is not None:
            conversion = fake.fake.job(t.kind, t.token, t.project.public_key)
            # The fake's clock is time.monotonic(), like the receiver's arrival stamp.
            end_to_end.append(call.monotonic - (conversion.created_at + conversion.duration))
    per_job_text = (
        f"min {min(per_job)}  median {percentile([float(x) for x in per_job], 0.5):.0f}  "
        f"max {max(per_job)}  ({sum(per_job)} status requests in all; "
        f"{_counts(codes, '{k}: {v}')})"
        if per_job
        else "none"
    )
    return [
        ("jobs", f"{len(tracked)} registered, {_counts(states)}"),
        ("outcomes", _counts(outcomes)),
        ("upstream requests per job", per_job_text),
        (
            "callback attempts",
            f"{attempts} for {len(jobs)} jobs ({_counts(results, '{k}: {v}')}); receiver got "
            f"{len(receiver.calls)}: {len(verified_calls)} verified, {duplicates} duplicates",
        ),
        ("notification latency", f"{_spread(latency)}  (outcome recorded -> verified callback)"),
        ("conversion end -> callback", f"{_spread(end_to_end)}  (includes the wait for a poll)"),
        ("took", f"{elapsed:.1f}s"),
    ]


def _polls(fake: RunningFake, t: Tracked) -> list[Any]:
    """The status requests the fake got for this job, signed with its project's keys."""
    return fake.fake.status_requests(kind=t.kind, token=t.token, project=t.project.public_key)


def project_rows(
    projects: list[DemoProject],
    tracked: list[Tracked],
    jobs: Mapping[str, Mapping[str, Any]],
    fake: RunningFake,
    metrics: Samples,
) -> list[tuple[str, str]]:
    """A line per project: its jobs as the bridge tells them, and the upstream requests the
    bridge counted for it next to those the fake got signed with that project's keys."""
    rows = []
    for project in projects:
        views = [j for j in jobs.values() if j.get("project") == project.name]
        states = Counter(str(j["state"]) for j in views)
        outcomes = Counter(str(j["outcome"]) for j in views if j["outcome"])
        codes = tally(metrics, "bridge_upstream_requests_total", "code", project=project.name)
        seen = len(fake.fake.status_requests(project=project.public_key))
        mine = sum(1 for t in tracked if t.project == project)
        rows.append(
            (
                f"project {project.name}",
                f"{mine} registered, {_counts(states)}; outcomes {_counts(outcomes)}; "
                f"upstream requests {int(sum(codes.values()))} "
                f"({_counts(codes, '{k}: {v}')}), the fake got {seen} signed "
                f"{project.public_key}",
            )
        )
    return rows


def verdict(
    tracked: list[Tracked],
    jobs: Mapping[str, Mapping[str, Any]],
    receiver: Receiver,
    options: Options,
    fake: RunningFake | None = None,
) -> list[str]:
    """What went wrong, one sentence each; empty when every callback arrived verified."""
    problems: list[str] = []
    first = receiver.verified_by_job()
    missing = [t for t in tracked if t.job_id not in first]
    if len(tracked) < options.jobs:
        problems.append(f"only {len(tracked)} of {options.jobs} jobs were registered")
    if missing:
        shown = []
        for t in missing[:5]:
            view = jobs.get(t.job_id, {})
            error = (view.get("delivery") or {}).get("last_error")
            state = view.get("state", "unknown")
            shown.append(f"{t.job_id} ({state}{', ' + error if error else ''})")
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        problems.append(
            f"{len(missing)} of {len(tracked)} callbacks did not arrive verified within "
            f"{options.timeout:g}s: {', '.join(shown)}{more}"
        )
    if fake is not None:
        unpolled = [t for t in tracked if t.job_id in first and not _polls(fake, t)]
        for name in dict.fromkeys(t.project.name for t in unpolled):
            count = sum(1 for t in unpolled if t.project.name == name)
            problems.append(
                f"{count} jobs of project {name} were delivered but never polled with its keys"
            )
    refused = [c for c in receiver.calls if not c.verified]
    if refused:
        problems.append(f"the receiver refused {len(refused)} callbacks whose signature failed")
    return problems


# --- The command -------------------------------------------------------------------------


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"a number of jobs from 1 to 10000, not {text!r}")
    return value


def _projects(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_PROJECTS:
        raise argparse.ArgumentTypeError(
            f"a number of projects from 1 to {MAX_PROJECTS}, not {text!r}"
        )
    return value


def _seconds(text: str) -> float:
    try:
        return settings_mod.parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = Options()
    parser.add_argument(
        "--jobs", type=_count, default=defaults.jobs, help="conversions to run (%(default)s)"
    )
    parser.add_argument(
        "--failures",
        type=parse_odds,
        default=defaults.failures,
        metavar="P",
        help="odds that the fake reports a conversion as failed (%(default)s)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=defaults.timeout,
        help="give up when callbacks have not all arrived by then (default %(default)gs)",
    )
    parser.add_argument(
        "--projects",
        type=_projects,
        default=defaults.projects,
        metavar="N",
        help="Uploadcare projects the fake serves and the bridge polls; jobs go to each in "
        "turn (%(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed for the fake")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary directory (database and bridge.log) after a successful run",
    )


def _log_to(stream: TextIO) -> None:
    """The bridge's JSON log lines go to ``stream``, redacted as in ``serve``."""
    logs.configure("json", "info")
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(stream))
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(stream)


async def _interruptible(options: Options, out: TextIO, workdir: Path) -> int:
    loop = asyncio.get_running_loop()
    main = asyncio.create_task(run_demo(options, out, workdir), name="demo")
    stop: Callable[[], Any] = main.cancel
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop)
    try:
        return await main
    except asyncio.CancelledError:
        if main.cancelled():
            return INTERRUPTED
        raise
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_from_args(args: argparse.Namespace) -> int:
    options = Options(
        jobs=args.jobs,
        failures=args.failures,
        timeout=args.timeout,
        seed=args.seed,
        projects=args.projects,
    )
    workdir = Path(tempfile.mkdtemp(prefix="bridge-demo-"))
    code = 1
    log_file = (workdir / "bridge.log").open("a", encoding="utf-8")
    try:
        _log_to(log_file)
        code = asyncio.run(_interruptible(options, sys.stdout, workdir))
    except DemoError as exc:
        print(f"bridge: demo: {exc}", file=sys.stderr)
    finally:
        logs.configure("json", "info")  # back to stdout before the file closes
        log_file.close()
    if code == 1 or args.keep:
        print(f"Kept {workdir} for a look: bridge.db, bridge.log.", flush=True)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return code
