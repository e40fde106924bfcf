"""Cursor pagination drivers: progress, loops, bounds, checkpoints and resume (no database).

The database-backed tests (keyset queries on SQLite and PostgreSQL, the Hypothesis property over
random tables and failure points) are in ``test_pages_db.py``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import Phase, example, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward._core import pages as core
from cacheward._core.entry import Entry
from cacheward.testing import FakeClock

# --- a list-backed source: cursor = str(offset of the next item) ------------------------------


class Source:
    """Items 0..n-1 in pages; records every call; fails the calls listed in ``fail_calls``."""

    def __init__(self, n: int, *, fail_calls: frozenset[int] = frozenset()) -> None:
        self.n = n
        self.fail_calls = set(fail_calls)
        self.calls: list[str | None] = []

    def __call__(self, cursor: str | None, limit: int) -> cw.Page[int]:
        self.calls.append(cursor)
        if len(self.calls) in self.fail_calls:
            raise ConnectionError(f"injected failure on call {len(self.calls)}")
        start = 0 if cursor is None else int(cursor)
        end = min(start + limit, self.n)
        return cw.Page(list(range(start, end)), str(end) if end < self.n else None)


def run(mode: str, fn: Callable[[str | None, int], cw.Page[Any]], **kwargs: Any) -> list[Any]:
    """collect_pages or acollect_pages over the same (sync) source."""
    if mode == "sync":
        return cw.collect_pages(fn, **kwargs)

    async def afetch(cursor: str | None, limit: int) -> cw.Page[Any]:
        await asyncio.sleep(0)
        return fn(cursor, limit)

    kwargs.setdefault("checkpoint_key", "async-test")
    return asyncio.run(cw.acollect_pages(afetch, **kwargs))


modes = pytest.mark.parametrize("mode", ["sync", "async"])


@pytest.fixture
def store() -> cw.MemoryCheckpoints:
    return cw.MemoryCheckpoints(ttl=60)


@modes
def test_collects_every_item_in_order_with_one_call_per_page(mode: str, store: Any) -> None:
    src = Source(23)
    items = run(mode, src, page_size=5, checkpoints=store, checkpoint_key="k")
    assert items == list(range(23))
    assert src.calls == [None, "5", "10", "15", "20"]
    assert len(store) == 0


def test_iter_pages_yields_each_page_before_fetching_the_next(store: Any) -> None:
    src = Source(10)
    pages = cw.iter_pages(src, page_size=4, checkpoints=store, checkpoint_key="k")
    assert src.calls == []  # settings are checked at once, nothing is fetched until asked
    first = next(pages)
    assert first == cw.Page([0, 1, 2, 3], "4")
    assert len(src.calls) == 1
    assert [p.items for p in pages] == [[4, 5, 6, 7], [8, 9]]
    assert len(src.calls) == 3


def test_aiter_pages_yields_pages_as_they_arrive(store: Any) -> None:
    src = Source(10)

    async def fetch(cursor: str | None, limit: int) -> cw.Page[int]:
        return src(cursor, limit)

    async def main() -> list[list[int]]:
        seen = []
        async for page in cw.aiter_pages(fetch, page_size=4, checkpoints=store, checkpoint_key="k"):
            seen.append(page.items)
            assert len(src.calls) == len(seen)
        return seen

    assert asyncio.run(main()) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


@modes
def test_a_failed_page_is_resumed_not_restarted(mode: str, store: Any) -> None:
    src = Source(23, fail_calls=frozenset({3, 6}))
    with pytest.raises(cw.PaginationError) as first:
        run(mode, src, page_size=5, checkpoints=store, checkpoint_key="k")
    err = first.value
    assert (err.cursor, err.pages_done, err.reason) == ("10", 2, "page-failed")
    assert isinstance(err.__cause__, ConnectionError)
    assert len(store) == 1
    with pytest.raises(cw.PaginationError) as second:
        run(mode, src, page_size=5, checkpoints=store, checkpoint_key="k")
    assert (second.value.cursor, second.value.pages_done) == ("20", 4)
    assert run(mode, src, page_size=5, checkpoints=store, checkpoint_key="k") == list(range(23))
    # Each failure re-requests only the failed page.
    assert src.calls == [None, "5", "10", "10", "15", "20", "20"]
    assert len(store) == 0  # finished: the checkpoint is gone


@modes
def test_resume_false_starts_over(mode: str, store: Any) -> None:
    src = Source(15, fail_calls=frozenset({3}))
    with pytest.raises(cw.PaginationError, match="starts over"):
        run(mode, src, page_size=5, checkpoints=store, resume=False)
    assert run(mode, src, page_size=5, checkpoints=store, resume=False) == list(range(15))
    assert src.calls == [None, "5", "10", None, "5", "10"]
    assert len(store) == 0


def by_customer(customer: Any, cursor: str | None, limit: int) -> cw.Page[str]:
    """A module-level page function: its identity is its name plus its partial arguments."""
    start = 0 if cursor is None else int(cursor)
    end = min(start + limit, 6)
    return cw.Page([f"{customer}{i}" for i in range(start, end)], str(end) if end < 6 else None)


def test_rebuild_identity_is_the_function_plus_typed_partial_arguments(store: Any) -> None:
    identity = cw._pages.rebuild_identity
    keys = {
        identity(functools.partial(by_customer, "a"), None),
        identity(functools.partial(by_customer, "b"), None),
        identity(functools.partial(by_customer, 1), None),
        identity(functools.partial(by_customer, "1"), None),
        identity(functools.partial(by_customer, customer="a"), None),
        identity(by_customer, "a"),
    }
    assert len(keys) == 6
    assert identity(functools.partial(by_customer, "a"), None) == identity(
        functools.partial(by_customer, "a"), None
    )

    # Decorators that set __wrapped__ are looked through.
    def wrapper(*args: Any) -> cw.Page[str]:
        return by_customer(*args)

    wrapped = functools.wraps(by_customer)(wrapper)
    assert identity(functools.partial(wrapped, "a"), None) == identity(
        functools.partial(by_customer, "a"), None
    )
    # No identity from the function alone: rebuild_identity says so (and _identity then
    # scopes the checkpoint to the page function object, see the tests below).
    with pytest.raises(cw.ConfigurationTypeError, match="checkpoint_key"):
        identity(functools.partial(by_customer, ["a"]), None)

    def closure(cursor: str | None, limit: int) -> cw.Page[str]:
        return by_customer(store, cursor, limit)

    with pytest.raises(cw.ConfigurationError, match="closure"):
        identity(closure, None)
    with pytest.raises(cw.ConfigurationError, match="bound method"):
        identity(Source(3).__call__, None)
    with pytest.raises(cw.ConfigurationError, match="callable object"):
        identity(Source(3), None)
    assert identity(closure, "c") != identity(closure, "d")


def page_for(customer: str, fail_calls: frozenset[int] = frozenset()) -> Source:
    """An application factory's page function: a closure over its customer (and a Source)."""
    src = Source(12, fail_calls=fail_calls)

    def page(cursor: str | None, limit: int) -> cw.Page[str]:
        got = src(cursor, limit)
        return cw.Page([f"{customer}{i}" for i in got.items], got.next_cursor)

    page.src = src  # type: ignore[attr-defined]
    return page  # type: ignore[return-value]


@modes
def test_a_closure_page_function_works_without_extra_arguments(mode: str, store: Any) -> None:
    fetch: Any = page_for("a")
    assert run(mode, fetch, page_size=5, checkpoints=store) == [f"a{i}" for i in range(12)]
    unsafe = [functools.partial(by_customer, ["a"]), Source(3).__call__, Source(3)]
    for fn in unsafe:
        assert run(mode, fn, page_size=2, checkpoints=store)


def test_a_closure_resumes_when_called_again_and_a_new_closure_starts_over(store: Any) -> None:
    fetch: Any = page_for("a", fail_calls=frozenset({2}))
    with pytest.raises(cw.PaginationError, match="same page function object") as info:
        cw.collect_pages(fetch, page_size=5, checkpoints=store)
    assert (info.value.pages_done, info.value.cursor) == (1, "5")
    # Another payload's closure from the same factory never resumes a's pages.
    other: Any = page_for("b")
    assert cw.collect_pages(other, page_size=5, checkpoints=store) == [f"b{i}" for i in range(12)]
    assert other.src.calls == [None, "5", "10"]
    # The same closure object resumes from its checkpoint: only the failed page is read again.
    assert cw.collect_pages(fetch, page_size=5, checkpoints=store) == [f"a{i}" for i in range(12)]
    assert fetch.src.calls == [None, "5", "5", "10"]
    # A closure naming its payload with checkpoint_key= resumes across closures (and calls).
    first: Any = page_for("c", fail_calls=frozenset({2}))
    with pytest.raises(cw.PaginationError, match="same page function and arguments"):
        cw.collect_pages(first, page_size=5, checkpoints=store, checkpoint_key="config:c")
    second: Any = page_for("c")
    assert cw.collect_pages(second, page_size=5, checkpoints=store, checkpoint_key="config:c") == [
        f"c{i}" for i in range(12)
    ]
    assert second.src.calls == ["5", "10"]


class _NoWeakref:
    __slots__ = ("src",)

    def __init__(self, src: Source) -> None:
        self.src = src

    def __call__(self, cursor: str | None, limit: int) -> cw.Page[int]:
        return self.src(cursor, limit)


def test_a_page_function_that_cannot_be_referenced_weakly_keeps_no_checkpoint(store: Any) -> None:
    fetch = _NoWeakref(Source(12, fail_calls=frozenset({2})))
    with pytest.raises(cw.PaginationError):
        cw.collect_pages(fetch, page_size=5, checkpoints=store)
    assert len(store) == 0
    assert cw.collect_pages(fetch, page_size=5, checkpoints=store) == list(range(12))
    assert fetch.src.calls == [None, "5", None, "5", "10"]


def test_object_tokens_are_forgotten_with_their_object_and_never_reused() -> None:
    from cacheward import _pages

    def make() -> Callable[[str | None, int], cw.Page[int]]:
        n = 3

        def page(cursor: str | None, limit: int) -> cw.Page[int]:
            return cw.Page(list(range(n)), None)

        return page

    seen = set()
    for _ in range(50):  # ids are reused by CPython; tokens never are
        fn = make()
        key, scope = _pages._identity(fn, None)
        assert key == _pages._identity(fn, None)[0]
        assert "object" in key
        assert scope == _pages._OBJECT_SCOPE
        seen.add(key)
        del fn
    assert len(seen) == 50
    assert not any(ref() is None for ref, _ in _pages._OBJECT_TOKENS.values())


_CALLS: dict[str, list[tuple[str, str | None]]] = {}


def recording(run_id: str, customer: str, cursor: str | None, limit: int) -> cw.Page[str]:
    calls = _CALLS.setdefault(run_id, [])
    calls.append((customer, cursor))
    if cursor == "2" and calls.count((customer, cursor)) == 1:
        raise ConnectionError("injected")
    start = 0 if cursor is None else int(cursor)
    end = min(start + limit, 4)
    return cw.Page([f"{customer}{i}" for i in range(start, end)], str(end) if end < 4 else None)


def test_each_arguments_rebuild_resumes_its_own_pages(store: Any) -> None:
    fetch_a = functools.partial(recording, "t1", "a")
    fetch_b = functools.partial(recording, "t1", "b")
    for fn in (fetch_a, fetch_b):
        with pytest.raises(cw.PaginationError):
            cw.collect_pages(fn, page_size=2, checkpoints=store)
    assert len(store) == 2
    assert cw.collect_pages(fetch_b, page_size=2, checkpoints=store) == ["b0", "b1", "b2", "b3"]
    assert cw.collect_pages(fetch_a, page_size=2, checkpoints=store) == ["a0", "a1", "a2", "a3"]
    assert _CALLS["t1"] == [
        ("a", None), ("a", "2"), ("b", None), ("b", "2"), ("b", "2"), ("a", "2")
    ]  # fmt: skip
    assert len(store) == 0


def test_lambda_without_captured_state_has_an_identity(store: Any) -> None:
    fetch = lambda cursor, limit: cw.Page([1, 2], None)  # noqa: E731
    assert cw.collect_pages(fetch, checkpoints=store) == [1, 2]


# --- loops and bounds -------------------------------------------------------------------------


def scripted(pages: dict[str | None, tuple[list[int], str | None]]) -> Callable[..., cw.Page[int]]:
    calls: list[str | None] = []

    def fetch(cursor: str | None, limit: int) -> cw.Page[int]:
        calls.append(cursor)
        items, nxt = pages[cursor]
        return cw.Page(items, nxt)

    fetch.calls = calls  # type: ignore[attr-defined]
    return fetch


@modes
def test_a_repeated_cursor_is_a_loop_and_drops_the_checkpoint(mode: str, store: Any) -> None:
    fetch = scripted({None: ([1], "a"), "a": ([2], "b"), "b": ([3], "a")})
    with pytest.raises(cw.CursorLoopError) as info:
        run(mode, fetch, checkpoints=store, checkpoint_key="k")
    assert (info.value.cursor, info.value.pages_done, info.value.reason) == (
        "a",
        2,
        "repeated-cursor",
    )
    assert fetch.calls == [None, "a", "b"]  # type: ignore[attr-defined]
    assert len(store) == 0


@modes
def test_a_page_returning_its_own_cursor_makes_no_progress(mode: str, store: Any) -> None:
    fetch = scripted({None: ([1], "a"), "a": ([2], "a")})
    with pytest.raises(cw.CursorLoopError) as info:
        run(mode, fetch, checkpoints=store, checkpoint_key="k")
    assert info.value.reason == "no-progress"
    assert info.value.cursor == "a"


@modes
def test_empty_pages_with_a_cursor_are_allowed_up_to_the_limit(mode: str, store: Any) -> None:
    fetch = scripted(
        {None: ([1], "a"), "a": ([], "b"), "b": ([], "c"), "c": ([], "d"), "d": ([2], None)}
    )
    assert run(mode, fetch, max_empty_pages=3, checkpoints=store, checkpoint_key="k") == [1, 2]
    with pytest.raises(cw.CursorLoopError) as info:
        run(mode, fetch, max_empty_pages=2, checkpoints=store, checkpoint_key="k")
    assert info.value.reason == "empty-pages"
    assert info.value.pages_done == 3


def test_the_run_of_empty_pages_carries_over_a_resume(store: Any) -> None:
    failed: list[str] = []

    def fetch(cursor: str | None, limit: int) -> cw.Page[int]:
        if cursor == "b" and not failed:
            failed.append(cursor)
            raise ConnectionError("injected")
        items, nxt = {None: ([1], "a"), "a": ([], "b"), "b": ([], "c"), "c": ([], "d")}.get(
            cursor, ([2], None)
        )
        return cw.Page(items, nxt)

    kw: dict[str, Any] = {"max_empty_pages": 2, "checkpoints": store, "checkpoint_key": "k"}
    with pytest.raises(cw.PaginationError):
        cw.collect_pages(fetch, **kw)
    with pytest.raises(cw.CursorLoopError) as info:  # a, b, c: three empty pages in a row
        cw.collect_pages(fetch, **kw)
    assert info.value.reason == "empty-pages"


def endless(cursor: str | None, limit: int) -> cw.Page[int]:
    n = 0 if cursor is None else int(cursor)
    return cw.Page([n], str(n + 1))


@modes
def test_max_pages_raises_instead_of_truncating(mode: str, store: Any) -> None:
    with pytest.raises(cw.PaginationError) as info:
        run(mode, endless, max_pages=7, checkpoints=store, checkpoint_key="k")
    assert (info.value.reason, info.value.pages_done, info.value.cursor) == ("max-pages", 7, "7")
    assert info.value.__cause__ is None


@modes
def test_max_items_raises_instead_of_truncating(mode: str, store: Any) -> None:
    src = Source(30)
    with pytest.raises(cw.PaginationError) as info:
        run(mode, src, page_size=4, max_items=10, checkpoints=store, checkpoint_key="k")
    assert (info.value.reason, info.value.pages_done, info.value.cursor) == ("max-items", 2, "8")
    assert run(
        mode, Source(10), page_size=4, max_items=10, checkpoints=store, checkpoint_key="k"
    ) == list(range(10))


def test_default_max_items_is_max_pages_times_page_size(store: Any) -> None:
    def oversized(cursor: str | None, limit: int) -> cw.Page[int]:
        return cw.Page(list(range(limit * 3)), None if cursor else "x")

    with pytest.raises(cw.PaginationError, match="max_items=6"):
        cw.collect_pages(oversized, page_size=2, max_pages=3, checkpoints=store)


@modes
def test_deadline_stops_between_pages_and_the_next_call_resumes(mode: str, store: Any) -> None:
    clock = FakeClock()
    src = Source(50)

    def slow(cursor: str | None, limit: int) -> cw.Page[int]:
        clock.advance(1.0)
        return src(cursor, limit)

    kw: dict[str, Any] = {"page_size": 5, "deadline": 3.5, "clock": clock, "checkpoints": store}
    with pytest.raises(cw.PaginationError) as info:
        run(mode, slow, checkpoint_key="k", **kw)
    assert (info.value.reason, info.value.pages_done, info.value.cursor) == ("deadline", 4, "20")
    with pytest.raises(cw.PaginationError):
        run(mode, slow, checkpoint_key="k", **kw)
    assert run(mode, slow, checkpoint_key="k", **kw) == list(range(50))
    assert len(src.calls) == 10  # every page fetched exactly once across the three calls


@modes
def test_an_expired_checkpoint_is_not_resumed(mode: str) -> None:
    clock = FakeClock()
    store = cw.MemoryCheckpoints(ttl=30)
    src = Source(15, fail_calls=frozenset({2}))
    with pytest.raises(cw.PaginationError):
        run(mode, src, page_size=5, checkpoints=store, clock=clock, checkpoint_key="k")
    clock.advance(30.0)
    assert run(mode, src, page_size=5, checkpoints=store, clock=clock, checkpoint_key="k") == list(
        range(15)
    )
    assert src.calls == [None, "5", None, "5", "10"]


def test_a_failure_without_progress_does_not_extend_the_checkpoint() -> None:
    clock = FakeClock()
    store = cw.MemoryCheckpoints(ttl=30)
    src = Source(15, fail_calls=frozenset({2, 3}))
    for _ in range(2):
        with pytest.raises(cw.PaginationError):
            cw.collect_pages(src, page_size=5, checkpoints=store, clock=clock, checkpoint_key="k")
        clock.advance(20.0)
    # The second failure made no progress, so the checkpoint still dates from the first: expired.
    assert cw.collect_pages(
        src, page_size=5, checkpoints=store, clock=clock, checkpoint_key="k"
    ) == list(range(15))
    assert src.calls == [None, "5", "5", None, "5", "10"]


def test_checkpoint_every_saves_during_the_rebuild(store: Any) -> None:
    seen_sizes: list[int] = []
    src = Source(30)

    def fetch(cursor: str | None, limit: int) -> cw.Page[int]:
        seen_sizes.append(len(store))
        return src(cursor, limit)

    assert cw.collect_pages(
        fetch, page_size=5, checkpoint_every=2, checkpoints=store, checkpoint_key="k"
    ) == list(range(30))
    assert seen_sizes == [0, 0, 1, 1, 1, 1]
    assert len(store) == 0


def test_memory_checkpoints_are_bounded() -> None:
    store = cw.MemoryCheckpoints(ttl=60, maxsize=2)
    for key in "abc":
        store.save(key, core.Checkpoint([([1], "x")], saved_at=0.0, expires_at=100.0))
    assert len(store) == 2
    assert store.load("a", 1.0) is None
    assert store.load("c", 1.0) is not None


# --- checkpoints on a layer -------------------------------------------------------------------


@modes
def test_layer_checkpoints_resume_through_a_layer(mode: str) -> None:
    layer = cw.MemoryLayer()
    store = cw.LayerCheckpoints(layer, ttl=60)
    src = Source(12, fail_calls=frozenset({2}))
    with pytest.raises(cw.PaginationError):
        run(mode, src, page_size=5, checkpoints=store, checkpoint_key="k")
    assert len(layer) == 1
    assert run(mode, src, page_size=5, checkpoints=store, checkpoint_key="k") == list(range(12))
    assert src.calls == [None, "5", "5", "10"]
    assert len(layer) == 0


class BrokenLayer:
    name = "broken"
    local = False

    def __init__(self) -> None:
        self.calls = 0

    def get(self, key: cw.CacheKey) -> Entry | None:
        self.calls += 1
        raise ConnectionError("layer down")

    def set(self, key: cw.CacheKey, entry: Entry) -> None:
        self.calls += 1
        raise ConnectionError("layer down")

    def delete(self, key: cw.CacheKey) -> None:
        self.calls += 1
        raise ConnectionError("layer down")

    def clear(self) -> None:
        raise ConnectionError("layer down")


def test_a_failing_checkpoint_store_never_fails_the_rebuild() -> None:
    layer = BrokenLayer()
    store = cw.LayerCheckpoints(layer, ttl=60)
    src = Source(12, fail_calls=frozenset({2}))
    with pytest.raises(cw.PaginationError) as info:
        cw.collect_pages(src, page_size=5, checkpoints=store, checkpoint_key="k")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert "injected" in str(info.value.__cause__)
    assert cw.collect_pages(src, page_size=5, checkpoints=store, checkpoint_key="k") == list(
        range(12)
    )
    assert layer.calls >= 3  # load, save, load: all failed, all ignored


def test_garbage_on_the_layer_is_a_miss() -> None:
    layer = cw.MemoryLayer()
    store = cw.LayerCheckpoints(layer, ttl=60)
    key = store._key("k")
    junks: list[object] = [{"cacheward-checkpoint": 1, "pages": "x"}, [1, 2], None, {"pages": []}]
    for junk in junks:
        layer.set(key, Entry(junk, 0.0, 2e9, 2e9))
        assert store.load("k", 1.0) is None
    # Wrong shapes inside pages, or an ended sequence in the middle, are misses too.
    bad = {"cacheward-checkpoint": 1, "pages": [[[1], None], [[2], "x"]], "saved_at": 0,
           "expires_at": 2e9}  # fmt: skip
    assert core.checkpoint_from_value(bad) is None
    assert core.checkpoint_from_value({**bad, "pages": [[[1], 5]]}) is None
    good = core.checkpoint_to_value(core.Checkpoint([([1], "x")], saved_at=0.0, expires_at=9.0))
    restored = core.checkpoint_from_value(good)
    assert restored is not None
    assert restored.pages == (([1], "x"),)
    assert restored.cursor == "x"


# --- wrong use is a clear error ---------------------------------------------------------------


def test_wrong_use_is_a_configuration_error(store: Any) -> None:
    async def afetch(cursor: str | None, limit: int) -> cw.Page[int]:
        return cw.Page([], None)

    with pytest.raises(cw.ConfigurationTypeError, match="aiter_pages"):
        cw.collect_pages(afetch, checkpoints=store)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationTypeError, match=r"must return cacheward\.Page"):
        cw.collect_pages(lambda c, n: [1, 2], checkpoints=store)  # type: ignore[arg-type,return-value]
    with pytest.raises(cw.ConfigurationTypeError, match="next_cursor"):
        cw.Page([1], 5)  # type: ignore[arg-type]
    bad: list[dict[str, Any]] = [
        {"page_size": 0},
        {"max_pages": "10"},
        {"max_items": -1},
        {"max_empty_pages": -1},
        {"deadline": -1},
        {"deadline": float("nan")},
        {"checkpoint_every": 0},
        {"checkpoint_key": ""},
        {"checkpoints": object()},
        {"resume": "yes"},
        {"clock": object()},
    ]
    for kwargs in bad:
        with pytest.raises(cw.ConfigurationError):
            cw.iter_pages(endless, **kwargs)
    with pytest.raises(cw.ConfigurationError):
        cw.MemoryCheckpoints(ttl=0)
    with pytest.raises(cw.ConfigurationTypeError):
        cw.LayerCheckpoints(object())  # type: ignore[arg-type]


def test_a_sync_page_function_is_accepted_by_the_async_driver(store: Any) -> None:
    fetch: Any = Source(7)
    items = asyncio.run(cw.acollect_pages(fetch, page_size=3, checkpoints=store, resume=False))
    assert items == list(range(7))


# --- guards around the page function: every page call counts against them ---------------------


def test_pages_go_through_the_guard_and_the_driver_never_retries(store: Any) -> None:
    attempts: list[str | None] = []
    src = Source(20)

    def flaky(cursor: str | None, limit: int) -> cw.Page[int]:
        attempts.append(cursor)
        if attempts.count(cursor) == 1 and cursor == "10":
            raise ConnectionError("transient")
        return src(cursor, limit)

    def guard(fn: Callable[[str | None, int], cw.Page[int]]) -> Any:
        @functools.wraps(fn)
        def wrapper(cursor: str | None, limit: int) -> cw.Page[int]:
            try:
                return fn(cursor, limit)
            except ConnectionError:
                return fn(cursor, limit)  # one retry

        return wrapper

    guarded = guard(flaky)
    assert cw.collect_pages(guarded, page_size=5, checkpoints=store, checkpoint_key="k") == list(
        range(20)
    )
    assert attempts == [None, "5", "10", "10", "15"]
    # Without the guard the same error stops the rebuild: the driver itself never retries.
    attempts.clear()
    with pytest.raises(cw.PaginationError):
        cw.collect_pages(flaky, page_size=5, checkpoints=store, checkpoint_key="k2")
    assert attempts == [None, "5", "10"]


# --- property: the driver always terminates within the distinct cursors it was shown -----------


def _graph_fetch(succ: list[int | None], calls: list[str | None]) -> Any:
    def fetch(cursor: str | None, limit: int) -> cw.Page[int]:
        calls.append(cursor)
        node = 0 if cursor is None else int(cursor)
        nxt = succ[node]
        return cw.Page([node], None if nxt is None else str(nxt))

    return fetch


def check_terminates(succ: list[int | None]) -> None:
    """Whatever cursor graph the page function walks, the rebuild ends after at most one call per
    distinct cursor, with the whole chain or a CursorLoopError."""
    calls: list[str | None] = []
    fetch = _graph_fetch(succ, calls)
    try:
        items = cw.collect_pages(fetch, resume=False, max_pages=1000)
    except cw.CursorLoopError:
        pass
    except cw.PaginationError as exc:
        raise AssertionError(f"the loop was not detected: {exc}") from exc
    else:
        assert items[-1] is not None
        assert succ[items[-1]] is None
    assert len(calls) == len(set(calls))
    assert len(calls) <= len(succ) + 1


graphs = st.integers(1, 12).flatmap(
    lambda n: st.lists(st.one_of(st.none(), st.integers(0, n - 1)), min_size=n, max_size=n)
)


@given(graphs)
def test_property_rebuild_ends_within_the_distinct_cursors(succ: list[int | None]) -> None:
    check_terminates(succ)


def test_property_search_catches_a_driver_without_loop_detection(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = core.Rebuild._accept

    def forgetful(self: core.Rebuild, items: list[Any], next_cursor: str | None) -> None:
        original(self, items, next_cursor)
        self.seen.clear()  # the broken variant: never remembers a cursor

    monkeypatch.setattr(core.Rebuild, "_accept", forgetful)

    @settings(max_examples=200, database=None, derandomize=True, phases=[Phase.generate])
    @given(graphs)
    def broken(succ: list[int | None]) -> None:
        check_terminates(succ)

    with pytest.raises(AssertionError):
        broken()


# --- checkpoints on a real Redis: another process resumes the rebuild ---------------------------


@pytest.mark.redis
@modes
def test_layer_checkpoints_on_redis_resume_in_another_process(mode: str, redis_url: str) -> None:
    import uuid

    namespace = f"pages-{uuid.uuid4().hex[:12]}"
    # Two layers with their own clients: "process A" fails part-way, "process B" resumes.
    layer_a = cw.RedisLayer.from_url(redis_url, namespace=namespace)
    layer_b = cw.RedisLayer.from_url(redis_url, namespace=namespace)
    store_a = cw.LayerCheckpoints(layer_a, ttl=30)
    store_b = cw.LayerCheckpoints(layer_b, ttl=30)
    src = Source(12, fail_calls=frozenset({2}))
    key = store_b._key(cw._pages.rebuild_identity(src, "k"))

    if mode == "sync":
        try:
            with pytest.raises(cw.PaginationError):
                cw.collect_pages(src, page_size=5, checkpoints=store_a, checkpoint_key="k")
            assert layer_b.get(key) is not None  # the checkpoint is in Redis
            items = cw.collect_pages(src, page_size=5, checkpoints=store_b, checkpoint_key="k")
            assert layer_b.get(key) is None  # finished: discarded
        finally:
            layer_a.close()
            layer_b.close()
    else:

        async def fetch(cursor: str | None, limit: int) -> cw.Page[int]:
            return src(cursor, limit)

        key = store_b._key(cw._pages.rebuild_identity(fetch, "k"))

        async def main() -> list[int]:
            try:
                with pytest.raises(cw.PaginationError):
                    await cw.acollect_pages(
                        fetch, page_size=5, checkpoints=store_a, checkpoint_key="k"
                    )
                assert await layer_b.aget(key) is not None
                result = await cw.acollect_pages(
                    fetch, page_size=5, checkpoints=store_b, checkpoint_key="k"
                )
                assert await layer_b.aget(key) is None
                return result
            finally:
                await layer_a.aclose()
                await layer_b.aclose()

        items = asyncio.run(main())
    assert items == list(range(12))
    assert src.calls == [None, "5", "5", "10"]  # B resumed at A's failed page


# --- the real guards around the page function ---------------------------------------------------


def test_page_calls_go_through_cg_retry_and_its_budget() -> None:
    clock = FakeClock()
    store = cw.MemoryCheckpoints(ttl=600)
    src = Source(25)
    attempts: list[str | None] = []
    transient = {"10": 1, "20": 2}  # cursor -> failures before it answers

    def flaky(cursor: str | None, limit: int) -> cw.Page[int]:
        attempts.append(cursor)
        if transient.get(cursor or "", 0) > 0:
            transient[cursor or ""] -= 1
            raise ConnectionResetError("connection reset by peer")
        return src(cursor, limit)

    budget = cw.RetryBudget(ratio=0.0, min_per_second=0.1, window=10, clock=clock)
    guarded = cw.retry(attempts=3, budget=budget, clock=clock)(flaky)
    kw: dict[str, Any] = {"page_size": 5, "checkpoints": store, "clock": clock}
    with pytest.raises(cw.PaginationError) as info:
        cw.collect_pages(guarded, checkpoint_key="k", **kw)
    # "10" failed once and was retried from the budget's reserve (one retry); at "20" the
    # budget refused the retry, so the page failed and stopped the rebuild.
    assert attempts == [None, "5", "10", "10", "15", "20"]
    assert (info.value.cursor, info.value.pages_done) == ("20", 4)
    assert isinstance(info.value.__cause__, cw.RetryBudgetExhausted)
    # The next rebuild resumes at "20" (once the reserve refilled); nothing before is re-read.
    attempts.clear()
    clock.advance(60)
    assert cw.collect_pages(guarded, checkpoint_key="k", **kw) == list(range(25))
    assert attempts == ["20", "20"]


def test_every_page_call_takes_a_token_and_a_refusal_is_resumed() -> None:
    clock = FakeClock()
    store = cw.MemoryCheckpoints(ttl=600)
    src = Source(60)
    bucket = cw.TokenBucket(rate=1.0, burst=5, clock=clock)
    limited = cw.rate_limit(bucket, max_wait=0, clock=clock)(src)
    kw: dict[str, Any] = {"page_size": 5, "checkpoints": store, "clock": clock}
    with pytest.raises(cw.PaginationError) as info:
        cw.collect_pages(limited, checkpoint_key="k", **kw)
    assert isinstance(info.value.__cause__, cw.RateLimited)
    assert info.value.pages_done == 5  # the burst: five pages, five tokens
    assert len(src.calls) == 5
    clock.advance(3)  # three more tokens
    with pytest.raises(cw.PaginationError):
        cw.collect_pages(limited, checkpoint_key="k", **kw)
    assert len(src.calls) == 8
    clock.advance(60)
    assert cw.collect_pages(limited, checkpoint_key="k", **kw) == list(range(60))
    assert len(src.calls) == 12  # 12 pages, each fetched once: no token was spent twice


# --- one algorithm, two colours: the sync and async drivers behave identically -----------------


Script = tuple[list[tuple[int, "int | None"]], frozenset[int], int, int]


@st.composite
def scripts(draw: st.DrawFn) -> Script:
    """A page graph (items per page, next page), failing calls, max_pages, max_empty_pages."""
    n = draw(st.integers(1, 10))
    nodes = draw(
        st.lists(
            st.tuples(st.integers(0, 3), st.none() | st.integers(0, n - 1)), min_size=n, max_size=n
        )
    )
    fails = draw(st.frozensets(st.integers(1, 12), max_size=3))
    return nodes, fails, draw(st.integers(1, 12)), draw(st.integers(0, 2))


def _outcomes(mode: str, script: Script) -> list[object]:
    nodes, fails, max_pages, max_empty = script
    calls: list[str | None] = []

    def page(cursor: str | None, limit: int) -> cw.Page[str]:
        calls.append(cursor)
        if len(calls) in fails:
            raise ConnectionError("injected")
        node = 0 if cursor is None else int(cursor)
        count, nxt = nodes[node]
        items = [f"{node}.{i}" for i in range(count)]
        return cw.Page(items, None if nxt is None else str(nxt))

    store = cw.MemoryCheckpoints(ttl=60)
    out: list[object] = []
    for _ in range(len(fails) + 1):  # rebuild until it stops failing
        try:
            items = run(
                mode,
                page,
                max_pages=max_pages,
                max_empty_pages=max_empty,
                checkpoints=store,
                checkpoint_key="k",
            )
        except (cw.PaginationError, cw.CursorLoopError) as exc:  # noqa: PERF203
            out.append((type(exc).__name__, exc.reason, exc.cursor, exc.pages_done))
            if isinstance(exc, cw.CursorLoopError) or exc.reason != "page-failed":
                break
        else:
            out.append(("items", items))
            break
    out.append(("calls", calls))
    return out


def check_same_colours(script: Script) -> None:
    assert _outcomes("sync", script) == _outcomes("async", script)


#: Two pages, the second call fails: the first rebuild saves a checkpoint, the second resumes.
RESUMED: Script = ([(1, 1), (1, None)], frozenset({2}), 12, 0)
#: One page, then a page pointing back to the first: a cursor loop after a periodic-free save.
LOOPED: Script = ([(1, 1), (2, 0)], frozenset({3}), 12, 1)


@example(RESUMED)
@example(LOOPED)
@given(scripts())
def test_property_sync_and_async_drivers_agree(script: Script) -> None:
    check_same_colours(script)


def test_the_colour_check_catches_an_async_driver_that_skips_saves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = cw._pages._astore

    async def no_save(plan: Any, request: Any) -> object:
        if isinstance(request, core.SaveCheckpoint):
            return None
        return await original(plan, request)

    monkeypatch.setattr(cw._pages, "_astore", no_save)
    with pytest.raises(AssertionError):  # deterministic: a script known to need the save
        check_same_colours(RESUMED)


class _Recording:
    """A checkpoint store that records every call, sync and async, as ``(method, args)``."""

    ttl = 30.0

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def load(self, key: str, now: float) -> None:
        self.calls.append(("load", (key, now)))

    def save(self, key: str, checkpoint: core.Checkpoint) -> None:
        self.calls.append(("save", (key, checkpoint.pages, checkpoint.expires_at)))

    def discard(self, key: str) -> None:
        self.calls.append(("discard", (key,)))

    async def aload(self, key: str, now: float) -> None:
        self.calls.append(("load", (key, now)))

    async def asave(self, key: str, checkpoint: core.Checkpoint) -> None:
        self.calls.append(("save", (key, checkpoint.pages, checkpoint.expires_at)))

    async def adiscard(self, key: str) -> None:
        self.calls.append(("discard", (key,)))


def test_each_store_call_is_the_same_in_both_colours() -> None:
    """The hand-written pairs of STORE_CALLS call the matching methods with the same arguments."""
    from cacheward import _pages

    assert set(_pages.STORE_CALLS) == {
        core.LoadCheckpoint,
        core.SaveCheckpoint,
        core.DiscardCheckpoint,
    }
    clock = FakeClock(start=1000.0)
    for request_type, (plain, coloured) in _pages.STORE_CALLS.items():
        made = []
        for colour in ("sync", "async"):
            store = _Recording()
            plan = _pages._Plan(**_plan_settings(store, clock))
            run = plan.start(None, 0.0)
            run.page_arrived([1, 2], "c")
            request = (
                core.SaveCheckpoint(run)
                if request_type is core.SaveCheckpoint
                else (request_type())
            )
            if colour == "sync":
                plain(store, plan, request)
            else:
                asyncio.run(coloured(store, plan, request))
            made.append(store.calls)
        assert made[0] == made[1], request_type
        assert len(made[0]) == 1, request_type


def _plan_settings(store: Any, clock: FakeClock) -> dict[str, Any]:
    return {
        "fetch_page": Source(3),
        "page_size": 2,
        "max_pages": 10,
        "max_items": None,
        "max_empty_pages": 3,
        "deadline": None,
        "resume": True,
        "checkpoint_key": "k",
        "checkpoints": store,
        "checkpoint_every": None,
        "clock": clock,
    }


def test_the_four_entry_points_take_the_same_settings() -> None:
    import inspect

    from cacheward import _pages

    def settings_of(fn: Any) -> list[tuple[str, Any, Any]]:
        params = inspect.signature(fn).parameters.values()
        return [(p.name, p.kind, p.default) for p in params]

    expected = settings_of(cw.iter_pages)
    for fn in (cw.aiter_pages, cw.collect_pages, cw.acollect_pages):
        assert settings_of(fn) == expected, fn.__name__
    plan = [p for p in settings_of(_pages._Plan) if p[0] != "self"]
    assert [p[0] for p in plan] == [p[0] for p in expected]


@pytest.mark.parametrize("layered", [False, True])
def test_checkpoint_stores_answer_the_same_in_both_colours(layered: bool) -> None:
    def make() -> Any:
        if layered:
            return cw.LayerCheckpoints(cw.MemoryLayer(), ttl=30)
        return cw.MemoryCheckpoints(ttl=30, maxsize=2)

    checkpoint = core.Checkpoint([([1, 2], "c")], saved_at=100.0, expires_at=130.0)
    script: list[tuple[str, tuple[Any, ...]]] = [
        ("load", ("k", 100.0)),
        ("save", ("k", checkpoint)),
        ("load", ("k", 110.0)),
        ("load", ("k", 140.0)),
        ("save", ("j", checkpoint)),
        ("discard", ("j",)),
        ("load", ("j", 110.0)),
    ]

    def shown(value: Any) -> Any:
        return None if value is None else (value.pages, value.saved_at, value.expires_at)

    sync_store, async_store = make(), make()
    plain = [shown(getattr(sync_store, name)(*args)) for name, args in script]

    async def coloured() -> list[Any]:
        return [shown(await getattr(async_store, "a" + name)(*args)) for name, args in script]

    assert plain == asyncio.run(coloured())
    assert plain[2] is not None
    assert plain[3] is None
