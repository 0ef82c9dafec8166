"""A receiver whose answer trickles and never ends: the attempt ends at the callback
timeout (wall clock, hence this tier) as a timeout, keeping the part of the body that came."""

from __future__ import annotations

import asyncio
import contextlib

from aiohttp import web

from bridge.delivery import Deliverer, callback_session
from bridge.netpolicy import NetworkPolicy, parse_networks


async def trickle(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(status=500, headers={"Content-Type": "text/plain"})
    await resp.prepare(request)
    with contextlib.suppress(ConnectionError):
        await resp.write("partial é".encode())
        await asyncio.sleep(3600)  # until the bridge gives up
    return resp


async def test_a_trickling_answer_is_a_timeout_with_what_came() -> None:
    app = web.Application()
    app.router.add_post("/trickle", trickle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/trickle"
    policy = NetworkPolicy(allow=parse_networks("127.0.0.0/8"))
    try:
        async with callback_session(policy, concurrency=1) as session:
            res = await Deliverer(session, timeout=0.5).attempt(
                url, b"{}", "msg_x", ["whsec_" + "A" * 44]
            )
    finally:
        await runner.cleanup()
    assert (res.result, res.status, res.error) == ("timeout", None, "timed out after 0.5s")
    assert res.excerpt == "partial é".encode()
    assert res.content_type == "text/plain"
