"""Every L1 hears of it (issue 13, item 4): the backplane, on a real Redis with real processes,
and the L1 age bound while its channel is down (a property, with its sibling)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward._backplane import Recheck, Stack, decode, encode
from cacheward._core.coherence import still_current
from cacheward._core.entry import Entry
from cacheward._core.keys import CacheKey
from cacheward.testing import FakeClock
from servers import RedisServer

WORKER = Path(__file__).with_name("backplane_worker.py")


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with RedisServer.started() as srv:
        yield srv


def other_process_after_invalidate(server: RedisServer, switch: str, seconds: float) -> str:
    """Case 4: another process holds ``c1`` in its memory layer; this process changes the data
    and invalidates; returns what the other process's next calls return."""
    space = f"bp{uuid.uuid4().hex[:10]}"
    data = server.client()
    data.set(f"truth:{space}", "old")
    proc = subprocess.Popen(
        [sys.executable, str(WORKER), server.url, space, switch, str(seconds)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while data.get(f"ready:{space}:{proc.pid}") is None:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "the worker never got ready"
        time.sleep(0.01)
    layer = cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space)

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(maxsize=100), layer], namespace="config")
    def load(customer: str) -> str:
        return (data.get(f"truth:{space}") or b"").decode()

    try:
        data.set(f"truth:{space}", "new")
        assert not load.invalidate("c1").pending
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        return out.strip()
    finally:
        layer.close()
        data.close()


@pytest.mark.redis
def test_another_process_memory_layer_drops_the_key_after_invalidate(server: RedisServer) -> None:
    assert other_process_after_invalidate(server, "on", seconds=30) == "new"


@pytest.mark.redis
def test_sibling_backplane_off_the_other_process_keeps_serving_the_old_value(
    server: RedisServer,
) -> None:
    assert other_process_after_invalidate(server, "off", seconds=1) == "old"


def test_messages_round_trip_and_garbage_is_ignored() -> None:
    for local in ("c1", 7, ("a", 1), b"A1:f0x1p+0;"):
        assert decode(encode("o", "ns:v1", local)) == ("o", "ns:v1", local)
    for junk in (b"", b"[1,2]", b'["o","n",["x",1]]', b'["o","n",["t",[["b","!!"]]]]', b"\xff"):
        assert decode(junk) is None


# --- the L1 age bound while the channel is down (a property on a simulated schedule) --------------


def served_after_invalidation(
    steps: list[tuple[float, str]], max_age: float, *, guarded: bool
) -> list[float]:
    """One process, its memory layer holding ``c1`` when the channel goes down; meanwhile
    another process invalidates (the message is lost). Each step advances the clock and then
    hits, invalidates (elsewhere) or writes the key anew (elsewhere, also unheard). A hit that
    the guarded lookup hands to the read path as a :class:`Recheck` reads the shared layer (the
    truth) as ``Driver.recheck`` does. Returns, for each hit served a value older than the
    shared layer's, how long after that value was replaced it was served."""
    clock = FakeClock()
    l1 = cw.MemoryLayer()
    stack = Stack(l1, "ns:v1", "ch", clock.time, max_age)
    key = CacheKey("c1", "ns:v1", ("c1",), {}, ())

    def new_entry(version: int) -> Entry:
        now = clock.time()
        return Entry(version, now, now + 3600, now + 3600)

    truth: Entry | None = new_entry(0)
    replaced_at: dict[int, float] = {}
    l1.set(key, truth)
    clock.advance(0.5)
    if guarded:
        stack.guard()
    lookup = stack.lookup if guarded else stack.fast
    late: list[float] = []
    for advance, action in steps:
        clock.advance(advance)
        if action == "invalidate" and truth is not None:
            replaced_at[truth.value] = clock.time()
            truth = None
        elif action == "write":
            if truth is not None:
                replaced_at[truth.value] = clock.time()
            truth = new_entry(len(replaced_at) + 1)
        elif action == "hit":
            found = lookup("c1")
            if type(found) is Recheck:  # Driver.recheck: one read of the shared layer
                if truth is None:
                    l1.delete(key)
                    found = None
                elif still_current(found.entry, truth):
                    stack.mark("c1", found.entry)
                    found = found.entry
                else:
                    l1.set(key, truth)
                    stack.mark("c1", truth)
                    found = truth
            if found is None:  # a miss: the read path fetches the current value
                if truth is None:
                    truth = new_entry(len(replaced_at) + 1)
                l1.set(key, truth)
                found = truth
            if truth is None or found.value != truth.value:
                late.append(clock.time() - replaced_at[found.value])
    return late


step = st.tuples(
    st.floats(min_value=0.0, max_value=3.0), st.sampled_from(["hit", "hit", "invalidate", "write"])
)
SCHEDULE = [(1.0, "invalidate"), (2.0, "hit"), (2.5, "hit"), (0.1, "hit")]
# A miss and a write in the same clock tick: two entries with one creation stamp.
TIED = [(0.0, "invalidate"), (1.0, "hit"), (0.0, "write"), (1.0, "hit")]


@settings(derandomize=True, max_examples=200, deadline=None)
@given(st.lists(step, max_size=30), st.floats(min_value=0.5, max_value=5.0))
@example(SCHEDULE, 3.0)
@example(TIED, 1.0)
def test_while_the_channel_is_down_no_value_is_served_past_l1_max_age_after_it_changed(
    steps: list[tuple[float, str]], max_age: float
) -> None:
    assert all(age < max_age for age in served_after_invalidation(steps, max_age, guarded=True))


def test_sibling_without_the_guard_old_values_are_served_past_l1_max_age() -> None:
    late = served_after_invalidation(SCHEDULE, 3.0, guarded=False)
    assert late
    assert max(late) >= 3.0


# --- the read path's re-validation, on a real Redis with the channel down -------------------------


def served_after_channel_loss(server: RedisServer, *, backplane: bool) -> tuple[str, str, int]:
    """B holds ``c1``; its channel goes down; A changes the data and invalidates (B does not
    hear it). Returns what B serves at once and ``l1_max_age`` later, and B's rechecks."""
    from cacheward._background import drain

    space = f"bq{uuid.uuid4().hex[:10]}"
    clock = FakeClock(start=time.time())
    data = server.client()
    data.set(f"truth:{space}", "old")
    layers = [
        cw.RedisLayer.from_url(server.url, socket_timeout=2.0, namespace=space, clock=clock)
        for _ in range(2)
    ]

    def make(layer: Any, on: bool) -> Any:
        @cw.cached(
            ttl=600,
            layers=[cw.MemoryLayer(), layer],
            namespace="config",
            clock=clock,
            backplane=on,
            l1_max_age=2.0,
        )
        def load(customer: str) -> str:
            return (data.get(f"truth:{space}") or b"").decode()

        return load

    a, b = make(layers[0], True), make(layers[1], backplane)
    try:
        deadline = time.monotonic() + 30
        listening = layers if backplane else layers[:1]
        while not all(layer.subscriber().up for layer in listening):  # (subscribing empties L1)
            assert time.monotonic() < deadline, "the backplane never subscribed"
            time.sleep(0.01)
        assert b("c1") == "old"
        drain(layers[1], 5.0)
        driver = b.invalidate.__self__
        if backplane:
            layers[1]._stop_subscriber()  # the channel is down from here on
            driver.backplane.guard()
        data.set(f"truth:{space}", "new")
        assert not a.invalidate("c1").pending
        at_once = b("c1")
        clock.advance(2.5)
        later = b("c1")
        return at_once, later, b.stats().rechecks
    finally:
        for layer in layers:
            layer.close()
        data.close()


@pytest.mark.redis
def test_with_the_channel_down_an_entry_past_l1_max_age_is_rechecked_against_redis(
    server: RedisServer,
) -> None:
    assert served_after_channel_loss(server, backplane=True) == ("old", "new", 1)


@pytest.mark.redis
def test_sibling_without_the_backplane_the_old_value_is_served_past_l1_max_age(
    server: RedisServer,
) -> None:
    assert served_after_channel_loss(server, backplane=False) == ("old", "old", 0)
