"""Cache entries and the freshness rule."""

from __future__ import annotations

import enum
from typing import Any, Final

__all__ = ["Entry", "Freshness", "classify", "make_entry", "usable_on_error"]


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


class Entry:
    """A cached value with its own wall-clock stamps, so every process judges it alike.

    Attributes:
        value: the cached value.
        created: when the value was stored (seconds since the epoch).
        fresh_until: the value is fresh while ``now < fresh_until``.
        stale_until: the value may be served stale (and refreshed) while ``now < stale_until``.
        error_until: the value may be served when a fetch fails while ``now < error_until``;
            this is the entry's stale limit, the last moment it may be served at all.
    """

    __slots__ = ("created", "error_until", "fresh_until", "stale_until", "value")

    def __init__(
        self,
        value: Any,
        created: float,
        fresh_until: float,
        stale_until: float,
        error_until: float | None = None,
    ) -> None:
        self.value: Final = value
        self.created: Final = created
        self.fresh_until: Final = fresh_until
        self.stale_until: Final = stale_until
        self.error_until: Final = stale_until if error_until is None else error_until

    def _fields(self) -> tuple[Any, float, float, float, float]:
        return (self.value, self.created, self.fresh_until, self.stale_until, self.error_until)

    def __repr__(self) -> str:
        return (
            f"Entry(value={self.value!r}, created={self.created!r}, "
            f"fresh_until={self.fresh_until!r}, stale_until={self.stale_until!r}, "
            f"error_until={self.error_until!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Entry):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]


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
    lifetime = ttl * (1.0 - jitter * draw)
    fresh_until = now + lifetime
    return Entry(
        value,
        now,
        fresh_until,
        fresh_until + stale_ttl,
        fresh_until + max(stale_ttl, stale_if_error),
    )
