"""What every bench server process shares: its configuration, where it listens, how it stops.

The driver starts each server with ``python -m bench.<name>``, its configuration as JSON
in ``BENCH_CONFIG`` (secrets included, so they never show in ``ps``), and a pipe on stdin.
The server listens on 127.0.0.1, a port the kernel picks, and says which in one JSON line
on stdout. It stops on SIGTERM or SIGINT, and also when its stdin reaches end of file:
that is the driver gone, even killed with SIGKILL, and no server may outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Final

from aiohttp import web

HOST: Final = "127.0.0.1"
CONFIG_VAR: Final = "BENCH_CONFIG"


def config() -> dict[str, Any]:
    raw = json.loads(os.environ.get(CONFIG_VAR, "{}"))
    if not isinstance(raw, dict):
        raise SystemExit(f"{CONFIG_VAR} must hold a JSON object")
    return raw


def _watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    fd = sys.stdin.fileno()

    def readable() -> None:
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
            stop.set()

    # A terminal or a regular file (a server started by hand) cannot be watched: skip.
    with contextlib.suppress(OSError, ValueError):
        loop.add_reader(fd, readable)


async def serve(make_app: Callable[[], Awaitable[web.Application]]) -> None:
    """Serves the app until told to stop; the app is made inside the running loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _watch_stdin(loop, stop)
    app = await make_app()
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        # A deep accept queue: the driver opens dozens of connections at once.
        site = web.TCPSite(runner, HOST, 0, backlog=1024)
        await site.start()
        print(json.dumps({"port": runner.addresses[0][1]}), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def run(make_app: Callable[[], Awaitable[web.Application]]) -> None:
    asyncio.run(serve(make_app))
