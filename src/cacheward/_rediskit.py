"""What the Redis layer and the shared token bucket share: scripts, names, clients, faults.

One place decides what a Redis error means (:func:`classify`) and whether it says Redis is
sick (:func:`sick`); ``RedisLayer`` (through its layer breaker) and ``RedisTokenBucket``
(through its fallback) both act on that one answer.
"""

from __future__ import annotations

import enum
import hashlib
from typing import Any

from cacheward import _forksafe
from cacheward._errors import ConfigurationError, ConfigurationTypeError

__all__ = [
    "INSTALL_HINT",
    "Fault",
    "Script",
    "check_name",
    "classify",
    "client_kind",
    "is_noscript",
    "is_timeout",
    "redis_module",
    "replied",
    "script",
    "sick",
]

INSTALL_HINT = "RedisLayer needs redis-py: pip install 'cacheward[redis]'"


def redis_module() -> Any:
    """The ``redis`` package, or a :class:`ConfigurationError` naming the extra."""
    try:
        import redis
    except ImportError:
        raise ConfigurationError(INSTALL_HINT) from None
    return redis


# --- scripts -------------------------------------------------------------------------------------


class Script:
    """A Lua script shipped as package data, loaded once per server and run with EVALSHA."""

    __slots__ = ("name", "sha", "source")

    def __init__(self, name: str) -> None:
        from importlib import resources  # at first use, not at import (import time)

        self.name = name
        self.source = (resources.files("cacheward") / "resources" / name).read_text("utf-8")
        self.sha = hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    def run(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not is_noscript(exc):
                raise
        # NOSCRIPT means it did not run: loading it and running again is safe.
        client.script_load(self.source)
        return client.evalsha(self.sha, len(keys), *keys, *args)

    async def arun(self, client: Any, keys: tuple[str, ...], args: tuple[Any, ...]) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except Exception as exc:
            if not is_noscript(exc):
                raise
        # NOSCRIPT means it did not run: loading it and running again is safe.
        await client.script_load(self.source)
        return await client.evalsha(self.sha, len(keys), *keys, *args)


_SCRIPTS: dict[str, Script] = {}
_SCRIPTS_LOCK = _forksafe.lock()


def script(name: str) -> Script:
    """The script ``resources/<name>``, read once per process."""
    found = _SCRIPTS.get(name)
    if found is None:
        with _SCRIPTS_LOCK:
            found = _SCRIPTS.get(name) or Script(name)
            _SCRIPTS[name] = found
    return found


# --- faults --------------------------------------------------------------------------------------


class Fault(enum.Enum):
    """What a failed Redis command means."""

    UNREACHABLE = "unreachable"
    """No usable answer: refused or reset connection, timeout, a server loading, busy or
    failing over. Redis (or the path to it) is sick."""
    POOL_FULL = "pool_full"
    """Every pooled connection is busy: this process is saturated, Redis may be fine."""
    KEY = "key"
    """An error about one key (``WRONGTYPE``: someone stored another type there): a miss for
    that key, nothing wrong with Redis."""
    NOSCRIPT = "noscript"
    """The script is not loaded on that server (load it and run again)."""
    OTHER = "other"
    """Any other error reply (a changed password, missing permissions, a bug): Redis answers
    but refuses us, which the layer treats as sick too."""


_UNREACHABLE_NAMES = frozenset(
    {
        "ConnectionError",
        "TimeoutError",
        "BusyLoadingError",
        "ClusterDownError",
        "TryAgainError",
        "MasterDownError",
        "MasterNotFoundError",  # Sentinel: no master named yet (a failover under way)
        "ReadOnlyError",
        "ClusterError",
        "RedisClusterUnreachableError",  # no startup node answered (not a RedisError)
        "SlotNotCoveredError",
    }
)
_UNREACHABLE_REPLIES = ("BUSY", "LOADING", "CLUSTERDOWN", "MASTERDOWN", "TRYAGAIN")


def classify(exc: BaseException) -> Fault:
    """The one reading of a Redis error, for the layer and the shared bucket alike."""
    name = type(exc).__name__
    text = str(exc)
    if name == "MaxConnectionsError" or (
        name == "ConnectionError" and text == "No connection available."
    ):
        return Fault.POOL_FULL
    if is_noscript(exc):
        return Fault.NOSCRIPT
    if "WRONGTYPE" in text:
        return Fault.KEY
    if (
        isinstance(exc, (ConnectionError, TimeoutError, OSError))
        or name in _UNREACHABLE_NAMES
        or text.startswith(_UNREACHABLE_REPLIES)
    ):
        return Fault.UNREACHABLE
    return Fault.OTHER


def sick(fault: Fault) -> bool:
    """The one "is Redis sick" decider: whether a fault counts against Redis (the layer's
    breaker; the bucket's fallback) rather than being a miss of one command."""
    return fault is Fault.UNREACHABLE or fault is Fault.OTHER


def is_noscript(exc: BaseException) -> bool:
    return type(exc).__name__ == "NoScriptError" or str(exc).startswith("NOSCRIPT")


def is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or type(exc).__name__ == "TimeoutError"


def replied(exc: BaseException) -> bool:
    """Whether a failed command still heard from Redis (an error reply, a refused connect)."""
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        return False
    return not (is_timeout(exc) or classify(exc) is Fault.POOL_FULL)


# --- names and clients ---------------------------------------------------------------------------


def client_kind(client: Any) -> tuple[bool, bool]:
    """``(is_async, is_cluster)`` for a redis-py client."""
    redis_module()
    from redis import Redis
    from redis.asyncio import Redis as AsyncRedis
    from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
    from redis.cluster import RedisCluster

    if isinstance(client, AsyncRedisCluster):
        return True, True
    if isinstance(client, AsyncRedis):
        return True, False
    if isinstance(client, RedisCluster):
        return False, True
    if isinstance(client, Redis):
        return False, False
    raise ConfigurationTypeError(
        "client must be a redis-py client (redis.Redis, redis.asyncio.Redis, "
        f"redis.cluster.RedisCluster or redis.asyncio.cluster.RedisCluster), got "
        f"{type(client).__name__}; or use RedisLayer.from_url(url)"
    )


def check_name(name: str, value: object, *, empty: bool, part: bool = False) -> str:
    """A key part: a ``str`` without braces (the Cluster hash tag), globs or whitespace.

    ``part``: a part of a layer's key base, where a colon would make ``prefix="a:b"`` the same
    keys as ``prefix="a", namespace="b"``."""
    if not isinstance(value, str):
        raise ConfigurationTypeError(f"{name} must be a str, got {type(value).__name__}")
    if not value and not empty:
        raise ConfigurationError(f"{name} must not be empty")
    if part and ":" in value:
        raise ConfigurationError(
            f"{name} must not contain a colon (prefix='a:b' would share keys with prefix='a', "
            f"namespace='b'); use prefix and namespace for the parts, got {value!r}"
        )
    if any(c in value for c in "{}*?[]\\ \r\n"):
        raise ConfigurationError(
            f"{name} must not contain braces, glob characters, backslashes or whitespace "
            f"(braces would break the Redis Cluster hash tag), got {value!r}"
        )
    return value
