"""Single-flight: concurrent misses of one key make one backend call, threads and tasks alike."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

import cacheward as cw

THREADS = 200
TASKS = 10_000


def run_threads(n: int, target: Any) -> list[Any]:
    """Start ``n`` threads behind a barrier so they call at once; return results/exceptions."""
    barrier = threading.Barrier(n)
    results: list[Any] = [None] * n

    def worker(i: int) -> None:
        barrier.wait()
        try:
            results[i] = target()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    return results


@pytest.mark.parametrize(
    "decorator", [cw.cached(ttl=60), cw.coalesce()], ids=["cached", "coalesce"]
)
def test_threads_on_one_cold_key_make_one_call(decorator: Any) -> None:
    calls = []

    @decorator
    def fetch(key: str) -> str:
        calls.append(key)
        time.sleep(0.2)  # long enough for every thread to arrive while it runs
        return key.upper()

    results = run_threads(THREADS, lambda: fetch("k"))
    assert results == ["K"] * THREADS
    assert len(calls) == 1
    assert fetch.stats().in_flight == 0


def test_threads_share_one_failure() -> None:
    calls = []

    @cw.cached(ttl=60)
    def fetch(key: str) -> str:
        calls.append(key)
        time.sleep(0.2)
        raise ConnectionError("db down")

    results = run_threads(THREADS, lambda: fetch("k"))
    assert len(calls) == 1
    # Every caller got the backend's error: the leader and its waiters share it, and anyone
    # arriving after it finished is refused by the back-off without a call.
    assert all(isinstance(r, (ConnectionError, cw.BackoffActive)) for r in results)
    assert sum(isinstance(r, ConnectionError) for r in results) >= THREADS // 2
    assert fetch.stats().in_flight == 0


@pytest.mark.parametrize(
    "decorator", [cw.cached(ttl=60), cw.coalesce()], ids=["cached", "coalesce"]
)
def test_tasks_on_one_cold_key_make_one_call(decorator: Any) -> None:
    calls = []

    @decorator
    async def fetch(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.05)
        return key.upper()

    async def main() -> list[str]:
        return await asyncio.gather(*(fetch("k") for _ in range(TASKS)))

    assert asyncio.run(main()) == ["K"] * TASKS
    assert len(calls) == 1
    assert fetch.stats().in_flight == 0


def test_tasks_share_one_failure() -> None:
    calls = []

    @cw.cached(ttl=60)
    async def fetch(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.05)
        raise ConnectionError("db down")

    async def main() -> list[Any]:
        return await asyncio.gather(*(fetch("k") for _ in range(TASKS)), return_exceptions=True)

    results = asyncio.run(main())
    assert len(calls) == 1
    assert all(isinstance(r, ConnectionError) for r in results)
    assert fetch.stats().in_flight == 0


def test_cancelled_waiter_cancels_neither_the_fetch_nor_the_others() -> None:
    calls = []

    @cw.cached(ttl=60)
    async def fetch(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.05)
        return "v"

    async def main() -> None:
        first = asyncio.create_task(fetch("k"))
        others = [asyncio.create_task(fetch("k")) for _ in range(10)]
        await asyncio.sleep(0.01)
        first.cancel()  # the caller that started the fetch leaves
        others[0].cancel()
        results = await asyncio.gather(*others[1:])
        assert results == ["v"] * 9
        with pytest.raises(asyncio.CancelledError):
            await first
        assert await fetch("k") == "v"  # stored: the shared fetch ran to the end

    asyncio.run(main())
    assert len(calls) == 1
    assert fetch.stats().in_flight == 0


def test_in_flight_table_is_empty_after_a_cancelled_fetch() -> None:
    @cw.cached(ttl=60)
    async def fetch(key: str) -> str:
        await asyncio.sleep(10)
        return "v"

    async def main() -> None:
        task = asyncio.create_task(fetch("k"))
        await asyncio.sleep(0.01)
        assert fetch.stats().in_flight == 1
        for pending in asyncio.all_tasks():
            if pending is not asyncio.current_task():
                pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0)

    asyncio.run(main())
    assert fetch.stats().in_flight == 0


def test_waiter_deadline_does_not_cancel_the_shared_fetch() -> None:
    calls = []

    @cw.coalesce(wait_timeout=0.02)
    async def work(key: str) -> str:
        calls.append(key)
        await asyncio.sleep(0.1)
        return "done"

    async def main() -> None:
        slow = asyncio.create_task(work("k"))
        with pytest.raises(cw.FetchTimeout):
            await work("k")
        with pytest.raises(cw.FetchTimeout):
            await slow
        await asyncio.sleep(0.15)
        assert work.stats().in_flight == 0

    asyncio.run(main())
    assert len(calls) == 1


def test_coalesce_does_not_cache() -> None:
    calls = []

    @cw.coalesce()
    def work(x: int) -> int:
        calls.append(x)
        return x * 2

    assert work(2) == 4
    assert work(2) == 4
    assert len(calls) == 2
    with pytest.raises(cw.ConfigurationError, match="timeout must be > 0"):
        cw.coalesce(wait_timeout=0)


def test_each_async_waiter_keeps_its_own_deadline() -> None:
    """One timer serves a flight's waiters: each still fails at its own deadline, in arrival
    order, and a late arrival whose deadline is after the fetch gets the value."""
    done: list[tuple[str, object]] = []

    @cw.coalesce(wait_timeout=0.2)
    async def work(key: str) -> str:
        await asyncio.sleep(0.5)
        return "value"

    async def caller(name: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            done.append((name, await work("k")))
        except cw.FetchTimeout:
            done.append((name, "timeout"))

    async def main() -> None:
        await asyncio.gather(caller("a", 0), caller("b", 0.1), caller("c", 0.45))

    asyncio.run(main())
    assert done == [("a", "timeout"), ("b", "timeout"), ("c", "value")]


# --- BaseExceptions stay with their caller; a fetch that calls itself (issue 15 item 16) ------


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SystemExit, GeneratorExit])
def test_an_interruption_in_a_sync_fetch_reaches_only_its_own_caller(
    interruption: type[BaseException],
) -> None:
    import threading

    entered, release = threading.Event(), threading.Event()

    @cw.cached(ttl=10)
    def load(key: str) -> str:
        entered.set()
        release.wait(5)
        raise interruption

    seen: list[BaseException] = []

    def lead() -> None:
        try:
            load("a")
        except BaseException as exc:  # the leader's own caller gets the interruption
            seen.append(exc)

    leader = threading.Thread(target=lead)
    leader.start()
    entered.wait(5)
    waiter_error: list[BaseException] = []

    def wait() -> None:
        try:
            load("a")
        except BaseException as exc:
            waiter_error.append(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    for _ in range(500):  # bounded: until the waiter has joined the flight
        if load.stats().coalesced_waits:
            break
        threading.Event().wait(0.002)
    release.set()
    leader.join(5)
    waiter.join(5)
    assert [type(e) for e in seen] == [interruption]
    assert [type(e) for e in waiter_error] == [cw.FetchInterrupted]


def test_a_cancelled_async_fetch_hands_waiters_fetch_interrupted_not_cancelled_error() -> None:
    async def main() -> list[BaseException]:
        started = asyncio.Event()

        @cw.cached(ttl=10)
        async def load(key: str) -> str:
            started.set()
            raise asyncio.CancelledError  # the fetch itself raises it: nobody cancelled a caller

        results = await asyncio.gather(load("a"), load("a"), return_exceptions=True)
        return list(results)

    results = asyncio.run(main())
    assert all(isinstance(r, cw.FetchInterrupted) for r in results), results


def test_a_fetch_that_calls_itself_on_the_same_key_gets_a_clear_error() -> None:
    @cw.cached(ttl=10, wait_timeout=5)
    def load(key: str) -> str:
        return load(key)  # waits for itself

    with pytest.raises(cw.RecursiveFetch, match="called the same cached function"):
        load("a")

    @cw.cached(ttl=10, wait_timeout=5)
    def other_key(key: str) -> str:
        return key if key == "inner" else other_key("inner")  # another key: fine

    assert other_key("outer") == "inner"


def test_an_async_fetch_that_calls_itself_gets_a_clear_error() -> None:
    @cw.cached(ttl=10, wait_timeout=5)
    async def load(key: str) -> str:
        return await load(key)

    with pytest.raises(cw.RecursiveFetch):
        asyncio.run(load("a"))
