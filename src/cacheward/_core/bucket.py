"""Token-bucket arithmetic with a waiting line; the caller passes ``now`` (monotonic seconds).

A bucket holds up to ``burst`` tokens and gains ``rate`` tokens per second. A token is only ever
removed at the moment its caller acts, so in any interval of length ``T`` at most
``burst + rate * T`` callers act, however many there are, however they interleave and however
late a sleeping waiter wakes up (a process that stalls and then wakes all its waiters at once
still gets only the tokens that are there).

Callers that find no token may *queue*: they are told how long to sleep, estimated from their
place in line (``pending`` waiters ahead of them), and then *claim* the token; a claim that
comes too early (another waiter got there first) is told how long to sleep again. A caller is
refused at once when its estimated wait exceeds the ``max_wait`` it can afford, which bounds the
line to about ``rate * max_wait`` waiters. Newcomers do not jump the line: while anyone waits,
a newcomer queues behind them even if a token is there.
"""

from __future__ import annotations

__all__ = ["BucketState"]

#: The shortest wait handed out: a float wait of 1e-17 s would not even move a clock's reading,
#: and a waiter must never spin.
_MIN_WAIT = 1e-6


class BucketState:
    """The state of one token bucket; not thread-safe (drivers hold their own lock).

    Args:
        rate: tokens gained per second (> 0).
        burst: the most tokens the bucket holds (>= 1); also what a fresh bucket starts with.
        now: the monotonic time the bucket is created at.
    """

    __slots__ = ("burst", "pending", "rate", "tokens", "updated")

    def __init__(self, *, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now
        #: Callers queued for a token (told to sleep, not yet claimed or cancelled).
        self.pending = 0

    def level(self, now: float) -> float:
        """The tokens in the bucket at ``now`` (a ``now`` before the last one seen reads as it)."""
        if now <= self.updated:
            return self.tokens
        return min(self.burst, self.tokens + (now - self.updated) * self.rate)

    def _take(self, now: float) -> bool:
        tokens = self.level(now)
        self.updated = max(self.updated, now)
        self.tokens = tokens
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return True
        return False

    def try_take(self, now: float) -> bool:
        """Take one token if one is there at ``now`` and nobody is queued; returns whether."""
        if self.pending:
            return False
        return self._take(now)

    def reserve(self, now: float, max_wait: float) -> float:
        """Take a token, or join the line; returns ``0.0`` (taken), a wait, or ``-1.0``.

        A positive result means the caller is now queued and should :meth:`claim` after
        sleeping that long (or :meth:`cancel`). ``-1.0`` means refused: the estimated wait is
        longer than ``max_wait``; nothing changed.
        """
        # The refill and take are written out here (not via ``_take``): this is every backend
        # attempt's hot path, and each Python call costs about as much as the arithmetic.
        tokens = self.tokens
        if now > self.updated:
            tokens += (now - self.updated) * self.rate
            if tokens > self.burst:  # noqa: PLR1730 - min() is a call on the hot path
                tokens = self.burst
            self.updated = now
        if not self.pending and tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        wait = (self.pending + 1.0 - tokens) / self.rate
        if wait > max_wait:
            return -1.0
        self.pending += 1
        return max(wait, _MIN_WAIT)

    def claim(self, now: float) -> float:
        """A queued caller woke up: ``0.0`` if it got its token, else how long to sleep again.

        The first claim that finds a token gets it (waiters race, the line is an estimate);
        each later claim's sleep assumes the others ahead of it will be served first.
        """
        if self._take(now):
            if self.pending:
                self.pending -= 1
            return 0.0
        ahead = max(self.pending - 1, 0)
        return max((ahead + 1.0 - self.level(now)) / self.rate, _MIN_WAIT)

    def cancel(self) -> None:
        """A queued caller gave up (its wait or deadline ran out)."""
        if self.pending:
            self.pending -= 1

    def retry_after(self, now: float) -> float:
        """Seconds from ``now`` until a token is expected for a caller joining the line now."""
        missing = self.pending + 1.0 - self.level(now)
        return 0.0 if missing <= 0.0 else missing / self.rate

    def __repr__(self) -> str:
        return (
            f"BucketState(rate={self.rate!r}, burst={self.burst!r}, tokens={self.tokens!r}, "
            f"updated={self.updated!r}, pending={self.pending})"
        )
