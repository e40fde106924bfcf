"""``cacheward._core.fallback``: where a shared bucket's take goes, in pure time."""

from __future__ import annotations

from cacheward._core.fallback import FallbackState


def test_up_until_a_failure_then_one_probe_per_interval() -> None:
    state = FallbackState(probe_interval=1.0, debt_cap=5.0)
    assert state.up
    assert state.route(0.0)
    state.failed(0.0)
    assert not state.up
    assert not state.route(0.5)  # local until the probe is due
    assert state.route(1.0)  # the probe
    assert not state.route(1.1)  # only one probe per interval, while it is out
    state.succeeded(0.0)
    assert state.up
    assert state.seen
    assert state.failures == 1


def test_a_probe_that_never_reports_back_does_not_strand_the_state() -> None:
    # A cancelled or crashed probe calls neither failed() nor succeeded(): the next probe is
    # still due one interval after it started.
    state = FallbackState(probe_interval=2.0, debt_cap=5.0)
    state.failed(0.0)
    assert state.route(2.0)  # a probe starts, and is never heard of again
    assert not state.route(3.9)
    assert state.route(4.0)  # the next one


def test_local_takes_are_owed_up_to_the_cap_and_paid_on_success() -> None:
    state = FallbackState(probe_interval=1.0, debt_cap=2.5)
    state.failed(0.0)
    for _ in range(4):
        state.took_locally()
    assert state.debt == 2.5  # capped: takes while Redis was really down are not owed
    state.succeeded(2.5)
    assert state.debt == 0.0
    state.took_locally()
    state.succeeded(0.0)  # a call that carried no debt pays none
    assert state.debt == 1.0
    assert "debt=1.0" in repr(state)
