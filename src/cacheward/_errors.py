"""One small hierarchy of errors, all under :class:`CacheWardError`.

Every message says what happened, which limit or setting caused it, and what to change.
"""

from __future__ import annotations

__all__ = [
    "BackoffActive",
    "CacheWardError",
    "CircuitOpen",
    "ConfigurationError",
    "ConfigurationTypeError",
    "CursorLoopError",
    "FetchInterrupted",
    "FetchTimeout",
    "PaginationError",
    "RateLimited",
    "RecursiveFetch",
    "RetryBudgetExhausted",
]


class CacheWardError(Exception):
    """Base class of every error cacheward raises on its own behalf."""


class ConfigurationError(CacheWardError, ValueError):
    """A setting or an argument has a bad value; raised at decoration or construction time."""


class ConfigurationTypeError(ConfigurationError, TypeError):
    """A setting or an argument has the wrong type (also a :class:`TypeError`)."""


class BackoffActive(CacheWardError):
    """The key's last fetch failed and its back-off has not ended; no stale value was available.

    The failure that started the back-off is chained as ``__cause__``.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        #: Seconds until the key may be fetched again.
        self.retry_after = retry_after


class FetchTimeout(CacheWardError, TimeoutError):
    """A caller waited its whole deadline for a fetch and no stale value was available."""


class FetchInterrupted(CacheWardError):
    """The fetch this caller waited for ended without an answer: its leader was interrupted
    (``KeyboardInterrupt``, ``SystemExit``...) or cancelled. The interruption itself reaches
    only the caller it happened to; call again to fetch anew."""


class RecursiveFetch(CacheWardError, RecursionError):
    """A cached function's fetch called the same function with the same key: it would wait
    for itself. Fetch the value another way (or give the inner call another key)."""


class RateLimited(CacheWardError):
    """No token could be taken from the bucket within ``max_wait``."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: Seconds until a token is expected, when known.
        self.retry_after = retry_after


class RetryBudgetExhausted(CacheWardError):
    """A retry was needed but the retry budget is spent; the last error is chained."""


class CircuitOpen(CacheWardError):
    """The backend circuit breaker is open: the backend is not being called for a while."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        #: Seconds until the breaker lets a probe through.
        self.retry_after = retry_after


class CursorLoopError(CacheWardError):
    """A page function returned a cursor seen before, or a page that made no progress."""

    def __init__(
        self, message: str, *, cursor: object, pages_done: int, reason: str = "repeated-cursor"
    ) -> None:
        super().__init__(message)
        #: The cursor that showed the loop (the repeated one, or the one that made no progress).
        self.cursor = cursor
        #: How many pages were accepted before the loop was detected.
        self.pages_done = pages_done
        #: ``"repeated-cursor"``, ``"no-progress"`` or ``"empty-pages"``.
        self.reason = reason


class PaginationError(CacheWardError):
    """A paginated rebuild stopped part-way; the next rebuild resumes from :attr:`cursor`.

    The page's last error is chained as ``__cause__``.
    """

    def __init__(
        self, message: str, *, cursor: object, pages_done: int, reason: str = "page-failed"
    ) -> None:
        super().__init__(message)
        #: The cursor to resume from, as the page function gave it.
        self.cursor = cursor
        #: How many pages were fetched (and checkpointed) before the failure.
        self.pages_done = pages_done
        #: Why it stopped: ``"page-failed"`` (the page function raised; chained as
        #: ``__cause__``), or the bound it hit: ``"deadline"``, ``"max-pages"``, ``"max-items"``.
        self.reason = reason
