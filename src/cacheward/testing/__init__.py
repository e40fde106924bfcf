"""Test helpers that ship with cacheward, so you can test your own guarded functions.

``FakeClock`` is a deterministic clock: time moves only when you call :meth:`FakeClock.advance`
or when code sleeps on it (a sleep advances time at once instead of waiting).

``disabled()`` switches caching off for a block or a test (every call goes to the function);
``bypass()`` does it for the current thread or task only; see ``docs/testing.md``.

The simulation harness (``SimClock``, ``run_simulated``, ``ScriptedLayer``, ``ScriptedBackend``,
``run_tasks``...) drives your guarded functions through scripted failures in simulated time;
see ``docs/guarantees.md``.

:mod:`cacheward.testing.chaos` has real faults for integration tests: ``RedisProxy``, a loopback
TCP proxy that delays, trickles, blackholes, cuts replies, resets and refuses on command, and
``ChaosLayer``, which wraps any cache layer with scheduled errors, latency, hangs and corruption;
see ``docs/testing.md``.
"""

from __future__ import annotations

from cacheward._testmode import bypass, disabled
from cacheward.testing._fakes import FakeClock, InlineExecutor
from cacheward.testing._sim import (
    Attempt,
    CallRecord,
    CapacityBackend,
    LayerMode,
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

__all__ = [
    "Attempt",
    "CallRecord",
    "CapacityBackend",
    "FakeClock",
    "InlineExecutor",
    "LayerMode",
    "ManualExecutor",
    "Outcome",
    "ScriptedBackend",
    "ScriptedLayer",
    "SimClock",
    "bypass",
    "disabled",
    "run_sequence",
    "run_simulated",
    "run_tasks",
    "run_threads",
]
