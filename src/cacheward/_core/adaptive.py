"""Adaptive concurrency: how many backend attempts may run at once, learnt from what they report.

Everything here takes ``now`` (monotonic seconds) and the outcome of each attempt as arguments;
the drivers in :mod:`cacheward._adaptive` read the clock, wait and call the backend.

Three pieces:

* a **limit algorithm** (:class:`Gradient` or :class:`Aimd`) that turns completed attempts
  (their latency and whether they failed the way an overloaded backend fails) into a limit,
  a float: ``2.3`` is two slots, and a third one held at most 30 % of the time (many
  processes sharing a small backend each need a fraction of a slot).
  Both update once per *window*: a batch of ``window_samples`` attempts that all *started*
  after the previous update, so each update judges the limit it set and not the one before
  (TCP's "once per round trip");
* :class:`Admission`: the in-flight count against that limit (the fractional slot's use
  accounted over time, :class:`PartialSlot`), split into priority partitions
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
    "PartialSlot",
    "SlicedWait",
    "Throttle",
]


class LimitAlgorithm(Protocol):
    """What :class:`Admission` needs from a limit algorithm."""

    @property
    def limit(self) -> float:
        """The concurrency allowed now (>= the floor; the fraction is a slot held part-time)."""
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

    def latency(self) -> float | None:
        """The typical latency of the attempts that did not fail (``None``: all failed): the
        mean, without the highest and the lowest 5 % (none cut below 20 attempts: in a
        small window the one attempt that ran in the fractional slot is the evidence).

        Not the median: when processes share a backend through fractional slots, only some
        attempts run past its capacity; the median ignores them until they are half of all,
        then jumps, while the trimmed mean rises with their share (it reads the backend's
        mean queueing, which is what the limit must keep near zero) and still drops a stray
        pause or two.
        """
        if not self.rtts:
            return None
        ordered = sorted(self.rtts)
        cut = len(ordered) // 20
        kept = ordered[cut : len(ordered) - cut] if len(ordered) > 2 * cut else ordered
        return sum(kept) / len(kept)

    def filled(self, limit: float) -> bool:
        """Whether the window tried ``limit``: some attempt started with every whole slot
        taken, and the fractional one too once it is at least half a slot. Only then can a
        flat latency say the backend takes ``limit`` at once. A small fraction is open
        too rarely for a window to see it taken (requiring it would stall growth just past
        each whole number); a large one that a window never saw taken fell in one of its
        closed spells, and growing on it would step past what was measured.
        """
        whole = math.floor(limit)
        needed = whole + 1 if limit - whole >= 0.5 else whole
        return self.max_inflight >= max(1, needed)


class _Bounds:
    """The floor, the ceiling and the float limit between them (shared by both algorithms)."""

    __slots__ = ("ceiling", "floor", "value")

    def __init__(self, *, initial: float, floor: float, ceiling: float) -> None:
        self.floor = float(floor)
        self.ceiling = float(ceiling)
        self.value = float(min(max(initial, floor), ceiling))

    def set(self, value: float) -> None:
        self.value = min(max(value, self.floor), self.ceiling)


class _Windowed:
    """What both algorithms share: the bounded limit and the window of samples."""

    __slots__ = ("_bounds", "_window", "backoff", "window_samples")

    def __init__(
        self,
        *,
        initial: float,
        floor: float,
        ceiling: float,
        now: float,
        backoff: float = 0.9,
        window_samples: int = 10,
    ) -> None:
        self._bounds = _Bounds(initial=initial, floor=floor, ceiling=ceiling)
        self.backoff = backoff
        self.window_samples = window_samples
        self._window = _Window(now)

    @property
    def limit(self) -> float:
        return self._bounds.value

    @property
    def estimate(self) -> float:
        return self._bounds.value

    def _trim(self, window: _Window) -> None:
        """A window that did not fill the limit brings it down to twice the concurrency the
        callers used (never below the floor): an unused limit is no protection, and a burst
        after a quiet spell (a cache lost at once) would otherwise all be admitted."""
        bounds = self._bounds
        bounds.set(min(bounds.value, 2.0 * max(1, window.max_inflight)))

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


#: The slow start's largest step (a fraction of the limit): doubling up to 100 % overshot the
#: knee by half after a capacity rise (the shared-backend property's counterexample).
_MAX_STEP = 0.25
#: How far a faster window moves the baseline towards its latency.
_LOWER = 0.25
#: After a cut, the flat windows in a row that step by ``growth`` before the steps double.
_PATIENCE = 3


class Gradient(_Windowed):
    """A latency-gradient limit: the concurrency at which latency starts to rise.

    The no-load latency is measured Envoy's way (adaptive_concurrency's "minRTT calculation"):
    every ``probe_interval`` (stretched by a random fraction of up to ``jitter`` of it, so that
    processes drift apart) the limit drops to ``probe_concurrency`` for one window and the
    window's latency becomes the baseline -- unless it reads more than ``tolerance``
    above the baseline it replaces: then it is taken only when the next probe reads high too
    (a probe that ran while other processes loaded the backend reads their queueing, and one
    such probe must not hold the limit above the knee for a whole interval; a backend that
    really got slower is re-learnt one interval later). A later window whose latency is lower
    moves the baseline a quarter of the way to it (Vegas's no-load latency is the minimum
    seen; a damped minimum, since the plain one is the noise's luckiest draw). Between probes, each
    window's latency ``m`` is compared with the baseline ``b``:

    * ``m > b * (1 + 3 tolerance / 4)`` (queueing): the limit is multiplied by the gradient
      ``b / m`` (never below half of it). By Little's law ``limit * b / m`` is the concurrency
      the backend served without queueing, so one window lands on the knee, and processes
      that share the backend all multiply by the same ratio: their *sum* lands on it too;
    * ``m <= b * (1 + tolerance / 4)`` and the window filled the limit (one of its attempts
      started with every whole slot taken, and not one of the two windows after a probe,
      while the slots refill): the limit grows by ``growth`` of itself, doubling with each
      flat window in a row up to 25 % (TCP's slow start); after a cut, only from the fourth
      flat window in a row. The step is a
      fraction of the limit, not a whole slot, so ``N`` processes sharing a backend step
      their sum by ``growth`` of it whatever ``N`` is;
    * a window that did not fill the limit brings it down to twice the concurrency used;
    * in between: it holds.

    A window with any overload failure (a timeout) cuts the limit by ``backoff`` instead (by
    half when every attempt of the window failed).
    On a backend whose latency is flat up to ``C`` concurrent requests and proportional to the
    concurrency past it, this settles between ``C`` (where a cut lands) and
    ``(1 + 3 tolerance / 4) * C``.

    Args:
        initial: the limit to start from.
        floor: the lowest limit (> 0; below 1, the one slot is held part of the time).
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
        "_high_probe",
        "_probe_due",
        "_probing",
        "_random",
        "_refilling",
        "_slow_start",
        "_streak",
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
        floor: float,
        ceiling: float,
        now: float,
        tolerance: float = 0.1,
        growth: float = 0.04,
        backoff: float = 0.9,
        window_samples: int = 10,
        probe_interval: float = 30.0,
        probe_concurrency: float = 1,
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
        self.probe_concurrency = max(float(floor), min(float(probe_concurrency), ceiling))
        #: The no-load latency (seconds), from the last probe; ``None`` before the first.
        self.baseline: float | None = None
        #: A probe that read above the baseline, waiting for the next one to agree.
        self._high_probe: float | None = None
        self._probing = True
        self._refilling = 0
        #: Flat windows in a row (the slow start's doubling), and whether no cut came yet.
        self._streak = 0
        self._slow_start = True
        self._probe_due = now + self._interval()

    def _interval(self) -> float:
        """The time to the next probe: ``probe_interval``, plus the jitter."""
        if self._random is None or not self.jitter:
            return self.probe_interval
        return self.probe_interval * (1.0 + self.jitter * self._random())

    @property
    def limit(self) -> float:
        if self._probing:
            return min(self.probe_concurrency, self._bounds.value)
        return self._bounds.value

    @property
    def probing(self) -> bool:
        """Whether the current window measures the baseline."""
        return self._probing

    def _probed(self, latency: float) -> None:
        """A probe read ``latency``: the new baseline, unless it reads high and is alone."""
        old = self.baseline
        if old is None or latency <= old * (1.0 + self.tolerance):
            self.baseline, self._high_probe = latency, None
        elif self._high_probe is not None:  # two probes in a row agree: the backend is slower
            self.baseline, self._high_probe = min(latency, self._high_probe), None
        else:
            self._high_probe = latency

    def on_sample(
        self, now: float, *, started: float, rtt: float, inflight: int, dropped: bool
    ) -> None:
        window = self._full_window(
            now, started=started, rtt=rtt, inflight=inflight, dropped=dropped
        )
        if window is None:
            return
        latency = window.latency()
        bounds = self._bounds
        if self._probing:
            if latency is not None:  # a probe of nothing but failures measures nothing
                self._probed(latency)
                self._probing = False
                self._refilling = 2
                self._probe_due = now + self._interval()
            return
        # The first windows after a probe run while the slots refill: their attempts mostly
        # ran at a lower concurrency than the limit, so their flat latency proves nothing (one
        # window was not enough in the proof's runs: the line refills over about two).
        refilling = self._refilling > 0
        self._refilling = max(0, self._refilling - 1)
        streak, self._streak = self._streak, 0
        if latency is not None and self.baseline is not None and not window.drops:
            # A faster window lowers the baseline a quarter of the way to it, not all the way:
            # the minimum of many noisy windows is their luckiest, and a baseline below the
            # true no-load latency reads every flat window as queueing (the limits then sat
            # at the floor after the benchmark's slow-down, half the capacity unused).
            self.baseline -= _LOWER * max(0.0, self.baseline - latency)
        if window.drops:
            bounds.set(bounds.value * self._cut(window))
            self._slow_start = False
        elif latency is not None and self.baseline is not None:
            ratio = latency / self.baseline if self.baseline > 0.0 else 1.0
            if ratio > 1.0 + 0.75 * self.tolerance:
                bounds.set(bounds.value * max(1.0 / ratio, 0.5))
                self._slow_start = False
            elif not window.filled(bounds.value):
                if not refilling:
                    self._trim(window)
            elif ratio <= 1.0 + self.tolerance / 4.0 and not refilling:
                # Slow start (TCP's): until the first cut, the step doubles with each flat
                # window in a row, so a limit that starts far below its backend's capacity
                # gets there in a few windows. After a cut the knee is known: the first
                # _PATIENCE flat windows in a row step by ``growth`` only (doubling at once,
                # right after a cut, overshot the knee); a longer run of them -- the backend
                # has room -- doubles the step again (4 -> 30 was not reached in 60 b
                # without it).
                doublings = streak if self._slow_start else max(0, streak - _PATIENCE + 1)
                step = min(_MAX_STEP, self.growth * 2.0**doublings)
                bounds.set(bounds.value * (1.0 + step))
                self._streak = streak + 1
        if now >= self._probe_due:
            self._probing = True

    def __repr__(self) -> str:
        return (
            f"Gradient(limit={self.limit:.3g}, estimate={self.estimate:.3g}, "
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
        floor: the lowest limit (> 0).
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
        elif window.filled(bounds.value):
            bounds.set(bounds.value + 1.0)

    def __repr__(self) -> str:
        return f"Aimd(limit={self.limit:.3g}, estimate={self.estimate:.3g})"


#: Debt below this many slot-seconds is none (float rounding must not keep a slot shut).
_EPSILON = 1e-9


class PartialSlot:
    """The fractional slot of a limit ``k + f`` (``k`` whole, ``0 <= f < 1``), held at most a
    fraction ``f`` of the time.

    The ``k`` whole slots are always open; slot ``k + 1`` opens only while it owes nothing.
    Holding it runs up a debt of ``1 - f`` slot-seconds per second, and the debt is paid back
    at ``f`` per second while it is free, so an attempt that held it for ``d`` seconds shuts
    it for ``d * (1 - f) / f``: over time the concurrency averages at most ``k + f``, and at
    every instant it is at most ``k + 1``. Attempts above ``k + 1`` (the limit fell under
    them) owe for the partial slot too. Credit is never saved up (an idle spell does not buy a
    burst); when the limit rises, or crosses a whole number, the debt is forgiven, since it
    was owed under a limit that no longer holds (and a limit that has just grown must get to
    try its new fraction, or growth would stall just past each whole number). Pure: every
    method takes ``now``.
    """

    __slots__ = ("debt", "fraction", "over", "stamp", "whole")

    def __init__(self, now: float, limit: float) -> None:
        self.stamp = now
        self.whole = math.floor(limit)
        self.fraction = limit - self.whole
        #: The attempts above the whole slots, in the interval since ``stamp``.
        self.over = 0
        #: Slot-seconds owed.
        self.debt = 0.0

    def account(self, now: float, *, limit: float, inflight: int) -> None:
        """Bring the debt up to ``now``; from then on ``inflight`` attempts run under ``limit``."""
        elapsed = max(0.0, now - self.stamp)
        self.debt = max(0.0, self.debt + (self.over - self.fraction) * elapsed)
        self.stamp = now
        whole = math.floor(limit)
        if whole != self.whole or limit > self.whole + self.fraction:
            self.debt = 0.0  # owed under a limit that no longer holds
        self.whole = whole
        self.fraction = limit - whole
        self.over = max(0, inflight - whole)

    def is_open(self) -> bool:
        """Whether slot ``whole + 1`` may be taken (as of the last :meth:`account`)."""
        return self.fraction > 0.0 and self.debt <= _EPSILON

    def opens_at(self) -> float | None:
        """When the partial slot opens if nobody takes a slot before; ``None``: not by time
        (it is open, or held, or the limit is whole: only a finishing attempt makes room)."""
        if self.fraction <= 0.0 or self.over or self.debt <= _EPSILON:
            return None
        return self.stamp + self.debt / self.fraction


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

    * nothing is admitted unless ``inflight + notified`` is below the whole slots of the limit,
      or equal to them while the fractional slot is open (:meth:`_room`, the one check every
      admission passes: newcomers, woken waiters, and the waking itself; :class:`PartialSlot`);
    * a newcomer is admitted at once if there is room and nobody waits, or if there is room
      and its partition is below its guaranteed share (``share * limit``) and nobody of its own
      partition waits; otherwise it queues (or is refused, if it cannot wait);
    * a freed slot goes to a waiter of the partition furthest below its share, else to the
      oldest waiter: a partition's unused share is lent, and comes back as slots turn over.

    A waiter is *notified* when a slot is free for it; it then :meth:`resume`\\ s, which admits
    it if there is still room. Notified waiters are counted so that one free slot notifies one
    waiter. The fractional slot also opens with time, not only when an attempt finishes:
    waiters re-check at :meth:`opens_at`.

    Args:
        algorithm: the limit algorithm.
        shares: partition name -> guaranteed fraction of the limit (they sum to <= 1).
        now: the creation time.
    """

    __slots__ = ("_order", "_partitions", "_slot", "_ticket", "algorithm", "notified")

    def __init__(
        self, algorithm: LimitAlgorithm, shares: Mapping[str, float], *, now: float = 0.0
    ) -> None:
        self.algorithm = algorithm
        self._slot = PartialSlot(now, algorithm.limit)
        self._partitions = {name: _Partition(name, share) for name, share in shares.items()}
        #: Waiter -> arrival number (the oldest waiter is served first among equals).
        self._order: dict[Hashable, int] = {}
        self._ticket = 0
        #: Waiters told a slot is free that have not resumed yet.
        self.notified = 0

    @property
    def limit(self) -> float:
        return self.algorithm.limit

    @property
    def inflight(self) -> int:
        return sum(p.inflight for p in self._partitions.values())

    @property
    def queued(self) -> int:
        return len(self._order)

    def waiters(self) -> list[Hashable]:
        """Every queued waiter, oldest first."""
        return sorted(self._order, key=self._order.__getitem__)

    def partition(self, name: str) -> _Partition:
        return self._partitions[name]

    def partitions(self) -> list[_Partition]:
        return list(self._partitions.values())

    def _account(self, now: float) -> PartialSlot:
        slot = self._slot
        slot.account(now, limit=self.algorithm.limit, inflight=self.inflight)
        return slot

    def _room(self, now: float) -> bool:
        slot = self._account(now)
        used = self.inflight + self.notified
        return used < slot.whole or (used == slot.whole and slot.is_open())

    def opens_at(self, now: float) -> float | None:
        """When a waiter should look again without being woken (the fractional slot opens
        with time); ``None``: only a finishing attempt makes room."""
        return self._account(now).opens_at()

    def _under_share(self, part: _Partition) -> bool:
        return part.inflight < part.share * self.algorithm.limit

    def _admit(self, part: _Partition, now: float) -> int:
        part.inflight += 1
        part.admitted += 1
        self._account(now)
        return self.inflight

    def try_admit(self, name: str, now: float) -> int:
        """A newcomer of partition ``name``: the in-flight total once admitted, or 0 (not)."""
        part = self._partitions[name]
        if not self._room(now):
            return 0
        if not self._order or (self._under_share(part) and not part.waiting):
            return self._admit(part, now)
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

    def resume(self, name: str, waiter: Hashable, now: float, *, admit: bool) -> int:
        """A notified waiter woke up: the in-flight total once admitted, or 0.

        With ``admit=False`` (its caller has gone: nobody waits for the result) it gives its
        turn back and is not admitted. Without room (the limit fell) it goes back to the front
        of its line.
        """
        self.notified = max(0, self.notified - 1)
        if not admit:
            return 0
        part = self._partitions[name]
        if self._room(now):  # the slots of the other notified waiters stay theirs
            return self._admit(part, now)
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
        self._account(now)

    def _next(self, candidates: list[_Partition]) -> _Partition:
        """The partition a free slot goes to: the one furthest below its share, else the one
        whose first waiter is oldest."""
        under = [p for p in candidates if self._under_share(p)]
        if under:
            return min(under, key=lambda p: p.inflight / max(p.share, 1e-9))
        return min(candidates, key=lambda p: self._order[p.waiting[0]])

    def to_notify(self, now: float) -> list[Hashable]:
        """The waiters to notify now (removed from the lines and counted as notified)."""
        woken: list[Hashable] = []
        while self._order and self._room(now):
            part = self._next([p for p in self._partitions.values() if p.waiting])
            waiter = part.waiting.popleft()
            del self._order[waiter]
            self.notified += 1
            woken.append(waiter)
        return woken

    def __repr__(self) -> str:
        return (
            f"Admission(limit={self.limit:.3g}, inflight={self.inflight}, queued={self.queued}, "
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


class SlicedWait:
    """How a waiter waits on a clock whose sleeps take no real time (a ``FakeClock``): in
    slices of 1/50 of the wait (at least 10 ms), looking for its wake-up between them, so a
    slot freed meanwhile is taken at the next slice and an hour's wait takes 50 steps.

    The sync and the async driver both follow it (one sleeping on the clock, the other
    awaiting the clock's sleep); on the system clock, or on an event loop whose time is the
    clock, they wait for the wake-up itself instead.
    """

    __slots__ = ("end", "piece")

    def __init__(self, *, start: float, seconds: float) -> None:
        self.end = start + seconds
        self.piece = max(0.01, seconds / 50.0)

    def next_delay(self, now: float) -> float | None:
        """The next slice's sleep, or ``None`` when the wait is over."""
        left = self.end - now
        if left <= 0.0:
            return None
        return min(self.piece, left)
