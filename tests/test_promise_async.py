"""The promise of DESIGN.md, clause by clause, on the real *async* stack (the twin of
``test_promise.py``).

Every caller is its own asyncio task, arriving at its generated time on an event loop whose
time is a fake clock (``cacheguard.testing.run_simulated``): tasks interleave exactly as in
real time, timeouts (``asyncio.wait_for`` inside ``cg.cached``) fire at their simulated
moment, and a schedule spanning minutes runs in milliseconds.
"""

from __future__ import annotations

from hypothesis import given

from promise_harness import CLAUSES, check_all, run_async
from strategies import Schedule, schedules


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
