"""Test mode: ``cacheward.testing.disabled()``, ``cw.bypass()`` and the pytest fixture.

Each test checks both sides: inside the scope every call reaches the function and nothing is
stored; outside (before, after, or in another thread or task for ``bypass``) caching works.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

import cacheward as cw
from cacheward.testing import FakeClock, disabled


def counting() -> tuple[list[Any], Any]:
    calls: list[Any] = []

    def fetch(key: Any) -> Any:
        calls.append(key)
        return (key, len(calls))

    return calls, fetch


@pytest.mark.parametrize("shape", ["single", "generic", "keyed", "no_memory"])
def test_disabled_sends_every_call_to_the_function_and_stores_nothing(shape: str) -> None:
    clock = FakeClock()
    calls: list[Any] = []
    options: dict[str, Any] = {"ttl": 60, "clock": clock}
    if shape == "keyed":
        options["key"] = lambda key, *_: (key,)
    if shape == "no_memory":
        options["layers"] = []

    if shape == "generic":

        def fetch(key: Any, extra: int = 0) -> Any:
            calls.append(key)
            return (key, len(calls))

    else:

        def fetch(key: Any) -> Any:
            calls.append(key)
            return (key, len(calls))

    cached = cw.cached(**options)(fetch)
    cached("a")  # stored (when there is a layer)
    with disabled():
        assert cached("a") == ("a", 2)
        assert cached("b") == ("b", 3)
        assert cached("b") == ("b", 4)
    assert len(calls) == 4
    # Nothing the disabled calls returned was stored: "b" is fetched again, "a" is the old entry.
    expected_a = ("a", 5) if shape == "no_memory" else ("a", 1)
    assert cached("a") == expected_a
    assert cached("b")[0] == "b"
    stats = cached.stats()
    assert stats.fetches == (3 if shape == "no_memory" else 2)


def test_disabled_also_hides_fresh_entries_from_the_hot_path() -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    cached("x")
    cached("x")
    assert len(calls) == 1  # a memory hit
    with disabled():
        cached("x")
        cached(7)
    assert len(calls) == 3
    cached("x")
    assert len(calls) == 3  # the entry from before is served again


def test_scopes_nest_and_overlap_across_threads() -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    entered, release = threading.Event(), threading.Event()

    def other() -> None:
        with disabled():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other)
    outer = disabled()
    with outer:
        thread.start()
        assert entered.wait(10)
    # The other thread's scope is still open: caching stays off for everyone.
    cached("k")
    cached("k")
    assert len(calls) == 2
    release.set()
    thread.join(10)
    cached("k")
    cached("k")
    assert len(calls) == 3


def test_disabled_reaches_threads_started_elsewhere() -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    results: list[Any] = []
    with disabled():
        worker = threading.Thread(target=lambda: results.extend([cached("t"), cached("t")]))
        worker.start()
        worker.join(10)
    assert results == [("t", 1), ("t", 2)]


def test_bypass_is_local_to_the_thread() -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    cached("k")
    seen: list[Any] = []
    with cw.bypass():
        assert cached("k") == ("k", 2)
        worker = threading.Thread(target=lambda: seen.append(cached("k")))
        worker.start()
        worker.join(10)
    assert seen == [("k", 1)]  # the other thread kept the cache
    assert cached("k") == ("k", 1)


def test_bypass_is_local_to_the_task_and_inherited_by_its_children() -> None:
    asyncio.run(_bypass_in_tasks())


async def _bypass_in_tasks() -> None:
    calls: list[str] = []

    @cw.cached(ttl=60, clock=FakeClock())
    async def fetch(key: str) -> tuple[str, int]:
        calls.append(key)
        await asyncio.sleep(0)
        return (key, len(calls))

    await fetch("k")
    gate = asyncio.Event()

    async def bypassing() -> list[Any]:
        with cw.bypass():
            first = await fetch("k")
            child = await asyncio.create_task(fetch("k"))
            await gate.wait()
            return [first, child]

    async def caching() -> Any:
        value = await fetch("k")
        gate.set()
        return value

    bypassed, cached_value = await asyncio.gather(bypassing(), caching())
    assert cached_value == ("k", 1)
    assert bypassed == [("k", 2), ("k", 3)]
    assert await fetch("k") == ("k", 1)


def test_disabled_with_async_functions_and_no_memory_layer() -> None:
    asyncio.run(_disabled_async())


async def _disabled_async() -> None:
    calls: list[str] = []

    @cw.cached(ttl=60, layers=[], clock=FakeClock())
    async def fetch(key: str) -> int:
        calls.append(key)
        return len(calls)

    with disabled():
        assert [await fetch("a"), await fetch("a")] == [1, 2]


def test_guard_keeps_limits_and_retries_unless_asked() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    def flaky(key: str) -> str:
        attempts.append(1)
        raise ConnectionError("down")

    guarded = cw.guard(
        ttl=60,
        clock=clock,
        limiter=cw.TokenBucket(rate=0.001, burst=2, clock=clock),
        max_wait=0,
        attempts=3,
        backoff=0,
        budget=cw.RetryBudget(ratio=1.0, min_per_second=100, clock=clock),
    )(flaky)
    with disabled(), pytest.raises(cw.RateLimited):
        guarded("a")  # two attempts took the burst, the third was refused
    assert len(attempts) == 2
    attempts.clear()
    with disabled(limits=True, retries=True):
        for _ in range(5):
            with pytest.raises(ConnectionError):
                guarded("a")
    assert len(attempts) == 5  # one attempt each, no token needed, breaker ignored


def test_limits_off_lets_a_plain_rate_limit_and_breaker_through() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=1, clock=clock)
    breaker = cw.CircuitBreaker(failure_threshold=1, reset_timeout=60, clock=clock)

    @cw.circuit_breaker(breaker)
    @cw.rate_limit(bucket, max_wait=0)
    def call() -> int:
        return 1

    call()
    with pytest.raises(cw.RateLimited):
        call()
    with cw.bypass(limits=True):
        assert [call(), call()] == [1, 1]


def test_retries_off_makes_one_attempt() -> None:
    clock = FakeClock()
    attempts: list[int] = []

    @cw.retry(attempts=4, clock=clock, budget=cw.RetryBudget(min_per_second=100, clock=clock))
    def call() -> None:
        attempts.append(1)
        raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        call()
    assert len(attempts) == 4
    attempts.clear()
    with disabled(retries=True), pytest.raises(ConnectionError):
        call()
    assert len(attempts) == 1


def test_decorator_form_and_repr() -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    scope = disabled()

    @scope
    def twice() -> None:
        cached("d")
        cached("d")

    twice()
    assert len(calls) == 2
    assert "open=0" in repr(scope)


def test_fixture(cacheward_disabled: disabled) -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    cached("f")
    cached("f")
    assert len(calls) == 2
    assert "open=1" in repr(cacheward_disabled)


def test_outside_every_scope_the_cache_is_on() -> None:
    # Runs after test_fixture in file order: the fixture's scope closed with its test.
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    cached("f")
    cached("f")
    assert len(calls) == 1


def test_decorator_on_async_functions_and_concurrent_threads() -> None:
    calls, fetch = counting()
    cached = cw.cached(ttl=60, clock=FakeClock())(fetch)
    cached("x")

    @cw.bypass()
    async def fresh() -> Any:
        await asyncio.sleep(0)
        return cached("x")

    assert asyncio.run(fresh()) == ("x", 2)
    assert cached("x") == ("x", 1)  # the scope ended with the coroutine, not before it ran

    shared = cw.bypass()
    gate = threading.Barrier(4, timeout=10)

    @shared
    def in_thread() -> None:
        gate.wait()
        cached("x")

    threads = [threading.Thread(target=in_thread) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(calls) == 6  # each thread's call bypassed, from one shared decorator
    assert cached("x") == ("x", 1)
