"""cacheward and its peers, each configured the way its documentation recommends.

One row per (library, configuration). Each :class:`Lib` knows how to decorate a function with a
fresh cache, so the hit benchmark, the stampede benchmark and the peers summary all time the
very same configurations. ``docs/benchmarks.md`` lists these configurations; keep them in step.

A library that is not installed yields no row (the report says so); cacheward's rows appear as
soon as ``cacheward.cached`` imports.
"""

from __future__ import annotations

import functools
import importlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: Time to live for every contender: long enough that nothing expires during a run.
TTL = 3600
#: Bound on entries for every bounded contender (``functools.lru_cache``'s default).
MAXSIZE = 128

Decorate = Callable[[Callable[..., Any]], Callable[..., Any]]


@dataclass(frozen=True)
class Lib:
    """One library in one configuration.

    Attributes:
        name: the row label.
        dist: the distribution whose version the report prints.
        is_async: it decorates ``async def`` functions (else plain ones).
        config: the configuration, as written in the docs.
        make: returns a decorator with a fresh, empty cache each time it is called.
        hits: include it in the hit benchmark.
        stampede: include it in the stampede benchmark.
    """

    name: str
    dist: str
    is_async: bool
    config: str
    make: Callable[[], Decorate]
    hits: bool = True
    stampede: bool = True


def cacheward_missing() -> str | None:
    """Why cacheward's rows cannot run, or ``None`` when ``cacheward.cached`` imports."""
    try:
        cw = importlib.import_module("cacheward")
        cw.cached  # noqa: B018
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _cacheward() -> Decorate:
    import cacheward as cw

    decorate: Decorate = cw.cached(ttl=TTL)
    return decorate


# ---------------------------------------------------------------- sync peers


def _lru_cache() -> Decorate:
    return functools.lru_cache(maxsize=MAXSIZE)


def _functools_cache() -> Decorate:
    return functools.cache


def _cachetools(
    kind: str, *, lock: bool = False, condition: bool = False
) -> Callable[[], Decorate]:
    def make() -> Decorate:
        import cachetools

        cache: Any = (
            cachetools.TTLCache(maxsize=MAXSIZE, ttl=TTL)
            if kind == "ttl"
            else cachetools.LRUCache(maxsize=MAXSIZE)
        )
        if condition:
            decorate: Decorate = cachetools.cached(cache, condition=threading.Condition())
        elif lock:
            decorate = cachetools.cached(cache, lock=threading.Lock())
        else:
            decorate = cachetools.cached(cache)
        return decorate

    return make


def _cachebox(kind: str) -> Callable[[], Decorate]:
    def make() -> Decorate:
        import cachebox

        cache: Any = (
            cachebox.TTLCache(MAXSIZE, global_ttl=TTL)
            if kind == "ttl"
            else cachebox.LRUCache(MAXSIZE)
        )
        decorate: Decorate = cachebox.cached(cache)
        return decorate

    return make


def _dogpile() -> Decorate:
    from dogpile.cache import make_region

    region = make_region().configure("dogpile.cache.memory", expiration_time=TTL)
    decorate: Decorate = region.cache_on_arguments()
    return decorate


# ---------------------------------------------------------------- async peers


def _async_lru() -> Decorate:
    from async_lru import alru_cache

    decorate: Decorate = alru_cache(maxsize=MAXSIZE, ttl=TTL)
    return decorate


def _cashews(**options: Any) -> Callable[[], Decorate]:
    def make() -> Decorate:
        from cashews import Cache

        cache = Cache()
        cache.setup("mem://")
        decorate: Decorate = cache(ttl=TTL, **options)
        return decorate

    return make


def _aiocache(*, stampede: bool = False, **options: Any) -> Callable[[], Decorate]:
    def make() -> Decorate:
        import aiocache

        if stampede:
            decorate: Decorate = aiocache.cached_stampede(
                ttl=TTL, cache=aiocache.Cache.MEMORY, **options
            )
        else:
            decorate = aiocache.cached(ttl=TTL, cache=aiocache.Cache.MEMORY, **options)
        return decorate

    return make


CACHEWARD_CONFIG = f"cw.cached(ttl={TTL}): default MemoryLayer, typed keys, stats, single-flight"

SYNC_REFERENCE = Lib(
    "functools.lru_cache(128)",
    "python",
    False,
    "functools.lru_cache(maxsize=128): the reference for sync hits",
    _lru_cache,
)

SYNC_LIBS: list[Lib] = [
    Lib("cacheward", "cacheward", False, CACHEWARD_CONFIG, _cacheward),
    Lib("functools.cache", "python", False, "functools.cache (unbounded)", _functools_cache),
    Lib(
        "cachetools TTLCache",
        "cachetools",
        False,
        f"cachetools.cached(TTLCache(maxsize={MAXSIZE}, ttl={TTL})), no lock (one thread only)",
        _cachetools("ttl"),
        stampede=False,
    ),
    Lib(
        "cachetools TTLCache lock=",
        "cachetools",
        False,
        "cachetools.cached(TTLCache(...), lock=threading.Lock()): the documented thread-safe form",
        _cachetools("ttl", lock=True),
    ),
    Lib(
        "cachetools TTLCache condition=",
        "cachetools",
        False,
        "cachetools.cached(TTLCache(...), condition=threading.Condition()): stampede-safe form",
        _cachetools("ttl", condition=True),
    ),
    Lib(
        "cachetools LRUCache",
        "cachetools",
        False,
        f"cachetools.cached(LRUCache(maxsize={MAXSIZE})), no lock",
        _cachetools("lru"),
        stampede=False,
    ),
    Lib(
        "cachebox TTLCache",
        "cachebox",
        False,
        f"cachebox.cached(cachebox.TTLCache({MAXSIZE}, global_ttl={TTL})) (default lock=True)",
        _cachebox("ttl"),
    ),
    Lib(
        "cachebox LRUCache",
        "cachebox",
        False,
        f"cachebox.cached(cachebox.LRUCache({MAXSIZE})) (default lock=True)",
        _cachebox("lru"),
        stampede=False,
    ),
    Lib(
        "dogpile.cache memory",
        "dogpile.cache",
        False,
        f'make_region().configure("dogpile.cache.memory", expiration_time={TTL})'
        ".cache_on_arguments()",
        _dogpile,
    ),
]

ASYNC_LIBS: list[Lib] = [
    Lib("cacheward async", "cacheward", True, CACHEWARD_CONFIG, _cacheward),
    Lib(
        "cachebox TTLCache async",
        "cachebox",
        True,
        f"cachebox.cached(cachebox.TTLCache({MAXSIZE}, global_ttl={TTL})) on an async def",
        _cachebox("ttl"),
    ),
    Lib(
        "cachebox LRUCache async",
        "cachebox",
        True,
        f"cachebox.cached(cachebox.LRUCache({MAXSIZE})) on an async def",
        _cachebox("lru"),
        stampede=False,
    ),
    Lib(
        "async-lru",
        "async-lru",
        True,
        f"async_lru.alru_cache(maxsize={MAXSIZE}, ttl={TTL})",
        _async_lru,
    ),
    Lib(
        "cashews mem",
        "cashews",
        True,
        f'Cache().setup("mem://"); @cache(ttl={TTL}) (default protected=True)',
        _cashews(),
    ),
    Lib(
        "cashews mem protected=False",
        "cashews",
        True,
        f'Cache().setup("mem://"); @cache(ttl={TTL}, protected=False)',
        _cashews(protected=False),
    ),
    Lib(
        "aiocache memory",
        "aiocache",
        True,
        f"aiocache.cached(ttl={TTL}, cache=Cache.MEMORY) (default timeout=5: wait_for per op)",
        _aiocache(),
    ),
    Lib(
        "aiocache memory timeout=None",
        "aiocache",
        True,
        f"aiocache.cached(ttl={TTL}, cache=Cache.MEMORY, timeout=None)",
        _aiocache(timeout=None),
        stampede=False,
    ),
    Lib(
        "aiocache cached_stampede",
        "aiocache",
        True,
        f"aiocache.cached_stampede(ttl={TTL}, cache=Cache.MEMORY) (default lease=2)",
        _aiocache(stampede=True),
        hits=False,
    ),
]


def available(lib: Lib) -> str | None:
    """Why ``lib`` cannot run here, or ``None`` when it can."""
    if lib.dist == "cacheward":
        return cacheward_missing()
    try:
        lib.make()
    except ImportError as exc:
        return f"not installed ({exc.name})"
    return None


# ---------------------------------------------------------------- Redis-backed contenders
#: Each makes ``(is_async, decorator, config)`` for a Redis at ``127.0.0.1:port``.


def _cacheward_outage(port: int) -> tuple[bool, Any, str]:
    import cacheward as cw

    layers = [cw.MemoryLayer(), cw.RedisLayer.from_url(f"redis://127.0.0.1:{port}/0")]
    config = (
        f"cw.cached(ttl={TTL}, layers=[MemoryLayer(), "
        'RedisLayer.from_url("redis://...")]) (defaults: 0.25 s timeouts, no retries)'
    )
    return True, cw.cached(ttl=TTL, layers=layers), config


def _cashews_outage(port: int) -> tuple[bool, Any, str]:
    from cashews import Cache

    cache = Cache()
    cache.setup(f"redis://127.0.0.1:{port}/0")
    return (
        True,
        cache(ttl=TTL),
        f'Cache().setup("redis://...") (defaults: suppress=True, socket_timeout=1); '
        f"@cache(ttl={TTL})",
    )


def _aiocache_outage(port: int) -> tuple[bool, Any, str]:
    import aiocache

    # aiocache logs a traceback per failed get/set; the benchmark counts them instead.
    logging.getLogger("aiocache").setLevel(logging.CRITICAL)
    return (
        True,
        aiocache.cached(ttl=TTL, cache=aiocache.Cache.REDIS, endpoint="127.0.0.1", port=port),
        f"aiocache.cached(ttl={TTL}, cache=Cache.REDIS, endpoint=..., port=...) "
        "(default timeout=5)",
    )


def _dogpile_outage(port: int) -> tuple[bool, Any, str]:
    from dogpile.cache import make_region

    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=TTL,
        arguments={
            "host": "127.0.0.1",
            "port": port,
            "db": 0,
            "redis_expiration_time": TTL * 2,
            "distributed_lock": True,
            "thread_local_lock": False,
            "socket_timeout": 1,
        },
    )
    return (
        False,
        region.cache_on_arguments(),
        "dogpile.cache.redis as in its docs: redis_expiration_time, distributed_lock=True, "
        "thread_local_lock=False, plus socket_timeout=1",
    )


OUTAGE_CONTENDERS: dict[str, Callable[[int], tuple[bool, Any, str]]] = {
    "cacheward": _cacheward_outage,
    "cashews redis": _cashews_outage,
    "aiocache redis": _aiocache_outage,
    "dogpile redis": _dogpile_outage,
}
