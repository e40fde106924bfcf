"""The OpenTelemetry adapter, read back through the SDK's ``InMemoryMetricReader``."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import cacheward as cw
from cacheward._events import HIT_LISTENERS, EventKind, emit
from cacheward.contrib import STAT_METRICS
from cacheward.testing import FakeClock

pytest.importorskip("opentelemetry.sdk.metrics")
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from cacheward.contrib.otel import (
    FETCH_DURATION_INSTRUMENT,
    OTelMetrics,
    instrument_name,
)


class BrokenLayer:
    """A shared layer whose every operation fails."""

    name = "broken"
    local = False

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *_: object) -> None:
        self.calls += 1
        raise ConnectionError("connection refused")

    get = set = delete = clear = _fail


@pytest.fixture
def reader() -> InMemoryMetricReader:
    return InMemoryMetricReader()


@pytest.fixture
def metrics(reader: InMemoryMetricReader) -> Iterator[OTelMetrics]:
    provider = MeterProvider(metric_readers=[reader])
    adapter = OTelMetrics(meter_provider=provider)
    yield adapter
    adapter.close()
    provider.shutdown()


def collect(reader: InMemoryMetricReader) -> dict[str, Any]:
    """``{instrument name: metric}`` from one collection."""
    data = reader.get_metrics_data()
    assert data is not None
    return {
        m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    }


def point(metrics: dict[str, Any], name: str, **attributes: str) -> Any:
    """The data point of ``name`` with exactly ``attributes`` (``None`` if absent)."""
    if name not in metrics:
        return None
    for p in metrics[name].data.data_points:
        if dict(p.attributes) == attributes:
            return p
    return None


def test_counters_are_observed_from_stats(
    reader: InMemoryMetricReader, metrics: OTelMetrics
) -> None:
    @metrics.track
    @cw.cached(ttl=60, namespace="configs")
    def load(customer: str) -> str:
        return customer

    for _ in range(3):
        load("c1")
    load("c2")
    seen = collect(reader)
    fn = "configs:v1"
    assert point(seen, "cacheward.calls", function=fn, outcome="hit").value == 2
    assert point(seen, "cacheward.calls", function=fn, outcome="miss").value == 2
    assert point(seen, "cacheward.fetches", function=fn).value == 2
    assert point(seen, "cacheward.fetches_in_flight", function=fn).value == 0
    assert seen["cacheward.calls"].unit == "{call}"
    assert seen["cacheward.calls"].data.is_monotonic
    assert HIT_LISTENERS == []  # hits were read from .stats(), never listened to
    load("c1")
    again = collect(reader)
    assert point(again, "cacheward.calls", function=fn, outcome="hit").value == 3


def test_every_documented_instrument_exists(
    reader: InMemoryMetricReader, metrics: OTelMetrics
) -> None:
    broken = BrokenLayer()

    @metrics.track
    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), broken], namespace="doc")
    def load(x: int) -> int:
        return x

    guarded = metrics.track(cw.guard(ttl=60, namespace="doc-guarded")(lambda: 1))
    metrics.track(cw.AdaptiveLimit(name="doc-limit"))
    load(1)
    guarded()
    expected = {instrument_name(m.name) for m in STAT_METRICS}
    expected |= {"cacheward.events", FETCH_DURATION_INSTRUMENT}
    assert set(collect(reader)) == expected


def test_events_carry_function_layer_and_outcome(
    reader: InMemoryMetricReader, metrics: OTelMetrics
) -> None:
    broken = BrokenLayer()

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), broken], namespace="layered")
    def load(customer: str) -> str:
        return customer

    for i in range(6):
        load(f"c{i}")
    emit(EventKind.BUDGET_EXHAUSTED, "db-budget")
    seen = collect(reader)
    fn = "layered:v1"
    errors = point(seen, "cacheward.events", function=fn, layer="broken", outcome="layer_error")
    opened = point(seen, "cacheward.events", function=fn, layer="broken", outcome="breaker_opened")
    budget = point(
        seen, "cacheward.events", function="db-budget", layer="", outcome="budget_exhausted"
    )
    assert errors.value == broken.calls
    assert opened.value == 1
    assert budget.value == 1


def test_fetch_durations_are_a_histogram_in_seconds(
    reader: InMemoryMetricReader, metrics: OTelMetrics
) -> None:
    clock = FakeClock()

    @cw.cached(ttl=60, clock=clock, namespace="slow")
    def load(seconds: float) -> float:
        clock.sleep(seconds)
        return seconds

    load(0.5)
    load(1.5)
    seen = collect(reader)
    histogram = point(seen, FETCH_DURATION_INSTRUMENT, function="slow:v1")
    assert seen[FETCH_DURATION_INSTRUMENT].unit == "s"
    assert histogram.count == 2
    assert histogram.sum == pytest.approx(2.0)
    assert histogram.max == pytest.approx(1.5)


def test_close_stops_reporting(reader: InMemoryMetricReader, metrics: OTelMetrics) -> None:
    @metrics.track
    @cw.cached(ttl=60, namespace="closing")
    def load(x: int) -> int:
        return x

    load(1)
    emit(EventKind.RATE_LIMITED, "bucket")
    assert point(collect(reader), "cacheward.calls", function="closing:v1", outcome="miss")
    metrics.close()
    emit(EventKind.RATE_LIMITED, "bucket")
    assert metrics._tally.counts()[("bucket", "", "rate_limited")] == 1
    seen = collect(reader)
    assert point(seen, "cacheward.calls", function="closing:v1", outcome="miss") is None


def test_track_refuses_what_is_not_a_cached_function(metrics: OTelMetrics) -> None:
    with pytest.raises(cw.ConfigurationTypeError, match=r"cw\.cached"):
        metrics.track(print)
    with pytest.raises(cw.ConfigurationError, match="name"):
        metrics.track(cw.cached(ttl=1)(lambda: 1), name="")
    with pytest.raises(cw.ConfigurationTypeError, match="name"):
        metrics.track(cw.cached(ttl=1)(lambda: 2), name=3)  # type: ignore[arg-type]


def test_a_missing_opentelemetry_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [m for m in sys.modules if m.split(".")[0] == "opentelemetry"]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "cacheward.contrib.otel")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'cacheward\[otel\]'"):
        importlib.import_module("cacheward.contrib.otel")
