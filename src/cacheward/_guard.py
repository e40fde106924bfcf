"""``guard``: the drop-in — cached, coalesced, retried, broken and rate-limited, in that order.

``guard`` only composes the public decorators; it adds no layer of its own to the call path, so a
fresh hit costs what a ``cached`` hit costs. The order (outermost first) is the point:

1. ``cached`` — a hit returns here, taking no token and no budget; concurrent misses of one key
   coalesce into one fetch (one *request*, as the retry budget counts it); a fetch that fails
   or is refused serves stale data within ``stale_if_error``.
2. ``retry`` — the fetch's attempts, within ``attempts``, the budget and the deadline.
3. ``circuit_breaker`` — each attempt is checked; an open breaker refuses before any token.
4. ``rate_limit`` — each attempt that will reach the backend takes a token.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, overload

from cacheward._backend_breaker import BreakerCounters, CircuitBreaker, breaking
from cacheward._cached import CacheStats, cached
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, duration, keyword_settings
from cacheward._errors import ConfigurationTypeError
from cacheward._limit import (
    AnyLimiter,
    LimitCounters,
    TokenBucket,
    check_function,
    check_limiter,
    limiting,
)
from cacheward._pending import Invalidation
from cacheward._readpath import Missing
from cacheward._retry import RetryBudget, RetryCounters, RetryOn, retrying

__all__ = ["AsyncGuardedFunction", "GuardStats", "GuardedFunction", "guard"]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")

#: The token bucket a guarded function gets when no ``limiter`` is given: a bound, but a
#: generic one. Size your own from the backend's capacity (docs/protection.md).
DEFAULT_RATE = 100.0
DEFAULT_BURST = 100.0


@dataclasses.dataclass(frozen=True)
class GuardStats:
    """A snapshot of a guarded function's counters (see ``guard(...)(fn).stats()``).

    ``attempts`` counts this function's backend calls; the limiter, budget and breaker may be
    shared with other functions, and their own counters (``TokenBucket.taken``,
    ``RetryBudget.retries``, ``CircuitBreaker.rejected``...) count for all of them.
    """

    cache: CacheStats
    """The caching counters (hits, stale hits, misses, fetches, coalesced waits...)."""
    attempts: int = 0
    """Backend attempts made (each took a token): first attempts plus retries."""
    retries: int = 0
    """Retries the budget allowed."""
    budget_exhausted: int = 0
    """Fetches that failed fast because the retry budget was spent."""
    gave_up: int = 0
    """Fetches that ran out of attempts or deadline (the last error was raised or served over)."""
    rate_limited: int = 0
    """Attempts refused for want of a token within ``max_wait`` or the deadline."""
    token_waits: int = 0
    """Attempts that queued for a token."""
    circuit_open: int = 0
    """Attempts refused because the backend circuit breaker was open."""
    breaker_state: str = "closed"
    """The breaker's state at the snapshot: ``closed``, ``open`` or ``half-open``."""


class GuardedFunction(Protocol[P, R_co]):
    """What :func:`guard` returns for a plain function."""

    __wrapped__: Callable[..., Any]
    limiter: Any
    """The limiter every backend attempt passes (what ``limiter=`` was, or the default
    :class:`~cacheward.TokenBucket`)."""
    breaker: CircuitBreaker
    """The backend circuit breaker."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Invalidation:
        """Drop the entry for these arguments from every layer."""
        ...

    def set(
        self: GuardedFunction[P, R2], value: R2, /, *args: P.args, **kwargs: P.kwargs
    ) -> Invalidation:
        """Store ``value`` for these arguments in every layer (see ``CachedFunction.set``)."""
        ...

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Fetch now (through the limiter, retries and budget) and store the result."""
        ...

    def get(self, *args: P.args, **kwargs: P.kwargs) -> R_co | Missing:
        """The fresh value the layers hold, or :data:`cacheward.MISSING`."""
        ...

    def cache_clear(self) -> Invalidation:
        """Drop every entry of this function from every layer (see ``CachedFunction``)."""
        ...

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None, /) -> GuardedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: GuardedFunction[Concatenate[T, P2], R2], obj: T, owner: type[Any] | None = None, /
    ) -> GuardedFunction[P2, R2]: ...

    def stats(self) -> GuardStats:
        """Return a snapshot of the counters: caching and protection together."""
        ...


class AsyncGuardedFunction(Protocol[P, R_co]):
    """What :func:`guard` returns for an ``async def`` function."""

    __wrapped__: Callable[..., Any]
    limiter: Any
    """The limiter every backend attempt passes (what ``limiter=`` was, or the default
    :class:`~cacheward.TokenBucket`)."""
    breaker: CircuitBreaker
    """The backend circuit breaker."""

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Invalidation:
        """Drop the entry for these arguments from every layer."""
        ...

    async def set(
        self: AsyncGuardedFunction[P, R2], value: R2, /, *args: P.args, **kwargs: P.kwargs
    ) -> Invalidation:
        """Store ``value`` for these arguments in every layer (see ``CachedFunction.set``)."""
        ...

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Fetch now (through the limiter, retries and budget) and store the result."""
        ...

    async def get(self, *args: P.args, **kwargs: P.kwargs) -> R_co | Missing:
        """The fresh value the layers hold, or :data:`cacheward.MISSING`."""
        ...

    async def cache_clear(self) -> Invalidation:
        """Drop every entry of this function from every layer (see ``CachedFunction``)."""
        ...

    @overload
    def __get__(
        self, obj: None, owner: type[Any] | None = None, /
    ) -> AsyncGuardedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: AsyncGuardedFunction[Concatenate[T, P2], R2],
        obj: T,
        owner: type[Any] | None = None,
        /,
    ) -> AsyncGuardedFunction[P2, R2]: ...

    def stats(self) -> GuardStats:
        """Return a snapshot of the counters: caching and protection together."""
        ...


class _GuardDecorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncGuardedFunction[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> GuardedFunction[P, R]: ...


#: The settings of ``cached``, all of which ``guard`` takes and passes on as given.
_CODE = cached.__wrapped__.__code__  # type: ignore[attr-defined]
CACHED_SETTINGS: tuple[str, ...] = _CODE.co_varnames[: _CODE.co_kwonlyargcount]


@keyword_settings("guard", "ttl=60, limiter=cw.TokenBucket(rate=50, burst=100)", required=("ttl",))
def guard(
    *,
    ttl: Duration,
    stale_ttl: Duration = 0,
    stale_if_error: Duration | None = None,
    layers: Sequence[Any] | None = None,
    limiter: AnyLimiter | None = None,
    max_wait: Duration = 0.5,
    max_waiters: int = 1000,
    attempts: int = 3,
    budget: RetryBudget | None = None,
    retry_on: RetryOn | None = None,
    retry_backoff: Duration = 0.05,
    retry_backoff_max: Duration = 2.0,
    breaker: CircuitBreaker | None = None,
    wait_timeout: Duration = 10.0,
    clock: Clock | None = None,
    rng: random.Random | None = None,
    namespace: str | None = None,
    version: int = 1,
    jitter: float = 0.1,
    backoff: Duration = 1.0,
    backoff_max: Duration = 60.0,
    key: Callable[..., Hashable] | None = None,
    refresh_executor: concurrent.futures.Executor | None = None,
    max_refreshes: int = 16,
    lease_ttl: Duration = 15.0,
    cross_process: bool = True,
    breaker_failures: int | None = None,
    breaker_reset: Duration | None = None,
    timeout: Duration | None = None,
    backplane: bool = True,
    l1_max_age: Duration = 5.0,
    self_key: Callable[[Any], Hashable] | None = None,
    tags: Iterable[str] | Callable[..., Iterable[str]] | None = None,
) -> _GuardDecorator:
    """Cache, coalesce, retry within a budget, break and rate-limit a backend fetch function.

    The drop-in for a function that fetches from a backend which must not be overloaded. Over
    any interval of length ``T`` its backend attempts stay within ``burst + rate * T`` of the
    limiter and its retries within the budget, whatever the cache layers do; when the limiter,
    the budget or the breaker says no, callers get stale data (within ``stale_if_error``) or a
    clear error (:class:`~cacheward.RateLimited`, :class:`~cacheward.RetryBudgetExhausted`,
    :class:`~cacheward.CircuitOpen`, :class:`~cacheward.BackoffActive`), never a queue.

    Share the ``limiter``, ``budget`` and ``breaker`` objects between every function that calls
    the same backend: the bounds are per object.

    Args:
        ttl: see :func:`~cacheward.cached`.
        stale_ttl: see :func:`~cacheward.cached`.
        stale_if_error: see :func:`~cacheward.cached` (defaults to ``stale_ttl``): how long
            past ``ttl`` an entry is served when a fetch fails or is refused.
        layers: see :func:`~cacheward.cached`.
        limiter: a :class:`~cacheward.TokenBucket`, a :class:`~cacheward.RedisTokenBucket`, an
            :class:`~cacheward.AdaptiveLimit`, or a list of them (a token *and* a slot per
            attempt; see :func:`~cacheward.rate_limit`). Default: a bucket of this function's
            own with ``rate=100, burst=100`` — a bound,
            but not one sized for your backend.
        max_wait: the longest an attempt waits for a token (default 0.5 s).
        max_waiters: the most attempts waiting for a token at once (default 1000).
        attempts: attempts per fetch, the first included (default 3).
        budget: the :class:`~cacheward.RetryBudget`; default: one of this function's own
            (ratio 0.2, 10 retries/s floor, 10 s window).
        retry_on: which errors to retry (default: :func:`~cacheward.is_retryable`).
        retry_backoff: the first retry back-off ceiling (default 0.05 s; full jitter).
        retry_backoff_max: the largest retry back-off ceiling (default 2 s, as
            :func:`~cacheward.retry`'s ``backoff_max``).
        breaker: the backend :class:`~cacheward.CircuitBreaker`; default: one of this
            function's own (5 consecutive failures, 10 s reset).
        wait_timeout: see :func:`~cacheward.cached`; also each fetch's retry deadline, so a
            leader stops retrying by the time its waiters stop waiting.
        clock: the clock for everything the guard builds (``FakeClock`` in tests). Objects you
            pass in keep their own clocks.
        rng: the random source for jitter.
        namespace: see :func:`~cacheward.cached`.
        version: see :func:`~cacheward.cached`.
        jitter: see :func:`~cacheward.cached`.
        backoff: see :func:`~cacheward.cached` (a key's back-off after a failed fetch).
        backoff_max: see :func:`~cacheward.cached`.
        key: see :func:`~cacheward.cached`.
        refresh_executor: see :func:`~cacheward.cached`.
        max_refreshes: see :func:`~cacheward.cached`.
        lease_ttl: see :func:`~cacheward.cached`.
        cross_process: see :func:`~cacheward.cached`.
        breaker_failures: see :func:`~cacheward.cached` (the shared layers' breaker; the
            backend's is ``breaker``).
        breaker_reset: see :func:`~cacheward.cached`.
        timeout: the old spelling of ``wait_timeout`` (deprecated; accepted until 0.2).
        backplane: see :func:`~cacheward.cached`.
        l1_max_age: see :func:`~cacheward.cached`.
        self_key: see :func:`~cacheward.cached` (methods).
        tags: see :func:`~cacheward.cached` (for :func:`~cacheward.invalidate_tags`).

    Every setting of :func:`~cacheward.cached` is a setting of ``guard``, with the same
    default, and is passed to it as given (checked by ``tests/test_guard.py``).

    Raises:
        ConfigurationError: a setting is invalid (raised here, not on the first call).
    """
    given = dict(locals())
    the_clock = check_clock(clock)
    deadline = duration(
        "wait_timeout", wait_timeout if timeout is None else timeout, allow_zero=False
    )
    if limiter is not None:
        check_limiter(limiter, "limiter")
    if breaker is not None and not isinstance(breaker, CircuitBreaker):
        raise ConfigurationTypeError(
            f"breaker must be a cacheward.CircuitBreaker, got {type(breaker).__name__}"
        )
    options = {name: given[name] for name in CACHED_SETTINGS}
    options.update(clock=the_clock, wait_timeout=deadline, timeout=None)
    caching = cached(**options)
    retry_rng = None if rng is None else random.Random(rng.random())

    def decorate(fn: Callable[..., Any], /) -> Any:
        check_function(fn, "guard")
        # Each decorated function gets its own defaults (and counters); objects passed in are
        # shared as given.
        bucket = (
            TokenBucket(rate=DEFAULT_RATE, burst=DEFAULT_BURST, clock=the_clock)
            if limiter is None
            else limiter
        )
        own_breaker = CircuitBreaker(clock=the_clock) if breaker is None else breaker
        limits, retries, rejections = LimitCounters(), RetryCounters(), BreakerCounters()
        inner = limiting(
            bucket, max_wait=max_wait, max_waiters=max_waiters, clock=the_clock, counters=limits
        )(fn)
        inner = breaking(own_breaker, rejections)(inner)
        inner = retrying(
            attempts=attempts,
            budget=budget,
            retry_on=retry_on,
            backoff=retry_backoff,
            backoff_max=retry_backoff_max,
            deadline=deadline,
            clock=the_clock,
            rng=retry_rng,
            counters=retries,
        )(inner)
        wrapper = caching(inner)
        cache_stats = wrapper.stats

        def stats() -> GuardStats:
            """Return a snapshot of the counters: caching and protection together."""
            return GuardStats(
                cache=cache_stats(),
                attempts=limits.attempts,
                retries=retries.retries,
                budget_exhausted=retries.budget_exhausted,
                gave_up=retries.gave_up,
                rate_limited=limits.rate_limited,
                token_waits=limits.waits,
                circuit_open=rejections.rejected,
                breaker_state=own_breaker.state.value,
            )

        any_wrapper = cast("Any", wrapper)
        any_wrapper.stats = stats
        any_wrapper.__wrapped__ = fn
        any_wrapper.limiter = bucket
        any_wrapper.breaker = own_breaker
        return any_wrapper

    return cast("_GuardDecorator", decorate)
