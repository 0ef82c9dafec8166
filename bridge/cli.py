"""The ``bridge`` command: serve, fake-upstream, demo, migrate, secret, openapi."""

from __future__ import annotations

import argparse
import asyncio
import errno
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from aiohttp import web

from bridge import __version__, logs
from bridge import settings as settings_mod
from bridge.settings import Settings, SettingsError
from bridge.store import StoreError, open_store

log = structlog.get_logger("bridge")


class StartupError(Exception):
    """A reason not to start, said in one line; ``code`` is the exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> int:
    print(f"bridge: {message}", file=sys.stderr)
    return code


def _settings(args: argparse.Namespace) -> Settings:
    flags = {k: v for k, v in vars(args).items() if v is not None}
    return settings_mod.load(os.environ, flags)


# -- serve -----------------------------------------------------------------------------------

# Bounds on what one client can make the API server hold (aiohttp's RequestHandler options).
# aiohttp has no separate deadline for a request's headers: its keep-alive timer also runs
# from the moment a connection opens until a whole request has arrived, so an idle or
# half-sent request is closed after ``keepalive_timeout``. A slow body is bounded by
# bridge.api.BODY_TIMEOUT, and a body left unread after an answer by ``lingering_time``.
SERVER_LIMITS: dict[str, Any] = {
    "keepalive_timeout": 15.0,  # seconds: idle between requests, or waiting for a whole one
    "max_line_size": 8190,  # bytes of the request line
    "max_field_size": 8190,  # bytes of one header line
    "max_headers": 64,  # header lines per request
    "lingering_time": 5.0,  # seconds spent discarding an unread request body
}


async def _serve(settings: Settings) -> None:
    from bridge.app import create_app

    # Signals are caught from the start, so a SIGTERM during start-up still exits cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    app = create_app(settings)
    # API requests are short; the shutdown grace is mostly for the scheduler's work, which
    # drains in parallel (it stops claiming as soon as the listener closes).
    runner = web.AppRunner(
        app,
        handle_signals=False,
        access_log=None,
        shutdown_timeout=min(5.0, settings.shutdown_grace),
        **SERVER_LIMITS,
    )
    try:
        await runner.setup()
    except StoreError as exc:
        await runner.cleanup()
        raise StartupError(str(exc)) from None
    site = web.TCPSite(runner, settings.host, settings.port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        why = "the address is in use" if exc.errno == errno.EADDRINUSE else exc.strerror
        raise StartupError(
            f"cannot listen on {settings.host}:{settings.port}: {why}; "
            "set BRIDGE_HOST/BRIDGE_PORT (or --host/--port) to a free address"
        ) from None
    # The port actually bound (BRIDGE_PORT=0 picks a free one).
    port = int(runner.addresses[0][1]) if runner.addresses else settings.port
    log.info(
        "serving",
        version=__version__,
        host=settings.host,
        port=port,
        database=str(settings.database),
        tenants=list(settings.tenants),
        projects=list(settings.projects),
        auth="none" if settings.insecure_no_auth and not settings.api_keys else "bearer",
    )
    await stop.wait()
    log.info("stopping", grace_s=settings.shutdown_grace)
    await runner.cleanup()
    log.info("stopped")


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    settings.check_serve()
    logs.configure(settings.log_format, settings.log_level, settings.secret_values())
    if settings.insecure_no_auth and not settings.api_keys:
        log.warning("auth_disabled", message="every /v1 request is accepted as tenant 'default'")
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        runner.run(_serve(settings))
    return 0


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (the bench measured it cheaper per job), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# -- migrate and secret ----------------------------------------------------------------------


async def _migrate(settings: Settings) -> int:
    store = await open_store(settings.database, exclusive=True, migrate=True)
    try:
        version = await store.migrate()
    finally:
        await store.close()
    return version


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    version = asyncio.run(_migrate(settings))
    print(f"{settings.database}: schema at version {version}")
    return 0


async def _secrets(settings: Settings, tenants: Sequence[str]) -> dict[str, list[str]]:
    import time

    from bridge.webhooks import SecretBook

    db = settings.database
    if db.scheme == "sqlite" and not os.path.exists(db.path):
        # A misspelt path would otherwise print a fresh secret no server signs with.
        raise StartupError(
            f"no database at {db} (BRIDGE_DATABASE_URL); `bridge serve` or `bridge migrate` "
            "creates it",
            1,
        )
    # Not exclusive: a running serve keeps its lock and this only reads or adds a row.
    store = await open_store(db, exclusive=False, migrate=True)
    try:
        book = SecretBook(
            settings.webhook_secrets,
            store,
            time.time,
            schemes=settings.signature_schemes,
            overlap=settings.secret_rotation_overlap,
        )
        # What a receiver configures: each v1 secret, or each v1a public key.
        return {t: [k.shown for k in await book.for_tenant(t)] for t in tenants}
    finally:
        await store.close()


def cmd_secret(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.tenant is not None and args.tenant not in settings.tenants:
        raise StartupError(
            f"no tenant {args.tenant!r}; BRIDGE_API_KEYS names: {', '.join(settings.tenants)}", 2
        )
    tenants = [args.tenant] if args.tenant else list(settings.tenants)
    found = asyncio.run(_secrets(settings, tenants))
    for tenant, secrets in found.items():
        for secret in secrets:
            print(secret if args.tenant else f"{tenant}: {secret}")
    return 0


def cmd_fake_upstream(args: argparse.Namespace) -> int:
    from bridge import fake_upstream

    return fake_upstream.run_from_args(args)


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge import demo

    return demo.run_from_args(args)


def cmd_openapi(args: argparse.Namespace) -> int:
    from bridge import openapi

    sys.stdout.write(openapi.text())
    return 0


# -- the parser ------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bridge",
        description="Poll Uploadcare conversions and deliver their outcome as signed webhooks.",
    )
    parser.add_argument("--version", action="version", version=f"uploadcare-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the service (HTTP API + scheduler)",
        description="Run the HTTP API and the scheduler. Every setting comes from the "
        "environment (see README); the flags below override the non-secret ones.",
    )
    settings_mod.add_serve_flags(serve)
    serve.set_defaults(func=cmd_serve)

    from bridge import fake_upstream

    fake = sub.add_parser(
        "fake-upstream",
        help="a local stand-in for Uploadcare's conversion API (development tool)",
        description="A DEVELOPMENT TOOL, not Uploadcare: a local stand-in for the conversion "
        "API, for demos, development and benchmarks.",
    )
    fake_upstream.add_arguments(fake)
    fake.set_defaults(func=cmd_fake_upstream)

    from bridge import demo

    demo_parser = sub.add_parser(
        "demo",
        help="end to end on this machine: fake upstream, bridge and a verifying receiver",
        description="Run the fake upstream, the bridge (on a temporary SQLite file) and a "
        "receiver that verifies signatures, all on 127.0.0.1; register conversions, show "
        "progress and each callback, print a summary. Exits 0 when every callback arrived "
        "verified. No Uploadcare account needed.",
    )
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(func=cmd_demo)

    migrate = sub.add_parser(
        "migrate",
        help="create or upgrade the database schema",
        description="Create or upgrade the schema of BRIDGE_DATABASE_URL (serve does it too).",
    )
    migrate.set_defaults(func=cmd_migrate)

    secret = sub.add_parser(
        "secret",
        help="print the webhook signing secret(s) in use",
        description="Print what signs callbacks, for receivers to configure: each v1 "
        "secret, or each v1a public key (a private key is never printed), the current one "
        "first. Generates and stores a tenant's secret if it has none yet; never creates "
        "a database.",
    )
    secret.add_argument("--tenant", metavar="NAME", help="only this tenant's, one per line")
    secret.set_defaults(func=cmd_secret)

    openapi = sub.add_parser(
        "openapi",
        help="print the OpenAPI document (the API and the event catalog)",
        description="Print the OpenAPI 3.1 document that GET /openapi.json serves: the /v1 "
        "API and, under webhooks, the schema of every callback. docs/openapi.json is this "
        "output (make openapi writes it).",
    )
    openapi.set_defaults(func=cmd_openapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except SettingsError as exc:
        return _fail(str(exc), 2)
    except StartupError as exc:
        return _fail(str(exc), exc.code)
    except StoreError as exc:
        return _fail(str(exc), 1)
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
