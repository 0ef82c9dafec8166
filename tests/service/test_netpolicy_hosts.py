"""BRIDGE_CALLBACK_HOSTS through the API: a refused host is a 422 that names nothing sent,
decided before any DNS, and a match never gets past the network policy."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from bridge.app import create_app
from bridge.callback_hosts import HOSTS_MESSAGE
from bridge.netpolicy import POLICY_MESSAGE, NetworkPolicy
from bridge.settings import Settings
from tests.conftest import ALPHA, BETA
from tests.resolvers import StaticResolver

NAMES = {
    "hooks.alpha.example": ["8.8.8.8"],
    "x.hooks.alpha.example": ["8.8.4.4"],
    "inside.alpha.example": ["10.1.2.3"],
    "hooks.beta.example": ["1.1.1.1"],
}
TOKENS = itertools.count(1000)  # a fresh token each: ownership is not what is tested
HOSTS = "alpha:*.alpha.example, alpha:10.0.0.0/8, beta:hooks.beta.example, 127.0.0.0/8"


@contextlib.asynccontextmanager
async def api(
    make_settings: Callable[..., Settings], **env: str | None
) -> AsyncIterator[tuple[TestClient[Any, Any], StaticResolver]]:
    settings = make_settings(**env)
    resolver = StaticResolver(NAMES)
    policy = NetworkPolicy(allow=settings.callback_allow_networks, resolver=resolver)
    app = create_app(settings, policy=policy, with_scheduler=False)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, resolver


async def post(client: TestClient[Any, Any], url: str, secret: str = ALPHA) -> tuple[int, Any]:
    resp = await client.post(
        "/v1/jobs",
        json={"token": next(TOKENS), "callback_url": url},
        headers={"Authorization": f"Bearer {secret}"},
    )
    return resp.status, json.loads(await resp.text())


async def test_a_tenant_registers_only_hosts_its_entries_match(
    make_settings: Callable[..., Settings],
) -> None:
    async with api(make_settings, BRIDGE_CALLBACK_HOSTS=HOSTS) as (client, resolver):
        for url in ("https://hooks.alpha.example/h", "https://x.hooks.alpha.example:8443/h"):
            status, body = await post(client, url)
            assert status == 201, body
            await client.delete(
                f"/v1/jobs/{body['id']}", headers={"Authorization": f"Bearer {ALPHA}"}
            )
        status, body = await post(client, "http://127.0.0.1:9/h")  # the untenanted entry
        assert status in (200, 201), body

        resolver.calls.clear()
        for url in (
            "https://hooks.beta.example/h",  # beta's host
            "https://alpha.example/h",  # the domain itself
            "https://8.8.8.8/h",
            "https://evil.test/alpha.example",
        ):
            status, body = await post(client, url)
            assert status == 422, (url, body)
            assert body["errors"] == [{"field": "callback_url", "message": HOSTS_MESSAGE}]
            text = json.dumps(body)
            assert "example" not in text.replace(HOSTS_MESSAGE, "") and "8.8.8.8" not in text
        assert resolver.calls == []  # refused before any DNS lookup

        status, body = await post(client, "https://hooks.beta.example/h", secret=BETA)
        assert status == 201, body
        status, body = await post(client, "https://hooks.alpha.example/h", secret=BETA)
        assert status == 422 and body["errors"][0]["message"] == HOSTS_MESSAGE


async def test_a_match_never_exempts_an_address_from_the_network_policy(
    make_settings: Callable[..., Settings],
) -> None:
    async with api(make_settings, BRIDGE_CALLBACK_HOSTS=HOSTS) as (client, _):
        for url in (
            "http://10.1.2.3/h",
            "http://inside.alpha.example/h",
            "http://[::ffff:a01:203]/",
        ):
            status, body = await post(client, url)
            assert status == 422, (url, body)
            assert body["errors"] == [{"field": "callback_url", "message": POLICY_MESSAGE}]


async def test_no_entries_for_a_tenant_leaves_it_unrestricted(
    make_settings: Callable[..., Settings],
) -> None:
    async with api(make_settings, BRIDGE_CALLBACK_HOSTS="alpha:*.alpha.example") as (client, _):
        status, body = await post(client, "https://hooks.beta.example/h", secret=BETA)
        assert status == 201, body
    async with api(make_settings, BRIDGE_CALLBACK_HOSTS=None) as (client, _):
        status, body = await post(client, "https://hooks.beta.example/h")
        assert status == 201, body


async def test_the_test_harness_keeps_callbacks_on_loopback(
    client: TestClient[Any, Any], tmp_path: Path
) -> None:
    """base_env's BRIDGE_CALLBACK_HOSTS: a test bridge may only call back to loopback."""
    headers = {"Authorization": f"Bearer {ALPHA}"}
    for n, url in enumerate(("http://127.0.0.1:9/h", "http://[::1]:9/h", "http://localhost:9/h")):
        resp = await client.post(
            "/v1/jobs", json={"token": 100 + n, "callback_url": url}, headers=headers
        )
        assert resp.status in (201, 422), await resp.text()
        if resp.status == 422:  # localhost may resolve off loopback nowhere; never the host list
            assert HOSTS_MESSAGE not in await resp.text()
    resp = await client.post(
        "/v1/jobs", json={"token": 200, "callback_url": "https://8.8.8.8/h"}, headers=headers
    )
    assert resp.status == 422
    assert (await resp.json())["errors"][0]["message"] == HOSTS_MESSAGE


def test_the_demo_keeps_callbacks_on_loopback(tmp_path: Path) -> None:
    from bridge import demo
    from bridge import settings as settings_mod

    settings = settings_mod.load(demo.bridge_env(tmp_path, "http://127.0.0.1:1", "k" * 32))
    assert settings.callback_hosts.allows(demo.TENANT, "http://127.0.0.1:8/hook")
    assert not settings.callback_hosts.allows(demo.TENANT, "https://8.8.8.8/hook")
    assert not settings.callback_hosts.allows(demo.TENANT, "https://example.com/hook")
