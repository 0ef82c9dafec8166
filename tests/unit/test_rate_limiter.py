"""The rate limiter on a virtual clock: its spacing and window, with no real waiting."""

from __future__ import annotations

import itertools

import pytest

from bridge.pacing import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        # Virtual: the wait passes at once, and the clock with it.
        self.slept.append(seconds)
        self.now += seconds


def test_try_acquire_takes_only_a_slot_free_now() -> None:
    clock = Clock()
    limiter = RateLimiter(100.0, clock=clock)
    assert limiter.try_acquire()
    assert not limiter.try_acquire()  # the next slot is 10.2 ms away
    clock.now += 0.0101
    assert not limiter.try_acquire()
    clock.now += 0.0002
    assert limiter.try_acquire()


def test_try_acquire_never_goes_out_during_a_pause_nor_spends_a_slot() -> None:
    clock = Clock()
    limiter = RateLimiter(100.0, clock=clock)
    assert not limiter.try_acquire(lambda: 0.5)
    assert limiter.try_acquire(lambda: 0.0)  # the refused try took no slot


def test_try_acquire_holds_the_sliding_window() -> None:
    clock = Clock()
    limiter = RateLimiter(2.0, clock=clock)  # 0.51 s apart, at most 2 per 1.05 s
    assert limiter.try_acquire()
    clock.now += 0.51
    assert limiter.try_acquire()
    clock.now += 0.51
    assert not limiter.try_acquire()  # the first send is 1.02 s old
    clock.now += 0.03
    assert limiter.try_acquire()


async def test_acquire_waits_with_the_given_sleep() -> None:
    clock = Clock()
    limiter = RateLimiter(50.0, clock=clock, sleep=clock.sleep)
    stamps = []
    for _ in range(5):
        await limiter.acquire()
        stamps.append(clock.now)
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert gaps == pytest.approx([0.0204] * 4)
    # A pause holds the request on the same clock, then the spacing goes on.
    until = clock.now + 2.0
    await limiter.acquire(lambda: until - clock.now)
    assert clock.now == pytest.approx(until)
