"""A stateful test of the pagination checkpoint: ``cw.collect_pages`` with a
``cw.MemoryCheckpoints`` store, against a trivially correct model.

The source has a fixed number of pages; rules make pages fail or heal, move the clock (past the
checkpoint's TTL too) and run a rebuild. The model remembers one number, "pages checkpointed",
and when it expires: a rebuild restores them if alive, fetches the rest in order, and on a
failure checkpoints what it has if it made progress. Every rebuild's result (the whole payload,
or ``PaginationError`` with the right ``pages_done`` and ``cursor``) and its exact page calls
must match.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

import cacheward as cw
from cacheward.testing import FakeClock

PAGES, PAGE_SIZE, TTL = 6, 3, 300.0
PAGE_NUMBERS = st.integers(0, PAGES - 1)


def machine(*, resume: bool = True) -> type[RuleBasedStateMachine]:
    """The machine; ``resume=False`` switches checkpoints off (the sibling) while the model
    still expects them."""

    class CheckpointMachine(RuleBasedStateMachine):
        @initialize()
        def setup(self) -> None:
            self.clock = FakeClock()
            self.store = cw.MemoryCheckpoints(ttl=TTL)
            self.failing: set[int] = set()
            self.page_calls: list[int] = []
            # The model: pages checkpointed and when that checkpoint expires.
            self.saved_pages = 0
            self.expires_at = float("-inf")

        def fetch_page(self, cursor: str | None, limit: int) -> cw.Page[int]:
            index = 0 if cursor is None else int(cursor[1:])
            self.page_calls.append(index)
            if index in self.failing:
                raise ConnectionError(f"page {index} failed")
            items = [index * 10 + i for i in range(limit)]
            return cw.Page(items, next_cursor=f"c{index + 1}" if index + 1 < PAGES else None)

        @rule(page=PAGE_NUMBERS)
        def break_page(self, page: int) -> None:
            self.failing.add(page)

        @rule(page=PAGE_NUMBERS)
        def heal_page(self, page: int) -> None:
            self.failing.discard(page)

        @rule(seconds=st.sampled_from([1.0, 100.0, 299.0, 301.0]))
        def advance(self, seconds: float) -> None:
            self.clock.advance(seconds)

        @rule()
        def rebuild(self) -> None:
            now = self.clock.time()
            restored = self.saved_pages if now < self.expires_at else 0
            failed_at = next((i for i in range(restored, PAGES) if i in self.failing), None)
            self.page_calls.clear()
            try:
                got: Any = cw.collect_pages(
                    self.fetch_page,
                    page_size=PAGE_SIZE,
                    checkpoints=self.store,
                    checkpoint_key="payload",
                    resume=resume,
                    clock=self.clock,
                )
            except cw.PaginationError as exc:
                got = exc
            last = PAGES - 1 if failed_at is None else failed_at
            assert self.page_calls == list(range(restored, last + 1))
            if failed_at is None:
                assert got == [p * 10 + i for p in range(PAGES) for i in range(PAGE_SIZE)]
                self.saved_pages, self.expires_at = 0, float("-inf")
                return
            assert isinstance(got, cw.PaginationError)
            assert got.pages_done == failed_at
            assert got.cursor == (None if failed_at == 0 else f"c{failed_at}")
            if failed_at > restored:  # progress: the pages so far are checkpointed
                self.saved_pages, self.expires_at = failed_at, now + TTL

    return CheckpointMachine


TestCheckpoint = machine().TestCase


def test_the_checkpoint_model_test_catches_rebuilds_that_start_over() -> None:
    """Sibling: without checkpoints every rebuild re-reads from page 0; the machine fails."""
    with pytest.raises(AssertionError):
        run_state_machine_as_test(
            machine(resume=False),
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
