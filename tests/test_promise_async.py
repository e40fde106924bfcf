"""The promise of DESIGN.md, clause by clause, on the real *async* stack (the twin of
``test_promise.py``).

Every caller is its own asyncio task, arriving at its generated time on an event loop whose
time is a fake clock (``cacheguard.testing.run_simulated``): tasks interleave exactly as in
real time, timeouts (``asyncio.wait_for`` inside ``cg.cached``) fire at their simulated
moment, and a schedule spanning minutes runs in milliseconds.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given

from cacheguard.testing import Outcome
from promise_harness import CLAUSES, check_all, run_async
from strategies import Config, Schedule, schedules

#: A plain configuration for regression examples (each test replaces what it needs).
REGRESSION_CONFIG = Config(
    ttl=1.0,
    stale_ttl=0.0,
    stale_if_error=None,
    jitter=0.0,
    backoff=1.0,
    backoff_max=1.0,
    timeout=1.0,
    breaker_failures=1,
    breaker_reset=1.0,
    l1=True,
    l1_maxsize=6,
    remotes=0,
    layer_timeout=0.5,
    rate=10.0,
    burst=10.0,
    max_wait=0.0,
    attempts=1,
    ratio=0.0,
    min_per_second=0.0,
    window=1.0,
    retry_backoff=0.5,
    retry_backoff_max=1.0,
    deadline=1.0,
    seed=0,
)


@given(schedules())
def test_every_clause_holds_async(schedule: Schedule) -> None:
    check_all(run_async(schedule))


@given(schedules(max_callers=60))
def test_every_clause_holds_async_crowds(schedule: Schedule) -> None:
    """Bigger crowds: up to 120 concurrent callers per schedule."""
    check_all(run_async(schedule))


GUARD_CLAUSES = tuple(c for c in CLAUSES if c != "backoff")


@given(schedules())
def test_every_clause_holds_async_guard(schedule: Schedule) -> None:
    """The same schedules through ``cg.guard`` (which adds the backend circuit breaker)."""
    check_all(run_async(schedule, stack="guard"), GUARD_CLAUSES)


def test_a_caller_stuck_in_a_hung_layer_uses_the_value_fetched_meanwhile() -> None:
    """Found by the thorough run (before 7bb01c7): a caller whose shared-layer read hung decided
    on the memory entry it read before, fetched again over the fresh value another caller had
    stored meanwhile, was refused a token and failed. It must get that fresh value."""
    config = dataclasses.replace(
        REGRESSION_CONFIG, rate=1.0, burst=1.0, max_wait=0.0, remotes=1, layer_timeout=0.5
    )
    schedule = Schedule(
        config=config,
        calls=[(0.0, "a"), (2.0, "a"), (2.0, "a")],
        layer_events=[(0.0, 0, "hung")],
        backend_events=[],
        first_outcome=Outcome(),
    )
    run = run_async(schedule)
    check_all(run)
    assert [r.error for r in run.records] == [None, None, None]
    assert len(run.backend.attempts) == 2
