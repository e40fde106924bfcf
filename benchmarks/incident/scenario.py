"""The incident's scenario: what happens when, to whom, and what a perfect cache would read.

Everything that defines one run (:class:`Scenario`; the full, quick and smoke sizes), the request
stream every stack replays (:func:`arrivals`: seeded Poisson arrivals, Zipf-distributed
customers), the ages of the entries a long-running service has in Redis when the run starts
(:func:`prefill_ages`), and the reference the report compares against (:func:`perfect_rebuilds`).
Pure functions of the scenario: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import os
import random
from dataclasses import dataclass, field

from benchmarks._db import Capacity, Dataset

__all__ = [
    "DROPPED",
    "FULL",
    "LATE",
    "OUTCOME_NAMES",
    "QUICK",
    "RAISED",
    "SERVED",
    "SMOKE",
    "Scenario",
    "arrivals",
    "perfect_rebuilds",
    "prefill_ages",
    "scenario_for",
]

# Request outcomes.
SERVED = 0
RAISED = 1  # the stack raised
LATE = 2  # served, but after the caller's deadline (the caller had given up)
DROPPED = 3  # still queued when the caller's deadline passed; never started
OUTCOME_NAMES = {SERVED: "served", RAISED: "raised", LATE: "late", DROPPED: "dropped"}


@dataclass(frozen=True)
class Scenario:
    """Everything that defines one run; printed in the report and returned in the JSON."""

    name: str
    customers: int
    rows_per_customer: int
    page_size: int
    processes: int
    threads: int
    rate: float  # requests per second, all processes together
    zipf: float  # customer popularity: P(customer k) ~ 1 / (k + 1) ** zipf
    ttl: float
    stale_ttl: float
    warm: float
    outage: float
    recovery: float
    deadline: float  # the caller's deadline (a load balancer's timeout)
    capacity: Capacity = field(default_factory=Capacity)
    seed: int = 20261127
    #: share of the database's keyset-rebuild capacity the guarded stack's limiter allows
    limiter_share: float = 0.5
    grace: float = 1.0  # after the last arrival, how long to let in-flight requests finish

    @property
    def dataset(self) -> Dataset:
        return Dataset(self.customers, self.rows_per_customer, self.page_size)

    @property
    def total(self) -> float:
        return self.warm + self.outage + self.recovery


FULL = Scenario(
    name="full",
    customers=120,
    rows_per_customer=3000,
    page_size=250,
    processes=4,
    threads=20,
    rate=240.0,
    zipf=1.0,
    ttl=40.0,
    stale_ttl=400.0,
    warm=20.0,
    outage=45.0,
    recovery=50.0,
    deadline=5.0,
)
QUICK = dataclasses.replace(
    FULL,
    name="quick",
    customers=40,
    rate=200.0,
    ttl=10.0,
    stale_ttl=100.0,
    warm=8.0,
    outage=12.0,
    recovery=14.0,
)
SMOKE = dataclasses.replace(
    FULL,
    name="smoke",
    customers=8,
    rows_per_customer=400,
    page_size=100,
    processes=2,
    threads=6,
    rate=80.0,
    ttl=2.0,
    stale_ttl=20.0,
    warm=0.6,
    outage=1.4,
    recovery=0.6,
    deadline=2.0,
    grace=0.3,
)


def arrivals(sc: Scenario, process: int) -> list[tuple[float, int]]:
    """This process's requests: ``(seconds after start, customer)``, Poisson and Zipf, seeded."""
    rng = random.Random(sc.seed * 1000 + process)
    weights = [1.0 / (k + 1) ** sc.zipf for k in range(sc.customers)]
    cum: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    keys = list(range(sc.customers))
    rng.shuffle(keys)  # popularity unrelated to customer id
    rate = sc.rate / sc.processes
    out: list[tuple[float, int]] = []
    t = rng.expovariate(rate)
    while t < sc.total:
        out.append((t, keys[rng.choices(range(sc.customers), cum_weights=cum)[0]]))
        t += rng.expovariate(rate)
    return out


def prefill_ages(sc: Scenario) -> list[float]:
    """How old each customer's cached entry is when the run starts (uniform in ``[0, ttl)``).

    A service that has been up for a while has entries of every age, so they expire one by one
    during the warm-up, not all together. Both stacks get the same ages.
    """
    rng = random.Random(sc.seed + 1)
    return [rng.uniform(0.0, sc.ttl) for _ in range(sc.customers)]


def perfect_rebuilds(
    sc: Scenario, stamps: dict[int, float] | None, *, lossless: bool = False
) -> list[float]:
    """When a perfect cache with the same TTL and the same layers would have to rebuild.

    One shared layer (while Redis is up; ``stamps`` gives when each pre-filled entry was
    written, in seconds relative to the start, or ``None`` without L2) plus one in-process
    layer per process; both lost at the outage, the shared one back (empty) at recovery. A
    request needs a rebuild when neither holds the key younger than ``ttl``. Each rebuild reads
    ``rows_per_customer`` rows.

    With ``lossless=True``: a cache that loses nothing at all (one shared layer that stays up),
    i.e. only the rebuilds the TTL itself requires -- a stricter reference than any stack that
    loses its layers can reach.
    """
    t_out, t_back = sc.warm, sc.warm + sc.outage
    if lossless:
        t_out = t_back = float("inf")
    l2 = stamps is not None
    events = sorted((t, p, k) for p in range(sc.processes) for t, k in arrivals(sc, p))
    shared: dict[int, float] = dict(stamps) if stamps is not None else {}
    local: list[dict[int, float]] = [{} for _ in range(sc.processes)]
    out: list[float] = []
    lost = back = False
    for t, p, k in events:
        if not lost and t >= t_out:
            lost = True
            shared.clear()
            for d in local:
                d.clear()
        if lost and not back and t >= t_back:
            back = True
            shared.clear()
        l2_up = l2 and (not lost or back)
        seen = local[p].get(k)
        if seen is not None and t < seen + sc.ttl:
            continue
        if l2_up:
            seen = shared.get(k)
            if seen is not None and t < seen + sc.ttl:
                local[p][k] = seen
                continue
        out.append(t)
        local[p][k] = t
        if l2_up:
            shared[k] = t
    return out


def scenario_for(quick: bool) -> Scenario:
    """The scenario a run uses (the smoke one under ``CACHEWARD_BENCH_SMOKE=1``)."""
    if os.environ.get("CACHEWARD_BENCH_SMOKE", "") not in ("", "0"):
        return SMOKE
    return QUICK if quick else FULL
