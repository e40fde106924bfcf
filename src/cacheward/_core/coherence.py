"""The L1 age bound while the backplane cannot be trusted (pure: every time is given).

While the channel carrying other processes' invalidations is down (or was down: messages may
have been missed), an in-process entry is served without asking the shared layer only while
the moment it was last known current is less than ``max_age`` ago. That moment is the later
of: when the channel was last heard (everything announced before was received), when the
entry was created, and when it was last re-validated against the shared layer.
"""

from __future__ import annotations

from typing import Any

__all__ = ["known_current", "needs_check", "still_current"]


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
