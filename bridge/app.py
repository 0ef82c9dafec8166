"""The application factory: routes, and the resources that live as long as the app."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import structlog
from aiohttp import web

from bridge import api, keys
from bridge.auth import Authenticator
from bridge.delivery import Deliverer, callback_session
from bridge.logs import redactor
from bridge.metrics import Metrics
from bridge.netpolicy import NetworkPolicy
from bridge.pacing import PauseBoard, RateLimiter, retry_gate
from bridge.scheduler import ProjectClients, Scheduler
from bridge.settings import Settings
from bridge.store import Store, open_store
from bridge.upstream import UpstreamClient
from bridge.webhooks import SecretBook

log = structlog.get_logger("bridge.app")


def create_app(
    settings: Settings,
    *,
    clock: Callable[[], float] = time.time,
    store: Store | None = None,
    policy: NetworkPolicy | None = None,
    with_scheduler: bool = True,
) -> web.Application:
    """Build the app. A given ``store`` is used (and not closed) instead of opening one."""
    app = web.Application(middlewares=[api.request_context, api.bearer_auth])
    app[keys.SETTINGS] = settings
    app[keys.CLOCK] = clock
    app[keys.METRICS] = metrics = Metrics()
    metrics.add_projects(settings.projects)
    app[keys.AUTH] = Authenticator(settings.api_keys)
    app[keys.POLICY] = policy or NetworkPolicy(allow=settings.callback_allow_networks)
    pauses = PauseBoard(clock, settings.projects)
    app[keys.PAUSES] = pauses
    api.add_routes(app)
    app.cleanup_ctx.append(_store_ctx(store))
    app.cleanup_ctx.append(_secrets_ctx)
    app.cleanup_ctx.append(_retention_ctx)
    if with_scheduler:
        app.cleanup_ctx.append(_scheduler_ctx)
        app.on_shutdown.append(_stop_claiming)
    return app


async def _stop_claiming(app: web.Application) -> None:
    # Runs as soon as the server stops accepting: in-flight work keeps the whole grace.
    if (scheduler := app.get(keys.SCHEDULER)) is not None:
        scheduler.stop_claiming()


async def _scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    async with open_scheduler(
        settings,
        app[keys.STORE],
        secrets=app[keys.SECRETS],
        metrics=app[keys.METRICS],
        pauses=app[keys.PAUSES],
        policy=app[keys.POLICY],
        clock=app[keys.CLOCK],
    ) as scheduler:
        app[keys.SCHEDULER] = scheduler
        scheduler.start()
        try:
            yield
        finally:
            await scheduler.stop(settings.shutdown_grace)


@contextlib.asynccontextmanager
async def open_scheduler(
    settings: Settings,
    store: Store,
    *,
    secrets: SecretBook,
    metrics: Metrics,
    pauses: PauseBoard,
    policy: NetworkPolicy,
    clock: Callable[[], float] = time.time,
    monotonic: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] = random.random,
) -> AsyncIterator[Scheduler]:
    """A scheduler and the client sessions it polls and delivers on, not started.

    One ``UpstreamClient`` per configured project, with that project's keys, and one rate
    limiter per project (BRIDGE_UPSTREAM_RPS is each project's); the clients share one
    session. The app starts the scheduler (and stops it before the sessions close); a test
    steps it with ``run_once`` on a virtual clock passed as both ``clock`` and ``monotonic``.
    """

    limiters = {
        name: RateLimiter(settings.upstream_rps, clock=monotonic) for name in settings.projects
    }
    metrics.add_projects(settings.projects)
    async with (
        # trust_env stays False: no proxy from HTTP(S)_PROXY; BRIDGE_UPSTREAM_PROXY only,
        # for upstream requests only (the callback session refuses every proxy).
        aiohttp.ClientSession(trust_env=False) as upstream_session,
        callback_session(policy, settings.callback_concurrency) as callbacks,
    ):
        clients = {
            project.name: UpstreamClient(
                upstream_session,
                base_url=settings.upstream_url,
                public_key=project.public_key,
                secret_key=project.secret_key,
                auth="simple" if settings.upstream_auth == "simple" else "signed",
                timeout=settings.upstream_timeout,
                on_request=metrics.upstream_request,
                on_clock_skew=metrics.clock_skew,
                before_retry=retry_gate(pauses, limiters[project.name], project.name),
                project=project.name,
                proxy=settings.upstream_proxy,
            )
            for project in settings.projects.values()
        }
        yield Scheduler(
            settings=settings,
            store=store,
            upstream=ProjectClients(clients),
            deliverer=Deliverer(callbacks, timeout=settings.callback_timeout, clock=clock),
            secrets=secrets,
            metrics=metrics,
            pauses=pauses,
            clock=clock,
            monotonic=monotonic,
            rand=rand,
            limiters=limiters,
        )


def _store_ctx(
    given: Store | None,
) -> Callable[[web.Application], contextlib.AbstractAsyncContextManager[None]]:
    @contextlib.asynccontextmanager
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        if given is not None:
            app[keys.STORE] = given
            yield
            return
        store = await open_store(app[keys.SETTINGS].database)
        app[keys.STORE] = store
        try:
            yield
        finally:
            await store.close()

    return ctx


async def _secrets_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.SETTINGS]
    book = SecretBook(
        settings.webhook_secrets,
        app[keys.STORE],
        app[keys.CLOCK],
        on_generated=redact_key,
        schemes=settings.signature_schemes,
        overlap=settings.secret_rotation_overlap,
    )
    app[keys.SECRETS] = book
    # Every tenant gets its secret at first start, so receivers can be configured up front.
    for a, b in await book.shared_between(settings.tenants):
        log.warning(
            "webhook_secret_shared",
            tenants=[a, b],
            message=f"tenants {a!r} and {b!r} share a webhook signing secret, so each can forge "
            "callbacks to the other; give each its own with tenant:whsec_... entries",
        )
    yield


def redact_key(secret: str) -> None:
    """A generated secret or private key, as made or first read: never in a log line, whole
    or as its base64 part (``whsec_``/``whsk_`` aside)."""
    redactor.add([secret, secret.partition("_")[2]])


async def _retention_ctx(app: web.Application) -> AsyncIterator[None]:
    task = asyncio.create_task(_retention_loop(app), name="retention")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def purge_once(app: web.Application) -> int:
    settings = app[keys.SETTINGS]
    removed = await app[keys.STORE].purge_ended(before=app[keys.CLOCK]() - settings.retention)
    if removed:
        log.info("jobs_purged", count=removed, retention_s=settings.retention)
    return removed


async def _retention_loop(app: web.Application) -> None:
    # Often enough that nothing outlives retention by more than a quarter of it (at most a minute).
    interval = min(60.0, app[keys.SETTINGS].retention / 4)
    while True:
        try:
            await purge_once(app)
        except Exception:
            log.exception("retention_failed")
        await asyncio.sleep(interval)
