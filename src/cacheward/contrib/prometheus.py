"""Prometheus metrics for cacheward (``pip install 'cacheward[prometheus]'``).

::

    from prometheus_client import start_http_server
    from cacheward.contrib.prometheus import PrometheusMetrics

    metrics = PrometheusMetrics()          # registers with prometheus_client's default registry
    metrics.track(load_config)             # export load_config.stats() at every scrape
    start_http_server(9100)

The metric names, labels and units are listed in ``docs/integrations.md``. Counters that change
on every call (hits) are read from ``.stats()`` when Prometheus scrapes, never counted per call.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

from cacheward import _forksafe
from cacheward.contrib import (
    EVENTS_HELP,
    EVENTS_METRIC,
    FETCH_DURATION_BUCKETS,
    FETCH_DURATION_HELP,
    FETCH_DURATION_METRIC,
    STAT_METRICS,
    EventTally,
    Tracked,
    missing_dependency,
    stat_samples,
)

try:
    from prometheus_client.core import (
        REGISTRY,
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.registry import Collector
except ImportError as _exc:  # pragma: no cover - exercised by a test that hides the package
    raise missing_dependency("prometheus", "prometheus_client", _exc) from _exc

__all__ = ["PrometheusMetrics"]

F = TypeVar("F")


class _Histogram:
    """Fetch durations of one function, bucketed (cumulated at collection)."""

    __slots__ = ("counts", "total")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last slot is +Inf
        self.total = 0.0


class PrometheusMetrics(Collector):
    """A Prometheus collector for cacheward's counters and events.

    It registers itself with ``registry`` and starts listening to the slow-path events at
    once; call :meth:`track` for each cached function whose ``.stats()`` it should export, and
    :meth:`close` to unregister and stop listening.

    Args:
        functions: cached functions to track from the start (see :meth:`track`).
        registry: the registry to register with; defaults to ``prometheus_client``'s global
            ``REGISTRY``.
        buckets: upper bounds, in seconds, of the fetch-duration histogram's buckets.

    Raises:
        ValueError: ``registry`` already has cacheward's metrics (one collector per registry).
    """

    def __init__(
        self,
        *functions: object,
        registry: CollectorRegistry | None = None,
        buckets: Sequence[float] = FETCH_DURATION_BUCKETS,
    ) -> None:
        bounds = sorted(float(b) for b in buckets)
        if not bounds or bounds[0] <= 0:
            raise ValueError(f"buckets must be positive seconds, got {list(buckets)!r}")
        self._bounds = bounds
        self._tracked = Tracked()
        self._lock = _forksafe.lock()
        self._durations: dict[str, _Histogram] = {}
        self._tally = EventTally(on_fetch=self._observe_fetch)
        for fn in functions:
            self.track(fn)
        self._registry = REGISTRY if registry is None else registry
        self._registry.register(self)
        self._tally.start()

    def track(self, fn: F, *, name: str | None = None) -> F:
        """Export ``fn.stats()`` at every scrape, labelled ``function=name``.

        Args:
            fn: a function decorated with :func:`cacheward.cached` or :func:`cacheward.guard`.
            name: the ``function`` label; defaults to the source its events carry
                (``<namespace or module.qualname>:v<version>``).

        Returns:
            ``fn`` itself, so ``track`` can also be used as a decorator.
        """
        self._tracked.add(fn, name)
        return fn

    def untrack(self, fn: object) -> None:
        """Stop exporting ``fn``'s counters (a no-op if it was not tracked)."""
        self._tracked.remove(fn)

    def close(self) -> None:
        """Stop listening to events and unregister from the registry."""
        self._tally.stop()
        self._registry.unregister(self)

    def _observe_fetch(self, source: str, seconds: float) -> None:
        slot = bisect.bisect_left(self._bounds, seconds)
        with self._lock:
            histogram = self._durations.get(source)
            if histogram is None:
                histogram = self._durations[source] = _Histogram(len(self._bounds))
            histogram.counts[slot] += 1
            histogram.total += seconds

    def describe(self) -> Iterable[Metric]:
        """The metric families, without samples (for the registry's duplicate check)."""
        return list(self._families(with_samples=False))

    def collect(self) -> Iterable[Metric]:
        """Every metric family with its current samples (called at each scrape)."""
        return list(self._families(with_samples=True))

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        snapshot = self._tracked.snapshot() if with_samples else []
        for metric in STAT_METRICS:
            labels = metric.labels
            family: CounterMetricFamily | GaugeMetricFamily
            if metric.kind == "counter":
                family = CounterMetricFamily(metric.name, metric.help, labels=labels)
            else:
                family = GaugeMetricFamily(metric.name, metric.help, labels=labels)
            for sample_labels, value in stat_samples(metric, snapshot):
                family.add_metric([sample_labels[n] for n in labels], value)
            yield family

        events = CounterMetricFamily(
            EVENTS_METRIC, EVENTS_HELP, labels=["function", "layer", "outcome"]
        )
        if with_samples:
            for (function, layer, outcome), count in sorted(self._tally.counts().items()):
                events.add_metric([function, layer, outcome], count)
        yield events

        durations = HistogramMetricFamily(
            FETCH_DURATION_METRIC, FETCH_DURATION_HELP, labels=["function"]
        )
        if with_samples:
            with self._lock:
                copies = {
                    source: (list(h.counts), h.total) for source, h in self._durations.items()
                }
            for source, (counts, total) in sorted(copies.items()):
                cumulative = 0
                buckets: list[tuple[str, float]] = []
                for bound, count in zip([*self._bounds, float("inf")], counts, strict=True):
                    cumulative += count
                    buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
                durations.add_metric([source], buckets, total)
        yield durations
