"""The Prometheus adapter, read back from a real ``prometheus_client.CollectorRegistry``.

Counters come from ``.stats()`` at scrape time, events from listeners; each test drives a cached
function through one situation (hits, a failing backend, a failing layer, slow fetches, the
backend protections) and reads the resulting samples as Prometheus would scrape them.
"""

from __future__ import annotations

import importlib
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cacheward as cw
from cacheward._events import HIT_LISTENERS, EventKind, emit
from cacheward.testing import FakeClock

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from cacheward.contrib.prometheus import PrometheusMetrics  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs" / "integrations.md"


class BrokenLayer:
    """A shared layer whose every operation fails (Redis refusing connections)."""

    name = "broken"
    local = False

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, *_: object) -> None:
        self.calls += 1
        raise ConnectionError("connection refused")

    get = set = delete = clear = _fail


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Iterator[PrometheusMetrics]:
    adapter = PrometheusMetrics(registry=registry)
    yield adapter
    adapter.close()


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_hits_and_misses_are_read_from_stats_at_scrape_time(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    @metrics.track
    @cw.cached(ttl=60, namespace="configs")
    def load(customer: str) -> dict[str, str]:
        return {"customer": customer}

    for _ in range(5):
        load("c1")
    load("c2")
    fn = "configs:v1"
    assert value(registry, "cacheward_calls_total", function=fn, outcome="hit") == 4
    assert value(registry, "cacheward_calls_total", function=fn, outcome="miss") == 2
    assert value(registry, "cacheward_calls_total", function=fn, outcome="stale") == 0
    assert value(registry, "cacheward_fetches_total", function=fn) == 2
    assert value(registry, "cacheward_fetch_errors_total", function=fn) == 0
    assert value(registry, "cacheward_fetches_in_flight", function=fn) == 0
    load.invalidate("c1")
    assert value(registry, "cacheward_invalidations_total", function=fn) == 1
    # The hits were counted without any listener for HIT: the adapter never asks for them.
    assert HIT_LISTENERS == []
    assert value(registry, "cacheward_calls_total", function=fn, outcome="hit") == 4


def test_the_function_label_is_the_events_source_unless_named(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    @cw.cached(ttl=60)
    def plain(x: int) -> int:
        return x

    @cw.cached(ttl=60)
    def other(x: int) -> int:
        return x

    metrics.track(plain)
    metrics.track(other, name="other-one")
    events: list[cw.Event] = []
    with cw.listening(events.append):
        plain(1)
    source = events[0].source
    assert source.endswith("plain:v1")
    assert value(registry, "cacheward_calls_total", function=source, outcome="miss") == 1
    other(1)
    assert value(registry, "cacheward_calls_total", function="other-one", outcome="miss") == 1
    metrics.untrack(other)
    assert value(registry, "cacheward_calls_total", function="other-one", outcome="miss") is None


def test_a_failing_backend_counts_errors_and_backoff(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    clock = FakeClock()

    @metrics.track
    @cw.cached(ttl=60, clock=clock, namespace="flaky")
    def load(customer: str) -> str:
        raise TimeoutError("database timed out")

    with pytest.raises(TimeoutError):
        load("c1")
    with pytest.raises(cw.BackoffActive):
        load("c1")
    fn = "flaky:v1"
    assert value(registry, "cacheward_fetches_total", function=fn) == 1
    assert value(registry, "cacheward_fetch_errors_total", function=fn) == 1
    assert value(registry, "cacheward_calls_total", function=fn, outcome="miss") == 1
    assert value(registry, "cacheward_calls_total", function=fn, outcome="backoff") == 1


def test_stale_served_on_error_is_counted(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    clock = FakeClock()
    fail = False

    @metrics.track
    @cw.cached(ttl=10, stale_if_error=600, clock=clock, jitter=0, namespace="stale")
    def load(customer: str) -> str:
        if fail:
            raise TimeoutError("database timed out")
        return customer

    load("c1")
    clock.advance(11)
    fail = True
    assert load("c1") == "c1"
    assert value(registry, "cacheward_stale_on_error_total", function="stale:v1") == 1


def test_layer_failures_and_breaker_trips_carry_the_layer_label(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    broken = BrokenLayer()

    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), broken], namespace="layered")
    def load(customer: str) -> str:
        return customer

    for i in range(6):
        load(f"c{i}")
    fn = "layered:v1"
    errors = value(
        registry, "cacheward_events_total", function=fn, layer="broken", outcome="layer_error"
    )
    opened = value(
        registry, "cacheward_events_total", function=fn, layer="broken", outcome="breaker_opened"
    )
    skipped = value(
        registry, "cacheward_events_total", function=fn, layer="broken", outcome="layer_skipped"
    )
    assert errors == broken.calls  # every failed operation, and nothing else
    assert opened == 1
    assert skipped is not None
    assert skipped >= 1


def test_fetch_durations_land_in_the_histogram(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    clock = FakeClock()

    @cw.cached(ttl=60, clock=clock, namespace="slow")
    def load(seconds: float) -> float:
        clock.sleep(seconds)
        return seconds

    for seconds in (0.003, 0.2, 0.21, 3.0):  # four keys, four fetches
        load(seconds)
    fn = "slow:v1"
    bucket = "cacheward_fetch_duration_seconds_bucket"
    assert value(registry, bucket, function=fn, le="0.005") == 1
    assert value(registry, bucket, function=fn, le="0.25") == 3
    assert value(registry, bucket, function=fn, le="2.5") == 3
    assert value(registry, bucket, function=fn, le="+Inf") == 4
    assert value(registry, "cacheward_fetch_duration_seconds_count", function=fn) == 4
    total = value(registry, "cacheward_fetch_duration_seconds_sum", function=fn)
    assert total == pytest.approx(3.413)


def test_protection_events_are_counted_by_source(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    emit(EventKind.RATE_LIMITED, "db-bucket")
    emit(EventKind.RATE_LIMITED, "db-bucket")
    emit(EventKind.RETRY, "db-budget", error=TimeoutError())
    emit(EventKind.BUDGET_EXHAUSTED, "db-budget")
    emit(EventKind.MISS, "ignored")  # counted by .stats(), not by events
    events = "cacheward_events_total"
    assert value(registry, events, function="db-bucket", layer="", outcome="rate_limited") == 2
    assert value(registry, events, function="db-budget", layer="", outcome="retry") == 1
    assert value(registry, events, function="db-budget", layer="", outcome="budget_exhausted") == 1
    assert value(registry, events, function="ignored", layer="", outcome="miss") is None


def test_counts_add_up_under_threads(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    @metrics.track
    @cw.cached(ttl=60, namespace="threads")
    def load(key: int) -> int:
        return key

    def work() -> None:
        for i in range(200):
            load(i % 10)
            generate_latest(registry)  # scrapes race with calls

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    outcomes = ("hit", "stale", "miss", "coalesced", "backoff")
    calls = [
        value(registry, "cacheward_calls_total", function="threads:v1", outcome=o) for o in outcomes
    ]
    assert sum(c or 0 for c in calls) == 800
    assert value(registry, "cacheward_fetches_total", function="threads:v1") == 10


def test_close_unregisters_and_stops_listening(registry: CollectorRegistry) -> None:
    adapter = PrometheusMetrics(registry=registry)
    emit(EventKind.RATE_LIMITED, "bucket")
    assert (
        value(
            registry, "cacheward_events_total", function="bucket", layer="", outcome="rate_limited"
        )
        == 1
    )
    adapter.close()
    emit(EventKind.RATE_LIMITED, "bucket")
    assert adapter._tally.counts()[("bucket", "", "rate_limited")] == 1
    assert b"cacheward" not in generate_latest(registry)


def test_one_adapter_per_registry(registry: CollectorRegistry, metrics: PrometheusMetrics) -> None:
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusMetrics(registry=registry)


def test_two_functions_cannot_share_a_label(metrics: PrometheusMetrics) -> None:
    one = metrics.track(cw.cached(ttl=60, namespace="same")(lambda: 1))
    metrics.track(one)  # tracking the same function again is harmless
    with pytest.raises(cw.ConfigurationError, match="already tracked"):
        metrics.track(cw.cached(ttl=60, namespace="same")(lambda: 2))
    metrics.track(cw.cached(ttl=60, namespace="same")(lambda: 3), name="same-but-named")


def test_track_refuses_what_is_not_a_cached_function(metrics: PrometheusMetrics) -> None:
    with pytest.raises(cw.ConfigurationTypeError, match=r"cw\.cached"):
        metrics.track(len)
    with pytest.raises(ValueError, match="buckets"):
        PrometheusMetrics(registry=CollectorRegistry(), buckets=[0.0])


def test_guarded_functions_export_the_protections_counters(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    clock = FakeClock()
    bucket = cw.TokenBucket(rate=1, burst=1, clock=clock)

    @metrics.track
    @cw.guard(ttl=60, limiter=bucket, max_wait=0, clock=clock, namespace="guarded")
    def load(customer: str) -> str:
        return customer

    load("a")
    with pytest.raises(cw.RateLimited):
        load("b")
    fn = "guarded:v1"
    assert value(registry, "cacheward_calls_total", function=fn, outcome="miss") == 2
    assert value(registry, "cacheward_backend_attempts_total", function=fn) == 1
    assert value(registry, "cacheward_refusals_total", function=fn, outcome="rate_limited") == 1
    assert value(registry, "cacheward_retries_total", function=fn) == 0
    state = "cacheward_backend_breaker_state"
    assert value(registry, state, function=fn, state="closed") == 1
    assert value(registry, state, function=fn, state="open") == 0
    # A plain cached function has no protection counters.
    plain = cw.cached(ttl=60, namespace="plain")(lambda: 1)
    metrics.track(plain)
    plain()
    assert value(registry, "cacheward_calls_total", function="plain:v1", outcome="miss") == 1
    assert value(registry, "cacheward_backend_attempts_total", function="plain:v1") is None


def test_every_documented_metric_is_exposed(
    registry: CollectorRegistry, metrics: PrometheusMetrics
) -> None:
    @metrics.track
    @cw.cached(ttl=60, layers=[cw.MemoryLayer(), BrokenLayer()], namespace="doc")
    def load(x: int) -> int:
        return x

    metrics.track(cw.guard(ttl=60, namespace="doc-guarded")(lambda: 1))
    load(1)
    exposed = set(re.findall(r"^# TYPE (\S+)", generate_latest(registry).decode(), re.MULTILINE))
    documented = set(re.findall(r"^\| `(cacheward_[a-z_]+)`", DOCS.read_text(), re.MULTILINE))
    assert documented, "docs/integrations.md lists no Prometheus metric"
    exposed_names = {n + "_total" if n + "_total" in documented else n for n in exposed}
    assert documented == exposed_names


def test_a_missing_prometheus_client_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [
        m for m in sys.modules if m == "prometheus_client" or m.startswith("prometheus_client.")
    ]:
        monkeypatch.setitem(sys.modules, name, None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "cacheward.contrib.prometheus")
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'cacheward\[prometheus\]'"):
        importlib.import_module("cacheward.contrib.prometheus")


def test_the_observe_benchmark_reports_every_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from benchmarks import observe

    monkeypatch.setenv("CACHEWARD_BENCH_SMOKE", "1")
    figures: dict[str, Any] = observe.run(quick=True)
    assert figures["configs"] == ["bare", "listener", "hit-listener", "prometheus"]
    rows = figures["rows"]
    for colour in ("sync", "async"):
        assert rows[f"bare {colour}"]["ratio"] == 1.0
        for config in ("listener", "prometheus"):
            assert rows[f"{config} {colour}"]["ratio"] > 0
            assert figures["targets"][f"{config} {colour}"]["met"] in (True, False)
        assert rows[f"hit-listener {colour}"]["ratio"] > 0
        # Every timed call was a fresh hit, counted by .stats() whatever was attached.
        assert figures["hits_counted"][colour] >= sum(
            figures["raw"]["calls"][f"{c} {colour}"] for c in figures["configs"]
        )
    assert figures["scrapes"] == 2 * figures["settings"]["rounds"] * 2
    assert HIT_LISTENERS == []  # nothing left attached
