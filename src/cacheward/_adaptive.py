"""``AdaptiveLimit``: a concurrency limit on backend attempts that learns the backend's capacity.

The decisions (the limit, who is admitted, who is woken, the throttle's odds) are in
:mod:`cacheward._core.adaptive`; this module holds the lock, reads the clock, draws the random
number, waits and calls the function. Waiters do not poll: a finishing attempt wakes the next
waiter directly (a ``threading.Event`` for a thread, a future on its loop for a task), so a slot
that frees up is taken within one scheduling step.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import logging
import math
import random
import threading
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, ParamSpec, TypeVar, cast

from cacheward import _forksafe
from cacheward._backend_breaker import is_backend_failure
from cacheward._clock import Clock, SystemClock
from cacheward._config import check_clock, check_fraction, check_positive_int, duration
from cacheward._core.adaptive import (
    Admission,
    Aimd,
    Gradient,
    LimitAlgorithm,
    SlicedWait,
    Throttle,
)
from cacheward._errors import ConfigurationError, ConfigurationTypeError, RateLimited
from cacheward._events import EventKind, emit
from cacheward._lazy import iscoroutinefunction
from cacheward._limit import LimitCounters, check_function, time_left

if TYPE_CHECKING:
    import asyncio

__all__ = ["REJECT_REASONS", "AdaptiveLimit", "AdaptiveStats", "PriorityStats", "priority"]

P = ParamSpec("P")
R = TypeVar("R")

_LOG = logging.getLogger("cacheward")

#: The priority of the current call (``with cw.priority("batch"):``); ``None``: the default.
_PRIORITY: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "cacheward_priority", default=None
)

#: Why an attempt was refused, as counted in :attr:`AdaptiveStats.rejected`.
Reason = Literal["queue_full", "timeout", "throttled", "caller_gone"]
REJECT_REASONS: tuple[Reason, ...] = ("queue_full", "timeout", "throttled", "caller_gone")
_REASONS = REJECT_REASONS


class priority:  # noqa: N801 - used like a function, as a context manager
    """Run the block's backend attempts at priority ``name`` (``with cw.priority("batch"):``).

    It is a context variable, so it follows the call into every decorator and into asyncio
    tasks created inside the block. A name the limit has no partition for runs in its default
    partition.
    """

    __slots__ = ("_token", "name")

    def __init__(self, name: str) -> None:
        self.name = _check_name("priority", name)
        self._token: contextvars.Token[str | None] | None = None

    def __enter__(self) -> str:
        self._token = _PRIORITY.set(self.name)
        return self.name

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _PRIORITY.reset(self._token)
            self._token = None


@dataclasses.dataclass(frozen=True)
class PriorityStats:
    """One priority partition's counters (see :meth:`AdaptiveLimit.stats`)."""

    share: float
    """Its guaranteed fraction of the limit."""
    inflight: int
    """Its attempts running now."""
    queued: int
    """Its callers waiting for a slot now."""
    admitted: int
    """Its attempts admitted so far."""
    rejected: dict[str, int]
    """Its refusals so far, by reason."""


@dataclasses.dataclass(frozen=True)
class AdaptiveStats:
    """A snapshot of an :class:`AdaptiveLimit`."""

    limit: float
    """The concurrency allowed now (``2.3``: two slots, and a third held at most 30 % of the
    time)."""
    estimate: float
    """The learnt limit (``limit`` is lower while the baseline is being probed)."""
    inflight: int
    """Attempts running now."""
    queued: int
    """Callers waiting for a slot now."""
    admitted: int
    """Attempts admitted so far."""
    rejected: dict[str, int]
    """Refusals so far, by reason: ``queue_full``, ``timeout`` (no slot within ``max_wait`` or
    the deadline), ``throttled`` (client-side throttling), ``caller_gone`` (the caller's
    deadline passed while it waited, so the attempt was not sent)."""
    baseline: float | None
    """The no-load latency the gradient algorithm measured (seconds); ``None`` for AIMD."""
    throttle_probability: float
    """The chance a new attempt is rejected locally now."""
    priorities: dict[str, PriorityStats]
    """The same, per priority partition."""


class _Waiter:
    __slots__ = ("event", "future", "look_at", "loop", "notified", "part")

    def __init__(
        self,
        part: str,
        event: threading.Event | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        future: asyncio.Future[None] | None = None,
    ) -> None:
        self.part = part
        self.event = event
        self.loop = loop
        self.future = future
        self.notified = False
        #: When it looks again if nobody wakes it (its wait's end, or the fractional slot's
        #: opening).
        self.look_at = math.inf

    def rearm(self) -> None:
        """Ready for the next wake-up (under the limit's lock, so none is lost)."""
        if self.event is not None:
            self.event.clear()
        elif self.loop is not None:
            self.future = self.loop.create_future()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class AdaptiveLimit:
    """A concurrency limit on backend attempts that adapts to the backend's latency and failures.

    Use it wherever a :class:`~cacheward.TokenBucket` goes (``cw.rate_limit(limit)``,
    ``cw.guard(limiter=limit)``), or together with one (``limiter=[bucket, limit]``: a token
    *and* a slot per attempt). Share one object between every function that calls the same
    backend. Nobody configures a rate: with the default ``algorithm="gradient"`` it finds the
    concurrency at which the backend's latency starts to rise and stays just above it, and it
    follows that point down when the backend slows (docs/protection.md argues the choice).

    A caller that finds every slot busy waits in line for at most ``max_wait`` (or its deadline)
    and then gets :class:`~cacheward.RateLimited` (under ``guard``: the stale value where one
    is allowed). A caller whose deadline passes while it waits is not sent to the backend.

    Args:
        algorithm: ``"gradient"`` (latency-driven; the default) or ``"aimd"`` (failure-driven:
            for backends that refuse cleanly when full).
        initial: the limit to start from (default 20).
        floor: the lowest the limit goes (default 1; a number > 0: below 1, a process holds
            its one slot only part of the time, for many processes sharing a small backend).
        ceiling: the highest the limit goes (default 1000).
        priorities: priority name -> guaranteed fraction of the limit (fractions sum to <= 1),
            for example ``{"interactive": 0.9, "batch": 0.1}``. Tag calls with
            :class:`cw.priority <priority>`; untagged calls (and unknown names) run in
            ``default_priority``. Default: one partition.
        default_priority: the partition of untagged calls (default: the first in
            ``priorities``).
        tolerance: (gradient) the latency rise over the no-load latency read as queueing
            (default 0.1: 10 %).
        probe_interval: (gradient) seconds between no-load latency probes (default 30).
        probe_concurrency: (gradient) the limit during a probe (default 1, at least
            ``floor``): every process probes, so the backend sees the sum of their probes.
        probe_jitter: (gradient) each interval between probes is stretched by a random
            fraction of up to this much of ``probe_interval`` (default 0.15, Envoy's), so the
            processes' probes drift apart.
        window_samples: attempts per limit update (default 10).
        backoff: the factor overload failures in a window multiply the limit by (default 0.9).
        throttle: the ``K`` of client-side adaptive throttling, e.g. ``2.0`` (local rejections
            start once the backend refuses half of what it gets); default ``None``: off (see
            docs/protection.md for when it helps and when it stays engaged).
        throttle_window: seconds of history the throttle counts (default 10).
        failure_on: which errors are overload failures (default:
            :func:`~cacheward.is_backend_failure`: timeouts, refused connections, DB-API
            ``OperationalError``); other errors are ordinary answers.
        clock: the clock (``cacheward.testing.FakeClock`` in tests).
        rng: the random source of the throttle and of the probes' jitter (a
            ``random.Random``; seed it in tests).
        name: the limit's name in events, logs and metrics (default ``"adaptive"``).

    Raises:
        ConfigurationError: a setting is invalid.
    """

    def __init__(
        self,
        *,
        algorithm: Literal["gradient", "aimd"] = "gradient",
        initial: float = 20,
        floor: float = 1,
        ceiling: float = 1000,
        priorities: Mapping[str, float] | None = None,
        default_priority: str | None = None,
        tolerance: float = 0.1,
        probe_interval: float = 30.0,
        probe_concurrency: float = 1,
        probe_jitter: float = 0.15,
        window_samples: int = 10,
        backoff: float = 0.9,
        throttle: float | None = None,
        throttle_window: float = 10.0,
        failure_on: Callable[[BaseException], bool] | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        name: str = "adaptive",
    ) -> None:
        self.clock = check_clock(clock)
        floor = _check_positive("floor", floor)
        ceiling = _check_positive("ceiling", ceiling)
        if ceiling < floor:
            raise ConfigurationError(f"ceiling ({ceiling:g}) must be >= floor ({floor:g})")
        initial = _check_positive("initial", initial)
        window_samples = check_positive_int("window_samples", window_samples)
        backoff = check_fraction("backoff", backoff)
        if not 0.0 < backoff < 1.0:
            raise ConfigurationError(f"backoff must be between 0 and 1 (exclusive), got {backoff}")
        tolerance = check_fraction("tolerance", tolerance, maximum=10.0)
        if tolerance <= 0.0:
            raise ConfigurationError(f"tolerance must be > 0, got {tolerance}")
        probe = duration("probe_interval", probe_interval, allow_zero=False)
        probe_concurrency = _check_positive("probe_concurrency", probe_concurrency)
        probe_jitter = check_fraction("probe_jitter", probe_jitter)
        if rng is not None and not isinstance(rng, random.Random):
            raise ConfigurationTypeError(f"rng must be a random.Random, got {rng!r}")
        self._rng = random.Random() if rng is None else rng
        now = self.clock.monotonic()
        core: LimitAlgorithm
        if algorithm == "gradient":
            core = Gradient(
                initial=initial,
                floor=floor,
                ceiling=ceiling,
                now=now,
                tolerance=tolerance,
                backoff=backoff,
                window_samples=window_samples,
                probe_interval=probe,
                probe_concurrency=probe_concurrency,
                jitter=probe_jitter,
                random=self._rng.random,
            )
        elif algorithm == "aimd":
            core = Aimd(
                initial=initial,
                floor=floor,
                ceiling=ceiling,
                now=now,
                backoff=backoff,
                window_samples=window_samples,
            )
        else:
            raise ConfigurationError(f"algorithm must be 'gradient' or 'aimd', got {algorithm!r}")
        shares = _check_shares(priorities)
        if default_priority is None:
            default_priority = next(iter(shares))
        elif default_priority not in shares:
            raise ConfigurationError(
                f"default_priority {default_priority!r} is not one of priorities {list(shares)}"
            )
        if throttle is not None:
            if isinstance(cast("object", throttle), bool):
                raise ConfigurationTypeError(
                    "throttle must be a number (the K of the SRE formula) or None, "
                    f"got {throttle!r}"
                )
            if not throttle > 1.0:
                raise ConfigurationError(
                    "throttle must be > 1 (K=2 rejects once half the attempts fail), "
                    f"got {throttle}"
                )
        window = duration("throttle_window", throttle_window, allow_zero=False)
        if failure_on is not None and not callable(failure_on):
            raise ConfigurationTypeError("failure_on must be a predicate on an exception")
        self.algorithm = algorithm
        self.name = str(name)
        self.floor = floor
        self.ceiling = ceiling
        self.default_priority = default_priority
        self._failure = is_backend_failure if failure_on is None else failure_on
        self._lock = _forksafe.lock()
        self._core = core
        self._admission = Admission(core, shares, now=now)
        _forksafe.register(self)
        self._throttle = None if throttle is None else Throttle(k=throttle, window=window, now=now)
        self._rejected: dict[str, dict[str, int]] = {
            name: dict.fromkeys(_REASONS, 0) for name in shares
        }
        self._logged = core.estimate

    def after_fork(self) -> None:
        """In a forked child the attempts in flight and the waiters were the parent's
        threads': none will ever leave, so they are forgotten (the limit itself is kept)."""
        shares = {part.name: part.share for part in self._admission.partitions()}
        self._admission = Admission(self._core, shares, now=self.clock.monotonic())

    # -- state

    @property
    def limit(self) -> float:
        """The concurrency allowed now (the fraction: a slot held part of the time)."""
        return self._core.limit

    @property
    def inflight(self) -> int:
        """Attempts running now."""
        return self._admission.inflight

    def stats(self) -> AdaptiveStats:
        """A snapshot of the limit, in-flight, queued and rejected counts, per priority too."""
        with self._lock:
            now = self.clock.monotonic()
            adm = self._admission
            parts = {
                p.name: PriorityStats(
                    share=p.share,
                    inflight=p.inflight,
                    queued=len(p.waiting),
                    admitted=p.admitted,
                    rejected=dict(self._rejected[p.name]),
                )
                for p in adm.partitions()
            }
            return AdaptiveStats(
                limit=self._core.limit,
                estimate=self._core.estimate,
                inflight=adm.inflight,
                queued=adm.queued,
                admitted=sum(p.admitted for p in parts.values()),
                rejected={str(r): sum(p.rejected[r] for p in parts.values()) for r in _REASONS},
                baseline=getattr(self._core, "baseline", None),
                throttle_probability=(
                    0.0 if self._throttle is None else self._throttle.probability(now)
                ),
                priorities=parts,
            )

    def __repr__(self) -> str:
        return (
            f"AdaptiveLimit(name={self.name!r}, algorithm={self.algorithm!r}, "
            f"limit={self._core.limit:.3g}, inflight={self._admission.inflight}, "
            f"queued={self._admission.queued})"
        )

    # -- the decisions, under the lock

    def _partition(self) -> str:
        name = _PRIORITY.get()
        return self.default_priority if name is None or name not in self._rejected else name

    def _refuse(
        self, part: str, reason: Reason, counters: LimitCounters, detail: str
    ) -> RateLimited:
        self._rejected[part][reason] += 1
        counters.rate_limited += 1
        emit(EventKind.RATE_LIMITED, self.name)
        return RateLimited(
            f"no slot from {self!r} ({reason}: {detail}); the limit follows the backend's "
            "latency, so the backend is at its capacity: serve stale data, or raise max_wait "
            "to queue longer",
            retry_after=None,
        )

    def _enter(
        self, part: str, cap: float, counters: LimitCounters, make: Callable[[str], _Waiter]
    ) -> tuple[int, _Waiter | None]:
        """Admit (the in-flight count) or queue (a waiter), or raise RateLimited."""
        with self._lock:
            now = self.clock.monotonic()
            throttle = self._throttle
            if throttle is not None:
                odds = throttle.probability(now)
                if odds > 0.0 and self._rng.random() < odds:
                    throttle.request(now)
                    raise self._refuse(
                        part, "throttled", counters, f"{odds:.0%} of attempts rejected locally"
                    )
            admitted = self._admission.try_admit(part, now)
            if admitted:
                return admitted, None
            if cap <= 0.0:
                raise self._refuse(part, "queue_full", counters, "every slot busy, no wait left")
            waiter = make(part)
            self._admission.enqueue(part, waiter)
            return 0, waiter

    def _after_wait(
        self, part: str, waiter: _Waiter, gone: bool, *, over: bool = True
    ) -> tuple[int, list[_Waiter]]:
        """A waiter's wait ended: ``(-1, ...)`` still queued and withdrawn (its wait is
        ``over``), ``(0, ...)`` still queued and waiting on (a look at the fractional slot,
        which opens with time), else resume's answer."""
        with self._lock:
            now = self.clock.monotonic()
            woken: list[_Waiter] = []
            if not waiter.notified and not over and not gone:
                woken = self._notify(now)  # it may be this waiter's turn, or another's
                if waiter not in woken:
                    waiter.rearm()  # it was only told to look again
                    return 0, woken
                woken.remove(waiter)
            if not waiter.notified:
                self._admission.withdraw(part, waiter)
                return -1, self._lookers(now)  # it may have been the one to look
            waiter.notified = False
            admitted = self._admission.resume(part, waiter, now, admit=not gone)
            if not admitted and not gone:
                waiter.rearm()  # back at the front of its line
            return admitted, woken + self._notify(now)

    def _wait_for(self, waiter: _Waiter, give_up: float) -> float:
        """How long a waiter sleeps before it looks again: until it gives up, or sooner,
        when the fractional slot opens with time."""
        with self._lock:
            now = self.clock.monotonic()
            opens = self._admission.opens_at(now)
            waiter.look_at = give_up if opens is None else min(give_up, opens)
            return waiter.look_at - now

    def _lookers(self, now: float) -> list[_Waiter]:
        """A waiter to wake (not notified) so that it looks again when the fractional slot
        opens with time, if no queued waiter looks by then: one suffices, since its look
        notifies whoever's turn it is (under the lock)."""
        opens = self._admission.opens_at(now)
        if opens is None:
            return []
        waiters = cast("list[_Waiter]", self._admission.waiters())
        if not waiters or any(w.look_at <= opens + 1e-9 for w in waiters):
            return []
        return [waiters[0]]

    def _woke(
        self,
        part: str,
        waiter: _Waiter,
        counters: LimitCounters,
        limit: float,
        *,
        gone: bool,
        give_up: float,
    ) -> int:
        """A wait ended (a wake-up, a look at the fractional slot, or the time ran out): the
        in-flight count once admitted, or 0 to wait again; raises RateLimited when the wait
        is over without a slot."""
        over = self.clock.monotonic() >= give_up
        inflight, woken = self._after_wait(part, waiter, gone, over=over)
        self._wake(woken)
        if inflight < 0:
            raise self._refuse(part, "timeout", counters, f"{limit:g}s")
        if not inflight and gone:
            raise self._refuse(part, "caller_gone", counters, "deadline passed")
        return inflight

    def _exit(self, part: str, started: float, inflight: int, error: BaseException | None) -> None:
        with self._lock:
            now = self.clock.monotonic()
            if error is None:
                dropped: bool | None = False
            elif isinstance(error, Exception):
                dropped = bool(self._failure(error))
            else:
                dropped = None  # cancelled: says nothing about the backend
            self._admission.release(
                now, part, started=started, rtt=now - started, inflight=inflight, dropped=dropped
            )
            if self._throttle is not None and dropped is not None:
                # The throttle's "requests" are the attempts that got an answer plus the ones it
                # rejected itself: callers refused by the queue never asked the backend, and
                # attempts still running have not been refused (yet).
                self._throttle.request(now)
                if not dropped:
                    self._throttle.accept(now)
            woken = self._notify(now)
            if not woken:
                woken = self._lookers(now)
            estimate = self._core.estimate
            moved = abs(estimate - self._logged) > self._logged / 2.0
            if moved:
                before, self._logged = self._logged, estimate
        self._wake(woken)
        if moved:
            _LOG.warning(
                "cacheward adaptive limit %s moved from %.3g to %.3g (in flight %d)",
                self.name,
                before,
                estimate,
                inflight,
            )
            emit(EventKind.LIMIT_CHANGED, self.name)

    def _notify(self, now: float) -> list[_Waiter]:
        """Take the waiters to wake off the lines, marked as notified (under the lock)."""
        woken = cast("list[_Waiter]", self._admission.to_notify(now))
        for waiter in woken:
            waiter.notified = True
        return woken

    def _wake(self, woken: list[_Waiter]) -> None:
        """Wake the waiters :meth:`_notify` took (outside the lock)."""
        for waiter in woken:
            if waiter.event is not None:
                waiter.event.set()
                continue
            loop, future = waiter.loop, waiter.future
            assert loop is not None  # noqa: S101 - an async waiter has a loop and a future
            assert future is not None  # noqa: S101
            import asyncio  # an async waiter exists: asyncio is loaded

            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is loop:
                _resolve(future)
            else:
                try:
                    loop.call_soon_threadsafe(_resolve, future)
                except RuntimeError:  # its loop is closed: nobody will resume it
                    _, again = self._after_wait(waiter.part, waiter, True)
                    self._wake(again)

    # -- the drivers

    def limit_calls(
        self,
        fn: Callable[P, R],
        /,
        *,
        max_wait: float,
        max_waiters: int,
        clock: Clock,
        counters: LimitCounters,
    ) -> Callable[P, R]:
        """Wrap ``fn`` so that each call holds a slot while it runs (used by ``rate_limit``)."""
        check_function(fn, "rate_limit")
        now = clock.monotonic

        def cap() -> float:
            if counters.waiters >= max_waiters:
                return 0.0
            left = time_left(clock)
            return max_wait if left is None else min(max_wait, left)

        def gone() -> bool:
            left = time_left(clock)
            return left is not None and left <= 0.0

        if iscoroutinefunction(fn):
            import asyncio  # an async def function is decorated: asyncio is in use

            afn = cast("Callable[..., Coroutine[Any, Any, Any]]", fn)

            def make_async(part: str) -> _Waiter:
                loop = asyncio.get_running_loop()
                return _Waiter(part, loop=loop, future=loop.create_future())

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                part = self._partition()
                limit = cap()
                inflight, waiter = self._enter(part, limit, counters, make_async)
                if waiter is not None:
                    counters.enter_wait()
                    try:
                        give_up = now() + limit
                        while not inflight:
                            assert waiter.future is not None  # noqa: S101
                            try:
                                await _await_wakeup(
                                    clock, waiter.future, self._wait_for(waiter, give_up)
                                )
                            except BaseException:
                                _, woken = self._after_wait(part, waiter, True)
                                self._wake(woken)
                                raise
                            inflight = self._woke(
                                part, waiter, counters, limit, gone=gone(), give_up=give_up
                            )
                    finally:
                        counters.leave_wait()
                counters.attempts += 1
                started = now()
                try:
                    result = await afn(*args, **kwargs)
                except BaseException as error:
                    self._exit(part, started, inflight, error)
                    raise
                self._exit(part, started, inflight, None)
                return result

            return cast("Callable[P, R]", awrapper)

        def make_sync(part: str) -> _Waiter:
            return _Waiter(part, event=threading.Event())

        wait_for = (
            _event_wait if isinstance(clock, SystemClock) else functools.partial(_clock_wait, clock)
        )

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            part = self._partition()
            limit = cap()
            inflight, waiter = self._enter(part, limit, counters, make_sync)
            if waiter is not None:
                counters.enter_wait()
                try:
                    give_up = now() + limit
                    while not inflight:
                        assert waiter.event is not None  # noqa: S101
                        left = self._wait_for(waiter, give_up)
                        if left > 0.0:
                            wait_for(waiter.event, left)
                        inflight = self._woke(
                            part, waiter, counters, limit, gone=gone(), give_up=give_up
                        )
                finally:
                    counters.leave_wait()
            counters.attempts += 1
            started = now()
            try:
                result = fn(*args, **kwargs)
            except BaseException as error:
                self._exit(part, started, inflight, error)
                raise
            self._exit(part, started, inflight, None)
            return result

        return wrapper


def _event_wait(event: threading.Event, seconds: float) -> None:
    event.wait(seconds)


def _clock_wait(clock: Clock, event: threading.Event, seconds: float) -> None:
    """Wait for ``event`` on a clock that is not the system's (``FakeClock`` in tests): sleep
    on that clock in the core's slices (:class:`SlicedWait`), checking the event between
    them, so a fake clock's wait takes no real time."""
    plan = SlicedWait(start=clock.monotonic(), seconds=seconds)
    while not event.is_set():
        delay = plan.next_delay(clock.monotonic())
        if delay is None:
            return
        clock.sleep(delay)


async def _await_wakeup(clock: Clock, future: asyncio.Future[None], seconds: float) -> None:
    """Wait up to ``seconds`` of ``clock`` for ``future``: on the event loop's timer when the
    loop's time is the clock (the system clock; a ``SimClock`` under ``run_simulated``), else
    in the core's slices (:class:`SlicedWait`) of sleeps on the clock, as a thread does, so a
    task waiting on a plain ``FakeClock`` takes no real time either."""
    import asyncio  # a task waits: asyncio is loaded

    if seconds <= 0.0:
        return
    if isinstance(clock, SystemClock) or asyncio.get_running_loop().time() == clock.monotonic():
        await asyncio.wait((future,), timeout=seconds)
        return
    plan = SlicedWait(start=clock.monotonic(), seconds=seconds)
    while not future.done():
        delay = plan.next_delay(clock.monotonic())
        if delay is None:
            return
        await clock.asleep(delay)


def _check_positive(name: str, value: object) -> float:
    """A number > 0 (a limit may be a fraction of a slot), or raise naming ``name``."""
    number = check_fraction(name, value, maximum=math.inf)
    if number <= 0.0:
        raise ConfigurationError(f"{name} must be > 0, got {value!r}")
    return number


def _check_shares(priorities: object) -> dict[str, float]:
    if priorities is None:
        return {"default": 1.0}
    if not isinstance(priorities, Mapping) or not priorities:
        raise ConfigurationTypeError(
            "priorities must be a non-empty mapping of name -> guaranteed fraction, "
            f"for example {{'interactive': 0.9, 'batch': 0.1}}; got {priorities!r}"
        )
    shares: dict[str, float] = {}
    for name, share in priorities.items():
        shares[_check_name("priorities", name)] = check_fraction(f"priorities[{name!r}]", share)
    if sum(shares.values()) > 1.0 + 1e-9:
        raise ConfigurationError(
            f"priorities: the guaranteed fractions sum to {sum(shares.values()):g} > 1; "
            "they are shares of one limit"
        )
    return shares


def _check_name(where: str, name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigurationTypeError(f"{where}: a priority name is a non-empty str, got {name!r}")
    return name
