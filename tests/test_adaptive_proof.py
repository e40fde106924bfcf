"""The adaptive limit's promise, on the simulation harness (docs/guarantees.md, clause 1b).

* **Safety**: whenever a backend attempt starts, the attempts running (itself included) are at
  most the limit at that instant, rounded up (a limit of 2.3 is two slots and a third held
  part of the time) — whatever the callers, the priorities, the failures, the cancellations
  and the waits; and on a fixed fractional limit the attempts running average at most the
  limit over time. Their siblings remove the one check every admission passes
  (``Admission._room``) and keep the fractional slot open, and show the properties catch it.
* **Convergence**: on :class:`cacheward.testing.CapacityBackend` (latency flat up to ``C``
  concurrent attempts, proportional past it, timeouts past ``2C``) driven by more callers than
  it can take, over generated capacity curves, the limit settles within ``[0.7 C, 1.1 C]`` and
  the backend's in-flight attempts within ``1.1 C``, within the stated times (in units of the
  backend's unloaded latency ``b``), and stays there until the capacity moves again; the curve
  always includes a halving.
* **Priorities**: a batch flood cannot starve interactive callers that stay within their
  guaranteed share, and what the interactive callers leave is lent to the batch. The sibling
  serves the line oldest-first, ignoring shares, and shows the test catches it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward._core.adaptive import Admission
from cacheward.testing import CapacityBackend, SimClock, run_simulated

#: Settling times, in unloaded backend latencies ``b`` (docs/guarantees.md states them).
SETTLE_FROM_START = 200.0
SETTLE_AFTER_CHANGE = 60.0
#: Each segment of a capacity curve lasts this many ``b``.
SEGMENT = 260.0

#: Examples per property: the fast profile's 40 runs ~40 safety cases and ~10 curves (about
#: 30 s in all); the thorough profile 10x more.
_PROFILE = (settings.default or settings()).max_examples
SAFETY_EXAMPLES = max(10, min(400, _PROFILE))
CURVE_EXAMPLES = max(3, min(100, _PROFILE // 4))

# --------------------------------------------------------------------------------------------
# Safety: in-flight <= limit whenever an attempt starts


@dataclasses.dataclass(frozen=True)
class SafetyCase:
    algorithm: str
    initial: int
    floor: int
    ceiling: int
    capacity: float
    base: float
    callers: int
    max_wait: float
    priorities: bool
    cancel_every: int  # every n-th caller gives up early (its task is cancelled); 0: none
    fail_every: int  # every n-th attempt raises ConnectionError; 0: none
    horizon: float
    seed: int


safety_cases = st.builds(
    SafetyCase,
    algorithm=st.sampled_from(["gradient", "aimd"]),
    initial=st.integers(1, 60),
    floor=st.integers(1, 4),
    ceiling=st.integers(4, 80),
    capacity=st.floats(2.0, 40.0),
    base=st.sampled_from([0.01, 0.05, 0.2]),
    callers=st.integers(1, 120),
    max_wait=st.sampled_from([0.0, 0.02, 0.3, 2.0]),
    priorities=st.booleans(),
    cancel_every=st.sampled_from([0, 2, 5]),
    fail_every=st.sampled_from([0, 3, 7]),
    horizon=st.sampled_from([1.0, 5.0, 20.0]),
    seed=st.integers(0, 2**16),
)


def run_safety(case: SafetyCase) -> tuple[list[tuple[float, int, int]], int]:
    """Run ``case``; returns the starts that broke the bound, and how many attempts started."""
    clock = SimClock()
    rng = random.Random(case.seed)
    limit = cw.AdaptiveLimit(
        algorithm=case.algorithm,  # type: ignore[arg-type]
        initial=case.initial,
        floor=case.floor,
        ceiling=case.ceiling,
        priorities={"interactive": 0.7, "batch": 0.3} if case.priorities else None,
        probe_interval=3.0,
        clock=clock,
        rng=random.Random(case.seed),
    )
    backend = CapacityBackend(clock=clock, capacity=case.capacity, base=case.base, timeout=0.5)
    running = 0
    starts = 0
    broken: list[tuple[float, int, int]] = []

    async def attempt(n: int) -> Any:
        nonlocal running, starts
        running += 1
        starts += 1
        if running > math.ceil(limit.limit):
            broken.append((clock.monotonic(), running, limit.limit))
        try:
            if case.fail_every and n % case.fail_every == 0:
                await clock.asleep(case.base)
                raise ConnectionError("refused")
            return await backend.acall(n)
        finally:
            running -= 1

    limited = cw.rate_limit(limit, max_wait=case.max_wait, clock=clock)(attempt)
    t0 = clock.monotonic()

    async def caller(i: int) -> None:
        n = i
        while clock.monotonic() - t0 < case.horizon:
            n += case.callers
            tag = "batch" if i % 2 else "interactive"
            with cw.priority(tag):
                call = limited(n)
                try:
                    if case.cancel_every and n % case.cancel_every == 0:
                        await asyncio.wait_for(call, timeout=rng.uniform(0.0, 2 * case.base))
                    else:
                        await call
                except (cw.RateLimited, ConnectionError, TimeoutError):
                    await clock.asleep(case.base / 3)

    async def main() -> None:
        await asyncio.gather(*(caller(i) for i in range(case.callers)))

    run_simulated(main(), clock=clock)
    stats = limit.stats()
    assert stats.inflight == 0, stats  # every slot came back
    assert stats.queued == 0, stats
    return broken, starts


SAFETY_EXAMPLE = SafetyCase("gradient", 20, 1, 40, 10.0, 0.05, 60, 0.3, True, 5, 7, 5.0, 1)


@pytest.mark.timeout(3000)  # the thorough profile's count takes longer than the default 300 s
@settings(max_examples=SAFETY_EXAMPLES, database=None)
@given(safety_cases)
@example(SAFETY_EXAMPLE)
def test_inflight_never_exceeds_the_limit_when_an_attempt_starts(case: SafetyCase) -> None:
    broken, starts = run_safety(case)
    assert starts > 0
    assert not broken, f"attempts started above the limit: {broken[:5]}"


def test_sibling_safety_catches_a_limit_that_admits_past_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Admission, "_room", lambda self, now: True)
    broken, _ = run_safety(SAFETY_EXAMPLE)
    assert broken, "the safety check did not notice admissions past the limit"


def mean_inflight(limit_value: float, *, latency: float, callers: int, seed: int) -> float:
    """The time-weighted mean of attempts running on a fixed limit, callers always waiting."""
    clock = SimClock()
    rng = random.Random(seed)
    limit = cw.AdaptiveLimit(
        floor=limit_value, ceiling=limit_value, initial=limit_value, clock=clock
    )
    running = 0
    area = 0.0
    stamp = clock.monotonic()

    def mark(step: int) -> None:
        nonlocal running, area, stamp
        now = clock.monotonic()
        area += running * (now - stamp)
        running += step
        stamp = now

    async def attempt() -> None:
        mark(+1)
        try:
            await clock.asleep(latency * rng.uniform(0.5, 1.5))
        finally:
            mark(-1)

    limited = cw.rate_limit(limit, max_wait=1000.0, clock=clock)(attempt)
    horizon = 400 * latency
    t0 = clock.monotonic()

    async def caller() -> None:
        while clock.monotonic() - t0 < horizon:
            await limited()

    async def main() -> None:
        await asyncio.gather(*(caller() for _ in range(callers)))

    run_simulated(main(), clock=clock)
    mark(0)
    return area / (clock.monotonic() - t0)


@settings(max_examples=max(5, SAFETY_EXAMPLES // 4), database=None)
@given(
    limit_value=st.floats(0.1, 6.0).filter(lambda v: v % 1.0 > 0.05),
    latency=st.sampled_from([0.01, 0.1]),
    callers=st.integers(7, 20),
    seed=st.integers(0, 2**16),
)
def test_a_fractional_limit_is_kept_on_average(
    limit_value: float, latency: float, callers: int, seed: int
) -> None:
    mean = mean_inflight(limit_value, latency=latency, callers=callers, seed=seed)
    # Held to the limit on average, up to the last attempt's overrun of the horizon; and the
    # fractional slot is used (the mean is past the whole slots).
    assert mean <= limit_value * 1.02 + 0.01, mean
    assert mean >= math.floor(limit_value) + 0.5 * (limit_value % 1.0), mean


def test_sibling_a_fractional_slot_always_open_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    from cacheward._core.adaptive import PartialSlot

    monkeypatch.setattr(PartialSlot, "is_open", lambda self: self.fraction > 0.0)
    mean = mean_inflight(2.25, latency=0.1, callers=10, seed=1)
    assert mean > 2.25 * 1.02 + 0.01, mean  # it runs three at a time


# --------------------------------------------------------------------------------------------
# Convergence over generated capacity curves


@dataclasses.dataclass(frozen=True)
class Curve:
    base: float
    initial: int
    capacities: tuple[float, ...]  # one per segment of SEGMENT * base seconds

    def at(self, elapsed: float) -> float:
        index = min(int(elapsed / (SEGMENT * self.base)), len(self.capacities) - 1)
        return self.capacities[index]


@st.composite
def curves(draw: st.DrawFn) -> Curve:
    first = draw(st.integers(20, 60))
    rest = draw(st.lists(st.integers(20, 60), max_size=1))
    # Always a halving: the capacity drop nobody planned for.
    halving_at = draw(st.integers(0, len(rest)))
    caps = [float(first), *map(float, rest)]
    caps.insert(halving_at + 1, caps[halving_at] / 2.0)
    return Curve(
        base=draw(st.sampled_from([0.02, 0.05, 0.1])),
        initial=draw(st.integers(1, 200)),
        capacities=tuple(caps),
    )


def run_curve(curve: Curve, *, algorithm: str = "gradient") -> list[tuple[float, int, int, bool]]:
    """Drive ``3 * max(C)`` closed-loop callers; sample ``(elapsed, limit, in-flight, probing)``."""
    clock = SimClock()
    t0 = clock.monotonic()
    b = curve.base
    backend = CapacityBackend(
        clock=clock, capacity=lambda now: curve.at(now - t0), base=b, timeout=10 * b
    )
    limit = cw.AdaptiveLimit(
        algorithm=algorithm,  # type: ignore[arg-type]
        initial=curve.initial,
        clock=clock,
        rng=random.Random(0),
    )
    limited = cw.rate_limit(limit, max_wait=5 * b, clock=clock)(backend.acall)
    end = SEGMENT * b * len(curve.capacities)
    samples: list[tuple[float, int, int, bool]] = []

    async def caller() -> None:
        while clock.monotonic() - t0 < end:
            try:
                await limited(None)
            except (cw.RateLimited, TimeoutError):  # noqa: PERF203 - one per call
                await clock.asleep(b / 5)

    async def sampler() -> None:
        while clock.monotonic() - t0 < end:
            probing = bool(getattr(limit._core, "probing", False))
            samples.append((clock.monotonic() - t0, limit.limit, backend.in_flight, probing))
            await clock.asleep(b / 2)

    async def main() -> None:
        callers = int(3 * max(curve.capacities))
        await asyncio.gather(sampler(), *(caller() for _ in range(callers)))

    run_simulated(main(), clock=clock)
    return samples


def out_of_band(curve: Curve, samples: list[tuple[float, int, int, bool]]) -> list[str]:
    """Samples past each segment's settling time with the limit or in-flight out of band."""
    found = []
    b = curve.base
    for elapsed, lim, inflight, probing in samples:
        segment = min(int(elapsed / (SEGMENT * b)), len(curve.capacities) - 1)
        settle = SETTLE_FROM_START if segment == 0 else SETTLE_AFTER_CHANGE
        if elapsed - segment * SEGMENT * b < settle * b or probing:
            continue
        cap = curve.capacities[segment]
        # The limit is a whole number of slots: the band is rounded outward to whole slots
        # (C = 24.5 allows 27, which 1.1 C = 26.95 alone would refuse).
        low, high = math.floor(0.7 * cap), math.ceil(1.1 * cap)
        if not low <= lim <= high or inflight > high:
            found.append(f"t={elapsed / b:.0f}b C={cap:g}: limit {lim}, in flight {inflight}")
    return found


CURVE_EXAMPLE = Curve(base=0.05, initial=20, capacities=(40.0, 20.0, 60.0))


@pytest.mark.timeout(3000)
@settings(max_examples=CURVE_EXAMPLES, database=None, derandomize=True)
@given(curves())
@example(CURVE_EXAMPLE)
# Found by a full run: C = 24.5 after a halving, the limit settled at 27 slots.
@example(Curve(base=0.02, initial=49, capacities=(49.0, 24.5)))
@example(Curve(base=0.1, initial=200, capacities=(20.0, 10.0)))
# Found by the thorough run while the throttle was on by default: callers that come back at
# once after a local rejection kept it engaged, and the unfilled limit stayed at 2.6 C.
@example(Curve(base=0.02, initial=190, capacities=(31.0, 50.0, 25.0)))
@example(Curve(base=0.05, initial=190, capacities=(31.0, 15.5, 50.0)))
# Also from the thorough run: one refill window after a probe was not enough (limit 1.2 C).
@example(Curve(base=0.1, initial=20, capacities=(20.0, 10.0)))
# Known, not fixed: the thorough profile found Curve(base=0.05, initial=24, capacities=(24.0,
# 20.0, 10.0)): the limit at 11.12 for C = 10 (1.1 % over 1.1 C). The harness's fixed latency
# runs the whole slots in lockstep, so a window sees one or two attempts in the fractional
# slot and reads it flat; growth then steps past 1.1 C until the next window cuts.
def test_the_limit_settles_near_the_capacity_and_follows_it(curve: Curve) -> None:
    samples = run_curve(curve)
    bad = out_of_band(curve, samples)
    assert not bad, bad[:5]


def test_sibling_convergence_catches_a_limit_that_does_not_adapt() -> None:
    # AIMD only reacts to failures: it climbs to where the backend times out (2C), far past
    # the band, and the check sees it.
    bad = out_of_band(CURVE_EXAMPLE, run_curve(CURVE_EXAMPLE, algorithm="aimd"))
    assert bad


# --------------------------------------------------------------------------------------------
# Priorities: guaranteed shares, lending


def run_priorities(*, slots: int, interactive: int) -> Any:
    """A batch flood of ``4 * slots`` callers and ``interactive`` interactive callers (each
    calling again after a random pause) on a fixed limit of ``slots`` with a 50/50 split."""
    clock = SimClock()
    rng = random.Random(7)
    limit = cw.AdaptiveLimit(
        floor=slots,
        ceiling=slots,
        initial=slots,
        priorities={"interactive": 0.5, "batch": 0.5},
        throttle=None,
        clock=clock,
    )
    latency = 0.1

    async def attempt() -> None:
        await clock.asleep(latency)

    limited: Callable[[], Any] = cw.rate_limit(limit, max_wait=10.0, clock=clock)(attempt)
    t0 = clock.monotonic()
    horizon = 20.0
    waits: list[float] = []
    batch_peak = 0

    async def batch() -> None:
        nonlocal batch_peak
        with cw.priority("batch"):
            while clock.monotonic() - t0 < horizon:
                await limited()
                batch_peak = max(batch_peak, limit.stats().priorities["batch"].inflight + 1)

    async def user() -> None:
        with cw.priority("interactive"):
            while clock.monotonic() - t0 < horizon:
                await clock.asleep(rng.expovariate(5.0))
                start = clock.monotonic()
                await limited()
                waits.append(clock.monotonic() - start - latency)

    async def main() -> None:
        await asyncio.gather(
            *(batch() for _ in range(4 * slots)), *(user() for _ in range(interactive))
        )

    run_simulated(main(), clock=clock)
    return waits, batch_peak


def test_a_batch_flood_does_not_starve_interactive_callers() -> None:
    # 10 slots, 5 guaranteed to interactive; at most 4 interactive callers at once.
    waits, _ = run_priorities(slots=10, interactive=4)
    assert len(waits) > 200
    # A slot turns over within one attempt's latency; an interactive caller below its share
    # takes the next one, ahead of every batch waiter.
    assert max(waits) <= 0.1 + 1e-9, max(waits)


def test_unused_share_is_lent() -> None:
    _, batch_peak = run_priorities(slots=10, interactive=0)
    assert batch_peak == 10  # batch's guarantee is 5; it borrowed the other 5


def test_sibling_priorities_catch_a_line_served_oldest_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(
        Admission, "_next", lambda self, parts: min(parts, key=lambda p: self._order[p.waiting[0]])
    )
    monkeypatch.setattr(Admission, "_under_share", lambda self, part: False)
    waits, _ = run_priorities(slots=10, interactive=4)
    assert max(waits) > 0.1 + 1e-9  # behind the 40 batch callers: several turnovers


# --------------------------------------------------------------------------------------------
# Several processes, each with its own limit, on one backend


#: How long after one process's probe the sum is not checked, in ``b``.
PROBE_AFTERMATH = 20.0


@dataclasses.dataclass(frozen=True)
class SharedCurve:
    processes: int
    base: float
    capacities: tuple[float, ...]  # one per segment of SEGMENT * base seconds


@st.composite
def shared_curves(draw: st.DrawFn) -> SharedCurve:
    processes = draw(st.integers(2, 4))
    first = draw(st.integers(4 * processes, 40))
    caps = [float(first), first / 2.0]  # the halving nobody planned for
    if draw(st.booleans()):
        caps.append(float(draw(st.integers(4 * processes, 40))))
    return SharedCurve(processes, draw(st.sampled_from([0.02, 0.05])), tuple(caps))


def run_shared(curve: SharedCurve, *, algorithm: str = "gradient") -> list[tuple[float, float]]:
    """Each process's limit (its own object, its own seed) with ``3 C / N`` closed-loop
    callers on one backend; samples ``(elapsed, sum of the limits)``, left out while a
    process probes and for ``PROBE_AFTERMATH`` after it (while one process probes, the others
    see room and grow into its share; the window after the probe cuts it back)."""
    clock = SimClock()
    t0 = clock.monotonic()
    b = curve.base

    def capacity(now: float) -> float:
        index = min(int((now - t0) / (SEGMENT * b)), len(curve.capacities) - 1)
        return curve.capacities[index]

    backend = CapacityBackend(clock=clock, capacity=capacity, base=b, timeout=10 * b)
    limits = [
        cw.AdaptiveLimit(algorithm=algorithm, clock=clock, rng=random.Random(i))  # type: ignore[arg-type]
        for i in range(curve.processes)
    ]
    calls = [cw.rate_limit(lim, max_wait=5 * b, clock=clock)(backend.acall) for lim in limits]
    end = SEGMENT * b * len(curve.capacities)
    samples: list[tuple[float, float]] = []

    async def caller(call: Callable[[Any], Any]) -> None:
        while clock.monotonic() - t0 < end:
            try:
                await call(None)
            except (cw.RateLimited, TimeoutError):  # noqa: PERF203 - one per call
                await clock.asleep(b / 5)

    async def sampler() -> None:
        probed = -math.inf
        while clock.monotonic() - t0 < end:
            elapsed = clock.monotonic() - t0
            if any(getattr(lim._core, "probing", False) for lim in limits):
                probed = elapsed
            elif elapsed - probed >= PROBE_AFTERMATH * b:
                samples.append((elapsed, sum(lim.limit for lim in limits)))
            await clock.asleep(b / 2)

    per = max(3, int(3 * max(curve.capacities) / curve.processes))

    async def main() -> None:
        await asyncio.gather(sampler(), *(caller(c) for c in calls for _ in range(per)))

    run_simulated(main(), clock=clock)
    return samples


def shared_out_of_band(curve: SharedCurve, samples: list[tuple[float, float]]) -> list[str]:
    """Spans of ``20 b`` past each segment's settling time whose mean sum of limits is out of
    ``[0.7 C, 1.1 C]``."""
    b = curve.base
    spans: dict[int, list[float]] = {}
    for elapsed, total in samples:
        segment = min(int(elapsed / (SEGMENT * b)), len(curve.capacities) - 1)
        settle = SETTLE_FROM_START if segment == 0 else SETTLE_AFTER_CHANGE
        if elapsed - segment * SEGMENT * b >= settle * b:
            spans.setdefault(int(elapsed / (20 * b)), []).append(total)
    found = []
    for span, totals in sorted(spans.items()):
        segment = min(int(span * 20 / SEGMENT), len(curve.capacities) - 1)
        cap = curve.capacities[segment]
        mean = sum(totals) / len(totals)
        if not 0.7 * cap <= mean <= 1.1 * cap:
            found.append(f"t={span * 20}b C={cap:g}: sum of limits {mean:.2f}")
    return found


SHARED_EXAMPLE = SharedCurve(processes=4, base=0.05, capacities=(16.0, 8.0, 16.0))


@pytest.mark.timeout(3000)
@settings(max_examples=CURVE_EXAMPLES, database=None, derandomize=True)
@given(shared_curves())
@example(SHARED_EXAMPLE)
# Found by the first run (commit 50d1cc9): after 4 -> 10 the slow start's doubling steps
# overshot (the sum at 1.55 C 160 b after the change); and by the thorough profile: 4 -> 30
# was not reached in 60 b while steps after a cut stayed at 4-8 %.
@example(SharedCurve(processes=2, base=0.05, capacities=(8.0, 4.0, 10.0)))
@example(SharedCurve(processes=2, base=0.02, capacities=(8.0, 4.0, 30.0)))
def test_the_limits_of_several_processes_sum_to_the_capacity(curve: SharedCurve) -> None:
    """Each process adapts on its own (docs/protection.md, *Across processes*); the sum of
    their limits settles within ``[0.7 C, 1.1 C]`` and follows a halving."""
    bad = shared_out_of_band(curve, run_shared(curve))
    assert not bad, bad[:5]


def test_sibling_shared_convergence_catches_limits_that_do_not_adapt() -> None:
    # AIMD reacts to failures only: the processes' sum climbs to where the backend times out.
    assert shared_out_of_band(SHARED_EXAMPLE, run_shared(SHARED_EXAMPLE, algorithm="aimd"))
