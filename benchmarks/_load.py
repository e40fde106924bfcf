"""The load generators every benchmark shares: a counting backend, bursts and steady streams.

* :class:`Backend`: a backend that takes ``latency`` seconds per call and counts its calls
  (thread-safe), with a plain and an ``async def`` face;
* bursts, for stampedes: :func:`async_storm` (``tasks`` concurrent awaits) and
  :func:`thread_storm` (``threads`` threads released together), each bounded by
  :data:`STORM_TIMEOUT`;
* steady streams, for outages: :func:`async_load` and :func:`thread_load` (``rate`` callers per
  second for ``duration`` seconds over ``keys`` keys), each caller bounded by
  :data:`CALL_TIMEOUT`;
* :func:`closed_port`: a loopback port nobody listens on.

One implementation of each, imported by the benchmarks that use them (``stampede``, ``outage``,
``peers``); this module imports no benchmark.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _harness as h

__all__ = [
    "CALL_TIMEOUT",
    "STORM_TIMEOUT",
    "Backend",
    "async_load",
    "async_storm",
    "closed_port",
    "thread_load",
    "thread_storm",
]

#: Bound on one stampede: a contender that hangs is reported, not waited for.
STORM_TIMEOUT = 30.0
#: No caller of a steady stream is waited for longer than this; one still waiting is an error.
CALL_TIMEOUT = 15.0


def _double(k: int) -> object:
    return k * 2


class Backend:
    """A backend that takes ``latency`` seconds, answers ``answer(k)`` and counts its calls."""

    def __init__(self, latency: float, answer: Callable[[int], object] = _double) -> None:
        self.latency = latency
        self.answer = answer
        self.calls = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def sync(self) -> Callable[[int], Any]:
        """The backend as a plain function."""

        def fetch(k: int) -> object:
            self._count()
            time.sleep(self.latency)
            return self.answer(k)

        return fetch

    def coro(self) -> Callable[[int], Any]:
        """The backend as an ``async def`` function."""

        async def fetch(k: int) -> object:
            self._count()
            await asyncio.sleep(self.latency)
            return self.answer(k)

        return fetch


# --------------------------------------------------------------------------- bursts


def _burst_result(
    wall: float, outcomes: list[Any], expected: object, missing: int, timed_out: bool
) -> dict[str, Any]:
    errors = [o for o in outcomes if isinstance(o, BaseException)]
    wrong = sum(1 for o in outcomes if not isinstance(o, BaseException) and o != expected)
    return {
        "wall": wall,
        "errors": len(errors) + missing,
        "wrong": wrong,
        "error_types": sorted({type(e).__name__ for e in errors}),
        "timed_out": timed_out,
    }


def async_storm(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[int], Any],
    key: int,
    tasks: int,
    *,
    expected: object = None,
) -> dict[str, Any]:
    """``tasks`` concurrent ``await fn(key)``; wall time, errors and wrong values.

    ``expected`` is the right answer (default: ``key * 2``, what :class:`Backend` answers).
    """

    async def storm() -> tuple[float, list[Any]]:
        start = time.perf_counter()
        results = await asyncio.wait_for(
            asyncio.gather(*(fn(key) for _ in range(tasks)), return_exceptions=True),
            STORM_TIMEOUT,
        )
        return time.perf_counter() - start, results

    try:
        wall, results = loop.run_until_complete(storm())
    except asyncio.TimeoutError:
        return {"wall": STORM_TIMEOUT, "errors": tasks, "wrong": 0, "timed_out": True}
    return _burst_result(wall, results, key * 2 if expected is None else expected, 0, False)


def thread_storm(
    fn: Callable[[int], Any], key: int, threads: int, *, expected: object = None
) -> dict[str, Any]:
    """``threads`` threads released together call ``fn(key)``; wall time, errors, wrong values."""
    barrier = threading.Barrier(threads + 1)
    outcomes: list[Any] = []
    lock = threading.Lock()

    def caller() -> None:
        try:
            barrier.wait(STORM_TIMEOUT)
            value: Any = fn(key)
        except BaseException as exc:
            value = exc
        with lock:
            outcomes.append(value)

    workers = [threading.Thread(target=caller, daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    barrier.wait(STORM_TIMEOUT)
    start = time.perf_counter()
    deadline = start + STORM_TIMEOUT
    for w in workers:
        w.join(max(0.0, deadline - time.perf_counter()))
    wall = time.perf_counter() - start
    timed_out = any(w.is_alive() for w in workers)
    with lock:
        done = list(outcomes)
    right = key * 2 if expected is None else expected
    return _burst_result(wall, done, right, threads - len(done), timed_out)


# --------------------------------------------------------------------------- steady streams


def async_load(
    fn: Callable[[int], Any],
    rate: int,
    duration: float,
    *,
    keys: int,
    expected: Callable[[int], object],
) -> list[tuple[float, bool]]:
    """``rate`` tasks per second for ``duration`` s, each ``await fn(i % keys)``.

    Returns ``(latency, right answer)`` per caller, on an event loop of its own.
    """

    async def one(k: int) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            value = await asyncio.wait_for(fn(k), CALL_TIMEOUT)
            ok = value == expected(k)
        except Exception:
            ok = False
        return time.perf_counter() - start, ok

    async def load() -> list[tuple[float, bool]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(int(rate * duration)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i % keys)))
        return list(await asyncio.gather(*tasks))

    loop = h.new_loop()
    try:
        return loop.run_until_complete(load())
    finally:
        h.close_loop(loop)


def thread_load(
    fn: Callable[[int], Any],
    rate: int,
    duration: float,
    *,
    keys: int,
    expected: Callable[[int], object],
) -> list[tuple[float, bool]]:
    """``rate`` threads per second for ``duration`` s, each calling ``fn(i % keys)``.

    Returns ``(latency, right answer)`` per caller; one still blocked after
    :data:`CALL_TIMEOUT` counts as a wrong answer that took ``CALL_TIMEOUT``.
    """
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        start = time.perf_counter()
        try:
            ok = fn(k) == expected(k)
        except Exception:
            ok = False
        with lock:
            results.append((time.perf_counter() - start, ok))

    threads = []
    start = time.perf_counter()
    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(i % keys,), daemon=True)
        t.start()
        threads.append(t)
    deadline = time.perf_counter() + CALL_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    with lock:
        finished = list(results)
    finished.extend((CALL_TIMEOUT, False) for _ in range(len(threads) - len(finished)))
    return finished


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
