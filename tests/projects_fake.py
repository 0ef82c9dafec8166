"""Several Uploadcare projects behind one URL, for tests: one ``FakeUpstream`` per key pair,
each with its own token space (and throttle, and canned answers), chosen by the public key
in the request's ``Authorization`` header.

A stand-in written in tests/ until ``bridge fake-upstream`` serves several projects itself
(``--keys``); a request with an unknown public key goes to the first project's fake, which
refuses it (401) as Uploadcare does.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from bridge.fake_upstream import FakeConfig, FakeUpstream
from bridge.model import KINDS


def public_key_of(authorization: str) -> str:
    """``Uploadcare <public>:<signature>`` or ``Uploadcare.Simple <public>:<secret>``."""
    _, _, credentials = authorization.partition(" ")
    return credentials.strip().partition(":")[0]


@dataclass
class Projects:
    url: str
    fakes: dict[str, FakeUpstream]  # public key -> that project's fake

    def __getitem__(self, public_key: str) -> FakeUpstream:
        return self.fakes[public_key]


@contextlib.asynccontextmanager
async def projects_upstream(keys: Mapping[str, str], **config: Any) -> AsyncIterator[Projects]:
    """Serves one fake per ``public key -> secret key`` pair on one loopback URL; ``config``
    goes to every project's ``FakeConfig``."""
    seed = config.pop("seed", None)
    fakes = {
        public: FakeUpstream(
            FakeConfig(
                public_key=public,
                secret_key=secret,
                seed=None if seed is None else seed + n,  # each its own uuids
                **config,
            )
        )
        for n, (public, secret) in enumerate(keys.items())
    }
    first = next(iter(fakes.values()))

    def pick(request: web.Request) -> FakeUpstream:
        return fakes.get(public_key_of(request.headers.get("Authorization", "")), first)

    async def status(request: web.Request) -> web.StreamResponse:
        return await pick(request).handle_status(request)

    async def convert(request: web.Request) -> web.StreamResponse:
        return await pick(request).handle_convert(request)

    app = web.Application()
    kinds = "|".join(KINDS)
    app.router.add_post(f"/convert/{{kind:{kinds}}}/", convert)
    app.router.add_get(f"/convert/{{kind:{kinds}}}/status/{{token}}/", status)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield Projects(f"http://127.0.0.1:{runner.addresses[0][1]}", fakes)
    finally:
        await runner.cleanup()
