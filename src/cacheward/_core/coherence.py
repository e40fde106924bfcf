"""The L1 age bound while the backplane cannot be trusted (pure: every time is given).

While the channel carrying other processes' invalidations is down (or was down: messages may
have been missed), an in-process entry is served without asking the shared layer only while
the moment it was last known current is less than ``max_age`` ago. That moment is the later
of: when the channel was last heard (everything announced before was received), when the
entry was created, and when it was last re-validated against the shared layer.

After the channel comes back, messages sent while it was down may have been missed: every
entry held then is re-validated once (:func:`unverified`) before it is served fresh again.

A re-validation that finds the entry gone from the shared layer must tell *lost* from
*invalidated*. A restart, ``FLUSHALL``, an eviction or an expiry loses entries and the marks of
invalidations alike; an invalidation (a key's own, a tag's, a function's ``cache_clear``)
leaves a mark in microseconds of the server's clock, kept ``fence_ttl`` (a key's) or
``tag_ttl`` (longer than any stored entry). So an entry is known invalidated only when a mark
at or after its creation is there
(:func:`invalidated`); without one it was lost, and becomes a :func:`suspect`: never served
fresh (nor stale while refreshing) again, refetched, and kept only as the key's fallback,
served when that fetch fails or is refused, within its own stale limit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cacheward._core.entry import Entry
from cacheward._core.tags import fenced

__all__ = [
    "Suspect",
    "invalidated",
    "known_current",
    "needs_check",
    "still_current",
    "suspect",
    "unverified",
]


def known_current(*, since: float, created: float, checked: float | None) -> float:
    """The last moment an in-process entry is known to have been current."""
    if checked is not None:
        return checked
    return max(since, created)


def needs_check(
    *, now: float, since: float, created: float, checked: float | None, max_age: float
) -> bool:
    """Whether an in-process hit must be re-validated against the shared layer first."""
    return now - known_current(since=since, created=created, checked=checked) >= max_age


def still_current(held: Any, found: Any) -> bool:
    """Whether ``found`` (the shared layer's entry) shows that ``held`` (this process's) is
    still current: the same creation stamp and an equal value. Stamps alone could tie (two
    writes in the same clock tick); a value that cannot be compared counts as changed (the
    shared layer's entry is then taken, which is always safe)."""
    if found.created != held.created:
        return False
    try:
        return bool(found.value is held.value or found.value == held.value)
    except Exception:
        return False


def unverified(*, resynced: float, created: float, checked: float | None) -> bool:
    """Whether an in-process entry held when the channel came back (at ``resynced``) still
    needs its one re-validation: neither made nor re-validated after then (a stamp in the same
    clock tick cannot tell, so it is checked)."""
    return (checked if checked is not None else created) <= resynced


def invalidated(*, created: float, marks: Iterable[Any]) -> bool:
    """Whether the shared layer's ``marks`` (the stored values of the key's own invalidation
    mark, its tags' and its function's ``cache_clear`` mark; ``None`` where absent) show that
    an entry ``created`` then (wall-clock seconds) was invalidated: one at or after its
    creation, in microseconds (the rule ``cache_put.lua`` applies to an unfenced write)."""
    return fenced(created * 1_000_000.0, marks)


class Suspect(Entry):
    """An in-process entry the shared layer lost with no sign of an invalidation (see
    :func:`suspect`); its own type so that serving it can be counted."""

    __slots__ = ()


def suspect(entry: Entry, now: float) -> Suspect | None:
    """``entry`` kept as its key's fallback only: no longer fresh nor stale-servable (both
    windows end at its creation), still usable on error until its ``error_until``; ``None``
    when that has passed too."""
    if now >= entry.error_until:
        return None
    made = entry.created
    return Suspect(entry.value, made, made, made, entry.error_until)
