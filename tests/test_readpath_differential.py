"""The plan-based read path against the hand-kept drivers it replaced (``legacy_cached``).

The same generated schedules (callers, layer faults, backend failures, invalidations) run
through both, sync and async, and must give identical backend calls, layer operations,
answers and errors. One documented difference: the sync driver's wait timeout now says "the
fetch", as the async one always did, instead of "another caller's fetch" (messages are not
compared; the error type and time are).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings

import cacheward as cw
import cacheward._guard
import legacy_cached
from promise_harness import Run, run_async, run_sync
from strategies import Schedule, schedules


@contextlib.contextmanager
def legacy() -> Iterator[None]:
    with (
        mock.patch.object(cw, "cached", legacy_cached.cached),
        mock.patch.object(cacheward._guard, "cached", legacy_cached.cached),
    ):
        yield


def observed(run: Run) -> dict[str, Any]:
    """Everything a caller, the backend or a layer can see of a run."""
    return {
        "attempts": [(a.number, a.key, a.start, a.end) for a in run.backend.attempts],
        "layers": [list(layer.ops) for layer in run.layers],
        "records": [
            (
                r.args,
                r.start,
                r.end,
                r.value if r.error is None else None,
                type(r.error).__name__ if r.error is not None else None,
            )
            for r in run.records
        ],
    }


def same(runner: Callable[[], Run]) -> None:
    with legacy():
        old = observed(runner())
    new = observed(runner())
    assert new == old


@settings(max_examples=int(os.environ.get("DIFF_EXAMPLES", "60")), deadline=None)
@given(schedules())
def test_sync_plans_match_the_old_driver(schedule: Schedule) -> None:
    same(lambda: run_sync(schedule))


@settings(max_examples=int(os.environ.get("DIFF_EXAMPLES", "60")), deadline=None)
@given(schedules())
def test_async_plans_match_the_old_driver(schedule: Schedule) -> None:
    same(lambda: run_async(schedule))


@pytest.mark.parametrize("runner", [run_sync, run_async])
@settings(max_examples=20, deadline=None)
@given(schedule=schedules())
def test_guard_plans_match_the_old_driver(runner: Callable[..., Run], schedule: Schedule) -> None:
    same(lambda: runner(schedule, stack="guard"))


def test_the_comparison_catches_a_driver_that_differs() -> None:
    """The sibling: a new driver that never serves stale on error differs from the old one
    on some schedule the search finds (derandomized, so it finds it every run)."""
    from hypothesis import HealthCheck, find

    import cacheward._readpath

    def never_stale(self: Any, entry: Any, exc: BaseException) -> Any:
        raise exc

    def differs(schedule: Schedule) -> bool:
        with legacy():
            old = observed(run_sync(schedule))
        with mock.patch.object(cacheward._readpath.Driver, "fallback", never_stale):
            new = observed(run_sync(schedule))
        return new != old

    found = find(
        schedules(),
        differs,
        settings=settings(
            derandomize=True,
            max_examples=2000,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
    assert found is not None


def test_the_old_driver_is_the_one_patched_in() -> None:
    with legacy():
        fn = cw.cached(ttl=1)(lambda x: x)
    assert type(fn.stats()).__module__ == "legacy_cached"
