"""Invalidations a shared layer could not take yet: kept, and replayed before it is read again.

While a shared layer is unreachable (its breaker open, a timeout, an error), an invalidation of
a key cannot reach it; dropping it would let every process serve the old value from that layer
until its TTL. Instead each layer object has one :class:`Pending` book per process:

- **kept**: the newest invalidation per key (a later one of the same key replaces it), in
  arrival order, at most :data:`MAX_PENDING` per layer;
- **replayed first**: before this process reads the layer again (a read, a lease), every kept
  invalidation is sent; if one fails the read is skipped (a miss), so the layer never serves
  this process a value it was told to drop;
- **overflow**: when the book is full the oldest invalidation is dropped and its namespace is
  *distrusted*: entries of that namespace read from the layer that were made before the moment
  of the drop are never served fresh (nor stale while a refresh runs): they are fetched again,
  and served only if that fetch fails, within their stale limit. Entries made afterwards are
  unaffected, so the distrust ends by itself as the old entries are replaced or expire.

Tag invalidations (``cw.invalidate_tags``) and ``fn.cache_clear()`` are kept the same way, as
the names of their marks (see ``cacheward._core.tags``), newest per name, within the same bound;
one dropped on overflow distrusts every namespace (a tag spans functions).

Pure bookkeeping under a lock; the driver does the I/O (``cacheward._readpath``).
"""

from __future__ import annotations

import collections
import weakref
from typing import Any, Final

from cacheward import _forksafe
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._frozen import Frozen

__all__ = ["MAX_PENDING", "Invalidation", "Pending", "book_of"]

#: The most invalidations kept per layer and process while it is unreachable.
MAX_PENDING: Final = 10_000


class Invalidation(Frozen):
    """What ``fn.invalidate(...)`` did (falsy while some shared layer still has it pending).

    Attributes:
        pending: the names of the shared layers that could not take the invalidation now
            (unreachable, or their breaker open). It is kept and replayed before this process
            reads that layer again; ``()`` when every layer took it.
    """

    pending: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        """Whether every layer took the invalidation."""
        return not self.pending

    def __bool__(self) -> bool:
        return not self.pending


class Pending:
    """One shared layer's invalidations not yet delivered, in this process."""

    __slots__ = (
        "__weakref__",
        "_items",
        "_lock",
        "_marks",
        "distrust",
        "dropped",
        "limit",
        "replayed",
        "replaying",
    )

    def __init__(self, limit: int = MAX_PENDING) -> None:
        self.limit = limit
        self._lock = _forksafe.lock()
        #: ``(namespace, key text)`` -> ``(key, entry to write or None, counters)``.
        self._items: collections.OrderedDict[tuple[str, str], tuple[CacheKey, Any]] = (
            collections.OrderedDict()
        )
        #: Tag invalidations not delivered: mark name -> the namespace to count it against
        #: (``""`` for a tag, which belongs to no one function).
        self._marks: collections.OrderedDict[str, str] = collections.OrderedDict()
        #: Namespace -> wall-clock time of its last dropped invalidation (``"*"``: every one).
        self.distrust: dict[str, float] = {}
        self.dropped = 0
        self.replayed: collections.Counter[str] = collections.Counter()
        #: A background replay is scheduled or running (one at a time).
        self.replaying = False
        _forksafe.register(self)

    def after_fork(self) -> None:
        """In a forked child the parent's replay timer or task is not running: none is
        scheduled (the kept invalidations stay, replayed before the next read)."""
        self.replaying = False

    def claim_replay(self) -> bool:
        """Take the right to run the background replay; ``False`` if one is scheduled."""
        with self._lock:
            if self.replaying or not (self._items or self._marks):
                return False
            self.replaying = True
            return True

    def release_replay(self) -> None:
        with self._lock:
            self.replaying = False

    def keep(self, key: CacheKey, now: float) -> None:
        """Remember that ``key`` must be invalidated (the newest per key wins)."""
        ident = (key.namespace, key.text)
        with self._lock:
            self._items.pop(ident, None)
            self._items[ident] = (key, None)
            while len(self._items) > self.limit:
                (namespace, _), _ = self._items.popitem(last=False)
                self.dropped += 1
                self.distrust[namespace] = now

    def keep_marks(self, names: tuple[str, ...], now: float, namespace: str = "") -> None:
        """Remember that the marks ``names`` must be raised (tags, or a ``cache_clear``)."""
        with self._lock:
            for name in names:
                self._marks.pop(name, None)
                self._marks[name] = namespace
            while len(self._marks) > self.limit:
                self._marks.popitem(last=False)
                self.dropped += 1
                self.distrust["*"] = now

    def marks(self) -> list[str]:
        """The marks to raise on replay, oldest first."""
        with self._lock:
            return list(self._marks)

    def marks_delivered(self, names: tuple[str, ...]) -> None:
        with self._lock:
            for name in names:
                namespace = self._marks.pop(name, None)
                if namespace is not None:
                    self.replayed[namespace] += 1

    def discard(self, key: CacheKey) -> None:
        """``key`` was delivered by other means (a later invalidation went through)."""
        with self._lock:
            self._items.pop((key.namespace, key.text), None)

    def __bool__(self) -> bool:
        return bool(self._items) or bool(self._marks)

    def snapshot(self) -> list[CacheKey]:
        """The keys to replay, oldest first."""
        with self._lock:
            return [key for key, _ in self._items.values()]

    def delivered(self, key: CacheKey) -> None:
        """``key``'s invalidation reached the layer on replay."""
        with self._lock:
            if self._items.pop((key.namespace, key.text), None) is not None:
                self.replayed[key.namespace] += 1

    def count(self, namespace: str) -> int:
        with self._lock:
            keys = sum(1 for ns, _ in self._items if ns == namespace)
            return keys + sum(1 for ns in self._marks.values() if ns == namespace)

    def vet(self, found: Entry | None, namespace: str) -> Entry | None:
        """An entry read from the layer; if its namespace lost an invalidation (overflow) after
        the entry was made, neither fresh nor stale-servable: fetched again, and served only if
        that fetch fails (within the entry's stale limit)."""
        if found is None or not self.distrust:
            return found
        since = max(self.distrust.get(namespace, -1.0), self.distrust.get("*", -1.0))
        if since < 0 or found.created > since:
            return found
        made = found.created
        return Entry(found.value, made, made, made, found.error_until)


_BOOKS: weakref.WeakKeyDictionary[object, Pending] = weakref.WeakKeyDictionary()
_BOOKS_LOCK = _forksafe.lock()


def book_of(layer: object) -> Pending:
    """The pending book of a layer object (one per layer and process)."""
    with _BOOKS_LOCK:
        try:
            book = _BOOKS.get(layer)
            if book is None:
                book = _BOOKS[layer] = Pending(int(getattr(layer, "max_pending", MAX_PENDING)))
        except TypeError:  # not weak-referenceable: a book of its own each time (not kept)
            book = Pending(0)
    return book
