"""Outbound network policy for callback URLs (SSRF protection).

The bridge POSTs webhooks to URLs chosen by its callers, so it must never connect to
internal addresses.  This module holds the authoritative refused-address list from the
product spec (deliberately *not* :attr:`ipaddress.IPv4Address.is_global`, whose notion of
"global" changes between Python releases), plus two enforcement points:

* :meth:`NetworkPolicy.check_url` -- the registration check.  It judges IP literals in
  every spelling ``inet_aton`` accepts and resolves host names, refusing the URL if any
  address is refused or the name does not resolve.
* :meth:`NetworkPolicy.connector` -- an :class:`aiohttp.TCPConnector` that resolves the
  host again at every connection and vets every address before a socket is opened, so a
  name that later resolves inside the network (DNS rebinding) gets a failed attempt,
  never a request.  Failures raised there are recognised by :func:`is_policy_block`.

Addresses inside the operator's allow list (``BRIDGE_CALLBACK_ALLOW_NETWORKS``, read by
``bridge.settings`` with :func:`parse_networks`) are exempt, e.g. ``127.0.0.0/8`` so
that tests can reach loopback receivers.
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
from aiohttp.client_proto import ResponseHandler
from aiohttp.client_reqrep import ClientRequest
from aiohttp.tracing import Trace
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
    "PolicyViolation",
    "embedded_ipv4",
    "is_policy_block",
    "is_refused",
    "parse_ip_literal",
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
)

_IPV4_COMPATIBLE: Final = _V6("::/96")
_IPV4_MAPPED: Final = _V6("::ffff:0:0/96")
_NAT64: Final = _V6("64:ff9b::/96")
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
    """A delivery connection refused by :class:`PolicyConnector`.

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
        if "%" in item:
            raise ValueError(f"invalid network {item!r}: zone ids are not allowed")
        try:
            networks.append(ipaddress.ip_network(item, strict=True))
        except ValueError as exc:
            hint = ""
            try:
                loose = ipaddress.ip_network(item, strict=False)
            except ValueError:
                pass
            else:
                hint = f" (did you mean {loose}?)"
            raise ValueError(f"invalid network {item!r}: {exc}{hint}") from None
    return tuple(networks)


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
    """The IPv4 address carried by an IPv4-mapped, IPv4-compatible, NAT64 or 6to4 address.

    ``::`` and ``::1`` are IPv6's own unspecified/loopback addresses, not IPv4-compatible
    forms of 0.0.0.0/0.0.0.1, so they carry nothing.
    """
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    addr = ipaddress.IPv6Address(addr.packed)
    number = int(addr)
    if addr in _IPV4_MAPPED or addr in _NAT64:
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
    """Decides which addresses the bridge may connect to.

    ``allow`` exempts addresses inside those networks; an IPv4 network also exempts the
    IPv4-mapped/embedded IPv6 forms of its addresses.  ``resolver`` defaults to aiohttp's
    :class:`~aiohttp.ThreadedResolver` (``getaddrinfo``); aiodns is not used.
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

    def _resolver_for_use(self) -> AbstractResolver:
        # ThreadedResolver binds the running loop at construction, so a default one is
        # made per use rather than in __init__ (which may run outside any loop).
        return self._resolver if self._resolver is not None else aiohttp.ThreadedResolver()

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
            results = await asyncio.wait_for(
                self._resolver_for_use().resolve(host, port, family=socket.AF_UNSPEC),
                self._resolve_timeout,
            )
        except Exception as exc:  # any failure to resolve refuses: fail closed
            raise PolicyViolation(f"{host!r} did not resolve: {exc!r}") from None
        if not results:
            raise PolicyViolation(f"{host!r} resolved to no addresses")
        for result in results:
            if not self._allows_host(result["host"]):
                raise PolicyViolation(f"{host!r} resolved to refused {result['host']!r}")

    def connector(self, **kwargs: Any) -> PolicyConnector:
        """A connector for delivery sessions that vets every address at every connection.

        Use it as ``aiohttp.ClientSession(connector=policy.connector(), trust_env=False)``:
        ``trust_env=False`` stops the session from picking up ``HTTP(S)_PROXY`` from the
        environment (the connector refuses proxied requests anyway, because a proxy does
        its own DNS, which cannot be vetted).  The DNS cache is off so each attempt
        resolves again; ``kwargs`` go to :class:`aiohttp.TCPConnector`.
        """
        if kwargs.get("use_dns_cache", False):
            raise ValueError("use_dns_cache=True is not allowed: every attempt must resolve")
        if "resolver" in kwargs:
            raise TypeError("pass the resolver to NetworkPolicy, not to connector()")
        kwargs["use_dns_cache"] = False
        return PolicyConnector(self, resolver=self._resolver_for_use(), **kwargs)

    def vet_hosts(self, hosts: Iterable[str]) -> None:
        """Raise :class:`PolicyBlockedError` if any of ``hosts`` is not allowed."""
        for host in hosts:
            if not self._allows_host(host):
                raise PolicyBlockedError(f"refused address {host!r}")


# ---------------------------------------------------------------------------
# Connector

# PolicyConnector hooks these private TCPConnector methods.  If aiohttp renames them the
# overrides would silently never run, so refuse to import rather than deliver unvetted.
_TCP_CONNECTOR_HOOKS: Final = ("_resolve_host", "_wrap_create_connection", "_create_connection")
_missing_hooks = [name for name in _TCP_CONNECTOR_HOOKS if not hasattr(aiohttp.TCPConnector, name)]
if _missing_hooks:  # pragma: no cover - only on an incompatible aiohttp
    raise ImportError(
        f"bridge.netpolicy needs aiohttp.TCPConnector.{', '.join(_missing_hooks)}; "
        f"aiohttp {aiohttp.__version__} does not have them"
    )


class PolicyConnector(aiohttp.TCPConnector):
    """A :class:`aiohttp.TCPConnector` that never connects to an address the policy refuses.

    Enforcement lives in the connector so no request path can skip it:

    * ``_resolve_host`` (every direct connection, including redirects) judges an
      IP-literal host in any spelling before aiohttp sees it -- aiohttp does not call the
      resolver for literals -- and then vets every address the resolution returned.
      If ANY is refused, the attempt fails before a socket is opened.
    * ``_wrap_create_connection`` re-checks the exact socket addresses handed to
      happy-eyeballs, as a backstop should a future aiohttp reach it another way.
    * ``_create_connection`` refuses proxied requests: the proxy would resolve and
      connect to the target itself, out of reach of the policy.
    """

    def __init__(self, policy: NetworkPolicy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._policy = policy

    @property
    def policy(self) -> NetworkPolicy:
        return self._policy

    async def _create_connection(
        self, req: ClientRequest, traces: list[Trace], timeout: aiohttp.ClientTimeout
    ) -> ResponseHandler:
        if req.proxy is not None:
            raise PolicyBlockedError("proxied requests cannot be vetted")
        return await super()._create_connection(req, traces, timeout)

    async def _resolve_host(
        self, host: str, port: int, traces: Sequence[Trace] | None = None
    ) -> list[ResolveResult]:
        literal = parse_ip_literal(host)
        if literal is not None and not self._policy.allows(literal):
            raise PolicyBlockedError(f"refused literal address {literal}")
        hosts = await super()._resolve_host(host, port, traces=traces)
        if not hosts:
            raise PolicyBlockedError(f"{host!r} resolved to no addresses")
        self._policy.vet_hosts(result["host"] for result in hosts)
        return hosts

    async def _wrap_create_connection(
        self, *args: Any, **kwargs: Any
    ) -> tuple[asyncio.Transport, ResponseHandler]:
        addr_infos = kwargs.get("addr_infos")
        if not isinstance(addr_infos, list) or not addr_infos:
            # Unknown calling convention: fail closed rather than connect unvetted.
            raise PolicyBlockedError("cannot see the addresses about to be connected")
        self._policy.vet_hosts(str(info[4][0]) for info in addr_infos)
        return await super()._wrap_create_connection(*args, **kwargs)
