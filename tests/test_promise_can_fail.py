"""Each check of the promise can fail: switch its mechanism off and Hypothesis finds a breach.

The same generated schedules and the same checks as ``test_promise*.py``, with one mechanism
off: no token bucket (clause 1), no flight table (2), an unlimited retry budget (3), no failure
back-off (4), no caller timeout (5, deadline), no stale limit (5, stale) and a key function that
merges typed keys (5, keys). Shrinking is skipped: finding one breach is the point.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, given, settings

from promise_harness import Switches, check_all, layer_errors_reach_callers, run_async, run_sync
from strategies import Schedule, schedules
from test_promise import thread_keys, threaded_run

#: Derandomized: the same schedules every run, so a search that finds its breach once finds
#: it every time (a sibling that passes by luck would make the suite red by chance).
SEARCH = settings(
    max_examples=1_000,
    derandomize=True,
    database=None,
    deadline=None,
    report_multiple_bugs=False,
    print_blob=False,
    phases=[Phase.generate],
)

OFF = {
    "rate": Switches(limiter=False),
    "single_flight": Switches(coalescing=False),
    "budget": Switches(budget=False),
    "backoff": Switches(backoff=False),
    "deadline": Switches(timeout=False),
    "stale_limit": Switches(stale_limit=False),
    "keys": Switches(typed_keys=False),
}
# One caller at a time cannot overlap fetches, and a sync leader is not timed out (it runs the
# fetch in its own thread): those two are shown on threads and on async.
SYNC = ["rate", "budget", "backoff", "stale_limit", "keys"]


def search(runner: Any, clause: str) -> None:
    @SEARCH
    @given(schedules())
    def prop(schedule: Schedule) -> None:
        check_all(runner(schedule, OFF[clause]), (clause,))

    with pytest.raises(AssertionError, match=rf"^{clause}: "):
        prop()


@pytest.mark.parametrize("clause", sorted(OFF))
def test_async_check_fails_without_its_mechanism(clause: str) -> None:
    search(run_async, clause)


@pytest.mark.parametrize("clause", SYNC)
def test_sync_check_fails_without_its_mechanism(clause: str) -> None:
    search(run_sync, clause)


def test_threads_check_fails_without_the_flight_table() -> None:
    @SEARCH
    @given(thread_keys=thread_keys)
    def prop(thread_keys: list[Any]) -> None:
        _, _, most = threaded_run(thread_keys, "ok", "cached", coalescing=False)
        assert most <= 1, f"single_flight: {most} fetches of one key at once"

    with pytest.raises(AssertionError, match=r"^single_flight: "):
        prop()


@pytest.mark.parametrize("runner", [run_sync, run_async], ids=["sync", "async"])
def test_answers_check_fails_when_layer_errors_reach_callers(runner: Any) -> None:
    """Clause 5's "a value or a clear error": with layer errors no longer turned into misses,
    a hung or refused layer's TimeoutError / ConnectionError reaches callers, and the search
    finds it."""

    @SEARCH
    @given(schedules())
    def prop(schedule: Schedule) -> None:
        check_all(runner(schedule), ("answers",))

    with layer_errors_reach_callers(), pytest.raises(AssertionError, match=r"^answers: "):
        prop()
