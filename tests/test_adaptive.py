"""``cw.AdaptiveLimit``: the pure core's rules, the sync and async drivers, and how it composes."""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import random
import threading
import time
from typing import Any

import pytest

import cacheward as cw
from cacheward._core.adaptive import Admission, Aimd, Gradient, Throttle
from cacheward.testing import FakeClock, SimClock, run_simulated

# --------------------------------------------------------------------------------------------
# The pure core


def feed(algo: Gradient | Aimd, now: float, *, rtt: float, n: int, dropped: bool = False) -> float:
    """One window of ``n`` samples that started at ``now`` with ``n`` running; returns the end."""
    for _ in range(n):
        algo.on_sample(now + rtt, started=now, rtt=rtt, inflight=n, dropped=dropped)
    return now + rtt


def test_gradient_probes_the_baseline_first_then_grows_while_latency_is_flat() -> None:
    g = Gradient(initial=20, floor=1, ceiling=100, now=0.0, probe_interval=1000.0)
    assert g.probing
    assert g.limit == 1  # probe_concurrency
    t = feed(g, 0.0, rtt=0.05, n=10)
    assert not g.probing
    assert g.baseline == pytest.approx(0.05)
    assert g.limit == 20
    t = feed(g, t, rtt=0.05, n=20)  # the two windows right after a probe refill: no growth
    t = feed(g, t, rtt=0.05, n=20)
    assert g.estimate == 20
    t = feed(g, t, rtt=0.05, n=20)
    assert g.estimate == pytest.approx(20.8)  # +4 % of itself


def test_gradient_jumps_to_the_concurrency_served_without_queueing() -> None:
    g = Gradient(initial=40, floor=1, ceiling=100, now=0.0, probe_interval=1000.0)
    t = feed(g, 0.0, rtt=0.05, n=10)
    feed(g, t, rtt=0.1, n=40)  # twice the baseline: 20 ran without queueing
    assert g.estimate == pytest.approx(40 / 2.0)  # multiplied by the gradient b / m


def test_gradient_holds_inside_the_tolerance_and_does_not_grow_an_unfilled_limit() -> None:
    g = Gradient(initial=40, floor=1, ceiling=100, now=0.0, probe_interval=1000.0)
    t = feed(g, 0.0, rtt=0.05, n=10)
    t = feed(g, t, rtt=0.05 * 1.04, n=40)
    assert g.estimate == 40  # within the tolerance: hold
    t = feed(g, t, rtt=0.05, n=40)  # the second refill window: no growth
    assert g.estimate == 40
    t = feed(g, t, rtt=0.05, n=40)
    assert g.estimate == pytest.approx(41.6)  # flat and filled: +4 % of itself
    t = feed(g, t, rtt=0.05, n=15)  # flat, but only 15 of 42 slots used
    assert g.estimate == pytest.approx(30.0)  # not raised: trimmed to twice the use


def test_gradient_growth_is_a_fraction_of_the_limit_not_a_slot() -> None:
    """Four processes at one slot each on a backend of four: each steps by 4 % of its limit
    (the sum by 4 %), not by one slot (the sum by 25 %)."""
    g = Gradient(initial=1, floor=0.1, ceiling=100, now=0.0, probe_interval=1000.0)
    t = feed(g, 0.0, rtt=0.05, n=10)

    def window(t: float, rtt: float) -> float:  # ten attempts one after the other
        for _ in range(10):
            g.on_sample(t + rtt, started=t, rtt=rtt, inflight=1, dropped=False)
            t += rtt
        return t

    for _ in range(3):  # two refill windows, then one that grows
        t = window(t, 0.05)
    assert g.limit == pytest.approx(1.04)
    window(t, 0.05 * 1.25)  # 25 % queueing: x 1 / 1.25
    assert g.limit == pytest.approx(1.04 / 1.25)
    assert g.limit < 1.0  # below one slot: held part of the time


def test_gradient_backs_off_on_overload_failures_and_stays_within_floor_and_ceiling() -> None:
    g = Gradient(initial=10, floor=4, ceiling=10, now=0.0, probe_interval=1000.0)
    t = feed(g, 0.0, rtt=0.05, n=10)
    for _ in range(30):
        t = feed(g, t, rtt=1.0, n=10, dropped=True)
    assert g.limit == 4
    for _ in range(60):
        t = feed(g, t, rtt=0.05, n=math.ceil(g.limit))
    assert g.limit == 10


def test_gradient_probes_again_after_the_interval() -> None:
    g = Gradient(initial=10, floor=1, ceiling=100, now=0.0, probe_interval=5.0)
    t = feed(g, 0.0, rtt=0.05, n=10)
    while not g.probing and t < 6.0:
        t = feed(g, t, rtt=0.05, n=int(g.limit))
    assert g.probing
    assert 5.0 <= t < 6.0
    t = feed(g, t, rtt=0.2, n=10)  # a probe reads high: alone, it may have run under load
    assert g.baseline == pytest.approx(0.05)
    while not g.probing:
        t = feed(g, t, rtt=0.2, n=int(g.limit))
    feed(g, t, rtt=0.2, n=10)  # the next probe agrees: the backend got slower
    assert g.baseline == pytest.approx(0.2)


def test_sibling_a_lone_high_probe_taken_at_once_lifts_the_baseline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check above fails when every probe is taken as it reads."""

    def take(self: Gradient, latency: float) -> None:
        self.baseline = latency

    monkeypatch.setattr(Gradient, "_probed", take)
    g = Gradient(initial=10, floor=1, ceiling=100, now=0.0, probe_interval=5.0)
    t = feed(g, 0.0, rtt=0.05, n=10)
    while not g.probing:
        t = feed(g, t, rtt=0.05, n=int(g.limit))
    feed(g, t, rtt=0.2, n=10)
    assert g.baseline == pytest.approx(0.2)


def test_a_baseline_probed_under_load_is_lowered_by_a_faster_window() -> None:
    g = Gradient(initial=10, floor=1, ceiling=100, now=0.0, probe_interval=1000.0)
    t = feed(g, 0.0, rtt=0.1, n=10)  # the probe ran while other processes loaded the backend
    assert g.baseline == pytest.approx(0.1)
    t = feed(g, t, rtt=0.15, n=10)  # slower: the baseline stays
    assert g.baseline == pytest.approx(0.1)
    t = feed(g, t, rtt=0.05, n=10)
    assert g.baseline == pytest.approx(0.1 - 0.25 * 0.05)  # a quarter of the way down
    for _ in range(30):
        t = feed(g, t, rtt=0.05, n=10)
    assert g.baseline == pytest.approx(0.05, rel=0.01)  # the lowest seen, in a few windows


def probe_times(seed: int | None, *, jitter: float = 0.15) -> list[float]:
    """When a gradient limit with ``probe_interval=5`` starts its next three probes."""
    rng = None if seed is None else random.Random(seed).random
    g = Gradient(
        initial=10, floor=1, ceiling=100, now=0.0, probe_interval=5.0, jitter=jitter, random=rng
    )
    t = feed(g, 0.0, rtt=0.01, n=10)
    times: list[float] = []
    while len(times) < 3:
        t = feed(g, t, rtt=0.01, n=int(g.limit))
        if g.probing:
            times.append(t)
            t = feed(g, t, rtt=0.01, n=10)
    return times


def test_probes_are_jittered_by_the_injected_random_source() -> None:
    plain = probe_times(None)
    # A probe window, then 5 s (to the end of the window that passes it).
    assert [round(b - a, 2) for a, b in itertools.pairwise(plain)] == [5.02, 5.02]
    jittered = probe_times(1)
    assert jittered == probe_times(1)  # the same seed, the same schedule
    assert jittered != probe_times(2)
    gaps = [b - a for a, b in itertools.pairwise(jittered)]
    # Each gap is probe_interval * (1 + 0.15 u), plus the probe window and window rounding.
    assert all(5.0 <= gap <= 5.0 * 1.15 + 0.05 for gap in gaps), gaps
    assert len({round(gap, 2) for gap in gaps}) > 1
    assert probe_times(1, jitter=0.0) == plain


def test_aimd_adds_one_per_filled_window_and_multiplies_on_failures() -> None:
    a = Aimd(initial=10, floor=1, ceiling=100, now=0.0)
    t = feed(a, 0.0, rtt=0.05, n=10)
    assert a.estimate == 11
    t = feed(a, t, rtt=5.0, n=11)  # latency alone does not move it
    assert a.estimate == 12
    for i in range(12):  # one failure in a window: x backoff
        a.on_sample(t + 0.05, started=t, rtt=0.05, inflight=12, dropped=i == 0)
    assert a.estimate == pytest.approx(12 * 0.9)
    feed(a, t + 0.05, rtt=0.05, n=12, dropped=True)  # nothing got through: halved
    assert a.estimate == pytest.approx(12 * 0.9 / 2)


def test_samples_of_attempts_started_before_the_window_are_ignored() -> None:
    a = Aimd(initial=10, floor=1, ceiling=100, now=10.0)
    for _ in range(50):
        a.on_sample(11.0, started=9.0, rtt=2.0, inflight=10, dropped=True)
    assert a.estimate == 10


def test_admission_serves_the_partition_below_its_share_first_and_lends_the_rest() -> None:
    algo = Aimd(initial=4, floor=4, ceiling=4, now=0.0)
    adm = Admission(algo, {"hi": 0.5, "lo": 0.5})
    assert [adm.try_admit("lo", 0.0) for _ in range(5)] == [1, 2, 3, 4, 0]  # lo borrows hi's
    adm.enqueue("lo", "lo-1")
    adm.enqueue("hi", "hi-1")
    adm.release(1.0, "lo", started=0.0, rtt=1.0, inflight=4, dropped=None)
    assert adm.to_notify(1.0) == ["hi-1"]  # hi is below its share: it goes first
    assert adm.resume("hi", "hi-1", 1.0, admit=True) == 4
    assert adm.to_notify(1.0) == []


def test_admission_counts_notified_waiters_so_one_free_slot_wakes_one() -> None:
    adm = Admission(Aimd(initial=1, floor=1, ceiling=1, now=0.0), {"default": 1.0})
    assert adm.try_admit("default", 0.0) == 1
    for w in ("a", "b"):
        adm.enqueue("default", w)
    adm.release(1.0, "default", started=0.0, rtt=1.0, inflight=1, dropped=None)
    assert adm.to_notify(1.0) == ["a"]
    assert adm.to_notify(1.0) == []
    assert adm.try_admit("default", 1.0) == 0  # a newcomer cannot take a's slot
    assert adm.resume("default", "a", 1.0, admit=False) == 0  # a's caller is gone
    assert adm.to_notify(1.0) == ["b"]


def test_a_fractional_slot_is_held_at_most_its_fraction_of_the_time() -> None:
    """A limit of 1.25: one slot always, a second one open again only after it has been
    free three times as long as it was held (``d * (1 - f) / f``)."""
    adm = Admission(Aimd(initial=1.25, floor=1.25, ceiling=1.25, now=0.0), {"default": 1.0})
    assert [adm.try_admit("default", 0.0) for _ in range(3)] == [1, 2, 0]
    adm.release(1.0, "default", started=0.0, rtt=1.0, inflight=2, dropped=None)
    # Held for 1 s by the second attempt: 0.75 slot-seconds owed, paid at 0.25 per second.
    assert adm.opens_at(1.0) == pytest.approx(4.0)
    assert adm.try_admit("default", 3.9) == 0
    assert adm.opens_at(3.9) == pytest.approx(4.0)
    assert adm.try_admit("default", 4.0) == 2
    adm.release(4.0, "default", started=4.0, rtt=0.0, inflight=2, dropped=None)
    assert adm.opens_at(4.0) is None  # nothing owed: open, only a finishing attempt matters


def test_a_limit_below_one_slot_holds_its_slot_part_of_the_time() -> None:
    adm = Admission(Aimd(initial=0.5, floor=0.5, ceiling=0.5, now=0.0), {"default": 1.0})
    assert adm.try_admit("default", 0.0) == 1
    assert adm.try_admit("default", 0.0) == 0
    adm.release(2.0, "default", started=0.0, rtt=2.0, inflight=1, dropped=None)
    assert adm.try_admit("default", 3.0) == 0  # owes 1 slot-second, paid at 0.5 per second
    assert adm.try_admit("default", 4.0) == 1


def test_throttle_is_the_sre_formula() -> None:
    th = Throttle(k=2.0, window=10.0, now=0.0)
    for _ in range(100):
        th.request(1.0)
    for _ in range(30):
        th.accept(1.0)
    assert th.probability(1.0) == pytest.approx((100 - 2 * 30) / 101)
    assert th.probability(12.0) == 0.0  # the window moved past them


# --------------------------------------------------------------------------------------------
# Settings


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"floor": 0}, "floor"),
        ({"floor": 5, "ceiling": 4}, "ceiling"),
        ({"initial": 0}, "initial"),
        ({"algorithm": "vegas"}, "algorithm"),
        ({"priorities": {"a": 0.7, "b": 0.6}}, "priorities"),
        ({"priorities": {}}, "priorities"),
        ({"priorities": {"a": 1.0}, "default_priority": "b"}, "default_priority"),
        ({"throttle": 1.0}, "throttle"),
        ({"throttle": True}, "throttle"),
        ({"backoff": 1.0}, "backoff"),
        ({"tolerance": 0}, "tolerance"),
        ({"probe_interval": 0}, "probe_interval"),
        ({"window_samples": 0}, "window_samples"),
    ],
)
def test_misconfiguration_fails_at_construction_naming_the_setting(
    kwargs: dict[str, Any], named: str
) -> None:
    with pytest.raises(cw.ConfigurationError, match=named):
        cw.AdaptiveLimit(**kwargs)


def test_rate_limit_and_guard_reject_what_is_not_a_limiter() -> None:
    with pytest.raises(cw.ConfigurationError, match="rate_limit"):
        cw.rate_limit([])  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="limiter"):
        cw.guard(ttl=1, limiter=[cw.AdaptiveLimit(), object()])  # type: ignore[list-item]
    with pytest.raises(cw.ConfigurationError, match="priority"):
        cw.priority("")


# --------------------------------------------------------------------------------------------
# Drivers


def fixed(slots: int, **kwargs: Any) -> cw.AdaptiveLimit:
    """A limit that cannot move (floor = ceiling), for driver tests."""
    return cw.AdaptiveLimit(floor=slots, ceiling=slots, initial=slots, throttle=None, **kwargs)


def test_threads_never_exceed_the_limit_and_all_get_a_slot() -> None:
    limit = fixed(3)
    lock = threading.Lock()
    running = peak = 0

    @cw.rate_limit(limit, max_wait=30.0)
    def work(i: int) -> int:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.005)
        with lock:
            running -= 1
        return i

    results: list[int] = []
    threads = [threading.Thread(target=lambda i=i: results.append(work(i))) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == list(range(16))
    assert peak <= 3
    stats = limit.stats()
    assert (stats.admitted, stats.inflight, stats.queued) == (16, 0, 0)


def test_a_thread_waiting_on_a_fake_clock_takes_no_real_time() -> None:
    """On a FakeClock the wait for a slot is slept on the fake clock: an hour's max_wait ends
    at once (a real wait would hang the test until its timeout)."""
    clock = FakeClock()
    limit = fixed(1, clock=clock)
    inner: list[Any] = []

    @cw.rate_limit(limit, max_wait=3600.0, clock=clock)
    def work(depth: int) -> str:
        if depth == 0:
            try:
                work(1)  # the one slot is this call's own
            except cw.RateLimited as exc:
                inner.append(exc)
        return "ok"

    start = clock.monotonic()
    assert work(0) == "ok"
    assert clock.monotonic() - start == pytest.approx(3600.0)
    assert len(inner) == 1
    assert "timeout" in str(inner[0])
    assert limit.stats().rejected["timeout"] == 1
    assert (limit.inflight, limit.stats().queued) == (0, 0)


def test_a_task_waiting_on_a_fake_clock_takes_no_real_time() -> None:
    """The async twin of the test above, on a plain FakeClock under a normal event loop: the
    task sleeps on the fake clock in the core's slices, as the thread does (it used to wait
    on the loop's real timer: an hour here)."""
    clock = FakeClock()
    limit = fixed(1, clock=clock)
    inner: list[Any] = []

    @cw.rate_limit(limit, max_wait=3600.0, clock=clock)
    async def work(depth: int) -> str:
        if depth == 0:
            try:
                await work(1)  # the one slot is this call's own
            except cw.RateLimited as exc:
                inner.append(exc)
        return "ok"

    start, real = clock.monotonic(), time.monotonic()
    assert asyncio.run(asyncio.wait_for(work(0), timeout=30)) == "ok"
    assert time.monotonic() - real < 30
    assert clock.monotonic() - start == pytest.approx(3600.0)
    assert len(inner) == 1
    assert "timeout" in str(inner[0])
    assert (limit.inflight, limit.stats().queued) == (0, 0)


def test_a_full_limit_refuses_at_once_without_max_wait_and_bounds_the_line() -> None:
    clock = SimClock()
    limit = fixed(1, clock=clock)

    async def slow() -> str:
        await clock.asleep(1.0)
        return "ok"

    no_wait = cw.rate_limit(limit, max_wait=0, clock=clock)(slow)
    short_line = cw.rate_limit(limit, max_wait=5.0, max_waiters=2, clock=clock)(slow)

    async def main() -> list[Any]:
        first = asyncio.ensure_future(no_wait())
        await asyncio.sleep(0)
        return await asyncio.gather(
            first, no_wait(), *(short_line() for _ in range(4)), return_exceptions=True
        )

    results = run_simulated(main(), clock=clock)
    assert results[0] == "ok"
    assert isinstance(results[1], cw.RateLimited)
    assert results[2:4] == ["ok", "ok"]  # two waited in line
    assert all(isinstance(r, cw.RateLimited) for r in results[4:])  # the line was full
    assert limit.stats().rejected["queue_full"] == 3


def test_a_wait_is_bounded_by_max_wait() -> None:
    clock = SimClock()
    limit = fixed(1, clock=clock)

    async def slow() -> None:
        await clock.asleep(10.0)

    limited = cw.rate_limit(limit, max_wait=0.25, clock=clock)(slow)

    async def main() -> float:
        hog = asyncio.ensure_future(limited())
        await asyncio.sleep(0)
        start = clock.monotonic()
        with pytest.raises(cw.RateLimited, match="timeout"):
            await limited()
        waited = clock.monotonic() - start
        await hog
        return waited

    assert run_simulated(main(), clock=clock) == pytest.approx(0.25)
    assert limit.stats().rejected["timeout"] == 1


def test_work_nobody_waits_for_is_not_sent() -> None:
    """A queued caller that is cancelled, or whose deadline passes, never reaches the backend,
    and its turn goes to the next waiter."""
    clock = SimClock()
    limit = fixed(1, clock=clock)
    sent: list[str] = []

    async def backend(name: str) -> str:
        sent.append(name)
        await clock.asleep(1.0)
        return name

    limited = cw.rate_limit(limit, max_wait=30.0, clock=clock)(backend)
    with_deadline = cw.retry(attempts=1, deadline=0.5, clock=clock)(limited)

    async def main() -> list[Any]:
        hog = asyncio.ensure_future(limited("hog"))
        await asyncio.sleep(0)
        cancelled = asyncio.ensure_future(limited("cancelled"))
        late = asyncio.ensure_future(with_deadline("late"))
        patient = asyncio.ensure_future(limited("patient"))
        await clock.asleep(0.2)
        cancelled.cancel()
        return await asyncio.gather(hog, cancelled, late, patient, return_exceptions=True)

    hog, cancelled, late, patient = run_simulated(main(), clock=clock)
    assert (hog, patient) == ("hog", "patient")
    assert isinstance(cancelled, asyncio.CancelledError)
    assert isinstance(late, cw.RateLimited)
    assert sent == ["hog", "patient"]
    assert clock.monotonic() == pytest.approx(1000.0 + 2.0)  # patient went right after hog


def test_guard_serves_stale_when_no_slot_comes_in_time() -> None:
    clock = SimClock()
    limit = fixed(1, clock=clock)
    calls = 0

    @cw.guard(ttl=1, stale_ttl=60, limiter=limit, max_wait=0.1, clock=clock)
    async def load(key: str) -> str:
        nonlocal calls
        calls += 1
        await clock.asleep(5.0)
        return f"{key}-{calls}"

    async def main() -> tuple[str, str]:
        first = await load("a")  # 5 s: now "a" is stale
        hog = asyncio.ensure_future(load("b"))
        await asyncio.sleep(0)
        await clock.asleep(2.0)  # "a" is past its ttl; "b" still holds the one slot
        stale = await load("a")
        await hog
        return first, stale

    first, stale = run_simulated(main(), clock=clock)
    assert stale == first == "a-1"
    assert load.stats().rate_limited >= 1


def test_a_token_bucket_and_an_adaptive_limit_together() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=2, clock=clock)
    limit = fixed(10, clock=clock)
    seen: list[int] = []

    @cw.guard(ttl=60, limiter=[limit, bucket], max_wait=0, clock=clock)
    def load(key: int) -> int:
        seen.append(limit.inflight)
        return key

    assert [load(1), load(2)] == [1, 2]
    with pytest.raises(cw.RateLimited):
        load(3)  # no token: refused before any slot was taken
    assert seen == [1, 1]  # each attempt held a slot while it ran
    assert bucket.taken == 2
    assert limit.stats().admitted == 2
    assert load.stats().attempts == 2
    assert load.stats().rate_limited == 1


def test_an_attempt_that_waits_for_a_token_and_a_slot_counts_one_wait() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=1, clock=clock)
    limit = fixed(1, clock=clock)
    refused: list[Exception] = []

    @cw.guard(ttl=0, limiter=[bucket, limit], max_wait=5.0, attempts=1, clock=clock)
    def load(key: str) -> str:
        if key == "outer":
            try:
                load("inner")  # waits 1 s for a token, then for the slot "outer" holds
            except cw.RateLimited as exc:
                refused.append(exc)
        return key

    assert load("outer") == "outer"
    assert len(refused) == 1
    assert bucket.waited == 1  # it queued for the token ...
    assert limit.stats().rejected["timeout"] == 1  # ... and for the slot
    assert load.stats().token_waits == 1  # one attempt that waited


def test_priorities_follow_the_context_and_unknown_names_use_the_default() -> None:
    limit = cw.AdaptiveLimit(priorities={"interactive": 0.8, "batch": 0.2})

    @cw.rate_limit(limit)
    def work() -> None:
        pass

    work()
    with cw.priority("batch"):
        work()
        work()
    with cw.priority("nonsense"):
        work()
    parts = limit.stats().priorities
    assert (parts["interactive"].admitted, parts["batch"].admitted) == (2, 2)


def test_priorities_reach_asyncio_tasks_created_inside_the_block() -> None:
    clock = SimClock()
    limit = cw.AdaptiveLimit(priorities={"interactive": 0.5, "batch": 0.5}, clock=clock)
    limited = cw.rate_limit(limit, clock=clock)(clock.asleep)

    async def main() -> None:
        with cw.priority("batch"):
            await asyncio.gather(*(asyncio.ensure_future(limited(0.1)) for _ in range(3)))

    run_simulated(main(), clock=clock)
    assert limit.stats().priorities["batch"].admitted == 3


def test_client_side_throttling_rejects_while_the_backend_refuses_and_recovers() -> None:
    clock = SimClock()
    limit = cw.AdaptiveLimit(clock=clock, rng=random.Random(3), throttle=2.0, throttle_window=5.0)
    failing = True

    async def backend() -> None:
        await clock.asleep(0.01)
        if failing:
            raise ConnectionError("refused")

    limited = cw.rate_limit(limit, clock=clock)(backend)

    async def burst(n: int) -> list[Any]:
        out = []
        for _ in range(n):
            try:
                out.append(await limited())
            except (cw.RateLimited, ConnectionError) as exc:  # noqa: PERF203 - one per call
                out.append(type(exc).__name__)
        return out

    async def main() -> tuple[list[Any], float, list[Any]]:
        nonlocal failing
        during = await burst(300)
        odds = limit.stats().throttle_probability
        failing = False
        await clock.asleep(6.0)
        return during, odds, await burst(50)

    during, odds, after = run_simulated(main(), clock=clock)
    assert during.count("RateLimited") > 100  # most refused locally, not sent
    assert odds > 0.5
    assert after == [None] * 50
    assert limit.stats().rejected["throttled"] == during.count("RateLimited")


def test_a_large_move_is_logged_and_emitted(caplog: pytest.LogCaptureFixture) -> None:
    clock = SimClock()
    limit = cw.AdaptiveLimit(initial=40, clock=clock, throttle=None, name="db")
    events: list[cw.Event] = []

    async def backend() -> None:
        await clock.asleep(0.05 if limit.inflight <= 3 else 0.5)

    limited = cw.rate_limit(limit, max_wait=5, clock=clock)(backend)

    async def main() -> None:
        await asyncio.gather(*(limited() for _ in range(300)), return_exceptions=True)

    with caplog.at_level(logging.WARNING, logger="cacheward"), cw.listening(events.append):
        run_simulated(main(), clock=clock)
    assert "adaptive limit db moved from 40 to" in caplog.text
    assert any(e.kind is cw.EventKind.LIMIT_CHANGED and e.source == "db" for e in events)


def test_repr_and_stats_show_live_state() -> None:
    limit = cw.AdaptiveLimit(name="db")
    assert "name='db'" in repr(limit)
    stats = limit.stats()
    assert (stats.limit, stats.inflight, stats.queued, stats.admitted) == (1, 0, 0, 0)
    assert set(stats.rejected) == {"queue_full", "timeout", "throttled", "caller_gone"}


# --------------------------------------------------------------------------------------------
# Metrics


def busy_limit() -> cw.AdaptiveLimit:
    """A limit of 1 slot with one attempt admitted, one refused for want of a queue."""
    limit = cw.AdaptiveLimit(
        floor=1, ceiling=1, initial=1, name="db", priorities={"interactive": 0.5, "batch": 0.5}
    )
    inner = cw.rate_limit(limit, max_wait=0)(lambda: None)

    @cw.rate_limit(limit, max_wait=0)
    def outer() -> None:
        with cw.priority("batch"), pytest.raises(cw.RateLimited):
            inner()

    outer()
    return limit


def test_prometheus_exports_the_limit_per_priority_and_rejections_by_reason() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from cacheward.contrib.prometheus import PrometheusMetrics

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(registry=registry)
    try:
        metrics.track(busy_limit())

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(name, {"function": "db", **labels})

        assert value("cacheward_adaptive_limit") == 1
        assert value("cacheward_adaptive_admitted_total", priority="interactive") == 1
        assert value("cacheward_adaptive_in_flight", priority="interactive") == 0
        assert value("cacheward_adaptive_queued", priority="batch") == 0
        rejected = "cacheward_adaptive_rejected_total"
        assert value(rejected, priority="batch", reason="queue_full") == 1
        assert value(rejected, priority="interactive", reason="queue_full") == 0
        assert value("cacheward_calls_total", outcome="hit") is None  # not a function
    finally:
        metrics.close()


def test_opentelemetry_observes_the_limit() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from cacheward.contrib.otel import OTelMetrics

    reader = InMemoryMetricReader()
    otel = OTelMetrics(meter_provider=MeterProvider(metric_readers=[reader]))
    try:
        otel.track(busy_limit())
        data = reader.get_metrics_data()
        assert data is not None
        points = {
            (m.name, tuple(sorted(p.attributes.items()))): p.value  # type: ignore[union-attr]
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for m in sm.metrics
            for p in m.data.data_points
        }
        assert points[("cacheward.adaptive_limit", (("function", "db"),))] == 1
        key = (("function", "db"), ("priority", "batch"), ("reason", "queue_full"))
        assert points[("cacheward.adaptive_rejected", key)] == 1
    finally:
        otel.close()


def test_gradient_growth_doubles_while_flat_windows_follow_one_another() -> None:
    """Slow start: 4 %, 8 %, 16 %... while every window is flat; a window that is not starts
    the steps again from 4 % (near the knee flat windows do not follow one another)."""
    g = Gradient(initial=10, floor=1, ceiling=1000, now=0.0, probe_interval=1000.0)
    t = feed(g, 0.0, rtt=0.05, n=10)
    t = feed(g, t, rtt=0.05, n=10)
    t = feed(g, t, rtt=0.05, n=10)  # the two refill windows
    steps = []
    for _ in range(3):
        before = g.limit
        t = feed(g, t, rtt=0.05, n=math.ceil(g.limit))
        steps.append(round(g.limit / before - 1.0, 3))
    assert steps == [0.04, 0.08, 0.16]
    t = feed(g, t, rtt=0.05 * 1.04, n=math.ceil(g.limit))  # held: not flat
    before = g.limit
    feed(g, t, rtt=0.05, n=math.ceil(g.limit))
    assert g.limit / before == pytest.approx(1.04)
