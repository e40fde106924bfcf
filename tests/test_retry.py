"""Retry budgets (pure core and driver) and ``retry`` on tenacity, on a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import random

import pytest
import redis
from hypothesis import find, given, settings
from hypothesis import strategies as st

import cacheward as cw
from cacheward._core.budget import BudgetState
from cacheward.testing import FakeClock

# ----------------------------------------------------------------------------- pure budget


def test_floor_allows_min_per_second_times_window_with_no_requests() -> None:
    state = BudgetState(ratio=0.2, min_per_second=1.0, window=10.0)
    assert sum(state.try_withdraw(0.0) for _ in range(20)) == 10
    # Withdrawals expire one slice late (conservative): nothing back until 11 s later.
    assert not state.try_withdraw(10.5)
    assert state.try_withdraw(11.0)


def test_each_request_deposits_ratio_of_a_retry() -> None:
    state = BudgetState(ratio=0.25, min_per_second=0.0, window=10.0)
    for _ in range(8):
        state.deposit(0.0)
    assert state.balance(0.0) == pytest.approx(2.0)
    assert [state.try_withdraw(0.0) for _ in range(3)] == [True, True, False]
    # Deposits expire with the window (up to one slice early), withdrawals a slice later.
    assert state.balance(9.5) == pytest.approx(0.0)
    assert state.balance(10.0) == pytest.approx(-2.0)
    assert state.balance(11.0) == pytest.approx(0.0)


# A run: events as (gap since the previous event, is it a retry?), in order.
runs = st.lists(st.tuples(st.floats(0.0, 2.0), st.booleans()), min_size=1, max_size=150)
RATIO, FLOOR, WINDOW = 0.2, 0.5, 4.0


def replay(run: list[tuple[float, bool]], *, on: bool) -> tuple[list[float], list[float]]:
    """Feed ``run`` to a RetryBudget on a fake clock; return (request times, retry times)."""
    clock = FakeClock(monotonic_start=0.0)
    budget = cw.RetryBudget(ratio=RATIO, min_per_second=FLOOR, window=WINDOW, clock=clock)
    requests, retries = [], []
    now = 0.0
    for gap, is_retry in run:
        now += gap
        clock.advance(gap)
        if not is_retry:
            budget.deposit()
            requests.append(now)
        elif not on or budget.try_withdraw():
            retries.append(now)
    return requests, retries


def worst_excess(requests: list[float], retries: list[float]) -> float:
    """Max over intervals [r_i, r_j] of retries - (ratio * requests since r_i - W + floor(T+W))."""
    worst = float("-inf")
    for i, start in enumerate(retries):
        for j in range(i, len(retries)):
            span = retries[j] - start
            counted = sum(1 for t in requests if start - WINDOW - 1e-9 <= t <= retries[j])
            bound = RATIO * counted + FLOOR * (span + WINDOW)
            worst = max(worst, (j - i + 1) - bound)
    return worst


@given(run=runs)
def test_retries_stay_within_ratio_times_requests_plus_floor_t_plus_w(
    run: list[tuple[float, bool]],
) -> None:
    requests, retries = replay(run, on=True)
    assert worst_excess(requests, retries) <= 1e-6


def test_sibling_without_the_budget_the_bound_is_violated() -> None:
    found = find(
        runs,
        lambda run: worst_excess(*replay(run, on=False)) > 1e-6,
        settings=settings(database=None, derandomize=True),
    )
    assert any(is_retry for _, is_retry in found)


def test_retry_budget_validates_and_shows_its_state() -> None:
    with pytest.raises(cw.ConfigurationError, match="ratio"):
        cw.RetryBudget(ratio=1.5)
    with pytest.raises(cw.ConfigurationError, match="min_per_second"):
        cw.RetryBudget(min_per_second=-1)
    with pytest.raises(cw.ConfigurationTypeError, match="min_per_second"):
        cw.RetryBudget(min_per_second="10")  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="window"):
        cw.RetryBudget(window=0)
    budget = cw.RetryBudget(clock=FakeClock())
    assert budget.balance() == pytest.approx(100.0)  # Finagle defaults: 10/s over 10 s
    assert "ratio=0.2" in repr(budget)


# ----------------------------------------------------------------------------- retry


class Flaky:
    """A backend that raises the given errors in turn, then returns ``"ok"``."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    def __call__(self, key: str = "k") -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def test_retries_transient_errors_with_full_jitter_backoff() -> None:
    clock = FakeClock()
    backend = Flaky(ConnectionError("down"), TimeoutError("slow"))
    fetch = cw.retry(attempts=3, clock=clock, rng=random.Random(1), backoff=0.1)(backend)
    assert fetch("a") == "ok"
    assert backend.calls == 3
    assert len(clock.sleeps) == 2
    assert 0.0 <= clock.sleeps[0] <= 0.1
    assert 0.0 <= clock.sleeps[1] <= 0.2


def test_when_attempts_run_out_the_last_error_itself_is_raised() -> None:
    clock = FakeClock()
    last = ConnectionError("third")
    backend = Flaky(ConnectionError("first"), ConnectionError("second"), last)
    fetch = cw.retry(attempts=3, clock=clock)(backend)
    with pytest.raises(ConnectionError) as caught:
        fetch()
    assert caught.value is last
    assert backend.calls == 3


def test_errors_that_are_not_retryable_propagate_at_once() -> None:
    clock = FakeClock()
    for error in [ValueError("bad input"), cw.RateLimited("no token"), KeyError("k")]:
        backend = Flaky(error)
        with pytest.raises(type(error)):
            cw.retry(attempts=5, clock=clock)(backend)()
        assert backend.calls == 1


def test_default_retryable_errors() -> None:
    assert cw.is_retryable(ConnectionResetError())
    assert cw.is_retryable(TimeoutError())
    assert cw.is_retryable(OSError(errno.ECONNREFUSED, "refused"))
    assert cw.is_retryable(redis.exceptions.ConnectionError())
    assert cw.is_retryable(redis.exceptions.TimeoutError())
    assert not cw.is_retryable(OSError(errno.ENOENT, "no such file"))
    assert not cw.is_retryable(redis.exceptions.ResponseError())
    assert not cw.is_retryable(cw.FetchTimeout("a cacheward refusal, though a TimeoutError"))
    assert not cw.is_retryable(ValueError())


def test_retry_on_types_and_predicates() -> None:
    clock = FakeClock()
    backend = Flaky(KeyError("a"), KeyError("b"))
    assert cw.retry(attempts=3, retry_on=KeyError, clock=clock)(backend)() == "ok"
    backend = Flaky(ValueError("x"), ValueError("y"))
    fetch = cw.retry(attempts=3, retry_on=lambda e: "x" in str(e), clock=clock)(backend)
    with pytest.raises(ValueError, match="y"):
        fetch()
    assert backend.calls == 2


def test_spent_budget_fails_fast_chaining_the_last_error() -> None:
    clock = FakeClock()
    budget = cw.RetryBudget(ratio=0.0, min_per_second=0.1, window=10, clock=clock)  # 1 retry
    backend = Flaky(*[ConnectionError(str(i)) for i in range(10)])
    fetch = cw.retry(attempts=5, budget=budget, clock=clock)(backend)
    with pytest.raises(cw.RetryBudgetExhausted, match="budget") as caught:
        fetch()
    assert backend.calls == 2  # the first attempt and the one retry the budget held
    assert isinstance(caught.value.__cause__, ConnectionError)
    assert str(caught.value.__cause__) == "1"
    assert (budget.requests, budget.retries, budget.exhausted) == (1, 1, 1)


def test_deadline_stops_retrying_before_a_sleep_would_pass_it() -> None:
    clock = FakeClock()
    backend = Flaky(*[ConnectionError(str(i)) for i in range(10)])
    fetch = cw.retry(attempts=10, deadline=1.0, backoff=0.4, backoff_max=0.4, clock=clock,
                     rng=random.Random(0))(backend)  # fmt: skip
    with pytest.raises(ConnectionError):
        fetch()
    assert sum(clock.sleeps) <= 1.0
    assert backend.calls < 10


def test_each_attempt_takes_a_token_when_rate_limit_is_inside() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=2, clock=clock)
    backend = Flaky(ConnectionError("a"), ConnectionError("b"))
    fetch = cw.retry(attempts=3, clock=clock, backoff=0.0, backoff_max=0.0)(
        cw.rate_limit(bucket, max_wait=0.0)(backend)
    )
    with pytest.raises(cw.RateLimited):
        fetch()  # two attempts used the two tokens; the third found none
    assert backend.calls == 2


def test_async_retry_keeps_the_signature() -> None:
    clock = FakeClock()
    calls = 0

    async def backend(key: str, *, n: int = 1) -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise ConnectionError("flaky")
        return key * n

    fetch = cw.retry(attempts=3, clock=clock)(backend)
    assert inspect.iscoroutinefunction(fetch)
    assert inspect.signature(fetch) == inspect.signature(backend)
    assert asyncio.run(fetch("ab", n=2)) == "abab"
    assert calls == 3


def test_async_budget_exhausted() -> None:
    clock = FakeClock()
    budget = cw.RetryBudget(ratio=0.0, min_per_second=0.0, clock=clock)

    async def backend() -> None:
        raise TimeoutError("slow")

    fetch = cw.retry(attempts=3, budget=budget, clock=clock)(backend)
    with pytest.raises(cw.RetryBudgetExhausted) as caught:
        asyncio.run(fetch())
    assert isinstance(caught.value.__cause__, TimeoutError)


def test_retry_validates_at_decoration_time() -> None:
    with pytest.raises(cw.ConfigurationError, match="attempts"):
        cw.retry(attempts=0)
    with pytest.raises(cw.ConfigurationError, match="attempts"):
        cw.retry(attempts=1000)
    with pytest.raises(cw.ConfigurationTypeError, match="budget"):
        cw.retry(budget=0.2)  # type: ignore[arg-type]
    with pytest.raises(cw.ConfigurationError, match="backoff_max"):
        cw.retry(backoff=2, backoff_max=1)
    with pytest.raises(cw.ConfigurationError, match="deadline"):
        cw.retry(deadline=0)
    with pytest.raises(cw.ConfigurationTypeError, match="retry_on"):
        cw.retry(retry_on=(ValueError, 3))  # type: ignore[arg-type]


def test_retry_storm_attempts_per_request_stay_within_the_budget() -> None:
    """A backend failing half the calls for 10 s under 200 requests/s: the budget holds."""
    clock = FakeClock(monotonic_start=0.0)
    rng = random.Random(7)
    budget = cw.RetryBudget(ratio=0.2, min_per_second=10, window=10, clock=clock)
    attempts = 0

    def backend() -> str:
        nonlocal attempts
        attempts += 1
        if rng.random() < 0.5:
            raise ConnectionError("overloaded")
        return "ok"

    fetch = cw.retry(attempts=5, budget=budget, clock=clock, backoff=0.0, backoff_max=0.0,
                     rng=rng)(backend)  # fmt: skip
    requests = 2000
    for _ in range(requests):
        clock.advance(0.005)
        with contextlib.suppress(ConnectionError, cw.RetryBudgetExhausted):
            fetch()
    elapsed = requests * 0.005
    assert attempts <= requests * (1 + 0.2) + 10 * (elapsed + 10)
    # and in fact far below what stop_after_attempt(5) alone allows (about 2 per request)
    assert attempts / requests < 1.35


def test_retries_and_refusals_are_events() -> None:
    clock = FakeClock()
    budget = cw.RetryBudget(ratio=0.0, min_per_second=0.1, clock=clock, name="db")
    bucket = cw.TokenBucket(rate=1, burst=1, clock=clock, name="db-bucket")
    backend = Flaky(*[ConnectionError(str(i)) for i in range(3)])
    fetch = cw.retry(attempts=5, budget=budget, clock=clock)(backend)
    limited = cw.rate_limit(bucket, max_wait=0)(lambda: None)
    seen: list[cw.Event] = []

    def listener(event: cw.Event) -> None:
        seen.append(event)

    with cw.listening(listener):
        with pytest.raises(cw.RetryBudgetExhausted):
            fetch()
        limited()
        with pytest.raises(cw.RateLimited):
            limited()
    assert [(e.kind.value, e.source) for e in seen] == [
        ("retry", "db"),
        ("budget_exhausted", "db"),
        ("rate_limited", "db-bucket"),
    ]
    assert isinstance(seen[0].error, ConnectionError)


# A storm through the real decorator: requests at generated times, each attempt failing or not.
storms = st.lists(
    st.tuples(st.floats(0.0, 1.0), st.lists(st.booleans(), min_size=4, max_size=4)),
    min_size=1,
    max_size=80,
)


def run_storm(
    storm: list[tuple[float, list[bool]]], *, floor: float
) -> tuple[list[float], list[float]]:
    """Return (first-attempt times, retry times) of ``storm`` through ``cw.retry``."""
    clock = FakeClock(monotonic_start=0.0)
    budget = cw.RetryBudget(ratio=RATIO, min_per_second=floor, window=WINDOW, clock=clock)
    firsts: list[float] = []
    retries: list[float] = []
    outcomes: list[bool] = []

    def backend() -> None:
        first = len(outcomes) == 4  # each request gets a fresh list of four outcomes
        (firsts if first else retries).append(clock.monotonic())
        if outcomes.pop(0):
            raise ConnectionError("failed")

    fetch = cw.retry(attempts=4, budget=budget, clock=clock, backoff=0.0, backoff_max=0.0)(backend)
    for gap, fails in storm:
        clock.advance(gap)
        outcomes[:] = fails
        with contextlib.suppress(ConnectionError, cw.RetryBudgetExhausted):
            fetch()
    return firsts, retries


@given(storm=storms)
def test_retries_through_the_decorator_stay_within_the_budget_bound(
    storm: list[tuple[float, list[bool]]],
) -> None:
    firsts, retries = run_storm(storm, floor=FLOOR)
    assert len(firsts) == len(storm)
    assert worst_excess(firsts, retries) <= 1e-6


def test_sibling_with_an_unbounded_budget_the_decorator_bound_fails() -> None:
    found = find(
        storms,
        lambda storm: worst_excess(*run_storm(storm, floor=1e6)) > 1e-6,
        settings=settings(database=None, derandomize=True),
    )
    assert found


def test_a_retry_refused_by_the_limiter_chains_the_failure_that_led_to_it() -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=0.001, burst=1, clock=clock)
    first = ConnectionError("first attempt failed")
    backend = Flaky(first)
    fetch = cw.retry(attempts=3, clock=clock)(cw.rate_limit(bucket, max_wait=0)(backend))
    with pytest.raises(cw.RateLimited) as caught:
        fetch()
    assert caught.value.__cause__ is first
    assert backend.calls == 1
