"""The read-through decision table: what a caller does with what the layers gave it.

One :class:`ReadThrough` per cached function holds the per-key state (the fetch in flight, the
failure count and the back-off). It is pure and not thread-safe: the drivers call it under their
own lock, passing wall time ``now`` (for entries) and monotonic time ``mono`` (for back-off).

The state table is bounded and each call does constant work on it: a failing backend over
any number of distinct keys costs at most :data:`FAILURE_STATES` states per function, each
holding a frame-free copy of its error (:func:`frame_free`), never the traceback.
"""

from __future__ import annotations

import enum
import types
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from cacheward._core.backoff import backoff_delay
from cacheward._core.entry import Entry, Freshness, classify

__all__ = ["FAILURE_STATES", "Action", "Flight", "KeyState", "ReadThrough", "frame_free"]

#: How many keys' failure states (back-off and last error) one cached function keeps. Past it
#: the least recently used key's state is forgotten: its next call may fetch again at once
#: (still under the function's rate limit, if it has one) and its back-off starts over.
FAILURE_STATES = 10_000
#: How many links of an error's ``__cause__`` / ``__context__`` chain :func:`frame_free` copies.
CHAIN_DEPTH = 8


class Action(enum.Enum):
    """What the caller does next."""

    HIT = "hit"
    """Serve the entry: it is fresh."""
    STALE = "stale"
    """Serve the stale entry; a refresh is already running or the key is backing off."""
    REFRESH = "refresh"
    """Serve the stale entry and start the returned flight as a background refresh (the
    refresh's job must :meth:`ReadThrough.begin` it)."""
    FETCH = "fetch"
    """Lead the returned flight: call the backend. (It may be a queued refresh's flight that
    this caller takes over.)"""
    WAIT = "wait"
    """Wait for the returned flight, which another caller leads."""
    BACKOFF = "backoff"
    """Nothing servable and the key is backing off: fail fast (or serve the entry, which is
    usable on error, if the caller has one)."""


class Flight:
    """One fetch of one key, shared by its callers. Drivers subclass it to carry a result.

    Attributes:
        cacheable: cleared by an invalidation that happens while the fetch runs; the result
            then reaches the flight's callers but is not stored.
        queued: a background refresh's flight whose job has not started yet (it may sit in a
            pool's queue behind other work). Nobody waits for it: a caller that would is
            given the flight to lead itself, and the job, when it starts, finds it taken.
    """

    __slots__ = ("cacheable", "queued")

    def __init__(self) -> None:
        self.cacheable = True
        self.queued = False

    def stranded(self) -> bool:
        """Whether nothing can end this flight any more (a driver's flight says: an asyncio
        fetch task whose event loop was closed before it finished). The core forgets it."""
        return False

    def dropped(self) -> None:
        """The core forgot this flight as :meth:`stranded`: a driver's flight gives back what
        its fetch held (a refresh slot)."""


F = TypeVar("F", bound=Flight)


class KeyState(Generic[F]):
    """What the core remembers about one key between calls."""

    __slots__ = ("backoff_until", "failures", "flight", "last_error")

    def __init__(self) -> None:
        self.flight: F | None = None
        self.failures = 0
        self.backoff_until = float("-inf")
        self.last_error: BaseException | None = None


def frame_free(error: BaseException, depth: int = CHAIN_DEPTH) -> BaseException:
    """A copy of ``error`` that keeps no traceback, hence no frame and no frame's locals, alive.

    The copy has the same type, ``args`` (so the same message) and attributes, and a copy of
    the first ``depth`` links of its cause and context chain; exceptions among its arguments
    and attributes (an ``ExceptionGroup``'s members, a wrapped error) are copied the same way.
    It is made without calling ``__init__``. An error that cannot be copied so (a ``__new__``
    that wants other arguments, a ``__str__`` that needs what was not copied) becomes a plain
    :class:`Exception` whose message is ``"TypeName: message"``.
    """
    cls = type(error)
    try:
        args = tuple(_scrub(v, depth - 1) for v in error.args)
        copy = cls.__new__(cls, *args)
        copy.args = args
        attributes = getattr(error, "__dict__", None)
        if attributes:
            copy.__dict__.update({k: _scrub(v, depth - 1) for k, v in attributes.items()})
        str(copy)
    except Exception:  # see the docstring: the text survives, the type does not
        copy = Exception(f"{cls.__name__}: {_text(error)}")
    if depth > 0:
        copy.__context__ = _scrub(error.__context__, depth - 1)
        copy.__cause__ = _scrub(error.__cause__, depth - 1)
    copy.__suppress_context__ = error.__suppress_context__
    return copy


def _scrub(value: Any, depth: int) -> Any:
    """``value`` without frames: exceptions copied frame-free (``None`` past ``depth``)."""
    if isinstance(value, BaseException):
        return frame_free(value, depth) if depth > 0 else None
    if isinstance(value, types.TracebackType | types.FrameType):
        return None
    if type(value) in (list, tuple) and any(isinstance(v, BaseException) for v in value):
        return type(value)(_scrub(v, depth - 1) for v in value) if depth > 0 else None
    return value


def _text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:  # a broken __str__: the type name is the message
        return "<unprintable>"


class ReadThrough(Generic[F]):
    """The per-function decision state.

    Args:
        backoff: the first failure back-off, in seconds.
        backoff_max: the longest failure back-off, in seconds.
        max_states: how many keys' states to keep (:data:`FAILURE_STATES`). The table is kept
            in least-recently-used order (a failure or a refused call during the back-off is a
            use); past ``max_states`` the oldest state without a fetch in flight is forgotten,
            so a failure costs constant work and the table constant memory.
    """

    __slots__ = ("backoff", "backoff_max", "max_states", "states")

    def __init__(self, *, backoff: float, backoff_max: float, max_states: int = FAILURE_STATES):
        self.backoff = backoff
        self.backoff_max = backoff_max
        self.max_states = max_states
        self.states: OrderedDict[Hashable, KeyState[F]] = OrderedDict()

    def decide(
        self,
        key: Hashable,
        entry: Entry | None,
        *,
        now: float,
        mono: float,
        new_flight: Callable[[], F],
    ) -> tuple[Action, KeyState[F] | None, F | None]:
        """Decide what a caller holding ``entry`` (the best the layers had) does.

        For :attr:`Action.FETCH` and :attr:`Action.REFRESH` a new flight is made with
        ``new_flight`` and registered; the caller must end it with :meth:`succeed`,
        :meth:`fail` or :meth:`abandon`.
        """
        freshness = classify(entry, now)
        if freshness is Freshness.FRESH:
            return Action.HIT, None, None
        state = self.states.get(key)
        if state is not None and state.flight is not None and state.flight.stranded():
            stranded = state.flight
            self.abandon(key, stranded)
            stranded.dropped()
            state = self.states.get(key)
        backing_off = state is not None and mono < state.backoff_until
        if backing_off:
            self.states.move_to_end(key)  # a key still asked for keeps its back-off
        if freshness is Freshness.STALE:
            if (state is not None and state.flight is not None) or backing_off:
                return Action.STALE, state, None
            state, flight = self._start(key, state, new_flight)
            flight.queued = True
            return Action.REFRESH, state, flight
        if state is not None and state.flight is not None:
            flight = state.flight
            if flight.queued:  # a refresh not started yet: never wait behind a queue
                flight.queued = False
                return Action.FETCH, state, flight
            return Action.WAIT, state, flight
        if backing_off:
            return Action.BACKOFF, state, None
        return Action.FETCH, *self._start(key, state, new_flight)

    def _start(
        self, key: Hashable, state: KeyState[F] | None, new_flight: Callable[[], F]
    ) -> tuple[KeyState[F], F]:
        if state is None:
            state = self.states[key] = KeyState()
        flight = state.flight = new_flight()
        return state, flight

    def begin(self, key: Hashable, flight: F) -> bool:
        """A refresh's job starts (or gives up): whether it leads ``flight``. ``False`` when a
        caller took the flight over meanwhile (it leads it) or an invalidation detached it:
        then the job does nothing."""
        if not flight.queued:
            return False
        flight.queued = False
        state = self.states.get(key)
        return state is not None and state.flight is flight

    def succeed(self, key: Hashable, flight: F) -> bool:
        """End ``flight`` with a value; returns whether the value may be stored."""
        state = self.states.get(key)
        if state is not None and state.flight is flight:
            del self.states[key]  # success forgets the failure history
        return flight.cacheable

    def fail(
        self, key: Hashable, flight: F, error: BaseException, *, mono: float, draw: float
    ) -> float:
        """End ``flight`` with ``error``; starts the key's back-off and returns its length.

        ``draw`` in ``[0, 1)`` picks the jitter ("equal jitter": the back-off lasts at least half
        its ceiling, so a broken backend is not hammered).
        """
        states = self.states
        state = states.get(key)
        if state is None:  # invalidated and forgotten meanwhile: the failure still counts
            state = states[key] = KeyState()
        else:
            states.move_to_end(key)
        if state.flight is flight:
            state.flight = None
        state.failures += 1
        state.last_error = frame_free(error)
        delay = backoff_delay(
            state.failures, base=self.backoff, cap=self.backoff_max, draw=draw, spread=0.5
        )
        state.backoff_until = max(state.backoff_until, mono + delay)
        self._evict()
        return delay

    def abandon(self, key: Hashable, flight: F) -> None:
        """End ``flight`` without an outcome (cancelled, or a refresh that could not start)."""
        state = self.states.get(key)
        if state is not None and state.flight is flight:
            state.flight = None
            if state.failures == 0:
                del self.states[key]

    def invalidate(self, key: Hashable) -> None:
        """A caller dropped ``key``: the fetch in flight (read before now) must not be stored.

        The flight is detached so that callers arriving after the invalidation start a new
        fetch instead of waiting for the old one. The back-off is kept: invalidating is no
        reason to hammer a failing backend.
        """
        state = self.states.get(key)
        if state is not None and state.flight is not None:
            state.flight.cacheable = False
            state.flight = None
            if state.failures == 0:
                del self.states[key]

    def retry_after(self, state: KeyState[F], mono: float) -> float:
        """Seconds until the key's back-off ends."""
        return max(0.0, state.backoff_until - mono)

    def _evict(self) -> None:
        """Forget the least recently used states past :attr:`max_states`: constant work per
        call (each failure adds at most one state); a state whose fetch is in flight is in use
        and goes to the back instead, at most once per state per call."""
        states = self.states
        excess = len(states) - self.max_states
        for _ in range(len(states)):  # each state is looked at once at most
            if excess <= 0:
                return
            key, state = states.popitem(last=False)
            if state.flight is None:
                excess -= 1
            else:
                states[key] = state
