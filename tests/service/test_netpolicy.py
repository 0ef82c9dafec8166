"""Tests for bridge.netpolicy (SSRF protection for callback URLs).

Safety rule for this file: the only real connections go to 127.0.0.1.  Every "public"
address (8.8.8.8, 1.1.1.1, ...) is only ever *judged*; names resolve through injected
resolvers, never real DNS, and an autouse guard fails any test that tries to open a
socket to a non-loopback address.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any

import aiohappyeyeballs
import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import ResolveResult
from aiohttp.client_reqrep import ConnectionKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.delivery import callback_session
from bridge.netpolicy import (
    BLOCKED_MESSAGE,
    POLICY_MESSAGE,
    REFUSED_IPV4_NETWORKS,
    REFUSED_IPV6_NETWORKS,
    NetworkPolicy,
    PolicyBlockedError,
    PolicyResolver,
    PolicyViolation,
    embedded_ipv4,
    is_policy_block,
    is_refused,
    parse_ip_literal,
    parse_networks,
)
from tests.resolvers import StaticResolver

# The spec's list, spelled independently of the module so the tests act as an oracle.
SPEC_REFUSED_V4 = [
    ipaddress.IPv4Network(n)
    for n in [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.168.0.0/16",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
        "168.63.129.16/32",
    ]
]
SPEC_REFUSED_V6 = [
    ipaddress.IPv6Network(n)
    for n in [
        "::/128",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
        "2001::/32",
        "2001:db8::/32",
        "100::/64",
    ]
]
EMBEDDING_V6 = [
    ipaddress.IPv6Network(n)
    for n in [
        "::/96",
        "::ffff:0:0/96",
        "::ffff:0:0:0/96",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2002::/16",
    ]
]


def spec_refused_v4(number: int) -> bool:
    addr = ipaddress.IPv4Address(number)
    return any(addr in net for net in SPEC_REFUSED_V4)


# ---------------------------------------------------------------------------
# Fakes and fixtures


NAMES: dict[str, list[str]] = {
    "localhost": ["127.0.0.1", "::1"],
    "intranet.test": ["10.1.2.3"],
    "metadata.test": ["169.254.169.254"],
    "azure-wire.test": ["168.63.129.16"],
    "ula.test": ["fd12:3456::1"],
    "mixed.test": ["8.8.8.8", "192.168.1.1"],
    "public.test": ["8.8.8.8", "2606:4700:4700::1111"],
    "mapped.test": ["::ffff:8.8.8.8"],
    "mapped-internal.test": ["::ffff:10.0.0.1"],
    "garbage.test": ["not-an-address"],
}


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail the test if anything tries to open a socket to a non-loopback address."""
    attempted: list[str] = []
    real = aiohappyeyeballs.start_connection

    async def guarded(addr_infos: Sequence[Any], **kwargs: Any) -> socket.socket:
        for info in addr_infos:
            host = str(info[4][0])
            attempted.append(host)
            assert ipaddress.ip_address(host).is_loopback, f"test tried to connect to {host}"
        return await real(addr_infos, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", guarded)
    return attempted


class Receiver:
    def __init__(self) -> None:
        self.seen: list[str] = []
        self.port = 0

    def url(self, path: str = "/hook", host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()

    async def hook(request: web.Request) -> web.Response:
        rec.seen.append(request.path)
        return web.json_response({"ok": True})

    async def redirect(request: web.Request) -> web.Response:
        rec.seen.append(request.path)
        raise web.HTTPTemporaryRedirect(f"http://127.0.0.2:{rec.port}/hook")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/redirect", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.port = runner.addresses[0][1]
    try:
        yield rec
    finally:
        await runner.cleanup()


async def post(policy: NetworkPolicy, url: str, **kwargs: Any) -> int:
    # The delivery session: the policy's connector and middleware, no environment proxies.
    async with (
        callback_session(policy, concurrency=10) as session,
        session.post(url, json={"event": "test"}, **kwargs) as resp,
    ):
        return resp.status


LOOPBACK = (ipaddress.IPv4Network("127.0.0.0/8"),)


# ---------------------------------------------------------------------------
# Registration check: table-driven


def refused(url: str, *, dns: bool = False) -> Any:
    return pytest.param(url, False, dns, id=f"refused:{url}")


def allowed(url: str, *, dns: bool = False) -> Any:
    return pytest.param(url, True, dns, id=f"allowed:{url}")


CASES = [
    # every refused IPv4 range, both ends where cheap
    refused("http://0.0.0.0/"),
    refused("http://0.1.2.3/"),
    refused("http://10.0.0.1/"),
    refused("http://10.255.255.255:8080/"),
    refused("http://100.64.0.1/"),
    refused("http://100.127.255.254/"),
    refused("http://127.0.0.1/"),
    refused("http://127.255.255.254/"),
    refused("http://169.254.169.254/latest/meta-data/"),
    refused("http://172.16.0.1/"),
    refused("http://172.31.255.255/"),
    refused("http://192.0.0.8/"),
    refused("http://192.0.2.1/"),
    refused("http://192.168.0.1/"),
    refused("http://198.18.0.1/"),
    refused("http://198.19.255.255/"),
    refused("http://198.51.100.7/"),
    refused("http://203.0.113.9/"),
    refused("http://224.0.0.1/"),
    refused("http://239.255.255.250/"),
    refused("http://240.0.0.1/"),
    refused("http://255.255.255.255/"),
    refused("https://168.63.129.16/"),
    # every refused IPv6 range
    refused("http://[::]/"),
    refused("http://[::1]/"),
    refused("http://[fc00::1]/"),
    refused("http://[fd12:3456::1]/"),
    refused("http://[fe80::1]/"),
    refused("http://[fe80::1%25eth0]/"),
    refused("http://[febf:ffff::1]/"),
    refused("http://[fec0::1]/"),
    refused("http://[ff02::1]/"),
    refused("http://[2001::1]/"),
    refused("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/"),
    refused("http://[2001:db8::1]/"),
    refused("http://[100::]/"),  # discard-only
    refused("http://[100::ffff:ffff:ffff:ffff]/"),
    # IPv4 embedded in IPv6
    refused("http://[::ffff:127.0.0.1]/"),
    refused("http://[::ffff:7f00:1]/"),
    refused("http://[::ffff:10.0.0.1]/"),
    refused("http://[::ffff:169.254.169.254]/"),
    refused("http://[::127.0.0.1]/"),
    refused("http://[::10.0.0.1]/"),
    refused("http://[64:ff9b::a00:1]/"),
    refused("http://[64:ff9b::127.0.0.1]/"),
    refused("http://[::ffff:0:127.0.0.1]/"),  # SIIT IPv4-translated
    refused("http://[::ffff:0:a00:1]/"),
    refused("http://[::ffff:0:169.254.169.254]/"),
    refused("http://[64:ff9b:1::a00:1]/"),  # local-use NAT64
    refused("http://[64:ff9b:1::127.0.0.1]/"),
    refused("http://[64:ff9b:1:ffff:1:2:c0a8:101]/"),
    refused("http://[2002:7f00:0001::]/"),
    refused("http://[2002:a9fe:a9fe::1]/"),
    refused("http://[2002:c0a8:0101:1::1]/"),
    # other IPv4 spellings
    refused("http://0x7f.1/"),
    refused("http://2130706433/"),
    refused("http://0177.0.0.1/"),
    refused("http://127.1/"),
    refused("http://0x7f000001/"),
    refused("http://127.0.0.1./"),
    refused("http://0X7F.0.0.1/"),
    refused("http://017700000001/"),
    refused("http://10.1/"),
    refused("http://0xa9.0xfe.0xa9.0xfe/"),
    refused("http://0251.0376.0251.0376/"),
    refused("http://3232235521/"),
    refused("http://0/"),
    refused("http://%31%32%37.0.0.1/"),
    refused("http://\uff11\uff12\uff17.0.0.1/"),  # full-width digits
    # userinfo tricks: the host is what follows the last '@'
    refused("http://good.example@127.0.0.1/"),
    refused("http://user:pass@[::1]:8080/"),
    refused("http://8.8.8.8@10.0.0.1/"),
    # names resolving inside (injected resolver), and a name that does not resolve
    refused("http://localhost/", dns=True),
    refused("http://LOCALHOST./", dns=True),
    refused("http://localhost:8080/x", dns=True),
    refused("http://intranet.test/", dns=True),
    refused("http://metadata.test/", dns=True),
    refused("http://azure-wire.test/", dns=True),
    refused("http://ula.test/", dns=True),
    refused("http://mixed.test/", dns=True),
    refused("http://mapped-internal.test/", dns=True),
    refused("http://garbage.test/", dns=True),
    refused("http://does-not-resolve.test/", dns=True),
    # not an http(s) URL at all
    refused("ftp://8.8.8.8/"),
    refused("file:///etc/passwd"),
    refused("http:///no-host"),
    refused("not a url"),
    refused("http://[::1/"),
    # allowed public addresses, spellings and boundaries (judged only, never contacted)
    allowed("http://8.8.8.8/"),
    allowed("https://1.1.1.1/hook"),
    allowed("http://[2606:4700:4700::1111]/"),
    allowed("http://[::ffff:8.8.8.8]/"),
    allowed("http://[::8.8.8.8]/"),
    allowed("http://[64:ff9b::8.8.8.8]/"),
    allowed("http://[::ffff:0:8.8.8.8]/"),
    allowed("http://[64:ff9b:1::8.8.8.8]/"),
    allowed("http://[64:ff9b:1:abcd::808:808]/"),
    allowed("http://[101::1]/"),  # just past 100::/64
    allowed("http://[100:0:0:1::1]/"),
    allowed("http://[2002:0808:0808::1]/"),
    allowed("http://[2001:4860:4860::8888]/"),  # 2001:4860::/32 is not Teredo
    allowed("http://0x08080808/"),
    allowed("http://134744072/"),
    allowed("http://100.63.255.255/"),
    allowed("http://100.128.0.0/"),
    allowed("http://172.15.255.255/"),
    allowed("http://172.32.0.0/"),
    allowed("http://198.17.255.255/"),
    allowed("http://198.20.0.0/"),
    allowed("http://168.63.129.17/"),
    allowed("http://223.255.255.255/"),
    allowed("http://127.0.0.1:80@8.8.8.8/"),
    allowed("http://public.test/", dns=True),
    allowed("https://mapped.test/", dns=True),
]


@pytest.mark.parametrize(("url", "ok", "dns"), CASES)
async def test_check_url_table(url: str, ok: bool, dns: bool) -> None:
    resolver = StaticResolver(NAMES)
    policy = NetworkPolicy(resolver=resolver)
    if ok:
        await policy.check_url(url)
    else:
        with pytest.raises(PolicyViolation) as info:
            await policy.check_url(url)
        message = str(info.value)
        assert message == POLICY_MESSAGE
        # Nothing in the message or repr may reveal an address or what DNS said.
        assert not re.search(r"\d|::", message)
        assert repr(info.value) == f"PolicyViolation({POLICY_MESSAGE!r})"
    # Literal hosts are judged without DNS; names always go through the resolver.
    assert bool(resolver.calls) == dns


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 40


async def test_check_url_resolves_with_url_port() -> None:
    seen: list[int] = []

    class PortRecorder(StaticResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            seen.append(port)
            return await super().resolve(host, port, family)

    policy = NetworkPolicy(resolver=PortRecorder(NAMES))
    await policy.check_url("http://public.test/")
    await policy.check_url("https://public.test/")
    await policy.check_url("http://public.test:8443/")
    assert seen == [80, 443, 8443]


async def test_check_url_resolve_timeout_refuses() -> None:
    class Hanging(StaticResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            await asyncio.sleep(10)
            raise AssertionError("unreachable")

    policy = NetworkPolicy(resolver=Hanging({}), resolve_timeout=0.01)
    with pytest.raises(PolicyViolation):
        await policy.check_url("http://slow.test/")


async def test_check_url_empty_answer_refuses() -> None:
    class Empty(StaticResolver):
        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            return []

    with pytest.raises(PolicyViolation):
        await NetworkPolicy(resolver=Empty({})).check_url("http://empty.test/")


def test_policy_violation_detail_is_for_logs_only() -> None:
    exc = PolicyViolation("literal address 127.0.0.1 is refused")
    assert str(exc) == POLICY_MESSAGE
    assert "127.0.0.1" in exc.detail


async def test_default_resolver_is_threaded() -> None:
    policy = NetworkPolicy()
    assert isinstance(policy._resolver_for_use(), aiohttp.ThreadedResolver)
    connector = policy.connector()
    try:
        assert isinstance(connector.resolver, PolicyResolver)
        assert isinstance(connector.resolver.inner, aiohttp.ThreadedResolver)
        assert connector.use_dns_cache is False
    finally:
        await connector.close()


# ---------------------------------------------------------------------------
# Allow list


async def test_allow_list_exempts_loopback_only() -> None:
    policy = NetworkPolicy(allow=LOOPBACK, resolver=StaticResolver(NAMES))
    await policy.check_url("http://127.0.0.1:1234/x")
    await policy.check_url("http://127.9.9.9/")
    await policy.check_url("http://0x7f.1:1234/")
    await policy.check_url("http://[::ffff:127.0.0.1]:1234/")  # embedded IPv4 is judged
    await policy.check_url("http://[64:ff9b::127.0.0.1]/")
    for url in (
        "http://10.0.0.1/",
        "http://[::ffff:10.0.0.1]/",
        "http://[::1]/",  # IPv6 loopback is not in an IPv4 allow network
        "http://localhost/",  # ::1 among the answers refuses the whole name
        "http://intranet.test/",
    ):
        with pytest.raises(PolicyViolation):
            await policy.check_url(url)


def test_allows_unit() -> None:
    policy = NetworkPolicy(allow=parse_networks("10.20.0.0/16, fd00::/8, ::1"))
    ip = ipaddress.ip_address
    assert policy.allows(ip("10.20.3.4"))
    assert policy.allows(ip("::ffff:10.20.3.4"))
    assert not policy.allows(ip("10.21.0.1"))
    assert policy.allows(ip("fd00::1"))
    assert policy.allows(ip("fdff::1"))
    assert not policy.allows(ip("fc00::1"))
    assert policy.allows(ip("::1"))
    assert not policy.allows(ip("::"))
    assert policy.allows(ip("8.8.8.8"))
    assert policy.allows(ip("fd00::1%eth0"))
    assert NetworkPolicy().allow == ()


# ---------------------------------------------------------------------------
# parse_networks


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", ()),
        ("   ", ()),
        ("10.20.0.0/16, fd00::/8", ("10.20.0.0/16", "fd00::/8")),
        ("127.0.0.0/8,\n 192.168.0.0/16,", ("127.0.0.0/8", "192.168.0.0/16")),
        ("10.0.0.0/8 172.16.0.0/12", ("10.0.0.0/8", "172.16.0.0/12")),
        ("127.0.0.1", ("127.0.0.1/32",)),
        ("::1", ("::1/128",)),
    ],
)
def test_parse_networks(text: str, expected: tuple[str, ...]) -> None:
    assert parse_networks(text) == tuple(ipaddress.ip_network(n) for n in expected)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("10.0.0.1/8", r"^10\.0\.0\.1/8 has host bits set; did you mean 10\.0\.0\.0/8\?$"),
        ("10.20.30.40/1", r"^10\.20\.30\.40/1 has host bits set; did you mean 0\.0\.0\.0/1\?$"),
        ("fd00::1/8", r"^fd00::1/8 has host bits set; did you mean fd00::/8\?$"),
        ("banana", "invalid network 'banana'"),
        ("10.0.0.0/8, banana", "invalid network 'banana'"),
        ("10.0.0.0/33", r"invalid network '10\.0\.0\.0/33'"),
        ("fd00::/129", "invalid network 'fd00::/129'"),
        ("10.0.0.0/8;192.168.0.0/16", "invalid network"),
        ("0x7f.0.0.0/8", "invalid network '0x7f"),
        ("010.0.0.0/8", "invalid network '010"),
        ("fe80::%eth0/64", "zone ids are not allowed"),
        ("/8", "invalid network '/8'"),
    ],
)
def test_parse_networks_errors(text: str, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        parse_networks(text)


# ---------------------------------------------------------------------------
# Literal parsing and the refused list


def test_module_list_matches_spec() -> None:
    assert sorted(REFUSED_IPV4_NETWORKS) == sorted(SPEC_REFUSED_V4)
    assert sorted(REFUSED_IPV6_NETWORKS) == sorted(SPEC_REFUSED_V6)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("0x7f.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.0.0.1.", "127.0.0.1"),
        ("1.2.3", "1.2.0.3"),
        ("0x", "0.0.0.0"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("example.com", None),
        ("08.1.1.1", None),  # '8' is not an octal digit: a name, as inet_aton says
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("1.16777216", None),
        ("4294967296", None),
        ("", None),
        (".", None),
        ("[not-v6]", None),
        ("1.2.3.-4", None),
    ],
)
def test_parse_ip_literal(host: str, expected: str | None) -> None:
    result = parse_ip_literal(host)
    assert result == (None if expected is None else ipaddress.ip_address(expected))


@pytest.mark.parametrize(
    ("addr", "inner"),
    [
        ("::ffff:8.8.8.8", "8.8.8.8"),
        ("::8.8.8.8", "8.8.8.8"),
        ("64:ff9b::a00:1", "10.0.0.1"),
        ("::ffff:0:a00:1", "10.0.0.1"),
        ("::ffff:0:8.8.8.8", "8.8.8.8"),
        ("64:ff9b:1::a00:1", "10.0.0.1"),
        ("64:ff9b:1:ffff::8.8.8.8", "8.8.8.8"),
        ("64:ff9b:2::a00:1", None),
        ("2002:7f00:1::", "127.0.0.1"),
        ("::", None),
        ("::1", None),
        ("2001:4860::1", None),
        ("8.8.8.8", None),
    ],
)
def test_embedded_ipv4(addr: str, inner: str | None) -> None:
    got = embedded_ipv4(ipaddress.ip_address(addr))
    assert got == (None if inner is None else ipaddress.IPv4Address(inner))


# ---------------------------------------------------------------------------
# Property tests


def _dotted(n: int) -> str:
    return str(ipaddress.IPv4Address(n))


def _octets(n: int) -> list[int]:
    return list(ipaddress.IPv4Address(n).packed)


# Renderings that inet_aton itself accepts (checked against the platform below).
ATON_RENDERINGS: dict[str, Callable[[int], str]] = {
    "dotted": _dotted,
    "decimal": str,
    "hex": hex,
    "HEX": lambda n: f"0X{n:X}",
    "octal": lambda n: f"0{n:o}",
    "octal-parts": lambda n: ".".join(f"0{b:o}" for b in _octets(n)),
    "hex-parts": lambda n: ".".join(f"0x{b:x}" for b in _octets(n)),
    "mixed-parts": lambda n: "{}.0x{:x}.0{:o}.{}".format(*_octets(n)),
    "three-parts": lambda n: f"{n >> 24}.{(n >> 16) & 0xFF}.{n & 0xFFFF}",
    "two-parts": lambda n: f"{n >> 24}.{n & 0xFFFFFF}",
    "two-parts-hex": lambda n: f"0x{n >> 24:x}.0x{n & 0xFFFFFF:x}",
}
OTHER_RENDERINGS: dict[str, Callable[[int], str]] = {
    "trailing-dot": lambda n: _dotted(n) + ".",
    "mapped": lambda n: f"[::ffff:{_dotted(n)}]",
    "mapped-hex": lambda n: f"[::ffff:{n >> 16:x}:{n & 0xFFFF:x}]",
    "mapped-bare": lambda n: f"::ffff:{_dotted(n)}",
    "nat64": lambda n: f"[64:ff9b::{_dotted(n)}]",
    "siit": lambda n: f"[::ffff:0:{_dotted(n)}]",
    "nat64-local": lambda n: f"[64:ff9b:1:2:3::{_dotted(n)}]",
    "6to4": lambda n: f"[2002:{n >> 16:x}:{n & 0xFFFF:x}::1]",
}
RENDERINGS = {**ATON_RENDERINGS, **OTHER_RENDERINGS}

refused_v4_ints = st.sampled_from(SPEC_REFUSED_V4).flatmap(
    lambda net: st.integers(int(net.network_address), int(net.broadcast_address))
)
public_v4_ints = st.integers(0, 2**32 - 1).filter(lambda n: not spec_refused_v4(n))
refused_v6 = st.sampled_from(SPEC_REFUSED_V6).flatmap(
    lambda net: st.integers(int(net.network_address), int(net.broadcast_address)).map(
        ipaddress.IPv6Address
    )
)


def _url(host: str) -> str:
    # A bare IPv6 literal is a valid host to judge but must be bracketed inside a URL.
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}/"


def _outside_v6(addr: ipaddress.IPv6Address) -> bool:
    return not any(addr in net for net in SPEC_REFUSED_V6 + EMBEDDING_V6)


public_v6 = st.integers(0, 2**128 - 1).map(ipaddress.IPv6Address).filter(_outside_v6)

NO_DNS = StaticResolver({})
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@PROPERTY_SETTINGS
@given(number=refused_v4_ints, style=st.sampled_from(sorted(RENDERINGS)))
async def test_refused_v4_in_any_notation(number: int, style: str) -> None:
    host = RENDERINGS[style](number)
    addr = parse_ip_literal(host)
    assert addr is not None
    assert is_refused(addr)
    with pytest.raises(PolicyViolation, match=f"^{POLICY_MESSAGE}$"):
        await NetworkPolicy(resolver=NO_DNS).check_url(_url(host))


@PROPERTY_SETTINGS
@given(number=public_v4_ints, style=st.sampled_from(sorted(RENDERINGS)))
async def test_public_v4_passes_in_any_notation(number: int, style: str) -> None:
    host = RENDERINGS[style](number)
    addr = parse_ip_literal(host)
    assert addr is not None
    assert not is_refused(addr)
    await NetworkPolicy(resolver=NO_DNS).check_url(_url(host))


@PROPERTY_SETTINGS
@given(number=st.integers(0, 2**32 - 1), style=st.sampled_from(sorted(ATON_RENDERINGS)))
def test_parsing_agrees_with_platform_inet_aton(number: int, style: str) -> None:
    host = ATON_RENDERINGS[style](number)
    expected = ipaddress.IPv4Address(socket.inet_aton(host))
    assert expected == ipaddress.IPv4Address(number)
    assert parse_ip_literal(host) == expected


@PROPERTY_SETTINGS
@given(addr=refused_v6)
async def test_refused_v6(addr: ipaddress.IPv6Address) -> None:
    assert is_refused(addr)
    with pytest.raises(PolicyViolation):
        await NetworkPolicy(resolver=NO_DNS).check_url(f"http://[{addr}]/")


@PROPERTY_SETTINGS
@given(addr=public_v6)
async def test_public_v6_passes(addr: ipaddress.IPv6Address) -> None:
    assert not is_refused(addr)
    await NetworkPolicy(resolver=NO_DNS).check_url(f"http://[{addr}]:8443/")


@PROPERTY_SETTINGS
@given(
    number=st.integers(2, 2**32 - 1),
    style=st.sampled_from(["mapped", "nat64", "siit", "nat64-local", "6to4"]),
)
def test_embedded_forms_follow_their_ipv4(number: int, style: str) -> None:
    addr = parse_ip_literal(OTHER_RENDERINGS[style](number))
    assert addr is not None
    assert is_refused(addr) == spec_refused_v4(number)
    compat = ipaddress.IPv6Address(number)  # ::a.b.c.d
    assert is_refused(compat) == spec_refused_v4(number)


def test_ipv6_zone_is_ignored() -> None:
    assert is_refused(ipaddress.IPv6Address("fe80::1%eth0"))
    assert not is_refused(ipaddress.IPv6Address("2606:4700::1%eth0"))


# ---------------------------------------------------------------------------
# Connector: real aiohttp server on 127.0.0.1, loopback traffic only


async def test_connector_reaches_allowed_loopback(
    receiver: Receiver, loopback_only: list[str]
) -> None:
    policy = NetworkPolicy(allow=LOOPBACK, resolver=StaticResolver({}))
    assert await post(policy, receiver.url()) == 200
    assert receiver.seen == ["/hook"]
    assert loopback_only == ["127.0.0.1"]  # the connect guard is live


async def test_connector_reaches_allowed_name(receiver: Receiver) -> None:
    resolver = StaticResolver({"receiver.test": ["127.0.0.1"]})
    policy = NetworkPolicy(allow=LOOPBACK, resolver=resolver)
    assert await post(policy, receiver.url(host="receiver.test")) == 200
    assert receiver.seen == ["/hook"]
    assert resolver.calls == ["receiver.test"]


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "0x7f.1", "127.1", "2130706433", "[::ffff:127.0.0.1]", "127.0.0.1."]
)
async def test_connector_blocks_literal(
    receiver: Receiver, loopback_only: list[str], host: str
) -> None:
    policy = NetworkPolicy(resolver=StaticResolver({}))
    with pytest.raises(aiohttp.ClientError) as info:
        await post(policy, receiver.url(host=host))
    assert is_policy_block(info.value)
    assert BLOCKED_MESSAGE in str(info.value)
    assert receiver.seen == []
    assert loopback_only == []  # blocked before any socket was opened


async def test_connector_blocks_name_resolving_inside(
    receiver: Receiver, loopback_only: list[str]
) -> None:
    policy = NetworkPolicy(resolver=StaticResolver({"evil.test": ["127.0.0.1"]}))
    with pytest.raises(aiohttp.ClientError) as info:
        await post(policy, receiver.url(host="evil.test"))
    assert is_policy_block(info.value)
    assert receiver.seen == []
    assert loopback_only == []


async def test_dns_rebinding_after_registration(
    receiver: Receiver, loopback_only: list[str]
) -> None:
    # Public at registration, loopback at delivery: the public answer is only judged.
    resolver = StaticResolver({"rebind.test": [["8.8.8.8"], ["127.0.0.1"]]})
    policy = NetworkPolicy(resolver=resolver)
    url = receiver.url(host="rebind.test")
    await policy.check_url(url)
    for _attempt in range(2):  # every attempt resolves again and is blocked again
        with pytest.raises(aiohttp.ClientError) as info:
            await post(policy, url)
        assert is_policy_block(info.value)
    assert resolver.calls == ["rebind.test"] * 3
    assert receiver.seen == []
    assert loopback_only == []


async def test_connector_blocks_if_any_answer_refused(
    receiver: Receiver, loopback_only: list[str]
) -> None:
    # 127.0.0.1 is allowed, but 10.0.0.1 in the same answer blocks the whole attempt.
    resolver = StaticResolver({"split.test": ["127.0.0.1", "10.0.0.1"]})
    policy = NetworkPolicy(allow=LOOPBACK, resolver=resolver)
    with pytest.raises(aiohttp.ClientError) as info:
        await post(policy, receiver.url(host="split.test"))
    assert is_policy_block(info.value)
    assert receiver.seen == []
    assert loopback_only == []


async def test_connector_blocks_unparseable_answer(receiver: Receiver) -> None:
    policy = NetworkPolicy(allow=LOOPBACK, resolver=StaticResolver(NAMES))
    with pytest.raises(aiohttp.ClientError) as info:
        await post(policy, receiver.url(host="garbage.test"))
    assert is_policy_block(info.value)
    assert receiver.seen == []


async def test_connector_vets_redirect_targets(receiver: Receiver) -> None:
    # Only 127.0.0.1 is allowed; the receiver redirects to 127.0.0.2, which is refused.
    policy = NetworkPolicy(allow=parse_networks("127.0.0.1/32"), resolver=StaticResolver({}))
    with pytest.raises(aiohttp.ClientError) as info:
        await post(policy, receiver.url("/redirect"))
    assert is_policy_block(info.value)
    assert receiver.seen == ["/redirect"]


async def test_connector_refuses_explicit_proxy(
    receiver: Receiver, loopback_only: list[str]
) -> None:
    policy = NetworkPolicy(allow=LOOPBACK, resolver=StaticResolver({}))
    with pytest.raises(aiohttp.ClientError) as info:
        await post(policy, receiver.url(), proxy=receiver.url("/"))
    assert is_policy_block(info.value)
    assert receiver.seen == []
    assert loopback_only == []


async def test_connector_refuses_environment_proxy_if_trust_env_forgotten(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", receiver.url("/"))
    policy = NetworkPolicy(allow=LOOPBACK, resolver=StaticResolver({}))
    async with aiohttp.ClientSession(
        connector=policy.connector(), middlewares=(policy.middleware,), trust_env=True
    ) as session:
        with pytest.raises(aiohttp.ClientError) as info:
            await session.post(receiver.url())
    assert is_policy_block(info.value)
    assert receiver.seen == []


async def test_connector_backstop_vets_socket_addresses(loopback_only: list[str]) -> None:
    policy = NetworkPolicy(resolver=StaticResolver({}))
    info = (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 9))
    with pytest.raises(PolicyBlockedError):
        policy.socket_factory(info)
    with pytest.raises(PolicyBlockedError):  # an address it cannot read fails closed
        policy.socket_factory(())  # type: ignore[arg-type]
    assert loopback_only == []


async def test_connector_settings() -> None:
    policy = NetworkPolicy(resolver=StaticResolver({}))
    connector = policy.connector(limit=5)
    try:
        assert connector.use_dns_cache is False
        assert connector.limit == 5
        assert connector.policy is policy
    finally:
        await connector.close()
    with pytest.raises(ValueError, match="use_dns_cache"):
        policy.connector(use_dns_cache=True)
    with pytest.raises(TypeError, match="resolver"):
        policy.connector(resolver=StaticResolver({}))


# ---------------------------------------------------------------------------
# is_policy_block


def _key() -> ConnectionKey:
    # By name: its fields differ between aiohttp releases (server_hostname came in 3.14.x).
    fields: dict[str, Any] = dict.fromkeys(ConnectionKey._fields)
    fields.update(host="x.test", port=80, is_ssl=False, ssl=True)
    return ConnectionKey(**fields)


def _chain() -> Iterator[BaseException]:
    blocked = PolicyBlockedError("refused address '10.0.0.1'")
    key = _key()
    wrapped = aiohttp.ClientConnectorDNSError(key, blocked)
    yield blocked
    yield wrapped  # found through os_error
    try:
        try:
            raise blocked
        except OSError as exc:
            raise aiohttp.ClientOSError(*exc.args) from exc
    except aiohttp.ClientOSError as outer:
        yield outer  # found through __cause__
    try:
        try:
            raise wrapped
        except aiohttp.ClientError:
            raise RuntimeError("while delivering") from None
    except RuntimeError as ctx:
        yield ctx  # found through __context__ even with the cause suppressed
    yield ExceptionGroup("attempts", [ValueError("x"), wrapped])
    yield PolicyViolation("registration")


@pytest.mark.parametrize("exc", list(_chain()))
def test_is_policy_block_positive(exc: BaseException) -> None:
    assert is_policy_block(exc)


def test_is_policy_block_negative() -> None:
    key = _key()
    refused_conn = aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "refused"))
    assert not is_policy_block(refused_conn)
    assert not is_policy_block(OSError(13, BLOCKED_MESSAGE))
    assert not is_policy_block(TimeoutError())
    looped = ValueError("a")
    other = ValueError("b")
    looped.__context__ = other
    other.__context__ = looped  # cycles terminate
    assert not is_policy_block(looped)


def test_blocked_error_shape() -> None:
    exc = PolicyBlockedError("refused address '10.0.0.1'")
    assert isinstance(exc, OSError)
    assert exc.strerror == BLOCKED_MESSAGE
    assert "10.0.0.1" not in str(exc)
    assert "10.0.0.1" in exc.detail
