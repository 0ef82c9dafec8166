"""The bench's callback receiver: answers 204 at once and notes when each job's callback came.

Every attempt is counted; the first arrival per token is kept (both systems put the token
in ``data.token``, and each token is registered once). Verifying a signature costs as
much as the rest of the handler, so only a sample is checked (the first callback and
every ``verify_every``-th after it): enough to catch wrong signing, cheap enough that the
receiver does not hold back the system it measures. A callback that fails verification
is still answered 204 (a 4xx would only bring retries) and counted, and the bench fails.

Routes: ``POST /hook``; ``GET /_bench/count`` ``{"delivered", "attempts"}``;
``GET /_bench/report`` with arrivals per token and the counts.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Final

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from bench import serving

HOOK_PATH: Final = "/hook"
# Keep a few failure messages for the report, not one per callback.
FAILURES_KEPT: Final = 5


class Receiver:
    def __init__(self, secret: str, verify_every: int) -> None:
        self.webhook = Webhook(secret)
        self.verify_every = max(1, verify_every)
        self.arrivals: dict[int, float] = {}
        self.outcomes: Counter[str] = Counter()
        self.attempts = 0
        self.duplicates = 0
        self.malformed = 0
        self.verified = 0
        self.failed_verification = 0
        self.failures: list[str] = []

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        at = time.time()
        self.attempts += 1
        if (self.attempts - 1) % self.verify_every == 0:
            self._verify(body, request)
        try:
            data = json.loads(body)["data"]
            token, status = int(data["token"]), str(data["status"])
        except (ValueError, KeyError, TypeError):
            self.malformed += 1
            return web.Response(status=204)
        if token in self.arrivals:
            self.duplicates += 1
        else:
            self.arrivals[token] = at
            self.outcomes[status] += 1
        return web.Response(status=204)

    def _verify(self, body: bytes, request: web.Request) -> None:
        try:
            self.webhook.verify(body, dict(request.headers))
        except (WebhookVerificationError, ValueError) as exc:
            self.failed_verification += 1
            if len(self.failures) < FAILURES_KEPT:
                self.failures.append(f"{request.headers.get('webhook-id', '?')}: {exc}")
            return
        self.verified += 1

    async def count(self, request: web.Request) -> web.Response:
        return web.json_response({"delivered": len(self.arrivals), "attempts": self.attempts})

    async def report(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "arrivals": self.arrivals,
                "attempts": self.attempts,
                "duplicates": self.duplicates,
                "malformed": self.malformed,
                "outcomes": dict(self.outcomes),
                "verified": self.verified,
                "failed_verification": self.failed_verification,
                "failures": self.failures,
            }
        )


async def make_app() -> web.Application:
    settings = serving.config()
    receiver = Receiver(settings["webhook_secret"], int(settings.get("verify_every", 10)))
    app = web.Application()
    app.router.add_post(HOOK_PATH, receiver.hook)
    app.router.add_get("/_bench/count", receiver.count)
    app.router.add_get("/_bench/report", receiver.report)
    return app


if __name__ == "__main__":
    serving.run(make_app)
