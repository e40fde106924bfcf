"""Events: every decision reaches the listeners that asked for it; listeners never break calls."""

from __future__ import annotations

import logging
from typing import Any

import pytest

import cacheward as cw
from cacheward.testing import FakeClock


class Broken:
    local = False
    name = "broken-redis"

    def get(self, key: Any) -> Any:
        raise ConnectionError("refused")

    def set(self, key: Any, entry: Any) -> None:
        raise ConnectionError("refused")

    def delete(self, key: Any) -> None:
        raise ConnectionError("refused")

    def clear(self) -> None:
        pass


def kinds(events: list[cw.Event]) -> list[str]:
    return [e.kind.value for e in events]


def test_miss_fetch_and_hit_events() -> None:
    events: list[cw.Event] = []
    with cw.listening(events.append, kinds=list(cw.EventKind)):

        @cw.cached(ttl=10, namespace="cfg")
        def fetch(key: str) -> str:
            return key

        fetch("a")
        fetch("a")
    fetch("a")  # after the block: not delivered
    assert kinds(events) == ["miss", "fetch", "hit"]
    assert all(e.source == "cfg:v1" for e in events)
    assert events[1].duration is not None


def test_hits_are_not_delivered_unless_asked_for() -> None:
    events: list[cw.Event] = []

    @cw.cached(ttl=10)
    def fetch(key: str) -> str:
        return key

    with cw.listening(events.append):
        fetch("a")
        fetch("a")
    assert "hit" not in kinds(events)


def test_failures_backoff_layer_errors_and_breaker_trips() -> None:
    events: list[cw.Event] = []
    clock = FakeClock()

    @cw.cached(ttl=10, layers=[cw.MemoryLayer(), Broken()], clock=clock, breaker_failures=2)
    def fetch(key: str) -> str:
        raise TimeoutError("db slow")

    with cw.listening(events.append):
        with pytest.raises(TimeoutError):
            fetch("a")
        with pytest.raises(cw.BackoffActive):
            fetch("a")
    seen = kinds(events)
    assert "fetch_error" in seen
    assert "backoff_rejected" in seen
    assert seen.count("layer_error") == 2
    assert "breaker_opened" in seen
    opened = next(e for e in events if e.kind is cw.EventKind.BREAKER_OPENED)
    assert opened.layer == "broken-redis"
    assert isinstance(next(e for e in events if e.kind.value == "fetch_error").error, TimeoutError)


def test_a_raising_listener_never_breaks_a_call() -> None:
    def bad(event: cw.Event) -> None:
        raise RuntimeError("listener bug")

    before = cw.listener_errors()

    @cw.cached(ttl=10)
    def fetch(key: str) -> str:
        return key.upper()

    with cw.listening(bad, kinds=list(cw.EventKind)):
        assert fetch("a") == "A"
        assert fetch("a") == "A"
    assert cw.listener_errors() - before == 3  # miss, fetch, hit


def test_logging_is_quiet_by_default_and_warns_on_breaker_trips(
    caplog: pytest.LogCaptureFixture,
) -> None:
    @cw.cached(ttl=10, layers=[cw.MemoryLayer(), Broken()], breaker_failures=1)
    def fetch(key: str) -> str:
        return key

    with caplog.at_level(logging.DEBUG, logger="cacheward"):
        fetch("a")
    records = [r for r in caplog.records if r.name == "cacheward"]
    assert [r.levelno for r in records] == [logging.WARNING]
    assert "breaker_opened" in records[0].getMessage()
    assert "broken-redis" in records[0].getMessage()


def test_unlisten_and_bad_kinds() -> None:
    events: list[cw.Event] = []
    cw.listen(events.append)
    cw.unlisten(events.append)

    @cw.cached(ttl=10)
    def fetch(key: str) -> str:
        return key

    fetch("a")
    assert events == []
    with pytest.raises(ValueError, match="not_a_kind"):
        cw.listen(events.append, kinds=["not_a_kind"])
