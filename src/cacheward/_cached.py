"""``cached``: the decorator, its settings, and what it returns.

The read-through itself, one plan for both colours, is in ``cacheward._readpath``.
"""

from __future__ import annotations

import concurrent.futures
import functools
from collections.abc import Callable, Coroutine, Hashable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, Protocol, TypeVar, cast, overload

from cacheward import _testmode
from cacheward._checks import check_caller, check_lifetime, check_not_descriptor
from cacheward._clock import Clock
from cacheward._config import (
    Duration,
    check_clock,
    check_fraction,
    check_positive_int,
    duration,
    keyword_settings,
)
from cacheward._core.tags import check_tags_setting
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._events import HIT_LISTENERS, EventKind, emit
from cacheward._frozen import Frozen
from cacheward._hotpath import build_wrapper
from cacheward._identity import claim, default_namespace, identity_of
from cacheward._layers import MemoryLayer
from cacheward._lazy import isasyncgenfunction, iscoroutinefunction, isgeneratorfunction
from cacheward._pending import Invalidation
from cacheward._readpath import CacheStats, Driver, Missing

if TYPE_CHECKING:
    import random

__all__ = [
    "AsyncCachedFunction",
    "CacheStats",
    "CachedFunction",
    "Decorator",
    "Settings",
    "build",
    "cached",
    "make_settings",
]

P = ParamSpec("P")
P2 = ParamSpec("P2")
R = TypeVar("R")
R2 = TypeVar("R2")
R_co = TypeVar("R_co", covariant=True)
T = TypeVar("T")


class CachedFunction(Protocol[P, R_co]):
    """What :func:`cached` returns for a plain function."""

    __wrapped__: Callable[..., Any]
    #: ``"<namespace>:v<version>"``: the prefix of this function's shared keys, and the
    #: ``source`` of its events.
    namespace: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...

    def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Invalidation:
        """Drop the entry for these arguments from every layer.

        A fetch of that key already in flight, in this process or (through a layer that
        fences, as :class:`~cacheward.RedisLayer`) any other, still answers its callers but is
        not stored, and callers arriving after the invalidation start a new fetch.

        Returns:
            An :class:`~cacheward.Invalidation`: its ``pending`` names the shared layers that
            could not take it now; they get it before this process reads them again.
        """
        ...

    def set(
        self: CachedFunction[P, R2], value: R2, /, *args: P.args, **kwargs: P.kwargs
    ) -> Invalidation:
        """Store ``value`` for these arguments in every layer (write-through).

        Like :meth:`invalidate`, it fences every rebuild of the key under way, here and (through
        a layer that fences) in every other process, so none stores an older value over it.
        A shared layer that cannot take it now gets an invalidation of the key instead (kept
        and replayed, see :meth:`invalidate`): it never serves its old value afterwards.

        Returns:
            An :class:`~cacheward.Invalidation` naming the layers where it is pending.
        """
        ...

    def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Fetch now, whatever the layers hold, store the result as :meth:`set` does, and
        return it (failures raise; see docs/caching.md)."""
        ...

    def get(self, *args: P.args, **kwargs: P.kwargs) -> R_co | Missing:
        """The fresh value the layers hold for these arguments, without fetching; else
        :data:`cacheward.MISSING`."""
        ...

    def cache_clear(self) -> Invalidation:
        """Drop every entry of this function from every layer (functools' name), here and in
        every process: O(1) writes per shared layer, never a key scan (see docs/caching.md,
        "Tags and clear"). Fences rebuilds under way as :meth:`invalidate` does.

        Returns:
            An :class:`~cacheward.Invalidation` naming the layers where it is pending.
        """
        ...

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        ...

    @overload
    def __get__(self, obj: None, owner: type[Any] | None = None, /) -> CachedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: CachedFunction[Concatenate[T, P2], R2], obj: T, owner: type[Any] | None = None, /
    ) -> CachedFunction[P2, R2]: ...


class AsyncCachedFunction(Protocol[P, R_co]):
    """What :func:`cached` returns for an ``async def`` function."""

    __wrapped__: Callable[..., Any]
    #: ``"<namespace>:v<version>"`` (see :attr:`CachedFunction.namespace`).
    namespace: str

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R_co]: ...

    async def invalidate(self, *args: P.args, **kwargs: P.kwargs) -> Invalidation:
        """Drop the entry for these arguments from every layer (see
        :meth:`CachedFunction.invalidate`)."""
        ...

    async def set(
        self: AsyncCachedFunction[P, R2], value: R2, /, *args: P.args, **kwargs: P.kwargs
    ) -> Invalidation:
        """Store ``value`` for these arguments in every layer (see :meth:`CachedFunction.set`)."""
        ...

    async def refresh(self, *args: P.args, **kwargs: P.kwargs) -> R_co:
        """Fetch now and store the result (see :meth:`CachedFunction.refresh`)."""
        ...

    async def get(self, *args: P.args, **kwargs: P.kwargs) -> R_co | Missing:
        """The fresh value the layers hold, or :data:`cacheward.MISSING` (see
        :meth:`CachedFunction.get`)."""
        ...

    async def cache_clear(self) -> Invalidation:
        """Drop every entry of this function from every layer (see
        :meth:`CachedFunction.cache_clear`)."""
        ...

    def stats(self) -> CacheStats:
        """Return a snapshot of the counters."""
        ...

    @overload
    def __get__(
        self, obj: None, owner: type[Any] | None = None, /
    ) -> AsyncCachedFunction[P, R_co]: ...
    @overload
    def __get__(
        self: AsyncCachedFunction[Concatenate[T, P2], R2], obj: T, owner: type[Any] | None = None, /
    ) -> AsyncCachedFunction[P2, R2]: ...


class Decorator(Protocol):
    @overload
    def __call__(  # type: ignore[overload-overlap]
        self, fn: Callable[P, Coroutine[Any, Any, R]], /
    ) -> AsyncCachedFunction[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> CachedFunction[P, R]: ...


# --------------------------------------------------------------------------------------------
# Settings


class Settings(Frozen):
    ttl: float
    stale_ttl: float
    stale_if_error: float
    jitter: float
    backoff: float
    backoff_max: float
    wait_timeout: float
    lease_ttl: float
    clock: Clock
    rng: random.Random
    layers: tuple[Any, ...]
    namespace: str | None
    version: int
    key: Callable[..., Hashable] | None
    self_key: Callable[[Any], Hashable] | None
    refresh_executor: concurrent.futures.Executor | None
    max_refreshes: int
    cross_process: bool
    breaker_failures: int | None
    breaker_reset: float | None
    backplane: bool = True
    l1_max_age: float = 5.0
    tags: tuple[str, ...] | Callable[..., Iterable[str]] | None = None

    @property
    def stores(self) -> bool:
        return self.ttl > 0 or self.stale_if_error > 0


def make_settings(
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
    wait_timeout: Duration,
    key: Callable[..., Hashable] | None,
    rng: random.Random | None,
    self_key: Callable[[Any], Hashable] | None,
    refresh_executor: concurrent.futures.Executor | None,
    max_refreshes: int,
    lease_ttl: Duration,
    cross_process: bool,
    breaker_failures: int | None,
    breaker_reset: Duration | None,
    backplane: bool = True,
    l1_max_age: Duration = 5.0,
    tags: object = None,
) -> Settings:
    ttl_s = check_lifetime("ttl", ttl)
    stale_s = check_lifetime("stale_ttl", stale_ttl)
    sie = None if stale_if_error is None else check_lifetime("stale_if_error", stale_if_error)
    if sie is not None and sie < stale_s:
        raise ConfigurationError(
            f"stale_if_error={stale_if_error!r} is shorter than stale_ttl={stale_ttl!r}: an entry "
            "served stale while it refreshes must stay servable when the refresh fails; give "
            f"stale_if_error >= {stale_s:g} seconds, or leave it out (it defaults to stale_ttl)"
        )
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
    import random  # at decoration: importing cacheward does not load it

    if rng is not None and not isinstance(rng, random.Random):
        raise ConfigurationTypeError(f"rng must be a random.Random, got {type(rng).__name__}")
    if key is not None and not callable(key):
        raise ConfigurationTypeError(f"key must be a callable, got {type(key).__name__}")
    if self_key is not None and not callable(self_key):
        raise ConfigurationTypeError(
            f"self_key must be a callable of the instance, got {type(self_key).__name__}"
        )
    if self_key is not None and key is not None:
        raise ConfigurationError(
            "give key= or self_key=, not both: key= receives self too (key=lambda self, "
            "customer: (self.tenant, customer))"
        )
    ns: object = namespace
    if ns is not None and (not isinstance(ns, str) or not ns):
        raise ConfigurationError(f"namespace must be a non-empty str, got {namespace!r}")
    if not isinstance(backplane, bool):
        raise ConfigurationTypeError(f"backplane must be True or False, got {backplane!r}")
    if refresh_executor is not None and not isinstance(
        refresh_executor, concurrent.futures.Executor
    ):
        raise ConfigurationTypeError(
            "refresh_executor must be a concurrent.futures.Executor, "
            f"got {type(refresh_executor).__name__}"
        )
    return Settings(
        ttl=ttl_s,
        stale_ttl=stale_s,
        stale_if_error=stale_s if sie is None else sie,
        jitter=check_fraction("jitter", jitter, maximum=0.5),
        backoff=backoff_s,
        backoff_max=backoff_max_s,
        wait_timeout=duration("wait_timeout", wait_timeout, allow_zero=False),
        lease_ttl=duration("lease_ttl", lease_ttl, allow_zero=False),
        clock=check_clock(clock),
        rng=rng if rng is not None else random.Random(),
        layers=layer_tuple,
        namespace=namespace,
        version=check_positive_int("version", version, minimum=0),
        key=key,
        self_key=self_key,
        refresh_executor=refresh_executor,
        max_refreshes=check_positive_int("max_refreshes", max_refreshes),
        cross_process=bool(cross_process),
        breaker_failures=None
        if breaker_failures is None
        else check_positive_int("breaker_failures", breaker_failures),
        breaker_reset=None
        if breaker_reset is None
        else duration("breaker_reset", breaker_reset, allow_zero=False),
        backplane=backplane,
        l1_max_age=duration("l1_max_age", l1_max_age, allow_zero=False),
        tags=check_tags_setting(tags),
    )


@keyword_settings("cached", "ttl=60", required=("ttl",))
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
    wait_timeout: Duration = 10.0,
    key: Callable[..., Hashable] | None = None,
    rng: random.Random | None = None,
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
) -> Decorator:
    """Cache a function's results in layers, with single-flight, stale serving and back-off.

    Args:
        ttl: seconds an entry is fresh (served as is).
        stale_ttl: seconds after ``ttl`` during which the stale entry is served at once while
            one background refresh runs (HTTP's stale-while-revalidate).
        stale_if_error: seconds after ``ttl`` during which the entry is served when a fetch
            fails, times out, or is refused (back-off, rate limit, breaker). Defaults to
            ``stale_ttl``; a shorter value is refused (:class:`~cacheward.ConfigurationError`).
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
        wait_timeout: the most a caller waits for a fetch led by another caller, another process,
            or (for ``async def`` functions) by itself; then it gets a stale value or
            :class:`~cacheward.FetchTimeout`. A synchronous leader runs the fetch in its own
            thread and cannot be interrupted: bound the backend call itself.
        key: maps the call's arguments to the key's arguments (for arguments without a stable
            encoding). On a method it receives ``self`` too.
        rng: the random source for jitter.
        refresh_executor: where synchronous background refreshes run; defaults to a shared
            pool of 8 threads, of which one function holds at most 2 (a refresh that finds no
            free worker is not started: the stale value was served).
        max_refreshes: the most background refreshes of this function running at once (in
            the shared pool, at most 2); past it the stale value is served and the refresh is
            left for a later call.
        lease_ttl: how long a cross-process lease lasts (should exceed a fetch's duration).
        cross_process: take a lease in the first shared layer that supports leases, so one
            process per key fetches.
        breaker_failures: consecutive failures that open a shared layer's circuit breaker
            (default: the layer's own setting, else 3). A layer has one breaker, shared by
            every function using it: asking for another setting than it has is a
            :class:`~cacheward.ConfigurationError`.
        breaker_reset: seconds an open layer breaker waits before letting a probe through
            (default: the layer's own setting, else 5).
        timeout: the old spelling of ``wait_timeout`` (deprecated; accepted until 0.2).
        backplane: with a :class:`~cacheward.MemoryLayer` above a
            :class:`~cacheward.RedisLayer`, announce every invalidation and write of this
            function on the layer's channel and drop the keys other processes announce from
            the memory layer (see docs/caching.md, "Across processes"). ``False`` switches it
            off: other processes' invalidations then reach this memory layer only by expiry.
        l1_max_age: while the backplane's channel is down (or was, until it is subscribed
            again), the most seconds an in-process entry is served without re-validating it
            against the shared layer (one read; never a backend fetch unless the key is gone
            there).
        self_key: on a method (a function defined in a class body whose first parameter is
            ``self``): what of the instance is part of the key, e.g. ``lambda self:
            self.tenant``. By default ``self`` is left out: every instance shares the entries.
        tags: the tags of each entry, for :func:`~cacheward.invalidate_tags`: a list
            (``["customers"]``) or a function of the call's arguments returning one
            (``lambda customer_id: [f"customer:{customer_id}"]``; on a method it receives
            ``self`` too), called on each miss, never on a hit. Shared layers must support
            tags (:class:`~cacheward.RedisLayer` does).

    Raises:
        ConfigurationError: a setting is invalid (raised here, not on the first call).
    """
    settings = make_settings(
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
        wait_timeout=wait_timeout if timeout is None else timeout,
        key=key,
        rng=rng,
        self_key=self_key,
        refresh_executor=refresh_executor,
        max_refreshes=max_refreshes,
        lease_ttl=lease_ttl,
        cross_process=cross_process,
        breaker_failures=breaker_failures,
        breaker_reset=breaker_reset,
        backplane=backplane,
        l1_max_age=l1_max_age,
        tags=tags,
    )

    def decorate(fn: Callable[..., Any]) -> Any:
        return build(fn, settings)

    return cast(Decorator, decorate)


def check_function(fn: object) -> Callable[..., Any]:
    check_not_descriptor(fn, "cached")
    if not callable(fn):
        raise ConfigurationTypeError(
            f"cacheward decorators wrap a function; got {type(fn).__name__} {fn!r}"
        )
    if isgeneratorfunction(fn) or isasyncgenfunction(fn):
        raise ConfigurationTypeError(
            f"{getattr(fn, '__qualname__', fn)!r} is a generator function: its result is a "
            "one-shot iterator that cannot be cached or shared; return a list instead"
        )
    return fn


def build(fn: Callable[..., Any], settings: Settings) -> Any:
    fn = check_function(fn)
    is_async = iscoroutinefunction(fn)
    layers = settings.layers
    l1 = layers[0] if layers and isinstance(layers[0], MemoryLayer) else None
    qualname = claim_layers(fn, settings)
    if l1 is not None:
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
    method = is_method(fn)
    if settings.self_key is not None and not method:
        raise ConfigurationError(
            f"self_key= is for methods, and {getattr(fn, '__qualname__', fn)!r} is not one (a "
            "function defined in a class body whose first parameter is named self)"
        )
    driver = Driver(
        fn, settings, qualname, l1, is_async=is_async, method=method, self_key=settings.self_key
    )
    wrapper: Any = _wrapper(driver, is_async=is_async)
    if method:
        wrapper = CachedMethod(wrapper)
    functools.update_wrapper(wrapper, fn)
    wrapper.invalidate = driver.ainvalidate if is_async else driver.invalidate
    wrapper.set = driver.aset if is_async else driver.set
    wrapper.refresh = driver.arefresh if is_async else driver.refresh
    wrapper.get = driver.aget if is_async else driver.get
    wrapper.cache_clear = driver.acache_clear if is_async else driver.cache_clear
    wrapper.stats = driver.stats
    wrapper.namespace = driver.namespace
    return wrapper


def is_method(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is an instance method: defined in a class body (its qualified name
    says so) with a first parameter named ``self``.

    Raises:
        ConfigurationError: its first parameter is ``cls`` (classmethods are not supported).
    """
    owner = getattr(fn, "__qualname__", "").rpartition(".")[0]
    if not owner or owner.endswith("<locals>"):
        return False
    import inspect

    try:
        first = next(iter(inspect.signature(fn).parameters), None)
    except (TypeError, ValueError):
        return False
    if first == "cls":
        check_not_descriptor(classmethod(fn), "cached")
    return first == "self"


class CachedMethod:
    """What :func:`cached` returns for a method: a descriptor whose ``__get__`` binds the
    wrapper and its ``invalidate``/``set``/``refresh``/``get`` to the instance (see
    :class:`BoundCachedMethod`). Called through the class, it takes the instance first."""

    def __init__(self, wrapper: Callable[..., Any]) -> None:
        self.call = wrapper

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(*args, **kwargs)

    def __get__(self, obj: object, owner: type[Any] | None = None) -> Any:
        return self if obj is None else BoundCachedMethod(self, obj)

    def __repr__(self) -> str:
        return f"<cached method {getattr(self, '__qualname__', '?')}>"


class BoundCachedMethod:
    """A cached method bound to an instance: ``obj.load("c1")``, ``obj.load.invalidate("c1")``,
    ``.set(value, "c1")``, ``.refresh("c1")``, ``.get("c1")`` pass ``obj`` as ``self``; other
    attributes (``stats``, ``namespace``, ...) are the method's."""

    __slots__ = ("__func__", "__self__")

    def __init__(self, method: CachedMethod, obj: object) -> None:
        self.__func__ = method
        self.__self__ = obj

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__func__.call(self.__self__, *args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return cast(Any, self.__func__).invalidate(self.__self__, *args, **kwargs)

    def set(self, value: Any, /, *args: Any, **kwargs: Any) -> Any:
        return cast(Any, self.__func__).set(value, self.__self__, *args, **kwargs)

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return cast(Any, self.__func__).refresh(self.__self__, *args, **kwargs)

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return cast(Any, self.__func__).get(self.__self__, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__func__, name)

    def __repr__(self) -> str:
        name = getattr(self.__func__, "__qualname__", "?")
        return f"<bound cached method {name} of {self.__self__!r}>"


def claim_layers(fn: Callable[..., Any], settings: Settings) -> str:
    """Claim the function's namespace on each of its layers; returns its default namespace.

    Raises:
        ConfigurationError: a lambda or a function made in a factory has no ``namespace=`` in
            a stack with a shared layer, or another live function owns the namespace (see
            ``cacheward._identity``).
    """
    identity = identity_of(fn)
    shared = any(not getattr(layer, "local", False) for layer in settings.layers)
    name = identity.name if settings.namespace else default_namespace(identity, shared=shared)
    namespace = f"{settings.namespace or name}:v{settings.version}"
    for index, layer in enumerate(settings.layers):
        local = isinstance(layer, MemoryLayer)
        claim(layer, "" if local else namespace, identity, what=f"layers[{index}]")
    return name


def _wrapper(driver: Driver, *, is_async: bool) -> Callable[..., Any]:
    """The function callers call: the generated hot path when there is a memory layer."""
    if driver.l1 is None:
        serve, local_of, fn = driver.serve, driver.local, driver.fn
        if is_async:
            aserve = driver.aserve

            async def plain_async(*args: Any, **kwargs: Any) -> Any:
                if _testmode.ACTIVE and _testmode.bypassed():
                    return await fn(*args, **kwargs)
                return await aserve(local_of(args, kwargs), None, args, kwargs)

            return plain_async

        def plain(*args: Any, **kwargs: Any) -> Any:
            if _testmode.ACTIVE and _testmode.bypassed():
                return fn(*args, **kwargs)
            return serve(local_of(args, kwargs), None, args, kwargs)

        return plain
    wrapper, driver.memory_hits, set_lookup = build_wrapper(
        driver.fn,
        is_async=is_async,
        keyed=driver.s.key is not None,
        lookup=driver.l1._fast_get,
        now=driver.s.clock.time,
        serve=driver.aserve if is_async else driver.serve,
        local_of=driver.local,
        hit_listeners=HIT_LISTENERS,
        emit=emit,
        hit_kind=EventKind.HIT,
        source=driver.namespace,
        testmode=_testmode.ACTIVE,
        bypassed=_testmode.bypassed,
    )
    if driver.backplane is not None:
        driver.backplane.set_lookup = set_lookup
        driver.subscriber.register(driver.backplane)
    return wrapper
