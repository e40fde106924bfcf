"""``cached``: the layered read-through cache, with its sync and async drivers.

The drivers are thin: they read the layers, ask the pure core (``cacheward._core``) what to do,
and do it. The only logic they own is I/O ordering: which layer to read or write, and how a
caller waits (a ``threading.Event`` for threads, a shared ``asyncio.Task`` for tasks).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import dataclasses
import functools
import inspect
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Hashable, Sequence
from typing import Any, ParamSpec, Protocol, TypeVar, cast, overload

from cacheward._checks import check_caller, check_lifetime
from cacheward._clock import Clock
from cacheward._config import (
    Duration,
    check_clock,
    check_fraction,
    check_positive_int,
    duration,
)
from cacheward._core.breaker import Breaker, BreakerState
from cacheward._core.entry import Entry, Freshness, classify, make_entry, usable_on_error
from cacheward._core.keys import CacheKey, local_key
from cacheward._core.leasewait import LeaseWait
from cacheward._core.readthrough import Action, Flight, ReadThrough
from cacheward._errors import (
    BackoffActive,
    ConfigurationError,
    ConfigurationTypeError,
    FetchTimeout,
)
from cacheward._events import HIT_LISTENERS, EventKind, emit
from cacheward._hotpath import build_wrapper
from cacheward._layers import MemoryLayer

__all__ = ["AsyncCachedFunction", "CacheStats", "CachedFunction", "cached"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


@dataclasses.dataclass(frozen=True)
class CacheStats:
    """A snapshot of one cached function's counters (see :meth:`CachedFunction.stats`)."""

    hits: int = 0
    """Calls served a fresh entry (from any layer)."""
    stale_hits: int = 0
    """Calls served a stale entry (while a refresh ran, during back-off, or after a failure)."""
    misses: int = 0
    """Calls that led a fetch."""
    fetches: int = 0
    """Backend calls made (leaders and background refreshes)."""
    fetch_errors: int = 0
    """Backend calls that raised."""
    coalesced_waits: int = 0
    """Calls that waited for another caller's fetch instead of fetching."""
    refreshes: int = 0
    """Background refreshes started."""
    refreshes_skipped: int = 0
    """Refreshes not started because every refresh slot was busy (the stale value was served)."""
    backoff_rejections: int = 0
    """Calls refused with :class:`~cacheward.BackoffActive` (no stale value to serve)."""
    wait_timeouts: int = 0
    """Calls whose wait for a fetch reached ``timeout``."""
    stale_on_error: int = 0
    """Calls served a stale entry because the fetch failed, timed out or was refused."""
    layer_errors: int = 0
    """Layer operations that raised or returned something that is not an entry (each a miss)."""
    layer_skips: int = 0
    """Layer operations skipped because that layer's circuit breaker was open."""
    lease_waits: int = 0
    """Fetches that waited for another process holding the key's lease."""
    invalidations: int = 0
    """Calls to ``invalidate``."""
    in_flight: int = 0
    """Fetches running at the moment of the snapshot."""


class _Counters:
    """The live, mutable counters behind :class:`CacheStats` (same names)."""

    __slots__ = (
        "backoff_rejections",
        "coalesced_waits",
        "fetch_errors",
        "fetches",
        "hits",
        "invalidations",
        "layer_errors",
        "layer_skips",
        "lease_waits",
        "misses",
        "refreshes",
        "refreshes_skipped",
        "stale_hits",
        "stale_on_error",
        "wait_timeouts",
    )

    def __init__(self) -> None:
        self.hits = self.stale_hits = self.misses = self.fetches = self.fetch_errors = 0
        self.coalesced_waits = self.refreshes = self.refreshes_skipped = 0
        self.backoff_rejections = self.wait_timeouts = self.stale_on_error = 0
        self.layer_errors = self.layer_skips = self.lease_waits = self.invalidations = 0

    def snapshot(self, in_flight: int) -> CacheStats:
        return CacheStats(**{n: getattr(self, n) for n in self.__slots__}, in_flight=in_flight)


class CachedFunction(Protocol[P, R_co]):
    """What :func:`cached` returns for a plain function."""

    __wrapped__: Callable[..., Any]
    #: ``"<namespace>:v<version>"``: the prefix of this function's shared keys, and the
    #: ``source`` of its events.
    namespace: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the entry for these arguments from every layer.

        A fetch of that key already in flight still answers its callers but is not stored,
        and callers arriving after the invalidation start a new fetch.
        """
        ...

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """What :func:`cached` returns for an ``async def`` function."""

    __wrapped__: Callable[..., Any]
    #: ``"<namespace>:v<version>"`` (see :attr:`CachedFunction.namespace`).
    namespace: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Drop the entry for these arguments from every layer (see
        :meth:`CachedFunction.invalidate`)."""
        ...

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        ...


class _Decorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncCachedFunction[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> CachedFunction[P, R]: ...


# --------------------------------------------------------------------------------------------
# Remote layers behind their circuit breakers


class _LayerHealth:
    """One breaker per layer object, shared by every function using that layer."""

    __slots__ = ("breaker", "lock")

    def __init__(self, failure_threshold: int, reset_timeout: float) -> None:
        self.breaker = Breaker(failure_threshold=failure_threshold, reset_timeout=reset_timeout)
        self.lock = threading.Lock()


_HEALTH: weakref.WeakKeyDictionary[object, _LayerHealth] = weakref.WeakKeyDictionary()
_HEALTH_LOCK = threading.Lock()


def _health_of(layer: object, failure_threshold: int, reset_timeout: float) -> _LayerHealth:
    with _HEALTH_LOCK:
        try:
            health = _HEALTH.get(layer)
            if health is None:
                health = _HEALTH[layer] = _LayerHealth(failure_threshold, reset_timeout)
        except TypeError:  # not weak-referenceable: the breaker is per function instead
            health = _LayerHealth(failure_threshold, reset_timeout)
    return health


_MISSING = object()
_WRITES = frozenset(
    {
        "set",
        "aset",
        "set_fenced",
        "aset_fenced",
        "delete",
        "adelete",
        "release_lease",
        "arelease_lease",
    }
)


class _GuardedLayer:
    """A remote layer seen through its breaker: every failure is a miss (``None``)."""

    __slots__ = ("_counters", "_health", "_mono", "_source", "layer", "leases")

    def __init__(
        self, layer: Any, clock: Clock, counters: _Counters, health: _LayerHealth, source: str
    ) -> None:
        self.layer = layer
        self._source = source
        self.leases = callable(getattr(layer, "acquire_lease", None)) or callable(
            getattr(layer, "aacquire_lease", None)
        )
        self._mono = clock.monotonic
        self._counters = counters
        self._health = health

    def _admit(self, method: str) -> bool:
        health = self._health
        now = self._mono()
        with health.lock:
            before = health.breaker.state(now)
            # Only reads probe a sick layer: a write is on a caller's path after its fetch,
            # and must not be the call that waits out a hung layer's timeout.
            if before is not BreakerState.CLOSED and method in _WRITES:
                allowed = False
            else:
                allowed = health.breaker.allow(now)
        if not allowed:
            self._counters.layer_skips += 1
            emit(EventKind.LAYER_SKIPPED, self._source, layer=self.layer.name)
        elif before is BreakerState.HALF_OPEN:
            emit(EventKind.BREAKER_HALF_OPEN, self._source, layer=self.layer.name)
        return allowed

    def _settle(self, error: Exception | None) -> None:
        health = self._health
        with health.lock:
            if error is None:
                changed = health.breaker.record_success(self._mono())
            else:
                changed = health.breaker.record_failure(self._mono())
        if error is not None:
            self._counters.layer_errors += 1
            emit(EventKind.LAYER_ERROR, self._source, layer=self.layer.name, error=error)
        if changed is BreakerState.OPEN:
            emit(EventKind.BREAKER_OPENED, self._source, layer=self.layer.name, error=error)
        elif changed is BreakerState.CLOSED:
            emit(EventKind.BREAKER_CLOSED, self._source, layer=self.layer.name)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Run ``layer.method(*args, **kwargs)``; ``_MISSING`` when skipped or failed."""
        if not self._admit(method):
            return _MISSING
        try:
            result = getattr(self.layer, method)(*args, **kwargs)
        except Exception as exc:
            self._settle(exc)
            return _MISSING
        self._settle(None)
        return result

    async def acall(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Await ``layer.method(*args, **kwargs)``; ``_MISSING`` when skipped or failed."""
        if not self._admit(method):
            return _MISSING
        try:
            result = await getattr(self.layer, method)(*args, **kwargs)
        except Exception as exc:
            self._settle(exc)
            return _MISSING
        self._settle(None)
        return result

    def entry(self, found: Any) -> Entry | None:
        """Accept what a layer returned only if it is an entry (anything else is a miss)."""
        if found is None or found is _MISSING:
            return None
        if isinstance(found, Entry):
            return found
        self._counters.layer_errors += 1
        emit(EventKind.LAYER_ERROR, self._source, layer=self.layer.name)
        return None


# --------------------------------------------------------------------------------------------
# Settings


@dataclasses.dataclass(frozen=True)
class _Settings:
    ttl: float
    stale_ttl: float
    stale_if_error: float
    jitter: float
    backoff: float
    backoff_max: float
    timeout: float
    lease_ttl: float
    clock: Clock
    rng: random.Random
    layers: tuple[Any, ...]
    namespace: str | None
    version: int
    key: Callable[..., Hashable] | None
    refresh_executor: concurrent.futures.Executor | None
    max_refreshes: int
    cross_process: bool
    breaker_failures: int
    breaker_reset: float

    @property
    def stores(self) -> bool:
        return self.ttl > 0 or self.stale_if_error > 0


def _make_settings(
    *,
    ttl: Duration,
    stale_ttl: Duration,
    stale_if_error: Duration | None,
    layers: Sequence[Any] | None,
    clock: Clock | None,
    namespace: str | None,
    version: int,
    jitter: float,
    backoff: Duration,
    backoff_max: Duration,
    timeout: Duration,
    key: Callable[..., Hashable] | None,
    rng: random.Random | None,
    refresh_executor: concurrent.futures.Executor | None,
    max_refreshes: int,
    lease_ttl: Duration,
    cross_process: bool,
    breaker_failures: int,
    breaker_reset: Duration,
) -> _Settings:
    ttl_s = check_lifetime("ttl", ttl)
    stale_s = check_lifetime("stale_ttl", stale_ttl)
    sie = None if stale_if_error is None else check_lifetime("stale_if_error", stale_if_error)
    backoff_s = duration("backoff", backoff)
    backoff_max_s = duration("backoff_max", backoff_max)
    if backoff_max_s < backoff_s:
        raise ConfigurationError(
            f"backoff_max ({backoff_max_s}s) must be >= backoff ({backoff_s}s)"
        )
    if layers is None:
        layer_tuple: tuple[Any, ...] = (MemoryLayer(),)
    elif isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise ConfigurationTypeError(
            "layers must be a list of layers (e.g. [cw.MemoryLayer()]), "
            f"got {type(layers).__name__}"
        )
    else:
        layer_tuple = tuple(layers)
    for index, layer in enumerate(layer_tuple):
        if not hasattr(layer, "local") or not hasattr(layer, "name"):
            raise ConfigurationTypeError(
                f"layers[{index}] ({type(layer).__name__}) is not a cache layer: it needs "
                "'name', 'local' and get/set/delete (or aget/aset/adelete) methods"
            )
        if isinstance(layer, MemoryLayer) and index != 0:
            raise ConfigurationError(
                f"layers[{index}] is a MemoryLayer: an in-process layer must come first"
            )
    if rng is not None and not isinstance(rng, random.Random):
        raise ConfigurationTypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    if key is not None and not callable(key):
        raise ConfigurationTypeError(f"key must be a callable, got {type(key).__name__}")
    ns: object = namespace
    if ns is not None and (not isinstance(ns, str) or not ns):
        raise ConfigurationError(f"namespace must be a non-empty str, got {namespace!r}")
    if refresh_executor is not None and not isinstance(
        refresh_executor, concurrent.futures.Executor
    ):
        raise ConfigurationTypeError(
            "refresh_executor must be a concurrent.futures.Executor, "
            f"got {type(refresh_executor).__name__}"
        )
    return _Settings(
        ttl=ttl_s,
        stale_ttl=stale_s,
        stale_if_error=stale_s if sie is None else sie,
        jitter=check_fraction("jitter", jitter, maximum=0.5),
        backoff=backoff_s,
        backoff_max=backoff_max_s,
        timeout=duration("timeout", timeout, allow_zero=False),
        lease_ttl=duration("lease_ttl", lease_ttl, allow_zero=False),
        clock=check_clock(clock),
        rng=rng if rng is not None else random.Random(),
        layers=layer_tuple,
        namespace=namespace,
        version=check_positive_int("version", version, minimum=0),
        key=key,
        refresh_executor=refresh_executor,
        max_refreshes=check_positive_int("max_refreshes", max_refreshes),
        cross_process=bool(cross_process),
        breaker_failures=check_positive_int("breaker_failures", breaker_failures),
        breaker_reset=duration("breaker_reset", breaker_reset, allow_zero=False),
    )


def cached(
    *,
    ttl: Duration,
    stale_ttl: Duration = 0,
    stale_if_error: Duration | None = None,
    layers: Sequence[Any] | None = None,
    clock: Clock | None = None,
    namespace: str | None = None,
    version: int = 1,
    jitter: float = 0.1,
    backoff: Duration = 1.0,
    backoff_max: Duration = 60.0,
    timeout: Duration = 10.0,
    key: Callable[..., Hashable] | None = None,
    rng: random.Random | None = None,
    refresh_executor: concurrent.futures.Executor | None = None,
    max_refreshes: int = 16,
    lease_ttl: Duration = 15.0,
    cross_process: bool = True,
    breaker_failures: int = 3,
    breaker_reset: Duration = 5.0,
) -> _Decorator:
    """Cache a function's results in layers, with single-flight, stale serving and back-off.

    Args:
        ttl: seconds an entry is fresh (served as is).
        stale_ttl: seconds after ``ttl`` during which the stale entry is served at once while
            one background refresh runs (HTTP's stale-while-revalidate).
        stale_if_error: seconds after ``ttl`` during which the entry is served when a fetch
            fails, times out, or is refused (back-off, rate limit, breaker). Defaults to
            ``stale_ttl``; never shorter than it.
        layers: the layers, read top-down; defaults to ``[MemoryLayer()]``. An in-process
            layer may only come first. ``[]`` caches nothing (single-flight only).
        clock: the clock (``cacheward.testing.FakeClock`` in tests).
        namespace: the key namespace in shared layers; defaults to the function's module and
            qualified name.
        version: part of every shared key; bump it when the value's shape changes.
        jitter: entries' freshness is shortened by up to this fraction (at most 0.5) at random,
            so keys written together do not expire together.
        backoff: the first failure back-off of a key, in seconds; it doubles per consecutive
            failure (with jitter) up to ``backoff_max``.
        backoff_max: the longest failure back-off, in seconds.
        timeout: the most a caller waits for a fetch led by another caller, another process,
            or (for ``async def`` functions) by itself; then it gets a stale value or
            :class:`~cacheward.FetchTimeout`. A synchronous leader runs the fetch in its own
            thread and cannot be interrupted: bound the backend call itself.
        key: maps the call's arguments to the key's arguments (for arguments without a stable
            encoding, such as ``self``).
        rng: the random source for jitter.
        refresh_executor: where synchronous background refreshes run; defaults to a small
            shared thread pool.
        max_refreshes: the most background refreshes of this function running at once; past
            it the stale value is served and the refresh is left for a later call.
        lease_ttl: how long a cross-process lease lasts (should exceed a fetch's duration).
        cross_process: take a lease in the first shared layer that supports leases, so one
            process per key fetches.
        breaker_failures: consecutive failures that open a shared layer's circuit breaker.
        breaker_reset: seconds an open layer breaker waits before letting a probe through.

    Raises:
        ConfigurationError: a setting is invalid (raised here, not on the first call).
    """
    settings = _make_settings(
        ttl=ttl,
        stale_ttl=stale_ttl,
        stale_if_error=stale_if_error,
        layers=layers,
        clock=clock,
        namespace=namespace,
        version=version,
        jitter=jitter,
        backoff=backoff,
        backoff_max=backoff_max,
        timeout=timeout,
        key=key,
        rng=rng,
        refresh_executor=refresh_executor,
        max_refreshes=max_refreshes,
        lease_ttl=lease_ttl,
        cross_process=cross_process,
        breaker_failures=breaker_failures,
        breaker_reset=breaker_reset,
    )

    def decorate(fn: Callable[..., Any]) -> Any:
        return _build(fn, settings)

    return cast(_Decorator, decorate)


def _check_function(fn: object) -> Callable[..., Any]:
    if not callable(fn):
        raise ConfigurationTypeError(
            f"cacheward decorators wrap a function; got {type(fn).__name__} {fn!r}"
        )
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise ConfigurationTypeError(
            f"{getattr(fn, '__qualname__', fn)!r} is a generator function: its result is a "
            "one-shot iterator that cannot be cached or shared; return a list instead"
        )
    return fn


def _positional_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


def _build(fn: Callable[..., Any], settings: _Settings) -> Any:
    fn = _check_function(fn)
    is_async = inspect.iscoroutinefunction(fn)
    qualname = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    layers = settings.layers
    l1 = layers[0] if layers and isinstance(layers[0], MemoryLayer) else None
    if l1 is not None:
        if l1.owner is not None and l1.owner != qualname:
            raise ConfigurationError(
                f"layers[0] is a MemoryLayer already used by {l1.owner}; give each cached "
                "function its own MemoryLayer (a shared one would mix their keys)"
            )
        l1.owner = qualname
    needed = ("aget", "aset", "adelete") if is_async else ("get", "set", "delete")
    for index, layer in enumerate(layers):
        check_caller(layer, asynchronous=is_async, where=f"layers[{index}]")
        missing = [m for m in needed if not callable(getattr(layer, m, None))]
        if missing:
            kind = "an async def" if is_async else "a plain"
            raise ConfigurationTypeError(
                f"layers[{index}] ({type(layer).__name__}) lacks {', '.join(missing)}, which "
                f"{kind} function needs (use the {'asyncio' if is_async else 'sync'} client)"
            )
    driver = _Driver(fn, settings, qualname, l1)
    wrapper: Any = driver.async_wrapper() if is_async else driver.sync_wrapper()
    functools.update_wrapper(wrapper, fn)
    wrapper.invalidate = driver.ainvalidate if is_async else driver.invalidate
    wrapper.stats = driver.stats
    wrapper.namespace = driver.namespace
    return wrapper


# --------------------------------------------------------------------------------------------
# Flights: how callers of one fetch wait for it


class _SyncFlight(Flight):
    __slots__ = ("_done", "error", "value")

    def __init__(self) -> None:
        super().__init__()
        self._done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None

    def resolve(self, value: Any) -> None:
        self.value = value
        self._done.set()

    def reject(self, error: BaseException) -> None:
        self.error = error
        self._done.set()

    def wait(self, timeout: float) -> bool:
        return self._done.wait(timeout)


class _Expired(Exception):
    """Set on a waiter's future when its deadline passes (private)."""


class _AsyncFlight(Flight):
    """The fetch task, one plain future per waiting caller, and one deadline timer.

    Waiters of a flight all wait the same ``timeout``, so their deadlines come in arrival
    order: a single timer expires the due prefix and re-arms itself for the next one, and one
    done-callback on the task resolves every waiter still waiting. A thousand tasks waiting for
    one fetch thus cost a thousand futures and one timer, where ``wait_for(shield(task))``
    costs a shield future, a wrapper and a timer per waiter.
    """

    __slots__ = ("delivered", "task", "timer", "waiters")

    def __init__(self) -> None:
        super().__init__()
        self.task: asyncio.Task[Any] | None = None
        self.waiters: collections.deque[tuple[float, asyncio.Future[Any]]] | None = (
            collections.deque()
        )
        self.timer: asyncio.TimerHandle | None = None
        self.delivered: Any = _MISSING

    def deliver(self, value: Any) -> None:
        """Answer every waiter with ``value`` now, before the task's last steps."""
        self.delivered = value
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiters, self.waiters = self.waiters, None
        for _, waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(value)

    def settle(self, task: asyncio.Task[Any]) -> None:
        """The task's done-callback: hand its outcome to every waiter still waiting."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiters, self.waiters = self.waiters, None
        if task.cancelled():
            for _, waiter in waiters or ():
                waiter.cancel()
            return
        # Retrieving the exception also keeps a failure nobody awaited (every waiter left)
        # from being reported as "never retrieved"; it was already counted and backed off.
        error = task.exception()
        for _, waiter in waiters or ():
            if waiter.done():
                continue
            if error is not None:
                waiter.set_exception(error)
            else:
                waiter.set_result(task.result())

    def expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """The timer: fail the waiters whose deadline passed, re-arm for the next one."""
        self.timer = None
        waiters = self.waiters
        if waiters is None:
            return
        now = loop.time()
        while waiters and waiters[0][0] <= now:
            waiter = waiters.popleft()[1]
            if not waiter.done():
                waiter.set_exception(_Expired())
        if waiters:
            self.timer = loop.call_at(waiters[0][0], self.expire_due, loop)

    async def wait(self, timeout: float) -> Any:
        """The task's result, or :class:`_Expired` after ``timeout`` (the task carries on)."""
        if self.delivered is not _MISSING:
            return self.delivered
        task = cast(asyncio.Task[Any], self.task)
        if self.waiters is None:
            return task.result()
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        deadline = loop.time() + timeout
        self.waiters.append((deadline, waiter))
        if self.timer is None:
            self.timer = loop.call_at(deadline, self.expire_due, loop)
        return await waiter


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def _default_pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="cacheward-refresh"
            )
        return _POOL


class _Driver:
    """Everything one cached function needs at call time."""

    def __init__(
        self, fn: Callable[..., Any], s: _Settings, qualname: str, l1: MemoryLayer | None
    ) -> None:
        self.fn = fn
        self.s = s
        self.l1 = l1
        self.names = _positional_names(fn)
        self.namespace = f"{s.namespace or qualname}:v{s.version}"
        self.counters = _Counters()
        self.core: ReadThrough[Any] = ReadThrough(backoff=s.backoff, backoff_max=s.backoff_max)
        self.lock = threading.Lock()
        self.remotes = [
            _GuardedLayer(
                layer,
                s.clock,
                self.counters,
                _health_of(layer, s.breaker_failures, s.breaker_reset),
                self.namespace,
            )
            for layer in s.layers
            if layer is not l1
        ]
        self.coordinator = next((g for g in self.remotes if g.leases), None)
        if not s.cross_process:
            self.coordinator = None
        self.refresh_slots = threading.BoundedSemaphore(s.max_refreshes)
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Hits counted on the hot path (in the wrapper's closure).
        self.memory_hits: Callable[[], int] = lambda: 0

    # ---- keys and small helpers shared by both colours

    def count(self, counter: str, kind: EventKind, error: BaseException | None = None) -> None:
        """Bump a counter and emit the matching event (slow paths only)."""
        counters = self.counters
        setattr(counters, counter, getattr(counters, counter) + 1)
        emit(kind, self.namespace, error=error)

    def key_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], Sequence[str]]:
        """The arguments a key is made of: ``key=``'s result, or the call's arguments with
        positional parameters passed by keyword moved into place (``f("a")`` and
        ``f(customer="a")`` share a key; defaults are not filled in)."""
        if self.s.key is not None:
            return (self.s.key(*args, **kwargs),), {}, ("key",)
        if kwargs:
            names = self.names
            moved = list(args)
            rest = dict(kwargs)
            for name in names[len(args) :]:
                if name not in rest:
                    break
                moved.append(rest.pop(name))
            return tuple(moved), rest, names
        return args, kwargs, self.names

    def local(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        return local_key(*self.key_args(args, kwargs))

    def cache_key(self, local: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CacheKey:
        return CacheKey(local, self.namespace, *self.key_args(args, kwargs))

    def decide(
        self, key: CacheKey, entry: Entry | None, new_flight: Callable[[], Flight]
    ) -> tuple[Action, Any, Any, Entry | None]:
        """Ask the core, holding the lock; returns its answer and the entry it judged.

        The memory layer is read again under the lock: a fetch that finished while this caller
        was reading a slow shared layer stored its entry there (under this same lock), and
        deciding on the older entry would start a second fetch of the key.
        """
        now = self.s.clock.time()
        with self.lock:
            if self.l1 is not None:
                current = self.l1.lookup(key.local)
                if self.better(entry, current, now):
                    entry = current
            action, state, flight = self.core.decide(
                key.local, entry, now=now, mono=self.s.clock.monotonic(), new_flight=new_flight
            )
        return action, state, flight, entry

    def answer_now(self, key: CacheKey, action: Action, state: Any, entry: Entry | None) -> Any:
        """The answer of the actions that need no fetch (both colours), else ``_MISSING``."""
        if action is Action.HIT:
            self.count("hits", EventKind.HIT)
            return cast(Entry, entry).value
        if action is Action.STALE or action is Action.REFRESH:
            self.count("stale_hits", EventKind.STALE_SERVED)
            return cast(Entry, entry).value
        if action is Action.BACKOFF:
            return self.fallback(entry, self.backoff_error(key, state))
        return _MISSING

    def absorb(
        self, key: CacheKey, entry: Entry | None, found: Entry | None, now: float
    ) -> tuple[Entry | None, bool]:
        """Take a shared layer's answer into account (both colours): returns the best entry so
        far and whether it is fresh (no need to read further layers)."""
        if not self.better(entry, found, now):
            return entry, False
        found = cast(Entry, found)
        if self.l1 is not None and self.s.stores:
            self.l1.set(key, found)
        return found, now < found.fresh_until

    def stale_servable(self, entry: Entry | None) -> bool:
        """Whether the memory layer's entry may be served stale right now.

        Such a caller does not read the shared layers: it is served at once, and the refresh
        it may start reads them first (in the background). A hung shared layer thus never
        delays a stale hit, only a miss.
        """
        return entry is not None and classify(entry, self.s.clock.time()) is Freshness.STALE

    def better(self, entry: Entry | None, found: Entry | None, now: float) -> bool:
        """Whether ``found`` (from a shared layer) beats ``entry`` (what the caller holds)."""
        if found is None or now >= found.error_until:
            return False
        return entry is None or found.fresh_until > entry.fresh_until

    def new_entry(self, value: Any) -> Entry:
        s = self.s
        return make_entry(
            value,
            now=s.clock.time(),
            ttl=s.ttl,
            stale_ttl=s.stale_ttl,
            stale_if_error=s.stale_if_error,
            jitter=s.jitter,
            draw=s.rng.random(),
        )

    def settle_failure(self, key: CacheKey, flight: Flight, exc: BaseException) -> None:
        with self.lock:
            if isinstance(exc, Exception):
                self.core.fail(
                    key.local, flight, exc, mono=self.s.clock.monotonic(), draw=self.s.rng.random()
                )
            else:  # cancelled or interrupted: no verdict on the backend
                self.core.abandon(key.local, flight)

    def settle_success(self, key: CacheKey, flight: Flight, entry: Entry) -> bool:
        """End ``flight`` with ``entry``; stores it in memory (under the lock, so no caller can
        see the flight gone and the entry missing) and says whether shared layers get it."""
        with self.lock:
            store = self.core.succeed(key.local, flight) and self.s.stores
            if store and self.l1 is not None:
                self.l1.set(key, entry)
        return store

    def fallback(self, entry: Entry | None, exc: BaseException) -> Any:
        """Serve ``entry`` if it is usable on error, else re-raise ``exc``."""
        if isinstance(exc, Exception) and usable_on_error(entry, self.s.clock.time()):
            self.count("stale_on_error", EventKind.STALE_SERVED, exc)
            return cast(Entry, entry).value
        raise exc

    def backoff_error(self, key: CacheKey, state: Any) -> BackoffActive:
        self.count("backoff_rejections", EventKind.BACKOFF_REJECTED, state.last_error)
        wait = self.core.retry_after(state, self.s.clock.monotonic())
        error = BackoffActive(
            f"{self.namespace}: the last fetch of this key failed "
            f"({type(state.last_error).__name__}: {state.last_error}); not fetching again for "
            f"{wait:.2f}s (backoff={self.s.backoff}s, backoff_max={self.s.backoff_max}s) "
            "and no stale value is available (raise stale_if_error to serve older values)",
            retry_after=wait,
        )
        error.__cause__ = state.last_error
        return error

    def timeout_error(self, what: str) -> FetchTimeout:
        self.count("wait_timeouts", EventKind.WAIT_TIMEOUT)
        return FetchTimeout(
            f"{self.namespace}: waited timeout={self.s.timeout}s for {what} and no stale value "
            "is available; raise timeout or stale_if_error, or make the backend faster"
        )

    def stats(self) -> CacheStats:
        with self.lock:
            in_flight = sum(1 for st in self.core.states.values() if st.flight is not None)
        stats = self.counters.snapshot(in_flight)
        return dataclasses.replace(stats, hits=stats.hits + self.memory_hits())

    # ---- the sync driver

    def sync_wrapper(self) -> Callable[..., Any]:
        if self.l1 is None:
            serve, local_of = self.serve, self.local

            def plain(*args: Any, **kwargs: Any) -> Any:
                return serve(local_of(args, kwargs), None, args, kwargs)

            return plain
        return self.hot_wrapper(is_async=False)

    def hot_wrapper(self, *, is_async: bool) -> Callable[..., Any]:
        """The generated wrapper with the memory-hit hot path (see ``cacheward._hotpath``)."""
        wrapper, self.memory_hits = build_wrapper(
            self.fn,
            is_async=is_async,
            keyed=self.s.key is not None,
            lookup=cast(MemoryLayer, self.l1)._fast_get,
            now=self.s.clock.time,
            serve=self.aserve if is_async else self.serve,
            local_of=self.local,
            hit_listeners=HIT_LISTENERS,
            emit=emit,
            hit_kind=EventKind.HIT,
            source=self.namespace,
        )
        return wrapper

    def serve(
        self, local: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key = self.cache_key(local, args, kwargs)
        if self.remotes and not self.stale_servable(entry):
            entry = self.read_remotes(key, entry)
        action, state, flight, entry = self.decide(key, entry, _SyncFlight)
        if action is Action.REFRESH:
            self.start_refresh(key, flight, args, kwargs, entry)
        answer = self.answer_now(key, action, state, entry)
        if answer is not _MISSING:
            return answer
        if action is Action.WAIT:
            self.count("coalesced_waits", EventKind.COALESCED_WAIT)
            if not flight.wait(self.s.timeout):
                return self.fallback(entry, self.timeout_error("another caller's fetch"))
            if flight.error is not None:
                return self.fallback(entry, flight.error)
            return flight.value
        self.count("misses", EventKind.MISS)
        try:
            return self.run(key, flight, args, kwargs)
        except BaseException as exc:
            return self.fallback(entry, exc)

    def read_remotes(self, key: CacheKey, entry: Entry | None) -> Entry | None:
        now = self.s.clock.time()
        for guarded in self.remotes:
            entry, fresh = self.absorb(key, entry, guarded.entry(guarded.call("get", key)), now)
            if fresh:
                break
        return entry

    def run(
        self,
        key: CacheKey,
        flight: _SyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None = None,
    ) -> Any:
        """Fetch (or obtain from the lease holder), store, and resolve ``flight``.

        ``stale`` is set for a refresh: the shared layers, not read by the caller, are read
        first, and a fresh entry there (another process refreshed) ends the flight.
        """
        token: int | None = None
        try:
            if stale is not None and self.remotes:
                newer = self.read_remotes(key, stale)
                if newer is not None and self.s.clock.time() < newer.fresh_until:
                    self.finish(key, flight, newer, None, remote=False)
                    return newer.value
            if self.coordinator is not None:
                token, found = self.lease(key)
                if found is not None:
                    self.finish(key, flight, found, None, remote=False)
                    return found.value
            started = self.s.clock.monotonic()
            self.counters.fetches += 1
            try:
                value = self.fn(*args, **kwargs)
            except BaseException as exc:
                self.count("fetch_errors", EventKind.FETCH_ERROR, exc)
                raise
            emit(EventKind.FETCH, self.namespace, duration=self.s.clock.monotonic() - started)
        except BaseException as exc:
            if token is not None:
                self.coordinator.call("release_lease", key, token)  # type: ignore[union-attr]
            self.settle_failure(key, flight, exc)
            flight.reject(exc)
            raise
        self.finish(key, flight, self.new_entry(value), token, remote=True)
        return value

    def finish(
        self, key: CacheKey, flight: _SyncFlight, entry: Entry, token: int | None, *, remote: bool
    ) -> None:
        # Waiters get the value before the shared layers are written: a slow or hung layer
        # delays only this (leading) caller, by at most one write timeout per layer.
        try:
            store = self.settle_success(key, flight, entry)
        finally:
            flight.resolve(entry.value)
        if store and remote:
            for guarded in self.remotes:
                if token is not None and guarded is self.coordinator:
                    guarded.call("set_fenced", key, entry, token)
                else:
                    guarded.call("set", key, entry)
        if token is not None:
            self.coordinator.call("release_lease", key, token)  # type: ignore[union-attr]

    def lease(self, key: CacheKey) -> tuple[int | None, Entry | None]:
        """Take the key's cross-process lease, or wait for its holder's value.

        Returns ``(token, None)`` to fetch (``token`` is ``None`` when no lease service
        answered: the process then fetches under its local protections alone) or
        ``(None, entry)`` when the holder's value arrived.
        """
        coordinator = cast(_GuardedLayer, self.coordinator)
        wait = LeaseWait(start=self.s.clock.monotonic(), timeout=self.s.timeout)
        while True:
            token = coordinator.call("acquire_lease", key, ttl=self.s.lease_ttl)
            if token is _MISSING or token is not None:
                return self.lease_taken(token)
            found = coordinator.entry(coordinator.call("get", key))
            answer = self.after_poll(wait, found)
            if isinstance(answer, Entry):
                return None, answer
            self.s.clock.sleep(answer)

    def lease_taken(self, token: Any) -> tuple[int | None, None]:
        """The lease was taken (a token), or no lease service answered (fetch without one)."""
        return (None if token is _MISSING else int(token)), None

    def after_poll(self, wait: LeaseWait, found: Entry | None) -> Entry | float:
        """After a poll while another process holds the lease (both colours): its fresh value,
        or the delay before the next poll; raises :class:`FetchTimeout` at the deadline."""
        clock = self.s.clock
        if wait.polls == 0:
            self.count("lease_waits", EventKind.LEASE_WAIT)
        if found is not None and clock.time() < found.fresh_until:
            return found
        delay = wait.next_delay(clock.monotonic())
        if delay is None:
            raise self.timeout_error("the process holding this key's lease")
        return delay

    def take_refresh_slot(self, key: CacheKey, flight: Flight) -> bool:
        """Take one of ``max_refreshes`` slots for a background refresh (both colours); when
        all are busy, the refresh is abandoned (the stale value was served anyway)."""
        if not self.refresh_slots.acquire(blocking=False):
            self.count("refreshes_skipped", EventKind.REFRESH_SKIPPED)
            with self.lock:
                self.core.abandon(key.local, flight)
            return False
        self.count("refreshes", EventKind.REFRESH_STARTED)
        return True

    def start_refresh(
        self,
        key: CacheKey,
        flight: _SyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None,
    ) -> None:
        if not self.take_refresh_slot(key, flight):
            flight.reject(RuntimeError("refresh skipped"))
            return

        def job() -> None:
            try:
                self.run(key, flight, args, kwargs, stale)
            except Exception:  # noqa: S110 - counted and backed off by run(); stale was served
                pass
            finally:
                self.refresh_slots.release()

        executor = self.s.refresh_executor or _default_pool()
        try:
            executor.submit(job)
        except RuntimeError as exc:  # executor shut down (interpreter exit)
            self.refresh_slots.release()
            self.settle_failure(key, flight, exc)
            flight.reject(exc)

    def invalidate(self, *args: Any, **kwargs: Any) -> None:
        local = self.local(args, kwargs)
        key = self.cache_key(local, args, kwargs)
        with self.lock:
            self.core.invalidate(local)
        self.count("invalidations", EventKind.INVALIDATED)
        if self.l1 is not None:
            self.l1.delete(key)
        for guarded in self.remotes:
            guarded.call("delete", key)

    # ---- the async driver

    def async_wrapper(self) -> Callable[..., Awaitable[Any]]:
        if self.l1 is None:
            serve, local_of = self.aserve, self.local

            async def plain(*args: Any, **kwargs: Any) -> Any:
                return await serve(local_of(args, kwargs), None, args, kwargs)

            return plain
        return self.hot_wrapper(is_async=True)

    async def aserve(
        self, local: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        key = self.cache_key(local, args, kwargs)
        if self.remotes and not self.stale_servable(entry):
            entry = await self.aread_remotes(key, entry)
        action, state, flight, entry = self.decide(key, entry, _AsyncFlight)
        if action is Action.REFRESH:
            self.start_arefresh(key, flight, args, kwargs, entry)
        answer = self.answer_now(key, action, state, entry)
        if answer is not _MISSING:
            return answer
        if action is Action.WAIT:
            self.count("coalesced_waits", EventKind.COALESCED_WAIT)
        else:
            self.count("misses", EventKind.MISS)
            self.start_task(key, flight, args, kwargs)
        try:
            return await flight.wait(self.s.timeout)
        except _Expired:
            return self.fallback(entry, self.timeout_error("the fetch"))
        except Exception as exc:
            return self.fallback(entry, exc)

    def start_task(
        self,
        key: CacheKey,
        flight: _AsyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None = None,
    ) -> None:
        task = asyncio.get_running_loop().create_task(self.arun(key, flight, args, kwargs, stale))
        flight.task = task
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(flight.settle)

    def start_arefresh(
        self,
        key: CacheKey,
        flight: _AsyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None,
    ) -> None:
        if not self.take_refresh_slot(key, flight):
            return
        self.start_task(key, flight, args, kwargs, stale)
        cast(asyncio.Task[Any], flight.task).add_done_callback(
            lambda _: self.refresh_slots.release()
        )

    async def aread_remotes(self, key: CacheKey, entry: Entry | None) -> Entry | None:
        now = self.s.clock.time()
        for guarded in self.remotes:
            found = guarded.entry(await guarded.acall("aget", key))
            entry, fresh = self.absorb(key, entry, found, now)
            if fresh:
                break
        return entry

    async def arun(
        self,
        key: CacheKey,
        flight: _AsyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None = None,
    ) -> Any:
        """The async twin of :meth:`run`."""
        token: int | None = None
        try:
            if stale is not None and self.remotes:
                newer = await self.aread_remotes(key, stale)
                if newer is not None and self.s.clock.time() < newer.fresh_until:
                    await self.afinish(key, flight, newer, None, remote=False)
                    return newer.value
            if self.coordinator is not None:
                token, found = await self.alease(key)
                if found is not None:
                    await self.afinish(key, flight, found, None, remote=False)
                    return found.value
            started = self.s.clock.monotonic()
            self.counters.fetches += 1
            try:
                value = await self.fn(*args, **kwargs)
            except BaseException as exc:
                self.count("fetch_errors", EventKind.FETCH_ERROR, exc)
                raise
            emit(EventKind.FETCH, self.namespace, duration=self.s.clock.monotonic() - started)
        except BaseException as exc:
            if token is not None:
                await self.coordinator.acall("arelease_lease", key, token)  # type: ignore[union-attr]
            self.settle_failure(key, flight, exc)
            raise
        await self.afinish(key, flight, self.new_entry(value), token, remote=True)
        return value

    async def afinish(
        self, key: CacheKey, flight: _AsyncFlight, entry: Entry, token: int | None, *, remote: bool
    ) -> None:
        # Every caller (the task's starter included: it waits like the others) gets the value
        # before the shared layers are written, so a hung layer delays nobody.
        store = self.settle_success(key, flight, entry)
        flight.deliver(entry.value)
        if store and remote:
            for guarded in self.remotes:
                if token is not None and guarded is self.coordinator:
                    await guarded.acall("aset_fenced", key, entry, token)
                else:
                    await guarded.acall("aset", key, entry)
        if token is not None:
            await self.coordinator.acall("arelease_lease", key, token)  # type: ignore[union-attr]

    async def alease(self, key: CacheKey) -> tuple[int | None, Entry | None]:
        """The async twin of :meth:`lease` (same protocol, awaited I/O)."""
        coordinator = cast(_GuardedLayer, self.coordinator)
        wait = LeaseWait(start=self.s.clock.monotonic(), timeout=self.s.timeout)
        while True:
            token = await coordinator.acall("aacquire_lease", key, ttl=self.s.lease_ttl)
            if token is _MISSING or token is not None:
                return self.lease_taken(token)
            found = coordinator.entry(await coordinator.acall("aget", key))
            answer = self.after_poll(wait, found)
            if isinstance(answer, Entry):
                return None, answer
            await self.s.clock.asleep(answer)

    async def ainvalidate(self, *args: Any, **kwargs: Any) -> None:
        local = self.local(args, kwargs)
        key = self.cache_key(local, args, kwargs)
        with self.lock:
            self.core.invalidate(local)
        self.count("invalidations", EventKind.INVALIDATED)
        if self.l1 is not None:
            self.l1.delete(key)
        for guarded in self.remotes:
            await guarded.acall("adelete", key)
