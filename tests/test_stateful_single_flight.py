"""A stateful test of single-flight: ``cw.coalesce`` on asyncio tasks against a trivially
correct model.

The backend of each key blocks until a rule finishes it (with a value or an error), so the
machine decides exactly who arrives while a fetch runs. The model is a dict of "key -> callers
waiting": a call of a key in it joins, any other call starts a backend call; finishing a key
answers all its callers alike. After every step the backend calls, the callers still waiting
and the answers must be what the model says.
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

import cacheward as cw
import cacheward._readpath
from promise_harness import ForgetfulReadThrough

KEYS = st.sampled_from(["a", "b", 1, "1"])


def machine(*, coalescing: bool = True) -> type[RuleBasedStateMachine]:
    """The machine; ``coalescing=False`` switches the flight table off (the sibling)."""

    class SingleFlight(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.loop = asyncio.new_event_loop()
            self.gates: dict[tuple[type, Any], asyncio.Future[Any]] = {}
            self.calls = 0

            async def backend(key: Any) -> Any:
                self.calls += 1
                gate = self.loop.create_future()
                self.gates[(type(key), key)] = gate
                return await gate

            if coalescing:
                self.fn = cw.coalesce()(backend)
            else:
                with mock.patch.object(cacheward._readpath, "ReadThrough", ForgetfulReadThrough):
                    self.fn = cw.coalesce()(backend)
            # The model.
            self.expected_calls = 0
            self.waiting: dict[tuple[type, Any], list[asyncio.Task[Any]]] = {}
            self.answered: list[tuple[asyncio.Task[Any], Any]] = []

        def teardown(self) -> None:
            for task in asyncio.all_tasks(self.loop):
                task.cancel()
            self.settle()
            self.loop.close()

        def settle(self) -> None:
            for _ in range(4):
                self.loop.run_until_complete(asyncio.sleep(0))

        @rule(key=KEYS)
        def call(self, key: Any) -> None:
            marker = (type(key), key)
            task = self.loop.create_task(self.fn(key))
            if marker not in self.waiting:
                self.expected_calls += 1
                self.waiting[marker] = []
            self.waiting[marker].append(task)
            self.settle()

        @rule(key=KEYS, ok=st.booleans())
        def finish(self, key: Any, ok: bool) -> None:
            marker = (type(key), key)
            if marker not in self.waiting:
                return
            outcome: Any = (key, self.calls) if ok else ConnectionError(f"{key!r} failed")
            gate = self.gates.pop(marker)
            if ok:
                gate.set_result(outcome)
            else:
                gate.set_exception(outcome)
            self.answered.extend((task, outcome) for task in self.waiting.pop(marker))
            self.settle()

        @invariant()
        def agrees(self) -> None:
            if not hasattr(self, "loop"):
                return
            assert self.calls == self.expected_calls
            for tasks in self.waiting.values():
                assert not any(task.done() for task in tasks)
            for task, outcome in self.answered:
                assert task.done()
                if isinstance(outcome, BaseException):
                    assert task.exception() is outcome
                else:
                    assert task.result() == outcome
            assert self.fn.stats().in_flight == len(self.waiting)

    return SingleFlight


TestSingleFlight = machine().TestCase


def test_the_single_flight_model_test_catches_no_coalescing() -> None:
    """Sibling: without the flight table every caller calls the backend; the machine fails."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine(coalescing=False),
            settings=settings(
                max_examples=300,
                derandomize=True,
                database=None,
                deadline=None,
                print_blob=False,
                report_multiple_bugs=False,
                phases=[Phase.generate],
            ),
        )
