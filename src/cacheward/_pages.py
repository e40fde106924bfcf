"""Cursor pagination drivers: bounded, resumable rebuilds of large payloads.

The decisions (progress, loops, bounds, when to checkpoint) live in
:mod:`cacheward._core.pages`; the two drivers here only call the page function, the clock and
the checkpoint store, in the order the core says.
"""

from __future__ import annotations

import functools
import hashlib
import os
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Generator, Iterable, Iterator
from typing import Any, Generic, Protocol, TypeVar, cast, runtime_checkable

from cacheward import _forksafe
from cacheward._clock import Clock
from cacheward._config import Duration, check_clock, check_positive_int, duration
from cacheward._core.entry import Entry, Freshness, classify
from cacheward._core.keys import CacheKey, encode_call
from cacheward._core.pages import (
    Checkpoint,
    DiscardCheckpoint,
    Emit,
    Failed,
    FetchPage,
    LoadCheckpoint,
    Monotonic,
    Rebuild,
    Request,
    SaveCheckpoint,
    checkpoint_from_value,
    checkpoint_to_value,
    rebuild_steps,
)
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._layers import AsyncLayer, Layer
from cacheward._lazy import isawaitable, iscoroutine, iscoroutinefunction, isfunction, ismethod

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "LayerCheckpoints",
    "MemoryCheckpoints",
    "Page",
    "acollect_pages",
    "aiter_pages",
    "collect_pages",
    "iter_pages",
]

T = TypeVar("T")


class Page(Generic[T]):
    """One page of a paginated source: its items and the cursor of the next page.

    Args:
        items: the page's items, in order.
        next_cursor: an opaque string that makes the page function return the next page, or
            ``None`` when this is the last page.

    Raises:
        ConfigurationTypeError: ``next_cursor`` is neither a ``str`` nor ``None``.
    """

    __slots__ = ("items", "next_cursor")

    def __init__(self, items: Iterable[T] = (), next_cursor: str | None = None) -> None:
        if next_cursor is not None and not isinstance(next_cursor, str):
            raise ConfigurationTypeError(
                "Page(next_cursor=...) must be a str or None, got "
                f"{type(next_cursor).__name__}; encode the last row's sort key, for example "
                "with cacheward.CursorCodec"
            )
        self.items: list[T] = items if type(items) is list else list(items)
        self.next_cursor = next_cursor

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Page):
            return NotImplemented
        return self.items == other.items and self.next_cursor == other.next_cursor

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Page(items=<{len(self.items)} items>, next_cursor={self.next_cursor!r})"


@runtime_checkable
class CheckpointStore(Protocol):
    """Where the pages of a rebuild that stopped part-way wait for the next rebuild.

    ``key`` is the rebuild's identity (see :func:`collect_pages`); ``now`` is wall-clock
    seconds. A store that raises is treated as empty (load) or is skipped (save, discard): a
    checkpoint is an optimisation and never fails a rebuild.

    Attributes:
        ttl: seconds a saved checkpoint stays resumable.
    """

    ttl: float

    def load(self, key: str, now: float) -> Checkpoint | None: ...
    def save(self, key: str, checkpoint: Checkpoint) -> None: ...
    def discard(self, key: str) -> None: ...
    async def aload(self, key: str, now: float) -> Checkpoint | None: ...
    async def asave(self, key: str, checkpoint: Checkpoint) -> None: ...
    async def adiscard(self, key: str) -> None: ...


class MemoryCheckpoints:
    """The default checkpoint store: a bounded dict in this process.

    Args:
        ttl: seconds a checkpoint stays resumable (seconds or ``timedelta``, > 0).
        maxsize: the most checkpoints kept; saving one more drops the oldest.

    A process that dies loses its checkpoints; use :class:`LayerCheckpoints` on a shared layer
    to resume across processes.
    """

    __slots__ = ("_data", "_lock", "maxsize", "ttl")

    def __init__(self, *, ttl: Duration = 300.0, maxsize: int = 1024) -> None:
        self.ttl = duration("ttl", ttl, allow_zero=False)
        self.maxsize = check_positive_int("maxsize", maxsize)
        self._lock = _forksafe.lock()
        self._data: dict[str, Checkpoint] = {}

    def load(self, key: str, now: float) -> Checkpoint | None:
        with self._lock:
            checkpoint = self._data.get(key)
            if checkpoint is not None and not checkpoint.alive(now):
                del self._data[key]
                return None
            return checkpoint

    def save(self, key: str, checkpoint: Checkpoint) -> None:
        data = self._data
        with self._lock:
            data.pop(key, None)
            while len(data) >= self.maxsize:
                del data[next(iter(data))]
            data[key] = checkpoint

    def discard(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    async def aload(self, key: str, now: float) -> Checkpoint | None:
        return self.load(key, now)

    async def asave(self, key: str, checkpoint: Checkpoint) -> None:
        self.save(key, checkpoint)

    async def adiscard(self, key: str) -> None:
        self.discard(key)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"MemoryCheckpoints(ttl={self.ttl}, maxsize={self.maxsize}, size={len(self._data)})"


class LayerCheckpoints:
    """A checkpoint store on a cacheward layer (for example a Redis layer shared by processes).

    Args:
        layer: a :class:`~cacheward.Layer` and/or :class:`~cacheward.AsyncLayer`.
        ttl: seconds a checkpoint stays resumable (seconds or ``timedelta``, > 0).
        namespace: prefix of the checkpoint keys on the layer.

    The checkpoint is stored as a plain dict (``{"pages": [[items, cursor], ...], ...}``), so the
    items must survive the layer's serializer unchanged: with a JSON serializer use dicts, lists,
    strings and numbers (a tuple would come back as a list). Any error from the layer makes the
    load a miss and the save a no-op.
    """

    __slots__ = ("layer", "namespace", "ttl")

    def __init__(
        self,
        layer: Layer | AsyncLayer,
        *,
        ttl: Duration = 300.0,
        namespace: str = "cacheward.pages",
    ) -> None:
        if not isinstance(layer, (Layer, AsyncLayer)):
            raise ConfigurationTypeError(
                "layer must be a cacheward Layer or AsyncLayer (get/set/delete or "
                f"aget/aset/adelete), got {type(layer).__name__}"
            )
        self.layer = layer
        self.namespace = _nonempty_str("namespace", namespace)
        self.ttl = duration("ttl", ttl, allow_zero=False)

    def _key(self, key: str) -> CacheKey:
        return CacheKey(key, self.namespace, (key,), {}, ("checkpoint_key",))

    @staticmethod
    def _read(entry: Entry | None, now: float) -> Checkpoint | None:
        if entry is None or classify(entry, now) is not Freshness.FRESH:
            return None
        checkpoint = checkpoint_from_value(entry.value)
        return checkpoint if checkpoint is not None and checkpoint.alive(now) else None

    @staticmethod
    def _entry(checkpoint: Checkpoint) -> Entry:
        until = checkpoint.expires_at
        return Entry(checkpoint_to_value(checkpoint), checkpoint.saved_at, until, until)

    def _sync(self) -> Layer:
        if not isinstance(self.layer, Layer):
            raise ConfigurationTypeError(
                f"layer {type(self.layer).__name__} is async only; use aiter_pages or "
                "acollect_pages with it"
            )
        return self.layer

    def load(self, key: str, now: float) -> Checkpoint | None:
        return self._read(self._sync().get(self._key(key)), now)

    def save(self, key: str, checkpoint: Checkpoint) -> None:
        self._sync().set(self._key(key), self._entry(checkpoint))

    def discard(self, key: str) -> None:
        self._sync().delete(self._key(key))

    async def aload(self, key: str, now: float) -> Checkpoint | None:
        layer = self.layer
        if isinstance(layer, AsyncLayer):
            return self._read(await layer.aget(self._key(key)), now)
        return self.load(key, now)

    async def asave(self, key: str, checkpoint: Checkpoint) -> None:
        layer = self.layer
        if isinstance(layer, AsyncLayer):
            await layer.aset(self._key(key), self._entry(checkpoint))
        else:
            self.save(key, checkpoint)

    async def adiscard(self, key: str) -> None:
        layer = self.layer
        if isinstance(layer, AsyncLayer):
            await layer.adelete(self._key(key))
        else:
            self.discard(key)

    def __repr__(self) -> str:
        return f"LayerCheckpoints({self.layer!r}, ttl={self.ttl}, namespace={self.namespace!r})"


#: Where rebuilds keep their checkpoints unless told otherwise.
DEFAULT_CHECKPOINTS = MemoryCheckpoints()


def _unwrapped(fetch_page: object) -> tuple[Any, list[functools.partial[Any]]]:
    """The function under partials and ``__wrapped__`` decorators, and the partials on the way."""
    partials: list[functools.partial[Any]] = []
    fn: Any = fetch_page
    for _ in range(100):
        if isinstance(fn, functools.partial):
            partials.append(fn)
            fn = fn.func
            continue
        wrapped = getattr(fn, "__wrapped__", None)
        if wrapped is None:
            break
        fn = wrapped
    return fn, partials


def _encoded(partial: functools.partial[Any]) -> bytes:
    try:
        return encode_call(partial.args, partial.keywords, ())
    except ConfigurationTypeError:
        args = (*partial.args, *partial.keywords.values())
        raise ConfigurationTypeError(
            f"cannot tell which rebuild {_name(partial.func)} belongs to: one of its "
            f"functools.partial arguments ({', '.join(type(a).__name__ for a in args)}) has "
            "no stable encoding (only None, bool, int, float, str, bytes, tuple, frozenset, "
            "Enum, UUID, Decimal and dates do). Pass checkpoint_key= (a string naming the "
            "payload, e.g. f'config:{customer_id}') to resume in later calls"
        ) from None


def rebuild_identity(fetch_page: Callable[..., object], checkpoint_key: str | None) -> str:
    """The key under which a rebuild's checkpoint is kept, when its payload is identifiable.

    It is the page function's qualified name (decorators that set ``__wrapped__`` are looked
    through) plus either ``checkpoint_key`` or the arguments bound with
    :func:`functools.partial`, encoded with their types. A closure, a bound method or a callable
    object has state cacheward cannot see, so only ``checkpoint_key`` identifies it.

    Raises:
        ConfigurationError: the payload cannot be identified from the page function alone
            (:func:`_identity` then scopes the checkpoint to the page function object).
    """
    fn, partials = _unwrapped(fetch_page)
    parts = [] if checkpoint_key is not None else [_encoded(p) for p in partials]
    name = _name(fn)
    if checkpoint_key is not None:
        return f"{name}|key:{checkpoint_key}"
    if not isfunction(fn) or fn.__closure__:
        what = (
            "a bound method"
            if ismethod(fn)
            else "a closure"
            if isfunction(fn)
            else "a callable object"
        )
        raise ConfigurationError(
            f"cannot tell which rebuild the page function {name} belongs to: it is {what}, "
            "whose state cacheward cannot see. Bind its arguments with "
            "functools.partial(module_level_fn, ...) or pass checkpoint_key= (a string naming "
            "the payload, e.g. f'config:{customer_id}') to resume in later calls"
        )
    digest = hashlib.blake2b(b"".join(parts), digest_size=16).hexdigest()
    return f"{name}|args:{digest}"


#: ``id(page function) -> (weak reference to it, random token)``, for page functions whose
#: payload cacheward cannot identify: their checkpoints are resumed only by the same object.
_OBJECT_TOKENS: dict[int, tuple[weakref.ref[Any], str]] = {}
# Re-entrant: the garbage collector may run a weak reference's callback (which takes the lock)
# in this very thread while it holds the lock.
_OBJECT_TOKENS_LOCK = _forksafe.rlock()
_IDENTIFIED = "the same page function and arguments"
_OBJECT_SCOPE = (
    "this same page function object (its payload cannot be identified across calls: bind its "
    "arguments with functools.partial or pass checkpoint_key= to resume in a later call)"
)


def _object_token(fn: object) -> str | None:
    """A token unique to the live object ``fn`` (random: never shared by two processes)."""
    key = id(fn)
    with _OBJECT_TOKENS_LOCK:
        found = _OBJECT_TOKENS.get(key)
        if found is not None and found[0]() is fn:
            return found[1]

        def forget(ref: weakref.ref[Any], key: int = key) -> None:
            with _OBJECT_TOKENS_LOCK:
                if _OBJECT_TOKENS.get(key, (None, ""))[0] is ref:
                    del _OBJECT_TOKENS[key]

        try:
            ref = weakref.ref(fn, forget)
        except TypeError:  # not weakly referenceable: no checkpoint at all
            return None
        token = os.urandom(12).hex()
        _OBJECT_TOKENS[key] = (ref, token)
        return token


def _identity(fetch_page: Callable[..., object], checkpoint_key: str | None) -> tuple[str, str]:
    """``(checkpoint key, who resumes it)``; the key is ``""`` when nothing can resume it.

    A payload cacheward can identify (see :func:`rebuild_identity`) resumes in any later call;
    otherwise the checkpoint belongs to the page function object itself, so a retry that reuses
    the object resumes and a new closure starts over -- never another payload's pages.
    """
    try:
        return rebuild_identity(fetch_page, checkpoint_key), _IDENTIFIED
    except ConfigurationError:
        token = _object_token(fetch_page)
        if token is None:
            return "", _OBJECT_SCOPE
        return f"{_name(_unwrapped(fetch_page)[0])}|object:{token}", _OBJECT_SCOPE


def _nonempty_str(name: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty str, got {value!r}")
    return value


def _name(fn: object) -> str:
    module = getattr(fn, "__module__", None) or type(fn).__module__
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


class _Plan:
    """A rebuild's validated settings."""

    __slots__ = (
        "checkpoint_every",
        "clock",
        "deadline",
        "key",
        "max_empty_pages",
        "max_items",
        "max_pages",
        "page_size",
        "scope",
        "store",
    )

    def __init__(
        self,
        fetch_page: Callable[..., object],
        *,
        page_size: int,
        max_pages: int,
        max_items: int | None,
        max_empty_pages: int,
        deadline: Duration | None,
        resume: bool,
        checkpoint_key: str | None,
        checkpoints: CheckpointStore | None,
        checkpoint_every: int | None,
        clock: Clock | None,
    ) -> None:
        if not callable(fetch_page):
            raise ConfigurationTypeError(
                f"fetch_page must be callable as fetch_page(cursor, limit), got "
                f"{type(fetch_page).__name__}"
            )
        self.page_size = check_positive_int("page_size", page_size)
        self.max_pages = check_positive_int("max_pages", max_pages)
        self.max_items = (
            self.max_pages * self.page_size
            if max_items is None
            else check_positive_int("max_items", max_items, minimum=0)
        )
        self.max_empty_pages = check_positive_int("max_empty_pages", max_empty_pages, minimum=0)
        self.deadline = (
            None if deadline is None else duration("deadline", deadline, allow_zero=False)
        )
        self.checkpoint_every = (
            None
            if checkpoint_every is None
            else check_positive_int("checkpoint_every", checkpoint_every)
        )
        self.clock = check_clock(clock)
        if not isinstance(resume, bool):
            raise ConfigurationTypeError(f"resume must be a bool, got {type(resume).__name__}")
        if checkpoint_key is not None:
            _nonempty_str("checkpoint_key", checkpoint_key)
        if checkpoints is not None and not isinstance(checkpoints, CheckpointStore):
            raise ConfigurationTypeError(
                "checkpoints must be a checkpoint store (cacheward.MemoryCheckpoints, "
                f"cacheward.LayerCheckpoints or your own), got {type(checkpoints).__name__}"
            )
        self.store: CheckpointStore | None = None
        self.key = ""
        self.scope = _IDENTIFIED
        if resume:
            self.key, self.scope = _identity(fetch_page, checkpoint_key)
            if self.key:
                self.store = DEFAULT_CHECKPOINTS if checkpoints is None else checkpoints

    def start(self, restored: Checkpoint | None, mono: float) -> Rebuild:
        return Rebuild(
            page_size=self.page_size,
            max_pages=self.max_pages,
            max_items=self.max_items,
            max_empty_pages=self.max_empty_pages,
            deadline=self.deadline,
            deadline_at=None if self.deadline is None else mono + self.deadline,
            checkpoint_every=self.checkpoint_every,
            restored=restored,
            resumable=self.store is not None,
            scope=self.scope,
        )

    def steps(self) -> Generator[Request, Any, None]:
        """The rebuild's plan (:func:`cacheward._core.pages.rebuild_steps`)."""
        return rebuild_steps(
            self.start, resumable=self.store is not None, page_size=self.page_size, make_page=Page
        )


def _as_page(result: object, fetch_page: Callable[..., object]) -> Page[Any] | Failed:
    """The answer to a :class:`FetchPage`: the page, or the failure; anything else is refused."""
    if isinstance(result, (Page, Failed)):
        return result
    if iscoroutine(result):
        result.close()
    if isawaitable(result):
        raise ConfigurationTypeError(
            f"the page function {_name(fetch_page)} is async; use cacheward.aiter_pages or "
            "cacheward.acollect_pages"
        )
    raise ConfigurationTypeError(
        f"the page function {_name(fetch_page)} must return cacheward.Page(items=..., "
        f"next_cursor=...), got {type(result).__name__}"
    )


# --- the two drivers: each performs the plan's requests, and nothing else ---------------------
#
# Written by hand, in both colours, are only the lines that differ by ``await``: the two
# drivers' loops and the store calls below, each pair side by side; tests/test_pages.py checks
# every pair against each other. The decisions are all in rebuild_steps.


def _advance(steps: Generator[Request, Any, None], answer: object, clock: Clock) -> Request | None:
    """Send ``answer`` to the plan; answer its clock reads; the next request (``None``: done)."""
    try:
        request = steps.send(answer)
        while isinstance(request, Monotonic):
            request = steps.send(clock.monotonic())
    except StopIteration:
        return None
    return request


def _call(fetch_page: Callable[[str | None, int], object], request: FetchPage) -> object:
    try:
        return fetch_page(request.cursor, request.limit)
    except Exception as exc:  # any page failure stops the rebuild, as the plan decides
        return Failed(exc)


async def _outcome(awaitable: Awaitable[object]) -> object:
    try:
        return await awaitable
    except Exception as exc:  # any page failure stops the rebuild, as the plan decides
        return Failed(exc)


def _checkpoint(store: CheckpointStore, plan: _Plan, request: SaveCheckpoint) -> Checkpoint:
    return request.rebuild.checkpoint(now=plan.clock.time(), ttl=store.ttl)


StoreCall = Callable[[CheckpointStore, _Plan, Any], Any]
#: How each checkpoint request is carried out: (plain call, async call), side by side.
STORE_CALLS: dict[type, tuple[StoreCall, StoreCall]] = {
    LoadCheckpoint: (
        lambda store, plan, _: store.load(plan.key, plan.clock.time()),
        lambda store, plan, _: store.aload(plan.key, plan.clock.time()),
    ),
    SaveCheckpoint: (
        lambda store, plan, request: store.save(plan.key, _checkpoint(store, plan, request)),
        lambda store, plan, request: store.asave(plan.key, _checkpoint(store, plan, request)),
    ),
    DiscardCheckpoint: (
        lambda store, plan, _: store.discard(plan.key),
        lambda store, plan, _: store.adiscard(plan.key),
    ),
}


# The store is an optimisation: its failures never fail the rebuild (a failed load is a miss,
# a failed save only costs a restart).


def _store(plan: _Plan, request: Request) -> object:
    try:
        return STORE_CALLS[type(request)][0](plan.store, plan, request)  # type: ignore[arg-type]
    except Exception:
        return None


async def _astore(plan: _Plan, request: Request) -> object:
    try:
        return await STORE_CALLS[type(request)][1](plan.store, plan, request)  # type: ignore[arg-type]
    except Exception:
        return None


def _drive(fetch_page: Callable[[str | None, int], Page[T]], plan: _Plan) -> Iterator[Page[T]]:
    steps, answer = plan.steps(), cast(object, None)
    while (request := _advance(steps, answer, plan.clock)) is not None:
        answer = None
        if isinstance(request, Emit):
            yield request.page
        elif isinstance(request, FetchPage):
            answer = _as_page(_call(fetch_page, request), fetch_page)
        else:
            answer = _store(plan, request)


async def _adrive(
    fetch_page: Callable[[str | None, int], Awaitable[Page[T]] | Page[T]], plan: _Plan
) -> AsyncIterator[Page[T]]:
    steps, answer = plan.steps(), cast(object, None)
    while (request := _advance(steps, answer, plan.clock)) is not None:
        answer = None
        if isinstance(request, Emit):
            yield request.page
        elif isinstance(request, FetchPage):
            result = _call(fetch_page, request)
            answer = _as_page(await _outcome(result) if isawaitable(result) else result, fetch_page)
        else:
            answer = await _astore(plan, request)


# --- the public functions: one signature, four entry points --------------------------------
#
# The four take the same settings (a test checks their signatures agree); each passes them on
# with ``_Plan(**locals())``, so no list of arguments is copied by hand.


def iter_pages(
    fetch_page: Callable[[str | None, int], Page[T]],
    *,
    page_size: int = 500,
    max_pages: int = 10_000,
    max_items: int | None = None,
    max_empty_pages: int = 3,
    deadline: Duration | None = 300.0,
    resume: bool = True,
    checkpoint_key: str | None = None,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | None = None,
    clock: Clock | None = None,
) -> Iterator[Page[T]]:
    """Yield the pages of a paginated source as they arrive, bounded and resumable.

    Calls ``fetch_page(None, page_size)``, then ``fetch_page(page.next_cursor, page_size)`` until
    a page has ``next_cursor=None``. If a checkpoint of the same rebuild exists, its pages are
    yielded first and fetching resumes at its cursor. The driver never retries: wrap
    ``fetch_page`` in :func:`cacheward.retry` / :func:`cacheward.rate_limit` and every page
    call counts against their bounds.

    Args:
        fetch_page: ``fetch_page(cursor, limit) -> Page``; ``cursor`` is ``None`` for the first
            page. Bind further arguments with :func:`functools.partial`.
        page_size: the ``limit`` passed to every call.
        max_pages: the most pages the rebuild may have (restored pages included).
        max_items: the most items the rebuild may have (default ``max_pages * page_size``).
        max_empty_pages: how many empty pages in a row may still carry a cursor (sources that
            filter after paging return such pages); one more is a :class:`CursorLoopError`.
        deadline: seconds (or ``timedelta``) this call may spend; checked before each page (a
            page in flight is bounded by the page function's own timeout). ``None``: no deadline.
        resume: keep the pages of a failed rebuild and resume the next one from them.
        checkpoint_key: names the rebuild, for page functions whose payload cacheward cannot
            identify (closures, bound methods, callable objects), so that a later call resumes
            it. Default: the page function's qualified name plus its :func:`functools.partial`
            arguments; for a page function that has no such identity, the checkpoint belongs to
            the page function object (only a call with that same object resumes it).
        checkpoints: where checkpoints are kept (default: one in-process
            :class:`MemoryCheckpoints` with a 300 s TTL).
        checkpoint_every: also save the checkpoint every this many pages, so a crashed process
            can be resumed from a shared store (default: save only when the rebuild stops).
        clock: the clock for the deadline and the checkpoint TTL.

    Returns:
        An iterator of :class:`Page`; settings are checked when it is created.

    Raises:
        PaginationError: a page failed (its error chained as ``__cause__``) or a bound was hit
            (``reason`` says which); ``.cursor`` is where the next rebuild resumes.
        CursorLoopError: a cursor came back twice, a page returned the cursor it was given, or
            too many empty pages came in a row. The checkpoint is dropped.
        ConfigurationError: a setting is invalid.
    """
    if iscoroutinefunction(fetch_page):
        raise ConfigurationTypeError(
            f"the page function {_name(fetch_page)} is async; use cacheward.aiter_pages or "
            "cacheward.acollect_pages"
        )
    return _drive(fetch_page, _Plan(**locals()))


def aiter_pages(
    fetch_page: Callable[[str | None, int], Awaitable[Page[T]]],
    *,
    page_size: int = 500,
    max_pages: int = 10_000,
    max_items: int | None = None,
    max_empty_pages: int = 3,
    deadline: Duration | None = 300.0,
    resume: bool = True,
    checkpoint_key: str | None = None,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Page[T]]:
    """Like :func:`iter_pages`, for an ``async def`` page function: ``async for page in ...``.

    Takes the same arguments and raises the same errors; the checkpoint store is used through
    its async methods.
    """
    return _adrive(fetch_page, _Plan(**locals()))


def collect_pages(
    fetch_page: Callable[[str | None, int], Page[T]],
    *,
    page_size: int = 500,
    max_pages: int = 10_000,
    max_items: int | None = None,
    max_empty_pages: int = 3,
    deadline: Duration | None = 300.0,
    resume: bool = True,
    checkpoint_key: str | None = None,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | None = None,
    clock: Clock | None = None,
) -> list[T]:
    """Fetch every page and return all the items, in order: the whole payload or an error.

    Takes the same arguments and raises the same errors as :func:`iter_pages`; a bound that is
    hit raises, it never returns a truncated list.
    """
    return [item for page in iter_pages(**locals()) for item in page.items]


async def acollect_pages(
    fetch_page: Callable[[str | None, int], Awaitable[Page[T]]],
    *,
    page_size: int = 500,
    max_pages: int = 10_000,
    max_items: int | None = None,
    max_empty_pages: int = 3,
    deadline: Duration | None = 300.0,
    resume: bool = True,
    checkpoint_key: str | None = None,
    checkpoints: CheckpointStore | None = None,
    checkpoint_every: int | None = None,
    clock: Clock | None = None,
) -> list[T]:
    """Like :func:`collect_pages`, for an ``async def`` page function."""
    return [item async for page in aiter_pages(**locals()) for item in page.items]
