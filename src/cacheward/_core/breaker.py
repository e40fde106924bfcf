"""A circuit breaker as a small state object; the caller passes ``now`` (monotonic seconds)."""

from __future__ import annotations

import enum

__all__ = ["Breaker", "BreakerState"]


class BreakerState(enum.Enum):
    """The breaker's state."""

    CLOSED = "closed"
    """Calls go through; consecutive failures are counted."""
    OPEN = "open"
    """Calls are refused until ``reset_timeout`` has passed since the breaker opened."""
    HALF_OPEN = "half-open"
    """One probe call is let through; its outcome closes or re-opens the breaker."""


class Breaker:
    """Opens after ``failure_threshold`` consecutive failures; probes after ``reset_timeout``.

    Not thread-safe by itself: drivers call it under their own lock. A probe that never reports
    (its caller was cancelled) does not wedge the breaker: after another ``reset_timeout`` a new
    probe is let through.
    """

    __slots__ = ("_failures", "_opened_at", "_probe_at", "failure_threshold", "reset_timeout")

    def __init__(self, *, failure_threshold: int, reset_timeout: float) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._failures = 0
        self._opened_at: float | None = None
        self._probe_at: float | None = None

    def state(self, now: float) -> BreakerState:
        """The state at ``now`` (an open breaker whose timeout passed reads as half-open)."""
        if self._opened_at is None:
            return BreakerState.CLOSED
        if now - self._opened_at < self.reset_timeout:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    @property
    def quiet(self) -> bool:
        """Closed with no failure counted: a success changes nothing and any call may go
        through (one attribute read each, so a caller may look without its lock)."""
        return self._opened_at is None and self._failures == 0

    def allow(self, now: float) -> bool:
        """Whether a call may go through at ``now``; in half-open, only one probe at a time."""
        opened = self._opened_at
        if opened is None:
            return True
        if now - opened < self.reset_timeout:
            return False
        probe = self._probe_at
        if probe is not None and now - probe < self.reset_timeout:
            return False
        self._probe_at = now
        return True

    def retry_after(self, now: float) -> float:
        """Seconds until a call could be let through (0 when closed)."""
        opened = self._opened_at
        if opened is None:
            return 0.0
        start = opened if self._probe_at is None else max(opened, self._probe_at)
        return max(0.0, start + self.reset_timeout - now)

    def record_success(self, now: float) -> BreakerState | None:
        """Count a success; returns the new state if it changed."""
        self._failures = 0
        self._probe_at = None
        if self._opened_at is not None:
            self._opened_at = None
            return BreakerState.CLOSED
        return None

    def record_failure(self, now: float) -> BreakerState | None:
        """Count a failure; returns the new state if it changed."""
        self._failures += 1
        if self._opened_at is not None:
            # A failed probe (or a late failure) re-opens for a whole period.
            self._opened_at = now
            self._probe_at = None
            return None
        if self._failures >= self.failure_threshold:
            self._opened_at = now
            self._probe_at = None
            return BreakerState.OPEN
        return None

    def __repr__(self) -> str:
        opened = self._opened_at
        return (
            f"Breaker(failures={self._failures}, failure_threshold={self.failure_threshold}, "
            f"reset_timeout={self.reset_timeout}, opened_at={opened})"
        )
