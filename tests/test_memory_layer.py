"""MemoryLayer against a trivially correct model: every policy, the count and the byte bound.

The model keeps the entries in a list in eviction order and spells out each policy: FIFO evicts
the oldest write (a write moves a key to the back), LRU the least recently read or written,
LFU the least often read (ties: the one that reached that count first). An entry heavier than
``max_bytes`` is not kept; otherwise the oldest by the policy goes until count and bytes fit.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

import cacheward as cw
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey

KEYS = st.sampled_from(["a", "b", "c", "d", "e", 1, 2])
WEIGHTS = st.integers(min_value=0, max_value=60)
MAXSIZE, MAX_BYTES = 4, 100


def key(local: Any) -> CacheKey:
    return CacheKey(local, "tests:v1:fn", (local,), {}, ("k",))


def entry(value: Any) -> Entry:
    return Entry(value, 0.0, 10.0, 20.0)


class _NewestFirst(cw.MemoryLayer):
    """A broken layer for the sibling: FIFO evicts the newest entry instead of the oldest."""

    __slots__ = ()

    def _evict(self) -> None:
        self._remove(next(reversed(self._data)))


def machine(policy: str, layer_class: type[cw.MemoryLayer] = cw.MemoryLayer) -> type:
    class Layer(RuleBasedStateMachine):
        @initialize(bounded=st.booleans())
        def setup(self, bounded: bool) -> None:
            self.max_bytes = MAX_BYTES if bounded else None
            self.layer = layer_class(
                MAXSIZE,
                policy=policy,  # type: ignore[arg-type]
                max_bytes=self.max_bytes,
                weigher=(lambda value: value[1]) if bounded else None,
            )
            # The model: [local, value, reads] in eviction order (the first goes first).
            self.model: list[list[Any]] = []
            self.tick = 0

        def _find(self, local: Any) -> list[Any] | None:
            return next((item for item in self.model if _same(item[0], local)), None)

        def _evict(self) -> None:
            if policy == "lfu":
                least = min(item[2] for item in self.model)
                victim = next(item for item in self.model if item[2] == least)
            else:
                victim = self.model[0]
            self.model.remove(victim)

        @rule(local=KEYS, weight=WEIGHTS)
        def write(self, local: Any, weight: int) -> None:
            self.tick += 1
            value = (self.tick, weight)
            self.layer.set(key(local), entry(value))
            old = self._find(local)
            if old is not None:
                self.model.remove(old)
            if self.max_bytes is not None:
                if weight > self.max_bytes:
                    return
                while self.model and sum(i[1][1] for i in self.model) + weight > self.max_bytes:
                    self._evict()
            while len(self.model) >= MAXSIZE:
                self._evict()
            self.model.append([local, value, 0])

        @rule(local=KEYS)
        def read(self, local: Any) -> None:
            found = self.layer.get(key(local))
            item = self._find(local)
            assert (found.value if found else None) == (item[1] if item else None)
            if item is not None:
                if policy == "lru":
                    self.model.remove(item)
                    self.model.append(item)
                elif policy == "lfu":
                    item[2] += 1
                    # Among equal counts, the one that reached the count first goes first.
                    self.model.remove(item)
                    self.model.append(item)

        @rule(local=KEYS)
        def delete(self, local: Any) -> None:
            self.layer.delete(key(local))
            item = self._find(local)
            if item is not None:
                self.model.remove(item)

        @rule()
        def clear(self) -> None:
            self.layer.clear()
            self.model.clear()

        def teardown(self) -> None:
            assert len(self.layer) == len(self.model)
            if self.max_bytes is not None:
                assert self.layer.bytes == sum(i[1][1] for i in self.model)
                assert self.layer.bytes <= self.max_bytes

    return Layer


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("policy", ["fifo", "lru", "lfu"])
def test_memory_layer_matches_the_model(policy: str) -> None:
    run_state_machine_as_test(
        machine(policy), settings=settings(max_examples=100, stateful_step_count=30)
    )


def test_the_model_catches_a_layer_that_evicts_the_wrong_entry() -> None:
    # The sibling: a layer that evicts the newest entry. A derandomized search finds it on
    # every run.
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine("fifo", _NewestFirst),
            settings=settings(
                max_examples=200,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],  # the failure is enough; no shrinking
                report_multiple_bugs=False,
            ),
        )


def test_rewrites_keep_the_fifo_order_bounded() -> None:
    # The order's stale records (left by overwrites) are dropped when they pile up, so the
    # record queue stays within a constant factor of the entries and eviction stays O(1).
    layer = cw.MemoryLayer(8)
    for i in range(10_000):
        layer.set(key(i % 10), entry(i))
        if i % 3 == 0:
            layer.delete(key((i + 5) % 10))
        assert len(layer._order) <= 2 * len(layer) + 65
        assert sum(layer._stale.values()) < len(layer._order)
    assert len(layer) <= 8


def test_a_key_written_once_costs_one_record_and_no_stale_count() -> None:
    # The memory of a small entry: one key in the order per write, nothing else unless the
    # key is overwritten or deleted.
    layer = cw.MemoryLayer(100)
    for i in range(50):
        layer.set(key(i), entry(i))
    assert list(layer._order) == list(range(50))
    assert layer._stale == {}
    layer.set(key(3), entry("again"))
    layer.delete(key(4))
    assert layer._stale == {3: 1, 4: 1}


def test_an_entry_heavier_than_the_layer_is_not_kept() -> None:
    layer = cw.MemoryLayer(10, max_bytes=1000)
    layer.set(key("small"), entry("x"))
    layer.set(key("big"), entry("x" * 5000))
    assert layer.get(key("big")) is None
    assert layer.get(key("small")) is not None
    assert 0 < layer.bytes <= 1000


def test_bad_settings_name_the_argument() -> None:
    with pytest.raises(cw.ConfigurationError, match="max_bytes"):
        cw.MemoryLayer(max_bytes=0)
    with pytest.raises(cw.ConfigurationError, match="weigher"):
        cw.MemoryLayer(weigher=len)
    with pytest.raises(cw.ConfigurationError, match="weigher"):
        cw.MemoryLayer(max_bytes=10, weigher=3)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="policy"):
        cw.MemoryLayer(policy="random")  # type: ignore[arg-type]


def test_a_failing_weigher_falls_back_to_getsizeof() -> None:
    def broken(value: Any) -> int:
        raise RuntimeError("no")

    layer = cw.MemoryLayer(10, max_bytes=10_000, weigher=broken)
    layer.set(key("a"), entry("value"))
    assert layer.get(key("a")) is not None
    assert layer.bytes > 0


def test_entries_of_one_function_share_their_stamp_offsets() -> None:
    # What keeps a small entry small: per entry only value and fresh_until; the other stamps
    # are offsets in a tuple shared by the entries written with the same settings.
    from cacheward._core.entry import make_entry

    settings = {"ttl": 60.0, "stale_ttl": 30.0, "stale_if_error": 600.0, "jitter": 0.1}
    made = [make_entry(i, now=1_800_000_000.0 + i, draw=0.5, **settings) for i in range(100)]
    tails = {id(e._tail) for e in made}
    assert len(tails) <= 4  # the float rounding of now + lifetime gives a few variants
    for e, i in zip(made, range(100), strict=True):
        assert e.created == 1_800_000_000.0 + i
        assert e.stale_until == e.fresh_until + 30.0
        assert e.error_until == e.fresh_until + 600.0
    # Stamps an offset would not give back exactly are kept as they are.
    odd = Entry(None, 1.0, 1e300, 1e300 + 1e284, 1e300 + 1e285)
    assert odd._tail[0] is False  # absolute: 1e300 - (1e300 - 1.0) is not 1.0
    assert (odd.created, odd.stale_until, odd.error_until) == (1.0, 1e300 + 1e284, 1e300 + 1e285)


class _FloatSlotEntry:
    """The layout before: ``fresh_until`` a float object of its own (for the sibling)."""

    __slots__ = ("_tail", "fresh_until", "value")

    def __init__(self, value: Any, fresh_until: float) -> None:
        self.value, self.fresh_until, self._tail = value, fresh_until, ()


def _allocated_per_entry(make: Any) -> float:
    """Bytes allocated per entry made by ``make(i)`` with distinct stamps (a real clock's).

    The fewest of 3 measurements: tracemalloc also counts what other threads allocate
    meanwhile (a background thread left by an earlier test in the same run)."""
    import tracemalloc

    values = list(range(2000))  # preallocated: only the entries are measured
    measured = []
    for _ in range(3):
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            made = [make(i) for i in values]
            allocated = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        measured.append((allocated - sys.getsizeof(made)) / len(made))
        del made
    return min(measured)


def test_an_entry_is_one_object_stamps_included() -> None:
    # What keeps a small entry at 56 bytes: fresh_until is the entry's own float value, not a
    # float object beside it (24 bytes more an entry).
    from cacheward._core.entry import make_entry

    settings = {"ttl": 60.0, "stale_ttl": 30.0, "stale_if_error": 600.0, "jitter": 0.1}
    one = make_entry(0, now=1_800_000_000.0, draw=0.5, **settings)

    def make(i: int) -> Entry:
        return make_entry(i, now=1_800_000_000.0 + i / 7, draw=0.5, **settings)

    assert _allocated_per_entry(make) <= sys.getsizeof(one) + 1
    # ... and apart from the freshness test it is no number.
    assert one.fresh_until == +one
    assert type(one.fresh_until) is float
    assert [one == one.fresh_until, one.fresh_until == one] == [False, False]
    assert [one != one.fresh_until, one.fresh_until != one] == [True, True]
    assert Entry(None, 0.0, 0.0, 0.0)  # always true, though its fresh_until is 0.0
    with pytest.raises(TypeError):
        hash(one)


def test_the_entry_size_check_catches_a_separate_float() -> None:
    # The sibling: the layout with a float object per entry fails the same measurement.
    one = _FloatSlotEntry(0, 1.5)
    assert _allocated_per_entry(lambda i: _FloatSlotEntry(i, 1_800_000_000.0 + i / 7)) > (
        sys.getsizeof(one) + 1
    )
