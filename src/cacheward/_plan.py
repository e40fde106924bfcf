"""Plans: an algorithm written once as a generator of typed I/O requests, run in either colour.

A plan is a generator that *yields* an :class:`Op` whenever it needs I/O (read a layer, call
the backend, sleep) and receives the op's result back (or has the op's exception thrown into
it). It never does I/O itself, so one plan serves ``def`` and ``async def`` callers alike:
:func:`perform` runs it with blocking calls, :func:`aperform` with awaited ones. Each op says
how it is done in both colours, in two methods of a line or two each (``sync`` and ``aio``).

This is the shape of tenacity's ``BaseRetrying.iter()`` (it returns "attempt / sleep / stop"
actions that a short loop per colour drives) and of hishel's sans-IO state machine. The two
performers below are the only hand-written pair; ``tests/test_plan.py`` checks they agree.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

__all__ = ["Op", "Plan", "aperform", "perform"]

T = TypeVar("T")


class Op:
    """One I/O request of a plan: how to do it blocking (``sync``) and awaited (``aio``)."""

    __slots__ = ()

    def sync(self) -> Any:
        raise NotImplementedError

    async def aio(self) -> Any:
        raise NotImplementedError


#: A plan: yields ops, is sent their results, returns its answer.
Plan = Generator[Op, Any, T]


def perform(plan: Plan[T]) -> T:
    """Run ``plan`` to its end, doing each op with blocking calls."""
    send, throw = plan.send, plan.throw
    try:
        op = send(None)
        while True:
            try:
                result = op.sync()
            except BaseException as exc:  # noqa: PERF203 - free until raised (3.11+)
                op = throw(exc)
            else:
                op = send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]


async def aperform(plan: Plan[T]) -> T:
    """Run ``plan`` to its end, awaiting each op."""
    send, throw = plan.send, plan.throw
    try:
        op = send(None)
        while True:
            try:
                result = await op.aio()
            except BaseException as exc:  # noqa: PERF203 - free until raised (3.11+)
                op = throw(exc)
            else:
                op = send(result)
    except StopIteration as stop:
        return stop.value  # type: ignore[no-any-return]
