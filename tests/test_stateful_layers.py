"""A stateful test of the layer stack: ``cw.cached`` over a memory layer and two scripted remote
layers, against a trivially correct model.

The model keeps one plain ``dict`` per layer and spells out the read-through rule: serve a fresh
entry from the first layer that has one (copying it into memory), else fetch and write every
layer that is up. A layer that is down or corrupt is a miss, a hung one also costs its timeout
on the clock, an evicting one keeps only its latest write. After every call the value (or the
error), the number of backend calls and the clock must be exactly what the model says — both
when the caller is answered and after the shared-layer writes, which run after it (in the
refresh executor, here a manual one).
Entries here have no stale window and failures no back-off, so every rule is simple; the stale
and back-off rules have their own model test (``test_cached_model.py``).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

import cacheward as cw
from cacheward.testing import FakeClock, ManualExecutor, ScriptedLayer

TTL, LAYER_TIMEOUT = 10.0, 0.5
KEYS = st.sampled_from(["a", "b", 1])
MODES = st.sampled_from(["up", "down", "hung", "corrupt", "evicting"])


class MixedUpLayer(ScriptedLayer):
    """A broken layer for the sibling: a read returns the latest write, whatever its key."""

    def _get(self, key: Any) -> Any:
        return next(reversed(self.entries.values()), None)


def machine(layer: type[ScriptedLayer] = ScriptedLayer) -> type[RuleBasedStateMachine]:
    """The machine, with remote layers of class ``layer`` (the sibling passes a broken one)."""

    class LayerStack(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.clock = FakeClock()
            self.failing = False
            self.calls = 0
            self.remotes = [
                layer(f"r{i}", clock=self.clock, timeout=LAYER_TIMEOUT) for i in range(2)
            ]
            # The model: one dict per layer, key -> (value, fresh_until).
            self.memory: dict[Any, tuple[Any, float]] = {}
            self.stores: list[dict[Any, tuple[Any, float]]] = [{}, {}]
            self.expected_calls = 0
            self.executor = ManualExecutor()

            @cw.cached(
                refresh_executor=self.executor,
                ttl=TTL,
                jitter=0.0,
                backoff=0.0,
                backoff_max=0.0,
                layers=[cw.MemoryLayer(), *self.remotes],
                clock=self.clock,
                breaker_failures=1_000_000,  # every layer operation is tried
            )
            def fetch(key: Any) -> tuple[Any, int]:
                self.calls += 1
                if self.failing:
                    raise ConnectionError("backend down")
                return (key, self.calls)

            self.fetch = fetch

        # -- the model

        def touch(self, index: int) -> bool:
            """A remote operation: whether it works (a hung one costs its timeout)."""
            mode = self.remotes[index].mode
            if mode == "hung":
                self.model_now += LAYER_TIMEOUT
            return mode in ("up", "corrupt", "evicting")

        def expect(self, key: Any) -> tuple[str, Any]:
            self.model_now = start = self.clock.time()
            self.answered_at: float | None = None
            best = self.memory.get(key)
            if best is not None and start < best[1]:
                return "value", best[0]
            for index in range(2):
                if not self.touch(index):
                    continue
                found = self.stores[index].get(key)
                if self.remotes[index].mode == "corrupt":
                    found = None
                if found is None:
                    continue
                if start < found[1] and (best is None or found[1] > best[1]):
                    best = found
                    self.memory[key] = found
                    break
            if best is not None and self.model_now < best[1]:
                return "value", best[0]
            self.expected_calls += 1
            if self.failing:
                return "raises", ConnectionError
            entry = ((key, self.expected_calls), self.model_now + TTL)
            self.memory[key] = entry
            self.answered_at = self.model_now
            for index in range(2):
                if self.touch(index):
                    store = self.stores[index]
                    store.pop(key, None)
                    store[key] = entry
                    if self.remotes[index].mode == "evicting":
                        while len(store) > self.remotes[index].capacity:
                            del store[next(iter(store))]
            return "value", entry[0]

        # -- rules

        @rule(key=KEYS)
        def call(self, key: Any) -> None:
            kind, expected = self.expect(key)
            try:
                got: tuple[str, Any] = ("value", self.fetch(key))
            except Exception as exc:
                got = ("raises", type(exc))
            assert got == (kind, expected)
            assert self.calls == self.expected_calls
            if self.answered_at is not None:  # answered before the writes
                assert self.clock.time() == self.answered_at
            self.executor.run_pending()
            assert self.clock.time() == self.model_now

        @rule(seconds=st.sampled_from([0.5, 2.0, 5.0, 9.5, 20.0]))
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule(index=st.integers(0, 1), mode=MODES)
        def layer_mode(self, index: int, mode: Any) -> None:
            self.remotes[index].set_mode(mode)

        @rule(index=st.integers(0, 1))
        def flush(self, index: int) -> None:
            self.remotes[index].flush()
            self.stores[index].clear()

        @rule(failing=st.booleans())
        def backend(self, failing: bool) -> None:
            self.failing = failing

        @rule(key=KEYS)
        def invalidate(self, key: Any) -> None:
            now = self.clock.time()
            self.model_now = now
            self.memory.pop(key, None)
            for index in range(2):
                if self.touch(index):
                    self.stores[index].pop(key, None)
            self.fetch.invalidate(key)
            assert self.clock.time() == self.model_now

    return LayerStack


TestLayerStack = machine().TestCase


def test_the_layer_model_test_catches_a_layer_that_mixes_up_keys() -> None:
    """Sibling: with a remote layer that answers with another key's entry, callers get the
    wrong value and the machine fails."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine(MixedUpLayer),
            settings=settings(
                max_examples=500,
                derandomize=True,
                database=None,
                deadline=None,
                print_blob=False,
                report_multiple_bugs=False,
                phases=[Phase.generate],
            ),
        )
