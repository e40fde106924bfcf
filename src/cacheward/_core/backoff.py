"""Exponential back-off with jitter."""

from __future__ import annotations

__all__ = ["backoff_delay"]


def backoff_delay(failures: int, *, base: float, cap: float, draw: float, spread: float) -> float:
    """Return the delay after ``failures`` consecutive failures (``failures >= 1``).

    The ceiling grows as ``base * 2 ** (failures - 1)`` up to ``cap``. The delay is the ceiling
    shortened by up to ``spread`` of itself, chosen by ``draw`` in ``[0, 1)``: ``spread=1`` is
    "full jitter" (AWS architecture blog; right for retries, which only need to spread out),
    ``spread=0.5`` is "equal jitter" (right for a key's failure back-off, which must also last).
    """
    exponent = min(max(failures - 1, 0), 62)
    ceiling = min(cap, base * float(2**exponent))
    return ceiling * (1.0 - spread * draw)
