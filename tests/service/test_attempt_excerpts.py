"""What an attempt keeps of the receiver's answer: the first KiB of its body and its
Content-Type (SPEC "Other routes", GET /v1/jobs/{id}/attempts), from real receivers on
loopback: an HTML error page, a big body, a character cut at byte 1024, no body, no
answer, and a body that never ends."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.delivery import MAX_RESPONSE_BYTES, Deliverer, callback_session, safe_content_type
from bridge.model import MAX_EXCERPT, Attempt
from bridge.netpolicy import NetworkPolicy, parse_networks
from tests.conftest import ALPHA
from tests.service.test_scheduler_steps import rig

HTML = (
    "<!doctype html><html><head><title>500 Internal Server Error</title></head><body>"
    "<h1>Internal Server Error</h1><p>KeyError: 'order_id' in hooks.py line 42</p>"
    "</body></html>"
)
CUT = "a" * 1023 + "€" + "b" * 100  # "€" is 3 bytes: bytes 1024-1026, cut after the first


class Streams:
    """How much an endless body got to send before the bridge hung up."""

    sent = 0


async def html(request: web.Request) -> web.Response:
    return web.Response(status=500, text=HTML, content_type="text/html")


async def big(request: web.Request) -> web.Response:
    return web.Response(status=200, text="x" * 3000, content_type="text/plain")


async def cut(request: web.Request) -> web.Response:
    return web.Response(status=400, body=CUT.encode(), content_type="application/json")


async def empty(request: web.Request) -> web.Response:
    return web.Response(status=204)


async def long_type(request: web.Request) -> web.Response:
    return web.Response(status=202, body=b"{}", headers={"Content-Type": "text/" + "x" * 300})


async def endless(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=503, headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = b"data: still going\n" * 32  # 576 bytes
    with contextlib.suppress(ConnectionError):
        while True:  # until the bridge hangs up
            await resp.write(chunk)
            Streams.sent += len(chunk)
            await asyncio.sleep(0)  # yields to the loop, waits on no clock
    return resp


@contextlib.asynccontextmanager
async def receivers() -> AsyncIterator[str]:
    app = web.Application()
    for path, handler in [
        ("/html", html),
        ("/big", big),
        ("/cut", cut),
        ("/empty", empty),
        ("/long-type", long_type),
        ("/endless", endless),
    ]:
        app.router.add_post(path, handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def deliver() -> AsyncIterator[Any]:
    policy = NetworkPolicy(allow=parse_networks("127.0.0.0/8"))
    async with receivers() as base, callback_session(policy, concurrency=4) as session:
        deliverer = Deliverer(session, timeout=30)

        async def attempt(path: str) -> Attempt:
            res = await deliverer.attempt(base + path, b"{}", "msg_x", ["whsec_" + "A" * 44])
            return Attempt(
                1, res.started_at, 0, res.status, res.error, res.excerpt, res.content_type
            )

        yield attempt


async def test_an_html_error_page_is_kept_to_read(deliver: Any) -> None:
    shown = (await deliver("/html")).to_api()
    assert (shown["response_status"], shown["error"]) == (500, "HTTP 500")
    assert shown["response_excerpt"] == HTML
    assert shown["response_content_type"] == "text/html; charset=utf-8"


async def test_only_the_first_kib_is_kept(deliver: Any) -> None:
    attempt = await deliver("/big")
    assert attempt.response_excerpt == b"x" * MAX_EXCERPT
    assert attempt.to_api()["response_excerpt"] == "x" * 1024


async def test_a_character_cut_at_byte_1024_becomes_a_replacement_character(
    deliver: Any,
) -> None:
    shown = (await deliver("/cut")).to_api()
    assert shown["response_excerpt"] == "a" * 1023 + "\ufffd"
    assert len(shown["response_excerpt"].encode()) == 1026  # 1023 + U+FFFD's 3 bytes
    assert shown["response_content_type"] == "application/json"


async def test_an_empty_body_and_no_answer_keep_nothing(deliver: Any) -> None:
    shown = (await deliver("/empty")).to_api()
    assert (shown["response_status"], shown["response_excerpt"]) == (204, None)
    policy = NetworkPolicy(allow=parse_networks("127.0.0.0/8"))
    async with callback_session(policy, concurrency=1) as session:
        res = await Deliverer(session, timeout=5).attempt(
            "http://127.0.0.1:9/nobody", b"{}", "msg_x", ["whsec_" + "A" * 44]
        )
    assert (res.result, res.status, res.excerpt, res.content_type) == (
        "connection_error",
        None,
        None,
        None,
    )


async def test_a_long_content_type_is_cut(deliver: Any) -> None:
    shown = (await deliver("/long-type")).to_api()
    assert shown["response_content_type"] == ("text/" + "x" * 300)[:255]
    assert shown["response_excerpt"] == "{}"


async def test_a_body_that_never_ends_costs_no_more_than_its_first_kib(deliver: Any) -> None:
    """Decided: an endless body is read to MAX_RESPONSE_BYTES and no further; the attempt
    ends at once with the status and the first KiB (a body that trickles without end is a
    timeout instead, with the excerpt of what came: tests/e2e/test_trickle.py)."""
    Streams.sent = 0
    attempt = await deliver("/endless")
    assert (attempt.response_status, attempt.error) == (503, "HTTP 503")
    assert attempt.response_excerpt == (b"data: still going\n" * 57)[:MAX_EXCERPT]
    assert attempt.response_content_type == "text/event-stream"
    # The receiver got to write little more than what was read (socket buffers aside).
    assert Streams.sent < MAX_RESPONSE_BYTES + 16 * 1024 * 1024


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (None, None),
        ("", None),
        ("text/html", "text/html"),
        ("text/html;\x00 charset=\x1butf-8\x7f\x85", "text/html; charset=utf-8"),
        ("text/plain\u202e\u200b\ufeff", "text/plain"),
        ("\udcff\x01", None),
        ("a" * 1000, "a" * 255),
    ],
)
def test_a_content_type_is_made_safe_to_show(given: str | None, kept: str | None) -> None:
    assert safe_content_type(given) == kept


async def test_the_attempts_route_shows_the_excerpt(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        app = create_app(r.settings, clock=r.clock, store=r.store, with_scheduler=False)
        async with TestClient(TestServer(app, host="127.0.0.1")) as api:
            t0 = r.clock()
            r.rec.plan("/p", 500)
            j = await r.register(r.fake.add_job("video", outcome="finished", duration=0.5), "/p")
            for quarter in range(4, 8):
                await r.at(quarter / 4, t0)
            resp = await api.get(
                f"/v1/jobs/{j.id}/attempts", headers={"Authorization": f"Bearer {ALPHA}"}
            )
            (item,) = json.loads(await resp.read())["items"]
            assert (item["response_status"], item["response_excerpt"]) == (500, "ok")
            assert item["response_content_type"] == "text/plain; charset=utf-8"
