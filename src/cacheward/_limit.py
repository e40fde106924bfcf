"""``TokenBucket`` and ``rate_limit``: every backend attempt takes a token, or fails fast.

The arithmetic lives in :mod:`cacheward._core.bucket`; this module only reads the clock, holds
a lock, sleeps and counts. The same :class:`TokenBucket` serves threads and asyncio tasks: its
critical section is a few float operations and never awaits, so one ``threading.Lock`` is safe
(and cheaper than an ``asyncio.Lock``) on both paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextvars import ContextVar
from typing import Any, ParamSpec, Protocol, TypeVar, cast, runtime_checkable

from cacheward import _forksafe, _testmode
from cacheward._checks import check_caller, check_not_descriptor
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_positive_int, duration
from cacheward._core.bucket import BucketState
from cacheward._errors import ConfigurationError, ConfigurationTypeError, RateLimited
from cacheward._events import EventKind, emit
from cacheward._lazy import iscoroutinefunction

__all__ = ["BucketStats", "Limiter", "TokenBucket", "rate_limit"]

P = ParamSpec("P")
R = TypeVar("R")

#: The monotonic time (of the clock in use) by which the current call must be done, if any.
#: ``retry`` and ``guard`` set it; ``rate_limit`` shortens its waits to it.
_DEADLINE: ContextVar[float | None] = ContextVar("cacheward_deadline", default=None)


@contextlib.contextmanager
def deadline_scope(deadline: float) -> Iterator[None]:
    """Run the block with ``deadline`` (monotonic) as the call's deadline, or an earlier one."""
    current = _DEADLINE.get()
    token = _DEADLINE.set(deadline if current is None else min(current, deadline))
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def time_left(clock: Clock) -> float | None:
    """Seconds until the current call's deadline (``None`` when it has none; never < 0)."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return max(0.0, deadline - clock.monotonic())


#: Tolerance for float rounding when a wait lands exactly on the caller's limit.
_SLACK = 1e-9


class Decorator(Protocol):
    """A decorator that keeps the decorated function's signature (``def`` or ``async def``)."""

    def __call__(self, fn: Callable[P, R], /) -> Callable[P, R]: ...


def check_function(fn: object, decorator: str) -> Callable[..., Any]:
    """Return ``fn`` if it is callable, or raise naming the decorator."""
    check_not_descriptor(fn, decorator)
    if not callable(fn):
        raise ConfigurationTypeError(
            f"{decorator} decorates a function, got {type(fn).__name__} {fn!r}"
        )
    return fn


@runtime_checkable
class Limiter(Protocol):
    """What :func:`rate_limit` (and :func:`~cacheward.guard`) need from a rate limiter.

    :class:`TokenBucket` and :class:`~cacheward.RedisTokenBucket` implement it; implement it
    yourself to plug in another limiter.

    Attributes:
        clock: the clock waits are measured and slept on.
    """

    clock: Clock

    def reserve(self, max_wait: float) -> float:
        """Take a token (``0.0``) or queue for one (the seconds to sleep before :meth:`claim`).

        Raises:
            RateLimited: no token is expected within ``max_wait`` seconds; nothing was taken
                and the caller is not queued.
        """
        ...

    def claim(self) -> float:
        """A queued caller woke up: ``0.0`` if it now has its token, else seconds to sleep again."""
        ...

    def cancel(self) -> None:
        """A queued caller gives up without a token."""
        ...

    async def areserve(self, max_wait: float) -> float:
        """:meth:`reserve` for ``async def`` callers (a shared limiter may do I/O)."""
        ...

    async def aclaim(self) -> float:
        """:meth:`claim` for ``async def`` callers."""
        ...

    async def acancel(self) -> None:
        """:meth:`cancel` for ``async def`` callers."""
        ...


@dataclasses.dataclass(frozen=True)
class BucketStats:
    """A snapshot of a :class:`TokenBucket`'s counters."""

    taken: int
    """Tokens taken at once."""
    waited: int
    """Callers queued for a token."""
    refused: int
    """Takes refused, and queued callers that gave up."""


class TokenBucket:
    """An in-process token bucket, shared by threads and asyncio tasks.

    Over any interval of length ``T``, at most ``burst + rate * T`` tokens are taken from it,
    however many callers there are and whatever they do.

    Args:
        rate: tokens added per second (> 0): the sustained rate of backend attempts.
        burst: the most tokens the bucket holds, and what it starts with (>= 1; default: ``rate``,
            one second's worth, but at least 1).
        clock: the clock (``cacheward.testing.FakeClock`` in tests).
        name: the bucket's name in events and metrics (default ``"bucket"``).

    Raises:
        ConfigurationError: a setting is invalid.
    """

    __slots__ = (
        "_lock",
        "_now",
        "_reserve",
        "_state",
        "burst",
        "clock",
        "name",
        "rate",
        "refused",
        "taken",
        "waited",
    )

    def __init__(
        self,
        *,
        rate: float,
        burst: float | None = None,
        clock: Clock | None = None,
        name: str = "bucket",
    ) -> None:
        self.rate = _positive_number("rate", rate)
        self.burst = max(1.0, self.rate) if burst is None else _positive_number("burst", burst)
        if self.burst < 1.0:
            raise ConfigurationError(
                f"burst must be >= 1 (a bucket that cannot hold one token never lets a call "
                f"through), got {burst!r}"
            )
        self.clock = check_clock(clock)
        self.name = str(name)
        self._lock = _forksafe.lock()
        self._state = BucketState(rate=self.rate, burst=self.burst, now=self.clock.monotonic())
        # Bound once: the take is on every backend attempt's path.
        self._now = self.clock.monotonic
        self._reserve = self._state.reserve
        #: Tokens taken at once.
        self.taken = 0
        #: Callers queued for a token.
        self.waited = 0
        #: Takes refused, and queued callers that gave up.
        self.refused = 0

    def reserve(self, max_wait: float = 0.0) -> float:
        """Take a token (``0.0``) or queue for one (returns the seconds to sleep, then claim).

        Args:
            max_wait: the longest the caller can wait for the token, in seconds.

        Raises:
            RateLimited: no token expected within ``max_wait``; nothing was taken.
        """
        with self._lock:
            now = self._now()
            wait = self._reserve(now, max_wait)
            if wait == 0.0:
                self.taken += 1
                return 0.0
            if wait > 0.0:
                self.waited += 1
                return wait
            self.refused += 1
            retry_after = self._state.retry_after(now)
        raise RateLimited(
            f"no token from {self!r} within max_wait={max_wait:g}s (next token in "
            f"{retry_after:.3g}s); the backend is being called at its configured rate: raise "
            "rate/burst if it can take more, or max_wait to queue longer",
            retry_after=retry_after,
        )

    def claim(self) -> float:
        """A queued caller woke up: ``0.0`` if it got its token, else seconds to sleep again."""
        with self._lock:
            wait = self._state.claim(self.clock.monotonic())
            if wait == 0.0:
                self.taken += 1
            return wait

    def cancel(self) -> None:
        """A queued caller gives up without a token."""
        with self._lock:
            self._state.cancel()
            self.refused += 1

    async def areserve(self, max_wait: float = 0.0) -> float:
        """Same as :meth:`reserve` (the bucket never blocks, so it is safe on the event loop)."""
        return self.reserve(max_wait)

    async def aclaim(self) -> float:
        """Same as :meth:`claim`."""
        return self.claim()

    async def acancel(self) -> None:
        """Same as :meth:`cancel`."""
        self.cancel()

    def try_take(self) -> bool:
        """Take one token if one is there now (and nobody is queued); returns whether it did."""
        with self._lock:
            if self._state.try_take(self.clock.monotonic()):
                self.taken += 1
                return True
            self.refused += 1
            return False

    def available(self) -> float:
        """The tokens in the bucket now (fractional while refilling)."""
        with self._lock:
            return self._state.level(self.clock.monotonic())

    def stats(self) -> BucketStats:
        """A snapshot of the counters."""
        return BucketStats(taken=self.taken, waited=self.waited, refused=self.refused)

    def __repr__(self) -> str:
        return (
            f"TokenBucket(rate={self.rate:g}, burst={self.burst:g}, "
            f"available={self.available():.3g})"
        )


def _positive_number(name: str, value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigurationTypeError(f"{name} must be a number, got {type(value).__name__}")
    result = float(value)
    if not result > 0.0 or result == float("inf"):
        raise ConfigurationError(f"{name} must be a finite number > 0, got {value!r}")
    return result


#: Whether the current attempt already counted a wait (set per attempt by a list of limiters,
#: so an attempt that waits for a token *and* for a slot counts one wait, not two).
_WAITED: ContextVar[list[bool] | None] = ContextVar("cacheward_waited", default=None)


class LimitCounters:
    """Per-decorated-function counters of :func:`rate_limit` (read by ``guard().stats()``)."""

    __slots__ = ("__weakref__", "_lock", "attempts", "rate_limited", "waiters", "waits")

    def __init__(self) -> None:
        self._lock = _forksafe.lock()
        self.attempts = 0
        self.waits = 0
        self.rate_limited = 0
        self.waiters = 0
        _forksafe.register(self)

    def after_fork(self) -> None:
        """In a forked child the parent's waiting threads are gone: none is in the line."""
        self.waiters = 0

    def enter_wait(self) -> None:
        waited = _WAITED.get()
        with self._lock:
            self.waiters += 1
            if waited is None or not waited[0]:
                self.waits += 1
        if waited is not None:
            waited[0] = True

    def leave_wait(self) -> None:
        with self._lock:
            self.waiters -= 1


def rate_limit(
    limiter: AnyLimiter,
    /,
    *,
    max_wait: Duration = 0.5,
    max_waiters: int = 1000,
    clock: Clock | None = None,
) -> Decorator:
    """Make every call of the decorated function take a token from ``limiter`` first.

    A call that can get a token within ``max_wait`` waits for it and runs; otherwise it raises
    :class:`~cacheward.RateLimited` at once (nothing queues beyond ``max_wait``). The wait is
    also cut short by the call's deadline when it runs under :func:`retry` or
    :func:`~cacheward.guard`, and at most ``max_waiters`` calls wait at a time (further calls
    only take a token that is there now). Put it *inside* :func:`retry` so that every attempt
    takes a token, and *inside* :func:`~cacheward.cached` so that cache hits take none.

    Args:
        limiter: a :class:`TokenBucket`, a :class:`~cacheward.RedisTokenBucket`, an
            :class:`~cacheward.AdaptiveLimit`, anything implementing :class:`Limiter`, or a
            list of them (every attempt then passes each: token limiters first, then
            concurrency limits, each waiting at most ``max_wait``); share one between every
            function that calls the same backend.
        max_wait: the longest a call waits for a token (seconds or ``timedelta``; default 0.5).
        max_waiters: the most calls waiting for a token at a time (default 1000). It is read
            without a lock, so threads arriving at the same instant may exceed it by their
            number; past it, calls only take a token that is there now.
        clock: the clock to sleep on (default: the limiter's).

    Raises:
        ConfigurationError: a setting is invalid (raised here, not on the first call).
    """
    check_limiter(limiter, "rate_limit")
    return limiting(
        limiter, max_wait=max_wait, max_waiters=max_waiters, clock=clock, counters=LimitCounters()
    )


def limiting(
    limiter: AnyLimiter,
    *,
    max_wait: Duration,
    max_waiters: int,
    clock: Clock | None,
    counters: LimitCounters,
) -> Decorator:
    """:func:`rate_limit` counting into ``counters`` (``guard`` reads them for its stats)."""
    wait_cap = duration("max_wait", max_wait)
    waiters_cap = check_positive_int("max_waiters", max_waiters, minimum=0)
    if not isinstance(limiter, Limiter):
        return _limiting_others(
            limiter, max_wait=wait_cap, max_waiters=waiters_cap, clock=clock, counters=counters
        )
    sleeper = limiter.clock if clock is None else check_clock(clock)

    def cap() -> float:
        if counters.waiters >= waiters_cap:
            return 0.0  # the line is full: only a token that is there now will do
        left = time_left(sleeper)
        return wait_cap if left is None else min(wait_cap, left)

    source = str(getattr(limiter, "name", "limiter"))

    def refused() -> None:
        counters.rate_limited += 1
        emit(EventKind.RATE_LIMITED, source)

    def refuse(limit: float) -> RateLimited:
        refused()
        return RateLimited(
            f"no token from {limiter!r} within max_wait={limit:g}s (max_wait or the call's "
            "deadline); the backend is being called at its configured rate",
            retry_after=None,
        )

    def decorate(fn: Callable[P, R], /) -> Callable[P, R]:
        check_function(fn, "rate_limit")
        check_caller(limiter, asynchronous=iscoroutinefunction(fn), where="limiter")
        if iscoroutinefunction(fn):
            afn = cast("Callable[..., Coroutine[Any, Any, Any]]", fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                if _testmode.ACTIVE and _testmode.limits_off():
                    return await afn(*args, **kwargs)
                limit = cap()
                try:
                    wait = await limiter.areserve(limit)
                except RateLimited:
                    refused()
                    raise
                if wait > 0.0:
                    counters.enter_wait()
                    try:
                        give_up = sleeper.monotonic() + limit
                        while wait > 0.0:
                            if sleeper.monotonic() + wait > give_up + _SLACK:
                                await limiter.acancel()
                                raise refuse(limit)
                            try:
                                await sleeper.asleep(wait)
                                wait = await limiter.aclaim()
                            except BaseException:
                                await limiter.acancel()
                                raise
                    finally:
                        counters.leave_wait()
                counters.attempts += 1
                return await afn(*args, **kwargs)

            return cast("Callable[P, R]", awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _testmode.ACTIVE and _testmode.limits_off():
                return fn(*args, **kwargs)
            limit = cap()
            try:
                wait = limiter.reserve(limit)
            except RateLimited:
                refused()
                raise
            if wait > 0.0:
                counters.enter_wait()
                try:
                    give_up = sleeper.monotonic() + limit
                    while wait > 0.0:
                        if sleeper.monotonic() + wait > give_up + _SLACK:
                            limiter.cancel()
                            raise refuse(limit)
                        try:
                            sleeper.sleep(wait)
                            wait = limiter.claim()
                        except BaseException:
                            limiter.cancel()
                            raise
                finally:
                    counters.leave_wait()
            counters.attempts += 1
            return fn(*args, **kwargs)

        return wrapper

    return decorate


# --------------------------------------------------------------------------------------------
# Limiters that drive their own calls (``AdaptiveLimit``: a slot is held while the call runs),
# and lists of limiters (a token *and* a slot per attempt).


@runtime_checkable
class CallLimiter(Protocol):
    """A limiter that wraps each call itself (it must know when the call ends)."""

    clock: Clock

    def limit_calls(
        self,
        fn: Callable[P, R],
        /,
        *,
        max_wait: float,
        max_waiters: int,
        clock: Clock,
        counters: LimitCounters,
    ) -> Callable[P, R]: ...


#: What ``rate_limit`` and ``guard(limiter=...)`` accept.
AnyLimiter = Limiter | CallLimiter | Sequence[Limiter | CallLimiter]


def check_limiter(limiter: object, where: str) -> None:
    """Raise naming ``where`` unless ``limiter`` is a limiter or a non-empty list of them."""
    items = list(limiter) if isinstance(limiter, (list, tuple)) else [limiter]
    if not items or not all(isinstance(x, (Limiter, CallLimiter)) for x in items):
        raise ConfigurationTypeError(
            f"{where} needs a limiter (cacheward.TokenBucket, cacheward.RedisTokenBucket, "
            "cacheward.AdaptiveLimit or another cacheward.Limiter) or a non-empty list of them, "
            f"got {limiter!r}"
        )


def _limiting_others(
    limiter: CallLimiter | Sequence[Limiter | CallLimiter],
    *,
    max_wait: float,
    max_waiters: int,
    clock: Clock | None,
    counters: LimitCounters,
) -> Decorator:
    if isinstance(limiter, CallLimiter):
        sleeper = limiter.clock if clock is None else check_clock(clock)

        def drive(fn: Callable[P, R], /) -> Callable[P, R]:
            return limiter.limit_calls(
                fn, max_wait=max_wait, max_waiters=max_waiters, clock=sleeper, counters=counters
            )

        return drive
    # Token limiters outermost: an attempt takes its token first and only then holds a slot,
    # so a slot is never held idle while its caller waits for a token.
    ordered = sorted(limiter, key=lambda x: isinstance(x, CallLimiter), reverse=True)
    # Only the innermost layer counts attempts (every layer passes through it exactly once).
    layers = [
        limiting(
            one,
            max_wait=max_wait,
            max_waiters=max_waiters,
            clock=clock,
            counters=counters if i == 0 else cast("LimitCounters", _Uncounted(counters)),
        )
        for i, one in enumerate(ordered)
    ]

    def stack(fn: Callable[P, R], /) -> Callable[P, R]:
        inner = fn
        for layer in layers:
            inner = layer(inner)
        if iscoroutinefunction(fn):
            ainner = cast("Callable[..., Coroutine[Any, Any, Any]]", inner)

            async def aattempt(*args: Any, **kwargs: Any) -> Any:
                token = _WAITED.set([False])
                try:
                    return await ainner(*args, **kwargs)
                finally:
                    _WAITED.reset(token)

            return cast("Callable[P, R]", functools.wraps(fn)(aattempt))

        def attempt(*args: P.args, **kwargs: P.kwargs) -> R:
            token = _WAITED.set([False])
            try:
                return inner(*args, **kwargs)
            finally:
                _WAITED.reset(token)

        return functools.wraps(fn)(attempt)

    return stack


class _Uncounted:
    """The counters of an outer layer of a list: refusals and waits count, attempts do not
    (the innermost layer counts each attempt once)."""

    __slots__ = ("_shared",)

    def __init__(self, shared: LimitCounters) -> None:
        self._shared = shared

    @property
    def attempts(self) -> int:
        return 0

    @attempts.setter
    def attempts(self, value: int) -> None:
        pass

    @property
    def rate_limited(self) -> int:
        return self._shared.rate_limited

    @rate_limited.setter
    def rate_limited(self, value: int) -> None:
        self._shared.rate_limited = value

    @property
    def waiters(self) -> int:
        return self._shared.waiters

    def enter_wait(self) -> None:
        self._shared.enter_wait()

    def leave_wait(self) -> None:
        self._shared.leave_wait()


#: For other modules (``_redis_bucket``): a finite number > 0, named in the error.
positive_number = _positive_number
