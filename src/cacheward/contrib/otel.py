"""OpenTelemetry metrics for cacheward (``pip install 'cacheward[otel]'``).

::

    from cacheward.contrib.otel import OTelMetrics

    metrics = OTelMetrics()               # uses the global MeterProvider
    metrics.track(load_config)            # observe load_config.stats() at every collection

Counters that change on every call (hits) are observable counters whose callbacks read
``.stats()`` when the SDK's reader collects; they are never counted per call. The instrument
names, units and attributes are listed in ``docs/integrations.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import cacheward
from cacheward import _forksafe
from cacheward.contrib import (
    EVENTS_HELP,
    EVENTS_METRIC,
    FETCH_DURATION_HELP,
    STAT_METRICS,
    EventTally,
    StatMetric,
    Tracked,
    missing_dependency,
    stat_samples,
)

try:
    from opentelemetry import metrics as otel_metrics
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
except ImportError as _exc:  # pragma: no cover - exercised by a test that hides the package
    raise missing_dependency("otel", "opentelemetry", _exc) from _exc

__all__ = ["FETCH_DURATION_INSTRUMENT", "OTelMetrics", "instrument_name"]

F = TypeVar("F")

#: The histogram of successful fetch durations, in seconds.
FETCH_DURATION_INSTRUMENT = "cacheward.fetch.duration"


def instrument_name(prometheus_name: str) -> str:
    """The OpenTelemetry instrument name for a Prometheus metric name.

    ``cacheward_calls`` becomes ``cacheward.calls`` (OpenTelemetry separates namespaces with
    dots and adds no ``_total`` suffix).
    """
    return "cacheward." + prometheus_name.removeprefix("cacheward_")


class OTelMetrics:
    """cacheward's counters and events as OpenTelemetry instruments.

    The instruments are created on a meter named ``cacheward`` at once, and the slow-path
    events are listened to from the start; call :meth:`track` for each cached function whose
    ``.stats()`` should be observed, and :meth:`close` to stop.

    Args:
        functions: cached functions to track from the start (see :meth:`track`).
        meter_provider: where to create the meter; defaults to the global provider
            (``opentelemetry.metrics.get_meter_provider()``).
    """

    def __init__(self, *functions: object, meter_provider: MeterProvider | None = None) -> None:
        provider = otel_metrics.get_meter_provider() if meter_provider is None else meter_provider
        meter = provider.get_meter("cacheward", cacheward.__version__)
        self._tracked = Tracked()
        self._lock = _forksafe.lock()
        self._closed = False
        for metric in STAT_METRICS:
            callback = self._stat_callback(metric)
            if metric.kind == "counter":
                meter.create_observable_counter(
                    instrument_name(metric.name),
                    callbacks=[callback],
                    unit=metric.unit,
                    description=metric.help,
                )
            else:
                meter.create_observable_gauge(
                    instrument_name(metric.name),
                    callbacks=[callback],
                    unit=metric.unit,
                    description=metric.help,
                )
        meter.create_observable_counter(
            instrument_name(EVENTS_METRIC),
            callbacks=[self._events_callback],
            unit="{event}",
            description=EVENTS_HELP,
        )
        self._durations = meter.create_histogram(
            FETCH_DURATION_INSTRUMENT, unit="s", description=FETCH_DURATION_HELP
        )
        self._tally = EventTally(on_fetch=self._observe_fetch)
        for fn in functions:
            self.track(fn)
        self._tally.start()

    def track(self, fn: F, *, name: str | None = None) -> F:
        """Observe ``fn.stats()`` at every collection, with the attribute ``function=name``.

        Args:
            fn: a function decorated with :func:`cacheward.cached` or :func:`cacheward.guard`.
            name: the ``function`` attribute; defaults to the source its events carry
                (``<namespace or module.qualname>:v<version>``).

        Returns:
            ``fn`` itself, so ``track`` can also be used as a decorator.
        """
        self._tracked.add(fn, name)
        return fn

    def untrack(self, fn: object) -> None:
        """Stop observing ``fn``'s counters (a no-op if it was not tracked)."""
        self._tracked.remove(fn)

    def close(self) -> None:
        """Stop listening to events; the observable instruments report nothing from now on.

        (OpenTelemetry's API cannot remove an instrument from a meter.)
        """
        self._tally.stop()
        with self._lock:
            self._closed = True

    def _observe_fetch(self, source: str, seconds: float) -> None:
        self._durations.record(seconds, {"function": source})

    def _stat_callback(
        self, metric: StatMetric
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            if self._closed:
                return []
            snapshot = self._tracked.snapshot()
            return [
                Observation(value, dict(labels)) for labels, value in stat_samples(metric, snapshot)
            ]

        return observe

    def _events_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        if self._closed:
            return []
        return [
            Observation(count, {"function": function, "layer": layer, "outcome": outcome})
            for (function, layer, outcome), count in sorted(self._tally.counts().items())
        ]
