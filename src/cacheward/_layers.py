"""The layer protocol and the in-process :class:`MemoryLayer`."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Hashable, MutableMapping
from typing import Literal, Protocol, runtime_checkable

from cacheward._config import Duration, check_positive_int, duration
from cacheward._core.breaker import Breaker
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._errors import ConfigurationError

__all__ = [
    "AsyncLayer",
    "AsyncLeasingLayer",
    "Layer",
    "LayerBreaker",
    "LeaseReply",
    "LeasingLayer",
    "MemoryLayer",
]


@runtime_checkable
class Layer(Protocol):
    """A cache layer used from synchronous code.

    A layer stores :class:`~cacheward.Entry` objects under a :class:`~cacheward.CacheKey`.
    Methods may raise or time out: cacheward treats any exception as a miss, counts it, and skips
    a layer whose failures open its circuit breaker. ``set`` is told the entry; a layer may keep it
    until ``entry.stale_until`` and must not serve it after (cacheward checks again anyway).

    Attributes:
        name: a short name for stats, events and error messages.
        local: ``True`` for layers inside the process (no serialization, cannot fail).
    """

    name: str
    local: bool

    def get(self, key: CacheKey) -> Entry | None: ...
    def set(self, key: CacheKey, entry: Entry) -> None: ...
    def delete(self, key: CacheKey) -> None: ...
    def clear(self) -> None: ...


@runtime_checkable
class AsyncLayer(Protocol):
    """A cache layer used from ``async def`` functions (same contract as :class:`Layer`)."""

    name: str
    local: bool

    async def aget(self, key: CacheKey) -> Entry | None: ...
    async def aset(self, key: CacheKey, entry: Entry) -> None: ...
    async def adelete(self, key: CacheKey) -> None: ...
    async def aclear(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class LeaseReply:
    """What a lease request found, in one round trip (see :class:`LeasingLayer`).

    Attributes:
        token: the fencing token when the caller now holds the key's lease (it fetches, then
            :meth:`~LeasingLayer.publish`); ``None`` otherwise.
        entry: the entry stored under the key, read in the same round trip (``None``: none,
            or invalid bytes). When it is fresh there is nothing to fetch and no lease is taken.
        busy: another process holds the lease and will publish its value: wait for it.
            Neither ``token`` nor ``busy`` (and no fresh ``entry``): fetch without a lease.
    """

    token: int | None = None
    entry: Entry | None = None
    busy: bool = False


@runtime_checkable
class LeasingLayer(Layer, Protocol):
    """A shared layer that also gives one process per key the right to fetch it.

    Every method may raise or time out; a failure of :meth:`lease` makes the caller fetch
    under its in-process protections alone.
    """

    def lease(self, key: CacheKey, *, ttl: float) -> LeaseReply:
        """Take ``key``'s lease for ``ttl`` seconds unless a fresh entry is stored or another
        process holds it, and return what was found."""
        ...

    def publish(
        self, key: CacheKey, entry: Entry | None, token: int, *, lease_ttl: float
    ) -> bool | None:
        """Store ``entry`` (fenced by ``token``: never over a later holder's entry) and release
        the lease, in one round trip; with nothing to store (``entry`` ``None`` or unstorable),
        the release tells waiting processes that no value is coming. Returns whether stored,
        or ``None`` when an invalidation after the lease was taken fenced it out."""
        ...

    def release_lease(self, key: CacheKey, token: int) -> None:
        """Give the lease back without a value (the fetch failed)."""
        ...


@runtime_checkable
class AsyncLeasingLayer(AsyncLayer, Protocol):
    """The ``async def`` twin of :class:`LeasingLayer` (same contract)."""

    async def alease(self, key: CacheKey, *, ttl: float) -> LeaseReply: ...
    async def apublish(
        self, key: CacheKey, entry: Entry | None, token: int, *, lease_ttl: float
    ) -> bool | None: ...
    async def arelease_lease(self, key: CacheKey, token: int) -> None: ...


class LayerBreaker:
    """The circuit breaker of one shared layer, shared by every function that uses the layer.

    A layer that offers a ``breaker`` attribute owns it (``RedisLayer(breaker_failures=...)``);
    for any other layer the first :func:`~cacheward.cached` function using it makes one. A later
    function asking for other settings is a configuration error, never silently ignored.

    Args:
        failures: consecutive failures that open it.
        reset: seconds it stays open before letting one probe through.
    """

    __slots__ = ("breaker", "failures", "lock", "origin", "reset")

    def __init__(self, *, failures: int = 3, reset: Duration = 5.0, origin: str = "") -> None:
        self.failures = check_positive_int("breaker_failures", failures)
        self.reset = duration("breaker_reset", reset, allow_zero=False)
        self.breaker = Breaker(failure_threshold=self.failures, reset_timeout=self.reset)
        self.lock = threading.Lock()
        #: Who configured it (for error messages).
        self.origin = origin

    def __repr__(self) -> str:
        return f"LayerBreaker(failures={self.failures}, reset={self.reset})"


Policy = Literal["fifo", "lru", "lfu"]


class MemoryLayer:
    """A bounded in-process layer (L1).

    Args:
        maxsize: the most entries it holds (>= 1).
        policy: which entry goes when it is full.

            - ``"fifo"`` (default): the entry written longest ago. Every write gives an entry a
              new lifetime, so this is also the entry nearest to expiry; a hit costs one ``dict``
              lookup and takes no lock, which is what keeps a fresh hit within a few times
              ``functools.lru_cache``.
            - ``"lru"`` / ``"lfu"``: exact least-recently / least-frequently used, built on
              ``cachetools.LRUCache`` / ``LFUCache``. A hit then updates the order under a lock,
              several times the cost of a ``"fifo"`` hit.

    A ``MemoryLayer`` belongs to one cached function (its keys are that function's arguments
    alone, which keeps a hit cheap); giving one to a second function is a configuration error.
    Expired entries are dropped before anything live is evicted.
    """

    __slots__ = ("_data", "_fast_get", "_lock", "local", "maxsize", "name", "owner", "policy")

    def __init__(self, maxsize: int = 10_000, *, policy: Policy = "fifo", name: str = "memory"):
        self.maxsize = check_positive_int("maxsize", maxsize)
        if policy not in ("fifo", "lru", "lfu"):
            raise ConfigurationError(f"policy must be 'fifo', 'lru' or 'lfu', got {policy!r}")
        self.policy: Policy = policy
        self.name = name
        self.local = True
        #: The cached function this layer belongs to (set by the decorator).
        self.owner: str | None = None
        self._lock = threading.Lock()
        self._data: MutableMapping[Hashable, Entry]
        if policy == "fifo":
            plain: dict[Hashable, Entry] = {}
            self._data = plain
            self._fast_get: Callable[[Hashable], Entry | None] = plain.get
        else:
            import cachetools

            cls = cachetools.LRUCache if policy == "lru" else cachetools.LFUCache
            self._data = cls(maxsize=maxsize)
            self._fast_get = self._locked_get

    # The drivers look entries up by the local key directly (see ``lookup``); the protocol
    # methods below serve everything else.

    def lookup(self, local: Hashable) -> Entry | None:
        """Return the entry stored under the local key, fresh or not (no expiry check)."""
        return self._fast_get(local)

    def _locked_get(self, local: Hashable) -> Entry | None:
        with self._lock:
            return self._data.get(local)

    def get(self, key: CacheKey) -> Entry | None:
        return self.lookup(key.local)

    def set(self, key: CacheKey, entry: Entry) -> None:
        data = self._data
        with self._lock:
            data.pop(key.local, None)  # re-inserting moves it to the end of the FIFO order
            if self.policy == "fifo" and len(data) >= self.maxsize:
                self._evict(entry.created)
            data[key.local] = entry

    def _evict(self, now: float) -> None:
        data = self._data
        # Oldest writes first: drop what has expired, then the oldest live entries.
        doomed: list[Hashable] = []
        for local, old in data.items():
            if old.stale_until <= now or len(data) - len(doomed) >= self.maxsize:
                doomed.append(local)
            else:
                break
        for local in doomed:
            del data[local]

    def delete(self, key: CacheKey) -> None:
        with self._lock:
            self._data.pop(key.local, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    async def aget(self, key: CacheKey) -> Entry | None:
        return self.lookup(key.local)

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        self.set(key, entry)

    async def adelete(self, key: CacheKey) -> None:
        self.delete(key)

    async def aclear(self) -> None:
        self.clear()

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return (
            f"MemoryLayer(maxsize={self.maxsize}, policy={self.policy!r}, size={len(self._data)})"
        )
