"""Validation of settings, shared by every constructor and decorator.

Each check raises :class:`ConfigurationError` (or :class:`ConfigurationTypeError`) with a message
that names the argument and says what to change. Durations accept seconds or a
:class:`datetime.timedelta` and are converted once, when the object is built.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias, TypeVar, cast

from cacheward._clock import SYSTEM_CLOCK, Clock
from cacheward._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "Duration",
    "check_clock",
    "check_fraction",
    "check_positive_int",
    "duration",
    "keyword_settings",
    "optional_duration",
]

if TYPE_CHECKING:
    from datetime import timedelta

F = TypeVar("F", bound=Callable[..., Any])

#: A duration: seconds as an ``int`` or ``float``, or a :class:`datetime.timedelta`.
Duration: TypeAlias = "float | int | timedelta"


def duration(name: str, value: object, *, allow_zero: bool = True) -> float:
    """Return ``value`` as seconds, or raise naming ``name``."""
    # A timedelta exists only once ``datetime`` is imported; importing cacheward does not.
    datetime = sys.modules.get("datetime")
    if datetime is not None and isinstance(value, datetime.timedelta):
        seconds = float(value.total_seconds())
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


def keyword_settings(
    name: str, example: str, *, required: tuple[str, ...] = ()
) -> Callable[[F], F]:
    """Make a decorator factory's misuses fail with a message that says what to write.

    ``@cw.cached`` (no parentheses) passes the function as a positional argument, and
    ``cw.cached(60)`` passes a setting positionally; both would otherwise be a bare
    ``TypeError`` about positional arguments. ``required`` keywords left out fail the same way.
    The factory's signature, as type checkers and ``inspect`` see it, is unchanged.
    """

    def decorate(factory: F) -> F:
        @functools.wraps(factory)
        def checked(*args: Any, **kwargs: Any) -> Any:
            if args:
                first = args[0]
                if callable(first):
                    what = getattr(first, "__qualname__", type(first).__name__)
                    raise ConfigurationTypeError(
                        f"cw.{name} needs its settings: write @cw.{name}({example}) above "
                        f"{what}, not @cw.{name} without parentheses"
                    )
                raise ConfigurationTypeError(
                    f"cw.{name} takes its settings as keywords: write cw.{name}({example}), "
                    f"got the positional argument {first!r}"
                )
            missing = [k for k in required if k not in kwargs]
            if missing:
                raise ConfigurationTypeError(
                    f"cw.{name} needs {', '.join(missing)}: write cw.{name}({example})"
                )
            return factory(**kwargs)

        return cast(F, checked)

    return decorate
