"""``BRIDGE_CALLBACK_HOSTS``: which hosts each tenant may aim its callbacks at.

An egress allow list, so that a leaked API key can only send callbacks to hosts its
tenant owns. Comma-separated ``[tenant:]pattern`` entries, a pattern being

* a host name, matched exactly, case-insensitively, after IDNA normalization (as yarl
  normalizes the host of the URL itself) and without a trailing dot;
* ``*.domain``: any subdomain of ``domain``, at any depth, but not ``domain`` itself;
* a CIDR (or a bare address: a single-address network), which matches callback URLs
  whose host is an IP literal inside it, in any spelling the network policy reads
  (``0x7f.1``, ``[::ffff:127.0.0.1]``: an IPv4 network also covers the IPv6 forms that
  embed its addresses). A CIDR never matches a host name, whatever it resolves to.

A tenant to which entries apply (its own, or entries without a tenant) may register only
URLs whose host matches one; a tenant with none is unrestricted. A match never exempts an
address from the network policy: this list only narrows what the policy allows.

IPv6 networks may be written in brackets (``[fd00::]/8``), which is needed when an entry
would otherwise read two ways (``fd00:fd00::/32``: the network, or tenant ``fd00``'s
``fd00::/32``?): such an entry is refused rather than guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from yarl import URL

from bridge.netpolicy import IPNetwork, embedded_ipv4, parse_ip_literal, parse_network

__all__ = ["HOSTS_MESSAGE", "CallbackHosts", "HostPattern", "parse_callback_hosts"]

# The one 422 message: it names nothing the caller sent.
HOSTS_MESSAGE: Final = "callback_url host is not allowed for this tenant"

_TENANT_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_LABEL_RE: Final = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_BRACKETED: Final = re.compile(r"^\[([^\[\]]+)\](/\d+)?$")


@dataclass(frozen=True)
class HostPattern:
    """One entry: ``tenant`` None applies to every tenant. Exactly one of ``name``,
    ``suffix`` (for ``*.domain``: ``.domain``) and ``network`` is set."""

    tenant: str | None
    name: str | None = None
    suffix: str | None = None
    network: IPNetwork | None = None

    def matches(self, host: str) -> bool:
        """``host`` as yarl gives it (``URL.raw_host``)."""
        literal = parse_ip_literal(host)
        if literal is not None:
            if self.network is None:
                return False
            if literal in self.network:
                return True
            inner = embedded_ipv4(literal)
            return inner is not None and inner in self.network
        name = host.rstrip(".").lower()
        if self.name is not None:
            return name == self.name
        if self.suffix is not None:
            return name.endswith(self.suffix) and len(name) > len(self.suffix)
        return False


@dataclass(frozen=True)
class CallbackHosts:
    """The parsed list; empty means every tenant is unrestricted."""

    patterns: tuple[HostPattern, ...] = ()

    def tenants(self) -> set[str]:
        """The tenants named by entries."""
        return {p.tenant for p in self.patterns if p.tenant is not None}

    def applying_to(self, tenant: str) -> tuple[HostPattern, ...]:
        return tuple(p for p in self.patterns if p.tenant in (None, tenant))

    def allows(self, tenant: str, url: str) -> bool:
        """May ``tenant`` register ``url``? The network policy is judged apart, always."""
        patterns = self.applying_to(tenant)
        if not patterns:
            return True
        try:
            host = URL(url).raw_host
        except (TypeError, ValueError):
            return False
        if not host:
            return False
        return any(p.matches(host) for p in patterns)


def _host_name(text: str) -> str:
    """``text`` as yarl would spell it in a URL's host, checked to be a host name."""
    if not text or text != text.strip() or "/" in text or ":" in text or "@" in text:
        raise ValueError("is not a host name")
    try:
        host = URL.build(scheme="http", host=text).raw_host
    except (TypeError, ValueError, UnicodeError):
        raise ValueError("is not a host name") from None
    if not host:
        raise ValueError("is not a host name")
    name = host.rstrip(".")
    if parse_ip_literal(name) is not None:
        raise ValueError("is an IP address: write it as a CIDR (such as 192.0.2.10/32)")
    labels = name.split(".")
    if len(name) > 253 or not all(_LABEL_RE.match(label) for label in labels):
        raise ValueError("is not a host name")
    return name


_NUMERIC: Final = re.compile(r"^[0-9.]+(/[0-9]+)?$")
_IPV6ISH: Final = re.compile(r"^[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*(/[0-9]+)?$")


def _network(text: str) -> IPNetwork | None:
    """The network ``text`` spells; None if it does not look like one; ValueError (host
    bits set, a bad prefix) if it looks like one but is wrong."""
    bracketed = _BRACKETED.match(text)
    if bracketed:
        if ":" not in bracketed.group(1):
            raise ValueError(f"{text!r}: brackets are for IPv6 networks")
        return parse_network(bracketed.group(1) + (bracketed.group(2) or ""))
    if _NUMERIC.match(text) or _IPV6ISH.match(text):
        return parse_network(text)
    return None


def _pattern(tenant: str | None, text: str) -> HostPattern:
    network = _network(text)
    if network is not None:
        return HostPattern(tenant, network=network)
    if text == "*" or text.startswith("*."):
        domain = text[2:]
        if not domain:
            raise ValueError(f"{text!r}: '*' alone would allow every host; name a domain")
        try:
            return HostPattern(tenant, suffix="." + _host_name(domain))
        except ValueError as exc:
            raise ValueError(f"{text!r}: {domain!r} {exc}") from None
    if "*" in text:
        raise ValueError(f"{text!r}: a wildcard is only '*.' before a domain")
    try:
        return HostPattern(tenant, name=_host_name(text))
    except ValueError as exc:
        raise ValueError(f"{text!r} {exc}") from None


def _entry(entry: str) -> HostPattern:
    """``pattern`` or ``tenant:pattern``; an entry that reads both ways is refused."""
    readings: list[HostPattern] = []
    errors: list[ValueError] = []
    try:
        readings.append(_pattern(None, entry))
    except ValueError as exc:
        errors.append(exc)
    tenant, sep, rest = entry.partition(":")
    if sep and _TENANT_RE.match(tenant):
        try:
            readings.append(_pattern(tenant, rest.strip()))
        except ValueError as exc:
            errors.insert(0, exc)  # the likelier meaning: its problem is the one to tell
    if len(readings) == 2:
        net = readings[0].network
        assert net is not None  # only an IPv6 network reads as tenant:pattern too
        raise ValueError(
            f"{entry!r} reads both as the network {net} and as tenant {tenant!r}'s entry; "
            f"write [{net.network_address}]/{net.prefixlen} for the network, or "
            f"{tenant}:[{rest.strip().split('/')[0]}]/… for the tenant's"
        )
    if readings:
        return readings[0]
    errors.sort(key=lambda e: "host bits set" not in str(e))  # the likeliest mistake first
    raise errors[0]


def parse_callback_hosts(text: str) -> CallbackHosts:
    """Parse the variable strictly; ValueError naming the first bad entry. Nothing at all
    (the variable unset) is an empty list: every tenant unrestricted."""
    patterns: list[HostPattern] = []
    if not text.strip():
        return CallbackHosts()
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            raise ValueError("an empty entry (two commas, or one at an end)")
        patterns.append(_entry(entry))
    return CallbackHosts(tuple(dict.fromkeys(patterns)))
