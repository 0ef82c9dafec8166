"""The delivery-time pieces of the network policy, one at a time, without any socket I/O.

PolicyResolver is fed by a fake resolver that *returns* addresses (public, private,
unreadable) and never looks anything up; nothing here connects anywhere.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from bridge.netpolicy import (
    BLOCKED_MESSAGE,
    NetworkPolicy,
    PolicyBlockedError,
    PolicyResolver,
    is_policy_block,
)
from tests.resolvers import resolve_results

LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"),)
PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


class Answers(AbstractResolver):
    """Answers every name with the same addresses; records what it was asked."""

    def __init__(self, *addrs: str, error: BaseException | None = None) -> None:
        self.addrs = addrs
        self.error = error
        self.calls: list[tuple[str, int, int]] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.calls.append((host, port, family))
        if self.error is not None:
            raise self.error
        return resolve_results(host, port, self.addrs)

    async def close(self) -> None:
        pass


def resolver_for(*addrs: str, allow: Sequence[Any] = ()) -> tuple[PolicyResolver, Answers]:
    fake = Answers(*addrs)
    return NetworkPolicy(allow=allow, resolver=fake).resolver(), fake


# ---------------------------------------------------------------------------
# PolicyResolver


@pytest.mark.parametrize(
    "answers",
    [
        (PUBLIC_V4, "10.0.0.1"),
        ("10.0.0.1", PUBLIC_V4),
        (PUBLIC_V4, PUBLIC_V6, "192.168.1.1"),
        (PUBLIC_V6, "fd12:3456::1"),
        (PUBLIC_V4, "::ffff:127.0.0.1"),
        (PUBLIC_V4, "169.254.169.254"),
        (PUBLIC_V4, "fe80::1%eth0"),
        (PUBLIC_V4, "not-an-address"),
        (PUBLIC_V4, "0x7f.1"),
    ],
)
async def test_resolver_refuses_mixed_public_and_private_answers(answers: tuple[str, ...]) -> None:
    resolver, fake = resolver_for(*answers)
    with pytest.raises(PolicyBlockedError) as info:
        await resolver.resolve("mixed.test", 443, socket.AF_UNSPEC)
    assert is_policy_block(info.value)
    assert info.value.strerror == BLOCKED_MESSAGE
    assert fake.calls == [("mixed.test", 443, socket.AF_UNSPEC)]


async def test_resolver_refuses_a_name_that_resolves_to_nothing() -> None:
    resolver, _ = resolver_for()
    with pytest.raises(PolicyBlockedError):
        await resolver.resolve("empty.test", 80, socket.AF_UNSPEC)


async def test_resolver_passes_public_answers_through() -> None:
    resolver, fake = resolver_for(PUBLIC_V4, PUBLIC_V6)
    got = await resolver.resolve("public.test", 8443, socket.AF_UNSPEC)
    assert [r["host"] for r in got] == [PUBLIC_V4, PUBLIC_V6]
    assert got == await fake.resolve("public.test", 8443, socket.AF_UNSPEC)


async def test_resolver_answers_are_spelled_as_the_addresses_judged() -> None:
    # An answer the socket layer would read with inet_aton is handed on in plain form,
    # so what aiohttp connects to is exactly what was vetted.
    link_local = (ipaddress.IPv6Network("fe80::/10"),)
    resolver, _ = resolver_for(
        "0x5d.0xb8.0xd8.0x22", "1572395042", "fe80::1%eth0", allow=link_local
    )
    got = await resolver.resolve("odd.test", 80, socket.AF_UNSPEC)
    assert [r["host"] for r in got] == [PUBLIC_V4, PUBLIC_V4, "fe80::1%eth0"]


async def test_resolver_allow_list_exempts_only_its_networks() -> None:
    resolver, _ = resolver_for("127.0.0.1", "127.9.9.9", allow=LOOPBACK)
    assert len(await resolver.resolve("lo.test", 80, socket.AF_UNSPEC)) == 2
    resolver, _ = resolver_for("127.0.0.1", "::1", allow=LOOPBACK)
    with pytest.raises(PolicyBlockedError):
        await resolver.resolve("lo.test", 80, socket.AF_UNSPEC)


async def test_resolver_failures_are_not_policy_blocks() -> None:
    # A name that does not resolve at delivery is an ordinary connection error.
    fake = Answers(error=socket.gaierror(socket.EAI_NONAME, "Name or service not known"))
    resolver = NetworkPolicy(resolver=fake).resolver()
    with pytest.raises(socket.gaierror) as info:
        await resolver.resolve("nxdomain.test", 80, socket.AF_UNSPEC)
    assert not is_policy_block(info.value)


@pytest.mark.parametrize(
    "host", ["0x7f.1", "2130706433", "127.1", "0177.0.0.1", "127.0.0.1", "::ffff:127.0.0.1"]
)
async def test_resolver_judges_literals_without_dns(host: str) -> None:
    resolver, fake = resolver_for(PUBLIC_V4)
    with pytest.raises(PolicyBlockedError):
        await resolver.resolve(host, 80, socket.AF_UNSPEC)
    allowed, fake_allowed = resolver_for(PUBLIC_V4, allow=LOOPBACK)
    got = await allowed.resolve(host, 80, socket.AF_UNSPEC)
    assert [r["host"] for r in got] in (["127.0.0.1"], ["::ffff:7f00:1"])
    assert fake.calls == fake_allowed.calls == []


async def test_resolver_literal_of_another_family_does_not_resolve() -> None:
    resolver, _ = resolver_for()
    with pytest.raises(socket.gaierror):
        await resolver.resolve(PUBLIC_V6, 80, socket.AF_INET)
    got = await resolver.resolve(PUBLIC_V6, 80, socket.AF_INET6)
    assert got[0]["family"] == socket.AF_INET6


async def test_default_inner_resolver_is_threaded() -> None:
    assert isinstance(NetworkPolicy().resolver().inner, aiohttp.ThreadedResolver)


# ---------------------------------------------------------------------------
# The literal check made before each request


ODD_LOOPBACK = [
    "http://0x7f.1/",
    "http://2130706433/",
    "http://[::ffff:127.0.0.1]/",
    "http://127.1:8080/",
    "http://0177.0.0.1/",
    "http://0x7f000001/",
    "http://127.0.0.1./",
    "http://%31%32%37.0.0.1/",
    "http://\uff11\uff12\uff17.0.0.1/",
    "http://[::127.0.0.1]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[::ffff:0:127.0.0.1]/",  # SIIT IPv4-translated
    "http://[64:ff9b:1::7f00:1]/",  # local-use NAT64
    "http://[2002:7f00:1::]/",
    "http://user:pw@0x7f.1/hook",
]


@pytest.mark.parametrize("url", ODD_LOOPBACK)
def test_literal_check_refuses_odd_spellings(url: str) -> None:
    with pytest.raises(PolicyBlockedError) as info:
        NetworkPolicy().check_target(URL(url))
    assert is_policy_block(info.value)
    assert "127" not in str(info.value)  # the address is for logs (detail) only
    NetworkPolicy(allow=LOOPBACK).check_target(URL(url))  # the allow list still applies


@pytest.mark.parametrize(
    "url",
    [
        f"http://{PUBLIC_V4}/",
        "http://0x5d.0xb8.0xd8.0x22/",
        f"https://[{PUBLIC_V6}]:8443/",
        "http://[::ffff:0:8.8.8.8]/",
        "http://[64:ff9b:1::8.8.8.8]/",
        "http://[101::1]/",
        "http://public.test/",  # names are the resolver's to judge
        "http://localhost/",
    ],
)
def test_literal_check_passes_public_literals_and_names(url: str) -> None:
    NetworkPolicy().check_target(URL(url))


@pytest.mark.parametrize(
    "url", ["http://[100::1]/", "http://[64:ff9b:1::a00:1]/", "http://[::ffff:0:a00:1]/"]
)
def test_literal_check_refuses_discard_only_and_translated_private(url: str) -> None:
    with pytest.raises(PolicyBlockedError):
        NetworkPolicy(allow=LOOPBACK).check_target(URL(url))


class Handler:
    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, req: Any) -> Any:
        self.calls += 1
        return "response"


class Request:
    """The two things the middleware reads from an aiohttp.ClientRequest."""

    def __init__(self, url: str, proxy: str | None = None) -> None:
        self.url = URL(url)
        self.proxy = None if proxy is None else URL(proxy)


async def test_middleware_refuses_before_handing_on() -> None:
    policy = NetworkPolicy(allow=LOOPBACK)
    handler = Handler()
    for req in (
        Request("http://0x0a.1/"),  # 10.0.0.1
        Request("http://[::ffff:169.254.169.254]/"),
        Request(f"http://{PUBLIC_V4}/", proxy="http://127.0.0.1:3128"),
    ):
        with pytest.raises(PolicyBlockedError):
            await policy.middleware(req, handler)  # type: ignore[arg-type]
    assert handler.calls == 0
    assert await policy.middleware(Request("http://0x7f.1/"), handler) == "response"  # type: ignore[arg-type]
    assert await policy.middleware(Request("http://a.test/"), handler) == "response"  # type: ignore[arg-type]
    assert handler.calls == 2


# ---------------------------------------------------------------------------
# The connect-time backstop


def addr_info(host: str, port: int = 80) -> Any:
    if ":" in host:
        return (socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port, 0, 0))
    return (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))


@pytest.mark.parametrize(
    "info",
    [
        addr_info("127.0.0.1"),
        addr_info("10.1.2.3"),
        addr_info("2130706433"),  # what asyncio would pass to getaddrinfo: 127.0.0.1
        addr_info("0x7f.1"),
        addr_info("::1"),
        addr_info("::ffff:10.0.0.1"),
        addr_info("fe80::1%eth0"),
        addr_info("evil.test"),  # a name at connect time was never vetted
        (),
        None,
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", None),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (2130706433, 80)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ()),
    ],
)
def test_backstop_refuses_and_fails_closed(info: Any) -> None:
    with pytest.raises(PolicyBlockedError) as caught:
        NetworkPolicy().socket_factory(info)
    assert is_policy_block(caught.value)


@pytest.mark.parametrize("host", [PUBLIC_V4, PUBLIC_V6])
def test_backstop_makes_the_socket_for_an_allowed_address(host: str) -> None:
    info = addr_info(host)
    sock = NetworkPolicy().socket_factory(info)
    try:  # made, never connected
        assert (sock.family, sock.type, sock.proto) == info[:3]
    finally:
        sock.close()


async def test_connector_takes_no_resolver_or_socket_factory() -> None:
    policy = NetworkPolicy()
    with pytest.raises(TypeError, match="socket_factory"):
        policy.connector(socket_factory=lambda info: socket.socket())
    with pytest.raises(TypeError, match="resolver"):
        policy.connector(resolver=Answers())
    connector = policy.connector(limit=3)
    try:
        assert connector.use_dns_cache is False
        assert connector.policy is policy
        assert isinstance(connector.resolver, PolicyResolver)
    finally:
        await connector.close()
