"""``CircuitBreaker`` and ``circuit_breaker``: stop calling a failing backend for a while.

The state machine is :class:`cacheward._core.breaker.Breaker` (pure, ``now`` passed in); this
module holds the lock, reads the clock, classifies outcomes and counts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar, cast

from cacheward import _forksafe, _testmode
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_positive_int, duration
from cacheward._core.breaker import Breaker, BreakerState
from cacheward._errors import CacheWardError, CircuitOpen, ConfigurationError
from cacheward._events import EventKind, emit
from cacheward._lazy import iscoroutinefunction
from cacheward._limit import Decorator, check_function
from cacheward._retry import RetryOn, is_retryable
from cacheward._retry import predicate as _predicate

__all__ = [
    "BreakerState",
    "BreakerStats",
    "CircuitBreaker",
    "circuit_breaker",
    "is_backend_failure",
]

P = ParamSpec("P")
R = TypeVar("R")


def is_backend_failure(error: BaseException) -> bool:
    """The default breaker rule: errors that say the backend is sick, not that a call was bad.

    Counted: what :func:`~cacheward.is_retryable` retries (connection failures and timeouts,
    redis-py's included) and any DB-API ``OperationalError`` (psycopg, sqlite3, MySQL drivers...:
    lost connections, statement timeouts, "too many connections"). Not counted: application
    errors such as ``KeyError`` or a driver's ``IntegrityError`` for one bad row — five "not
    found" answers in a row must not cut every caller off the backend.
    """
    if isinstance(error, CacheWardError) or not isinstance(error, Exception):
        return False
    if is_retryable(error):
        return True
    return any(kind.__name__ == "OperationalError" for kind in type(error).__mro__)


@dataclasses.dataclass(frozen=True)
class BreakerStats:
    """A snapshot of a :class:`CircuitBreaker`'s counters and state."""

    state: str
    """``"closed"``, ``"open"`` or ``"half_open"``."""
    rejected: int
    """Calls refused while open (or while a probe was out)."""
    opened: int
    """Times it opened."""
    failed: int
    """Calls that failed."""
    succeeded: int
    """Calls that succeeded."""


class CircuitBreaker:
    """A circuit breaker for one backend, shared by every function that calls it.

    Closed, it lets calls through and counts consecutive failures; at ``failures`` of them it
    opens and refuses calls with :class:`~cacheward.CircuitOpen` for ``reset`` seconds; then it
    lets one probe through (half-open): a success closes it, a failure opens it again. A probe
    whose caller never reports (cancelled) does not wedge it: another is let through after
    another ``reset``.

    Args:
        failures: consecutive failures that open it (>= 1; default 5). The same word as
            ``cached(breaker_failures=)`` for a layer's breaker.
        reset: how long it stays open before a probe (seconds or ``timedelta``;
            default 10).
        failure_on: which errors count as backend failures: exception types or a predicate.
            Default: :func:`is_backend_failure` (connection failures, timeouts and DB-API
            ``OperationalError``). Other errors count as successes (the backend answered), and
            cacheward's own refusals (such as :class:`~cacheward.RateLimited`) count as
            nothing: they say nothing about the backend's health.
        clock: the clock (``cacheward.testing.FakeClock`` in tests).
        name: a name for messages and ``repr``.

    Raises:
        ConfigurationError: a setting is invalid.
    """

    __slots__ = (
        "_breaker",
        "_is_failure",
        "_lock",
        "clock",
        "failures",
        "name",
        "opened",
        "rejected",
        "successes",
    )

    def __init__(
        self,
        *,
        failures: int = 5,
        reset: Duration = 10.0,
        failure_on: RetryOn | None = None,
        clock: Clock | None = None,
        name: str = "backend",
        failure_threshold: int | None = None,
        reset_timeout: Duration | None = None,
    ) -> None:
        # failure_threshold / reset_timeout: the old spellings (accepted until 0.2).
        if failure_threshold is not None:
            failures = failure_threshold
        if reset_timeout is not None:
            reset = reset_timeout
        self._breaker = Breaker(
            failure_threshold=check_positive_int("failures", failures),
            reset_timeout=duration("reset", reset, allow_zero=False),
        )
        self._is_failure = is_backend_failure if failure_on is None else _predicate(failure_on)
        self.clock = check_clock(clock)
        self.name = str(name)
        self._lock = _forksafe.lock()
        #: Calls refused while open (or while a probe was out).
        self.rejected = 0
        #: Times it opened (a failed probe re-opening it included).
        self.opened = 0
        #: Calls that failed / succeeded.
        self.failures = 0
        self.successes = 0

    @property
    def state(self) -> BreakerState:
        """``CLOSED``, ``OPEN`` or ``HALF_OPEN`` (the reset timeout passed; a probe may go)."""
        with self._lock:
            return self._breaker.state(self.clock.monotonic())

    def before_call(self) -> None:
        """Let a call through, or raise :class:`~cacheward.CircuitOpen`."""
        with self._lock:
            now = self.clock.monotonic()
            allowed = self._breaker.allow(now)
            if allowed:
                probe = self._breaker.state(now) is BreakerState.HALF_OPEN
            else:
                self.rejected += 1
                retry_after = self._breaker.retry_after(now)
        if allowed:
            if probe:
                emit(EventKind.BREAKER_HALF_OPEN, self.name)
            return
        raise CircuitOpen(
            f"circuit breaker {self.name!r} is open after {self._breaker.failure_threshold} "
            f"consecutive backend failures; the backend is not called for {retry_after:.3g}s "
            "more (then one probe goes through). Serve stale data meanwhile (stale_ttl / "
            "stale_if_error), or tune failures / reset",
            retry_after=retry_after,
        )

    def record(self, error: BaseException | None) -> None:
        """Report a call's outcome: ``None`` for a success, else the error it raised."""
        if error is not None and isinstance(error, CacheWardError):
            return  # a refusal from further in, not an answer from the backend
        if error is not None and not isinstance(error, Exception):
            return  # cancelled or interrupted: no verdict on the backend
        failed = error is not None and self._is_failure(error)
        change: EventKind | None = None
        with self._lock:
            now = self.clock.monotonic()
            if failed:
                self.failures += 1
                before = self._breaker.state(now)
                self._breaker.record_failure(now)
                if before is not BreakerState.OPEN and self._breaker.state(now) is (
                    BreakerState.OPEN
                ):
                    self.opened += 1
                    change = EventKind.BREAKER_OPENED
            else:
                self.successes += 1
                if self._breaker.record_success(now) is BreakerState.CLOSED:
                    change = EventKind.BREAKER_CLOSED
        if change is not None:
            emit(change, self.name, error=error)

    def stats(self) -> BreakerStats:
        """A snapshot of the counters and the state."""
        return BreakerStats(
            state=self.state.name.lower(),
            rejected=self.rejected,
            opened=self.opened,
            failed=self.failures,
            succeeded=self.successes,
        )

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(name={self.name!r}, state={self.state.value!r}, "
            f"failures={self._breaker.failure_threshold}, "
            f"reset={self._breaker.reset_timeout:g})"
        )


class BreakerCounters:
    """Per-decorated-function counters of :func:`circuit_breaker` (read by ``guard().stats()``)."""

    __slots__ = ("rejected",)

    def __init__(self) -> None:
        self.rejected = 0


def circuit_breaker(
    breaker: CircuitBreaker | None = None,
    /,
    *,
    failures: int | None = None,
    reset: Duration | None = None,
    failure_on: RetryOn | None = None,
    clock: Clock | None = None,
    failure_threshold: int | None = None,
    reset_timeout: Duration | None = None,
) -> Decorator:
    """Guard the decorated function with a :class:`CircuitBreaker`.

    Pass a shared ``breaker`` (one per backend), or the settings to make one for this function
    alone. While the breaker is open, calls raise :class:`~cacheward.CircuitOpen` without
    calling the function. Put it *inside* :func:`~cacheward.retry` (each attempt is checked and
    counted) and *outside* :func:`~cacheward.rate_limit` (a refused call takes no token).

    Args:
        breaker: the breaker to use; when given, the other settings must not be.
        failures: see :class:`CircuitBreaker` (default 5).
        reset: see :class:`CircuitBreaker` (default 10 s).
        failure_on: see :class:`CircuitBreaker`.
        clock: see :class:`CircuitBreaker`.
        failure_threshold: the old spelling of ``failures`` (deprecated; accepted until 0.2).
        reset_timeout: the old spelling of ``reset`` (likewise).

    Raises:
        ConfigurationError: a setting is invalid, or both a breaker and settings were given.
    """
    if failure_threshold is not None:
        failures = failure_threshold
    if reset_timeout is not None:
        reset = reset_timeout
    if breaker is None:
        breaker = CircuitBreaker(
            failures=5 if failures is None else failures,
            reset=10.0 if reset is None else reset,
            failure_on=failure_on,
            clock=clock,
        )
    elif not isinstance(breaker, CircuitBreaker):
        raise ConfigurationError(
            f"breaker must be a cacheward.CircuitBreaker, got {type(breaker).__name__}"
        )
    elif any(v is not None for v in (failures, reset, failure_on, clock)):
        raise ConfigurationError(
            "give circuit_breaker either a CircuitBreaker or its settings, not both "
            "(the settings belong to the shared breaker)"
        )
    return breaking(breaker, BreakerCounters())


def breaking(shared: CircuitBreaker, counters: BreakerCounters) -> Decorator:
    """:func:`circuit_breaker` on ``shared``, counting into ``counters`` (for ``guard``)."""

    def admit() -> None:
        if _testmode.ACTIVE and _testmode.limits_off():
            return
        try:
            shared.before_call()
        except CircuitOpen:
            counters.rejected += 1
            raise

    def decorate(fn: Callable[P, R], /) -> Callable[P, R]:
        check_function(fn, "circuit_breaker")
        if iscoroutinefunction(fn):
            afn = cast("Callable[..., Coroutine[Any, Any, Any]]", fn)

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                admit()
                try:
                    result = await afn(*args, **kwargs)
                except BaseException as exc:
                    shared.record(exc)
                    raise
                shared.record(None)
                return result

            return cast("Callable[P, R]", awrapper)

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            admit()
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                shared.record(exc)
                raise
            shared.record(None)
            return result

        return wrapper

    return decorate
