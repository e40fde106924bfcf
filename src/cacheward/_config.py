"""Validation of settings, shared by every constructor and decorator.

Each check raises :class:`ConfigurationError` (or :class:`ConfigurationTypeError`) with a message
that names the argument and says what to change. Durations accept seconds or a
:class:`datetime.timedelta` and are converted once, when the object is built.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import TypeAlias

from cacheward._clock import SYSTEM_CLOCK, Clock
from cacheward._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "Duration",
    "check_clock",
    "check_fraction",
    "check_positive_int",
    "duration",
    "optional_duration",
]

#: A duration: seconds as an ``int`` or ``float``, or a :class:`datetime.timedelta`.
Duration: TypeAlias = "float | int | timedelta"


def duration(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as seconds, or raise naming ``name``."""
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise ConfigurationTypeError(
            f"{name} must be seconds (int or float) or a datetime.timedelta, "
            f"got {type(value).__name__} {value!r}"
        )
    if math.isnan(seconds) or math.isinf(seconds):
        raise ConfigurationError(f"{name} must be a finite number of seconds, got {value!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigurationError(f"{name} must be {bound} seconds, got {value!r}")
    return seconds


def optional_duration(name: str, value: object, *, allow_zero: bool = True) -> float | None:
    """Like :func:`duration`, but ``None`` stays ``None``."""
    return None if value is None else duration(name, value, allow_zero=allow_zero)


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` >= ``minimum``, or raise naming ``name``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigurationTypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ConfigurationError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_fraction(name: str, value: object, *, maximum: float = 1.0) -> float:
    """Return ``value`` as a float in ``[0, maximum]``, or raise naming ``name``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ConfigurationTypeError(f"{name} must be a number, got {type(value).__name__}")
    result = float(value)
    if not 0.0 <= result <= maximum:
        raise ConfigurationError(f"{name} must be between 0 and {maximum}, got {value!r}")
    return result


def check_clock(value: object) -> Clock:
    """Return ``value`` (or the system clock for ``None``) if it looks like a :class:`Clock`."""
    if value is None:
        return SYSTEM_CLOCK
    if not isinstance(value, Clock):
        raise ConfigurationTypeError(
            "clock must provide time(), monotonic(), sleep() and asleep() "
            f"(for example cacheward.testing.FakeClock), got {type(value).__name__}"
        )
    return value
