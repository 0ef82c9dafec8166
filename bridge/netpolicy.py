"""Outbound network policy for callback URLs (SSRF protection).

The bridge POSTs webhooks to URLs chosen by its callers, so it must never connect to
internal addresses.  This module holds the authoritative refused-address list from the
product spec (deliberately *not* :attr:`ipaddress.IPv4Address.is_global`, whose notion of
"global" changes between Python releases) and the places that enforce it.  Each uses a
public aiohttp extension point, never a private method:

* :meth:`NetworkPolicy.check_url` -- the registration check.  It judges IP literals in
  every spelling ``inet_aton`` accepts and resolves host names, refusing the URL if any
  address is refused or the name does not resolve.
* At delivery, the session from :meth:`NetworkPolicy.connector` and
  :meth:`NetworkPolicy.middleware` (see ``bridge.delivery.callback_session``):

  - :class:`PolicyResolver`, the connector's ``resolver`` (an
    :class:`aiohttp.abc.AbstractResolver`): resolves the host again at every connection
    (the DNS cache is off), refuses the attempt if the name resolves to nothing or to ANY
    refused address, and hands aiohttp only vetted addresses to connect to, so a name
    that later resolves inside the network (DNS rebinding) gets a failed attempt, never
    a request.
  - :meth:`NetworkPolicy.middleware`, a client middleware: aiohttp does not call the
    resolver for an IP-literal host, so the URL's host is judged here, in every
    spelling, before the request is made (every hop, should a redirect ever be
    followed).  Proxied requests are refused too: the proxy would resolve and connect
    on its own, out of reach of the policy.
  - :meth:`NetworkPolicy.socket_factory`, the connector's ``socket_factory`` (aiohttp
    3.12+): the backstop.  It vets the exact socket address about to be connected, and
    fails closed, so a path that bypasses the two above still cannot reach a refused
    address.

  Failures raised there are recognised by :func:`is_policy_block`.

Addresses inside the operator's allow list (``BRIDGE_CALLBACK_ALLOW_NETWORKS``, parsed by
:func:`parse_networks` in ``bridge.settings``) are exempt, e.g. ``127.0.0.0/8`` so that
tests can reach loopback receivers.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import re
import socket
import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any, Final
from urllib.parse import unquote

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

__all__ = [
    "BLOCKED_MESSAGE",
    "POLICY_MESSAGE",
    "REFUSED_IPV4_NETWORKS",
    "REFUSED_IPV6_NETWORKS",
    "IPAddress",
    "IPNetwork",
    "NetworkPolicy",
    "PolicyBlockedError",
    "PolicyConnector",
    "PolicyResolver",
    "PolicyViolation",
    "embedded_ipv4",
    "is_policy_block",
    "is_refused",
    "parse_ip_literal",
    "parse_network",
    "parse_networks",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

POLICY_MESSAGE: Final = "callback_url is not allowed by the network policy"
BLOCKED_MESSAGE: Final = "blocked by network policy"

_V4 = ipaddress.IPv4Network
_V6 = ipaddress.IPv6Network

REFUSED_IPV4_NETWORKS: Final[tuple[ipaddress.IPv4Network, ...]] = (
    _V4("0.0.0.0/8"),
    _V4("10.0.0.0/8"),
    _V4("100.64.0.0/10"),
    _V4("127.0.0.0/8"),
    _V4("169.254.0.0/16"),
    _V4("172.16.0.0/12"),
    _V4("192.0.0.0/24"),
    _V4("192.0.2.0/24"),
    _V4("192.168.0.0/16"),
    _V4("198.18.0.0/15"),
    _V4("198.51.100.0/24"),
    _V4("203.0.113.0/24"),
    _V4("224.0.0.0/4"),
    _V4("240.0.0.0/4"),  # includes 255.255.255.255
    _V4("168.63.129.16/32"),  # Azure host/metadata endpoint
)

# Refused outright, whatever bits follow.  The IPv4-embedding prefixes are not listed:
# those addresses are judged by the IPv4 address they carry (see embedded_ipv4).
REFUSED_IPV6_NETWORKS: Final[tuple[ipaddress.IPv6Network, ...]] = (
    _V6("::/128"),
    _V6("::1/128"),
    _V6("fc00::/7"),
    _V6("fe80::/10"),
    _V6("fec0::/10"),
    _V6("ff00::/8"),
    _V6("2001::/32"),  # Teredo: embeds a server and an obfuscated client, refuse both
    _V6("2001:db8::/32"),
    _V6("100::/64"),  # discard-only (RFC 6666)
)

_IPV4_COMPATIBLE: Final = _V6("::/96")
_IPV4_MAPPED: Final = _V6("::ffff:0:0/96")
_IPV4_TRANSLATED: Final = _V6("::ffff:0:0:0/96")  # SIIT (RFC 2765)
_NAT64: Final = _V6("64:ff9b::/96")
_NAT64_LOCAL: Final = _V6("64:ff9b:1::/48")  # local-use NAT64 (RFC 8215), IPv4 last
# Prefixes whose last 32 bits are the IPv4 address meant.
_IPV4_LAST: Final = (_IPV4_MAPPED, _IPV4_TRANSLATED, _NAT64, _NAT64_LOCAL)
_SIX_TO_FOUR: Final = _V6("2002::/16")


class PolicyViolation(Exception):
    """A callback URL refused at registration.

    ``str()`` is always :data:`POLICY_MESSAGE` so that the API response never tells a
    caller which address (or whether DNS) tripped the policy; ``detail`` carries the
    reason for server-side logs only.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__(POLICY_MESSAGE)
        self.detail = detail

    def __str__(self) -> str:
        return POLICY_MESSAGE


class PolicyBlockedError(OSError):
    """A delivery connection refused by the policy (resolver, middleware or socket factory).

    An :class:`OSError` on purpose: aiohttp wraps OSErrors raised while connecting into
    its ``ClientError`` hierarchy (``ClientConnectorDNSError`` / ``ClientOSError``), so
    generic delivery error handling sees an ordinary failed attempt; use
    :func:`is_policy_block` to tell this case apart.
    """

    def __init__(self, detail: str = "") -> None:
        super().__init__(errno.EACCES, BLOCKED_MESSAGE)
        self.detail = detail


def is_policy_block(exc: BaseException) -> bool:
    """True if ``exc`` is, or was caused by, a network policy refusal.

    Walks ``__cause__``, ``__context__``, aiohttp's ``os_error`` and exception groups,
    because aiohttp re-wraps connection errors differently depending on where they occur.
    """
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, PolicyBlockedError | PolicyViolation):
            return True
        for attr in ("__cause__", "__context__", "os_error"):
            linked = getattr(current, attr, None)
            if isinstance(linked, BaseException):
                pending.append(linked)
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
    return False


# ---------------------------------------------------------------------------
# Parsing


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """Parse a comma/whitespace separated list of CIDRs, e.g. ``"10.20.0.0/16, fd00::/8"``.

    A bare address means a single-host network.  Raises :class:`ValueError` naming the
    offending entry; host bits set is an error rather than silently widening the range.
    """
    networks: list[IPNetwork] = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        networks.append(parse_network(item))
    return tuple(networks)


def parse_network(item: str) -> IPNetwork:
    """One CIDR (or a bare address: a single-host network), strictly.

    Host bits set (``10.20.30.40/16``) is refused, naming the network that was probably
    meant, rather than silently widening the range to ``10.20.0.0/16`` (or, for
    ``10.20.30.40/1``, to ``0.0.0.0/1``).
    """
    if "%" in item:
        raise ValueError(f"invalid network {item!r}: zone ids are not allowed")
    try:
        return ipaddress.ip_network(item, strict=True)
    except ValueError as exc:
        try:
            loose = ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"invalid network {item!r}: {exc}") from None
        raise ValueError(f"{item} has host bits set; did you mean {loose}?") from None


# One inet_aton part: hex (``0x`` alone counts as 0, as in browsers), octal, or decimal.
_AT_ON_PART: Final = re.compile(r"0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*")


def _parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """IPv4 with ``inet_aton`` semantics: 1-4 parts, each decimal, octal or hex.

    The last part fills all remaining bytes, so ``127.1`` is 127.0.0.1 and
    ``2130706433`` is 127.0.0.1 too.
    """
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if not _AT_ON_PART.fullmatch(part):
            return None
        if part[:2] in ("0x", "0X"):
            values.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            values.append(int(part, 8))
        else:
            values.append(int(part))
    *leading, last = values
    if any(v > 0xFF for v in leading) or last >= 1 << (8 * (4 - len(leading))):
        return None
    number = last
    for index, value in enumerate(leading):
        number |= value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def _parse_ipv6(text: str) -> ipaddress.IPv6Address | None:
    # The zone (``%eth0``, or ``%25eth0`` as URLs spell it) does not change which
    # address is meant, so it is dropped before judging.
    base = text.split("%", 1)[0]
    try:
        return ipaddress.IPv6Address(base)
    except ValueError:
        return None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address an IP-literal host means, or ``None`` for a host name.

    Accepts every spelling a resolver or browser might turn into an address:
    ``[::ffff:127.0.0.1]``, ``fe80::1%eth0``, ``0x7f.1``, ``2130706433``, ``0177.0.0.1``,
    ``127.1``, ``0x7f000001``, ``127.0.0.1.`` (trailing dot), percent-encoded and
    full-width digits.  Erring towards "this is an address" is the safe direction: a
    name mistaken for an address gets judged, an address mistaken for a name would be
    passed to a resolver that may quietly accept it.
    """
    text = unicodedata.normalize("NFKC", host).strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        return _parse_ipv6(text)
    if "%" in text:
        text = unquote(text)
    text = text.rstrip(".")
    if not text:
        return None
    return _parse_inet_aton(text)


# ---------------------------------------------------------------------------
# Judging


def _without_zone(addr: IPAddress) -> IPAddress:
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        return ipaddress.IPv6Address(addr.packed)
    return addr


def embedded_ipv4(addr: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address carried by an IPv4-mapped, IPv4-compatible, IPv4-translated
    (SIIT), NAT64 (well-known or local-use, IPv4 in the last 32 bits) or 6to4 address.

    ``::`` and ``::1`` are IPv6's own unspecified/loopback addresses, not IPv4-compatible
    forms of 0.0.0.0/0.0.0.1, so they carry nothing.
    """
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    addr = ipaddress.IPv6Address(addr.packed)
    number = int(addr)
    if any(addr in net for net in _IPV4_LAST):
        return ipaddress.IPv4Address(number & 0xFFFFFFFF)
    if addr in _IPV4_COMPATIBLE:
        return None if number <= 1 else ipaddress.IPv4Address(number)
    if addr in _SIX_TO_FOUR:
        return ipaddress.IPv4Address((number >> 80) & 0xFFFFFFFF)
    return None


def is_refused(addr: IPAddress) -> bool:
    """True if ``addr`` is in the authoritative refused list (embedded IPv4 unwrapped)."""
    addr = _without_zone(addr)
    if isinstance(addr, ipaddress.IPv4Address):
        return any(addr in net for net in REFUSED_IPV4_NETWORKS)
    if any(addr in net for net in REFUSED_IPV6_NETWORKS):
        return True
    inner = embedded_ipv4(addr)
    return inner is not None and is_refused(inner)


# ---------------------------------------------------------------------------
# Policy


class NetworkPolicy:
    """Decides which addresses the bridge may connect to, and enforces it for aiohttp.

    ``allow`` exempts addresses inside those networks; an IPv4 network also exempts the
    IPv4-mapped/embedded IPv6 forms of its addresses.  ``resolver`` is the resolver names
    are looked up with; by default aiohttp's :class:`~aiohttp.ThreadedResolver`
    (``getaddrinfo``), made afresh for each use because it binds the running loop.
    """

    def __init__(
        self,
        allow: Sequence[IPNetwork] = (),
        resolver: AbstractResolver | None = None,
        *,
        resolve_timeout: float | None = 10.0,
    ) -> None:
        self._allow: tuple[IPNetwork, ...] = tuple(allow)
        self._resolver = resolver
        self._resolve_timeout = resolve_timeout

    @property
    def allow(self) -> tuple[IPNetwork, ...]:
        return self._allow

    def _in_allow(self, addr: IPAddress) -> bool:
        # Mixed-family membership tests are simply False in ipaddress.
        return any(addr in net for net in self._allow)

    def allows(self, addr: IPAddress) -> bool:
        """True if the bridge may connect to ``addr``: not refused, or inside ``allow``."""
        addr = _without_zone(addr)
        if not is_refused(addr) or self._in_allow(addr):
            return True
        inner = embedded_ipv4(addr)
        return inner is not None and self._in_allow(inner)

    def _allows_host(self, host: str) -> bool:
        # Resolver output that is not an address cannot be judged, so it is refused.
        addr = parse_ip_literal(host)
        return addr is not None and self.allows(addr)

    def vet_hosts(self, hosts: Iterable[str]) -> None:
        """Raise :class:`PolicyBlockedError` if any of ``hosts`` is not allowed."""
        for host in hosts:
            if not self._allows_host(host):
                raise PolicyBlockedError(f"refused address {host!r}")

    def _resolver_for_use(self) -> AbstractResolver:
        return self._resolver if self._resolver is not None else aiohttp.ThreadedResolver()

    def resolver(self) -> PolicyResolver:
        """A :class:`PolicyResolver` over this policy's resolver (call it inside a loop)."""
        return PolicyResolver(self, self._resolver_for_use())

    # -- registration ---------------------------------------------------------------

    async def check_url(self, url: str) -> None:
        """Registration check; raises :class:`PolicyViolation` if ``url`` may not be used.

        The URL is parsed with yarl exactly as aiohttp will parse it at delivery, so
        userinfo tricks (``http://good.example@127.0.0.1/``) are judged by the real host.
        Literal hosts are judged without DNS; names are resolved (port from the URL or
        the scheme default) and refused if they do not resolve or ANY address is refused.
        """
        try:
            parsed = URL(url)
            host = parsed.raw_host
            port = parsed.port
        except (TypeError, ValueError):
            raise PolicyViolation("unparseable URL") from None
        if parsed.scheme not in ("http", "https") or not host or port is None:
            raise PolicyViolation("not an absolute http(s) URL")

        literal = parse_ip_literal(host)
        if literal is not None:
            if not self.allows(literal):
                raise PolicyViolation(f"literal address {literal} is refused")
            return

        if host.endswith(".."):  # aiohttp collapses repeated trailing dots the same way
            host = host.rstrip(".") + "."
        try:
            await asyncio.wait_for(
                self.resolver().resolve(host, port, family=socket.AF_UNSPEC),
                self._resolve_timeout,
            )
        except PolicyBlockedError as exc:
            raise PolicyViolation(f"{host!r}: {exc.detail}") from None
        except Exception as exc:  # any failure to resolve refuses: fail closed
            raise PolicyViolation(f"{host!r} did not resolve: {exc!r}") from None

    # -- delivery ---------------------------------------------------------------------

    def check_target(self, url: URL) -> None:
        """Refuse (:class:`PolicyBlockedError`) a request to a refused IP-literal host.

        aiohttp connects to a literal host without asking the resolver, so this is where
        a literal is judged, in every spelling (``0x7f.1``, ``2130706433``,
        ``[::ffff:127.0.0.1]``).  Host names are left to :class:`PolicyResolver`.
        """
        host = url.raw_host
        if not host:
            raise PolicyBlockedError("no host to judge")
        self.vet_literal(host)

    def vet_literal(self, host: str) -> IPAddress | None:
        """The address ``host`` spells, if it is an IP literal in any spelling (None for a
        name); :class:`PolicyBlockedError` if that address is refused."""
        literal = parse_ip_literal(host)
        if literal is not None and not self.allows(literal):
            raise PolicyBlockedError(f"refused literal address {literal}")
        return literal

    async def middleware(
        self, req: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        """aiohttp client middleware: :meth:`check_target`, and no proxies, before sending.

        aiohttp runs it for every request the session sends, before a connection is
        taken.  The :class:`PolicyBlockedError` it raises reaches the caller as an
        :class:`aiohttp.ClientOSError` caused by it (see :func:`is_policy_block`).
        """
        if req.proxy is not None:
            raise PolicyBlockedError("proxied requests cannot be vetted")
        self.check_target(req.url)
        return await handler(req)

    def socket_factory(self, addr_info: aiohttp.AddrInfoType) -> socket.socket:
        """The connector's ``socket_factory``: the connect-time backstop.

        aiohttp calls it with each ``addr_info`` just before it connects to that address;
        the socket is only made if the exact address is allowed.  Anything unreadable is
        refused (fail closed).  Addresses are judged in every spelling ``inet_aton``
        accepts, because that is how the socket layer would read them.
        """
        try:
            family, type_, proto, _canonname, sockaddr = addr_info
            host = sockaddr[0]
        except (TypeError, ValueError, IndexError):
            raise PolicyBlockedError("cannot read the address about to be connected") from None
        if not isinstance(host, str) or not self._allows_host(host):
            raise PolicyBlockedError(f"refused address {host!r} at connect")
        return socket.socket(family=family, type=type_, proto=proto)

    def connector(self, **kwargs: Any) -> PolicyConnector:
        """A connector for delivery sessions that vets every address at every connection.

        Use it with :meth:`middleware` and ``trust_env=False`` (which stops the session
        from picking up ``HTTP(S)_PROXY`` from the environment), as
        ``bridge.delivery.callback_session`` does.  ``kwargs`` go to
        :class:`aiohttp.TCPConnector`; the resolver, the socket factory and the DNS
        cache (off, so each attempt resolves again) are the policy's.
        """
        if kwargs.get("use_dns_cache", False):
            raise ValueError("use_dns_cache=True is not allowed: every attempt must resolve")
        for name in ("resolver", "socket_factory"):
            if name in kwargs:
                raise TypeError(f"pass no {name} to connector(): the policy provides it")
        kwargs.pop("use_dns_cache", None)
        return PolicyConnector(self, **kwargs)


# ---------------------------------------------------------------------------
# Resolver and connector


class PolicyResolver(AbstractResolver):
    """Resolves with another resolver and lets through only answers the policy allows.

    A name that resolves to nothing, or to ANY refused or unreadable address, is refused
    with :class:`PolicyBlockedError` (an :class:`OSError`, which aiohttp reports as a
    ``ClientConnectorDNSError``).  The answers returned are the vetted ones, spelled as
    plain addresses, so aiohttp connects to exactly what was judged.  A host that is an
    IP literal aiohttp did not recognise as one (``0x7f.1``) is judged as the address it
    means and never sent to DNS.
    """

    def __init__(self, policy: NetworkPolicy, resolver: AbstractResolver) -> None:
        self._policy = policy
        self._inner = resolver

    @property
    def inner(self) -> AbstractResolver:
        return self._inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        literal = self._policy.vet_literal(host)
        if literal is not None:
            own = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
            if family not in (socket.AF_UNSPEC, own):
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [_result(host, str(literal), port, own)]
        answers = await self._inner.resolve(host, port, family)
        if not answers:
            raise PolicyBlockedError(f"{host!r} resolved to no addresses")
        self._policy.vet_hosts(answer["host"] for answer in answers)
        return [_plain(answer) for answer in answers]

    async def close(self) -> None:
        await self._inner.close()


def _result(hostname: str, host: str, port: int, family: int) -> ResolveResult:
    return ResolveResult(
        hostname=hostname,
        host=host,
        port=port,
        family=family,
        proto=0,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
    )


def _plain(answer: ResolveResult) -> ResolveResult:
    """``answer`` with its (already vetted) address spelled as ``ipaddress`` spells it."""
    try:
        ipaddress.ip_address(answer["host"])  # a plain address (an IPv6 zone kept)
    except ValueError:
        addr = parse_ip_literal(answer["host"])
        assert addr is not None  # vetted: only readable addresses get here
        plain = answer.copy()
        plain["host"] = str(addr)
        return plain
    return answer


class PolicyConnector(aiohttp.TCPConnector):
    """An :class:`aiohttp.TCPConnector` set up by a :class:`NetworkPolicy`.

    Constructor arguments only, nothing overridden: ``resolver`` is a
    :class:`PolicyResolver`, ``socket_factory`` is :meth:`NetworkPolicy.socket_factory`
    and the DNS cache is off.
    """

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        resolver = policy.resolver()
        super().__init__(
            resolver=resolver,
            use_dns_cache=False,
            socket_factory=policy.socket_factory,
            **kwargs,
        )
        self.policy: Final = policy
        self.resolver: Final = resolver
