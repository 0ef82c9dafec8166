"""The reference poller: the bridge's job with nothing around it, our practical ceiling.

A minimal in-memory poller in plain aiohttp: no store, no metrics, no logs, no rate
limit. It takes the same ``POST /v1/jobs`` body (any ``Authorization`` is ignored) and
answers 201 with an id; it polls the same URL with the same headers and Uploadcare's
signed auth, on the same interval rule as the bridge with no history (first poll after
the initial delay, then the minimum interval, growing 1.5 times while the status does not
change up to the maximum, back to the minimum when it changes, each with ±10% jitter);
three 404s in a row end a job as ``not_found``; an outcome is POSTed in the bridge's
callback shape, signed the Standard Webhooks way, and retried until a 2xx (or a 410).

Timers are the event loop's own (``call_later``: one heap for every job). Whatever it
does faster than the bridge is what durability, bookkeeping and politeness cost there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Final

import aiohttp
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from bench import serving
from bridge import model, pollplan
from bridge.upstream import ACCEPT, SIGNED_CONTENT_TYPE, sign

# Uploadcare's spellings of an ended conversion, and the outcome each means.
TERMINAL: Final = {
    "finished": "finished",
    "failed": "failed",
    "canceled": "canceled",
    "cancelled": "canceled",
}
# The interval rule, its jitter, the 404 limit and the callback's id are the bridge's own
# pure functions (bridge.model, bridge.pollplan): the same decisions, without the machinery.
JITTER: Final = pollplan.POLL_JITTER
# Callback retries: quick at first, then every half minute, for as long as it takes.
RETRY_FIRST: Final = 0.5
RETRY_LONGEST: Final = 30.0
# In flight at once: the bridge's defaults (BRIDGE_UPSTREAM_CONCURRENCY and
# BRIDGE_CALLBACK_CONCURRENCY), so that neither side wins by opening more sockets.
UPSTREAM_CONNECTIONS: Final = 32
CALLBACK_CONNECTIONS: Final = 64
TIMEOUT: Final = aiohttp.ClientTimeout(total=15)
USER_AGENT: Final = "uploadcare-bridge-bench-reference/1"


@dataclass(frozen=True)
class Config:
    upstream_url: str
    public_key: str
    secret_key: str
    webhook_secret: str
    initial_delay: float
    min_interval: float
    max_interval: float


@dataclass(eq=False, slots=True)
class Watch:
    """One registered job and what its polls have seen so far."""

    id: str
    kind: str
    token: int
    callback_url: str
    metadata: Any
    status: str | None = None
    interval: float | None = None
    not_found: int = 0
    failures: int = 0


def _jittered(value: float, rng: random.Random) -> float:
    return pollplan.jittered(value, JITTER, rng.random())


def _parse(body: Any, job_id: str) -> Watch | None:
    """The registration, or None when it is not one (the reference checks only shape)."""
    if not isinstance(body, dict):
        return None
    token, kind, url = body.get("token"), body.get("kind", "video"), body.get("callback_url")
    if isinstance(token, str) and token.isdigit():
        token = int(token)
    if isinstance(token, bool) or not isinstance(token, int) or token < 1:
        return None
    if kind not in ("video", "document") or not isinstance(url, str):
        return None
    return Watch(job_id, kind, token, url, body.get("metadata"))


class Poller:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.jobs: dict[str, Watch] = {}
        self._ids = itertools.count(1)
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()
        self._webhook = Webhook(config.webhook_secret)
        self._upstream: aiohttp.ClientSession | None = None
        self._callbacks: aiohttp.ClientSession | None = None

    async def sessions(self, app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx``: the two client sessions live as long as the server."""
        self._upstream = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=UPSTREAM_CONNECTIONS), timeout=TIMEOUT
        )
        self._callbacks = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CALLBACK_CONNECTIONS), timeout=TIMEOUT
        )
        yield
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._upstream.close()
        await self._callbacks.close()

    async def register(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"title": "body is not JSON"}, status=400)
        job = _parse(body, f"job_ref{next(self._ids):08d}")
        if job is None:
            return web.json_response({"title": "not a registration"}, status=422)
        self.jobs[job.id] = job
        self._after(self.config.initial_delay, job)
        answer = {"id": job.id, "kind": job.kind, "token": job.token, "state": "tracking"}
        return web.json_response(answer, status=201)

    # -- polling ---------------------------------------------------------------------------

    def _after(self, delay: float, job: Watch) -> None:
        asyncio.get_running_loop().call_later(delay, self._spawn, job)

    def _spawn(self, job: Watch) -> None:
        task = asyncio.create_task(self._poll(job))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _poll(self, job: Watch) -> None:
        code, answer = await self._ask(job)
        status = answer.get("status") if code == 200 else None
        if isinstance(status, str) and status in TERMINAL:
            error = answer.get("error") if status == "failed" else None
            await self._deliver(job, TERMINAL[status], error, answer.get("result"))
        elif isinstance(status, str):
            changed = status != job.status
            job.status, job.not_found, job.failures = status, 0, 0
            job.interval = pollplan.growth_interval(
                job.interval, changed, self.config.min_interval, self.config.max_interval
            )
            self._after(_jittered(job.interval, self._rng), job)
        elif code == 404:
            job.not_found += 1
            if job.not_found >= model.NOT_FOUND_LIMIT:
                await self._deliver(job, "not_found", model.NOT_FOUND_ERROR, None)
            else:
                self._after(_jittered(self.config.min_interval, self._rng), job)
        else:
            # 5xx, 429, a connection error, a malformed answer: back off and try again.
            job.failures += 1
            backoff = pollplan.failure_backoff(
                job.failures, self.config.min_interval, self.config.max_interval
            )
            self._after(_jittered(backoff, self._rng), job)

    async def _ask(self, job: Watch) -> tuple[int, dict[str, Any]]:
        """The HTTP status of one status request and its JSON object (0 and {}: no answer)."""
        assert self._upstream is not None
        uri = f"/convert/{job.kind}/status/{job.token}/"
        date = formatdate(usegmt=True)
        signature = sign(self.config.secret_key, "GET", b"", SIGNED_CONTENT_TYPE, date, uri)
        headers = {
            "Accept": ACCEPT,
            "User-Agent": USER_AGENT,
            "Date": date,
            "Content-Type": SIGNED_CONTENT_TYPE,
            "Authorization": f"Uploadcare {self.config.public_key}:{signature}",
        }
        try:
            async with self._upstream.get(
                self.config.upstream_url + uri, headers=headers, allow_redirects=False
            ) as response:
                body = await response.read()
                code = response.status
        except (aiohttp.ClientError, TimeoutError):
            return 0, {}
        try:
            answer = json.loads(body)
        except ValueError:
            return code, {}
        return code, answer if isinstance(answer, dict) else {}

    # -- delivery --------------------------------------------------------------------------

    async def _deliver(self, job: Watch, outcome: str, error: Any, result: Any) -> None:
        body = json.dumps(
            {
                "type": f"{job.kind}.conversion.{outcome}",
                "timestamp": model.rfc3339(time.time()),
                "data": {
                    "job_id": job.id,
                    "kind": job.kind,
                    "token": job.token,
                    "status": outcome,
                    "error": error,
                    "result": result,
                    "metadata": job.metadata,
                },
            },
            separators=(",", ":"),
        )
        msg_id = model.webhook_id(job.id)
        wait = RETRY_FIRST
        while not await self._attempt(job.callback_url, msg_id, body):
            await asyncio.sleep(_jittered(wait, self._rng))
            wait = min(RETRY_LONGEST, wait * 2)
        del self.jobs[job.id]

    async def _attempt(self, url: str, msg_id: str, body: str) -> bool:
        """One POST, signed afresh; True when the receiver took it (2xx) or is gone (410)."""
        assert self._callbacks is not None
        now = datetime.now(UTC).replace(microsecond=0)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._webhook.sign(msg_id, now, body),
        }
        try:
            async with self._callbacks.post(
                url, data=body.encode(), headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                return 200 <= response.status < 300 or response.status == 410
        except (aiohttp.ClientError, TimeoutError):
            return False


async def make_app() -> web.Application:
    settings = serving.config()
    poller = Poller(
        Config(
            upstream_url=settings["upstream_url"],
            public_key=settings["public_key"],
            secret_key=settings["secret_key"],
            webhook_secret=settings["webhook_secret"],
            initial_delay=float(settings["initial_delay"]),
            min_interval=float(settings["min_interval"]),
            max_interval=float(settings["max_interval"]),
        )
    )
    app = web.Application()
    app.cleanup_ctx.append(poller.sessions)
    app.router.add_post("/v1/jobs", poller.register)
    return app


if __name__ == "__main__":
    serving.run(make_app)
