"""The bench's upstream: ``bridge.fake_upstream`` on the wall clock, plus ``/_bench/`` routes.

The wall clock (``time.time``) makes a conversion's finish time comparable with the
receiver's arrival times, which another process stamps. Control routes:

- ``POST /_bench/jobs`` ``{"jobs": [{"kind", "duration", "outcome"}...]}``: creates each
  conversion now (``duration`` null or ``Infinity``: it never ends) and answers
  ``{"jobs": [{"token", "finish_at"}...]}``, ``finish_at`` being when it will end (null:
  never), in Unix seconds.
- ``GET /_bench/report``: ``{"status_requests": n, "detected": {token: t}}``, ``t`` being
  when the first status request that saw the conversion ended was answered.
- ``GET /_bench/status-times?since=&until=``: ``{"times": [...]}``, when each status
  request in that span was answered.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Final, cast

from aiohttp import web
from aiohttp.typedefs import Handler

from bench import serving
from bridge.fake_upstream import FAKE, FakeConfig, FakeUpstream, Outcome, create_app
from bridge.model import Kind

TERMINAL: Final = frozenset({b"finished", b"failed", b"canceled", b"cancelled"})
# The fake keeps a log of requests the bench never reads; a short one costs nothing.
REQUEST_LOG_LIMIT: Final = 1000


class Ledger:
    """Counts and times of status requests, kept apart from the fake's log, exactly."""

    def __init__(self, fake: FakeUpstream) -> None:
        self.fake = fake
        self.status_times: list[float] = []
        self.detected: dict[int, float] = {}

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if "/status/" not in request.path:
            return response
        # Stamped after the answer is made: a status computed at an earlier instant than
        # the stamp can only make the detection look later, never before the finish.
        at = time.time()
        self.status_times.append(at)
        if response.status == 200 and isinstance(response, web.Response):
            token = _token(request)
            if token is not None and token not in self.detected and _ended(response.body):
                self.detected[token] = at
        return response

    async def create(self, request: web.Request) -> web.Response:
        payload = await request.json()
        out = []
        for spec in payload["jobs"]:
            kind = cast(Kind, spec["kind"])
            outcome = cast(Outcome, spec.get("outcome", "finished"))
            raw = spec.get("duration")
            duration = math.inf if raw is None else float(raw)
            token = self.fake.add_job(kind, outcome=outcome, duration=duration)
            job = self.fake.job(kind, token)
            finish = job.created_at + duration if math.isfinite(duration) else None
            out.append({"token": token, "finish_at": finish})
        return web.json_response({"jobs": out})

    async def report(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status_requests": len(self.status_times), "detected": self.detected}
        )

    async def times(self, request: web.Request) -> web.Response:
        since = float(request.query.get("since", "-inf"))
        until = float(request.query.get("until", "inf"))
        times = [t for t in self.status_times if since <= t < until]
        return web.json_response({"times": times})


def _token(request: web.Request) -> int | None:
    raw = request.match_info.get("token", "")
    return int(raw) if raw.isascii() and raw.isdigit() else None


def _ended(body: Any) -> bool:
    if not isinstance(body, bytes):
        return False
    try:
        status = json.loads(body).get("status")
    except (ValueError, AttributeError):
        return False
    return isinstance(status, str) and status.encode() in TERMINAL


async def make_app() -> web.Application:
    settings = serving.config()
    app = create_app(
        FakeConfig(
            public_key=settings["public_key"],
            secret_key=settings["secret_key"],
            # Outcomes are chosen per conversion by the bench, never drawn by the fake.
            failed_rate=0.0,
            canceled_rate=0.0,
            seed=settings.get("seed"),
            clock=time.time,
            request_log_limit=REQUEST_LOG_LIMIT,
        )
    )
    ledger = Ledger(app[FAKE])
    app.middlewares.append(ledger.middleware)
    app.router.add_post("/_bench/jobs", ledger.create)
    app.router.add_get("/_bench/report", ledger.report)
    app.router.add_get("/_bench/status-times", ledger.times)
    return app


if __name__ == "__main__":
    serving.run(make_app)
