"""Cache entries and the freshness rule."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any, Final

__all__ = [
    "MAX_CLOCK_SKEW",
    "Entry",
    "Freshness",
    "bounded",
    "classify",
    "make_entry",
    "usable_on_error",
]


class Freshness(enum.Enum):
    """Where an entry stands at a given moment."""

    FRESH = "fresh"
    """Younger than ``ttl``: served as is."""
    STALE = "stale"
    """Past ``ttl`` but within ``stale_ttl`` after it: may be served while a refresh runs."""
    USABLE_ON_ERROR = "usable-on-error"
    """Past the stale window but within ``stale_if_error``: served only when a fetch fails,
    times out or is refused (RFC 5861's stale-if-error)."""
    EXPIRED = "expired"
    """Past every limit: never served."""


#: Interned stamp tails (see :class:`Entry`): entries written by one function share a handful.
_TAILS: dict[tuple[bool, float, float, float], tuple[bool, float, float, float]] = {}
_TAILS_MAX: Final = 8192


if TYPE_CHECKING:
    _Stamped = object
else:
    # At run time an entry *is* its ``fresh_until`` (a float subclass): the stamp lives in the
    # entry object itself, not in a float object of its own (24 bytes an entry), and the hot
    # path's freshness test is one float comparison, ``now < entry``. Type checkers see a plain
    # class: the float is an implementation detail, not part of the API.
    _Stamped = float


class Entry(_Stamped):
    """A cached value with its own wall-clock stamps, so every process judges it alike.

    Attributes:
        value: the cached value.
        created: when the value was stored (seconds since the epoch).
        fresh_until: the value is fresh while ``now < fresh_until``.
        stale_until: the value may be served stale (and refreshed) while ``now < stale_until``.
        error_until: the value may be served when a fetch fails while ``now < error_until``;
            this is the entry's stale limit, the last moment it may be served at all.

    Memory: an in-process layer holds one of these per key, so it is small: 56 bytes, stamps
    included. ``fresh_until`` (the stamp the hit path reads) is the entry's own float value
    (``now < entry`` is the freshness test; ``float(entry)`` is ``fresh_until``); the other
    three stamps are kept as offsets from it in a tuple shared by every entry with the same
    offsets (a function's entries have a few: its ``ttl``, ``stale_ttl`` and jitter steps), or
    as absolute values when an offset would not give the stamp back exactly. Apart from that
    comparison an entry does not behave as a number: it is always true, equal only to an entry
    with the same value and stamps, and unhashable.
    """

    __slots__ = ("_tail", "value")

    if TYPE_CHECKING:
        _tail: tuple[bool, float, float, float]

        @property
        def value(self) -> Any: ...
        @property
        def fresh_until(self) -> float: ...

        def __init__(
            self,
            value: Any,
            created: float,
            fresh_until: float,
            stale_until: float,
            error_until: float | None = None,
        ) -> None: ...

    else:
        fresh_until = float.real  # the float value itself, as an exact float

        def __new__(
            cls,
            value: Any,
            created: float,
            fresh_until: float,
            stale_until: float,
            error_until: float | None = None,
        ) -> Entry:
            if error_until is None:
                error_until = stale_until
            self = float.__new__(cls, fresh_until)
            self.value = value
            to_created = fresh_until - created
            to_stale = stale_until - fresh_until
            to_error = error_until - fresh_until
            if (
                fresh_until - to_created == created
                and fresh_until + to_stale == stale_until
                and fresh_until + to_error == error_until
            ):
                tail = (True, to_created, to_stale, to_error)
                shared = _TAILS.get(tail)
                if shared is not None:
                    tail = shared
                elif len(_TAILS) < _TAILS_MAX:
                    _TAILS[tail] = tail
            else:
                tail = (False, created, stale_until, error_until)
            self._tail = tail
            return self

    @property
    def created(self) -> float:
        tail = self._tail
        return self.fresh_until - tail[1] if tail[0] else tail[1]

    @property
    def stale_until(self) -> float:
        tail = self._tail
        return self.fresh_until + tail[2] if tail[0] else tail[2]

    @property
    def error_until(self) -> float:
        tail = self._tail
        return self.fresh_until + tail[3] if tail[0] else tail[3]

    def _fields(self) -> tuple[Any, float, float, float, float]:
        return (self.value, self.created, self.fresh_until, self.stale_until, self.error_until)

    def __reduce__(self) -> tuple[type[Entry], tuple[Any, float, float, float, float]]:
        return (Entry, self._fields())

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r}, created={self.created!r}, "
            f"fresh_until={self.fresh_until!r}, stale_until={self.stale_until!r}, "
            f"error_until={self.error_until!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            # Never equal to a number (float's own comparison would say so): False, not
            # NotImplemented, which would hand the question to float.__eq__.
            return False if isinstance(other, (int, float)) else NotImplemented
        return self._fields() == other._fields()

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __bool__(self) -> bool:
        return True

    __hash__ = None  # type: ignore[assignment]


#: How far in the future another process's ``created`` stamp may lie (clock skew between
#: hosts); an entry claiming more is not trusted (see :func:`bounded`).
MAX_CLOCK_SKEW: Final = 60.0


def bounded(
    entry: Entry, *, now: float, ttl: float, stale_ttl: float, stale_if_error: float
) -> Entry | None:
    """Return ``entry`` with its stamps cut to what this reader's settings would have written.

    A shared layer's entry carries stamps written by another process (or by anyone able to
    write to Redis): an entry ``created`` more than :data:`MAX_CLOCK_SKEW` seconds in the future
    is refused (``None``), and one whose windows are longer than this reader's ``ttl`` /
    ``stale_ttl`` / ``stale_if_error`` is served only within those, so no stamp can pin a value
    for longer than the reader allows. An entry already within bounds is returned as is.
    """
    # The stamps as the properties compute them, read once (this runs on every shared hit).
    fresh_until = entry.fresh_until
    relative, created, stale_until, error_until = entry._tail
    if relative:
        created, stale_until, error_until = (
            fresh_until - created,
            fresh_until + stale_until,
            fresh_until + error_until,
        )
    if not created <= now + MAX_CLOCK_SKEW:
        return None
    fresh = min(fresh_until, created + ttl)
    stale = min(stale_until, fresh + stale_ttl)
    error = min(error_until, fresh + max(stale_ttl, stale_if_error))
    if fresh == fresh_until and stale == stale_until and error == error_until:
        return entry
    return Entry(entry.value, created, fresh, max(stale, fresh), max(error, stale, fresh))


def classify(entry: Entry | None, now: float) -> Freshness:
    """Return the freshness of ``entry`` at wall-clock time ``now`` (``None`` is expired).

    The cached hot path inlines the first comparison (``now < entry.fresh_until``) for speed;
    this function is the definition it must agree with.
    """
    if entry is None:
        return Freshness.EXPIRED
    if now < entry.fresh_until:
        return Freshness.FRESH
    if now < entry.stale_until:
        return Freshness.STALE
    if now < entry.error_until:
        return Freshness.USABLE_ON_ERROR
    return Freshness.EXPIRED


def usable_on_error(entry: Entry | None, now: float) -> bool:
    """Whether ``entry`` may be served at ``now`` because a fetch failed or was refused."""
    return entry is not None and now < entry.error_until


_JITTER_STEPS: Final = 64


def make_entry(
    value: Any,
    *,
    now: float,
    ttl: float,
    stale_ttl: float,
    stale_if_error: float,
    jitter: float,
    draw: float,
) -> Entry:
    """Build the entry for a value fetched at ``now``.

    The freshness lifetime is shortened by up to ``jitter`` (a fraction of ``ttl``), chosen by
    ``draw`` in ``[0, 1)``, so keys written together do not all expire together. The stale
    windows follow the (jittered) freshness lifetime; ``stale_if_error`` is measured from the
    end of freshness too and is never shorter than ``stale_ttl``.
    """
    # The draw is rounded to one of 64 steps: expiries still spread over the jitter window at
    # the same rate (a 6 s window has a step every 94 ms), and the entries of one function
    # share a few stamp tails (see Entry; about 180 bytes each), which keeps the in-process
    # layer small per entry.
    lifetime = ttl * (1.0 - jitter * (int(draw * _JITTER_STEPS) / _JITTER_STEPS))
    fresh_until = now + lifetime
    return Entry(
        value,
        now,
        fresh_until,
        fresh_until + stale_ttl,
        fresh_until + max(stale_ttl, stale_if_error),
    )
