"""Retry-budget accounting (after Finagle's ``RetryBudget``); the caller passes ``now``.

Every request *deposits* ``ratio`` of a retry; every retry *withdraws* one. A retry is allowed
when, over the last ``window`` seconds, deposits minus withdrawals plus a reserve of
``min_per_second * window`` is at least one. So in any window of length ``W``::

    retries <= ratio * requests + min_per_second * W

and, chaining disjoint windows, in any interval ``(a, b]`` of length ``T``::

    retries in (a, b] <= ratio * requests in (a - W, b] + min_per_second * (T + W)

(the requests counted start one window early: a retry answers a request made before it).

The window is kept as ``slices`` buckets of ``W / slices`` seconds, so memory and time are
constant whatever the request rate. To keep the bound exact, not approximate, the rounding always
errs on the side of fewer retries: deposits count only from slices wholly inside the window
(they expire up to one slice early) and withdrawals count from one slice more (they expire up to
one slice late).
"""

from __future__ import annotations

import math

__all__ = ["BudgetState"]


class BudgetState:
    """The state of one retry budget; not thread-safe (drivers hold their own lock).

    Args:
        ratio: retries allowed per request, in ``[0, 1]`` (Finagle's default: 0.2).
        min_per_second: the floor: retries allowed per second even with no requests (>= 0).
        window: the window ``W`` in seconds (> 0) over which deposits and withdrawals count.
        slices: how many slices the window is kept in (>= 1).
    """

    __slots__ = (
        "_deposits",
        "_index",
        "_withdrawals",
        "min_per_second",
        "ratio",
        "reserve",
        "slice_length",
        "slices",
        "window",
    )

    def __init__(
        self, *, ratio: float, min_per_second: float, window: float, slices: int = 10
    ) -> None:
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.window = window
        self.slices = slices
        self.slice_length = window / slices
        self.reserve = min_per_second * window
        # Ring of ``slices + 1`` slots: slot ``i % (slices + 1)`` holds slice ``i`` while
        # ``_index[slot] == i``; an older index in a slot means the slot is empty.
        size = slices + 1
        self._index = [-1] * size
        self._deposits = [0] * size
        self._withdrawals = [0] * size

    def _slot(self, now: float) -> tuple[int, int]:
        current = math.floor(now / self.slice_length)
        slot = current % (self.slices + 1)
        if self._index[slot] != current:
            self._index[slot] = current
            self._deposits[slot] = 0
            self._withdrawals[slot] = 0
        return current, slot

    def deposit(self, now: float) -> None:
        """Count one request (its first attempt) at ``now``."""
        _, slot = self._slot(now)
        self._deposits[slot] += 1

    def balance(self, now: float) -> float:
        """Retries available at ``now`` (may be fractional; a retry needs at least 1)."""
        current, _ = self._slot(now)
        deposits = 0
        withdrawals = 0
        slices = self.slices
        for slot, index in enumerate(self._index):
            age = current - index
            if age < 0:
                continue
            if age < slices:
                deposits += self._deposits[slot]
            if age <= slices:
                withdrawals += self._withdrawals[slot]
        return self.reserve + self.ratio * deposits - withdrawals

    def try_withdraw(self, now: float) -> bool:
        """Take one retry at ``now`` if the budget allows it; returns whether it did."""
        if self.balance(now) < 1.0:
            return False
        _, slot = self._slot(now)
        self._withdrawals[slot] += 1
        return True

    def __repr__(self) -> str:
        return (
            f"BudgetState(ratio={self.ratio!r}, min_per_second={self.min_per_second!r}, "
            f"window={self.window!r})"
        )
