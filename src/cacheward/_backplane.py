"""The backplane: invalidations and writes reach every process's in-process layer via Redis.

Every fence (an invalidation, or a value written over a key) of a stack with a
:class:`~cacheward.MemoryLayer` above a :class:`~cacheward.RedisLayer` publishes one message on
the layer's channel, in the fence script itself (``cache_invalidate.lua``: plain ``PUBLISH``,
which a Redis Cluster delivers to every node). One :class:`Subscriber` per layer and process —
a daemon thread on its own connection — hears them and drops the key from the memory layer of
every stack of that function in this process (the sender's own stack is skipped: it already
did).

While the channel is down, or silent for :data:`SILENCE` seconds, the stacks it serves are
*guarded*: their hot path's lookup is swapped for :meth:`Stack.lookup`, which hands an entry
last known current ``l1_max_age`` or more ago to the read path as a :class:`Recheck` (one read
of the shared layer, never a backend fetch unless the key is gone there). With the channel up
the hot path is the memory layer's bare ``dict.get``, as without a backplane: the subscriber
swaps the lookup, the hit path checks nothing. When the channel is back, messages may have been
missed: each entry the memory layers held then is re-validated once, at its next hit, with the
same read (:meth:`Stack.relookup`), and hits go unchecked again once every such entry was
re-validated, replaced or has expired. Nothing is emptied: an entry the restarted (or flushed)
Redis lost without a sign of an invalidation is kept as its key's fallback (see
``cacheward._core.coherence``), so a cache outage's recovery costs refetches, not errors.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, Final

from cacheward import _forksafe
from cacheward._core.coherence import needs_check, unverified
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._events import EventKind, emit

__all__ = [
    "HEARTBEAT",
    "SILENCE",
    "Recheck",
    "Stack",
    "Subscriber",
    "decode",
    "decode_marks",
    "encode",
    "encode_marks",
]

#: How often the subscriber pings Redis on its connection (seconds).
HEARTBEAT: Final = 0.5
#: How long the channel may be silent (no message, no answer to a ping) before it counts as down.
SILENCE: Final = 1.5
#: Reconnect back-off: first and longest wait (seconds).
BACKOFF_FIRST: Final = 0.05
BACKOFF_MAX: Final = 5.0

#: This process (messages carry it with the sending stack, so a stack skips its own).
PROCESS = os.urandom(6).hex()  # what secrets.token_hex does, without importing random


@_forksafe.at_fork
def _new_process() -> None:
    global PROCESS
    PROCESS = os.urandom(6).hex()


class Recheck(float):
    """What a guarded lookup returns for an entry it may not serve unchecked: it fails the hot
    path's freshness test (``now < +found``: it is the float ``-inf``, as an entry is its
    ``fresh_until``), so the call goes to the read path, and carries the entry."""

    __slots__ = ("entry",)
    fresh_until: Final = -math.inf
    entry: Entry

    def __new__(cls, entry: Entry) -> Recheck:
        self = float.__new__(cls, -math.inf)
        self.entry = entry
        return self


# --- messages: [origin, namespace, local key] -----------------------------------------------


def _tag(local: Hashable) -> Any:
    kind = type(local)
    if kind is str:
        return ["s", local]
    if kind is int:
        return ["i", str(local)]
    if kind is bytes:
        return ["b", base64.b64encode(local).decode()]  # type: ignore[arg-type]
    if kind is tuple:
        return ["t", [_tag(item) for item in local]]  # type: ignore[attr-defined]
    raise TypeError(f"no message form for a local key of type {kind.__name__}")


def _untag(obj: Any) -> Hashable:
    kind, value = obj
    if kind == "s" and type(value) is str:
        return value
    if kind == "i" and type(value) is str:
        return int(value)
    if kind == "b" and type(value) is str:
        return base64.b64decode(value, validate=True)
    if kind == "t" and type(value) is list:
        items = tuple(_untag(item) for item in value)
        if all(type(item) is str or type(item) is int for item in items):
            return items
    raise ValueError("not a local key")


def encode(origin: str, namespace: str, local: Hashable) -> str:
    """The announcement of ``local``'s invalidation (or new value) in ``namespace``."""
    return json.dumps([origin, namespace, _tag(local)], separators=(",", ":"))


def decode(data: Any) -> tuple[str, str, Hashable] | None:
    """An announcement's parts, or ``None`` for anything that is not one (never raises)."""
    try:
        origin, namespace, tagged = json.loads(data)
        if type(origin) is not str or type(namespace) is not str:
            return None
        return origin, namespace, _untag(tagged)
    except Exception:
        return None


def encode_marks(names: tuple[str, ...]) -> str:
    """The announcement of raised marks (tags invalidated, or a function's ``cache_clear``;
    see ``cacheward._core.tags``), sent by this process."""
    return json.dumps([PROCESS, "", ["m", list(names)]], separators=(",", ":"))


def decode_marks(data: Any) -> tuple[str, tuple[str, ...]] | None:
    """A marks announcement's origin and names, or ``None`` for anything else (never raises)."""
    try:
        origin, _, (kind, names) = json.loads(data)
        if kind != "m" or type(origin) is not str or type(names) is not list:
            return None
        if not all(type(name) is str for name in names):
            return None
        return origin, tuple(names)
    except Exception:
        return None


# --- one stack's side ---------------------------------------------------------------------


class Stack:
    """The backplane's view of one cached function's memory layer.

    Args:
        l1: the memory layer.
        namespace: the function's namespace (``"<namespace>:v<version>"``).
        channel: the shared layer's channel.
        time: the wall clock (entries' ``created`` stamps are wall-clock).
        max_age: ``l1_max_age``.
    """

    __slots__ = (
        "__weakref__",
        "channel",
        "checked",
        "fast",
        "guarded",
        "l1",
        "lock",
        "max_age",
        "namespace",
        "on_drop",
        "on_marks",
        "origin",
        "resynced",
        "set_lookup",
        "since",
        "time",
        "unverified",
    )

    def __init__(
        self, l1: Any, namespace: str, channel: str, time: Callable[[], float], max_age: float
    ) -> None:
        self.l1 = l1
        self.fast: Callable[[Hashable], Entry | None] = l1._fast_get
        self.namespace = namespace
        self.channel = channel
        self.time = time
        self.max_age = max_age
        self.origin = f"{PROCESS}:{os.urandom(4).hex()}"
        _forksafe.register(self)
        #: Swaps the hot path's lookup (set when the wrapper is built).
        self.set_lookup: Callable[[Callable[[Hashable], Any]], None] = lambda lookup: None
        #: Drops what raised marks invalidate (set by the driver: its tag index, its clear).
        self.on_marks: Callable[[tuple[str, ...]], None] = lambda names: None
        #: Drops an announced key (set by the driver, which also fences its fetch here).
        self.on_drop: Callable[[Hashable], None] = self._drop
        self.guarded = False
        #: While guarded: when the channel was last heard, and the keys re-validated since.
        self.since = 0.0
        self.checked: dict[Hashable, tuple[Entry, float]] = {}
        #: After a lost channel came back (at ``resynced``): the keys held then and not
        #: re-validated since (see :meth:`resync`).
        self.unverified: set[Hashable] = set()
        self.resynced = -math.inf
        #: Serializes the lookup swaps (the subscriber's thread and callers' threads).
        self.lock = _forksafe.lock()

    def after_fork(self) -> None:
        """In a forked child: an origin of its own, or the parent would take the child's
        announcements for its own echo and ignore them."""
        self.origin = f"{PROCESS}:{os.urandom(4).hex()}"

    def announce(self, key: CacheKey) -> tuple[str, str]:
        """The ``(channel, message)`` a fence of ``key`` publishes."""
        try:
            return self.channel, encode(self.origin, self.namespace, key.local)
        except TypeError:
            return "", ""

    def lookup(self, local: Hashable) -> Any:
        """The hot path's lookup while guarded (see the module's docstring)."""
        entry = self.fast(local)
        if entry is None:
            return None
        record = self.checked.get(local)
        checked = record[1] if record is not None and record[0] is entry else None
        if local in self.unverified and unverified(
            resynced=self.resynced, created=entry.created, checked=checked
        ):
            return Recheck(entry)  # held before an earlier loss of the channel, never checked
        if needs_check(
            now=self.time(),
            since=self.since,
            created=entry.created,
            checked=checked,
            max_age=self.max_age,
        ):
            return Recheck(entry)
        return entry

    def relookup(self, local: Hashable) -> Any:
        """The hot path's lookup after the channel came back, until every entry held then was
        re-validated once (see :meth:`resync`)."""
        entry = self.fast(local)
        if local not in self.unverified:
            return entry
        if entry is None or entry.created > self.resynced:
            self.verified(local)  # gone, or made since: nothing missed
            return entry
        return Recheck(entry)

    def mark(self, local: Hashable, entry: Entry) -> None:
        """``entry`` was just re-validated against the shared layer (found current there, or
        taken from there, or kept as the key's fallback after the layer lost it)."""
        if self.guarded:
            self.checked[local] = (entry, self.time())
        if self.unverified:
            self.verified(local)

    def verified(self, local: Hashable) -> None:
        """``local`` needs no re-validation for the channel's last loss any more."""
        self.unverified.discard(local)
        if not self.unverified:
            self._settled()

    def _settled(self) -> None:
        """Nothing is left to re-validate: unchecked hits again, unless the channel is down."""
        with self.lock:
            if not self.unverified and not self.guarded:
                self.set_lookup(self.fast)

    def prune(self) -> None:
        """Forget the keys awaiting re-validation whose entry is gone, newer than the channel's
        return, or expired (called by the subscriber's thread on each heartbeat), so that the
        checking lookup ends even for keys nobody asks for again."""
        if not self.unverified:
            return
        now = self.time()
        data = self.l1._data
        for local in list(self.unverified):
            entry = data.get(local)
            if entry is None or entry.created > self.resynced or entry.error_until <= now:
                self.unverified.discard(local)
        if not self.unverified:
            self._settled()

    def guard(self, ago: float = 0.0) -> None:
        """The channel is down; it was last heard ``ago`` seconds ago."""
        with self.lock:
            if not self.guarded:
                self.since = self.time() - ago
                self.checked.clear()
                self.guarded = True
                self.set_lookup(self.lookup)

    def resync(self, *, lost: bool = True) -> None:
        """The channel is up (again). After a loss (``lost``; not on the first subscription,
        made moments after the function was decorated) messages may have been missed: every
        entry held now is re-validated once, at its next hit, before it is served fresh (an
        entry still current in the shared layer costs one read, one the layer lost is kept as
        the key's fallback: see ``cacheward._core.coherence``). Hits go unchecked once none is
        left to re-validate."""
        with self.lock:
            if lost:
                with self.l1._lock:
                    held = set(self.l1._data)
                self.unverified |= held
                self.resynced = self.time()
            self.checked.clear()
            self.guarded = False
            self.set_lookup(self.relookup if self.unverified else self.fast)

    def drop(self, local: Hashable) -> None:
        self.on_drop(local)

    def _drop(self, local: Hashable) -> None:
        self.l1.delete(CacheKey(local, self.namespace, (), {}, ()))


# --- one layer's subscriber ---------------------------------------------------------------


class Subscriber:
    """Listens on one shared layer's channel for this process (a daemon thread).

    Args:
        connect: returns a redis-py ``PubSub`` (a dedicated connection).
        channel: the channel.
        source: the layer's name (events).
    """

    def __init__(self, connect: Callable[[], Any], channel: str, source: str) -> None:
        self.connect = connect
        self.channel = channel
        self.source = source
        self.lock = _forksafe.lock()
        self.stacks: dict[str, weakref.WeakSet[Stack]] = {}
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        #: Whether the channel is subscribed now (read by tests and benchmarks).
        self.up = False
        self.received = 0
        self.delay = BACKOFF_FIRST
        self.lost = False
        self.heard_wall = 0.0
        _forksafe.register(self)

    def register(self, stack: Stack) -> None:
        """Serve ``stack`` (guarded until the channel is subscribed)."""
        with self.lock:
            self.stacks.setdefault(stack.namespace, weakref.WeakSet()).add(stack)
            if not self.up:
                stack.guard()
            if self.thread is None and not self.stopping.is_set():
                self._start(lost=False)

    def _start(self, *, lost: bool) -> None:
        self.thread = threading.Thread(
            target=self._run,
            args=(lost,),
            name=f"cacheward-backplane-{self.source}",
            daemon=True,
        )
        self.thread.start()

    def after_fork(self) -> None:
        """In a forked child: the listening thread is gone. The stacks are guarded (the
        channel is down for this process) and a thread of its own listens again; its first
        subscription has each entry re-validated once, as after a lost channel (what was
        published between the fork and then was not heard here)."""
        self.thread = None
        if self.stopping.is_set():
            return  # closed
        self.stopping = threading.Event()
        self.up = False
        stacks = self.all_stacks()
        for stack in stacks:
            stack.guard()
        if stacks:
            self._start(lost=True)

    def all_stacks(self) -> list[Stack]:
        with self.lock:
            return [s for group in self.stacks.values() for s in group]

    def close(self, timeout: float = 2.0) -> None:
        """Stop the thread (bounded wait); its stacks stay guarded."""
        self.stopping.set()
        thread = self.thread
        if thread is not None and timeout > 0 and thread is not threading.current_thread():
            thread.join(timeout)
        self.thread = None

    def dispatch(self, data: Any) -> None:
        marks = decode_marks(data)
        if marks is not None:
            if marks[0] != PROCESS:  # this process dropped them when it raised them
                for stack in self.all_stacks():
                    stack.on_marks(marks[1])
            self.received += 1
            return
        message = decode(data)
        if message is None:
            return
        origin, namespace, local = message
        with self.lock:
            group = list(self.stacks.get(namespace, ()))
        for stack in group:
            if stack.origin != origin:
                stack.drop(local)
        self.received += 1

    def _run(self, lost: bool = False) -> None:
        self.delay = BACKOFF_FIRST
        self.lost = lost
        self.heard_wall = time.time()
        while not self.stopping.is_set():
            pubsub: Any = None
            try:
                pubsub = self.connect()
                self._listen(pubsub)
            except Exception as exc:
                if self.up or not self.lost:
                    self._lost(exc, self.heard_wall)
                    self.lost = True
                self.stopping.wait(self.delay)
                self.delay = min(self.delay * 2, BACKOFF_MAX)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        pubsub.close()
        with self.lock:
            self.up = False

    def _listen(self, pubsub: Any) -> None:
        """Subscribe and dispatch until stopped; raises when the channel fails or goes silent."""
        pubsub.subscribe(self.channel)
        heard = last_ping = time.monotonic()
        while not self.stopping.is_set():
            message = pubsub.get_message(timeout=HEARTBEAT / 2)
            now = time.monotonic()
            if message is not None:
                heard = now
                self.heard_wall = time.time()
                kind = message.get("type")
                if kind == "subscribe" and not self.up:
                    self._subscribed(self.lost)
                    self.lost = False
                    self.delay = BACKOFF_FIRST
                elif kind == "message":
                    self.dispatch(message.get("data"))
            if now - last_ping >= HEARTBEAT:
                pubsub.ping()
                last_ping = now
                for stack in self.all_stacks():
                    stack.prune()
            if now - heard > SILENCE:
                raise TimeoutError(f"the backplane channel was silent for {SILENCE} s")

    def _subscribed(self, was_lost: bool) -> None:
        with self.lock:
            self.up = True
            stacks = [s for group in self.stacks.values() for s in group]
        for stack in stacks:
            stack.resync(lost=was_lost)
        if was_lost:
            emit(EventKind.BACKPLANE_RECONNECTED, self.source, layer=self.source)

    def _lost(self, exc: BaseException, heard_wall: float) -> None:
        with self.lock:
            self.up = False
            stacks = [s for group in self.stacks.values() for s in group]
        for stack in stacks:
            stack.guard(max(0.0, time.time() - heard_wall))
        if isinstance(exc, Exception):
            emit(EventKind.BACKPLANE_LOST, self.source, layer=self.source, error=exc)
