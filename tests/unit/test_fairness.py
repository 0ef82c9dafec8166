"""The delivery gate: caps on attempts in flight per host and per tenant, and the circuit."""

from __future__ import annotations

import pytest

from bridge.fairness import (
    FAILURES_TO_OPEN,
    MAX_PROBE_WAIT,
    CircuitEvent,
    DeliveryGate,
    Refusal,
    Ticket,
    Verdict,
    host_key,
    verdict,
)
from tests.conftest import FakeClock


def gate(host_cap: int = 2, tenant_cap: int = 3) -> tuple[DeliveryGate, FakeClock]:
    clock = FakeClock(1000.0)
    return DeliveryGate(host_cap=host_cap, tenant_cap=tenant_cap, clock=clock), clock


def admitted(g: DeliveryGate, host: str = "h:80", tenant: str = "t") -> Ticket:
    t = g.admit(host, tenant)
    assert isinstance(t, Ticket), t
    return t


@pytest.mark.parametrize(
    ("url", "key"),
    [
        ("http://Example.COM/x", "example.com:80"),
        ("https://example.com/x", "example.com:443"),
        ("https://user:pw@example.com:8443/x?q", "example.com:8443"),
        ("http://127.0.0.1:9000/", "127.0.0.1:9000"),
        ("http://[::1]:9000/", "[::1]:9000"),
    ],
)
def test_a_host_is_its_name_and_port(url: str, key: str) -> None:
    assert host_key(url) == key


@pytest.mark.parametrize(
    ("result", "status", "seen"),
    [
        ("timeout", None, Verdict.FAILED),
        ("connection_error", None, Verdict.FAILED),
        ("http_error", 500, Verdict.FAILED),
        ("http_error", 503, Verdict.FAILED),
        ("http_error", 404, Verdict.ANSWERED),
        ("http_error", 410, Verdict.ANSWERED),
        ("http_error", 302, Verdict.ANSWERED),
        ("success", 200, Verdict.ANSWERED),
        ("blocked", None, Verdict.NOTHING),
        (None, None, Verdict.NOTHING),
    ],
)
def test_what_an_attempt_says_about_its_host(
    result: str | None, status: int | None, seen: Verdict
) -> None:
    assert verdict(result, status) is seen


def test_the_host_cap_and_the_tenant_cap() -> None:
    g, _ = gate(host_cap=2, tenant_cap=3)
    a, b = admitted(g, "h:80", "t"), admitted(g, "h:80", "t")
    assert g.admit("h:80", "u") is Refusal.HOST
    assert g.closed_hosts() == (["h:80"], [])
    admitted(g, "other:80", "t")
    assert g.admit("third:80", "t") is Refusal.TENANT
    assert g.full_tenants() == ["t"]
    g.finish(a, Verdict.ANSWERED)
    assert g.closed_hosts() == ([], []) and g.full_tenants() == []
    assert isinstance(g.admit("h:80", "u"), Ticket)
    g.finish(b, Verdict.ANSWERED)
    assert g.in_flight("h:80") == 1


def test_five_failures_open_the_circuit_and_probes_go_one_at_a_time() -> None:
    g, clock = gate(host_cap=8)
    events = [g.finish(admitted(g), Verdict.FAILED) for _ in range(FAILURES_TO_OPEN)]
    assert events == [None] * (FAILURES_TO_OPEN - 1) + [CircuitEvent.OPENED]
    assert g.open_circuits() == 1 and g.is_open("h:80")
    assert g.admit("h:80", "t") is Refusal.CIRCUIT
    assert g.closed_hosts() == ([], ["h:80"])

    waits = []
    for _ in range(9):
        due = g.next_probe_at()
        assert due is not None
        waits.append(due - clock())
        clock.now = due - 0.001
        assert g.admit("h:80", "t") is Refusal.CIRCUIT
        clock.now = due
        probe = admitted(g)
        assert probe.probe
        assert g.admit("h:80", "t") is Refusal.CIRCUIT  # one probe at a time
        assert g.closed_hosts() == ([], ["h:80"])
        assert g.finish(probe, Verdict.FAILED) is None
    assert waits == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert max(waits) == MAX_PROBE_WAIT

    clock.advance(60)
    probe = admitted(g)
    assert g.finish(probe, Verdict.ANSWERED) is CircuitEvent.CLOSED
    assert g.open_circuits() == 0 and g.closed_hosts() == ([], [])
    assert not admitted(g).probe


def test_an_answer_resets_the_count_and_4xx_or_blocked_count_for_nothing() -> None:
    g, _ = gate(host_cap=8)
    for _ in range(FAILURES_TO_OPEN - 1):
        g.finish(admitted(g), Verdict.FAILED)
    g.finish(admitted(g), Verdict.ANSWERED)  # a 4xx: the host is alive
    for _ in range(FAILURES_TO_OPEN - 1):
        g.finish(admitted(g), Verdict.FAILED)
    g.finish(admitted(g), Verdict.NOTHING)  # blocked: never reached it
    assert g.open_circuits() == 0
    assert g.finish(admitted(g), Verdict.FAILED) is CircuitEvent.OPENED


def test_a_late_answer_of_an_attempt_sent_before_the_circuit_opened_closes_it() -> None:
    g, _ = gate(host_cap=8)
    late = admitted(g)
    for _ in range(FAILURES_TO_OPEN):
        g.finish(admitted(g), Verdict.FAILED)
    assert g.is_open("h:80")
    assert g.finish(late, Verdict.ANSWERED) is CircuitEvent.CLOSED
    assert not g.is_open("h:80")


def test_a_probe_not_sent_keeps_the_wait() -> None:
    g, clock = gate(host_cap=8)
    for _ in range(FAILURES_TO_OPEN):
        g.finish(admitted(g), Verdict.FAILED)
    clock.advance(1)
    g.finish(admitted(g), Verdict.NOTHING)
    assert g.next_probe_at() == clock() + 1
