"""The pure token-bucket arithmetic and the in-process ``TokenBucket`` on a fake clock."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

import cacheward as cw
from cacheward._core.bucket import BucketState
from cacheward.testing import FakeClock


def test_fresh_bucket_holds_burst_then_refills_at_rate() -> None:
    state = BucketState(rate=10.0, burst=3.0, now=0.0)
    assert [state.reserve(0.0, 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert state.reserve(0.0, 0.0) == -1.0  # empty, and the caller cannot wait
    assert state.retry_after(0.0) == pytest.approx(0.1)
    assert state.reserve(0.1, 0.0) == 0.0  # one token came back after 1 / rate
    assert state.reserve(0.1, 0.0) == -1.0
    assert state.level(100.0) == 3.0  # never more than burst


def test_queued_callers_get_spread_waits_and_the_line_is_bounded_by_max_wait() -> None:
    state = BucketState(rate=10.0, burst=1.0, now=0.0)
    assert state.reserve(0.0, 1.0) == 0.0
    assert state.reserve(0.0, 1.0) == pytest.approx(0.1)  # first in line
    assert state.reserve(0.0, 1.0) == pytest.approx(0.2)  # second in line
    assert state.pending == 2
    assert state.reserve(0.0, 0.25) == -1.0  # third would wait 0.3 > max_wait: refused
    assert state.pending == 2
    assert state.level(0.0) == 0.0  # queueing takes nothing: tokens go only to those who act


def test_claim_takes_only_a_token_that_is_there() -> None:
    state = BucketState(rate=10.0, burst=1.0, now=0.0)
    assert state.reserve(0.0, 0.0) == 0.0
    assert state.reserve(0.0, 1.0) == pytest.approx(0.1)
    assert state.reserve(0.0, 1.0) == pytest.approx(0.2)
    assert state.try_take(0.0) is False  # newcomers do not jump the line
    # Woke too early: sleep again, counting the other waiter as ahead.
    assert state.claim(0.05) == pytest.approx(0.15)
    assert state.claim(0.1) == 0.0
    assert state.claim(0.1) == pytest.approx(0.1)  # the other waiter raced and lost
    state.cancel()
    assert state.pending == 0
    assert state.try_take(0.2) is True


def test_a_stalled_process_waking_every_waiter_at_once_gets_only_the_tokens_there() -> None:
    state = BucketState(rate=10.0, burst=2.0, now=0.0)
    assert [state.reserve(0.0, 0.0) for _ in range(2)] == [0.0, 0.0]
    waits = [state.reserve(0.0, 1.0) for _ in range(10)]
    assert all(w > 0 for w in waits)
    # Everyone oversleeps to t=5: the bucket refilled to burst only, so two act, eight sleep on.
    claims = [state.claim(5.0) for _ in range(10)]
    assert claims.count(0.0) == 2


def test_time_running_backwards_is_treated_as_the_last_time_seen() -> None:
    state = BucketState(rate=1.0, burst=1.0, now=10.0)
    assert state.reserve(10.0, 0.0) == 0.0
    assert state.level(9.5) == 0.0  # a stale "now" refills nothing
    assert state.reserve(9.5, 0.0) == -1.0


@given(
    rate=st.floats(0.5, 1000.0),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0.0, 0.5), min_size=1, max_size=200),
    max_wait=st.floats(0.0, 1.0),
)
def test_waits_never_exceed_max_wait_and_the_line_stays_bounded(
    rate: float, burst: int, gaps: list[float], max_wait: float
) -> None:
    state = BucketState(rate=rate, burst=float(burst), now=0.0)
    now = 0.0
    for gap in gaps:
        now += gap
        wait = state.reserve(now, max_wait)
        assert wait == -1.0 or 0.0 <= wait <= max_wait
        assert state.pending <= rate * max_wait + burst
        assert 0.0 <= state.level(now) <= burst


def test_token_bucket_validates_its_settings() -> None:
    for kwargs, word in [
        ({"rate": 0}, "rate"),
        ({"rate": -1}, "rate"),
        ({"rate": float("inf")}, "rate"),
        ({"rate": 1, "burst": 0.5}, "burst"),
        ({"rate": 1, "burst": 0}, "burst"),
    ]:
        with pytest.raises(cw.ConfigurationError, match=word):
            cw.TokenBucket(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationTypeError, match="rate"):
        cw.TokenBucket(rate="50")  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationTypeError, match="clock"):
        cw.TokenBucket(rate=1, clock=object())  # type: ignore[arg-type]
    assert cw.TokenBucket(rate=0.5).burst == 1.0  # default burst: a second's worth, >= 1
    assert cw.TokenBucket(rate=50).burst == 50.0


def test_token_bucket_takes_refuses_and_counts() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=2, burst=2, clock=clock)
    assert bucket.try_take()
    assert bucket.reserve(0.0) == 0.0
    assert not bucket.try_take()
    with pytest.raises(cw.RateLimited, match="max_wait") as caught:
        bucket.reserve(0.1)
    assert caught.value.retry_after == pytest.approx(0.5)
    assert bucket.reserve(1.0) == pytest.approx(0.5)  # queued
    clock.advance(timedelta(seconds=1))
    assert bucket.available() == pytest.approx(2.0)
    assert bucket.claim() == 0.0
    assert (bucket.taken, bucket.waited, bucket.refused) == (3, 1, 2)
    assert "TokenBucket(rate=2, burst=2" in repr(bucket)


def test_token_bucket_is_thread_safe() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=500, clock=clock)
    taken: list[bool] = []

    def worker() -> None:
        taken.extend(bucket.try_take() for _ in range(200))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(taken) == 500  # exactly the burst: no token lost or taken twice
    assert bucket.taken == 500


def test_token_bucket_async_reserve() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=10, burst=1, clock=clock)

    async def main() -> list[float]:
        waits = [await bucket.areserve(1.0) for _ in range(3)]
        clock.advance(0.1)
        waits.append(await bucket.aclaim())
        await bucket.acancel()
        return waits

    assert asyncio.run(main()) == pytest.approx([0.0, 0.1, 0.2, 0.0])
