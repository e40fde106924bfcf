"""Adaptive concurrency: how many backend attempts may run at once, learnt from what they report.

Everything here takes ``now`` (monotonic seconds) and the outcome of each attempt as arguments;
the drivers in :mod:`cacheward._adaptive` read the clock, wait and call the backend.

Three pieces:

* a **limit algorithm** (:class:`Gradient` or :class:`Aimd`) that turns completed attempts
  (their latency and whether they failed the way an overloaded backend fails) into a limit.
  Both update once per *window*: a batch of ``window_samples`` attempts that all *started*
  after the previous update, so each update judges the limit it set and not the one before
  (TCP's "once per round trip");
* :class:`Admission`: the in-flight count against that limit, split into priority partitions
  with guaranteed shares (a partition below its share goes first; a partition may borrow what
  the others leave unused), and the queue of callers waiting for a slot;
* :class:`Throttle`: client-side adaptive throttling (Google SRE book, "Handling Overload"):
  reject locally with probability ``max(0, (requests - k * accepts) / (requests + 1))`` over a
  sliding window.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Callable, Hashable, Mapping
from typing import Protocol

__all__ = [
    "Admission",
    "Aimd",
    "Gradient",
    "LimitAlgorithm",
    "Throttle",
]


class LimitAlgorithm(Protocol):
    """What :class:`Admission` needs from a limit algorithm."""

    @property
    def limit(self) -> int:
        """The concurrency allowed now (an integer >= the floor)."""
        ...

    @property
    def estimate(self) -> float:
        """The learnt limit (a float; :attr:`limit` may be lower while probing)."""
        ...

    def on_sample(
        self, now: float, *, started: float, rtt: float, inflight: int, dropped: bool
    ) -> None:
        """An attempt that started at ``started`` (with ``inflight`` attempts running, itself
        included) finished at ``now`` after ``rtt`` seconds; ``dropped``: it failed the way
        an overloaded backend fails (a timeout, a refused connection)."""
        ...


class _Window:
    """The samples of attempts that started at or after ``start``."""

    __slots__ = ("drops", "max_inflight", "rtts", "start")

    def __init__(self, start: float) -> None:
        self.start = start
        self.rtts: list[float] = []
        self.drops = 0
        self.max_inflight = 0

    def add(self, *, started: float, rtt: float, inflight: int, dropped: bool) -> bool:
        """Count the sample if it belongs to this window; returns whether it did."""
        if started < self.start:
            return False
        self.max_inflight = max(self.max_inflight, inflight)
        if dropped:
            self.drops += 1
        else:
            self.rtts.append(rtt)
        return True

    @property
    def size(self) -> int:
        return len(self.rtts) + self.drops

    def median(self) -> float | None:
        """The median latency of the attempts that did not fail (``None``: all failed)."""
        if not self.rtts:
            return None
        ordered = sorted(self.rtts)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def filled(self, limit: int) -> bool:
        """Whether some attempt of the window started with every slot of ``limit`` taken.

        Only then can a flat latency say the backend takes ``limit`` at once.
        """
        return self.max_inflight >= limit


class _Bounds:
    """The floor, the ceiling and the float limit between them (shared by both algorithms)."""

    __slots__ = ("ceiling", "floor", "value")

    def __init__(self, *, initial: float, floor: int, ceiling: int) -> None:
        self.floor = floor
        self.ceiling = ceiling
        self.value = float(min(max(initial, floor), ceiling))

    def set(self, value: float) -> None:
        self.value = min(max(value, float(self.floor)), float(self.ceiling))

    @property
    def whole(self) -> int:
        return int(self.value)


class _Windowed:
    """What both algorithms share: the bounded limit and the window of samples."""

    __slots__ = ("_bounds", "_window", "backoff", "window_samples")

    def __init__(
        self,
        *,
        initial: float,
        floor: int,
        ceiling: int,
        now: float,
        backoff: float = 0.9,
        window_samples: int = 10,
    ) -> None:
        self._bounds = _Bounds(initial=initial, floor=floor, ceiling=ceiling)
        self.backoff = backoff
        self.window_samples = window_samples
        self._window = _Window(now)

    @property
    def limit(self) -> int:
        return self._bounds.whole

    @property
    def estimate(self) -> float:
        return self._bounds.value

    def _cut(self, window: _Window) -> float:
        """The factor a window with overload failures multiplies the limit by: ``backoff``,
        or one half when every attempt of the window failed (nothing got through: TCP's
        halving, and a limit that starts far too high comes down in a few windows)."""
        return 0.5 if not window.rtts else self.backoff

    def _full_window(
        self, now: float, *, started: float, rtt: float, inflight: int, dropped: bool
    ) -> _Window | None:
        """Add the sample; the window, if it is now complete (a new one starts at ``now``)."""
        window = self._window
        if not window.add(started=started, rtt=rtt, inflight=inflight, dropped=dropped):
            return None
        if window.size < max(self.window_samples, window.max_inflight):
            return None
        self._window = _Window(now)
        return window


class Gradient(_Windowed):
    """A latency-gradient limit: the concurrency at which latency starts to rise, plus a margin.

    The no-load latency is measured Envoy's way (adaptive_concurrency's "minRTT calculation"):
    every ``probe_interval`` (stretched by a random fraction of up to ``jitter`` of it, so that
    processes drift apart) the limit drops to ``probe_concurrency`` for one window and the
    window's median latency becomes the baseline. A later window whose median is lower lowers
    it (Vegas's no-load latency is the minimum seen): a probe that ran while other processes
    loaded the backend reads a latency that is too high, and it must not hold the limit up
    until the next probe. Between probes, each window's median ``m`` is compared with the
    baseline ``b``:

    * ``m > b * (1 + tolerance)`` (queueing): the limit jumps to
      ``limit * b / m * (1 + tolerance / 2)`` (never below half of it): the concurrency the
      backend served without queueing, plus half the tolerance;
    * ``m <= b * (1 + tolerance / 4)`` and the window filled the limit (one of its attempts
      started with every slot taken, and not one of the two windows after a probe, while
      the slots refill): the limit grows by ``growth`` (at least one slot). A limit the
      callers never fill is not raised: nothing has shown that the backend takes more;
    * in between: it holds.

    A window with any overload failure (a timeout) cuts the limit by ``backoff`` instead (by
    half when every attempt of the window failed).
    On a backend whose latency is flat up to ``C`` concurrent requests and proportional to the
    concurrency past it, this settles between ``(1 + tolerance / 4) * C`` and
    ``(1 + tolerance) * C``.

    Args:
        initial: the limit to start from.
        floor: the lowest limit (>= 1).
        ceiling: the highest limit.
        tolerance: the latency rise over the baseline taken for queueing (0.1: 10 %).
        growth: the growth per window while latency is flat (a fraction of the limit).
        backoff: the factor a window with overload failures multiplies the limit by.
        window_samples: attempts per window.
        probe_interval: seconds between baseline probes.
        probe_concurrency: the limit during a probe (at least the floor).
        jitter: each interval between probes is ``probe_interval * (1 + jitter * u)``, ``u``
            drawn from ``random`` in ``[0, 1)`` (Envoy's minRTT jitter, 15 % by default).
        random: the random source of the jitter (``random.Random(seed).random`` in tests);
            ``None``: no jitter.
        now: the creation time; the first window is a probe.
    """

    __slots__ = (
        "_probe_due",
        "_probing",
        "_random",
        "_refilling",
        "baseline",
        "growth",
        "jitter",
        "probe_concurrency",
        "probe_interval",
        "tolerance",
    )

    def __init__(
        self,
        *,
        initial: float,
        floor: int,
        ceiling: int,
        now: float,
        tolerance: float = 0.1,
        growth: float = 0.05,
        backoff: float = 0.9,
        window_samples: int = 10,
        probe_interval: float = 30.0,
        probe_concurrency: int = 1,
        jitter: float = 0.15,
        random: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            initial=initial,
            floor=floor,
            ceiling=ceiling,
            now=now,
            backoff=backoff,
            window_samples=window_samples,
        )
        self.tolerance = tolerance
        self.growth = growth
        self.probe_interval = probe_interval
        self.jitter = jitter
        self._random = random
        self.probe_concurrency = max(floor, min(probe_concurrency, ceiling))
        #: The no-load latency (seconds), from the last probe; ``None`` before the first.
        self.baseline: float | None = None
        self._probing = True
        self._refilling = 0
        self._probe_due = now + self._interval()

    def _interval(self) -> float:
        """The time to the next probe: ``probe_interval``, plus the jitter."""
        if self._random is None or not self.jitter:
            return self.probe_interval
        return self.probe_interval * (1.0 + self.jitter * self._random())

    @property
    def limit(self) -> int:
        if self._probing:
            return min(self.probe_concurrency, self._bounds.whole)
        return self._bounds.whole

    @property
    def probing(self) -> bool:
        """Whether the current window measures the baseline."""
        return self._probing

    def on_sample(
        self, now: float, *, started: float, rtt: float, inflight: int, dropped: bool
    ) -> None:
        window = self._full_window(
            now, started=started, rtt=rtt, inflight=inflight, dropped=dropped
        )
        if window is None:
            return
        median = window.median()
        bounds = self._bounds
        if self._probing:
            if median is not None:  # a probe of nothing but failures measures nothing
                self.baseline = median
                self._probing = False
                self._refilling = 2
                self._probe_due = now + self._interval()
            return
        # The first windows after a probe run while the slots refill: their attempts mostly
        # ran at a lower concurrency than the limit, so their flat latency proves nothing (one
        # window was not enough in the proof's runs: the line refills over about two).
        refilling = self._refilling > 0
        self._refilling = max(0, self._refilling - 1)
        if median is not None and self.baseline is not None and not window.drops:
            self.baseline = min(self.baseline, median)
        if window.drops:
            bounds.set(bounds.value * self._cut(window))
        elif median is not None and self.baseline is not None:
            ratio = median / self.baseline if self.baseline > 0.0 else 1.0
            if ratio > 1.0 + self.tolerance:
                target = bounds.value / ratio * (1.0 + self.tolerance / 2.0)
                bounds.set(max(target, bounds.value / 2.0))
            elif (
                ratio <= 1.0 + self.tolerance / 4.0
                and not refilling
                and window.filled(bounds.whole)
            ):
                bounds.set(bounds.value + max(1.0, bounds.value * self.growth))
        if now >= self._probe_due:
            self._probing = True

    def __repr__(self) -> str:
        return (
            f"Gradient(limit={self.limit}, estimate={self.estimate:.3g}, "
            f"baseline={self.baseline!r}, probing={self._probing})"
        )


class Aimd(_Windowed):
    """Additive increase, multiplicative decrease, on overload failures only (TCP Reno's rule).

    Each window without an overload failure that filled the limit adds one slot;
    a window with one multiplies the limit by ``backoff`` (by half when all of it failed). It
    finds the concurrency at which the backend starts *failing*, not the one at which it starts
    queueing: use it for backends that refuse work cleanly when full (a connection limit, a
    429), :class:`Gradient` otherwise.

    Args:
        initial: the limit to start from.
        floor: the lowest limit (>= 1).
        ceiling: the highest limit.
        backoff: the factor a window with overload failures multiplies the limit by.
        window_samples: attempts per window.
        now: the creation time.
    """

    __slots__ = ()

    def on_sample(
        self, now: float, *, started: float, rtt: float, inflight: int, dropped: bool
    ) -> None:
        window = self._full_window(
            now, started=started, rtt=rtt, inflight=inflight, dropped=dropped
        )
        if window is None:
            return
        bounds = self._bounds
        if window.drops:
            bounds.set(bounds.value * self._cut(window))
        elif window.filled(bounds.whole):
            bounds.set(bounds.value + 1.0)

    def __repr__(self) -> str:
        return f"Aimd(limit={self.limit}, estimate={self.estimate:.3g})"


class _Partition:
    __slots__ = ("admitted", "inflight", "name", "share", "waiting")

    def __init__(self, name: str, share: float) -> None:
        self.name = name
        self.share = share
        self.inflight = 0
        self.admitted = 0
        self.waiting: collections.deque[Hashable] = collections.deque()


class Admission:
    """In-flight attempts against a limit, by priority partition; not thread-safe.

    Rules (Netflix concurrency-limits' partitioned limiter, with the queue made explicit):

    * nothing is admitted unless ``inflight + notified < limit`` (:meth:`_room`, the one check
      every admission passes: newcomers, woken waiters, and the waking itself);
    * a newcomer is admitted at once if there is room and nobody waits, or if there is room
      and its partition is below its guaranteed share (``share * limit``) and nobody of its own
      partition waits; otherwise it queues (or is refused, if it cannot wait);
    * a freed slot goes to a waiter of the partition furthest below its share, else to the
      oldest waiter: a partition's unused share is lent, and comes back as slots turn over.

    A waiter is *notified* when a slot is free for it; it then :meth:`resume`\\ s, which admits
    it if there is still room. Notified waiters are counted so that one free slot notifies one
    waiter.

    Args:
        algorithm: the limit algorithm.
        shares: partition name -> guaranteed fraction of the limit (they sum to <= 1).
    """

    __slots__ = ("_order", "_partitions", "_ticket", "algorithm", "notified")

    def __init__(self, algorithm: LimitAlgorithm, shares: Mapping[str, float]) -> None:
        self.algorithm = algorithm
        self._partitions = {name: _Partition(name, share) for name, share in shares.items()}
        #: Waiter -> arrival number (the oldest waiter is served first among equals).
        self._order: dict[Hashable, int] = {}
        self._ticket = 0
        #: Waiters told a slot is free that have not resumed yet.
        self.notified = 0

    @property
    def limit(self) -> int:
        return self.algorithm.limit

    @property
    def inflight(self) -> int:
        return sum(p.inflight for p in self._partitions.values())

    @property
    def queued(self) -> int:
        return len(self._order)

    def partition(self, name: str) -> _Partition:
        return self._partitions[name]

    def partitions(self) -> list[_Partition]:
        return list(self._partitions.values())

    def _room(self) -> bool:
        return self.inflight + self.notified < self.algorithm.limit

    def _under_share(self, part: _Partition) -> bool:
        return part.inflight < part.share * self.algorithm.limit

    def _admit(self, part: _Partition) -> int:
        part.inflight += 1
        part.admitted += 1
        return self.inflight

    def try_admit(self, name: str) -> int:
        """A newcomer of partition ``name``: the in-flight total once admitted, or 0 (not)."""
        part = self._partitions[name]
        if not self._room():
            return 0
        if not self._order or (self._under_share(part) and not part.waiting):
            return self._admit(part)
        return 0

    def enqueue(self, name: str, waiter: Hashable) -> None:
        """Put ``waiter`` at the back of its partition's line."""
        self._ticket += 1
        self._order[waiter] = self._ticket
        self._partitions[name].waiting.append(waiter)

    def withdraw(self, name: str, waiter: Hashable) -> bool:
        """A queued waiter gives up; returns ``False`` if it was not queued (already notified)."""
        if self._order.pop(waiter, None) is None:
            return False
        self._partitions[name].waiting.remove(waiter)
        return True

    def resume(self, name: str, waiter: Hashable, *, admit: bool) -> int:
        """A notified waiter woke up: the in-flight total once admitted, or 0.

        With ``admit=False`` (its caller has gone: nobody waits for the result) it gives its
        turn back and is not admitted. Without room (the limit fell) it goes back to the front
        of its line.
        """
        self.notified = max(0, self.notified - 1)
        if not admit:
            return 0
        part = self._partitions[name]
        if self._room():  # the slots of the other notified waiters stay theirs
            return self._admit(part)
        self._ticket += 1
        self._order[waiter] = -self._ticket  # ahead of everyone who arrived normally
        part.waiting.appendleft(waiter)
        return 0

    def release(
        self,
        now: float,
        name: str,
        *,
        started: float,
        rtt: float,
        inflight: int,
        dropped: bool | None,
    ) -> None:
        """An admitted attempt finished; ``dropped=None``: it tells nothing about the backend
        (it was cancelled, or never reached it), so it is not a sample."""
        part = self._partitions[name]
        part.inflight = max(0, part.inflight - 1)
        if dropped is not None:
            self.algorithm.on_sample(
                now, started=started, rtt=rtt, inflight=inflight, dropped=dropped
            )

    def _next(self, candidates: list[_Partition]) -> _Partition:
        """The partition a free slot goes to: the one furthest below its share, else the one
        whose first waiter is oldest."""
        under = [p for p in candidates if self._under_share(p)]
        if under:
            return min(under, key=lambda p: p.inflight / max(p.share, 1e-9))
        return min(candidates, key=lambda p: self._order[p.waiting[0]])

    def to_notify(self) -> list[Hashable]:
        """The waiters to notify now (removed from the lines and counted as notified)."""
        woken: list[Hashable] = []
        while self._order and self._room():
            part = self._next([p for p in self._partitions.values() if p.waiting])
            waiter = part.waiting.popleft()
            del self._order[waiter]
            self.notified += 1
            woken.append(waiter)
        return woken

    def __repr__(self) -> str:
        return (
            f"Admission(limit={self.limit}, inflight={self.inflight}, queued={self.queued}, "
            f"algorithm={self.algorithm!r})"
        )


class Throttle:
    """Client-side adaptive throttling over a sliding window of ``window`` seconds.

    Counts *requests* (every attempt the client wanted to make, the ones it rejected itself
    included) and *accepts* (attempts the backend did not refuse) in ``buckets`` time slices;
    :meth:`probability` is the SRE book's ``max(0, (requests - k * accepts) / (requests + 1))``.
    With ``k = 2`` nothing is rejected until the backend refuses half of what it gets.

    Args:
        k: the multiplier (> 1; lower rejects sooner).
        window: seconds of history.
        now: the creation time.
        buckets: time slices in the window.
    """

    __slots__ = ("_accepts", "_requests", "_slice", "_slot", "k")

    def __init__(self, *, k: float, window: float, now: float, buckets: int = 10) -> None:
        self.k = k
        self._slice = window / buckets
        self._requests = [0] * buckets
        self._accepts = [0] * buckets
        self._slot = math.floor(now / self._slice)

    def _advance(self, now: float) -> int:
        slot = math.floor(now / self._slice)
        n = len(self._requests)
        if slot > self._slot:
            for s in range(self._slot + 1, min(slot, self._slot + n) + 1):
                self._requests[s % n] = 0
                self._accepts[s % n] = 0
            self._slot = slot
        return self._slot % n

    def probability(self, now: float) -> float:
        """The chance a new request is rejected locally at ``now``."""
        self._advance(now)
        requests = sum(self._requests)
        accepts = sum(self._accepts)
        return max(0.0, (requests - self.k * accepts) / (requests + 1.0))

    def request(self, now: float) -> None:
        """Count a request (made or rejected locally)."""
        self._requests[self._advance(now)] += 1

    def accept(self, now: float) -> None:
        """Count an answer the backend gave (it was not overloaded)."""
        self._accepts[self._advance(now)] += 1

    def counts(self, now: float) -> tuple[int, int]:
        """``(requests, accepts)`` in the window."""
        self._advance(now)
        return sum(self._requests), sum(self._accepts)

    def __repr__(self) -> str:
        requests, accepts = sum(self._requests), sum(self._accepts)
        return f"Throttle(k={self.k!r}, requests={requests}, accepts={accepts})"
