"""cacheward: caching decorators that keep backend load bounded when the caches fail.

The public surface is what this module re-exports; everything in ``_``-prefixed modules is
private and may change.
"""

from __future__ import annotations

from cacheward._adaptive import AdaptiveLimit, AdaptiveStats, PriorityStats, priority
from cacheward._backend_breaker import (
    BreakerState,
    BreakerStats,
    CircuitBreaker,
    circuit_breaker,
    is_backend_failure,
)
from cacheward._cached import AsyncCachedFunction, CachedFunction, CacheStats, cached
from cacheward._clock import Clock, SystemClock
from cacheward._coalesce import coalesce
from cacheward._core.entry import Entry, Freshness
from cacheward._core.keys import CacheKey
from cacheward._cursor import CursorCodec, InvalidCursor
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
from cacheward._guard import AsyncGuardedFunction, GuardedFunction, GuardStats, guard
from cacheward._layers import AsyncLayer, Layer, MemoryLayer
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
from cacheward._pending import Invalidation
from cacheward._readpath import Missing, ainvalidate_tags, invalidate_tags
from cacheward._redis import RedisLayer, RedisLayerStats
from cacheward._redis_bucket import RedisTokenBucket, SharedBucketStats
from cacheward._retry import BudgetStats, RetryBudget, is_retryable, retry
from cacheward._sentinel import redis_client
from cacheward._serialize import (
    JsonSerializer,
    MsgspecSerializer,
    OrjsonSerializer,
    PickleSerializer,
    Serializer,
    UnstorableValue,
)
from cacheward._testmode import bypass

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
