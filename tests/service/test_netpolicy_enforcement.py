"""The network policy inside a real aiohttp client, against receivers on loopback.

These pin the aiohttp behaviour the policy relies on: the connector calls the
``socket_factory`` it was given with the exact address it connects to, and calls the
resolver for names.  If an aiohttp release drops or stops calling either, a test here
fails.  Every connection goes to 127.0.0.1; other addresses only come back from fake
resolvers and are refused before any dial (the guard in conftest.py checks).
"""

from __future__ import annotations

import base64
import inspect
import ipaddress
import secrets
import socket
from typing import Any

import aiohttp
import pytest

from bridge.delivery import Deliverer, callback_session
from bridge.model import callback_body
from bridge.netpolicy import BLOCKED_MESSAGE, NetworkPolicy, is_policy_block
from tests.harness import receiver
from tests.resolvers import StaticResolver

LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"),)
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
# A callback as the bridge makes it (the receivers hold every body to the event catalog).
BODY = callback_body(
    job_id="job_01jdx2v9q4k8m3n6p7r5s2t0wa",
    project="default",
    kind="video",
    token=1,
    outcome="finished",
    error=None,
    result_json=None,
    metadata_json=None,
    seen_at=1_800_000_000.0,
)


class RecordingPolicy(NetworkPolicy):
    """A policy whose socket factory notes every address it is asked to vet."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vetted: list[str] = []

    def socket_factory(self, addr_info: aiohttp.AddrInfoType) -> socket.socket:
        self.vetted.append(str(addr_info[4][0]))
        return super().socket_factory(addr_info)


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_installed_aiohttp_has_socket_factory() -> None:
    params = inspect.signature(aiohttp.TCPConnector).parameters
    assert "socket_factory" in params, (
        f"aiohttp {aiohttp.__version__} has no TCPConnector(socket_factory=...): the "
        "network policy's connect-time backstop needs aiohttp 3.12 or newer"
    )


async def test_connector_calls_the_socket_factory_with_the_address_it_connects_to(
    dialled: list[tuple[str, int]],
) -> None:
    async with receiver() as rec:
        policy = RecordingPolicy(allow=LOOPBACK, resolver=StaticResolver({}))
        async with (
            callback_session(policy, concurrency=4) as session,
            session.post(rec.url + "/hook", data=b"{}") as resp,
        ):
            assert resp.status == 200
    assert policy.vetted == ["127.0.0.1"], "aiohttp no longer calls socket_factory"
    assert dialled == [("127.0.0.1", port_of(rec.url))]
    assert [c.path for c in rec.calls] == ["/hook"]


async def test_names_go_through_the_policy_resolver_then_the_socket_factory() -> None:
    async with receiver() as rec:
        resolver = StaticResolver({"receiver.test": ["127.0.0.1"]})
        policy = RecordingPolicy(allow=LOOPBACK, resolver=resolver)
        url = f"http://receiver.test:{port_of(rec.url)}/hook"
        async with callback_session(policy, concurrency=4) as session:
            for _ in range(2):  # no DNS cache: each new connection resolves again
                headers = {"Connection": "close"}  # no keep-alive: the next one is new
                async with session.post(url, data=b"{}", headers=headers) as resp:
                    assert resp.status == 200
    assert resolver.calls == ["receiver.test", "receiver.test"]
    assert set(policy.vetted) == {"127.0.0.1"}
    assert len(rec.calls) == 2


async def test_backstop_alone_refuses_when_resolver_and_middleware_are_bypassed(
    dialled: list[tuple[str, int]],
) -> None:
    # A session without the policy's middleware, and a literal host, for which aiohttp
    # never calls the resolver: only the socket factory stands between it and loopback.
    async with receiver() as rec:
        resolver = StaticResolver({})
        policy = RecordingPolicy(resolver=resolver)
        async with aiohttp.ClientSession(connector=policy.connector(), trust_env=False) as s:
            with pytest.raises(aiohttp.ClientError) as info:
                await s.post(rec.url + "/hook", data=b"{}")
    assert is_policy_block(info.value)
    assert BLOCKED_MESSAGE in str(info.value)
    assert resolver.calls == []
    assert policy.vetted == ["127.0.0.1"]
    assert rec.calls == []


async def test_backstop_refuses_a_redirect_followed_without_the_middleware() -> None:
    async with receiver() as rec:
        policy = RecordingPolicy(allow=[ipaddress.IPv4Network("127.0.0.1/32")])
        to = f"http://127.0.0.2:{port_of(rec.url)}/stolen"
        url = rec.plan("/hop", (307, {"Location": to}))
        async with aiohttp.ClientSession(connector=policy.connector(), trust_env=False) as s:
            with pytest.raises(aiohttp.ClientError) as info:
                await s.post(url, data=b"{}")  # follows redirects by default
    assert is_policy_block(info.value)
    assert policy.vetted == ["127.0.0.1", "127.0.0.2"]
    assert [c.path for c in rec.calls] == ["/hop"]


async def test_mixed_public_and_private_answers_open_no_connection(
    dialled: list[tuple[str, int]],
) -> None:
    async with receiver() as rec:
        port = port_of(rec.url)
        names = {
            "split.test": ["93.184.216.34", "127.0.0.1"],
            "split6.test": ["2606:2800:220:1:248:1893:25c8:1946", "::1"],
        }
        policy = RecordingPolicy(resolver=StaticResolver(names))  # loopback not allowed
        async with callback_session(policy, concurrency=4) as session:
            for name in names:
                with pytest.raises(aiohttp.ClientError) as info:
                    await session.post(f"http://{name}:{port}/hook", data=b"{}")
                assert is_policy_block(info.value)
    assert dialled == []
    assert policy.vetted == []
    assert rec.calls == []


@pytest.mark.parametrize(
    "host",
    ["0x7f.1", "2130706433", "[::ffff:127.0.0.1]", "127.1", "0177.0.0.1", "127.0.0.1."],
)
async def test_deliverer_blocks_odd_literal_spellings_without_a_dial(
    host: str, dialled: list[tuple[str, int]]
) -> None:
    async with receiver() as rec:
        policy = RecordingPolicy(resolver=StaticResolver({}))  # loopback not allowed
        async with callback_session(policy, concurrency=4) as session:
            deliverer = Deliverer(session, timeout=5)
            url = f"http://{host}:{port_of(rec.url)}/hook"
            result = await deliverer.attempt(url, BODY, "msg_1", [SECRET])
    assert (result.result, result.error, result.status) == ("blocked", BLOCKED_MESSAGE, None)
    assert dialled == [] and policy.vetted == [] and rec.calls == []


async def test_environment_proxy_is_ignored(
    monkeypatch: pytest.MonkeyPatch, dialled: list[tuple[str, int]]
) -> None:
    async with receiver() as rec, receiver() as proxy:
        for name in ("NO_PROXY", "no_proxy"):
            monkeypatch.delenv(name, raising=False)
        for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy"):
            monkeypatch.setenv(name, proxy.url)
        policy = NetworkPolicy(allow=LOOPBACK, resolver=StaticResolver({}))
        async with callback_session(policy, concurrency=4) as session:
            deliverer = Deliverer(session, timeout=5)
            result = await deliverer.attempt(rec.url + "/hook", BODY, "msg_1", [SECRET])
    assert result.result == "success"
    assert [c.path for c in rec.calls] == ["/hook"]
    assert proxy.calls == []
    assert dialled == [("127.0.0.1", port_of(rec.url))]
