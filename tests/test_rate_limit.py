"""``rate_limit``: every attempt takes a token; the burst + rate * T bound, and its sibling."""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest
from hypothesis import find, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward._limit import deadline_scope
from cacheward.testing import FakeClock

# A schedule: requests as (gap since the previous one, how long that caller may wait).
schedules = st.lists(
    st.tuples(st.floats(0.0, 0.3), st.sampled_from([0.0, 0.05, 0.5])), min_size=1, max_size=150
)


def backend_times(
    schedule: list[tuple[float, float]], *, rate: float, burst: int, on: bool
) -> list[float]:
    """Replay ``schedule`` through a bucket; return when each admitted attempt hits the backend."""
    clock = FakeClock(monotonic_start=0.0)
    bucket = cw.TokenBucket(rate=rate, burst=burst, clock=clock)
    times: list[float] = []
    sleepers: list[tuple[float, float]] = []
    now = 0.0
    for gap, max_wait in schedule:
        now += gap
        clock.advance(gap)
        if not on:  # the mechanism switched off: every request calls the backend at once
            times.append(now)
            continue
        try:
            wait = bucket.reserve(max_wait)
        except cw.RateLimited:
            continue
        if wait == 0.0:
            times.append(now)
        else:
            sleepers.append((now + wait, now + max_wait))
        # Wake the sleepers due by now, in due order, as a driver would.
        due = sorted(s for s in sleepers if s[0] <= now)
        for wake, give_up in due:
            sleepers.remove((wake, give_up))
            again = bucket.claim()
            if again == 0.0:
                times.append(now)
            elif now + again <= give_up:
                sleepers.append((now + again, give_up))
            else:
                bucket.cancel()
    return sorted(times)


def worst_excess(times: list[float], *, rate: float, burst: int) -> float:
    """The largest (attempts in [t_i, t_j]) - (burst + rate * (t_j - t_i)) over all windows."""
    worst = float("-inf")
    for i, start in enumerate(times):
        for j in range(i, len(times)):
            worst = max(worst, (j - i + 1) - (burst + rate * (times[j] - start)))
    return worst


@given(schedule=schedules, rate=st.sampled_from([1.0, 5.0, 20.0]), burst=st.integers(1, 5))
def test_attempts_in_every_window_stay_within_burst_plus_rate_t(
    schedule: list[tuple[float, float]], rate: float, burst: int
) -> None:
    times = backend_times(schedule, rate=rate, burst=burst, on=True)
    assert worst_excess(times, rate=rate, burst=burst) <= 1e-6


def test_sibling_without_the_limiter_the_bound_is_violated() -> None:
    found = find(
        st.tuples(schedules, st.sampled_from([1.0, 5.0]), st.integers(1, 5)),
        lambda case: (
            worst_excess(
                backend_times(case[0], rate=case[1], burst=case[2], on=False),
                rate=case[1],
                burst=case[2],
            )
            > 1e-6
        ),
        settings=settings(database=None, derandomize=True),
    )
    assert found is not None


def test_decorator_waits_for_a_token_then_refuses_beyond_max_wait() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=10, burst=1, clock=clock)
    calls: list[float] = []

    @cw.rate_limit(bucket, max_wait=0.15)
    def fetch(key: str) -> str:
        calls.append(clock.monotonic())
        return key.upper()

    assert fetch("a") == "A"
    assert fetch("b") == "B"  # waited 0.1 s on the fake clock
    assert clock.sleeps == [pytest.approx(0.1)]
    assert calls[1] - calls[0] == pytest.approx(0.1)
    assert bucket.reserve(0.2) > 0  # someone else queued for the next token
    with pytest.raises(cw.RateLimited) as caught:
        fetch("c")
    assert caught.value.retry_after is not None
    assert len(calls) == 2


def test_decorator_on_async_functions_and_signatures_are_kept() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=10, burst=2, clock=clock)

    @cw.rate_limit(bucket, max_wait=0.0)
    async def fetch(key: str, *, scale: int = 1) -> int:
        return len(key) * scale

    async def main() -> list[Any]:
        out: list[Any] = [await fetch("ab"), await fetch("abc", scale=2)]
        try:
            await fetch("x")
        except cw.RateLimited as exc:
            out.append(type(exc))
        return out

    assert asyncio.run(main()) == [2, 6, cw.RateLimited]
    assert inspect.iscoroutinefunction(fetch)
    assert inspect.signature(fetch) == inspect.signature(fetch.__wrapped__)  # type: ignore[attr-defined]
    assert list(inspect.signature(fetch).parameters) == ["key", "scale"]


def test_waits_honour_the_deadline() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=1, clock=clock)

    @cw.rate_limit(bucket, max_wait=5.0)
    def fetch() -> int:
        return 1

    assert fetch() == 1
    with deadline_scope(clock.monotonic() + 0.5), pytest.raises(cw.RateLimited):
        fetch()  # the token is 1 s away, the deadline 0.5 s: refused at once, no sleep
    assert clock.sleeps == []
    with deadline_scope(clock.monotonic() + 2.0):
        assert fetch() == 1
    assert clock.sleeps == [pytest.approx(1.0)]


def test_number_of_waiters_is_bounded() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1000, burst=1, clock=clock)
    started = 0

    @cw.rate_limit(bucket, max_wait=1.0, max_waiters=3)
    async def fetch() -> None:
        nonlocal started
        started += 1

    async def main() -> list[BaseException | None]:
        return await asyncio.gather(*(fetch() for _ in range(10)), return_exceptions=True)

    results = asyncio.run(main())
    # One token there now, three callers may wait for the next ones; the rest fail fast.
    assert results.count(None) == 4
    assert sum(isinstance(r, cw.RateLimited) for r in results) == 6
    assert started == 4


def test_thousand_concurrent_callers_respect_the_bound_on_a_fake_clock() -> None:
    clock = FakeClock(monotonic_start=0.0)
    bucket = cw.TokenBucket(rate=50, burst=20, clock=clock)
    attempts: list[float] = []

    @cw.rate_limit(bucket, max_wait=0.5)
    async def fetch(i: int) -> int:
        attempts.append(clock.monotonic())
        return i

    async def main() -> list[Any]:
        return await asyncio.gather(*(fetch(i) for i in range(1000)), return_exceptions=True)

    results = asyncio.run(main())
    refused = sum(isinstance(r, cw.RateLimited) for r in results)
    assert len(attempts) + refused == 1000
    # (A fake clock's sleeps move time for everyone, so waiters free tokens for later callers;
    # what must hold whatever the interleaving is the window bound.)
    assert len(attempts) <= 20 + 50 * (clock.monotonic() - attempts[0]) + 1e-6
    assert worst_excess(sorted(attempts), rate=50, burst=20) <= 1e-6


def test_rate_limit_validates_at_decoration_time() -> None:
    with pytest.raises(cw.ConfigurationTypeError, match="limiter"):
        cw.rate_limit(object())  # type: ignore[arg-type]
    bucket = cw.TokenBucket(rate=1)
    with pytest.raises(cw.ConfigurationError, match="max_wait"):
        cw.rate_limit(bucket, max_wait=-1)
    with pytest.raises(cw.ConfigurationError, match="max_waiters"):
        cw.rate_limit(bucket, max_waiters=-1)
    with pytest.raises(cw.ConfigurationTypeError, match="rate_limit"):
        cw.rate_limit(bucket)(42)  # type: ignore[arg-type]
