"""Construction-time checks for the settings that otherwise fail only once running.

Each of these used to be accepted and then silently disable a layer or a bucket (every operation
a swallowed error, i.e. a miss, or a limiter that always falls back). They fail here instead, when
the object is built or the function decorated, with a message naming the argument. The bounds are
argued in docs/redis.md ("Settings refused at construction").
"""

from __future__ import annotations

import re
from typing import Any, Final

from cacheward._config import duration
from cacheward._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "MAX_LIFETIME",
    "MAX_SOCKET_TIMEOUT",
    "URL_SCHEMES",
    "check_caller",
    "check_lifetime",
    "check_not_descriptor",
    "check_socket_timeout",
    "check_url",
]

#: The longest socket timeout accepted, in seconds. A Redis command on one key runs in
#: microseconds and a round trip within a region takes well under 100 ms; a reply later than
#: this is a hung Redis (a fork on a large data set, a slow script, swapping, a failover), which
#: is exactly what must become a miss. Until the breaker opens, every concurrent caller waits out
#: one timeout: ``timeout=300`` would turn a hung Redis into five minutes of hung callers.
MAX_SOCKET_TIMEOUT: Final = 5.0

#: The longest ``ttl``, ``stale_ttl`` or ``stale_if_error`` accepted: 100 years, in seconds. Every
#: write must stay valid: the three add up, in milliseconds, to a Redis expiry that must fit in a
#: 64-bit integer once added to the server's clock and that Lua scripts handle as doubles, exact
#: only up to 2**53 ms (about 285,000 years). Three centuries plus today's date in milliseconds
#: (about 1e13) stays far below either limit; ``ttl=1e306`` made every write fail.
MAX_LIFETIME: Final = 100 * 365.25 * 86_400

#: URL schemes a Redis URL may have: TCP, TLS, and a Unix socket.
URL_SCHEMES: Final = ("redis", "rediss", "unix")

# A host name (RFC 1123 labels) or an IPv4 address; IPv6 comes in brackets and is checked apart.
_HOST = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
                   r"(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$")  # fmt: skip


def check_socket_timeout(name: str, value: object) -> float:
    """``value`` as seconds in ``(0, MAX_SOCKET_TIMEOUT]``, or raise naming ``name``.

    Zero is refused: redis-py reads ``socket_timeout=0`` as a non-blocking socket, so every
    command fails at once.
    """
    seconds = duration(name, value, allow_zero=False)
    if seconds > MAX_SOCKET_TIMEOUT:
        raise ConfigurationError(
            f"{name} must be at most {MAX_SOCKET_TIMEOUT:g} s, got {value!r}: a reply later than "
            "that is a hung Redis, and every caller would wait that long for it before the "
            "breaker opens; use 0.05-0.5 s (the backend is the fallback, not the wait)"
        )
    return seconds


def check_lifetime(name: str, value: object) -> float:
    """``value`` as seconds in ``[0, MAX_LIFETIME]``, or raise naming ``name``."""
    seconds = duration(name, value)
    if seconds > MAX_LIFETIME:
        raise ConfigurationError(
            f"{name} must be at most 100 years ({MAX_LIFETIME:.0f} s), got {value!r}: longer "
            "lifetimes overflow Redis expiries and every write of the entry would fail"
        )
    return seconds


def check_url(url: object) -> str:
    """A Redis URL that can be connected to, or raise naming ``url``.

    The scheme, the port (1-65535), the host's syntax and the database number are checked. A
    host name is *not* resolved: name resolution at construction would make a service's start
    depend on DNS being up at that instant, and a name that does not resolve yet (a container
    starting later, service discovery catching up) may resolve a second later; at run time an
    unresolvable host is a connection error like any other, hence a miss.
    """
    if not isinstance(url, str):
        raise ConfigurationTypeError(f"url must be a str, got {type(url).__name__}")
    import urllib.parse  # at first use: it imports ipaddress, a third of cacheward's import

    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in URL_SCHEMES or "://" not in url:
        raise ConfigurationError(
            f"url must start with {', '.join(s + '://' for s in URL_SCHEMES)}, got {url!r}"
        )
    if scheme == "unix":
        if not parts.path:
            raise ConfigurationError(f"url {url!r} names no socket path (unix:///path/redis.sock)")
        return url
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError(f"url {url!r} has an invalid port (1-65535)") from None
    if port == 0:
        raise ConfigurationError(f"url {url!r} has an invalid port (1-65535)")
    host = parts.hostname or ""
    if not (_HOST.match(host) or (":" in host and _ipv6(host))):
        raise ConfigurationError(f"url {url!r} has no valid host name")
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ConfigurationError(f"url {url!r}: the path must be a database number, like /0")
    return url


def _ipv6(host: str) -> bool:
    import ipaddress

    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def check_caller(thing: Any, *, asynchronous: bool, where: str) -> None:
    """Let a layer or limiter refuse, at decoration, a function its client cannot serve.

    Objects with a ``check_caller(asynchronous=, where=)`` method (``RedisLayer``,
    ``RedisTokenBucket``) raise :class:`ConfigurationError` there; others are not checked.
    """
    hook = getattr(thing, "check_caller", None)
    if callable(hook):
        hook(asynchronous=asynchronous, where=where)


def check_not_descriptor(fn: object, decorator: str) -> None:
    """Refuse a ``staticmethod`` or ``classmethod`` object, with the order that works.

    Raises:
        ConfigurationTypeError: ``fn`` is one (the decorator is above ``@staticmethod``).
    """
    if isinstance(fn, staticmethod):
        raise ConfigurationTypeError(
            f"{decorator} is above @staticmethod: put @staticmethod above @cw.{decorator} "
            "(the cached function is then a plain function of the class's namespace)"
        )
    if isinstance(fn, classmethod):
        raise ConfigurationTypeError(
            f"{decorator} does not cache classmethods: cache a @staticmethod (with "
            f"@staticmethod above @cw.{decorator}) or a module-level function, and pass what "
            "the class provides as an argument"
        )
