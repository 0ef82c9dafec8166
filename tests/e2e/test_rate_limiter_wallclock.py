"""The rate limiter on the real clock and a busy event loop: where requests actually leave.

tests/unit/test_rate_limiter.py checks the same rules on a virtual clock; these show they
hold when wake-ups come late, which only real time can.
"""

from __future__ import annotations

import asyncio
import time

from bridge.pacing import RateLimiter


async def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(200.0)  # 5 ms apart
    stamps = []
    for _ in range(20):
        await limiter.acquire()
        stamps.append(time.monotonic())
    # Slots are 1/rps apart: n requests span at least (n - 1)/rps, in every stretch of them.
    for i in range(len(stamps)):
        for j in range(i + 1, len(stamps)):
            assert stamps[j] - stamps[i] >= (j - i - 1) * 0.005


async def test_rate_limiter_holds_requests_during_a_pause() -> None:
    limiter = RateLimiter(1000.0)
    until = time.monotonic() + 0.2
    started = time.monotonic()
    await asyncio.wait_for(limiter.acquire(lambda: until - time.monotonic()), 5)
    assert time.monotonic() >= until
    assert time.monotonic() - started >= 0.2 - 0.001


async def test_rate_limiter_never_lets_a_second_hold_more_than_the_rate() -> None:
    """Many requests at once, as the scheduler makes them: no one-second window (measured
    where they leave) holds more than rps, even with the event loop busy between them."""
    limiter = RateLimiter(50.0)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        stamps.append(time.monotonic())
        time.sleep(0.002)  # a busy loop: the next waiter wakes late

    await asyncio.gather(*(one() for _ in range(120)))
    stamps.sort()
    for i, start in enumerate(stamps):
        inside = [t for t in stamps[i:] if t - start < 1.0]
        assert len(inside) <= 50
