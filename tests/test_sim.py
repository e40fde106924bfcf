"""The simulation harness in ``cacheward.testing``: virtual time, scripted layers and backend,
and the caller drivers do what their docs say."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward.testing import (
    FakeClock,
    ManualExecutor,
    Outcome,
    ScriptedBackend,
    ScriptedLayer,
    SimClock,
    run_sequence,
    run_simulated,
    run_tasks,
    run_threads,
)


def key(name: str) -> CacheKey:
    return CacheKey(name, "tests:v1", (name,), {}, ("k",))


def entry(value: object) -> Entry:
    return Entry(value, 0.0, 10.0, 20.0)


def test_timers_fire_in_simulated_time_and_tasks_interleave() -> None:
    clock = SimClock(monotonic_start=0.0)
    order: list[tuple[str, float]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.asleep(seconds)
        order.append((name, clock.monotonic()))

    async def main() -> str:
        await asyncio.gather(sleeper("late", 30.0), sleeper("early", 1.0))
        try:
            await asyncio.wait_for(asyncio.sleep(3600), timeout=5.0)
        except asyncio.TimeoutError:
            return "timed out"
        return "no"

    assert run_simulated(main(), clock=clock) == "timed out"
    assert order == [("early", 1.0), ("late", 30.0)]
    assert clock.monotonic() == pytest.approx(35.0)


def test_a_deadlock_is_reported_not_waited_for() -> None:
    clock = SimClock()

    async def main() -> None:
        await asyncio.get_running_loop().create_future()  # nobody will ever set it

    with pytest.raises(RuntimeError, match="deadlock"):
        run_simulated(main(), clock=clock, idle_limit=0.05)


def test_sim_clock_outside_a_simulation_is_a_fake_clock() -> None:
    clock = SimClock(monotonic_start=0.0)
    asyncio.run(clock.asleep(2.0))
    clock.sleep(1.0)
    assert clock.monotonic() == 3.0
    assert clock.sleeps == [2.0, 1.0]


def test_scripted_layer_modes_sync() -> None:
    clock = FakeClock(monotonic_start=0.0)
    layer = ScriptedLayer("l", clock=clock, timeout=0.5, capacity=1)
    layer.set(key("a"), entry(1))
    assert layer.get(key("a")) == entry(1)
    layer.set_mode("down")
    with pytest.raises(ConnectionError):
        layer.get(key("a"))
    layer.set_mode("hung")
    with pytest.raises(TimeoutError):
        layer.get(key("a"))
    assert clock.monotonic() == 0.5
    layer.set_mode("corrupt")
    assert layer.get(key("a")) == b"\x00\xffnot an entry"
    layer.set_mode("evicting")
    layer.set(key("b"), entry(2))
    assert layer.get(key("a")) is None
    assert layer.get(key("b")) == entry(2)
    layer.flush()
    assert layer.get(key("b")) is None
    with pytest.raises(ValueError, match="mode"):
        layer.set_mode("sideways")  # type: ignore[arg-type]
    assert [op[1:] for op in layer.ops[:3]] == [
        ("set", key("a").text, "ok"),
        ("get", key("a").text, "hit"),
        ("get", key("a").text, "down"),
    ]


def test_scripted_layer_hangs_on_the_simulated_clock_async() -> None:
    clock = SimClock(monotonic_start=0.0)
    layer = ScriptedLayer("l", clock=clock, timeout=0.25, mode="hung")

    async def main() -> float:
        with pytest.raises(TimeoutError):
            await layer.aget(key("a"))
        return clock.monotonic()

    assert run_simulated(main(), clock=clock) == 0.25


def test_scripted_backend_records_attempts_and_concurrency() -> None:
    clock = SimClock(monotonic_start=0.0)
    script = {1: Outcome("ok", delay=2.0), 2: Outcome("ok", delay=1.0), 3: Outcome("fail")}
    backend = ScriptedBackend(clock=clock, script=lambda k, n, now: script.get(n, Outcome("raise")))

    async def main() -> list[object]:
        results: list[object] = await asyncio.gather(
            backend.acall("a"),
            backend.acall("a"),
            backend.acall("b"),
            backend.acall("c"),
            return_exceptions=True,
        )
        return results

    results = run_simulated(main(), clock=clock)
    assert results[:2] == [["a", 1], ["a", 2]]
    assert isinstance(results[2], ConnectionError)
    assert isinstance(results[3], ValueError)
    assert backend.max_in_flight == 2  # the two "a" attempts overlapped
    assert [(a.start, a.end, a.concurrent) for a in backend.attempts[:2]] == [
        (0.0, 2.0, 1),
        (0.0, 1.0, 2),
    ]
    assert backend.value_of(2) is backend.attempts[1]
    assert backend.value_of(99) is None
    other = ScriptedBackend(clock=clock, first_number=1000)
    assert other("x") == ["x", 1000]


def test_manual_executor_runs_only_when_told() -> None:
    executor = ManualExecutor()
    ran: list[int] = []
    future = executor.submit(ran.append, 1)
    assert ran == []
    assert not future.done()
    assert executor.run_pending() == 1
    assert ran == [1]
    assert future.result() is None


def test_run_sequence_orders_events_before_callers_and_moves_time() -> None:
    clock = FakeClock(monotonic_start=0.0)
    seen: list[tuple[str, float]] = []

    def fn(name: str) -> str:
        seen.append((name, clock.monotonic()))
        clock.sleep(1.5)  # a slow call moves time on
        return name.upper()

    records = run_sequence(
        fn,
        [(1.0, ("b",)), (0.0, ("a",))],
        clock=clock,
        events=[(1.0, lambda: seen.append(("event", clock.monotonic())))],
    )
    assert seen == [("a", 0.0), ("event", 1.5), ("b", 1.5)]
    assert [(r.args, r.value, r.start, r.end) for r in records] == [
        (("a",), "A", 0.0, 1.5),
        (("b",), "B", 1.5, 3.0),
    ]


def test_run_tasks_leaves_a_hung_caller_unanswered_at_the_horizon() -> None:
    clock = SimClock(monotonic_start=0.0)

    async def fn(seconds: float) -> float:
        await clock.asleep(seconds)
        return seconds

    records = run_simulated(
        run_tasks(fn, [(0.0, (1.0,)), (0.0, (10_000.0,))], clock=clock, horizon=100.0),
        clock=clock,
    )
    assert records[0].value == 1.0
    assert records[0].done
    assert not records[1].done


def test_run_threads_reports_a_hang() -> None:
    release = threading.Event()
    try:
        with pytest.raises(RuntimeError, match="still running"):
            run_threads(lambda: release.wait(5), [(), ()], clock=FakeClock(), join_timeout=0.05)
    finally:
        release.set()
    records = run_threads(lambda x: x * 2, [(1,), (2,)], clock=FakeClock())
    assert [r.value for r in records] == [2, 4]


@pytest.mark.parametrize(
    "module", ["cacheward.testing._sim", "cacheward.testing.chaos", "cacheward.testing"]
)
def test_each_testing_module_imports_alone(module: str) -> None:
    # The harness used to import cacheward.testing, which imported it back: importing the
    # harness first raised ImportError (a circle). Each module now imports on its own.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_every_public_name_of_cacheward_testing_is_still_there() -> None:
    import cacheward.testing

    names = {
        "Attempt", "CallRecord", "FakeClock", "InlineExecutor", "LayerMode", "ManualExecutor",
        "Outcome", "ScriptedBackend", "ScriptedLayer", "SimClock", "run_sequence",
        "run_simulated", "run_tasks", "run_threads",
    }  # fmt: skip
    assert names <= set(cacheward.testing.__all__)  # others may join them
    assert all(hasattr(cacheward.testing, name) for name in names)
