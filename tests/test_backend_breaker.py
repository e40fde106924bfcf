"""The backend circuit breaker: opens on consecutive failures, probes, closes; sync and async."""

from __future__ import annotations

import asyncio
import inspect
import sqlite3
from collections.abc import Callable

import pytest

import cacheward as cw
from cacheward.testing import FakeClock


def make(
    clock: FakeClock, failure_on: type[BaseException] | None = None
) -> tuple[cw.CircuitBreaker, list[str], Callable[[str], str]]:
    breaker = cw.CircuitBreaker(failures=3, reset=5, clock=clock, failure_on=failure_on)
    outcomes: list[str] = []

    @cw.circuit_breaker(breaker)
    def call(outcome: str) -> str:
        outcomes.append(outcome)
        if outcome == "fail":
            raise ConnectionError("backend down")
        if outcome == "bad":
            raise ValueError("bad input")
        return outcome

    return breaker, outcomes, call


def test_opens_after_consecutive_failures_then_probes_and_closes() -> None:
    clock = FakeClock()
    breaker, outcomes, call = make(clock)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            call("fail")
    assert breaker.state is cw.BreakerState.OPEN
    with pytest.raises(cw.CircuitOpen, match="open") as caught:
        call("ok")
    assert caught.value.retry_after == pytest.approx(5.0)
    assert len(outcomes) == 3  # the backend was not called
    clock.advance(5)
    assert breaker.state.value == "half-open"
    assert call("ok") == "ok"
    assert breaker.state.value == "closed"
    assert (breaker.opened, breaker.rejected, breaker.failures, breaker.successes) == (1, 1, 3, 1)


def test_a_failed_probe_reopens_for_a_whole_period_and_only_one_probe_goes() -> None:
    clock = FakeClock()
    breaker, outcomes, call = make(clock)
    for _ in range(3):
        with pytest.raises(ConnectionError):
            call("fail")
    clock.advance(5)
    with pytest.raises(ConnectionError):
        call("fail")
    assert breaker.state is cw.BreakerState.OPEN
    assert breaker.opened == 2
    clock.advance(4.9)
    with pytest.raises(cw.CircuitOpen):
        call("ok")
    # A probe that never reports (its caller is cancelled) does not wedge the breaker.
    clock.advance(0.1)
    breaker.before_call()  # the probe goes out and never comes back
    with pytest.raises(cw.CircuitOpen):
        breaker.before_call()
    clock.advance(5)
    breaker.before_call()
    assert len(outcomes) == 4


def test_successes_reset_the_count_and_non_failures_count_as_answers() -> None:
    clock = FakeClock()
    breaker, _, call = make(clock)
    for _ in range(5):
        with pytest.raises(ConnectionError):
            call("fail")
        with pytest.raises(ConnectionError):
            call("fail")
        assert call("ok") == "ok"
    assert breaker.state is cw.BreakerState.CLOSED
    breaker2, _, call2 = make(clock, failure_on=ConnectionError)
    for _ in range(5):
        with pytest.raises(ValueError):
            call2("bad")
    assert breaker2.state is cw.BreakerState.CLOSED


def test_cacheward_refusals_are_not_backend_failures() -> None:
    clock = FakeClock()
    breaker = cw.CircuitBreaker(failures=1, clock=clock)

    @cw.circuit_breaker(breaker)
    def call() -> None:
        raise cw.RateLimited("no token")

    for _ in range(3):
        with pytest.raises(cw.RateLimited):
            call()
    assert breaker.state is cw.BreakerState.CLOSED


def test_async_functions_and_signatures() -> None:
    clock = FakeClock()
    breaker = cw.CircuitBreaker(failures=2, reset=1, clock=clock)
    calls = 0

    @cw.circuit_breaker(breaker)
    async def fetch(key: str, *, fail: bool = False) -> str:
        nonlocal calls
        calls += 1
        if fail:
            raise TimeoutError("slow")
        return key

    async def outcome(fail: bool) -> object:
        try:
            return await fetch("a", fail=fail)
        except (TimeoutError, cw.CircuitOpen) as exc:
            return type(exc)

    async def main() -> list[object]:
        out = [await outcome(fail) for fail in (True, True, False)]
        clock.advance(1)
        out.append(await fetch("b"))
        return out

    assert asyncio.run(main()) == [TimeoutError, TimeoutError, cw.CircuitOpen, "b"]
    assert calls == 3
    assert inspect.iscoroutinefunction(fetch)
    assert inspect.signature(fetch) == inspect.signature(fetch.__wrapped__)  # type: ignore[attr-defined]


def test_cancellation_gives_no_verdict() -> None:
    clock = FakeClock()
    breaker = cw.CircuitBreaker(failures=1, clock=clock)

    @cw.circuit_breaker(breaker)
    async def fetch() -> None:
        raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(fetch())
    assert breaker.state is cw.BreakerState.CLOSED


def test_circuit_breaker_validates() -> None:
    with pytest.raises(cw.ConfigurationError, match="failures"):
        cw.CircuitBreaker(failures=0)
    with pytest.raises(cw.ConfigurationError, match="reset"):
        cw.CircuitBreaker(reset=0)
    with pytest.raises(cw.ConfigurationError, match="not both"):
        cw.circuit_breaker(cw.CircuitBreaker(), failures=3)
    with pytest.raises(cw.ConfigurationError, match="CircuitBreaker"):
        cw.circuit_breaker("breaker")  # type: ignore[arg-type]
    own = cw.circuit_breaker(failures=1, clock=FakeClock())(lambda: 1)
    assert own() == 1
    assert "CircuitBreaker(name='backend', state='closed'" in repr(cw.CircuitBreaker())


def test_state_changes_are_events() -> None:
    clock = FakeClock()
    breaker, _, call = make(clock)
    seen: list[cw.Event] = []

    def listener(event: cw.Event) -> None:
        seen.append(event)

    with cw.listening(listener):
        for _ in range(3):
            with pytest.raises(ConnectionError):
                call("fail")
        clock.advance(5)
        call("ok")
    kinds = [(e.kind.value, e.source) for e in seen]
    assert kinds == [
        ("breaker_opened", "backend"),
        ("breaker_half_open", "backend"),
        ("breaker_closed", "backend"),
    ]


def test_default_rule_counts_sick_backends_not_bad_calls() -> None:
    assert cw.is_backend_failure(ConnectionResetError())
    assert cw.is_backend_failure(TimeoutError())
    assert cw.is_backend_failure(sqlite3.OperationalError("database is locked"))
    assert not cw.is_backend_failure(sqlite3.IntegrityError("one bad row"))
    assert not cw.is_backend_failure(KeyError("customer not found"))
    assert not cw.is_backend_failure(cw.RateLimited("a refusal"))
    clock = FakeClock()
    breaker = cw.CircuitBreaker(failures=2, clock=clock)

    @cw.circuit_breaker(breaker)
    def lookup(error: Exception) -> None:
        raise error

    for _ in range(5):
        with pytest.raises(KeyError):
            lookup(KeyError("missing"))  # answers, not failures: it stays closed
    assert breaker.state is cw.BreakerState.CLOSED
    for _ in range(2):
        with pytest.raises(sqlite3.OperationalError):
            lookup(sqlite3.OperationalError("database is locked"))
    assert breaker.state.value == "open"
