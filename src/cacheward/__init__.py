"""cacheward: caching decorators that keep backend load bounded when the caches fail.

The public surface is what this module re-exports; everything in ``_``-prefixed modules is
private and may change.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cacheward._cached import AsyncCachedFunction, CachedFunction, CacheStats, cached
from cacheward._clock import Clock, SystemClock
from cacheward._core.entry import Entry, Freshness
from cacheward._core.keys import CacheKey
from cacheward._errors import (
    BackoffActive,
    CacheWardError,
    CircuitOpen,
    ConfigurationError,
    ConfigurationTypeError,
    CursorLoopError,
    FetchInterrupted,
    FetchTimeout,
    PaginationError,
    RateLimited,
    RecursiveFetch,
    RetryBudgetExhausted,
)
from cacheward._events import (
    Event,
    EventKind,
    Listener,
    LoggingListener,
    listen,
    listener_errors,
    listening,
    unlisten,
)
from cacheward._layers import AsyncLayer, Layer, MemoryLayer
from cacheward._pending import Invalidation
from cacheward._readpath import Missing, ainvalidate_tags, invalidate_tags
from cacheward._serialize import (
    JsonSerializer,
    MsgspecSerializer,
    OrjsonSerializer,
    PickleSerializer,
    Serializer,
    UnstorableValue,
)
from cacheward._testmode import bypass

if TYPE_CHECKING:
    from cacheward._adaptive import AdaptiveLimit, AdaptiveStats, PriorityStats, priority
    from cacheward._backend_breaker import (
        BreakerState,
        BreakerStats,
        CircuitBreaker,
        circuit_breaker,
        is_backend_failure,
    )
    from cacheward._coalesce import coalesce
    from cacheward._cursor import CursorCodec, InvalidCursor
    from cacheward._guard import AsyncGuardedFunction, GuardedFunction, GuardStats, guard
    from cacheward._limit import BucketStats, Limiter, TokenBucket, rate_limit
    from cacheward._msgpack import MsgpackSerializer
    from cacheward._pages import (
        Checkpoint,
        CheckpointStore,
        LayerCheckpoints,
        MemoryCheckpoints,
        Page,
        acollect_pages,
        aiter_pages,
        collect_pages,
        iter_pages,
    )
    from cacheward._redis import RedisLayer, RedisLayerStats
    from cacheward._redis_bucket import RedisTokenBucket, SharedBucketStats
    from cacheward._retry import BudgetStats, RetryBudget, is_retryable, retry
    from cacheward._sentinel import redis_client

#: Public names whose module is imported at first use, not by ``import cacheward``: a program
#: that caches in memory never pays for Redis, the adaptive limit, retries or pagination.
_LAZY: dict[str, str] = {
    "AdaptiveLimit": "cacheward._adaptive",
    "AdaptiveStats": "cacheward._adaptive",
    "PriorityStats": "cacheward._adaptive",
    "priority": "cacheward._adaptive",
    "BreakerState": "cacheward._backend_breaker",
    "BreakerStats": "cacheward._backend_breaker",
    "CircuitBreaker": "cacheward._backend_breaker",
    "circuit_breaker": "cacheward._backend_breaker",
    "is_backend_failure": "cacheward._backend_breaker",
    "coalesce": "cacheward._coalesce",
    "CursorCodec": "cacheward._cursor",
    "InvalidCursor": "cacheward._cursor",
    "AsyncGuardedFunction": "cacheward._guard",
    "GuardedFunction": "cacheward._guard",
    "GuardStats": "cacheward._guard",
    "guard": "cacheward._guard",
    "BucketStats": "cacheward._limit",
    "Limiter": "cacheward._limit",
    "TokenBucket": "cacheward._limit",
    "rate_limit": "cacheward._limit",
    "MsgpackSerializer": "cacheward._msgpack",
    "Checkpoint": "cacheward._pages",
    "CheckpointStore": "cacheward._pages",
    "LayerCheckpoints": "cacheward._pages",
    "MemoryCheckpoints": "cacheward._pages",
    "Page": "cacheward._pages",
    "acollect_pages": "cacheward._pages",
    "aiter_pages": "cacheward._pages",
    "collect_pages": "cacheward._pages",
    "iter_pages": "cacheward._pages",
    "RedisLayer": "cacheward._redis",
    "RedisLayerStats": "cacheward._redis",
    "RedisTokenBucket": "cacheward._redis_bucket",
    "SharedBucketStats": "cacheward._redis_bucket",
    "BudgetStats": "cacheward._retry",
    "RetryBudget": "cacheward._retry",
    "is_retryable": "cacheward._retry",
    "retry": "cacheward._retry",
    "redis_client": "cacheward._sentinel",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cacheward' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0.dev0"

#: What ``fn.get(...)`` returns when no layer holds a fresh entry (falsy; test it with ``is``).
MISSING = Missing.MISSING

__all__ = [
    "MISSING",
    "AdaptiveLimit",
    "AdaptiveStats",
    "AsyncCachedFunction",
    "AsyncGuardedFunction",
    "AsyncLayer",
    "BackoffActive",
    "BreakerState",
    "BreakerStats",
    "BucketStats",
    "BudgetStats",
    "CacheKey",
    "CacheStats",
    "CacheWardError",
    "CachedFunction",
    "Checkpoint",
    "CheckpointStore",
    "CircuitBreaker",
    "CircuitOpen",
    "Clock",
    "ConfigurationError",
    "ConfigurationTypeError",
    "CursorCodec",
    "CursorLoopError",
    "Entry",
    "Event",
    "EventKind",
    "FetchInterrupted",
    "FetchTimeout",
    "Freshness",
    "GuardStats",
    "GuardedFunction",
    "InvalidCursor",
    "Invalidation",
    "JsonSerializer",
    "Layer",
    "LayerCheckpoints",
    "Limiter",
    "Listener",
    "LoggingListener",
    "MemoryCheckpoints",
    "MemoryLayer",
    "Missing",
    "MsgpackSerializer",
    "MsgspecSerializer",
    "OrjsonSerializer",
    "Page",
    "PaginationError",
    "PickleSerializer",
    "PriorityStats",
    "RateLimited",
    "RecursiveFetch",
    "RedisLayer",
    "RedisLayerStats",
    "RedisTokenBucket",
    "RetryBudget",
    "RetryBudgetExhausted",
    "Serializer",
    "SharedBucketStats",
    "SystemClock",
    "TokenBucket",
    "UnstorableValue",
    "__version__",
    "acollect_pages",
    "ainvalidate_tags",
    "aiter_pages",
    "bypass",
    "cached",
    "circuit_breaker",
    "coalesce",
    "collect_pages",
    "guard",
    "invalidate_tags",
    "is_backend_failure",
    "is_retryable",
    "iter_pages",
    "listen",
    "listener_errors",
    "listening",
    "priority",
    "rate_limit",
    "redis_client",
    "retry",
    "unlisten",
]
