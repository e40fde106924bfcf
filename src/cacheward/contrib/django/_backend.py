"""``RedisCache``: a Django cache backend with cacheward's guarantees.

What it changes for a Django project, without changing a call site:

- **Bounded.** Every Redis command has a socket and connect timeout (0.1 s by default) and no
  client-side retries; a hung or dead Redis costs a caller at most one timeout, and then the
  breaker skips Redis for ``BREAKER_RESET`` seconds: reads are misses, writes are skipped.
- **A Redis outage does not become database load.** While Redis is unreachable, values go to a
  small in-process fallback (``FALLBACK_MAXSIZE`` entries, each with its own timeout), so each
  key costs each process one computation per timeout rather than one per request. The fallback
  is dropped as soon as Redis answers again.
- **get_or_set is single-flight.** Concurrent callers of one key in a process share one call of
  the default (threads, and ``aget_or_set`` callers, run in Django's sync thread); across
  processes one takes the key's lease in Redis and the others wait for its value, at most
  ``FILL_TIMEOUT`` seconds, and then compute it themselves rather than hang.
- **Safe serialization.** Values are pickled and HMAC-signed with a key derived from
  ``SECRET_KEY`` (or ``SIGNING_KEY``); bytes that are corrupt, foreign or tampered with are a
  miss, never unpickled. ``"SERIALIZER": "json"`` stores JSON instead.
"""

from __future__ import annotations

import functools
import hashlib
import time
from collections.abc import Callable
from typing import Any, Final

import cachetools
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.cache.backends.base import DEFAULT_TIMEOUT, BaseCache

from cacheward import _forksafe, _testmode
from cacheward._backend_breaker import CircuitBreaker
from cacheward._coalesce import coalesce
from cacheward._config import check_positive_int, duration
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._core.leasewait import LeaseWait
from cacheward._errors import (
    CircuitOpen,
    ConfigurationError,
    ConfigurationTypeError,
    FetchTimeout,
)
from cacheward._redis import RedisLayer
from cacheward._serialize import JsonSerializer, PickleSerializer, Serializer, UnstorableValue

__all__ = ["RedisCache"]

#: Entries stored with ``timeout=None`` ("forever") live this long in Redis.
_FOREVER: Final = 10 * 365 * 24 * 3600.0

_OPTIONS: Final = {
    "SOCKET_TIMEOUT": 0.1,
    "CONNECT_TIMEOUT": None,
    "MAX_CONNECTIONS": 64,
    "SERIALIZER": "pickle",
    "SIGNING_KEY": None,
    "BREAKER_FAILURES": 3,
    "BREAKER_RESET": 5.0,
    "FALLBACK_MAXSIZE": 10_000,
    "FILL_TIMEOUT": 5.0,
    "LEASE_TTL": 15.0,
    "STALE_IF_ERROR": 0.0,
    "PREFIX": "cacheward",
}


class _Stats:
    __slots__ = (
        "fallback_hits",
        "fill_waits",
        "fills",
        "hits",
        "lease_waits",
        "misses",
        "redis_errors",
        "redis_skips",
        "stale_on_error",
    )

    fallback_hits: int
    fill_waits: int
    fills: int
    hits: int
    lease_waits: int
    misses: int
    redis_errors: int
    redis_skips: int
    stale_on_error: int

    def __init__(self) -> None:
        for name in self.__slots__:
            setattr(self, name, 0)

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in self.__slots__}


class _Shared:
    """Everything one configured cache shares between Django's per-thread backend objects: the
    Redis layer and its breaker, the in-process fallback, the single-flight, the counters."""

    def __init__(self, location: str, options: dict[str, Any], name: str) -> None:
        timeout = duration("OPTIONS['SOCKET_TIMEOUT']", options["SOCKET_TIMEOUT"], allow_zero=False)
        connect = options["CONNECT_TIMEOUT"]
        self.layer = RedisLayer.from_url(
            location,
            timeout=timeout,
            connect_timeout=timeout if connect is None else connect,
            max_connections=check_positive_int(
                "OPTIONS['MAX_CONNECTIONS']", options["MAX_CONNECTIONS"]
            ),
            prefix=str(options["PREFIX"]),
            namespace="django",
            serializer=_serializer(options),
            name=f"django-{name}",
        )
        self.breaker = CircuitBreaker(
            failure_threshold=check_positive_int(
                "OPTIONS['BREAKER_FAILURES']", options["BREAKER_FAILURES"]
            ),
            reset_timeout=duration(
                "OPTIONS['BREAKER_RESET']", options["BREAKER_RESET"], allow_zero=False
            ),
            failure_on=lambda error: True,
            name=f"django-{name}-redis",
        )
        self.fill_timeout = duration(
            "OPTIONS['FILL_TIMEOUT']", options["FILL_TIMEOUT"], allow_zero=False
        )
        self.lease_ttl = duration("OPTIONS['LEASE_TTL']", options["LEASE_TTL"], allow_zero=False)
        self.stale_if_error = duration("OPTIONS['STALE_IF_ERROR']", options["STALE_IF_ERROR"])
        self.fallback: cachetools.LRUCache[str, Entry] = cachetools.LRUCache(
            maxsize=check_positive_int("OPTIONS['FALLBACK_MAXSIZE']", options["FALLBACK_MAXSIZE"])
        )
        self.lock = _forksafe.lock()
        self.redis_down = False
        self.stats = _Stats()
        # Single-flight per key in this process; a waiter past fill_timeout computes itself.
        self.fill = coalesce(timeout=self.fill_timeout, key=lambda made, *_: made)(self._fill)

    # --- Redis behind the breaker; the fallback while it is down ---

    def redis(self, op: Callable[..., Any], *args: Any) -> tuple[bool, Any]:
        """``(True, op(*args))``, or ``(False, None)`` when Redis failed or is skipped."""
        try:
            self.breaker.before_call()
        except CircuitOpen:
            self.stats.redis_skips += 1
            return False, None
        try:
            result = op(*args)
        except Exception as exc:
            self.breaker.record(exc)
            self.stats.redis_errors += 1
            self.redis_down = True
            return False, None
        self.breaker.record(None)
        return True, result

    def answered(self) -> None:
        """Redis replied: what the fallback holds may be older than what Redis now has."""
        if self.redis_down:
            with self.lock:
                self.redis_down = False
                self.fallback.clear()

    def _unsent(self) -> int:
        """Reads the layer answered without asking Redis (a stalled Redis, a full pool)."""
        counts = self.layer._counters.counts
        return counts["stalled"] + counts["pool_exhausted"]

    def read(self, key: CacheKey) -> Entry | None:
        unsent = self._unsent()
        ok, entry = self.redis(self.layer.get, key)
        if ok and entry is not None:
            self.answered()
            return entry  # type: ignore[no-any-return]
        if ok and self._unsent() == unsent:
            self.answered()  # a miss Redis itself reported
            return None
        # Failed, skipped, or not sent: while Redis cannot answer, the fallback does. (Another
        # thread's unsent read can make a real miss look unsent: then the fallback is asked,
        # which only errs on the side of sparing the database.)
        with self.lock:
            entry = self.fallback.get(key.text)
        if entry is not None:
            self.stats.fallback_hits += 1
        return entry

    def write(self, key: CacheKey, entry: Entry, token: int = 0) -> bool:
        ok, _ = self.redis(self.layer.set_fenced, key, entry, token)
        if ok:
            self.answered()
        else:
            with self.lock:
                self.fallback[key.text] = entry
        return ok

    def forget(self, key: CacheKey) -> bool:
        """Delete ``key`` everywhere; whether it was there (in Redis or the fallback)."""
        with self.lock:
            local = self.fallback.pop(key.text, None) is not None
        layer = self.layer
        ok, removed = self.redis(lambda: layer._sync().delete(layer.redis_key(key)))
        if ok:
            self.answered()
        return local or bool(removed)

    # --- get_or_set's fill: one per key in the process, one per key across processes ---

    def _fill(self, made: str, key: CacheKey, default: Any, seconds: float | None) -> Any:
        entry = self.read(key)
        now = time.time()
        if entry is not None and now < entry.fresh_until:
            return entry.value  # another process filled it while this one queued
        token = self._lease(key)
        if token is None:  # another process holds the lease: wait for its value, bounded
            self.stats.lease_waits += 1
            wait = LeaseWait(start=time.monotonic(), timeout=self.fill_timeout)
            while (delay := wait.next_delay(time.monotonic())) is not None:
                time.sleep(delay)
                found = self.read(key)
                if found is not None and time.time() < found.fresh_until:
                    return found.value
                token = self._lease(key)  # a holder that died left its lease to expire
                if token is not None:
                    break
        self.stats.fills += 1
        try:
            try:
                value = default() if callable(default) else default
            except Exception:
                if entry is not None and time.time() < entry.error_until:
                    self.stats.stale_on_error += 1
                    return entry.value
                raise
            if seconds is None or seconds > 0:
                self.write(key, self.entry(value, seconds), token or 0)
            return value
        finally:
            if token:  # after the write: a waiter must find the value, not a free lease
                self.redis(self.layer.release_lease, key, token)

    def _lease(self, key: CacheKey) -> int | None:
        """The lease's token; ``0`` when Redis cannot be asked (fill without a lease)."""
        ok, token = self.redis(functools.partial(self.layer.acquire_lease, key, ttl=self.lease_ttl))
        return token if ok else 0

    def entry(self, value: Any, seconds: float | None) -> Entry:
        now = time.time()
        until = now + (_FOREVER if seconds is None else seconds)
        return Entry(value, now, until, until, until + self.stale_if_error)


_SHARED: dict[tuple[str, str], _Shared] = {}
_SHARED_LOCK = _forksafe.lock()


def _serializer(options: dict[str, Any]) -> Serializer:
    chosen = options["SERIALIZER"]
    if isinstance(chosen, Serializer):
        return chosen
    if chosen == "json":
        return JsonSerializer()
    if chosen != "pickle":
        raise ConfigurationError(
            f"OPTIONS['SERIALIZER'] must be 'pickle', 'json' or a cacheward.Serializer, "
            f"got {chosen!r}"
        )
    key = options["SIGNING_KEY"]
    if key is None:
        secret = getattr(settings, "SECRET_KEY", "")
        if not secret:
            raise ConfigurationError(
                "the pickle serializer signs values with a key derived from SECRET_KEY, which "
                "is empty; set SECRET_KEY, OPTIONS['SIGNING_KEY'] (32+ bytes), or "
                "OPTIONS['SERIALIZER'] = 'json'"
            )
        key = hashlib.sha256(b"cacheward.contrib.django:" + str(secret).encode()).digest()
    if isinstance(key, str):
        key = key.encode()
    return PickleSerializer(key=key)


class RedisCache(BaseCache):  # type: ignore[misc]  # Django ships no type hints
    """A Django cache backend on Redis with cacheward's guarantees (see the module docstring).

    ``CACHES = {"default": {"BACKEND": "cacheward.contrib.django.RedisCache", "LOCATION":
    "redis://127.0.0.1:6379/0"}}``; ``LOCATION`` may be a ``redis+sentinel://`` URL. Settings
    go in ``OPTIONS`` (see ``docs/django.md``); an unknown one fails at construction.
    """

    def __init__(self, server: object, params: dict[str, Any]) -> None:
        super().__init__(params)
        location = server[0] if isinstance(server, (list, tuple)) and server else server
        if not isinstance(location, str) or not location:
            raise ConfigurationTypeError(
                f"LOCATION must be a redis:// or redis+sentinel:// URL, got {server!r}"
            )
        given = dict(params.get("OPTIONS") or {})
        unknown = sorted(set(given) - set(_OPTIONS))
        if unknown:
            raise ConfigurationError(
                f"unknown OPTIONS {', '.join(unknown)} for cacheward.contrib.django.RedisCache "
                f"(known: {', '.join(sorted(_OPTIONS))})"
            )
        options = {**_OPTIONS, **given}
        identity = (location, repr(sorted(options.items(), key=lambda kv: kv[0])))
        with _SHARED_LOCK:
            shared = _SHARED.get(identity)
            if shared is None:
                name = str(params.get("KEY_PREFIX") or "default")
                shared = _SHARED[identity] = _Shared(location, options, name)
        self._shared = shared

    # Redis keys have no length or character limits (and ours are hashed): no warnings.
    def validate_key(self, key: str) -> None:
        return None

    def _key(self, key: Any, version: int | None) -> tuple[str, CacheKey]:
        made = self.make_and_validate_key(key, version=version)
        return made, CacheKey(made, "django", (made,), {}, ("key",))

    def _seconds(self, timeout: Any) -> float | None:
        if timeout is DEFAULT_TIMEOUT:
            timeout = self.default_timeout
        return None if timeout is None else float(timeout)

    # --- the cache API ---

    def get(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        if _testmode.ACTIVE and _testmode.bypassed():
            return default
        _, ckey = self._key(key, version)
        entry = self._shared.read(ckey)
        if entry is not None and time.time() < entry.fresh_until:
            self._shared.stats.hits += 1
            return entry.value
        self._shared.stats.misses += 1
        return default

    def set(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> None:
        if _testmode.ACTIVE and _testmode.bypassed():
            return
        _, ckey = self._key(key, version)
        seconds = self._seconds(timeout)
        if seconds is not None and seconds <= 0:
            self._shared.forget(ckey)
            return
        self._shared.write(ckey, self._shared.entry(value, seconds))

    def add(
        self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> bool:
        if _testmode.ACTIVE and _testmode.bypassed():
            return True
        _, ckey = self._key(key, version)
        seconds = self._seconds(timeout)
        shared = self._shared
        entry = shared.entry(value, seconds)
        if seconds is not None and seconds <= 0:
            return False
        layer = shared.layer

        try:
            payload = layer.encode(entry, ckey)
        except (TypeError, ValueError, UnstorableValue):
            return False  # the serializer refuses the value: not stored (and not a Redis fault)

        def set_if_absent() -> bool:
            ttl_ms = max(1, int((entry.error_until - time.time()) * 1000))
            return bool(layer._sync().set(layer.redis_key(ckey), payload, nx=True, px=ttl_ms))

        ok, added = shared.redis(set_if_absent)
        if ok:
            return bool(added)
        with shared.lock:
            if ckey.text in shared.fallback:
                return False
            shared.fallback[ckey.text] = entry
        return True

    def get_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        if _testmode.ACTIVE and _testmode.bypassed():
            return default() if callable(default) else default
        made, ckey = self._key(key, version)
        shared = self._shared
        entry = shared.read(ckey)
        if entry is not None and time.time() < entry.fresh_until:
            shared.stats.hits += 1
            return entry.value
        shared.stats.misses += 1
        seconds = self._seconds(timeout)
        try:
            return shared.fill(made, ckey, default, seconds)
        except FetchTimeout:
            # Another thread's fill took longer than FILL_TIMEOUT: compute, never hang.
            shared.stats.fill_waits += 1
            return default() if callable(default) else default

    async def aget_or_set(
        self, key: Any, default: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None
    ) -> Any:
        # Django's own aget_or_set is aget + default() + aadd: no single-flight. Run ours in
        # Django's sync thread, as its other async methods run theirs (thread_sensitive, so a
        # default that uses the ORM keeps its connection).
        return await sync_to_async(self.get_or_set, thread_sensitive=True)(
            key, default, timeout, version
        )

    def touch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT, version: int | None = None) -> bool:
        _, ckey = self._key(key, version)
        entry = self._shared.read(ckey)
        if entry is None or time.time() >= entry.fresh_until:
            return False
        self._shared.write(ckey, self._shared.entry(entry.value, self._seconds(timeout)))
        return True

    def delete(self, key: Any, version: int | None = None) -> bool:
        _, ckey = self._key(key, version)
        return self._shared.forget(ckey)

    def clear(self) -> None:
        shared = self._shared
        with shared.lock:
            shared.fallback.clear()
        shared.redis(shared.layer.clear)

    def close(self, **kwargs: Any) -> None:
        # Django calls this at the end of every request: the pool is shared and stays open.
        return None

    def stats(self) -> dict[str, Any]:
        """This cache's counters (for every thread's backend object together), the Redis
        layer's events and the breaker's state."""
        shared = self._shared
        return {
            **shared.stats.as_dict(),
            "breaker": shared.breaker.state.value,
            "fallback_size": len(shared.fallback),
            "redis": shared.layer.events(),
        }
