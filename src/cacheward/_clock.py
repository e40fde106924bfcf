"""Clocks: the one place that reads system time and sleeps.

Everything that needs "now" takes a :class:`Clock`; tests pass
:class:`cacheward.testing.FakeClock`. Wall time (:meth:`Clock.time`) stamps entries that cross
processes; monotonic time (:meth:`Clock.monotonic`) measures buckets, budgets, back-off and
deadlines inside one process.
"""

from __future__ import annotations

import time as _time
from typing import Protocol, runtime_checkable

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]


@runtime_checkable
class Clock(Protocol):
    """What cacheward needs from a clock."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (comparable across processes)."""
        ...

    def monotonic(self) -> float:
        """Monotonic seconds (comparable within one process only)."""
        ...

    def sleep(self, seconds: float) -> None:
        """Block the calling thread for ``seconds``."""
        ...

    async def asleep(self, seconds: float) -> None:
        """Suspend the calling task for ``seconds``."""
        ...


class SystemClock:
    """The real clock: :func:`time.time`, :func:`time.monotonic` and the real sleeps."""

    __slots__ = ()

    # Bound to the C functions so the hot path pays for one call, not two.
    time = staticmethod(_time.time)
    monotonic = staticmethod(_time.monotonic)
    sleep = staticmethod(_time.sleep)

    async def asleep(self, seconds: float) -> None:
        import asyncio  # at first use: a sync-only program never imports it

        await asyncio.sleep(seconds)

    def __repr__(self) -> str:
        return "SystemClock()"


SYSTEM_CLOCK = SystemClock()
