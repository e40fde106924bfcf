"""The read-through of :func:`cacheward.cached`, written once for ``def`` and ``async def``.

Every step a call takes — serve, read the shared layers, take the lease, fetch, finish, refresh,
invalidate — is one *plan* (a generator, see ``cacheward._plan``) of :class:`_Driver`. A plan
asks the pure core (``cacheward._core.readthrough``) what to do and yields typed I/O requests
(the ops below); ``perform`` runs it in a thread, ``aperform`` on an event loop. The only
things that differ by colour are how an op is done (each op's ``sync`` / ``aio``, a line or
two) and how a caller waits for a fetch (a ``threading.Event`` for threads, futures answered
by the fetch task for asyncio tasks): the flights below.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import contextvars
import enum
import math
import threading
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, cast

from cacheward import _forksafe
from cacheward._background import track, track_task
from cacheward._backplane import Recheck, Stack, encode_marks
from cacheward._clock import SYSTEM_CLOCK, Clock, SystemClock
from cacheward._core.breaker import BreakerState
from cacheward._core.coherence import Suspect, invalidated, still_current, suspect
from cacheward._core.entry import (
    Entry,
    Freshness,
    bounded,
    classify,
    make_entry,
    usable_on_error,
)
from cacheward._core.keys import CacheKey, local_key
from cacheward._core.leasewait import LeaseWait
from cacheward._core.readthrough import Action, Flight, ReadThrough
from cacheward._core.tags import TagIndex, check_tag, clear_mark, tag_mark, tags_of
from cacheward._errors import (
    BackoffActive,
    ConfigurationError,
    FetchInterrupted,
    FetchTimeout,
    RecursiveFetch,
)
from cacheward._events import EventKind, emit
from cacheward._frozen import Frozen
from cacheward._layers import (
    AsyncLeasingLayer,
    LayerBreaker,
    LeaseReply,
    LeasingLayer,
    MemoryLayer,
    Probed,
)
from cacheward._pending import Invalidation, book_of
from cacheward._plan import Op, Plan, aperform, perform
from cacheward._serialize import UnstorableValue, unstorable_warning

if TYPE_CHECKING:
    import asyncio

    from cacheward._cached import Settings

#: How many times in a row a background replay is tried before waiting for the next
#: invalidation or read of the layer (see :meth:`Driver.schedule_replay`).
REPLAY_TRIES = 30

__all__ = [
    "MISSING",
    "CacheStats",
    "Counters",
    "Driver",
    "Missing",
    "ainvalidate_tags",
    "invalidate_tags",
]

#: How many times one caller takes over a flight whose event loop ended (see
#: :meth:`Driver.join`) before giving up with :class:`Orphaned`.
ORPHAN_TAKEOVERS = 4

#: The flights whose fetch this thread or task is running (to catch a fetch that calls itself).
LEADING: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "cacheward_leading", default=frozenset()
)

#: What ``Lead`` answers a thread: run the fetch plan here, in the serve plan.
INLINE: Any = type("Inline", (), {"__repr__": lambda self: "<inline>"})()

#: What a layer op returns when its layer was skipped or failed (a miss).
MISSING: Any = type("Missing", (), {"__repr__": lambda self: "<missing>"})()


class Missing(enum.Enum):
    """The type of :data:`cacheward.MISSING`: what ``fn.get(...)`` returns when no layer holds
    a fresh entry for the arguments (a one-member enum, so ``if v is cw.MISSING`` narrows)."""

    MISSING = "MISSING"

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "cacheward.MISSING"

    __str__ = __repr__


class CacheStats(Frozen):
    """A snapshot of one cached function's counters (see :meth:`CachedFunction.stats`)."""

    hits: int = 0
    """Calls served a fresh entry (from any layer)."""
    stale_hits: int = 0
    """Calls served a stale entry (while a refresh ran, during back-off, or after a failure)."""
    misses: int = 0
    """Calls that led a fetch (no layer had a fresh or servable stale entry)."""
    fetches: int = 0
    """Backend calls made (leaders and background refreshes)."""
    fetch_errors: int = 0
    """Backend calls that raised."""
    coalesced_waits: int = 0
    """Calls that waited for another caller's fetch instead of fetching."""
    refreshes: int = 0
    """Background refreshes started."""
    refreshes_skipped: int = 0
    """Refreshes not started because every refresh slot was busy (the stale value was served)."""
    backoff_rejections: int = 0
    """Calls refused with :class:`~cacheward.BackoffActive` (no stale value to serve)."""
    wait_timeouts: int = 0
    """Calls whose wait for a fetch reached ``wait_timeout``."""
    stale_on_error: int = 0
    """Calls served a stale entry because the fetch failed, timed out or was refused."""
    layer_errors: int = 0
    """Layer operations that raised or returned something that is not an entry (each a miss)."""
    layer_skips: int = 0
    """Layer operations skipped because that layer's circuit breaker was open."""
    lease_waits: int = 0
    """Fetches that waited for another process holding the key's lease."""
    invalidations: int = 0
    """Calls to ``invalidate``."""
    sets: int = 0
    """Calls to ``set`` (values written through)."""
    forced_refreshes: int = 0
    """Calls to ``refresh`` (fetches started whatever the layers held)."""
    clears: int = 0
    """Calls to ``cache_clear``."""
    unstorable: int = 0
    """Values a shared layer could not store (the serializer refused them, or they are over
    its ``max_payload_bytes``): served and kept in memory, not shared. The first is logged."""
    invalidations_pending: int = 0
    """Invalidations of this function's keys that a shared layer could not take yet (kept,
    replayed before this process reads that layer again)."""
    invalidations_replayed: int = 0
    """Pending invalidations of this function's keys delivered on replay."""
    rechecks: int = 0
    """In-process hits re-validated against the shared layer because the backplane's channel
    was down and the entry was last known current ``l1_max_age`` or more ago, or because it was
    held when the channel came back (messages may have been missed)."""
    suspects: int = 0
    """In-process entries a re-validation found gone from the shared layer with no sign of an
    invalidation (Redis restarted, flushed, evicted or expired them): kept as the key's
    fallback only, never served fresh again (see docs/caching.md, "Across processes")."""
    suspects_served: int = 0
    """Calls served such an entry because the fetch failed, timed out or was refused (also
    counted in ``stale_on_error``)."""
    in_flight: int = 0
    """Fetches running at the moment of the snapshot."""


class Counters:
    """The live, mutable counters behind :class:`CacheStats` (same names)."""

    __slots__ = (
        "backoff_rejections",
        "clears",
        "coalesced_waits",
        "fetch_errors",
        "fetches",
        "forced_refreshes",
        "hits",
        "invalidations",
        "layer_errors",
        "layer_skips",
        "lease_waits",
        "misses",
        "rechecks",
        "refreshes",
        "refreshes_skipped",
        "sets",
        "stale_hits",
        "stale_on_error",
        "suspects",
        "suspects_served",
        "unstorable",
        "wait_timeouts",
    )

    def __init__(self) -> None:
        self.hits = self.stale_hits = self.misses = self.fetches = self.fetch_errors = 0
        self.coalesced_waits = self.refreshes = self.refreshes_skipped = 0
        self.backoff_rejections = self.wait_timeouts = self.stale_on_error = 0
        self.layer_errors = self.layer_skips = self.lease_waits = self.invalidations = 0
        self.unstorable = self.rechecks = self.sets = self.forced_refreshes = self.clears = 0
        self.suspects = self.suspects_served = 0

    def snapshot(self, in_flight: int) -> CacheStats:
        return CacheStats(**{n: getattr(self, n) for n in self.__slots__}, in_flight=in_flight)


# --------------------------------------------------------------------------------------------
# Remote layers behind their circuit breakers


_HEALTH: weakref.WeakKeyDictionary[object, LayerBreaker] = weakref.WeakKeyDictionary()
_HEALTH_LOCK = _forksafe.lock()


def breaker_of(
    layer: Any, index: int, failures: int | None, reset: float | None, owner: str
) -> LayerBreaker:
    """The layer's breaker: its own, or the one the first function using it made.

    Raises:
        ConfigurationError: this function asks for settings the layer's breaker does not have.
    """
    with _HEALTH_LOCK:
        owned = getattr(layer, "breaker", None)
        health = owned if isinstance(owned, LayerBreaker) else _HEALTH.get(layer)
        if health is None:
            health = LayerBreaker(
                failures=3 if failures is None else failures,
                reset=5.0 if reset is None else reset,
                origin=f"cached() of {owner}",
            )
            if hasattr(layer, "breaker"):
                layer.breaker = health
            else:
                # Not weak-referenceable: the breaker is this function's alone.
                with contextlib.suppress(TypeError):
                    _HEALTH[layer] = health
            return health
    if (failures is not None and failures != health.failures) or (
        reset is not None and reset != health.reset
    ):
        asked = f"breaker_failures={failures}, breaker_reset={reset}"
        raise ConfigurationError(
            f"layers[{index}] ({getattr(layer, 'name', type(layer).__name__)}) already has a "
            f"circuit breaker with breaker_failures={health.failures}, "
            f"breaker_reset={health.reset} (set by {health.origin or 'the layer'}), but "
            f"{owner} asks for {asked}: one layer has one breaker; configure it once, on the "
            "layer (RedisLayer(..., breaker_failures=..., breaker_reset=...)), and leave "
            "these out of cached()"
        )
    return health


class GuardedLayer:
    """A remote layer seen through its breaker: every failure is a miss (:data:`MISSING`)."""

    __slots__ = (
        "_counters",
        "_health",
        "_mono",
        "_source",
        "announcer",
        "layer",
        "leases",
        "pending",
    )

    def __init__(
        self, layer: Any, clock: Clock, counters: Counters, health: LayerBreaker, source: str
    ) -> None:
        self.layer = layer
        self._source = source
        self.leases = isinstance(layer, (LeasingLayer, AsyncLeasingLayer))
        self._mono = clock.monotonic
        self._counters = counters
        self._health = health
        #: Invalidations this layer has not taken yet (see ``cacheward._pending``).
        self.pending = book_of(layer)
        #: The ``(channel, message)`` every fence of a key in this layer publishes (the
        #: backplane, see ``cacheward._backplane``); ``None``: announce nothing.
        self.announcer: Callable[[CacheKey], tuple[str, str]] | None = None

    def admit(self, mode: str) -> bool:
        """Whether the breaker lets an operation through.

        ``"read"``: reads may probe a sick layer. ``"write"``: a plain write never probes (it
        would only spend a background thread's time on a hung layer). ``"lease"``: a lease
        holder's publish or release always goes through, whatever the breaker says: skipping it
        would leave other processes waiting for a value that never comes (the layer's own
        timeouts still bound it, and it runs after every caller was answered).
        """
        health = self._health
        if health.breaker.quiet:
            return True  # closed and healthy: every mode goes through, nothing to report
        now = self._mono()
        with health.lock:
            before = health.breaker.state(now)
            if mode == "lease":
                allowed = True
            elif before is not BreakerState.CLOSED and mode == "write":
                allowed = False
            else:
                allowed = health.breaker.allow(now)
        if not allowed:
            self._counters.layer_skips += 1
            emit(EventKind.LAYER_SKIPPED, self._source, layer=self.layer.name)
        elif before is BreakerState.HALF_OPEN:
            emit(EventKind.BREAKER_HALF_OPEN, self._source, layer=self.layer.name)
        return allowed

    @property
    def reset(self) -> float:
        """Seconds the layer's breaker stays open before a probe."""
        return float(self._health.reset)

    def settle(self, error: Exception | None) -> None:
        health = self._health
        if error is None and health.breaker.quiet:
            return  # a success of a healthy layer changes nothing
        with health.lock:
            if error is None:
                changed = health.breaker.record_success(self._mono())
            else:
                changed = health.breaker.record_failure(self._mono())
        if error is not None:
            self._counters.layer_errors += 1
            emit(EventKind.LAYER_ERROR, self._source, layer=self.layer.name, error=error)
        if changed is BreakerState.OPEN:
            emit(EventKind.BREAKER_OPENED, self._source, layer=self.layer.name, error=error)
        elif changed is BreakerState.CLOSED:
            emit(EventKind.BREAKER_CLOSED, self._source, layer=self.layer.name)

    def failed(self, exc: Exception) -> Any:
        """A layer operation raised: a miss (:data:`MISSING`), counted against the layer
        unless the value was at fault (:class:`UnstorableValue`: the layer is fine)."""
        if isinstance(exc, UnstorableValue):
            self.settle(None)
            self._counters.unstorable += 1
            if self._counters.unstorable == 1:
                unstorable_warning(self._source, self.layer.name, exc)
        else:
            self.settle(exc)
        return MISSING

    def entry(self, found: Any) -> Entry | None:
        """Accept what a layer returned only if it is an entry (anything else is a miss)."""
        if found is None or found is MISSING:
            return None
        if isinstance(found, Entry):
            return self.pending.vet(found, self._source)
        self._counters.layer_errors += 1
        emit(EventKind.LAYER_ERROR, self._source, layer=self.layer.name)
        return None


# --------------------------------------------------------------------------------------------
# The ops: the I/O a plan asks for, each in both colours


class LayerOp(Op):
    """One operation of a remote layer, through its breaker: skipped or failed is MISSING."""

    __slots__ = ("guarded", "key")
    #: How the layer's breaker admits it (see :meth:`GuardedLayer.admit`).
    mode: ClassVar[str] = "read"

    def __init__(self, guarded: GuardedLayer, key: CacheKey) -> None:
        self.guarded = guarded
        self.key = key

    def sync(self) -> Any:
        guarded = self.guarded
        if not guarded.admit(self.mode):
            return MISSING
        try:
            result = self.call(guarded.layer)
        except Exception as exc:
            return guarded.failed(exc)
        guarded.settle(None)
        return result

    async def aio(self) -> Any:
        guarded = self.guarded
        if not guarded.admit(self.mode):
            return MISSING
        try:
            result = await self.acall(guarded.layer)
        except Exception as exc:
            return guarded.failed(exc)
        guarded.settle(None)
        return result

    def call(self, layer: Any) -> Any:
        raise NotImplementedError

    async def acall(self, layer: Any) -> Any:
        raise NotImplementedError


class Get(LayerOp):
    __slots__ = ()

    def call(self, layer: Any) -> Any:
        return layer.get(self.key)

    async def acall(self, layer: Any) -> Any:
        return await layer.aget(self.key)


class Probe(LayerOp):
    """Re-validate: the entry with the marks of the invalidations that concern it."""

    __slots__ = ()

    def call(self, layer: Any) -> Any:
        return layer.probe(self.key)

    async def acall(self, layer: Any) -> Any:
        return await layer.aprobe(self.key)


class Put(LayerOp):
    """Store an entry (no lease: ordered by the entries' ``created`` stamps)."""

    __slots__ = ("entry",)
    mode = "write"

    def __init__(self, guarded: GuardedLayer, key: CacheKey, entry: Entry) -> None:
        super().__init__(guarded, key)
        self.entry = entry

    def call(self, layer: Any) -> Any:
        return layer.set(self.key, self.entry)

    async def acall(self, layer: Any) -> Any:
        return await layer.aset(self.key, self.entry)


class Delete(LayerOp):
    __slots__ = ()
    mode = "write"

    def call(self, layer: Any) -> Any:
        return layer.delete(self.key)

    async def acall(self, layer: Any) -> Any:
        return await layer.adelete(self.key)


class Fence(LayerOp):
    """Invalidate a key (or write over it) and fence every rebuild under way in any process:
    a layer's ``fence`` (see :meth:`RedisLayer.fence`). Returns the mark, or MISSING.

    Every fence announces itself on the backplane when the layer has one (``announce`` left
    out: the layer's announcer decides), so other processes' memory layers drop the key; an
    invalidation and a write (``entry``) alike."""

    __slots__ = ("announce", "entry")
    mode = "write"  # skipped while the breaker is not closed: kept pending, replayed later

    def __init__(
        self,
        guarded: GuardedLayer,
        key: CacheKey,
        entry: Entry | None = None,
        announce: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(guarded, key)
        self.entry = entry
        if announce is None:
            announcer = guarded.announcer
            announce = ("", "") if announcer is None else announcer(key)
        self.announce = announce

    def call(self, layer: Any) -> Any:
        return layer.fence(self.key, self.entry, announce=self.announce)

    async def acall(self, layer: Any) -> Any:
        return await layer.afence(self.key, self.entry, announce=self.announce)


def fences(layer: Any) -> bool:
    """Whether a layer can fence rebuilds (``fence`` / ``afence``, as :class:`RedisLayer`)."""
    return callable(getattr(layer, "fence", None)) or callable(getattr(layer, "afence", None))


class ReplayFence(Fence):
    """A pending invalidation sent again: it may probe a layer whose breaker is half-open."""

    __slots__ = ()
    mode = "read"


class ReplayDelete(Delete):
    __slots__ = ()
    mode = "read"


def invalidation_op(
    guarded: GuardedLayer, key: CacheKey, *, replay: bool = False, entry: Entry | None = None
) -> LayerOp:
    """How ``key`` is invalidated in a layer (or ``entry`` written over it, by ``set``): a
    fence where it has one, else a delete (or a plain write)."""
    if fences(guarded.layer):
        return ReplayFence(guarded, key) if replay else Fence(guarded, key, entry)
    if entry is not None:
        return Put(guarded, key, entry)
    return ReplayDelete(guarded, key) if replay else Delete(guarded, key)


class MarkFence(LayerOp):
    """Raise tags' marks (``invalidate_tags``, ``cache_clear``) in a shared layer, announcing
    them on its backplane channel in the same round trip (see ``cacheward._core.tags``)."""

    __slots__ = ("announce", "names")
    mode = "write"  # skipped while the breaker is not closed: kept pending, replayed later

    def __init__(self, guarded: GuardedLayer, names: tuple[str, ...]) -> None:
        super().__init__(guarded, cast(CacheKey, None))
        self.names = names
        channel = getattr(guarded.layer, "channel", "")
        self.announce = (channel, encode_marks(names)) if isinstance(channel, str) else ("", "")

    def call(self, layer: Any) -> Any:
        return layer.fence_tags(self.names, announce=self.announce)

    async def acall(self, layer: Any) -> Any:
        return await layer.afence_tags(self.names, announce=self.announce)


class ReplayMarkFence(MarkFence):
    __slots__ = ()
    mode = "read"


class Clear(LayerOp):
    """``cache_clear`` in a shared layer that has no marks: its own ``clear``."""

    __slots__ = ()
    mode = "write"

    def call(self, layer: Any) -> Any:
        return layer.clear()

    async def acall(self, layer: Any) -> Any:
        return await layer.aclear()


class ReplayClear(Clear):
    __slots__ = ()
    mode = "read"


def has_marks(layer: Any) -> bool:
    """Whether a shared layer supports tags (``fence_tags``, as :class:`RedisLayer`)."""
    return callable(getattr(layer, "fence_tags", None)) or callable(
        getattr(layer, "afence_tags", None)
    )


def marks_op(guarded: GuardedLayer, names: tuple[str, ...], *, replay: bool = False) -> LayerOp:
    """How marks are raised in a layer: its ``fence_tags``, else (a layer without tags, which
    only ``cache_clear`` reaches) its ``clear``."""
    if has_marks(guarded.layer):
        return ReplayMarkFence(guarded, names) if replay else MarkFence(guarded, names)
    nokey = cast(CacheKey, None)
    return ReplayClear(guarded, nokey) if replay else Clear(guarded, nokey)


class Lease(LayerOp):
    """Take the key's cross-process lease and read its entry: a :class:`LeaseReply`."""

    __slots__ = ("ttl",)

    def __init__(self, guarded: GuardedLayer, key: CacheKey, ttl: float) -> None:
        super().__init__(guarded, key)
        self.ttl = ttl

    def call(self, layer: Any) -> Any:
        return layer.lease(self.key, ttl=self.ttl)

    async def acall(self, layer: Any) -> Any:
        return await layer.alease(self.key, ttl=self.ttl)


class Publish(LayerOp):
    """Store the value fetched under the lease and release it, in one round trip."""

    __slots__ = ("entry", "lease_ttl", "token")
    mode = "lease"

    def __init__(
        self,
        guarded: GuardedLayer,
        key: CacheKey,
        entry: Entry | None,
        token: int,
        lease_ttl: float,
    ) -> None:
        super().__init__(guarded, key)
        self.entry = entry
        self.token = token
        self.lease_ttl = lease_ttl

    def call(self, layer: Any) -> Any:
        return layer.publish(self.key, self.entry, self.token, lease_ttl=self.lease_ttl)

    async def acall(self, layer: Any) -> Any:
        return await layer.apublish(self.key, self.entry, self.token, lease_ttl=self.lease_ttl)


class Release(LayerOp):
    """Give the lease back without a value (the fetch failed)."""

    __slots__ = ("token",)
    mode = "lease"

    def __init__(self, guarded: GuardedLayer, key: CacheKey, token: int) -> None:
        super().__init__(guarded, key)
        self.token = token

    def call(self, layer: Any) -> Any:
        return layer.release_lease(self.key, self.token)

    async def acall(self, layer: Any) -> Any:
        return await layer.arelease_lease(self.key, self.token)


class Detach(Op):
    """Run a plan without keeping anyone waiting for it: shared-layer writes after every
    caller was answered. A thread hands it to an executor; a fetch task (whose callers are
    already answered) runs it itself."""

    __slots__ = ("executor", "layers", "plan")

    def __init__(
        self,
        plan: Plan[Any],
        executor: Callable[[], concurrent.futures.Executor],
        layers: tuple[Any, ...],
    ) -> None:
        self.plan = plan
        self.executor = executor  # called only by a thread: a task never needs a pool
        self.layers = layers

    def sync(self) -> None:
        try:
            future = self.executor().submit(perform, self.plan)
        except RuntimeError:  # executor shut down (interpreter exit): write here
            perform(self.plan)
        else:
            track(self.layers, future)

    async def aio(self) -> None:
        import asyncio

        task = asyncio.current_task()
        if task is not None:
            track_task(self.layers, task)
        await aperform(self.plan)


class Sleep(Op):
    __slots__ = ("clock", "seconds")

    def __init__(self, clock: Clock, seconds: float) -> None:
        self.clock = clock
        self.seconds = seconds

    def sync(self) -> None:
        self.clock.sleep(self.seconds)

    async def aio(self) -> None:
        await self.clock.asleep(self.seconds)


class Fetch(Op):
    """Call the backend (the cached function itself)."""

    __slots__ = ("args", "fn", "kwargs")

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]):
        self.fn = fn
        self.args = args
        self.kwargs = kwargs

    def sync(self) -> Any:
        return self.fn(*self.args, **self.kwargs)

    async def aio(self) -> Any:
        return await self.fn(*self.args, **self.kwargs)


class _FlightOp(Op):
    """An op about one flight of one call (its driver, key and arguments)."""

    __slots__ = ("args", "driver", "flight", "key", "kwargs")

    def __init__(
        self,
        driver: Driver,
        key: CacheKey,
        flight: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        self.driver = driver
        self.key = key
        self.flight = flight
        self.args = args
        self.kwargs = kwargs


class Lead(_FlightOp):
    """Lead a flight: a thread runs the fetch plan itself; a task starts the fetch task and
    waits for it like any waiter (so its own deadline holds). ``read``: see :meth:`Driver.run`."""

    __slots__ = ("read", "timeout")

    def __init__(
        self,
        driver: Driver,
        key: CacheKey,
        flight: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        read: bool,
        timeout: float,
    ) -> None:
        super().__init__(driver, key, flight, args, kwargs)
        self.read = read
        self.timeout = timeout

    def sync(self) -> Any:
        return INLINE  # the thread runs the fetch plan itself, inside the serve plan

    async def aio(self) -> Any:
        flight = cast(AsyncFlight, self.flight)
        self.driver.start_task(self.key, flight, self.args, self.kwargs, None, read=self.read)
        return await flight.wait(self.timeout)


class Join(Op):
    """Wait for a flight another caller leads: its value, its error, or :class:`Expired`."""

    __slots__ = ("flight", "timeout")

    def __init__(self, flight: Any, timeout: float) -> None:
        self.flight = flight
        self.timeout = timeout

    def sync(self) -> Any:
        flight = cast(SyncFlight, self.flight)
        if not flight.wait(self.timeout):
            raise Expired
        if flight.error is not None:
            raise flight.error
        return flight.value

    async def aio(self) -> Any:
        return await cast(AsyncFlight, self.flight).wait(self.timeout)


class Refresh(_FlightOp):
    """Start a background refresh of a stale key: in the refresh executor, or as a task."""

    __slots__ = ("stale",)

    def __init__(
        self,
        driver: Driver,
        key: CacheKey,
        flight: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        stale: Entry | None,
    ) -> None:
        super().__init__(driver, key, flight, args, kwargs)
        self.stale = stale

    def sync(self) -> None:
        self.driver.start_refresh(self.key, self.flight, self.args, self.kwargs, self.stale)

    async def aio(self) -> None:
        self.driver.start_arefresh(self.key, self.flight, self.args, self.kwargs, self.stale)


# --------------------------------------------------------------------------------------------
# Flights: how callers of one fetch wait for it


class SyncFlight(Flight):
    """A fetch that threads wait for. The event is made only when a waiter appears (under
    the driver's lock, see :meth:`Driver.decide`): most fetches have none."""

    __slots__ = ("_done", "error", "settled", "stale", "value")

    def __init__(self) -> None:
        super().__init__()
        self._done: threading.Event | None = None
        self.settled = False
        self.value: Any = None
        self.error: BaseException | None = None
        #: The best entry the fetch found in a shared layer (a waiter's fallback on error).
        self.stale: Entry | None = None

    def prepare_wait(self) -> None:
        if self._done is None:
            self._done = threading.Event()

    def resolve(self, value: Any) -> None:
        if not self.settled:
            self.value = value
            self._settle()

    def reject(self, error: BaseException) -> None:
        if not self.settled:
            self.error = error
            self._settle()

    def _settle(self) -> None:
        self.settled = True
        if self._done is not None:
            self._done.set()

    def wait(self, timeout: float) -> bool:
        if self.settled:
            return True
        return cast(threading.Event, self._done).wait(timeout)


class Expired(Exception):
    """A waiter's deadline passed (private)."""


class Orphaned(FetchInterrupted):
    """The fetch task a caller on another event loop waited for was cancelled: its own loop
    ended (``asyncio.run`` cancels what is left). The caller takes over (:meth:`Driver.join`);
    where nobody can, it is the :class:`FetchInterrupted` it is."""


def on_loop(
    loop: asyncio.AbstractEventLoop,
    running: asyncio.AbstractEventLoop | None,
    fn: Callable[..., None],
    *args: Any,
) -> None:
    """Call ``fn(*args)`` on ``loop``'s thread: now if it is the ``running`` one, else through
    ``call_soon_threadsafe`` (a future is answered on its own loop only, and an answer from
    another thread would not wake that loop). A closed loop has no waiters left to answer."""
    if loop is running:
        fn(*args)
    else:
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(fn, *args)


class _Waiters:
    """One event loop's callers of a flight: their futures in deadline order, and the one
    timer (on that loop) that expires them."""

    __slots__ = ("queue", "timer")

    def __init__(self) -> None:
        self.queue: collections.deque[tuple[float, asyncio.Future[Any]]] = collections.deque()
        self.timer: asyncio.TimerHandle | None = None


class AsyncFlight(Flight):
    """The fetch task, one plain future per waiting caller, and one deadline timer per loop.

    Waiters of a flight all wait the same ``timeout``, so on one loop their deadlines come in
    arrival order: a single timer expires the due prefix and re-arms itself for the next one,
    and one done-callback on the task answers every waiter still waiting. A thousand tasks
    waiting for one fetch thus cost a thousand futures and one timer, where
    ``wait_for(shield(task))`` costs a shield future, a wrapper and a timer per waiter.

    Callers may be on several event loops (threads each running ``asyncio.run``, or one
    ``asyncio.run`` after another). A future belongs to its loop, so each loop's waiters have
    their own timer on their own loop, and are answered on their loop's thread
    (``call_soon_threadsafe`` from the task's); a waiter on another loop whose fetch task was
    cancelled (its loop ended) gets :class:`Orphaned` and takes over. A flight whose loop was
    closed with its task unfinished is :meth:`stranded`: the core forgets it.
    """

    __slots__ = ("home", "lock", "on_end", "outcome", "stale", "task", "waiters")

    def __init__(self) -> None:
        super().__init__()
        #: The best entry the fetch found in a shared layer (a waiter's fallback on error).
        self.stale: Entry | None = None
        self.task: asyncio.Task[Any] | None = None
        #: The fetch task's loop.
        self.home: asyncio.AbstractEventLoop | None = None
        #: Each loop's waiters; ``None`` once answered.
        self.waiters: dict[asyncio.AbstractEventLoop, _Waiters] | None = {}
        #: ``(ok, value or error, orphaned)`` once answered.
        self.outcome: tuple[bool, Any, bool] | None = None
        #: Waiters arrive and answers leave on any loop's thread. (A plain lock: a forked
        #: child forgets every flight.)
        self.lock = threading.Lock()
        #: Gives back what the fetch holds (a refresh slot), once: when its task ends, or
        #: when the core drops the flight as stranded (the task will never end).
        self.on_end: Callable[[], None] | None = None

    def prepare_wait(self) -> None:
        """Nothing to prepare: a waiter's future is made when it waits."""

    def stranded(self) -> bool:
        """The task's loop was closed before the task finished: nothing will ever end it."""
        home = self.home
        return home is not None and self.outcome is None and home.is_closed()

    def dropped(self) -> None:
        self.end()

    def end(self) -> None:
        """Run :attr:`on_end` once."""
        with self.lock:
            on_end, self.on_end = self.on_end, None
        if on_end is not None:
            on_end()

    def resolve(self, value: Any) -> None:
        """Answer every waiter with ``value`` now, before the task's last steps."""
        self._answer((True, value, False))

    def reject(self, error: BaseException) -> None:
        """Failures reach the waiters through the task's done-callback (:meth:`settle`)."""

    def settle(self, task: asyncio.Task[Any]) -> None:
        """The task's done-callback: hand its outcome to every waiter still waiting."""
        # A cancelled (or interrupted) fetch is not the waiters' cancellation: they get a
        # FetchInterrupted, never a CancelledError nobody asked for (waiters on other loops:
        # Orphaned, and they take over).
        # Retrieving the exception also keeps a failure nobody awaited (every waiter left)
        # from being reported as "never retrieved"; it was already counted and backed off.
        cancelled = task.cancelled()
        error = FetchInterrupted("the fetch task was cancelled") if cancelled else task.exception()
        if error is not None and not isinstance(error, Exception):
            error = FetchInterrupted(f"the fetch was interrupted ({type(error).__name__})")
        if error is None:
            self._answer((True, task.result(), False))
        else:
            self._answer((False, error, cancelled))

    def _answer(self, outcome: tuple[bool, Any, bool]) -> None:
        with self.lock:
            if self.outcome is not None:
                return
            self.outcome = outcome
            waiters, self.waiters = self.waiters, None
        if not waiters:
            return
        import asyncio

        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for loop, group in waiters.items():
            on_loop(loop, running, self._deliver, loop, group, outcome)

    def _deliver(
        self, loop: asyncio.AbstractEventLoop, group: _Waiters, outcome: tuple[bool, Any, bool]
    ) -> None:
        """On ``loop``'s thread: answer its waiters."""
        if group.timer is not None:
            group.timer.cancel()
            group.timer = None
        ok, payload, orphaned = outcome
        if orphaned and loop is not self.home:
            payload = Orphaned("the fetch task's event loop ended")
        for _, waiter in group.queue:
            if waiter.done():
                continue
            if ok:
                waiter.set_result(payload)
            else:
                waiter.set_exception(payload)
        group.queue.clear()

    def expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """``loop``'s timer: fail its waiters whose deadline passed, re-arm for the next one."""
        due: list[asyncio.Future[Any]] = []
        with self.lock:
            group = None if self.waiters is None else self.waiters.get(loop)
            if group is None:
                return
            group.timer = None
            queue = group.queue
            now = loop.time()
            while queue and queue[0][0] <= now:
                due.append(queue.popleft()[1])
            if queue:
                group.timer = loop.call_at(queue[0][0], self.expire_due, loop)
        for waiter in due:
            if not waiter.done():
                waiter.set_exception(Expired())

    async def wait(self, timeout: float) -> Any:
        """The task's result, or :class:`Expired` after ``timeout`` (the task carries on)."""
        import asyncio  # at first use: a sync-only program never imports it

        loop = asyncio.get_running_loop()
        with self.lock:
            outcome = self.outcome
            if outcome is None:
                waiters = cast("dict[asyncio.AbstractEventLoop, _Waiters]", self.waiters)
                group = waiters.get(loop)
                if group is None:
                    group = waiters[loop] = _Waiters()
                waiter = loop.create_future()
                deadline = loop.time() + timeout
                group.queue.append((deadline, waiter))
                if group.timer is None:
                    group.timer = loop.call_at(deadline, self.expire_due, loop)
        if outcome is None:
            return await waiter
        ok, payload, orphaned = outcome
        if ok:
            return payload
        if orphaned and loop is not self.home:
            raise Orphaned("the fetch task's event loop ended")
        raise payload


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_POOL_LOCK = _forksafe.lock()


_WRITER: concurrent.futures.ThreadPoolExecutor | None = None


#: Workers of the shared refresh pool, and the most of them one function's refreshes hold:
#: one slow function cannot take every worker, so another function's refresh finds one free
#: unless ``POOL_SIZE // POOL_SHARE`` functions are refreshing slowly at the same moment.
POOL_SIZE = 8
POOL_SHARE = 2
#: The shared pool's free workers: a refresh takes one before it is submitted, or is not
#: started at all (the stale value was served): it never waits in the pool's queue.
_POOL_WORKERS = threading.BoundedSemaphore(POOL_SIZE)


@_forksafe.at_fork
def _forget_pools() -> None:
    """In a forked child the pools' threads are gone: new pools are made on first use, with
    every worker free."""
    global _POOL, _WRITER, _POOL_WORKERS
    _POOL = _WRITER = None
    _POOL_WORKERS = threading.BoundedSemaphore(POOL_SIZE)


def default_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The shared refresh pool of ``def`` functions (threads made as needed, up to
    :data:`POOL_SIZE`)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(
                max_workers=POOL_SIZE, thread_name_prefix="cacheward-refresh"
            )
        return _POOL


def default_writer() -> concurrent.futures.ThreadPoolExecutor:
    """Where a thread's shared-layer writes run after its callers were answered (its own
    pool, so writes to a hung layer never delay a refresh)."""
    global _WRITER
    with _POOL_LOCK:
        if _WRITER is None:
            _WRITER = concurrent.futures.ThreadPoolExecutor(
                max_workers=2, thread_name_prefix="cacheward-write"
            )
        return _WRITER


def positional_names(fn: Callable[..., Any]) -> tuple[str, ...]:
    import inspect

    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return ()
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return tuple(p.name for p in params if p.kind in kinds)


# --------------------------------------------------------------------------------------------
# The driver: the plans


#: How many local keys' text keys a driver remembers (emptied when full: ~100 bytes each).
TEXTS_KEPT = 1024


class Driver:
    """Everything one cached function needs at call time, and its plans."""

    def __init__(
        self,
        fn: Callable[..., Any],
        s: Settings,
        qualname: str,
        l1: MemoryLayer | None,
        *,
        is_async: bool,
        method: bool = False,
        self_key: Callable[[Any], Hashable] | None = None,
    ) -> None:
        self.fn = fn
        self.s = s
        self.l1 = l1
        self.names = positional_names(fn)
        #: A method: its first argument (``self``) is left out of the key, or replaced by
        #: ``self_key(self)`` (see :meth:`key_args`).
        self.method = method
        self.self_key = self_key
        if method:
            self.names = ("self",) * (self_key is not None) + self.names[1:]
        self.namespace = f"{s.namespace or qualname}:v{s.version}"
        self.counters = Counters()
        self.core: ReadThrough[Any] = ReadThrough(backoff=s.backoff, backoff_max=s.backoff_max)
        self.lock = _forksafe.lock()
        self.new_flight: Callable[[], Flight] = AsyncFlight if is_async else SyncFlight
        self.is_async = is_async
        self.remotes = [
            GuardedLayer(
                layer,
                s.clock,
                self.counters,
                breaker_of(layer, index, s.breaker_failures, s.breaker_reset, qualname),
                self.namespace,
            )
            for index, layer in enumerate(s.layers)
            if layer is not l1
        ]
        self.coordinator = next((g for g in self.remotes if g.leases), None)
        if not s.cross_process:
            self.coordinator = None
        #: No memory layer: every call reads the shared layers, so most of those reads are
        #: hits. They are plain reads (no flight, no lock, no lease: see :meth:`serve_plan`).
        self.read_first = l1 is None and bool(self.remotes)
        self.refresh_slots = threading.BoundedSemaphore(self.max_refreshes())
        #: Without a memory layer: entries whose shared-layer writes have not finished yet,
        #: so that a call right after a fetch does not miss while the write is on its way.
        self.writing: dict[Hashable, Entry] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        #: Hits counted on the hot path (in the wrapper's closure).
        self.memory_hits: Callable[[], int] = lambda: 0
        #: The backplane (see ``cacheward._backplane``): this stack's side, the shared layer
        #: whose channel it listens to, and that layer's subscriber.
        self.backplane: Stack | None = None
        self.backplane_layer: GuardedLayer | None = None
        self.subscriber: Any = None
        if s.backplane and l1 is not None:
            for guarded in self.remotes:
                subscribe = getattr(guarded.layer, "subscriber", None)
                subscriber = subscribe() if callable(subscribe) else None
                if subscriber is not None:
                    stack = Stack(
                        l1, self.namespace, subscriber.channel, s.clock.time, s.l1_max_age
                    )
                    guarded.announcer = stack.announce
                    self.backplane, self.backplane_layer = stack, guarded
                    self.subscriber = subscriber
                    break
        #: The flights ``refresh`` leads, by local key (they skip the shared layers' entries
        #: and write through; later refreshes of the key join them).
        self.forcing: dict[Hashable, Flight] = {}
        #: Tags (see ``cacheward._core.tags``): which keys carry which tag in this process,
        #: and a count of local drops (a shared-layer entry read before one is not kept).
        self.tag_index: TagIndex | None = None
        if s.tags is not None:
            for guarded in self.remotes:
                if not has_marks(guarded.layer):
                    index = s.layers.index(guarded.layer)
                    raise ConfigurationError(
                        f"tags= needs shared layers that support tags, and layers[{index}] "
                        f"({guarded.layer.name}) has no fence_tags: use a RedisLayer there, or "
                        "leave tags= out"
                    )
            self.tag_index = TagIndex(2 * (l1.maxsize if l1 is not None else 10_000) + 1024)
        self.generation = 0
        if self.backplane is not None:
            self.backplane.on_marks = self.drop_marks
            self.backplane.on_drop = self.drop_key
        DRIVERS.add(self)
        #: The text keys of recent local keys (see :meth:`cache_key`), at most TEXTS_KEPT.
        self.texts: dict[Hashable, str] = {}
        _forksafe.register(self)

    def after_fork(self) -> None:
        """In a forked child: the fetches in flight were the parent's threads' and will never
        end here, so they are forgotten (the next caller of a key leads a new one); so is the
        background work (its refresh slots free again, its writes not waited for)."""
        for local, state in list(self.core.states.items()):
            if state.flight is not None:
                self.core.abandon(local, state.flight)
        self.forcing.clear()
        self.writing.clear()
        self.tasks = set()
        self.refresh_slots = threading.BoundedSemaphore(self.max_refreshes())

    def max_refreshes(self) -> int:
        """This function's refresh slots: ``max_refreshes``, and in the shared refresh pool
        at most its share of the workers (:data:`POOL_SHARE`)."""
        if self.is_async or self.s.refresh_executor is not None:
            return self.s.max_refreshes
        return min(self.s.max_refreshes, POOL_SHARE)

    # ---- the two entry points per colour (one line each)

    def serve(
        self, local: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return perform(self.serve_plan(local, entry, args, kwargs))

    async def aserve(
        self, local: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        return await aperform(self.serve_plan(local, entry, args, kwargs))

    def invalidate(self, *args: Any, **kwargs: Any) -> Invalidation:
        return perform(self.invalidate_plan(args, kwargs))

    async def ainvalidate(self, *args: Any, **kwargs: Any) -> Invalidation:
        return await aperform(self.invalidate_plan(args, kwargs))

    def set(self, value: Any, /, *args: Any, **kwargs: Any) -> Invalidation:
        return perform(self.set_plan(value, args, kwargs))

    async def aset(self, value: Any, /, *args: Any, **kwargs: Any) -> Invalidation:
        return await aperform(self.set_plan(value, args, kwargs))

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return perform(self.refresh_plan(args, kwargs))

    async def arefresh(self, *args: Any, **kwargs: Any) -> Any:
        return await aperform(self.refresh_plan(args, kwargs))

    def get(self, *args: Any, **kwargs: Any) -> Any:
        return perform(self.get_plan(args, kwargs))

    async def aget(self, *args: Any, **kwargs: Any) -> Any:
        return await aperform(self.get_plan(args, kwargs))

    def cache_clear(self) -> Invalidation:
        return perform(self.clear_plan())

    async def acache_clear(self) -> Invalidation:
        return await aperform(self.clear_plan())

    # ---- the plans

    def serve_plan(
        self, local: Hashable, entry: Entry | None, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Plan[Any]:
        """One call that the memory layer did not answer with a fresh entry.

        With a memory layer the decision comes first, so that concurrent misses of a key in
        this process join one flight before anything reads a shared layer: its leader reads
        them (see :meth:`run`), taking the lease in the same round trip. Without one
        (:attr:`read_first`), a key with nothing in flight is read with plain reads first,
        and a fresh entry is served without a flight, the lock or a lease; only a miss goes
        on to the decision (and its leader to the lease).
        """
        key = self.cache_key(local, args, kwargs)
        held: Any = entry  # the backplane's guarded lookup may hand over a Recheck
        if type(held) is Recheck:
            entry = yield from self.recheck(key, held.entry)
        read = False
        if self.read_first and local not in self.core.states and local not in self.writing:
            entry, _ = yield from self.read_shared(key, entry, lease=False)
            if entry is not None and self.s.clock.time() < entry.fresh_until:
                self.count("hits", EventKind.HIT)
                return entry.value
            read = True
        action, state, flight, entry = self.decide(key, entry)
        if action is Action.BACKOFF and self.remotes:
            # Another process may have stored the key since this one's fetch failed.
            entry, action = yield from self.reread(key, entry, action)
        if action is Action.REFRESH:
            yield Refresh(self, key, flight, args, kwargs, stale=entry)
        answer = self.answer_now(key, action, state, entry)
        if answer is not MISSING:
            return answer
        if action is Action.WAIT and id(flight) in LEADING.get():
            return self.fallback(entry, self.recursion_error())
        try:
            if action is Action.WAIT:
                self.count("coalesced_waits", EventKind.COALESCED_WAIT)
                return (yield from self.join(key, flight, entry, args, kwargs))
            if read:
                flight.stale = entry  # what the shared layers hold (a waiter's fallback)
            return (yield from self.lead(key, flight, args, kwargs, read=read))
        except Expired:
            error: BaseException = self.timeout_error("the fetch")
        except BaseException as exc:
            error = exc
        now = self.s.clock.time()
        return self.fallback(
            flight.stale if self.better(entry, flight.stale, now) else entry, error
        )

    def join(
        self,
        key: CacheKey,
        flight: Any,
        entry: Entry | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Plan[Any]:
        """Wait for ``flight``, led by another caller. If it is :class:`Orphaned` (its task was
        cancelled because its event loop ended, while this caller is on another loop), decide
        again and take over: lead a new flight here or join one, within this caller's own
        deadline (a few times at most: each time another loop ended under it)."""
        clock = self.s.clock
        deadline = clock.monotonic() + self.s.wait_timeout
        takeovers = 0
        while True:
            left = max(0.0, deadline - clock.monotonic())
            try:
                return (yield Join(flight, left))
            except Orphaned:
                if takeovers == ORPHAN_TAKEOVERS:
                    raise
                takeovers += 1
            action, state, flight, entry = self.decide(key, entry)
            if action is Action.REFRESH:
                yield Refresh(self, key, flight, args, kwargs, stale=entry)
            answer = self.answer_now(key, action, state, entry)
            if answer is not MISSING:
                return answer
            if action is Action.FETCH:
                left = max(0.0, deadline - clock.monotonic())
                return (yield from self.lead(key, flight, args, kwargs, timeout=left))

    def recheck(self, key: CacheKey, entry: Entry) -> Plan[Entry | None]:
        """``entry`` (this process's memory layer) may have missed an invalidation: the
        backplane's channel is down and it was last known current ``l1_max_age`` or more ago,
        or it was held when the channel came back. One read of the shared layer says whether
        it still is. Another value there: taken. Gone there after an invalidation (a mark of
        the key, a tag or ``cache_clear`` at or after its creation): dropped here too, the call
        misses. Gone without one (Redis restarted, flushed, evicted or expired it): kept as a
        :class:`Suspect`, the key's fallback only (the call fetches, and is served it if the
        fetch fails or is refused). No answer: served as it is (nothing can tell; see
        docs/caching.md)."""
        stack = cast(Stack, self.backplane)
        guarded = cast(GuardedLayer, self.backplane_layer)
        self.counters.rechecks += 1
        generation = self.generation
        probes = callable(getattr(guarded.layer, "probe", None))
        answer = yield (Probe if probes else Get)(guarded, key)
        if answer is MISSING or (answer is None and probes):
            return entry
        marks: tuple[Any, ...] = (math.inf,)  # a layer that cannot tell: gone is invalidated
        if probes:
            probed = cast(Probed, answer)
            answer = probed.entry
            marks = (math.inf,) if probed.fenced else probed.marks
        found = guarded.entry(answer)
        l1 = cast(MemoryLayer, self.l1)
        if found is None:
            kept: Entry | None = None
            if not invalidated(created=entry.created, marks=marks):
                kept = suspect(entry, self.s.clock.time())
            with self.lock:
                if l1.lookup(key.local) is not entry or generation != self.generation:
                    return None  # replaced or dropped meanwhile: the read path decides anew
                if kept is None:
                    l1.delete(key)
                    return None
                l1.set(key, kept)
            self.counters.suspects += 1
            stack.mark(key.local, kept)
            return kept
        if still_current(entry, found):
            stack.mark(key.local, entry)
            return entry
        found, _ = self.absorb(key, None, found, self.s.clock.time(), generation)
        if found is not None:
            stack.mark(key.local, found)
        return found

    def lead(
        self,
        key: CacheKey,
        flight: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        read: bool = False,
        timeout: float | None = None,
    ) -> Plan[Any]:
        """Lead ``flight``: a thread runs the fetch plan here, a task starts the fetch task.
        ``read``: see :meth:`run`; ``timeout``: how long a task waits for its fetch
        (``wait_timeout`` unless less is left)."""
        wait = self.s.wait_timeout if timeout is None else timeout
        led = yield Lead(self, key, flight, args, kwargs, read=read, timeout=wait)
        if led is INLINE:
            return (yield from self.run(key, flight, args, kwargs, read=read))
        return led

    def reread(
        self, key: CacheKey, entry: Entry | None, action: Action
    ) -> Plan[tuple[Entry | None, Action]]:
        """During a back-off: what the shared layers hold now, and what it lets the caller do."""
        found, _ = yield from self.read_shared(key, entry, lease=False)
        freshness = classify(found, self.s.clock.time())
        if freshness is Freshness.FRESH:
            return found, Action.HIT
        if freshness is Freshness.STALE:
            return found, Action.STALE
        return found, action

    def read_shared(
        self, key: CacheKey, entry: Entry | None, *, lease: bool
    ) -> Plan[tuple[Entry | None, LeaseReply | None]]:
        """Read the shared layers top-down until a fresh entry; the lease layer is read by
        taking the lease in the same round trip (when ``lease``). Returns the best entry and
        the lease reply (``None`` if the lease layer was not reached)."""
        now = self.s.clock.time()
        generation = self.generation
        reply: LeaseReply | None = None
        for guarded in self.remotes:
            if guarded.pending and not (yield from self.replay(guarded)):
                if lease and guarded is self.coordinator:
                    reply = LeaseReply()  # not read: fetch without a lease
                continue
            if lease and guarded is self.coordinator:
                answer = yield Lease(guarded, key, self.s.lease_ttl)
                reply = LeaseReply() if answer is MISSING else cast(LeaseReply, answer)
                found = guarded.entry(reply.entry)
            else:
                found = guarded.entry((yield Get(guarded, key)))
            entry, fresh = self.absorb(key, entry, found, now, generation)
            if fresh:
                break
        return entry, reply

    def run(
        self,
        key: CacheKey,
        flight: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None = None,
        *,
        detach: bool = True,
        read: bool = False,
    ) -> Plan[Any]:
        """Lead ``flight``: consult the shared layers, else fetch; store; resolve the flight.

        ``stale`` is set for a background refresh (the memory layer's stale entry). ``detach``
        hands the shared-layer writes to a background executor, so that no caller waits for
        them (a thread leading its own call); a background refresh writes itself. ``read``:
        the caller has just read the shared layers (and missed), see :meth:`consult`.
        """
        token: int | None = None
        forced = self.forcing.get(key.local) is flight  # led by refresh(): fetch, write through
        try:
            if self.remotes and not forced:
                answered, value, token = yield from self.consult(
                    key, flight, stale, args, kwargs, read=read
                )
                if answered:
                    return value
            elif stale is None and not forced:
                self.count("misses", EventKind.MISS)
            started = self.s.clock.monotonic()
            self.counters.fetches += 1
            leading = LEADING.set(LEADING.get() | {id(flight)})
            try:
                value = yield Fetch(self.fn, args, kwargs)
            except BaseException as exc:
                self.count("fetch_errors", EventKind.FETCH_ERROR, exc)
                raise
            finally:
                # A task destroyed on a closed loop is closed by the collector, elsewhere.
                with contextlib.suppress(ValueError):
                    LEADING.reset(leading)
            emit(EventKind.FETCH, self.namespace, duration=self.s.clock.monotonic() - started)
        except BaseException as exc:
            self.unforce(key, flight)
            self.settle_failure(key, flight, exc)
            flight.reject(exc if isinstance(exc, Exception) else self.interrupted(exc))
            if token is not None:
                yield from self.write(self.release_plan(key, token), detach)
            raise
        entry = self.new_entry(value)
        store = self.adopt(key, flight, entry, fetched=True)
        if forced:
            self.unforce(key, flight)
            if self.remotes and store:
                yield from self.write(self.write_through(key, entry), detach)
            return value
        if self.remotes and (store or token is not None):
            yield from self.write(self.store_plan(key, entry if store else None, token), detach)
        return value

    def consult(
        self,
        key: CacheKey,
        flight: Any,
        stale: Entry | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        read: bool = False,
    ) -> Plan[tuple[bool, Any, int | None]]:
        """The leader reads the shared layers (taking the lease in the same round trip) and
        uses a fresh entry found there, serves a stale one while a refresh fetches, or waits
        for the process holding the lease. Returns ``(answered, value, token)``: ``answered``
        when the flight is resolved, else the lease token to fetch under (or ``None``).

        ``read``: the caller has just read the shared layers and missed; without a lease to
        take they are not read again (a miss costs one read and one write)."""
        coordinator = self.coordinator
        generation = self.generation  # a drop after this: what is read is not kept in memory
        if read and coordinator is None:
            entry, reply = flight.stale, None
        else:
            entry, reply = yield from self.read_shared(key, stale, lease=coordinator is not None)
        token = None if reply is None else reply.token
        if token is not None:
            self.lease_taken(cast(GuardedLayer, coordinator))
        if entry is not None and self.s.clock.time() < entry.fresh_until:
            if token is not None:
                yield Release(cast(GuardedLayer, coordinator), key, token)
            if stale is None:
                self.count("hits", EventKind.HIT)
            self.adopt(key, flight, entry, generation=generation)
            return True, entry.value, None
        if stale is None and entry is not None and self.stale_servable(entry):
            if token is not None:
                yield Release(cast(GuardedLayer, coordinator), key, token)
            value = yield from self.serve_stale(key, flight, entry, args, kwargs)
            return True, value, None
        flight.stale = entry
        if stale is None:
            self.count("misses", EventKind.MISS)
        if reply is not None and reply.busy:
            generation = self.generation
            token, found = yield from self.lease_wait(key)
            if found is not None:
                self.adopt(key, flight, found, generation=generation)
                return True, found.value, None
        return False, None, token

    def serve_stale(
        self,
        key: CacheKey,
        flight: Any,
        entry: Entry,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Plan[Any]:
        """The leader found only a stale entry in a shared layer (this process had none):
        every caller of the flight gets it now, and a background refresh fetches."""
        with self.lock:
            self.core.abandon(key.local, flight)
        flight.resolve(entry.value)
        action, _, refresh, judged = self.decide(key, entry)
        if action is Action.REFRESH:
            yield Refresh(self, key, refresh, args, kwargs, stale=judged)
        self.count("stale_hits", EventKind.STALE_SERVED)
        return entry.value

    def adopt(
        self,
        key: CacheKey,
        flight: Any,
        entry: Entry,
        *,
        fetched: bool = False,
        generation: int | None = None,
    ) -> bool:
        """End ``flight`` with ``entry`` and answer its callers; says whether to store it
        (``fetched``: it is this process's fetch, not another's value read back, which
        ``generation`` says when it was read: see :meth:`settle_success`)."""
        try:
            return self.settle_success(key, flight, entry, fetched=fetched, generation=generation)
        finally:
            flight.resolve(entry.value)

    def writer(self) -> concurrent.futures.Executor:
        return self.s.refresh_executor or default_writer()

    def lease_taken(self, coordinator: GuardedLayer) -> None:
        emit(EventKind.LEASE_TAKEN, self.namespace, layer=coordinator.layer.name)

    def write(self, writes: Plan[Any], detach: bool) -> Plan[None]:
        """Shared-layer writes, after every caller was answered: detached, or run here."""
        if detach:
            layers = tuple(g.layer for g in self.remotes)
            yield Detach(writes, self.writer, layers)
        else:
            yield from writes

    def store_plan(self, key: CacheKey, entry: Entry | None, token: int | None) -> Plan[None]:
        """Write the shared layers; the lease layer is written and released in one round trip
        (and told "no value is coming" when there is nothing to store)."""
        try:
            for guarded in self.remotes:
                if token is not None and guarded is self.coordinator:
                    stored = yield Publish(guarded, key, entry, token, self.s.lease_ttl)
                    if stored is None and entry is not None:  # fenced by an invalidation
                        self.forget(key, entry)
                    elif stored is False and entry is not None:  # refused: lease lost
                        emit(EventKind.LEASE_LOST, self.namespace, layer=guarded.layer.name)
                elif entry is not None:
                    yield Put(guarded, key, entry)
        finally:
            if entry is not None and self.writing:
                with self.lock:
                    if self.writing.get(key.local) is entry:
                        del self.writing[key.local]

    def release_plan(self, key: CacheKey, token: int) -> Plan[None]:
        yield Release(cast(GuardedLayer, self.coordinator), key, token)

    def lease_wait(self, key: CacheKey) -> Plan[tuple[int | None, Entry | None]]:
        """Wait while another process holds the key's lease: poll (each poll one round trip
        that retries the lease and reads the entry) until its value arrives, the lease is
        ours, or no value is coming; raises :class:`FetchTimeout` at the deadline.

        Returns ``(token, None)`` to fetch (``token`` is ``None`` when no lease service
        answered or the holder said no value is coming: fetch without one) or
        ``(None, entry)`` when the holder's value arrived.
        """
        coordinator = cast(GuardedLayer, self.coordinator)
        clock = self.s.clock
        wait = LeaseWait(start=clock.monotonic(), timeout=self.s.wait_timeout)
        self.count("lease_waits", EventKind.LEASE_WAIT)
        while True:
            delay = wait.next_delay(clock.monotonic())
            if delay is None:
                raise self.timeout_error("the process holding this key's lease")
            yield Sleep(clock, delay)
            if coordinator.pending and not (yield from self.replay(coordinator)):
                return None, None
            answer = yield Lease(coordinator, key, self.s.lease_ttl)
            if answer is MISSING:
                return None, None
            reply = cast(LeaseReply, answer)
            found = coordinator.entry(reply.entry)
            if found is not None and clock.time() < found.fresh_until:
                return None, found
            if not reply.busy:
                if reply.token is not None:
                    self.lease_taken(coordinator)
                return reply.token, None

    def invalidate_plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Invalidation]:
        local = self.local(args, kwargs)
        key = self.cache_key(local, args, kwargs)
        with self.lock:
            self.core.invalidate(local)
            self.writing.pop(local, None)
        self.count("invalidations", EventKind.INVALIDATED)
        if self.l1 is not None:
            self.l1.delete(key)
        try:
            return (yield from self.deliver(key))
        finally:
            self.settle_local(key, None)

    def settle_local(self, key: CacheKey, entry: Entry | None) -> None:
        """After a key's invalidation (or ``set`` of ``entry``) reached the shared layers: a
        read of them that raced it here may have put the old value back in memory (read
        before the fence, kept after the drop: found by the randomized coherence test). Drop
        what is not ``entry`` again, and let no read begun before now keep what it finds."""
        if self.l1 is None:
            return
        with self.lock:
            self.generation += 1
            if entry is None or self.l1.lookup(key.local) is not entry:
                self.l1.delete(key)

    def deliver(self, key: CacheKey, entry: Entry | None = None) -> Plan[Invalidation]:
        """Invalidate ``key`` in every shared layer (or write ``entry`` over it, fencing the
        rebuilds under way); a layer that cannot take it now keeps an invalidation of the key
        pending (replayed before this process reads that layer again, see
        ``cacheward._pending``): a value written late could overwrite a newer one, a late
        invalidation only costs a fetch."""
        pending: list[str] = []
        for guarded in self.remotes:
            replayed = not guarded.pending or (yield from self.replay(guarded))
            done = replayed and (yield invalidation_op(guarded, key, entry=entry)) is not MISSING
            if done:
                guarded.pending.discard(key)
            else:
                guarded.pending.keep(key, self.s.clock.time())
                pending.append(guarded.layer.name)
                self.schedule_replay(guarded)
        return Invalidation(pending=tuple(pending))

    def set_plan(
        self, value: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Plan[Invalidation]:
        """Write ``value`` through for these arguments: this process's memory at once (a fetch
        of the key under way here is not stored), then every shared layer, fencing the
        rebuilds under way in any process. A function that stores nothing (``ttl=0`` and no
        ``stale_if_error``) just invalidates."""
        local = self.local(args, kwargs)
        key = self.cache_key(local, args, kwargs)
        entry = self.new_entry(value) if self.s.stores else None
        with self.lock:
            self.core.invalidate(local)
            self.writing.pop(local, None)
            if self.l1 is not None and entry is not None:
                self.l1.set(key, entry)
        self.counters.sets += 1
        if self.l1 is not None and entry is None:
            self.l1.delete(key)
        try:
            return (yield from self.write_through(key, entry))
        finally:
            self.settle_local(key, entry)

    def write_through(self, key: CacheKey, entry: Entry | None) -> Plan[Invalidation]:
        """:meth:`deliver` ``entry``; then drop it from :attr:`writing` (no memory layer)."""
        try:
            return (yield from self.deliver(key, entry))
        finally:
            if entry is not None and self.writing:
                with self.lock:
                    if self.writing.get(key.local) is entry:
                        del self.writing[key.local]

    def refresh_plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Any]:
        """Fetch now, whatever the layers hold, and write the result through (as ``set``).

        Through this process's single-flight: a refresh arriving while another refresh of the
        key runs waits for it; a read's fetch under way (which may have read older data) is
        superseded (its callers get its result; it is not stored) and callers arriving now
        wait for the refresh. The fetch is the function's (for ``guard``: through the limiter,
        retries and budget). Failures raise, with no stale fallback; during the key's
        back-off a refresh raises :class:`BackoffActive`."""
        local = self.local(args, kwargs)
        key = self.cache_key(local, args, kwargs)
        self.counters.forced_refreshes += 1
        clock = self.s.clock
        with self.lock:
            state = self.core.states.get(local)
            flight: Any = None if state is None else cast(Any, state.flight)
            if flight is not None and self.forcing.get(local) is flight:
                action = Action.WAIT
                cast(Any, flight).prepare_wait()
            else:
                self.core.invalidate(local)
                action, state, flight = self.core.decide(
                    local,
                    None,
                    now=clock.time(),
                    mono=clock.monotonic(),
                    new_flight=self.new_flight,
                )
                if action is Action.FETCH:
                    self.forcing[local] = cast(Flight, flight)
        if action is Action.BACKOFF:
            raise self.backoff_error(key, state)
        if action is Action.WAIT and id(flight) in LEADING.get():
            raise self.recursion_error()
        try:
            if action is Action.WAIT:
                return (yield Join(flight, self.s.wait_timeout))
            return (yield from self.lead(key, flight, args, kwargs))
        except Expired:
            raise self.timeout_error("the refresh") from None

    def unforce(self, key: CacheKey, flight: Flight) -> None:
        with self.lock:
            if self.forcing.get(key.local) is flight:
                del self.forcing[key.local]

    def get_plan(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Plan[Any]:
        """The fresh value the layers hold for these arguments, read top-down without
        fetching (nor refreshing); :data:`cacheward.MISSING` when none holds a fresh one (a
        stale entry is a miss here). Shared layers' pending invalidations are replayed first;
        an entry found in a shared layer is kept in memory, as a read would."""
        local = self.local(args, kwargs)
        with self.lock:
            entry = self.l1.lookup(local) if self.l1 is not None else None
            if entry is None:
                entry = self.writing.get(local)
        if self.remotes and (entry is None or self.s.clock.time() >= entry.fresh_until):
            key = self.cache_key(local, args, kwargs)
            entry, _ = yield from self.read_shared(key, entry, lease=False)
        if entry is not None and self.s.clock.time() < entry.fresh_until:
            return entry.value
        return Missing.MISSING

    def schedule_replay(self, guarded: GuardedLayer, delay: float = 0.0, tries: int = 0) -> None:
        """Replay ``guarded``'s pending invalidations in the background until they are all
        delivered, so that other processes stop serving the old values as soon as the layer
        answers again even if this process does not read it: one timer per layer at a time,
        retrying every ``breaker_reset`` at first, then up to 8 times that, at most
        :data:`REPLAY_TRIES` times (the next invalidation or read of the layer tries again).

        Only on the system clock: with an injected clock (tests, simulations) replays happen
        before the next read of the layer, so a schedule stays deterministic."""
        if tries >= REPLAY_TRIES or not isinstance(self.s.clock, SystemClock):
            return
        book = guarded.pending
        if not book.claim_replay():
            return
        reset = max(0.05, guarded.reset)
        delay = min(max(delay * 2, reset), 8 * reset)

        def again(done: bool) -> None:
            book.release_replay()
            if not done or book:
                self.schedule_replay(guarded, delay, tries + 1)

        if self.is_async:
            import asyncio

            loop = asyncio.get_running_loop()

            def start() -> None:
                task = loop.create_task(aperform(self.replay(guarded)))
                task.add_done_callback(
                    lambda t: again(not t.cancelled() and t.exception() is None and t.result())
                )

            loop.call_later(delay, start)
        else:

            def job() -> None:
                done = False
                try:
                    done = perform(self.replay(guarded))
                except Exception:  # noqa: S110 - background work never raises into its thread
                    pass  # (an op is a miss already; this is the layer object gone or patched)
                finally:
                    again(done)

            timer = threading.Timer(delay, job)
            timer.daemon = True
            timer.start()

    def replay(self, guarded: GuardedLayer) -> Plan[bool]:
        """Send ``guarded``'s pending invalidations, oldest first; ``False`` if one fails (the
        layer must not be read then)."""
        delivered = 0
        for key in guarded.pending.snapshot():
            if (yield invalidation_op(guarded, key, replay=True)) is MISSING:
                return False
            guarded.pending.delivered(key)
            delivered += 1
        names = tuple(guarded.pending.marks())
        if names:
            if (yield marks_op(guarded, names, replay=True)) is MISSING:
                return False
            guarded.pending.marks_delivered(names)
            delivered += 1
        if delivered:
            emit(EventKind.INVALIDATIONS_REPLAYED, self.namespace, layer=guarded.layer.name)
        return True

    def forget(self, key: CacheKey, entry: Entry) -> None:
        """A shared layer refused ``entry`` (fenced by an invalidation in another process, or
        older than what it holds): this process stops serving it too."""
        if self.l1 is not None:
            with self.lock:
                if self.l1.lookup(key.local) is entry:
                    self.l1.delete(key)

    # ---- background work: a thread of the refresh executor, or a task

    def take_refresh_slot(self, key: CacheKey, flight: Flight, *, pooled: bool) -> bool:
        """Take one of this function's refresh slots (``max_refreshes``, and in the shared
        pool at most :data:`POOL_SHARE`) and, for the shared pool (``pooled``), one of its
        free workers. When none is free the refresh is not started (the stale value was
        served anyway; it is never queued behind other functions' refreshes) and its flight
        is abandoned, unless a caller took it over meanwhile."""
        if self.refresh_slots.acquire(blocking=False):
            if not pooled or _POOL_WORKERS.acquire(blocking=False):
                self.count("refreshes", EventKind.REFRESH_STARTED)
                return True
            self.refresh_slots.release()
        self.count("refreshes_skipped", EventKind.REFRESH_SKIPPED)
        self.give_up(key, flight)
        return False

    def give_up(self, key: CacheKey, flight: Flight) -> None:
        """A refresh that will not run: its flight is abandoned, unless a caller leads it."""
        with self.lock:
            if self.core.begin(key.local, flight):
                self.core.abandon(key.local, flight)

    def start_refresh(
        self,
        key: CacheKey,
        flight: SyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None,
    ) -> None:
        pooled = self.s.refresh_executor is None
        if not self.take_refresh_slot(key, flight, pooled=pooled):
            return

        def release() -> None:
            self.refresh_slots.release()
            if pooled:
                _POOL_WORKERS.release()

        def job() -> None:
            try:
                with self.lock:
                    leads = self.core.begin(key.local, flight)  # not taken over meanwhile
                if leads:
                    perform(self.run(key, flight, args, kwargs, stale, detach=False))
            except Exception:  # noqa: S110 - counted and backed off by run(); stale was served
                pass
            finally:
                release()

        executor = self.s.refresh_executor or default_pool()
        try:
            executor.submit(job)
        except RuntimeError:  # executor shut down (interpreter exit)
            release()
            self.give_up(key, flight)

    def start_arefresh(
        self,
        key: CacheKey,
        flight: AsyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None,
    ) -> None:
        if not self.take_refresh_slot(key, flight, pooled=False):
            return
        with self.lock:
            leads = self.core.begin(key.local, flight)  # a task starts at once: no queue
        if not leads:  # taken over by a caller on another loop meanwhile
            self.refresh_slots.release()
            return
        flight.on_end = self.refresh_slots.release
        self.start_task(key, flight, args, kwargs, stale)
        cast("asyncio.Task[Any]", flight.task).add_done_callback(lambda _: flight.end())

    def start_task(
        self,
        key: CacheKey,
        flight: AsyncFlight,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        stale: Entry | None,
        *,
        read: bool = False,
    ) -> None:
        plan = self.run(key, flight, args, kwargs, stale, read=read)
        import asyncio

        loop = asyncio.get_running_loop()
        task = loop.create_task(aperform(plan))
        flight.task, flight.home = task, loop
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(flight.settle)

    # ---- keys and decisions (no I/O)

    def count(self, counter: str, kind: EventKind, error: BaseException | None = None) -> None:
        """Bump a counter and emit the matching event (slow paths only)."""
        counters = self.counters
        setattr(counters, counter, getattr(counters, counter) + 1)
        emit(kind, self.namespace, error=error)

    def key_args(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], Sequence[str]]:
        """The arguments a key is made of: ``key=``'s result, or the call's arguments with
        positional parameters passed by keyword moved into place (``f("a")`` and
        ``f(customer="a")`` share a key; defaults are not filled in)."""
        if self.s.key is not None:
            return (self.s.key(*args, **kwargs),), {}, ("key",)
        if self.method and args:
            args = args[1:] if self.self_key is None else (self.self_key(args[0]), *args[1:])
        if kwargs:
            names = self.names
            moved = list(args)
            rest = dict(kwargs)
            for name in names[len(args) :]:
                if name not in rest:
                    break
                moved.append(rest.pop(name))
            return tuple(moved), rest, names
        return args, kwargs, self.names

    def local(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
        return local_key(*self.key_args(args, kwargs))

    def cache_key(self, local: Hashable, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CacheKey:
        tags: tuple[str, ...] = ()
        index = self.tag_index
        if index is not None:
            # Recorded before the call decides anything: a fetch of the key started from here
            # on is fenced by a drop of its tags (see drop_tags).
            tags = tags_of(self.s.tags, args, kwargs)
            if tags:
                with self.lock:
                    index.add(local, tags, self.holds)
        if not self.remotes:
            return CacheKey(local, self.namespace, *self.key_args(args, kwargs), tags)
        # A shared layer needs the text key (typed encoding + BLAKE2b, a few µs): remembered
        # for recent local keys, which determine it (see cacheward._core.keys.local_key).
        texts = self.texts
        key = CacheKey(
            local, self.namespace, *self.key_args(args, kwargs), tags, text=texts.get(local)
        )
        if len(texts) >= TEXTS_KEPT:
            texts.clear()
        texts[local] = key.text
        return key

    def holds(self, local: Hashable) -> bool:
        """Whether this process still has something of ``local`` (the lock is held)."""
        return (
            (self.l1 is not None and local in self.l1._data)
            or local in self.core.states
            or local in self.writing
        )

    # ---- tags and clear (see cacheward._core.tags)

    def drop_marks(self, names: tuple[str, ...]) -> None:
        """Raised marks announced by another process: drop what they invalidate here."""
        if clear_mark(self.namespace) in names:
            self.drop_all()
        elif self.tag_index is not None:
            tags = [name[2:] for name in names if name.startswith("t:")]
            if tags:
                self.drop_tags(tags)

    def drop_key(self, local: Hashable) -> None:
        """Another process invalidated (or wrote) ``local``: drop it from memory, fence its
        fetch in flight here, and let no read of the shared layers begun before keep what it
        found (it may have read the old value just before the other process's fence)."""
        with self.lock:
            self.generation += 1
            self.forget_local(local)

    def drop_tags(self, tags: Sequence[str]) -> None:
        """Drop every key carrying one of ``tags`` from memory, and fence its fetch in flight."""
        index = self.tag_index
        if index is None:
            return
        with self.lock:
            self.generation += 1
            for local in index.pop(tags):
                self.forget_local(local)

    def drop_all(self) -> None:
        """Drop every key of this function from memory, and fence every fetch in flight."""
        with self.lock:
            self.generation += 1
            for local in list(self.core.states):
                self.core.invalidate(local)
            self.writing.clear()
            if self.tag_index is not None:
                self.tag_index.clear()
            if self.l1 is not None:
                self.l1.clear()

    def forget_local(self, local: Hashable) -> None:
        """(The lock is held.)"""
        self.core.invalidate(local)
        self.writing.pop(local, None)
        if self.l1 is not None:
            self.l1.delete(CacheKey(local, self.namespace, (), {}, ()))

    def clear_plan(self) -> Plan[Invalidation]:
        """``cache_clear``: this process's memory at once, then every shared layer (one mark,
        announced to the other processes), then this memory again (a read that raced it)."""
        self.counters.clears += 1
        emit(EventKind.INVALIDATED, self.namespace)
        self.drop_all()
        names = (clear_mark(self.namespace),)
        try:
            targets = [(self, guarded) for guarded in self.remotes]
            return (yield from deliver_marks(targets, names, self.namespace))
        finally:
            self.drop_all()

    def decide(self, key: CacheKey, entry: Entry | None) -> tuple[Action, Any, Any, Entry | None]:
        """Ask the core, holding the lock; returns its answer and the entry it judged.

        The memory layer is read again under the lock: a fetch that finished while this caller
        was reading a slow shared layer stored its entry there (under this same lock), and
        deciding on the older entry would start a second fetch of the key.
        """
        now = self.s.clock.time()
        with self.lock:
            current = self.l1.lookup(key.local) if self.l1 is not None else None
            if current is None and self.writing:
                current = self.writing.get(key.local)
            if self.better(entry, current, now):
                entry = current
            action, state, flight = self.core.decide(
                key.local, entry, now=now, mono=self.s.clock.monotonic(), new_flight=self.new_flight
            )
            if action is Action.WAIT:
                cast(Any, flight).prepare_wait()
        return action, state, flight, entry

    def answer_now(self, key: CacheKey, action: Action, state: Any, entry: Entry | None) -> Any:
        """The answer of the actions that need no fetch, else :data:`MISSING`."""
        if action is Action.HIT:
            self.count("hits", EventKind.HIT)
            return cast(Entry, entry).value
        if action is Action.STALE or action is Action.REFRESH:
            self.count("stale_hits", EventKind.STALE_SERVED)
            return cast(Entry, entry).value
        if action is Action.BACKOFF:
            return self.fallback(entry, self.backoff_error(key, state))
        return MISSING

    def absorb(
        self, key: CacheKey, entry: Entry | None, found: Entry | None, now: float, generation: int
    ) -> tuple[Entry | None, bool]:
        """Take a shared layer's answer into account: returns the best entry so far and
        whether it is fresh (no need to read further layers). It is kept in memory unless
        tags or the whole function were dropped here since the read began (``generation``):
        it may predate that invalidation."""
        if found is not None:
            s = self.s
            found = bounded(
                found, now=now, ttl=s.ttl, stale_ttl=s.stale_ttl, stale_if_error=s.stale_if_error
            )
        if not self.better(entry, found, now):
            return entry, False
        found = cast(Entry, found)
        if self.l1 is not None and self.s.stores:
            with self.lock:
                if generation == self.generation:
                    self.l1.set(key, found)
        return found, now < found.fresh_until

    def stale_servable(self, entry: Entry | None) -> bool:
        """Whether the memory layer's entry may be served stale right now.

        Such a caller does not read the shared layers: it is served at once, and the refresh
        it may start reads them first (in the background). A hung shared layer thus never
        delays a stale hit, only a miss.
        """
        return entry is not None and classify(entry, self.s.clock.time()) is Freshness.STALE

    def better(self, entry: Entry | None, found: Entry | None, now: float) -> bool:
        """Whether ``found`` (from a shared layer) beats ``entry`` (what the caller holds)."""
        if found is None or now >= found.error_until:
            return False
        return entry is None or found.fresh_until > entry.fresh_until

    def new_entry(self, value: Any) -> Entry:
        s = self.s
        return make_entry(
            value,
            now=s.clock.time(),
            ttl=s.ttl,
            stale_ttl=s.stale_ttl,
            stale_if_error=s.stale_if_error,
            jitter=s.jitter,
            draw=s.rng.random(),
        )

    def settle_failure(self, key: CacheKey, flight: Flight, exc: BaseException) -> None:
        with self.lock:
            if isinstance(exc, Exception):
                self.core.fail(
                    key.local, flight, exc, mono=self.s.clock.monotonic(), draw=self.s.rng.random()
                )
            else:  # cancelled or interrupted: no verdict on the backend
                self.core.abandon(key.local, flight)

    def settle_success(
        self,
        key: CacheKey,
        flight: Flight,
        entry: Entry,
        *,
        fetched: bool,
        generation: int | None = None,
    ) -> bool:
        """End ``flight`` with ``entry``; stores it in memory (under the lock, so no caller can
        see the flight gone and the entry missing) and says whether shared layers get it.

        An entry read from a shared layer (``generation``: :attr:`generation` when the read
        began) is not kept in memory if a key or tag was dropped here since: it may have been
        read just before that invalidation's fence (found by the randomized coherence test).
        Without a memory layer, a ``fetched`` entry is kept in :attr:`writing` until its
        shared-layer writes are done (:meth:`store_plan` drops it)."""
        with self.lock:
            store = self.core.succeed(key.local, flight) and self.s.stores
            if store:
                if self.l1 is not None:
                    if generation is None or generation == self.generation:
                        self.l1.set(key, entry)
                elif fetched and self.remotes:
                    self.writing[key.local] = entry
        return store

    def fallback(self, entry: Entry | None, exc: BaseException) -> Any:
        """Serve ``entry`` if it is usable on error, else re-raise ``exc``."""
        if isinstance(exc, Exception) and usable_on_error(entry, self.s.clock.time()):
            self.count("stale_on_error", EventKind.STALE_SERVED, exc)
            if type(entry) is Suspect:
                self.counters.suspects_served += 1
            return cast(Entry, entry).value
        raise exc

    def backoff_error(self, key: CacheKey, state: Any) -> BackoffActive:
        self.count("backoff_rejections", EventKind.BACKOFF_REJECTED, state.last_error)
        wait = self.core.retry_after(state, self.s.clock.monotonic())
        error = BackoffActive(
            f"{self.namespace}: the last fetch of this key failed "
            f"({type(state.last_error).__name__}: {state.last_error}); not fetching again for "
            f"{wait:.2f}s (backoff={self.s.backoff}s, backoff_max={self.s.backoff_max}s) "
            "and no stale value is available (raise stale_if_error to serve older values)",
            retry_after=wait,
        )
        error.__cause__ = state.last_error
        return error

    def interrupted(self, exc: BaseException) -> FetchInterrupted:
        """What waiters get instead of an interruption that happened to the leader."""
        error = FetchInterrupted(
            f"{self.namespace}: the fetch this call waited for was interrupted "
            f"({type(exc).__name__}) in the caller that led it; call again to fetch anew"
        )
        error.__cause__ = None
        return error

    def recursion_error(self) -> RecursiveFetch:
        return RecursiveFetch(
            f"{self.namespace}: the fetch of this key called the same cached function with the "
            "same key, so it would wait for itself until wait_timeout; fetch the inner value "
            "another way (or use another key)"
        )

    def timeout_error(self, what: str) -> FetchTimeout:
        self.count("wait_timeouts", EventKind.WAIT_TIMEOUT)
        return FetchTimeout(
            f"{self.namespace}: waited wait_timeout={self.s.wait_timeout}s for {what} and no "
            "stale value is available; raise wait_timeout or stale_if_error, or make the "
            "backend faster"
        )

    def stats(self) -> CacheStats:
        with self.lock:
            in_flight = sum(1 for st in self.core.states.values() if st.flight is not None)
        stats = self.counters.snapshot(in_flight)
        books = [g.pending for g in self.remotes]
        import dataclasses  # the stats class is built by now: it has an instance

        return dataclasses.replace(
            stats,
            hits=stats.hits + self.memory_hits(),
            invalidations_pending=sum(book.count(self.namespace) for book in books),
            invalidations_replayed=sum(book.replayed[self.namespace] for book in books),
        )


# --------------------------------------------------------------------------------------------
# Tags across functions: cw.invalidate_tags


#: Every live cached function's driver (``invalidate_tags`` reaches them all).
DRIVERS: weakref.WeakSet[Driver] = weakref.WeakSet()


def deliver_marks(
    targets: Sequence[tuple[Driver | None, GuardedLayer]], names: tuple[str, ...], namespace: str
) -> Plan[Invalidation]:
    """Raise marks in each shared layer (one round trip each); a layer that cannot take them
    now keeps them pending (counted against ``namespace``; ``""`` for tags) and replays them
    before this process reads it again, as it does invalidations (and in the background, when
    a cached function of this process uses the layer: ``driver``)."""
    pending: list[str] = []
    for driver, guarded in targets:
        replayed = driver is None or not guarded.pending or (yield from driver.replay(guarded))
        if not (replayed and (yield marks_op(guarded, names)) is not MISSING):
            now = SYSTEM_CLOCK.time() if driver is None else driver.s.clock.time()
            guarded.pending.keep_marks(names, now, namespace)
            pending.append(guarded.layer.name)
            if driver is not None:
                driver.schedule_replay(guarded)
    return Invalidation(pending=tuple(pending))


def tag_targets(
    layers: Sequence[Any] | None, *, asynchronous: bool
) -> list[tuple[Driver | None, GuardedLayer]]:
    """The shared layers ``invalidate_tags`` reaches: ``layers``, or every shared layer of a
    cached function with ``tags=`` alive in this process (whose client serves this colour):
    no other function's entries carry a tag.

    Raises:
        ConfigurationError: one of ``layers`` has no tags, or cannot serve this colour.
    """
    known: dict[int, tuple[Driver | None, GuardedLayer]] = {}
    for driver in list(DRIVERS):
        for guarded in driver.remotes if driver.tag_index is not None else ():
            layer = guarded.layer
            if id(layer) in known or not has_marks(layer):
                continue
            check = getattr(layer, "check_caller", None)
            if callable(check):
                try:  # a layer whose client cannot serve this colour is reached by the other
                    check(asynchronous=asynchronous, where="invalidate_tags")
                except ConfigurationError:
                    continue
            known[id(layer)] = (driver, guarded)
    if layers is None:
        return list(known.values())
    targets: list[tuple[Driver | None, GuardedLayer]] = []
    for index, layer in enumerate(layers):
        if not has_marks(layer):
            raise ConfigurationError(
                f"invalidate_tags(layers=...): layers[{index}] "
                f"({getattr(layer, 'name', type(layer).__name__)}) has no tags (fence_tags); "
                "give shared layers that support them, such as RedisLayer"
            )
        check = getattr(layer, "check_caller", None)
        if callable(check):
            check(asynchronous=asynchronous, where=f"invalidate_tags(layers=...): layers[{index}]")
        found = known.get(id(layer))
        if found is None:
            breaker = breaker_of(layer, index, None, None, "invalidate_tags")
            guarded = GuardedLayer(layer, SYSTEM_CLOCK, Counters(), breaker, "invalidate_tags")
            found = (None, guarded)
        targets.append(found)
    return targets


def tags_plan(
    tags: tuple[str, ...], targets: list[tuple[Driver | None, GuardedLayer]]
) -> Plan[Invalidation]:
    drivers = list(DRIVERS)
    for driver in drivers:
        driver.drop_tags(tags)
    if not tags:
        return Invalidation()
    try:
        return (yield from deliver_marks(targets, tuple(tag_mark(t) for t in tags), ""))
    finally:
        # Again: a read of a shared layer that raced the marks may have kept an old entry.
        for driver in drivers:
            driver.drop_tags(tags)


def _checked(tags: tuple[object, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(check_tag(tag, "invalidate_tags") for tag in tags))


def invalidate_tags(*tags: str, layers: Sequence[Any] | None = None) -> Invalidation:
    """Drop every entry carrying any of ``tags``, from every cached function and layer, in
    every process (O(1) writes per tag and shared layer; see docs/caching.md, "Tags and
    clear"). Rebuilds under way that started before are not stored. A shared layer that cannot
    be reached keeps the invalidation pending and replays it, as ``invalidate`` does.

    Args:
        tags: the tags (``str``).
        layers: the shared layers to write the tags' marks in; by default every shared layer
            of a cached function with ``tags=`` alive in this process (a process with no such
            function on a layer, such as an admin script, names the layer here; ``[]``: this
            process's memory layers only). In-process memory layers are always reached.

    Returns:
        An :class:`~cacheward.Invalidation` naming the layers where it is pending.

    Raises:
        ConfigurationTypeError: a tag is not a ``str``.
        ConfigurationError: a tag is empty or too long, or one of ``layers`` has no tags.
    """
    checked = _checked(tags)
    return perform(tags_plan(checked, tag_targets(layers, asynchronous=False)))


async def ainvalidate_tags(*tags: str, layers: Sequence[Any] | None = None) -> Invalidation:
    """Async :func:`invalidate_tags` (for layers whose client is an asyncio one)."""
    checked = _checked(tags)
    return await aperform(tags_plan(checked, tag_targets(layers, asynchronous=True)))
