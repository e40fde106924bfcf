"""Where a shared bucket's take goes — Redis or this process's local share — and what it owes.

The caller passes ``now`` (monotonic seconds). :class:`~cacheward.RedisTokenBucket` holds one
:class:`FallbackState` under its lock; the sync and async drivers only do the Redis call.

Three rules, each closing a way the shared bound broke:

- **A failed call of any kind sends the process to its local share.** Whatever Redis answers
  instead of a token (unreachable, a changed password, a missing permission, a wrong-typed
  key, a garbled reply) is a failure *of the bucket*, never of the backend: the take falls back
  to the local share, and nothing but :class:`~cacheward.RateLimited` reaches the caller.
- **The next probe is scheduled when a probe starts, not when it ends.** A probe that is
  cancelled, raises, or never returns cannot leave the process in fallback for ever: one probe
  interval after it started, the next take is a probe again.
- **Local takes are a debt.** Every token taken from the local share while cut off is owed to
  the shared bucket and paid with the first call that reaches Redis again (up to ``debt_cap``:
  at most what the local share can have handed out after Redis was in fact back, which is its
  burst plus one probe interval of its rate). Together with "a bucket Redis has no record of
  starts empty for a process that has used it before" (``seen``), this keeps the takes after a
  restart within the shared bound; docs/protection.md gives the argument.
"""

from __future__ import annotations

__all__ = ["FallbackState"]

#: ``down_until`` while Redis answers.
_UP = float("-inf")


class FallbackState:
    """One process's view of a shared bucket; not thread-safe (the driver holds a lock).

    Args:
        probe_interval: seconds between two probes while Redis fails (> 0).
        debt_cap: the most local takes owed to the shared bucket at a time (>= 0).
    """

    __slots__ = ("debt", "debt_cap", "down_until", "failures", "probe_interval", "seen")

    def __init__(self, *, probe_interval: float, debt_cap: float) -> None:
        self.probe_interval = probe_interval
        self.debt_cap = debt_cap
        self.down_until = _UP
        #: Local takes not yet charged to the shared bucket.
        self.debt = 0.0
        #: Whether Redis has answered this process at least once: from then on, a bucket that
        #: Redis has no record of was lost (restart, flush, eviction), not new.
        self.seen = False
        #: Failed Redis calls.
        self.failures = 0

    @property
    def up(self) -> bool:
        """Whether takes go to Redis (``False`` from a failed call until a probe succeeds)."""
        return self.down_until == _UP

    def route(self, now: float) -> bool:
        """Whether this take asks Redis: always while up; while down, one probe per interval.

        The probe's slot is spent as it starts, so whatever becomes of it (an answer, an error,
        a cancellation, a hang), the next probe is due one interval later.
        """
        if self.down_until == _UP:
            return True
        if now >= self.down_until:
            self.down_until = now + self.probe_interval
            return True
        return False

    def failed(self, now: float) -> None:
        """A Redis call failed: take locally until the next probe, one interval from now."""
        self.failures += 1
        self.down_until = max(self.down_until, now + self.probe_interval)

    def succeeded(self, paid: float) -> None:
        """Redis answered a call that carried ``paid`` of the debt (the script charged it)."""
        self.down_until = _UP
        self.seen = True
        self.debt = max(0.0, self.debt - paid)

    def took_locally(self) -> None:
        """A token came from the local share: owe it to the shared bucket (up to the cap)."""
        self.debt = min(self.debt + 1.0, self.debt_cap)

    def __repr__(self) -> str:
        return (
            f"FallbackState(up={self.up}, down_until={self.down_until!r}, debt={self.debt!r}, "
            f"seen={self.seen}, failures={self.failures})"
        )
