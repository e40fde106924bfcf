"""A stateful Hypothesis test: ``cw.cached`` against a trivially correct model.

The machine calls, advances the fake clock, breaks and mends the backend and invalidates keys;
after every step the real cache must have returned (or raised) exactly what the model says and
called the backend exactly when the model says.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

import cacheward as cw
from cacheward.testing import FakeClock, InlineExecutor

TTL, STALE, ERROR, BACKOFF, BACKOFF_MAX = 10.0, 20.0, 50.0, 2.0, 8.0
KEYS = st.sampled_from(["a", "b", "c"])


class Zero(random.Random):
    def random(self) -> float:
        return 0.0


class ModelEntry:
    def __init__(self, value: Any, now: float) -> None:
        self.value = value
        self.fresh_until = now + TTL
        self.stale_until = self.fresh_until + STALE
        self.error_until = self.fresh_until + max(STALE, ERROR)


def machine(real_backoff: float = BACKOFF) -> type[RuleBasedStateMachine]:
    """The machine; ``real_backoff`` configures the cache under test (the model always
    expects ``BACKOFF``), so passing 0 switches the mechanism off to show the test fails."""

    class CachedModel(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.clock = FakeClock()
            self.failing = False
            self.calls = 0
            self.expected_calls = 0
            self.entries: dict[str, ModelEntry] = {}
            self.failures: dict[str, int] = {}
            self.backoff_until: dict[str, float] = {}

            @cw.cached(
                ttl=TTL,
                stale_ttl=STALE,
                stale_if_error=ERROR,
                backoff=real_backoff,
                backoff_max=BACKOFF_MAX,
                clock=self.clock,
                rng=Zero(),
                refresh_executor=InlineExecutor(),
            )
            def fetch(key: str) -> tuple[str, int]:
                self.calls += 1
                if self.failing:
                    raise ConnectionError(f"backend down ({key})")
                return (key, self.calls)

            self.fetch = fetch

        # -- the model

        def model_fetch(self, key: str) -> tuple[bool, Any]:
            """The backend call the model expects: returns (ok, value or error type)."""
            self.expected_calls += 1
            if self.failing:
                failures = self.failures[key] = self.failures.get(key, 0) + 1
                delay = min(BACKOFF_MAX, BACKOFF * 2 ** (failures - 1))
                self.backoff_until[key] = self.clock.monotonic() + delay
                return False, ConnectionError
            self.failures.pop(key, None)
            self.backoff_until.pop(key, None)
            value = (key, self.expected_calls)
            self.entries[key] = ModelEntry(value, self.clock.time())
            return True, value

        def expect(self, key: str) -> tuple[str, Any]:
            now, mono = self.clock.time(), self.clock.monotonic()
            entry = self.entries.get(key)
            backing_off = mono < self.backoff_until.get(key, float("-inf"))
            if entry is not None and now < entry.fresh_until:
                return "value", entry.value
            if entry is not None and now < entry.stale_until:
                if not backing_off:
                    self.model_fetch(key)  # the (inline) background refresh
                return "value", entry.value
            usable = entry is not None and now < entry.error_until
            if backing_off:
                return ("value", entry.value) if usable else ("raises", cw.BackoffActive)  # type: ignore[union-attr]
            ok, result = self.model_fetch(key)
            if ok:
                return "value", result
            return ("value", entry.value) if usable else ("raises", result)  # type: ignore[union-attr]

        # -- rules

        @rule(key=KEYS)
        def call(self, key: str) -> None:
            kind, expected = self.expect(key)
            try:
                got: tuple[str, Any] = ("value", self.fetch(key))
            except Exception as exc:
                got = ("raises", type(exc))
            if kind == "value":
                assert got == ("value", expected)
            else:
                assert got[0] == "raises"
                assert issubclass(got[1], expected)
            assert self.calls == self.expected_calls

        @rule(seconds=st.sampled_from([0.5, 1.0, 2.0, 5.0, 9.0, 15.0, 31.0]))
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule(failing=st.booleans())
        def backend(self, failing: bool) -> None:
            self.failing = failing

        @rule(key=KEYS)
        def invalidate(self, key: str) -> None:
            self.fetch.invalidate(key)
            self.entries.pop(key, None)

    return CachedModel


TestCachedModel = machine().TestCase


def test_the_model_test_catches_a_cache_without_backoff() -> None:
    """Sibling: with the back-off switched off, the same machine must find a violation."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine(real_backoff=0.0),
            settings=settings(
                max_examples=200,
                derandomize=True,
                database=None,
                deadline=None,
                print_blob=False,
                report_multiple_bugs=False,
            ),
        )
