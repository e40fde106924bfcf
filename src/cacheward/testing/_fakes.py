"""The fake clock and the inline executor (re-exported by :mod:`cacheward.testing`)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import ParamSpec, TypeVar

from cacheward._config import duration

__all__ = ["FakeClock", "InlineExecutor"]

P = ParamSpec("P")
T = TypeVar("T")


class FakeClock:
    """A clock whose time moves only when told to.

    Args:
        start: the wall-clock time to start at (seconds since the epoch).
        monotonic_start: the monotonic time to start at.

    Both clocks advance together. ``sleep`` and ``asleep`` advance time by the requested amount
    and return at once (``asleep`` still yields to the event loop once, so other tasks run).
    """

    __slots__ = ("_lock", "_mono", "_wall", "sleeps")

    def __init__(self, start: float = 1_700_000_000.0, monotonic_start: float = 1_000.0) -> None:
        self._lock = threading.Lock()
        self._wall = float(start)
        self._mono = float(monotonic_start)
        #: Every sleep requested, in order (seconds).
        self.sleeps: list[float] = []

    def time(self) -> float:
        return self._wall

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float | timedelta) -> None:
        """Move both clocks forward by ``seconds`` (must be >= 0)."""
        step = duration("seconds", seconds)
        with self._lock:
            self._wall += step
            self._mono += step

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))

    async def asleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(max(0.0, seconds))
        await asyncio.sleep(0)

    def __repr__(self) -> str:
        return f"FakeClock(time={self._wall!r}, monotonic={self._mono!r})"


class InlineExecutor(concurrent.futures.Executor):
    """An executor that runs each submitted call at once, in the submitting thread.

    Pass it as ``refresh_executor=`` to make background refreshes deterministic in tests: the
    refresh has finished when the call that started it returns.
    """

    def __init__(self) -> None:
        #: How many calls were submitted.
        self.submitted = 0

    def submit(
        self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
    ) -> concurrent.futures.Future[T]:
        self.submitted += 1
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:
            future.set_exception(exc)
        return future
