"""One function's slow refreshes must not starve another's (issue 15 item 7).

Real threads, the real shared refresh pool (or a real one-thread executor), a fake clock for
the entries' ages only. Each test has a sibling that removes the mechanism and shows the test
catches it. Waits are bounded; nothing asserts how fast anything was.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward import _readpath
from cacheward.testing import FakeClock

BOUND = 5.0


def until(check: Callable[[], bool], seconds: float = BOUND) -> bool:
    for _ in range(int(seconds / 0.01)):
        if check():
            return True
        time.sleep(0.01)
    return check()


def pool_idle() -> bool:
    """Every worker of the shared refresh pool is free (no earlier test's job holds one)."""
    return bool(_readpath._POOL_WORKERS._value == _readpath.POOL_SIZE)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    assert until(pool_idle)
    event = threading.Event()
    yield event
    event.set()
    assert until(pool_idle)


def slow_function(release: threading.Event, keys: int) -> tuple[Any, FakeClock]:
    """A function whose refreshes block until ``release``; ``keys`` of its keys stale, their
    refreshes asked for (as many as it may run, and more)."""
    clock = FakeClock()
    fetched: list[int] = []

    def slow(key: int) -> int:
        fetched.append(key)
        if len(fetched) > keys:  # the first fetch of each key is quick, the refreshes block
            release.wait(BOUND * 2)
        return key

    fn = cw.cached(ttl=1, stale_ttl=1000, clock=clock)(slow)
    for key in range(keys):
        fn(key)
    clock.advance(2)
    for key in range(keys):
        fn(key)  # stale: served, and a refresh asked for
    return fn, clock


def healthy_beside_a_slow_one(release: threading.Event) -> dict[str, Any]:
    """The slow function asks for 16 refreshes (more than the shared pool's workers); then a
    healthy function's key goes stale, and later past its stale limit."""
    slow, _ = slow_function(release, keys=16)
    clock = FakeClock()
    calls: list[int] = []

    def quick(key: int) -> int:
        calls.append(key)
        return len(calls)

    healthy = cw.cached(ttl=1, stale_ttl=1, clock=clock, wait_timeout=0.5)(quick)
    first = healthy(1)
    clock.advance(1.5)
    served_stale = healthy(1) == first
    refreshed = until(lambda: len(calls) == 2)
    clock.advance(1.0)  # past the stale limit of the first entry (the refreshed one is fresh)
    try:
        later: Any = healthy(1)
    except cw.CacheWardError as exc:
        later = type(exc).__name__
    stats = healthy.stats()
    return {
        "served_stale": served_stale,
        "refreshed": refreshed,
        "later": later,
        "skipped": stats.refreshes_skipped,
        "slow_running": slow.stats().refreshes,
    }


def test_a_slow_functions_refreshes_leave_workers_for_others(release: threading.Event) -> None:
    answer = healthy_beside_a_slow_one(release)
    assert answer == {
        "served_stale": True,
        "refreshed": True,
        "later": 2,
        "skipped": 0,
        "slow_running": _readpath.POOL_SHARE,
    }


def test_healthy_beside_a_slow_one_fails_without_the_share(
    release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mechanism removed: one function may take every worker of the shared pool.
    monkeypatch.setattr(_readpath, "POOL_SHARE", _readpath.POOL_SIZE)
    answer = healthy_beside_a_slow_one(release)
    assert answer["refreshed"] is False
    assert answer["skipped"] == 1
    assert answer["slow_running"] == _readpath.POOL_SIZE


# --- a queued refresh is never waited for ------------------------------------------------------


def caller_behind_a_queued_refresh(release: threading.Event) -> dict[str, Any]:
    """A one-thread executor busy with another job; a key's refresh is queued behind it; then
    the key is past its stale limit and a caller comes. Then the executor is free again."""
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    executor.submit(release.wait, BOUND * 2)
    clock = FakeClock()
    calls: list[int] = []

    def quick(key: int) -> int:
        calls.append(key)
        return len(calls)

    fn = cw.cached(ttl=1, stale_ttl=1, clock=clock, wait_timeout=0.3, refresh_executor=executor)(
        quick
    )
    try:
        fn(1)
        clock.advance(1.5)
        fn(1)  # stale: served, its refresh queued behind the busy job
        clock.advance(1.0)
        try:
            answer: Any = fn(1)
        except cw.CacheWardError as exc:
            answer = type(exc).__name__
        release.set()
        executor.shutdown(wait=True)  # the queued job runs now, and must find nothing to do
        return {"answer": answer, "calls": len(calls)}
    finally:
        release.set()
        executor.shutdown(wait=False)


def test_a_caller_takes_over_a_refresh_still_in_the_queue(release: threading.Event) -> None:
    assert caller_behind_a_queued_refresh(release) == {"answer": 2, "calls": 2}


def test_caller_behind_a_queued_refresh_fails_when_it_waits_for_the_queue(
    release: threading.Event, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mechanism removed: a refresh's flight is never marked queued, so callers wait for it.
    monkeypatch.setattr(
        _readpath.SyncFlight, "queued", property(lambda self: False, lambda self, value: None)
    )
    answer = caller_behind_a_queued_refresh(release)
    assert answer["answer"] == "FetchTimeout"


# --- the core's part ---------------------------------------------------------------------------


def core_with_a_stale_key() -> tuple[Any, Any]:
    from cacheward._core.entry import Entry
    from cacheward._core.readthrough import Action, Flight, ReadThrough

    core: ReadThrough[Flight] = ReadThrough(backoff=1.0, backoff_max=10.0)
    stale = Entry("v", created=0.0, fresh_until=1.0, stale_until=5.0)
    action, _, flight = core.decide("k", stale, now=2.0, mono=2.0, new_flight=Flight)
    assert action is Action.REFRESH
    return core, flight


def test_core_a_caller_past_the_stale_limit_takes_over_a_queued_refresh() -> None:
    from cacheward._core.readthrough import Action, Flight

    core, refresh = core_with_a_stale_key()
    action, _, flight = core.decide("k", None, now=6.0, mono=6.0, new_flight=Flight)
    assert (action, flight) == (Action.FETCH, refresh)
    assert core.begin("k", refresh) is False  # the job finds it taken
    again, _, joined = core.decide("k", None, now=6.0, mono=6.0, new_flight=Flight)
    assert (again, joined) == (Action.WAIT, refresh)  # led now: later callers wait for it


def test_core_a_started_refresh_is_waited_for() -> None:
    from cacheward._core.readthrough import Action, Flight

    core, refresh = core_with_a_stale_key()
    assert core.begin("k", refresh) is True
    action, _, flight = core.decide("k", None, now=6.0, mono=6.0, new_flight=Flight)
    assert (action, flight) == (Action.WAIT, refresh)


def test_core_a_queued_refresh_invalidated_meanwhile_does_nothing() -> None:
    core, refresh = core_with_a_stale_key()
    core.invalidate("k")
    assert core.begin("k", refresh) is False


def test_core_forgets_a_stranded_flight() -> None:
    from cacheward._core.readthrough import Action, Flight

    class Stranded(Flight):
        def stranded(self) -> bool:
            return True

    core: Any = core_with_a_stale_key()[0]
    core.states["k"].flight = Stranded()
    action, _, flight = core.decide("k", None, now=6.0, mono=6.0, new_flight=Flight)
    assert action is Action.FETCH
    assert type(flight) is Flight
