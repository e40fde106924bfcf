"""Optional integrations: metrics adapters for Prometheus and OpenTelemetry.

Each adapter lives in its own module and imports its dependency only when that module is
imported, so ``import cacheward`` never needs them:

* :mod:`cacheward.contrib.prometheus` (``pip install 'cacheward[prometheus]'``);
* :mod:`cacheward.contrib.otel` (``pip install 'cacheward[otel]'``).

Both export the same metrics, built from two sources:

* **counters read at collection time** from each tracked function's ``.stats()`` (hits, misses,
  fetches, ...): a fresh hit only bumps an integer, so metrics cost nothing per hit;
* **events** (:func:`cacheward.listen`) for what the counters do not break down: which layer
  failed, breaker transitions, rate limiting, retries and retry budgets, leases, rejected bytes,
  and the duration of each backend fetch. These are rare, slow-path events; ``hit`` is never
  listened to.

This module holds the pieces both adapters share; it imports neither dependency.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Protocol

from cacheward import _forksafe
from cacheward._adaptive import REJECT_REASONS, AdaptiveLimit, AdaptiveStats
from cacheward._errors import ConfigurationError, ConfigurationTypeError
from cacheward._events import Event, EventKind, listen, unlisten

__all__: list[str] = []


class _HasStats(Protocol):
    def stats(self) -> object: ...


@dataclasses.dataclass(frozen=True)
class StatMetric:
    """One metric read from ``.stats()`` at collection time.

    ``fields`` maps a value of the label ``label`` to a field of :class:`~cacheward.CacheStats`
    (or of :class:`~cacheward.GuardStats` when ``guard`` is set); a single entry keyed ``""``
    means the metric has no such label. A field written ``name==value`` is 1 when the field
    equals ``value`` and 0 otherwise (a state set).
    """

    name: str
    kind: str  # "counter" or "gauge"
    unit: str  # OpenTelemetry unit
    help: str
    fields: dict[str, str]
    guard: bool = False
    label: str = "outcome"
    #: Read from a tracked :class:`~cacheward.AdaptiveLimit`'s stats (not a function's).
    adaptive: bool = False
    #: One sample per priority partition (``priority`` label), read from its PriorityStats.
    per_priority: bool = False

    @property
    def labels(self) -> list[str]:
        """The metric's label names, ``function`` first."""
        names = ["function", "priority"] if self.per_priority else ["function"]
        return names if "" in self.fields else [*names, self.label]


#: The metrics read from ``.stats()``; the names are the Prometheus names without ``_total``
#: (OpenTelemetry uses ``cacheward.<name>``).
STAT_METRICS: tuple[StatMetric, ...] = (
    StatMetric(
        "cacheward_calls",
        "counter",
        "{call}",
        "Calls to a cached function, by how each was decided.",
        {
            "hit": "hits",
            "stale": "stale_hits",
            "miss": "misses",
            "coalesced": "coalesced_waits",
            "backoff": "backoff_rejections",
        },
    ),
    StatMetric(
        "cacheward_fetches",
        "counter",
        "{fetch}",
        "Backend calls made (leaders and background refreshes).",
        {"": "fetches"},
    ),
    StatMetric(
        "cacheward_fetch_errors",
        "counter",
        "{fetch}",
        "Backend calls that raised.",
        {"": "fetch_errors"},
    ),
    StatMetric(
        "cacheward_stale_on_error",
        "counter",
        "{call}",
        "Calls served a stale value because the fetch failed, timed out or was refused.",
        {"": "stale_on_error"},
    ),
    StatMetric(
        "cacheward_wait_timeouts",
        "counter",
        "{call}",
        "Calls whose wait for a fetch reached the function's timeout.",
        {"": "wait_timeouts"},
    ),
    StatMetric(
        "cacheward_refreshes",
        "counter",
        "{refresh}",
        "Background refreshes, started or skipped because every refresh slot was busy.",
        {"started": "refreshes", "skipped": "refreshes_skipped"},
    ),
    StatMetric(
        "cacheward_lease_waits",
        "counter",
        "{fetch}",
        "Fetches that waited for another process holding the key's lease.",
        {"": "lease_waits"},
    ),
    StatMetric(
        "cacheward_invalidations",
        "counter",
        "{call}",
        "Calls to invalidate().",
        {"": "invalidations"},
    ),
    StatMetric(
        "cacheward_fetches_in_flight",
        "gauge",
        "{fetch}",
        "Backend fetches running at the moment of collection.",
        {"": "in_flight"},
    ),
    # Functions decorated with cw.guard: the backend protections' counters.
    StatMetric(
        "cacheward_backend_attempts",
        "counter",
        "{attempt}",
        "Backend attempts of a guarded function (each took a token): first attempts and retries.",
        {"": "attempts"},
        guard=True,
    ),
    StatMetric(
        "cacheward_retries",
        "counter",
        "{attempt}",
        "Retries of a guarded function that the retry budget allowed.",
        {"": "retries"},
        guard=True,
    ),
    StatMetric(
        "cacheward_refusals",
        "counter",
        "{attempt}",
        "Backend attempts or retries of a guarded function refused by a protection.",
        {
            "rate_limited": "rate_limited",
            "budget_exhausted": "budget_exhausted",
            "circuit_open": "circuit_open",
        },
        guard=True,
    ),
    StatMetric(
        "cacheward_gave_up",
        "counter",
        "{fetch}",
        "Fetches of a guarded function that ran out of attempts or deadline.",
        {"": "gave_up"},
        guard=True,
    ),
    StatMetric(
        "cacheward_token_waits",
        "counter",
        "{attempt}",
        "Backend attempts of a guarded function that queued for a token.",
        {"": "token_waits"},
        guard=True,
    ),
    StatMetric(
        "cacheward_backend_breaker_state",
        "gauge",
        "1",
        "The guarded function's backend circuit breaker: 1 for its current state, 0 otherwise.",
        {
            "closed": "breaker_state==closed",
            "half-open": "breaker_state==half-open",
            "open": "breaker_state==open",
        },
        guard=True,
        label="state",
    ),
    # Tracked cw.AdaptiveLimit objects (``function`` is the limit's name).
    StatMetric(
        "cacheward_adaptive_limit",
        "gauge",
        "{attempt}",
        "The concurrency an adaptive limit allows now.",
        {"": "limit"},
        adaptive=True,
    ),
    StatMetric(
        "cacheward_adaptive_throttle_probability",
        "gauge",
        "1",
        "The chance an adaptive limit's client-side throttle rejects a new attempt now.",
        {"": "throttle_probability"},
        adaptive=True,
    ),
    StatMetric(
        "cacheward_adaptive_in_flight",
        "gauge",
        "{attempt}",
        "Backend attempts holding a slot of an adaptive limit, by priority.",
        {"": "inflight"},
        adaptive=True,
        per_priority=True,
    ),
    StatMetric(
        "cacheward_adaptive_queued",
        "gauge",
        "{attempt}",
        "Callers waiting for a slot of an adaptive limit, by priority.",
        {"": "queued"},
        adaptive=True,
        per_priority=True,
    ),
    StatMetric(
        "cacheward_adaptive_admitted",
        "counter",
        "{attempt}",
        "Backend attempts an adaptive limit admitted, by priority.",
        {"": "admitted"},
        adaptive=True,
        per_priority=True,
    ),
    StatMetric(
        "cacheward_adaptive_rejected",
        "counter",
        "{attempt}",
        "Attempts an adaptive limit refused, by priority and reason.",
        {reason: f"rejected.{reason}" for reason in REJECT_REASONS},
        adaptive=True,
        per_priority=True,
        label="reason",
    ),
)

#: The event kinds the adapters listen to. Everything else is either counted by ``.stats()``
#: or (``hit``) deliberately never listened to.
EVENT_KINDS: tuple[EventKind, ...] = (
    EventKind.LAYER_ERROR,
    EventKind.LAYER_SKIPPED,
    EventKind.SERIALIZER_REJECTED,
    EventKind.LEASE_TAKEN,
    EventKind.LEASE_LOST,
    EventKind.BREAKER_OPENED,
    EventKind.BREAKER_HALF_OPEN,
    EventKind.BREAKER_CLOSED,
    EventKind.BUCKET_FALLBACK,
    EventKind.BUCKET_SHARED,
    EventKind.INVALIDATIONS_REPLAYED,
    EventKind.BACKPLANE_LOST,
    EventKind.BACKPLANE_RECONNECTED,
    EventKind.RATE_LIMITED,
    EventKind.RETRY,
    EventKind.BUDGET_EXHAUSTED,
)

EVENTS_METRIC = "cacheward_events"
EVENTS_HELP = (
    "Slow-path decisions, by kind (outcome) and layer: layer failures, breaker transitions, "
    "rate limiting, retries, retry budgets, leases, rejected bytes."
)
FETCH_DURATION_METRIC = "cacheward_fetch_duration_seconds"
FETCH_DURATION_HELP = "Duration of successful backend fetches, in seconds."
#: Histogram bucket bounds (seconds) for fetch durations: a cache-hit-sized call up to the
#: default ``timeout`` and past it.
FETCH_DURATION_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


def function_label(fn: object) -> str:
    """The ``function`` label of a cached or guarded function: the source its events carry.

    That is ``<namespace or module.qualname>:v<version>``, so counters read from ``.stats()``
    and events about the same function share one label value.
    """
    if isinstance(fn, AdaptiveLimit):
        return fn.name
    namespace = getattr(fn, "namespace", None)
    if isinstance(namespace, str) and namespace:
        return namespace
    # cw.cached's wrapper keeps its driver (which knows the namespace) behind the bound
    # ``stats`` method; cw.guard's ``stats`` closes over that bound method.
    stats = getattr(fn, "stats", None)
    candidates = [stats, *(c.cell_contents for c in getattr(stats, "__closure__", None) or ())]
    for candidate in candidates:
        found = getattr(getattr(candidate, "__self__", None), "namespace", None)
        if isinstance(found, str) and found:
            return found
    module = getattr(fn, "__module__", "?")
    return f"{module}.{getattr(fn, '__qualname__', repr(fn))}"


class Tracked:
    """The cached functions an adapter reads ``.stats()`` from (thread-safe)."""

    def __init__(self) -> None:
        self._lock = _forksafe.lock()
        self._functions: dict[str, _HasStats] = {}

    def add(self, fn: object, name: str | None) -> str:
        stats = getattr(fn, "stats", None)
        if not callable(stats):
            raise ConfigurationTypeError(
                f"track() takes a function decorated with cw.cached or cw.guard, or a "
                f"cw.AdaptiveLimit (it needs .stats()); "
                f"got {type(fn).__name__} {fn!r}"
            )
        given: object = name
        if given is not None and not isinstance(given, str):
            raise ConfigurationTypeError(f"name must be a str, got {type(given).__name__}")
        if given == "":
            raise ConfigurationError("name must be a non-empty str (the 'function' label)")
        label = name if name is not None else function_label(fn)
        with self._lock:
            known = self._functions.get(label)
            if known is not None and known is not fn:
                raise ConfigurationError(
                    f"another function is already tracked as function={label!r}: give one of "
                    "them its own name= (or namespace=), or their counters would be mixed"
                )
            self._functions[label] = fn  # type: ignore[assignment]
        return label

    def remove(self, fn: object) -> None:
        with self._lock:
            for label, tracked in list(self._functions.items()):
                if tracked is fn:
                    del self._functions[label]

    def snapshot(self) -> list[tuple[str, object]]:
        with self._lock:
            functions = list(self._functions.items())
        return [(label, fn.stats()) for label, fn in functions]


def stat_samples(
    metric: StatMetric, snapshot: list[tuple[str, object]]
) -> Iterator[tuple[dict[str, str], int]]:
    """``(labels, value)`` for ``metric`` over every tracked function's stats.

    A guarded function's stats (:class:`~cacheward.GuardStats`) hold its caching counters in
    ``.cache``; metrics marked ``guard`` are read from guarded functions only.
    """
    for label, stats in snapshot:
        if isinstance(stats, AdaptiveStats) != metric.adaptive:
            continue
        if metric.adaptive:
            yield from _adaptive_samples(metric, label, stats)  # type: ignore[arg-type]
            continue
        source = stats if metric.guard else getattr(stats, "cache", stats)
        if metric.guard and not hasattr(stats, "cache"):
            continue
        for value, field in metric.fields.items():
            labels = {"function": label, metric.label: value} if value else {"function": label}
            name, _, wanted = field.partition("==")
            current = getattr(source, name)
            yield labels, int(current == wanted) if wanted else current


def _adaptive_samples(
    metric: StatMetric, label: str, stats: AdaptiveStats
) -> Iterator[tuple[dict[str, str], int]]:
    sources: list[tuple[dict[str, str], object]] = (
        [({"function": label, "priority": p}, part) for p, part in stats.priorities.items()]
        if metric.per_priority
        else [({"function": label}, stats)]
    )
    for base, source in sources:
        for value, field in metric.fields.items():
            name, _, key = field.partition(".")
            current = getattr(source, name)
            labels = {**base, metric.label: value} if value else base
            yield labels, current[key] if key else current


class EventTally:
    """A listener that counts events by ``(function, layer, outcome)`` and passes each fetch
    duration to ``on_fetch``.

    It runs in the caller's thread on slow paths only; it takes one lock per event.
    """

    def __init__(self, on_fetch: Callable[[str, float], None] | None = None) -> None:
        self._lock = _forksafe.lock()
        self._counts: dict[tuple[str, str, str], int] = {}
        self._on_fetch = on_fetch

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.FETCH:
            if self._on_fetch is not None and event.duration is not None:
                self._on_fetch(event.source, event.duration)
            return
        key = (event.source, event.layer or "", event.kind.value)
        with self._lock:
            self._counts[key] = self._counts.get(key, 0) + 1

    def counts(self) -> dict[tuple[str, str, str], int]:
        """A copy of the counts, keyed by ``(function, layer, outcome)``."""
        with self._lock:
            return dict(self._counts)

    def start(self) -> None:
        """Start listening (the rare kinds, plus ``fetch`` when durations are wanted)."""
        kinds: list[EventKind] = list(EVENT_KINDS)
        if self._on_fetch is not None:
            kinds.append(EventKind.FETCH)
        listen(self, kinds=kinds)

    def stop(self) -> None:
        """Stop listening."""
        unlisten(self)


def missing_dependency(extra: str, module: str, error: ImportError) -> ModuleNotFoundError:
    """The error raised when an adapter's optional dependency is not installed."""
    exc = ModuleNotFoundError(
        f"cacheward.contrib.{extra} needs the {module!r} package, which is not installed: "
        f"install cacheward's {extra!r} extra (pip install 'cacheward[{extra}]', or "
        f"pip install -e '.[{extra}]' from a clone)",
        name=module,
    )
    exc.__cause__ = error
    return exc
