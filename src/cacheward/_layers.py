"""The layer protocol and the in-process :class:`MemoryLayer`."""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Hashable
from typing import Any, Final, Literal, Protocol, cast, runtime_checkable

from cacheward import _forksafe
from cacheward._config import Duration, check_positive_int, duration
from cacheward._core.breaker import Breaker
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._frozen import Frozen

__all__ = [
    "AsyncLayer",
    "AsyncLeasingLayer",
    "Layer",
    "LayerBreaker",
    "LeaseReply",
    "LeasingLayer",
    "MemoryLayer",
    "Probed",
    "estimate_size",
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


class LeaseReply(Frozen):
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


class Probed(Frozen):
    """What a re-validating read of a shared layer found (``RedisLayer.probe``).

    Attributes:
        entry: the entry stored under the key (``None``: none, invalid bytes, or fenced).
        marks: the stored values of the marks of the invalidations that concern the key (its
            own, its function's ``cache_clear``, its tags'), ``None`` where there is none.
        fenced: there was an entry, and one of ``marks`` invalidated it.
    """

    entry: Entry | None = None
    marks: tuple[Any, ...] = ()
    fenced: bool = False


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
        self.lock = _forksafe.lock()
        #: Who configured it (for error messages).
        self.origin = origin

    def __repr__(self) -> str:
        return f"LayerBreaker(failures={self.failures}, reset={self.reset})"


Policy = Literal["fifo", "lru", "lfu"]


def estimate_size(value: object, _depth: int = 0) -> int:
    """A cheap estimate of the memory ``value`` holds, in bytes (the default weigher).

    ``sys.getsizeof`` of the object plus, for ``dict``/``list``/``tuple``/``set``/``frozenset``,
    its items, recursively (100 levels at most; shared objects are counted each time they
    appear, which errs on the safe side).
    """
    size = sys.getsizeof(value)
    if _depth >= 100:
        return size
    kind = type(value)
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            size += estimate_size(key, _depth + 1) + estimate_size(item, _depth + 1)
    elif kind in _CONTAINERS:
        for item in value:  # type: ignore[attr-defined]
            size += estimate_size(item, _depth + 1)
    return size


_CONTAINERS: Final = frozenset({list, tuple, set, frozenset})


class MemoryLayer:
    """A bounded in-process layer (L1).

    Args:
        maxsize: the most entries it holds (>= 1).
        policy: which entry goes when it is full. Every policy evicts in constant time,
            whatever the size.

            - ``"fifo"`` (default): the entry written longest ago. Every write gives an entry a
              new lifetime, so this is also the entry nearest to expiry; a hit costs one ``dict``
              lookup and takes no lock, which is what keeps a fresh hit within a few times
              ``functools.lru_cache``.
            - ``"lru"``: exact least-recently used (an ``OrderedDict``; a hit also moves the
              entry to the back, about twice the cost of a ``"fifo"`` hit).
            - ``"lfu"``: least-frequently used, ties broken by age (frequency buckets; a hit
              takes a lock to count itself, several times the cost of a ``"fifo"`` hit).
        max_bytes: also bound the memory the entries' values hold, as measured by ``weigher``
            (``None``: no byte bound). An entry heavier than ``max_bytes`` on its own is not
            kept (it is still served to its callers and written to the shared layers).
        weigher: a function returning the size of a value in bytes (only with ``max_bytes``);
            defaults to :func:`estimate_size`, a recursive ``sys.getsizeof``.
        name: the layer's name in stats and errors.

    A ``MemoryLayer`` belongs to one cached function (its keys are that function's arguments
    alone, which keeps a hit cheap); giving one to a second function is a configuration error.
    An expired entry stays until it is overwritten or evicted (the fresh-hit check ignores it).
    """

    # "__weakref__": the claim of "one function per MemoryLayer" dies with the layer (an id()
    # outlives its object: a new layer at the same address is not the old one).
    __slots__ = (
        "__weakref__",
        "_buckets",
        "_bytes",
        "_counts",
        "_data",
        "_fast_get",
        "_least",
        "_lock",
        "_order",
        "_stale",
        "_weights",
        "local",
        "max_bytes",
        "maxsize",
        "name",
        "owner",
        "policy",
        "weigher",
    )

    def __init__(
        self,
        maxsize: int = 10_000,
        *,
        policy: Policy = "fifo",
        max_bytes: int | None = None,
        weigher: Callable[[Any], int] | None = None,
        name: str = "memory",
    ):
        self.maxsize = check_positive_int("maxsize", maxsize)
        if policy not in ("fifo", "lru", "lfu"):
            raise ConfigurationError(f"policy must be 'fifo', 'lru' or 'lfu', got {policy!r}")
        self.policy: Policy = policy
        self.max_bytes = None if max_bytes is None else check_positive_int("max_bytes", max_bytes)
        if weigher is not None and not callable(weigher):
            raise ConfigurationTypeError(
                f"weigher must be a function value -> bytes, got {type(weigher).__name__}"
            )
        if weigher is not None and max_bytes is None:
            raise ConfigurationError("weigher is only used with max_bytes; give max_bytes too")
        self.weigher: Callable[[Any], int] = weigher or estimate_size
        self.name = name
        self.local = True
        #: The cached function this layer belongs to (set by the decorator).
        self.owner: str | None = None
        self._lock = _forksafe.lock()
        #: Byte accounting (only with max_bytes): key -> weight, and their sum.
        self._weights: dict[Hashable, int] | None = None if max_bytes is None else {}
        self._bytes = 0
        #: FIFO: the write order, one key per write (8 bytes an entry), and for each key
        #: overwritten or deleted since, how many of its records are stale (skipped when they
        #: reach the front). A key written once and never again has no ``_stale`` item.
        self._order: collections.deque[Hashable] = collections.deque()
        self._stale: dict[Hashable, int] = {}
        #: LFU: key -> hits + 1, count -> keys with that count (oldest first), the least count.
        self._counts: dict[Hashable, int] = {}
        self._buckets: dict[int, collections.OrderedDict[Hashable, None]] = {}
        self._least = 1
        self._data: dict[Hashable, Entry]
        if policy == "lru":
            ordered: collections.OrderedDict[Hashable, Entry] = collections.OrderedDict()
            self._data = ordered
            self._fast_get: Callable[[Hashable], Entry | None] = self._make_lru_get(ordered)
        else:
            self._data = {}
            self._fast_get = self._data.get if policy == "fifo" else self._lfu_get

    # The drivers look entries up by the local key directly (see ``lookup``); the protocol
    # methods below serve everything else.

    def lookup(self, local: Hashable) -> Entry | None:
        """Return the entry stored under the local key, fresh or not (no expiry check)."""
        return self._fast_get(local)

    @staticmethod
    def _make_lru_get(
        ordered: collections.OrderedDict[Hashable, Entry],
    ) -> Callable[[Hashable], Entry | None]:
        getitem, move = ordered.__getitem__, ordered.move_to_end

        def lru_get(local: Hashable) -> Entry | None:
            # Two atomic steps; a key deleted in between is a miss.
            try:
                entry = getitem(local)
                move(local)
            except KeyError:
                return None
            return entry

        return lru_get

    def _lfu_get(self, local: Hashable) -> Entry | None:
        with self._lock:
            entry = self._data.get(local)
            if entry is not None:
                self._lfu_bump(local)
            return entry

    def _lfu_bump(self, local: Hashable) -> None:
        counts, buckets = self._counts, self._buckets
        count = counts[local]
        bucket = buckets[count]
        del bucket[local]
        if not bucket:
            del buckets[count]
            if self._least == count:
                self._least = count + 1
        counts[local] = count + 1
        up = buckets.get(count + 1)
        if up is None:
            up = buckets[count + 1] = collections.OrderedDict()
        up[local] = None

    def get(self, key: CacheKey) -> Entry | None:
        return self.lookup(key.local)

    def set(self, key: CacheKey, entry: Entry) -> None:
        local = key.local
        weight = 0
        if self._weights is not None:
            try:
                weight = max(0, int(self.weigher(entry.value)))
            except Exception:
                weight = sys.getsizeof(entry.value)
        with self._lock:
            self._discard(local)
            if self._weights is not None:
                if weight > cast(int, self.max_bytes):
                    return  # heavier than the whole layer: served, not kept
                while self._data and self._bytes + weight > cast(int, self.max_bytes):
                    self._evict()
                self._weights[local] = weight
                self._bytes += weight
            while len(self._data) >= self.maxsize:
                self._evict()
            self._insert(local, entry)

    def _insert(self, local: Hashable, entry: Entry) -> None:
        self._data[local] = entry
        policy = self.policy
        if policy == "fifo":
            order = self._order
            order.append(local)
            if len(order) > 2 * len(self._data) + 64:
                # Records of overwritten or deleted keys piled up: rebuild from the dict,
                # whose order is the write order (a write removes the key first). Amortized
                # O(1): it takes at least n writes to pile up n stale records.
                order.clear()
                order.extend(self._data)
                self._stale.clear()
        elif policy == "lfu":
            self._counts[local] = 1
            bucket = self._buckets.get(1)
            if bucket is None:
                bucket = self._buckets[1] = collections.OrderedDict()
            bucket[local] = None
            self._least = 1

    def _discard(self, local: Hashable) -> None:
        """Remove ``local``'s entry by a write or a delete (its FIFO record becomes stale)."""
        if local in self._data:
            self._remove(local)
            if self.policy == "fifo":
                stale = self._stale
                stale[local] = stale.get(local, 0) + 1

    def _remove(self, local: Hashable) -> None:
        if self._data.pop(local, None) is None:
            return
        if self._weights is not None:
            self._bytes -= self._weights.pop(local, 0)
        if self.policy == "lfu":
            count = self._counts.pop(local)
            bucket = self._buckets[count]
            del bucket[local]
            if not bucket:
                del self._buckets[count]

    def _evict(self) -> None:
        """Drop one entry by the policy (the lock is held; the layer is not empty)."""
        data = self._data
        policy = self.policy
        if policy == "fifo":
            order, stale = self._order, self._stale
            while order:
                local = order.popleft()
                count = stale.pop(local, 0)
                if count:  # a record written before the key's latest write or delete
                    if count > 1:
                        stale[local] = count - 1
                    continue
                if local in data:
                    self._remove(local)
                    return
        elif policy == "lru":
            local = next(iter(data))
            self._remove(local)
            return
        else:
            buckets = self._buckets
            bucket = buckets.get(self._least)
            if bucket is None:  # the least count's keys were deleted: find the next one
                self._least = min(buckets)
                bucket = buckets[self._least]
            self._remove(next(iter(bucket)))
            return
        # Unreachable while the order and the dict agree; keep the layer bounded regardless.
        self._discard(next(iter(data)))

    def delete(self, key: CacheKey) -> None:
        with self._lock:
            self._discard(key.local)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._order.clear()
            self._stale.clear()
            self._counts.clear()
            self._buckets.clear()
            if self._weights is not None:
                self._weights.clear()
            self._bytes = 0

    async def aget(self, key: CacheKey) -> Entry | None:
        return self.lookup(key.local)

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        self.set(key, entry)

    async def adelete(self, key: CacheKey) -> None:
        self.delete(key)

    async def aclear(self) -> None:
        self.clear()

    @property
    def bytes(self) -> int:
        """The summed weight of the entries held (0 without ``max_bytes``)."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        bound = ""
        if self.max_bytes is not None:
            bound = f", max_bytes={self.max_bytes}, bytes={self._bytes}"
        return (
            f"MemoryLayer(maxsize={self.maxsize}, policy={self.policy!r}{bound}, "
            f"size={len(self._data)})"
        )
