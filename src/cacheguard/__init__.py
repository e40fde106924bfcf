"""cacheguard: caching decorators that keep backend load bounded when the caches fail.

The public surface is what this module re-exports; everything in ``_``-prefixed modules is
private and may change.
"""

from __future__ import annotations

from cacheguard._backend_breaker import (
    BreakerState,
    CircuitBreaker,
    circuit_breaker,
    is_backend_failure,
)
from cacheguard._cached import AsyncCachedFunction, CachedFunction, CacheStats, cached
from cacheguard._clock import Clock, SystemClock
from cacheguard._coalesce import coalesce
from cacheguard._core.entry import Entry, Freshness
from cacheguard._core.keys import CacheKey
from cacheguard._cursor import CursorCodec, InvalidCursor
from cacheguard._errors import (
    BackoffActive,
    CacheGuardError,
    CircuitOpen,
    ConfigurationError,
    ConfigurationTypeError,
    CursorLoopError,
    FetchTimeout,
    PaginationError,
    RateLimited,
    RetryBudgetExhausted,
)
from cacheguard._events import (
    Event,
    EventKind,
    Listener,
    LoggingListener,
    listen,
    listener_errors,
    listening,
    unlisten,
)
from cacheguard._guard import AsyncGuardedFunction, GuardedFunction, GuardStats, guard
from cacheguard._layers import AsyncLayer, Layer, MemoryLayer
from cacheguard._limit import Limiter, TokenBucket, rate_limit
from cacheguard._pages import (
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
from cacheguard._redis import RedisLayer
from cacheguard._redis_bucket import RedisTokenBucket
from cacheguard._retry import RetryBudget, is_retryable, retry
from cacheguard._serialize import (
    JsonSerializer,
    MsgspecSerializer,
    OrjsonSerializer,
    PickleSerializer,
    Serializer,
)

__version__ = "0.1.0.dev0"

__all__ = [
    "AsyncCachedFunction",
    "AsyncGuardedFunction",
    "AsyncLayer",
    "BackoffActive",
    "BreakerState",
    "CacheGuardError",
    "CacheKey",
    "CacheStats",
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
    "FetchTimeout",
    "Freshness",
    "GuardStats",
    "GuardedFunction",
    "InvalidCursor",
    "JsonSerializer",
    "Layer",
    "LayerCheckpoints",
    "Limiter",
    "Listener",
    "LoggingListener",
    "MemoryCheckpoints",
    "MemoryLayer",
    "MsgspecSerializer",
    "OrjsonSerializer",
    "Page",
    "PaginationError",
    "PickleSerializer",
    "RateLimited",
    "RedisLayer",
    "RedisTokenBucket",
    "RetryBudget",
    "RetryBudgetExhausted",
    "Serializer",
    "SystemClock",
    "TokenBucket",
    "__version__",
    "acollect_pages",
    "aiter_pages",
    "cached",
    "circuit_breaker",
    "coalesce",
    "collect_pages",
    "guard",
    "is_backend_failure",
    "is_retryable",
    "iter_pages",
    "listen",
    "listener_errors",
    "listening",
    "rate_limit",
    "retry",
    "unlisten",
]
