"""Stateful tests: ``cw.TokenBucket`` and ``cw.RetryBudget`` against trivially correct models.

The models keep every event with its time and recompute from the definition (a bucket's level
is ``min(burst, level + rate * dt)``; a budget counts the deposits and withdrawals whose slice
is inside the window) instead of the real objects' running state and ring of slices. Times and
rates are multiples of powers of two, so the float arithmetic of model and object is exact.
"""

from __future__ import annotations

import math

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
from cacheward.testing import FakeClock

#: The shortest wait a bucket hands out (a waiter must never spin on a zero sleep).
MIN_WAIT = 1e-6

#: The siblings stop at the first counterexample (no shrinking: finding one is the point), and
#: search the same examples every run, so one that finds it once finds it every time.
SIBLING = settings(
    max_examples=300,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=False,
    report_multiple_bugs=False,
    phases=[Phase.generate],
)

STEPS = st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 8.0])


class BucketMachine(RuleBasedStateMachine):
    """A token bucket used by a caller that takes, queues, claims and gives up."""

    @initialize(rate=st.sampled_from([0.5, 1.0, 2.0, 4.0]), burst=st.integers(1, 6))
    def setup(self, rate: float, burst: int) -> None:
        self.clock = FakeClock(monotonic_start=0.0)
        self.bucket = cw.TokenBucket(rate=rate, burst=burst, clock=self.clock)
        self.rate, self.burst = rate, float(burst)
        self.level, self.updated, self.pending = self.burst, 0.0, 0
        self.taken: list[float] = []

    def model_level(self) -> float:
        now = self.clock.monotonic()
        return min(self.burst, self.level + (now - self.updated) * self.rate)

    def model_take(self) -> bool:
        level = self.model_level()
        self.level, self.updated = level, self.clock.monotonic()
        if level >= 1.0:
            self.level -= 1.0
            self.taken.append(self.updated)
            # The bound, over every window that ends with this take.
            now = self.updated
            for count, first in enumerate(reversed(self.taken), start=1):
                assert count <= self.burst + self.rate * (now - first)
            return True
        return False

    @rule(seconds=STEPS)
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def try_take(self) -> None:
        expected = self.pending == 0 and self.model_take()
        assert self.bucket.try_take() is expected

    @rule(max_wait=st.sampled_from([0.0, 0.5, 1.0, 4.0]))
    def reserve(self, max_wait: float) -> None:
        if self.pending == 0 and self.model_take():
            assert self.bucket.reserve(max_wait) == 0.0
            return
        wait = (self.pending + 1.0 - self.model_level()) / self.rate
        if wait > max_wait:
            with pytest.raises(cw.RateLimited):
                self.bucket.reserve(max_wait)
            return
        assert self.bucket.reserve(max_wait) == max(wait, MIN_WAIT)
        self.pending += 1

    @rule()
    def claim(self) -> None:
        if not self.pending:
            return
        if self.model_take():
            assert self.bucket.claim() == 0.0
            self.pending -= 1
        else:
            ahead = self.pending - 1
            wait = (ahead + 1.0 - self.model_level()) / self.rate
            assert self.bucket.claim() == max(wait, MIN_WAIT)

    @rule()
    def cancel(self) -> None:
        if self.pending:
            self.bucket.cancel()
            self.pending -= 1

    @invariant()
    def level_agrees(self) -> None:
        assert self.bucket.available() == self.model_level()


TestBucket = BucketMachine.TestCase


def budget_machine(slices: int = 10) -> type[RuleBasedStateMachine]:
    """The budget machine; ``slices`` is what the model assumes (the sibling lies about it)."""

    class BudgetMachine(RuleBasedStateMachine):
        @initialize(
            ratio=st.sampled_from([0.0, 0.25, 0.5, 1.0]),
            floor=st.sampled_from([0.0, 0.5, 1.0]),
            window=st.sampled_from([1.0, 2.0, 4.0]),
        )
        def setup(self, ratio: float, floor: float, window: float) -> None:
            self.clock = FakeClock(monotonic_start=0.0)
            self.budget = cw.RetryBudget(
                ratio=ratio, min_per_second=floor, window=window, clock=self.clock
            )
            self.ratio, self.floor, self.window = ratio, floor, window
            self.deposits: list[float] = []
            self.withdrawals: list[float] = []

        def model_balance(self) -> float:
            length = self.window / slices
            now = math.floor(self.clock.monotonic() / length)
            deposits = sum(1 for t in self.deposits if now - math.floor(t / length) < slices)
            spent = sum(1 for t in self.withdrawals if now - math.floor(t / length) <= slices)
            return self.floor * self.window + self.ratio * deposits - spent

        @rule(seconds=STEPS)
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule(n=st.integers(1, 4))
        def requests(self, n: int) -> None:
            for _ in range(n):
                self.budget.deposit()
                self.deposits.append(self.clock.monotonic())

        @rule()
        def retry(self) -> None:
            expected = self.model_balance() >= 1.0
            assert self.budget.try_withdraw() is expected
            if expected:
                now = self.clock.monotonic()
                self.withdrawals.append(now)
                # The bound, over every interval that ends with this retry.
                for count, first in enumerate(reversed(self.withdrawals), start=1):
                    requests = sum(1 for d in self.deposits if first - self.window <= d <= now)
                    allowed = self.ratio * requests + self.floor * (now - first + self.window)
                    assert count <= allowed + 1e-9

        @invariant()
        def balance_agrees(self) -> None:
            assert self.budget.balance() == self.model_balance()

    return BudgetMachine


TestBudget = budget_machine().TestCase


def test_the_budget_model_test_catches_a_wrong_window() -> None:
    """Sibling: a model that assumes another slicing disagrees with the real budget."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            budget_machine(slices=3),
            settings=SIBLING,
        )


def test_the_bucket_model_test_catches_a_leaky_bucket() -> None:
    """Sibling: a bucket that refills twice as fast breaks the model and the bound."""

    class Leaky(BucketMachine):
        @initialize(rate=st.sampled_from([0.5, 1.0]), burst=st.integers(1, 3))
        def setup(self, rate: float, burst: int) -> None:
            super().setup(rate, burst)
            self.bucket = cw.TokenBucket(rate=2 * rate, burst=burst, clock=self.clock)

    # The machine's checks fail either as an assertion or as pytest.raises' own failure
    # ("DID NOT RAISE RateLimited": the leaky bucket granted a token the model refuses).
    with pytest.raises((AssertionError, pytest.fail.Exception)):
        run_state_machine_as_test(
            Leaky,
            settings=SIBLING,
        )
