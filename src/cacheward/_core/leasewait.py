"""How a process waits while another process holds a key's lease: bounded, backing off."""

from __future__ import annotations

__all__ = ["LeaseWait"]


class LeaseWait:
    """Polling schedule for one wait: delays double from ``first`` up to ``cap``, and the wait
    ends at ``start + timeout`` (the caller's deadline), whatever happens.

    The cap of 10 ms keeps a waiting process within ~10 ms of the holder's write (the
    cross-process stampede's wall time) for two cheap Redis commands per poll.

    Waiters that give up do not fetch: they serve stale or fail, so a lease that outlives its
    holder never turns into a stampede. A dead holder's lease expires on its own, and the next
    poll's acquire attempt takes it over (one waiter wins).
    """

    __slots__ = ("cap", "deadline", "delay", "polls")

    def __init__(
        self, *, start: float, timeout: float, first: float = 0.002, cap: float = 0.01
    ) -> None:
        self.deadline = start + timeout
        self.delay = first
        self.cap = cap
        self.polls = 0

    def next_delay(self, now: float) -> float | None:
        """The sleep before the next poll, or ``None`` when the deadline has passed."""
        remaining = self.deadline - now
        if remaining <= 0:
            return None
        delay = min(self.delay, remaining)
        self.delay = min(self.delay * 2, self.cap)
        self.polls += 1
        return delay
