"""``coalesce``: single-flight for any function, threads and asyncio tasks alike."""

from __future__ import annotations

from collections.abc import Callable, Hashable

from cacheward._cached import Decorator, build, make_settings
from cacheward._clock import Clock
from cacheward._config import Duration, keyword_settings

__all__ = ["coalesce"]


@keyword_settings("coalesce", "")
def coalesce(
    *,
    wait_timeout: Duration = 10.0,
    key: Callable[..., Hashable] | None = None,
    clock: Clock | None = None,
    timeout: Duration | None = None,
) -> Decorator:
    """Make concurrent calls with equal arguments share one execution (single-flight).

    The first caller runs the function; callers arriving while it runs wait for its result or
    exception instead of running it again. Nothing is kept afterwards: the next call after it
    finishes runs the function again. A waiter that is cancelled or times out leaves the shared
    call and the other waiters alone.

    This is :func:`cached` with ``ttl=0``, no layers and no failure back-off, so it shares its
    single-flight machinery, keys and counters (``.stats()``).

    Args:
        wait_timeout: the most a caller waits for another caller's execution (and, for ``async def``
            functions, for its own); then it gets :class:`~cacheward.FetchTimeout`.
        key: maps the call's arguments to the key's arguments (see :func:`cached`).
        clock: the clock (``cacheward.testing.FakeClock`` in tests).
        timeout: the old spelling of ``wait_timeout`` (deprecated; accepted until 0.2).

    Raises:
        ConfigurationError: a setting is invalid (raised here, not on the first call).
    """
    settings = make_settings(
        ttl=0,
        stale_ttl=0,
        stale_if_error=None,
        layers=[],
        clock=clock,
        namespace=None,
        version=1,
        jitter=0.0,
        backoff=0,
        backoff_max=0,
        wait_timeout=wait_timeout if timeout is None else timeout,
        key=key,
        rng=None,
        self_key=None,
        refresh_executor=None,
        max_refreshes=1,
        lease_ttl=1.0,
        cross_process=False,
        breaker_failures=None,
        breaker_reset=None,
    )

    def decorate(fn: Callable[..., object]) -> object:
        return build(fn, settings)

    return decorate  # type: ignore[return-value]
