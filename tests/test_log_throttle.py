"""Logs an operator can read: recoveries are logged, and no stream floods the log."""

from __future__ import annotations

import logging

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import cacheward as cw
from cacheward._core.logthrottle import LogThrottle, Summary
from cacheward._events import Event, EventKind
from cacheward.testing import FakeClock


def listener(clock: FakeClock, **options: object) -> tuple[cw.LoggingListener, list[str]]:
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"cacheward.test.{id(lines)}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(Collect())
    return cw.LoggingListener(logger, clock=clock, **options), lines  # type: ignore[arg-type]


def test_a_retry_storm_writes_a_few_lines_and_one_summary() -> None:
    clock = FakeClock()
    log, lines = listener(clock, interval=10, burst=3)
    for _ in range(5000):
        log(Event(EventKind.BUDGET_EXHAUSTED, "db"))
        clock.advance(0.001)  # 5 s of storm
    assert len(lines) == 3
    clock.advance(6)
    log(Event(EventKind.BUDGET_EXHAUSTED, "db"))
    assert len(lines) == 5
    assert "budget_exhausted source=db: 4997 more in 10s, not logged one by one" in lines[3]
    assert lines[4].startswith("cacheward budget_exhausted source=db")
    assert log.summarized == 4997


def test_streams_are_separate_per_kind_source_and_layer() -> None:
    clock = FakeClock()
    log, lines = listener(clock, burst=1)
    for source in ("a", "b"):
        for layer in ("redis", None):
            for _ in range(10):
                log(Event(EventKind.LAYER_ERROR, source, layer=layer))
    assert len(lines) == 4


def test_flush_writes_pending_counts() -> None:
    clock = FakeClock()
    log, lines = listener(clock, burst=1)
    for _ in range(3):
        log(Event(EventKind.BREAKER_OPENED, "f", layer="redis"))
    clock.advance(2)
    log.flush()
    assert lines[-1].endswith(
        "2 more in 2s, not logged one by one (events and metrics count every one)"
    )
    log.flush()
    assert len(lines) == 2  # each count is written once


def test_recovery_is_logged_at_the_level_of_the_failure(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        name, local = "flaky-redis", False
        down = True

        def get(self, key: object) -> None:
            if self.down:
                raise ConnectionError("refused")

        def set(self, key: object, entry: object) -> None:
            if self.down:
                raise ConnectionError("refused")

        def delete(self, key: object) -> None:
            pass

    layer = Broken()
    clock = FakeClock()

    @cw.cached(ttl=10, layers=[layer], breaker_failures=1, breaker_reset=1, clock=clock)
    def fetch(key: str) -> str:
        return key

    with caplog.at_level(logging.DEBUG, logger="cacheward"):
        fetch("a")
        layer.down = False
        clock.advance(2)
        fetch("b")
    records = [r for r in caplog.records if r.name == "cacheward"]
    messages = [r.getMessage() for r in records]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert "breaker_opened" in messages[0]
    assert "breaker_closed" in messages[1]
    assert "layer=flaky-redis" in messages[1]
    assert "recovered" in messages[1]


def test_settings_are_checked() -> None:
    with pytest.raises(cw.ConfigurationError, match="burst"):
        cw.LoggingListener(burst=0)
    with pytest.raises(cw.ConfigurationError, match="interval"):
        cw.LoggingListener(interval=0)


# A schedule: (stream index, seconds to advance before the event).
SCHEDULES = st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0.0, 0.01, 0.5, 3.0])))
FLOOD = [(0, 0.0)] * 20


def check_bounds(throttle: LogThrottle, schedule: list[tuple[int, float]]) -> None:
    """Per stream, lines in any window starting at a logged line are <= burst, and every event
    is either logged or counted into exactly one summary."""
    now, logged, summarized = 0.0, 0, 0
    times: dict[int, list[float]] = {}
    for stream, step in schedule:
        now += step
        write, due = throttle.admit(stream, now)
        summarized += sum(s.count for s in due)
        if write:
            logged += 1
            times.setdefault(stream, []).append(now)
    summarized += sum(s.count for s in throttle.flush(now))
    assert logged + summarized == len(schedule)
    for stamps in times.values():
        for i, start in enumerate(stamps):
            within = [t for t in stamps[i:] if t < start + throttle.interval]
            assert len(within) <= throttle.burst * 2  # a window boundary may fall inside


@given(SCHEDULES)
@example(FLOOD)
def test_lines_are_bounded_and_every_event_accounted(schedule: list[tuple[int, float]]) -> None:
    check_bounds(LogThrottle(interval=1.0, burst=2), schedule)


def test_the_bound_check_catches_a_throttle_that_does_not_throttle() -> None:
    class NoThrottle(LogThrottle):
        def admit(self, key: object, now: float) -> tuple[bool, list[Summary]]:
            return True, []

    with pytest.raises(AssertionError):
        check_bounds(NoThrottle(interval=1.0, burst=2), FLOOD)
