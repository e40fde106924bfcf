"""The rows of ``python -m benchmarks faults`` that a process or its threads cause, not Redis.

Issue 15 items 5, 6 and 7, on the same stack as the other rows (``guard`` over L1 + a
``RedisLayer.from_url`` on the program's own ``redis-server``, ``TokenBucket(rate, burst)``,
``timeout=DEADLINE``):

- **two event loops** (async): four threads each run their own ``asyncio.run`` with a quarter of
  the tasks; at the fault's start the first loop's ``asyncio.run`` ends (cancelling the fetch
  tasks it leads while the other loops wait for them), and a new ``asyncio.run`` takes its place
  at the fault's end (one loop after another);
- **fork with a flight in progress** (sync and async): at the fault's start the process forks
  while a thread leads a slow fetch; the child runs the same callers for the fault's length
  and reports through a pipe (its figures are added to the parent's; the bound is each
  process's own ``b + r·T``);
- **refresh starvation across functions** (sync): beside the measured function, another one
  keeps asking for refreshes, which take 2.5 deadlines (3 s) from the fault's start to its end;
  the row is the measured function's (``stale_ttl=ttl``, so it refreshes in the background
  too).

Leaks count threads other than the refresh and write pools' (bounded and reused by design).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import threading
import time
import warnings
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks._faultkit import (
    BURST,
    DEADLINE,
    FAULT_FROM,
    FAULT_TO,
    KEYS,
    RATE,
    TIMEOUT,
    TTL,
    Backend,
    Row,
    _fds,
    environment,
)

#: The fork row's slow key (led by a thread while the process forks) and its fetch time.
SLOW_KEY, SLOW_FETCH = -1, 0.3
#: How long the other function's refreshes take during the starvation row's fault.
STARVING_FETCH = 2.5 * DEADLINE


class Record:
    """Callers' outcomes: the worst latency and the errors by type (thread-safe)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.worst = 0.0
        self.errors: Counter[str] = Counter()

    def call(self, started: float, error: BaseException | None) -> None:
        took = time.monotonic() - started
        with self.lock:
            self.worst = max(self.worst, took)
            if error is not None:
                prefix = "cw." if _is_ours(error) else ""
                self.errors[prefix + type(error).__name__] += 1

    def merge(self, worst: float, errors: dict[str, int]) -> None:
        with self.lock:
            self.worst = max(self.worst, worst)
            self.errors.update(errors)


def _is_ours(error: BaseException) -> bool:
    import cacheward as cw

    return isinstance(error, cw.CacheWardError)


def _threads() -> int:
    """Threads alive, but the refresh and write pools' (bounded and reused)."""
    return sum(
        1
        for t in threading.enumerate()
        if not t.name.startswith(("cacheward-refresh", "cacheward-write"))
    )


def _bound(elapsed: float) -> float:
    return BURST + RATE * elapsed


def _stack(env: Any, namespace: str, **settings: Any) -> tuple[Any, Callable[..., Any]]:
    """The layer and a decorator for the stack of every row."""
    import cacheward as cw

    layer = cw.RedisLayer.from_url(env.server.url, timeout=TIMEOUT, namespace=namespace)
    decorate = cw.guard(
        ttl=TTL,
        layers=[cw.MemoryLayer(), layer],
        limiter=cw.TokenBucket(rate=RATE, burst=BURST),
        timeout=DEADLINE,
        **settings,
    )
    return layer, decorate


def hammer(load: Callable[[int], Any], record: Record, stop_at: float, offset: int) -> None:
    """One synchronous caller: keys in turn until ``stop_at``."""
    i = offset
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            load(i % KEYS)
        except Exception as exc:
            record.call(started, exc)
        else:
            record.call(started, None)
        i += 1
        time.sleep(0.001)


async def ahammer(
    load: Callable[[int], Awaitable[Any]], record: Record, stop_at: float, offset: int
) -> None:
    """One asyncio caller (a call cancelled because its own loop ends is not counted)."""
    i = offset
    while time.monotonic() < stop_at:
        started = time.monotonic()
        try:
            await load(i % KEYS)
        except Exception as exc:
            record.call(started, exc)
        else:
            record.call(started, None)
        i += 1
        await asyncio.sleep(0.001)


# --- two event loops ---------------------------------------------------------------------------


def two_event_loops(seconds: float, callers: int) -> Row:
    with environment() as env:
        layer, decorate = _stack(env, f"faults{time.monotonic_ns()}")
        backend = Backend()

        @decorate
        async def load(key: int) -> int:
            backend.hit()
            await asyncio.sleep(0.002)
            return key

        async def warm() -> None:
            for key in range(KEYS):
                await load(key)
            await layer.aclose()

        asyncio.run(warm())
        threads0, fds0, calls0 = _threads(), _fds(), backend.calls
        record = Record()
        began = time.monotonic()
        end = began + seconds
        fault_at, healed_at = began + seconds * FAULT_FROM, began + seconds * FAULT_TO
        per_loop = max(1, callers // 4)

        def loop_thread(index: int) -> None:
            async def main(stop_at: float) -> None:
                tasks = [
                    asyncio.ensure_future(ahammer(load, record, stop_at, index * per_loop + n))
                    for n in range(per_loop)
                ]
                await asyncio.wait(tasks, timeout=max(0.0, stop_at - time.monotonic()) + 1)
                for task in tasks:
                    task.cancel()
                await layer.aclose()

            if index == 0:  # this loop ends first; another takes its place later
                asyncio.run(main(fault_at))
                time.sleep(max(0.0, healed_at - time.monotonic()))
            asyncio.run(main(end))

        threads = [threading.Thread(target=loop_thread, args=(n,)) for n in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=DEADLINE * 10 + seconds)
        elapsed = time.monotonic() - began
        layer.close()
        time.sleep(0.2)
        leaks = {"threads": _threads() - threads0, "fds": _fds() - fds0}
        return Row("two event loops (one ends first)", "async", backend.calls - calls0,
                   _bound(elapsed), record.worst, record.errors,
                   {k: max(0, v) for k, v in leaks.items()})  # fmt: skip


# --- fork with a flight in progress ------------------------------------------------------------


def _in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Fork; the child runs ``work`` and reports its JSON through a pipe (bounded wait)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # forking with threads: the point
        pid = os.fork()
    if pid == 0:
        try:
            os.close(read_end)
            answer = work()
        except BaseException as exc:  # reported, never raised in the parent's code
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        with contextlib.suppress(BaseException):
            os.write(write_end, json.dumps(answer).encode())
        os._exit(0)
    os.close(write_end)
    data, deadline = b"", time.monotonic() + DEADLINE * 10 + 30
    while time.monotonic() < deadline:
        ready, _, _ = select.select([read_end], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(read_end, 65536) if ready else b""
        if not chunk:
            break
        data += chunk
    os.close(read_end)
    if not os.waitpid(pid, os.WNOHANG)[0]:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    return json.loads(data) if data else {"error": "the child did not answer"}


def fork_with_a_flight(seconds: float, callers: int, colour: str) -> Row:
    asynchronous = colour == "async"
    with environment() as env:
        layer, decorate = _stack(env, f"faults{time.monotonic_ns()}")
        backend = Backend()

        def fetch(key: int) -> int:
            backend.hit()
            time.sleep(SLOW_FETCH if key == SLOW_KEY else 0.002)
            return key

        if asynchronous:

            @decorate
            async def aload(key: int) -> int:
                return await asyncio.to_thread(fetch, key)

            async def once(key: int) -> int:
                try:
                    return await aload(key)
                finally:
                    await layer.aclose()  # this loop's client

            load: Callable[[int], Any] = lambda key: asyncio.run(once(key))  # noqa: E731
        else:
            load = decorate(fetch)
        if asynchronous:

            async def warm() -> None:
                for key in range(KEYS):
                    await aload(key)
                await layer.aclose()

            asyncio.run(warm())
        else:
            for key in range(KEYS):
                load(key)
        threads0, fds0, calls0 = _threads(), _fds(), backend.calls
        record = Record()
        began = time.monotonic()
        end = began + seconds
        window = seconds * (FAULT_TO - FAULT_FROM)

        def callers_until(stop_at: float) -> None:
            """The callers, in threads (sync) or as tasks of one loop (async), until then."""
            if asynchronous:

                async def main() -> None:
                    await asyncio.gather(
                        *(ahammer(aload, record, stop_at, n) for n in range(callers))
                    )
                    await layer.aclose()

                asyncio.run(main())
                return
            threads = [
                threading.Thread(target=hammer, args=(load, record, stop_at, n))
                for n in range(callers)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(timeout=DEADLINE * 10 + seconds)

        def child() -> dict[str, Any]:
            backend.calls = 0
            record.worst, record.errors = 0.0, Counter()
            started = time.monotonic()
            try:
                load(SLOW_KEY)  # the key the parent's thread was fetching at the fork
            except Exception as exc:
                record.call(started, exc)
            else:
                record.call(started, None)
            callers_until(time.monotonic() + window)
            return {
                "calls": backend.calls,
                "elapsed": time.monotonic() - started,
                "worst": record.worst,
                "errors": dict(record.errors),
            }

        runner = threading.Thread(target=callers_until, args=(end,))
        runner.start()
        time.sleep(seconds * FAULT_FROM)
        slow = threading.Thread(target=load, args=(SLOW_KEY,))
        slow.start()
        time.sleep(SLOW_FETCH / 3)  # its fetch is under way
        answer = _in_child(child)
        slow.join(timeout=DEADLINE * 10)
        runner.join(timeout=DEADLINE * 10 + seconds)
        elapsed = time.monotonic() - began
        layer.close()
        time.sleep(0.2)
        leaks = {"threads": _threads() - threads0, "fds": _fds() - fds0}
        if "error" in answer:
            record.errors[f"child: {answer['error']}"] += 1
            child_calls, child_bound = 0, 0.0
        else:
            record.merge(answer["worst"], answer["errors"])
            child_calls, child_bound = answer["calls"], _bound(answer["elapsed"])
        return Row("fork with a flight in progress", colour,
                   backend.calls - calls0 + child_calls, _bound(elapsed) + child_bound,
                   record.worst, record.errors, {k: max(0, v) for k, v in leaks.items()},
                   note="parent + child: each process's own b + r·T")  # fmt: skip


# --- refresh starvation ------------------------------------------------------------------------


def refresh_starvation(seconds: float, callers: int) -> Row:
    with environment() as env:
        layer, decorate = _stack(env, f"faults{time.monotonic_ns()}", stale_ttl=TTL)
        other_layer, other_decorate = _stack(
            env, f"faults-other{time.monotonic_ns()}", stale_ttl=600
        )
        backend = Backend()
        starving = threading.Event()

        @decorate
        def load(key: int) -> int:
            backend.hit()
            time.sleep(0.002)
            return key

        @other_decorate
        def other(key: int) -> int:
            if starving.is_set():
                time.sleep(STARVING_FETCH)
            return key

        for key in range(KEYS):
            load(key)
            other(key)
        threads0, fds0, calls0 = _threads(), _fds(), backend.calls
        record, ignored = Record(), Record()
        began = time.monotonic()
        stop_at = began + seconds
        threads = [
            threading.Thread(target=hammer, args=(load, record, stop_at, n)) for n in range(callers)
        ]
        threads += [
            threading.Thread(target=hammer, args=(other, ignored, stop_at, n)) for n in range(4)
        ]
        for thread in threads:
            thread.start()
        time.sleep(seconds * FAULT_FROM)
        starving.set()
        time.sleep(seconds * (FAULT_TO - FAULT_FROM))
        starving.clear()
        for thread in threads:
            thread.join(timeout=DEADLINE * 10 + seconds)
        elapsed = time.monotonic() - began
        layer.close()
        other_layer.close()
        time.sleep(0.2)
        leaks = {"threads": _threads() - threads0, "fds": _fds() - fds0}
        stats, others = load.stats().cache, other.stats().cache
        note = (
            f"measured function: {stats.refreshes} refreshes, {stats.refreshes_skipped} "
            f"skipped, {stats.coalesced_waits} waits; the other: {others.refreshes} refreshes, "
            f"{others.refreshes_skipped} skipped"
        )
        return Row("refresh starvation across functions", "sync", backend.calls - calls0,
                   _bound(elapsed), record.worst, record.errors,
                   {k: max(0, v) for k, v in leaks.items()}, note=note)  # fmt: skip


def rows(seconds: float, threads: int, tasks: int) -> list[Row]:
    """Every row of this module, printing progress."""
    out = []
    for name, colour, run in [
        ("two event loops", "async", lambda: two_event_loops(seconds, tasks)),
        ("fork with a flight", "sync", lambda: fork_with_a_flight(seconds, threads, "sync")),
        ("fork with a flight", "async", lambda: fork_with_a_flight(seconds, tasks, "async")),
        ("refresh starvation", "sync", lambda: refresh_starvation(seconds, threads)),
    ]:
        print(f"  {name}, {colour}...", flush=True)
        out.append(run())
    return out
