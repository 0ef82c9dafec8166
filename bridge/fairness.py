"""Fairness of callback delivery: caps on attempts in flight, and a circuit per host.

Pure bookkeeping on an injected clock, kept by one process (the caps and circuits are
per process: replicas each keep their own). The scheduler asks ``admit`` before an
attempt, tells ``finish`` how it went, and bounds each claim by ``rooms`` (what each host
and tenant has left) and the held hosts of ``closed_hosts``, so that due work for a full
host or tenant is claimed around, not claimed and left sitting.

A host is a callback URL's host and port (``host_key``). Its circuit opens after
``FAILURES_TO_OPEN`` consecutive failed attempts (a timeout, a connection error, a 5xx).
While open, one attempt at a time probes it, the waits between probes growing from
``FIRST_PROBE_WAIT`` to at most ``MAX_PROBE_WAIT``; every other attempt bound for it
waits, unclaimed, spending nothing. An answer from the host (a probe's, or a late one's
of an attempt sent before the circuit opened) closes it. Any answer below 500 counts as
the host answering: a 4xx is the receiver's verdict on the callback, not a dead host. A
`blocked by network policy` attempt never reached the host and counts for nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from yarl import URL

FAILURES_TO_OPEN: Final = 5
FIRST_PROBE_WAIT: Final = 1.0
MAX_PROBE_WAIT: Final = 60.0


def host_key(url: str) -> str:
    """The host and port a callback URL reaches (lower case, the scheme's port if none)."""
    u = URL(url)
    host = (u.raw_host or "").lower()
    return f"[{host}]:{u.port}" if ":" in host else f"{host}:{u.port}"


class Verdict(Enum):
    """What an attempt says about its host."""

    FAILED = "failed"  # a timeout, a connection error, a 5xx
    ANSWERED = "answered"  # any other HTTP answer
    NOTHING = "nothing"  # never reached the host (blocked, or not sent at all)


def verdict(result: str | None, status: int | None) -> Verdict:
    """``result`` is an attempt's metric label (``delivery.AttemptResult.result``)."""
    if result in ("timeout", "connection_error"):
        return Verdict.FAILED
    if result == "http_error" and status is not None and status >= 500:
        return Verdict.FAILED
    if result in ("success", "http_error"):
        return Verdict.ANSWERED
    return Verdict.NOTHING


class Refusal(Enum):
    HOST = "host"  # the host's cap is reached
    TENANT = "tenant"  # the tenant's cap is reached
    CIRCUIT = "circuit"  # the host's circuit is open and no probe may go now


@dataclass(frozen=True, slots=True)
class Ticket:
    """An admitted attempt: hand it back to ``finish``."""

    host: str
    tenant: str
    probe: bool


@dataclass(slots=True)
class _Circuit:
    failures: int = 0  # consecutive, while closed
    open: bool = False
    probing: bool = False
    wait: float = 0.0  # the wait before the next probe
    next_probe_at: float = 0.0


class CircuitEvent(Enum):
    OPENED = "opened"
    CLOSED = "closed"


class DeliveryGate:
    def __init__(self, *, host_cap: int, tenant_cap: int, clock: Callable[[], float]) -> None:
        self.host_cap = host_cap
        self.tenant_cap = tenant_cap
        self.clock = clock
        self._hosts: dict[str, int] = {}  # attempts in flight per host
        self._tenants: dict[str, int] = {}
        self._circuits: dict[str, _Circuit] = {}

    # -- asking ----------------------------------------------------------------------------

    def admit(self, host: str, tenant: str) -> Ticket | Refusal:
        """Count an attempt in, or say why it may not start now."""
        c = self._circuits.get(host)
        probe = False
        if c is not None and c.open:
            if c.probing or self.clock() < c.next_probe_at:
                return Refusal.CIRCUIT
            probe = True
        if self._hosts.get(host, 0) >= self.host_cap:
            return Refusal.HOST
        if self._tenants.get(tenant, 0) >= self.tenant_cap:
            return Refusal.TENANT
        if probe:
            assert c is not None
            c.probing = True
        self._hosts[host] = self._hosts.get(host, 0) + 1
        self._tenants[tenant] = self._tenants.get(tenant, 0) + 1
        return Ticket(host, tenant, probe)

    def finish(self, ticket: Ticket, seen: Verdict) -> CircuitEvent | None:
        """An admitted attempt ended (or was never sent: ``Verdict.NOTHING``)."""
        _down(self._hosts, ticket.host)
        _down(self._tenants, ticket.tenant)
        c = self._circuits.get(ticket.host)
        if seen is Verdict.ANSWERED:
            if c is None:
                return None
            del self._circuits[ticket.host]
            return CircuitEvent.CLOSED if c.open else None
        if c is None:
            if seen is Verdict.NOTHING:
                return None
            c = self._circuits[ticket.host] = _Circuit()
        if ticket.probe:
            c.probing = False
            if seen is Verdict.FAILED:
                c.wait = min(MAX_PROBE_WAIT, c.wait * 2)
            c.next_probe_at = self.clock() + c.wait
            return None
        if seen is Verdict.NOTHING or c.open:
            return None
        c.failures += 1
        if c.failures < FAILURES_TO_OPEN:
            return None
        c.open, c.wait = True, FIRST_PROBE_WAIT
        c.next_probe_at = self.clock() + c.wait
        return CircuitEvent.OPENED

    # -- what the claim should leave alone -------------------------------------------------

    def closed_hosts(self) -> tuple[list[str], list[str]]:
        """(hosts at their cap, hosts whose open circuit lets no probe go now)."""
        now = self.clock()
        full = [h for h, n in self._hosts.items() if n >= self.host_cap]
        held = [
            h for h, c in self._circuits.items() if c.open and (c.probing or now < c.next_probe_at)
        ]
        return sorted(full), sorted(held)

    def rooms(self) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        """(each host with attempts in flight and the room it has left, the same per tenant)."""
        return (
            sorted((h, max(0, self.host_cap - n)) for h, n in self._hosts.items()),
            sorted((t, max(0, self.tenant_cap - n)) for t, n in self._tenants.items()),
        )

    def full_tenants(self) -> list[str]:
        return sorted(t for t, n in self._tenants.items() if n >= self.tenant_cap)

    def is_open(self, host: str) -> bool:
        c = self._circuits.get(host)
        return c is not None and c.open

    def open_circuits(self) -> int:
        return sum(1 for c in self._circuits.values() if c.open)

    def next_probe_at(self) -> float | None:
        """When the earliest held circuit lets a probe go (None: none waits for that)."""
        times = [c.next_probe_at for c in self._circuits.values() if c.open and not c.probing]
        return min(times, default=None)

    def in_flight(self, host: str) -> int:
        return self._hosts.get(host, 0)


def _down(counts: dict[str, int], key: str) -> None:
    n = counts.get(key, 0) - 1
    if n > 0:
        counts[key] = n
    else:
        counts.pop(key, None)
