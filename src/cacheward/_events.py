"""Events: every decision cacheward makes, delivered to registered listeners.

Listeners subscribe to the kinds they want. Emitting a kind nobody listens to costs one
dictionary lookup, and a fresh hit from memory costs one list check, so a listener for rare
events (errors, breakers, budgets) costs nothing on the hot path. Counters that change on every
call (hits) are better read from ``.stats()`` at scrape time than listened to.
"""

from __future__ import annotations

import atexit
import enum
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol, cast

from cacheward import _forksafe
from cacheward._clock import Clock
from cacheward._config import check_clock, check_positive_int, duration
from cacheward._core.logthrottle import LogThrottle, Summary
from cacheward._frozen import Frozen

if TYPE_CHECKING:
    from datetime import timedelta

__all__ = [
    "Event",
    "EventKind",
    "Listener",
    "LoggingListener",
    "emit",
    "listen",
    "listening",
    "unlisten",
]


class EventKind(str, enum.Enum):
    """What happened."""

    HIT = "hit"
    """A fresh entry was served."""
    STALE_SERVED = "stale_served"
    """A stale entry was served (refresh running, back-off, or after a failure)."""
    MISS = "miss"
    """A caller led a fetch."""
    COALESCED_WAIT = "coalesced_wait"
    """A caller waited for another caller's fetch."""
    FETCH = "fetch"
    """The backend was called (``duration`` is the call's length in seconds)."""
    FETCH_ERROR = "fetch_error"
    """A backend call raised (``error``)."""
    BACKOFF_REJECTED = "backoff_rejected"
    """A caller was refused because the key backs off."""
    WAIT_TIMEOUT = "wait_timeout"
    """A caller's wait reached its deadline."""
    REFRESH_STARTED = "refresh_started"
    """A background refresh started."""
    REFRESH_SKIPPED = "refresh_skipped"
    """A refresh was not started: every refresh slot was busy."""
    RATE_LIMITED = "rate_limited"
    """No token could be taken in time."""
    LIMIT_CHANGED = "limit_changed"
    """An :class:`~cacheward.AdaptiveLimit` moved by more than half since it last said so."""
    RETRY = "retry"
    """A failed attempt is being retried."""
    BUDGET_EXHAUSTED = "budget_exhausted"
    """A retry was refused by the retry budget."""
    BREAKER_OPENED = "breaker_opened"
    """A circuit breaker opened (``layer`` names a cache layer; else the backend)."""
    BREAKER_HALF_OPEN = "breaker_half_open"
    """A circuit breaker let a probe through."""
    BREAKER_CLOSED = "breaker_closed"
    """A circuit breaker closed again."""
    INVALIDATIONS_REPLAYED = "invalidations_replayed"
    """Invalidations kept while a shared layer could not be reached were delivered to it (one
    event per replay; ``stats().invalidations_replayed`` counts the keys)."""
    BACKPLANE_LOST = "backplane_lost"
    """The channel carrying other processes' invalidations to this process's in-process layers
    went silent or failed (``layer`` names the shared layer; ``error`` the failure): until it is
    back, in-process hits older than ``l1_max_age`` are re-validated against that layer."""
    BACKPLANE_RECONNECTED = "backplane_reconnected"
    """The backplane channel is subscribed again (the in-process layers above it were emptied:
    announcements may have been missed meanwhile)."""
    BUCKET_FALLBACK = "bucket_fallback"
    """A :class:`~cacheward.RedisTokenBucket` could not reach Redis and takes from its local
    share until a probe succeeds (``error`` is the failure)."""
    BUCKET_SHARED = "bucket_shared"
    """A :class:`~cacheward.RedisTokenBucket` is back on the shared bucket in Redis."""
    LAYER_ERROR = "layer_error"
    """A cache layer raised or returned something that is not an entry (a miss)."""
    LAYER_SKIPPED = "layer_skipped"
    """A cache layer was skipped because its breaker is open."""
    LEASE_TAKEN = "lease_taken"
    """This process took a key's cross-process lease."""
    LEASE_LOST = "lease_lost"
    """A lease holder's publish found the lease gone and a newer value stored; its value was
    not stored."""
    LEASE_WAIT = "lease_wait"
    """This process waited for another process holding a key's lease."""
    SERIALIZER_REJECTED = "serializer_rejected"
    """Bytes from a shared layer were corrupt, foreign or tampered with (a miss); the source
    and ``layer`` are the layer's name, ``error`` says why."""
    INVALIDATED = "invalidated"
    """A key was invalidated."""


class Event(Frozen):
    """One decision.

    Attributes:
        kind: what happened.
        source: the cached function's namespace, or the component's name (a bucket, a budget).
        layer: the cache layer involved, if any.
        error: the exception involved, if any.
        duration: seconds, where the kind measures one (a fetch, a wait).
    """

    kind: EventKind
    source: str
    layer: str | None = None
    error: BaseException | None = None
    duration: float | None = None


class Listener(Protocol):
    """Anything callable with an :class:`Event`. It must be quick and should not raise; an
    exception it raises is swallowed (and counted in :func:`listener_errors`), never passed to
    the caller whose call produced the event."""

    def __call__(self, event: Event, /) -> None: ...


_LOCK = _forksafe.lock()
_BY_KIND: dict[EventKind, tuple[Listener, ...]] = dict.fromkeys(EventKind, ())
#: Listeners of HIT, as a list mutated in place: the hot path holds a reference to it and
#: checks it for emptiness, which is cheaper than a dictionary lookup.
HIT_LISTENERS: list[Listener] = []
_errors = 0


def listen(listener: Listener, *, kinds: Iterable[EventKind | str] | None = None) -> None:
    """Deliver events of ``kinds`` (default: every kind except ``HIT``) to ``listener``.

    ``HIT`` is delivered only when asked for by name: a fresh hit is the one path that must
    stay cheap, and its count is in every function's ``.stats()``.
    """
    wanted = (
        [k for k in EventKind if k is not EventKind.HIT]
        if kinds is None
        else [EventKind(k) for k in kinds]
    )
    with _LOCK:
        for kind in wanted:
            if listener not in _BY_KIND[kind]:
                _BY_KIND[kind] = (*_BY_KIND[kind], listener)
        HIT_LISTENERS[:] = _BY_KIND[EventKind.HIT]


def unlisten(listener: Listener) -> None:
    """Stop delivering events to ``listener`` (a no-op if it was not listening)."""
    with _LOCK:
        for kind, listeners in _BY_KIND.items():
            _BY_KIND[kind] = tuple(x for x in listeners if x != listener)
        HIT_LISTENERS[:] = _BY_KIND[EventKind.HIT]


class listening:  # noqa: N801 - used like a function, as a context manager
    """Context manager: ``with cw.listening(events.append): ...`` listens for its duration."""

    def __init__(
        self, listener: Listener, *, kinds: Iterable[EventKind | str] | None = None
    ) -> None:
        self.listener = listener
        self.kinds = kinds

    def __enter__(self) -> Listener:
        listen(self.listener, kinds=self.kinds)
        return self.listener

    def __exit__(self, *exc: object) -> None:
        unlisten(self.listener)


def wants(kind: EventKind) -> bool:
    """Whether anyone listens to ``kind`` (so callers can skip building the event)."""
    return bool(_BY_KIND[kind])


def emit(
    kind: EventKind,
    source: str,
    *,
    layer: str | None = None,
    error: BaseException | None = None,
    duration: float | None = None,
) -> None:
    """Deliver one event to the listeners of its kind; a listener's exception is swallowed."""
    listeners = _BY_KIND[kind]
    if not listeners:
        return
    event = Event(kind, source, layer, error, duration)
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # noqa: PERF203 - a listener must never break a call
            global _errors
            _errors += 1


def listener_errors() -> int:
    """How many times a listener raised (the exceptions themselves were swallowed)."""
    return _errors


#: The level each kind is logged at by :class:`LoggingListener` (DEBUG when absent). A
#: recovery is logged at the level of the failure it ends, so whoever sees one sees the other.
LEVELS: dict[EventKind, int] = {
    EventKind.BREAKER_OPENED: logging.WARNING,
    EventKind.BREAKER_CLOSED: logging.WARNING,
    EventKind.BUCKET_FALLBACK: logging.WARNING,
    EventKind.BUCKET_SHARED: logging.WARNING,
    EventKind.INVALIDATIONS_REPLAYED: logging.WARNING,
    EventKind.BACKPLANE_LOST: logging.WARNING,
    EventKind.BACKPLANE_RECONNECTED: logging.WARNING,
    EventKind.BUDGET_EXHAUSTED: logging.WARNING,
}

#: A failure and the recovery that ends it, for the wording of recovery lines.
_RECOVERY_OF: dict[EventKind, EventKind] = {
    EventKind.BREAKER_CLOSED: EventKind.BREAKER_OPENED,
    EventKind.BUCKET_SHARED: EventKind.BUCKET_FALLBACK,
    EventKind.BACKPLANE_RECONNECTED: EventKind.BACKPLANE_LOST,
}


class LoggingListener:
    """Logs events to :mod:`logging`, a few lines per interval per kind and source at most.

    Failures and the recoveries that end them (a breaker opening and closing again, the retry
    budget running out) are logged at WARNING, everything else at DEBUG (see :data:`LEVELS`).
    One listener is attached by default for the WARNING kinds only, so the library is quiet
    unless something is wrong or stops being wrong; attach your own with
    ``cw.listen(cw.LoggingListener())`` to see every decision at DEBUG.

    However often an event happens, one *stream* (a kind, from one source, through one layer)
    writes at most ``burst`` lines per ``interval``; the events past that are counted and
    written as one summary line (``... 4312 more in 10s, not logged one by one``) by the first
    logged event after the interval ends, or by :meth:`flush`. Listeners and metrics still see
    every event.

    Args:
        logger: the logger (default: ``logging.getLogger("cacheward")``).
        interval: the length of a stream's window, in seconds (default 10).
        burst: lines per stream per window (default 3).
        clock: the clock for the windows (``FakeClock`` in tests).
    """

    def __init__(
        self,
        logger: logging.Logger | None = None,
        *,
        interval: float | timedelta = 10.0,
        burst: int = 3,
        clock: Clock | None = None,
    ) -> None:
        self.logger = logger or logging.getLogger("cacheward")
        self._clock = check_clock(clock)
        self._throttle = LogThrottle(
            interval=duration("interval", interval, allow_zero=False),
            burst=check_positive_int("burst", burst),
        )
        self._lock = _forksafe.lock()
        #: Lines written, and events counted into summaries instead (for tests and metrics).
        self.lines = 0
        self.summarized = 0

    def __call__(self, event: Event) -> None:
        level = LEVELS.get(event.kind, logging.DEBUG)
        if not self.logger.isEnabledFor(level):
            return
        with self._lock:
            write, due = self._throttle.admit(
                (event.kind, event.source, event.layer), self._clock.monotonic()
            )
            if not write:
                self.summarized += 1
        self._summaries(due)
        if not write:
            return
        self.lines += 1
        where = f" layer={event.layer}" if event.layer else ""
        why = f" error={type(event.error).__name__}: {event.error}" if event.error else ""
        took = f" duration={event.duration:.4f}s" if event.duration is not None else ""
        ended = _RECOVERY_OF.get(event.kind)
        note = f" (recovered: {ended.value} is over)" if ended is not None else ""
        self.logger.log(
            level,
            "cacheward %s source=%s%s%s%s%s",
            event.kind.value,
            event.source,
            where,
            why,
            took,
            note,
        )

    def flush(self) -> None:
        """Write the summary lines of every stream with counted events, now."""
        with self._lock:
            due = self._throttle.flush(self._clock.monotonic())
        self._summaries(due)

    def _summaries(self, due: list[Summary]) -> None:
        for summary in due:
            kind, source, layer = cast("tuple[EventKind, str, str | None]", summary.key)
            where = f" layer={layer}" if layer else ""
            self.lines += 1
            self.logger.log(
                LEVELS.get(kind, logging.DEBUG),
                "cacheward %s source=%s%s: %d more in %gs, not logged one by one "
                "(events and metrics count every one)",
                kind.value,
                source,
                where,
                summary.count,
                round(summary.span, 3),
            )


DEFAULT_LOGGING = LoggingListener()
listen(DEFAULT_LOGGING, kinds=[k for k, level in LEVELS.items() if level >= logging.WARNING])
atexit.register(DEFAULT_LOGGING.flush)
