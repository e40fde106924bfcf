"""``RetryBudget`` and ``retry``: bounded retries, on tenacity, that cannot multiply the load.

tenacity runs the loop (attempt, decide, sleep); this module gives it the decisions: which errors
to retry, the back-off (``cacheward._core.backoff``, full jitter), when to stop (attempts or the
call's deadline), and whether the budget (``cacheward._core.budget``) allows one more.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import random
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, ParamSpec, TypeAlias, TypeVar, cast

from cacheward import _forksafe, _testmode
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_fraction, check_positive_int, duration
from cacheward._core.backoff import backoff_delay
from cacheward._core.budget import BudgetState
from cacheward._errors import (
    CacheWardError,
    ConfigurationError,
    ConfigurationTypeError,
    RetryBudgetExhausted,
)
from cacheward._events import EventKind, emit
from cacheward._lazy import iscoroutinefunction
from cacheward._limit import Decorator, check_function, deadline_scope

if TYPE_CHECKING:
    import tenacity

__all__ = ["BudgetStats", "RetryBudget", "RetryOn", "is_retryable", "retry"]

P = ParamSpec("P")
R = TypeVar("R")

#: What :func:`retry` retries: exception types, or a predicate on the exception.
RetryOn: TypeAlias = (
    "type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]"
)

_TRANSIENT_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED,
        errno.ECONNRESET,
        errno.ECONNABORTED,
        errno.EPIPE,
        errno.ETIMEDOUT,
        errno.ENETUNREACH,
        errno.EHOSTUNREACH,
        errno.ENETDOWN,
    }
)


def is_retryable(error: BaseException) -> bool:
    """The default retry rule: connection failures and timeouts, nothing else.

    Retried: :class:`ConnectionError`, :class:`TimeoutError` (and :class:`asyncio.TimeoutError`),
    an :class:`OSError` whose ``errno`` is a connection or network failure, and redis-py's
    ``ConnectionError`` and ``TimeoutError``. Never retried: cacheward's own refusals
    (:class:`~cacheward.CacheWardError`: rate limited, circuit open, budget spent...), which
    say "do not call now", and every other error, which a retry would only repeat.
    """
    if isinstance(error, CacheWardError):
        return False
    aio = sys.modules.get("asyncio")  # not loaded: no asyncio.TimeoutError was raised
    if isinstance(error, (ConnectionError, TimeoutError, aio.TimeoutError if aio else OSError)):
        return True
    if isinstance(error, OSError) and error.errno in _TRANSIENT_ERRNOS:
        return True
    redis_errors = sys.modules.get("redis.exceptions")
    if redis_errors is not None:
        return isinstance(error, (redis_errors.ConnectionError, redis_errors.TimeoutError))
    return False


@dataclasses.dataclass(frozen=True)
class BudgetStats:
    """A snapshot of a :class:`RetryBudget`'s counters."""

    requests: int
    """Requests deposited (first attempts)."""
    retries: int
    """Retries the budget allowed."""
    exhausted: int
    """Retries the budget refused."""


class RetryBudget:
    """A retry budget shared by every function that calls one backend (Finagle's design).

    Each request deposits ``ratio`` of a retry and each retry withdraws one, over a sliding
    ``window``; a reserve of ``min_per_second * window`` lets a quiet service still retry.
    So over any interval of length ``T``, retries stay below
    ``ratio * requests + min_per_second * (T + window)``, where the requests counted start one
    window before the interval (see ``docs/protection.md``).

    Args:
        ratio: retries allowed per request, in ``[0, 1]`` (default 0.2: at most 20 % extra load).
        min_per_second: retries allowed per second whatever the traffic (>= 0; default 10).
        window: how long deposits and withdrawals count, seconds or ``timedelta`` (default 10).
        clock: the clock (``cacheward.testing.FakeClock`` in tests).
        name: the budget's name in events and metrics (default ``"budget"``).

    Raises:
        ConfigurationError: a setting is invalid.
    """

    __slots__ = (
        "_lock",
        "_state",
        "clock",
        "exhausted",
        "min_per_second",
        "name",
        "ratio",
        "requests",
        "retries",
        "window",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        window: Duration = 10.0,
        clock: Clock | None = None,
        name: str = "budget",
    ) -> None:
        self.name = str(name)
        self.ratio = check_fraction("ratio", ratio)
        floor: object = min_per_second
        if not isinstance(floor, (int, float)) or isinstance(floor, bool):
            raise ConfigurationTypeError(
                f"min_per_second must be a number, got {type(min_per_second).__name__}"
            )
        if not 0.0 <= float(min_per_second) < float("inf"):
            raise ConfigurationError(
                f"min_per_second must be a finite number >= 0, got {min_per_second!r}"
            )
        self.min_per_second = float(min_per_second)
        self.window = duration("window", window, allow_zero=False)
        self.clock = check_clock(clock)
        self._lock = _forksafe.lock()
        self._state = BudgetState(
            ratio=self.ratio, min_per_second=self.min_per_second, window=self.window
        )
        #: Requests deposited (first attempts).
        self.requests = 0
        #: Retries the budget allowed.
        self.retries = 0
        #: Retries the budget refused.
        self.exhausted = 0

    def deposit(self) -> None:
        """Count one request (call it once per request, before its first attempt)."""
        with self._lock:
            self._state.deposit(self.clock.monotonic())
            self.requests += 1

    def try_withdraw(self) -> bool:
        """Take one retry from the budget if it has one; returns whether it did."""
        with self._lock:
            if self._state.try_withdraw(self.clock.monotonic()):
                self.retries += 1
                return True
            self.exhausted += 1
            return False

    def balance(self) -> float:
        """Retries available now (a retry needs at least 1)."""
        with self._lock:
            return self._state.balance(self.clock.monotonic())

    def stats(self) -> BudgetStats:
        """A snapshot of the counters."""
        return BudgetStats(requests=self.requests, retries=self.retries, exhausted=self.exhausted)

    def __repr__(self) -> str:
        return (
            f"RetryBudget(ratio={self.ratio:g}, min_per_second={self.min_per_second:g}, "
            f"window={self.window:g}, balance={self.balance():.3g})"
        )


def _predicate(setting: RetryOn | None) -> Callable[[BaseException], bool]:
    retry_on: object = setting
    if retry_on is None:
        return is_retryable
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        retry_on = (retry_on,)
    if isinstance(retry_on, tuple):
        types = retry_on
        for kind in types:
            if not (isinstance(kind, type) and issubclass(kind, BaseException)):
                raise ConfigurationTypeError(
                    f"retry_on must hold exception types, got {kind!r} in {retry_on!r}"
                )
        return lambda error: isinstance(error, types) and not isinstance(error, CacheWardError)
    if callable(retry_on):
        user = cast("Callable[[BaseException], object]", retry_on)
        return lambda error: not isinstance(error, CacheWardError) and bool(user(error))
    raise ConfigurationTypeError(
        "retry_on must be an exception type, a tuple of them, or a predicate taking the "
        f"exception, got {type(retry_on).__name__}"
    )


class RetryCounters:
    """Per-decorated-function counters of :func:`retry` (read by ``guard().stats()``)."""

    __slots__ = ("budget_exhausted", "calls", "gave_up", "retries")

    def __init__(self) -> None:
        self.calls = 0
        self.retries = 0
        self.budget_exhausted = 0
        self.gave_up = 0


def retry(
    *,
    attempts: int = 3,
    budget: RetryBudget | None = None,
    retry_on: RetryOn | None = None,
    backoff: Duration = 0.05,
    backoff_max: Duration = 2.0,
    deadline: Duration = 10.0,
    clock: Clock | None = None,
    rng: random.Random | None = None,
) -> Decorator:
    """Retry the decorated function on transient errors, within attempts, deadline and budget.

    Built on tenacity. Between attempts it sleeps an exponential back-off with full jitter
    (uniform in ``[0, min(backoff_max, backoff * 2 ** (n - 1))]`` after the ``n``-th failure).
    It stops, and re-raises the **last error itself**, when ``attempts`` are used up or the next
    sleep would pass the call's ``deadline``. When the budget refuses a retry it raises
    :class:`~cacheward.RetryBudgetExhausted`, with the last error as ``__cause__``. Errors that
    are not retryable propagate at once; a retry refused further in (by
    :func:`~cacheward.rate_limit` or :func:`~cacheward.circuit_breaker`) raises that refusal with
    the failure that led to the retry as its ``__cause__``.

    Put it *inside* :func:`~cacheward.cached` (so coalesced callers make one request, not N)
    and *outside* :func:`rate_limit` (so that each attempt takes a token).

    Args:
        attempts: the most attempts per call, the first included (>= 1; default 3).
        budget: the :class:`RetryBudget` to draw retries from; share one per backend. Default:
            a budget of this function's own with the default settings.
        retry_on: which errors to retry: exception types or a predicate. Default:
            :func:`is_retryable` (connection failures and timeouts). cacheward's own errors
            (:class:`~cacheward.CacheWardError`) are never retried.
        backoff: the first back-off ceiling (seconds or ``timedelta``; default 0.05).
        backoff_max: the largest back-off ceiling (default 2.0).
        deadline: the most one call may spend, attempts and sleeps included (default 10 s). It is
            also the deadline that :func:`rate_limit` waits honour. A running attempt is not
            interrupted: give the backend client its own timeout.
        clock: the clock to sleep on (``cacheward.testing.FakeClock`` in tests).
        rng: the random source for the jitter (default: a private ``random.Random``).

    Raises:
        ConfigurationError: a setting is invalid (raised here, not on the first call).
    """
    return retrying(
        attempts=attempts,
        budget=budget,
        retry_on=retry_on,
        backoff=backoff,
        backoff_max=backoff_max,
        deadline=deadline,
        clock=clock,
        rng=rng,
        counters=RetryCounters(),
    )


def retrying(
    *,
    attempts: int,
    budget: RetryBudget | None,
    retry_on: RetryOn | None,
    backoff: Duration,
    backoff_max: Duration,
    deadline: Duration,
    clock: Clock | None,
    rng: random.Random | None,
    counters: RetryCounters,
) -> Decorator:
    """:func:`retry` counting into ``counters`` (``guard`` reads them for its stats)."""
    max_attempts = check_positive_int("attempts", attempts)
    if max_attempts > 100:
        raise ConfigurationError(
            f"attempts must be <= 100, got {attempts}; more attempts only add load to a failing "
            "backend (the budget bounds retries across calls, attempts bounds one call)"
        )
    own_budget = RetryBudget(clock=clock) if budget is None else budget
    if not isinstance(own_budget, RetryBudget):
        raise ConfigurationTypeError(
            f"budget must be a cacheward.RetryBudget, got {type(own_budget).__name__}"
        )
    should_retry = _predicate(retry_on)
    base = duration("backoff", backoff)
    cap = duration("backoff_max", backoff_max)
    if cap < base:
        raise ConfigurationError(f"backoff_max ({cap:g}s) must be >= backoff ({base:g}s)")
    limit = duration("deadline", deadline, allow_zero=False)
    the_clock = check_clock(clock)
    draws = random.Random() if rng is None else rng

    def wait(state: tenacity.RetryCallState) -> float:
        return backoff_delay(
            state.attempt_number, base=base, cap=cap, draw=draws.random(), spread=1.0
        )

    def start() -> float:
        """A call begins: counted, its deposit made; returns its deadline."""
        counters.calls += 1
        own_budget.deposit()
        return the_clock.monotonic() + limit

    def policy(deadline_at: float, failed: list[BaseException]) -> dict[str, Any]:
        """tenacity's settings for the attempts after a first failure (made only then)."""
        import tenacity

        def stop(state: tenacity.RetryCallState) -> bool:
            if state.attempt_number >= max_attempts:
                counters.gave_up += 1
                return True
            if the_clock.monotonic() + state.upcoming_sleep >= deadline_at:
                counters.gave_up += 1
                return True
            return False

        def before_sleep(state: tenacity.RetryCallState) -> None:
            outcome = state.outcome
            last = outcome.exception() if outcome is not None else None
            if last is not None:
                failed.append(last)
            if own_budget.try_withdraw():
                counters.retries += 1
                emit(EventKind.RETRY, own_budget.name, error=last)
                return
            counters.budget_exhausted += 1
            emit(EventKind.BUDGET_EXHAUSTED, own_budget.name, error=last)
            raise RetryBudgetExhausted(
                f"retry budget spent ({own_budget!r}) after attempt {state.attempt_number} "
                f"failed with {type(last).__name__}: the backend is failing more often than the "
                "budget's ratio allows, so retrying would only add load; the last error is "
                "chained as __cause__"
            ) from last

        return {
            "stop": stop,
            "wait": wait,
            "retry": tenacity.retry_if_exception(should_retry),
            "before_sleep": before_sleep,
            "reraise": True,
        }

    def decorate(fn: Callable[P, R], /) -> Callable[P, R]:
        check_function(fn, "retry")
        if iscoroutinefunction(fn):
            afn = cast("Callable[..., Coroutine[Any, Any, Any]]", fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                if _testmode.ACTIVE and _testmode.retries_off():
                    return await afn(*args, **kwargs)
                deadline_at = start()
                with deadline_scope(deadline_at):
                    try:
                        return await afn(*args, **kwargs)
                    except BaseException as exc:
                        first = exc
                    import tenacity

                    failed: list[BaseException] = []
                    runner = tenacity.AsyncRetrying(
                        sleep=the_clock.asleep, **policy(deadline_at, failed)
                    )
                    try:
                        return await runner(_areplay(first, afn), *args, **kwargs)
                    except CacheWardError as exc:
                        _chain(exc, failed)
                        raise

            return cast("Callable[P, R]", awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if _testmode.ACTIVE and _testmode.retries_off():
                return fn(*args, **kwargs)
            deadline_at = start()
            with deadline_scope(deadline_at):
                try:
                    return fn(*args, **kwargs)
                except BaseException as exc:
                    first = exc
                import tenacity

                failed: list[BaseException] = []
                runner = tenacity.Retrying(sleep=the_clock.sleep, **policy(deadline_at, failed))
                try:
                    return cast("R", runner(_replay(first, fn), *args, **kwargs))
                except CacheWardError as exc:
                    _chain(exc, failed)
                    raise

        return wrapper

    return decorate


# The first attempt runs without tenacity (a call that succeeds builds no retry state); after
# a failure tenacity runs the rest, its first attempt replaying that failure, so it decides on
# it exactly as if it had made the attempt itself.


def _replay(first: BaseException, fn: Callable[..., Any]) -> Callable[..., Any]:
    pending = [first]

    def attempt(*args: Any, **kwargs: Any) -> Any:
        if pending:
            raise pending.pop()
        return fn(*args, **kwargs)

    return attempt


def _areplay(
    first: BaseException, fn: Callable[..., Coroutine[Any, Any, Any]]
) -> Callable[..., Coroutine[Any, Any, Any]]:
    pending = [first]

    async def attempt(*args: Any, **kwargs: Any) -> Any:
        if pending:
            raise pending.pop()
        return await fn(*args, **kwargs)

    return attempt


def _chain(refusal: CacheWardError, failed: list[BaseException]) -> None:
    """A retry refused by the limiter or the breaker keeps the failure that led to it."""
    if failed and refusal.__cause__ is None and refusal is not failed[-1]:
        refusal.__cause__ = failed[-1]


#: For other modules (``_backend_breaker``): what ``retry_on`` / ``failure_on`` accept.
predicate = _predicate
