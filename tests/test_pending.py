"""Pending invalidations (issue 13, item 3) against a layer that fails on demand."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

import cacheward as cw
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward._pending import Pending


class Flaky:
    """A shared layer in a dict that raises while ``down``."""

    name = "flaky"
    local = False

    def __init__(self, max_pending: int = 10_000) -> None:
        self.data: dict[str, Entry] = {}
        self.down = False
        self.max_pending = max_pending
        self.deletes = 0

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("down")

    def get(self, key: CacheKey) -> Entry | None:
        self._check()
        return self.data.get(key.text)

    def set(self, key: CacheKey, entry: Entry) -> None:
        self._check()
        self.data[key.text] = entry

    def delete(self, key: CacheKey) -> None:
        self._check()
        self.deletes += 1
        self.data.pop(key.text, None)

    def clear(self) -> None:
        self.data.clear()

    async def aget(self, key: CacheKey) -> Entry | None:
        return self.get(key)

    async def aset(self, key: CacheKey, entry: Entry) -> None:
        self.set(key, entry)

    async def adelete(self, key: CacheKey) -> None:
        self.delete(key)

    async def aclear(self) -> None:
        self.clear()


def stack(layer: Flaky, truth: dict[str, str], **options: Any) -> Any:
    @cw.cached(ttl=60, layers=[layer], breaker_reset=0.05, **options)
    def load(key: str) -> str:
        return truth[key]

    return load


def seed(layer: Flaky, load: Any, truth: dict[str, str]) -> None:
    """Write every key's entry straight into the layer (what another process stored)."""
    for name, value in truth.items():
        key = CacheKey(name, load.namespace, (name,), {}, ("key",))
        layer.data[key.text] = Entry(value, time.time() - 1, 1e12, 1e12)


def replayed(load: Any) -> None:
    """Wait (bounded) for the background replay: the breaker is closed again after it."""
    for _ in range(1000):
        if load.stats().invalidations_pending == 0:
            return
        time.sleep(0.01)
    raise AssertionError("the pending invalidations were never replayed")


def test_overflow_makes_the_namespace_stale_instead_of_serving_it_fresh() -> None:
    layer = Flaky(max_pending=2)
    truth = {"a": "old", "b": "old", "c": "old"}
    load = stack(layer, truth)
    seed(layer, load, truth)
    layer.down = True
    for name in "abc":  # three invalidations, room for two: "a" is dropped
        truth[name] = "new"
        assert load.invalidate(name).pending == ("flaky",)
    assert load.stats().invalidations_pending == 2
    layer.down = False
    replayed(load)
    assert load("a") == "new"  # its entry predates the drop: stale, so fetched again
    assert load("b") == "new"
    assert load("c") == "new"


def test_sibling_without_distrust_the_dropped_key_is_served_old() -> None:
    layer = Flaky(max_pending=2)
    truth = {"a": "old", "b": "old", "c": "old"}
    load = stack(layer, truth)
    seed(layer, load, truth)
    original = Pending.vet
    Pending.vet = lambda self, found, namespace: found  # type: ignore[method-assign]
    try:
        layer.down = True
        for name in "abc":
            truth[name] = "new"
            load.invalidate(name)
        layer.down = False
        replayed(load)
        assert load("a") == "old"  # what the distrust prevents
    finally:
        Pending.vet = original  # type: ignore[method-assign]


def test_the_newest_invalidation_per_key_is_kept_once() -> None:
    layer = Flaky()
    truth = {"a": "x"}
    load = stack(layer, truth)
    layer.down = True
    for _ in range(5):
        assert not load.invalidate("a")
    assert load.stats().invalidations_pending == 1
    layer.down = False
    replayed(load)
    assert load("a") == "x"
    assert load.stats().invalidations_replayed == 1
    assert layer.deletes == 1


def test_a_taken_invalidation_reports_nothing_pending() -> None:
    load = stack(Flaky(), {"a": "x"})
    result = load.invalidate("a")
    assert result
    assert result.done
    assert result.pending == ()


def test_async_pending_invalidations_are_replayed_in_the_background() -> None:
    layer = Flaky()
    truth = {"a": "old"}

    @cw.cached(ttl=60, layers=[layer], breaker_reset=0.05)
    async def load(key: str) -> str:
        return truth[key]

    async def main() -> None:
        assert await load("a") == "old"
        layer.down = True
        result = await load.invalidate("a")
        assert result.pending == ("flaky",)
        layer.down = False
        for _ in range(500):  # bounded: the replay is due within a few breaker resets
            if load.stats().invalidations_pending == 0:
                break
            await asyncio.sleep(0.01)
        assert load.stats().invalidations_replayed == 1
        assert layer.data == {}

    asyncio.run(main())


@pytest.mark.parametrize("limit", [1, 3])
def test_pending_book_bounds(limit: int) -> None:
    book = Pending(limit)
    keys = [CacheKey(i, "ns:v1", (i,), {}, ("k",)) for i in range(5)]
    for key in keys:
        book.keep(key, now=10.0)
    assert len(book.snapshot()) == limit
    assert book.dropped == 5 - limit
    assert book.distrust == {"ns:v1": 10.0}
