"""Shared Hypothesis strategies: keys, arrivals, faults and configurations for the promise tests.

Every range is inside what the public API documents as valid, and small enough that a schedule
of tens of callers exercises every mechanism (buckets run dry, budgets spend, back-offs overlap).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hypothesis import strategies as st

from cacheward.testing import LayerMode, Outcome

#: Keys whose typed encodings differ though some compare or print alike: ``1`` vs ``"1"`` vs
#: ``True`` vs ``1.0``... a value served for the wrong one of them is caught by the checks.
KEYS: tuple[Any, ...] = ("a", "b", "1", 1, True, 1.5)

keys = st.sampled_from(KEYS)


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of the guarded function under test (the documented parameters)."""

    # cw.cached
    ttl: float
    stale_ttl: float
    stale_if_error: float | None
    jitter: float
    backoff: float
    backoff_max: float
    timeout: float
    breaker_failures: int
    breaker_reset: float
    # layers
    l1: bool
    l1_maxsize: int
    remotes: int
    layer_timeout: float
    # cw.TokenBucket + cw.rate_limit
    rate: float
    burst: float
    max_wait: float
    # cw.retry + cw.RetryBudget
    attempts: int
    ratio: float
    min_per_second: float
    window: float
    retry_backoff: float
    retry_backoff_max: float
    deadline: float
    seed: int

    @property
    def error_limit(self) -> float:
        """Seconds after ``ttl`` an entry may still be served (its stale limit)."""
        sie = self.stale_ttl if self.stale_if_error is None else self.stale_if_error
        return max(self.stale_ttl, sie)


#: A plain configuration for regression examples (each test replaces what it needs).
REGRESSION_CONFIG = Config(
    ttl=1.0,
    stale_ttl=0.0,
    stale_if_error=None,
    jitter=0.0,
    backoff=1.0,
    backoff_max=1.0,
    timeout=1.0,
    breaker_failures=1,
    breaker_reset=1.0,
    l1=True,
    l1_maxsize=6,
    remotes=0,
    layer_timeout=0.5,
    rate=10.0,
    burst=10.0,
    max_wait=0.0,
    attempts=1,
    ratio=0.0,
    min_per_second=0.0,
    window=1.0,
    retry_backoff=0.5,
    retry_backoff_max=1.0,
    deadline=1.0,
    seed=0,
)


@st.composite
def configs(draw: st.DrawFn) -> Config:
    """A configuration within the documented ranges."""
    backoff = draw(st.floats(0.1, 4.0))
    retry_backoff = draw(st.floats(0.01, 0.5))
    stale_ttl = draw(st.sampled_from([0.0, 1.0, 5.0, 20.0]))
    # stale_if_error may not be shorter than stale_ttl (refused at decoration).
    stale_if_error = draw(st.none() | st.sampled_from([0.0, 2.0, 10.0, 40.0]))
    return Config(
        ttl=draw(st.floats(0.5, 20.0)),
        stale_ttl=stale_ttl,
        stale_if_error=None if stale_if_error is None else max(stale_if_error, stale_ttl),
        jitter=draw(st.sampled_from([0.0, 0.1, 0.5])),
        backoff=backoff,
        backoff_max=draw(st.floats(backoff, 20.0)),
        timeout=draw(st.floats(0.2, 10.0)),
        breaker_failures=draw(st.integers(1, 3)),
        breaker_reset=draw(st.floats(0.5, 5.0)),
        l1=draw(st.booleans()),
        l1_maxsize=draw(st.integers(1, len(KEYS) + 1)),
        remotes=draw(st.integers(0, 2)),
        layer_timeout=draw(st.floats(0.05, 1.0)),
        rate=draw(st.floats(0.2, 20.0)),
        burst=float(draw(st.integers(1, 10))),
        max_wait=draw(st.sampled_from([0.0, 0.1, 0.5, 1.0])),
        attempts=draw(st.integers(1, 4)),
        ratio=draw(st.sampled_from([0.0, 0.1, 0.2, 0.5, 1.0])),
        min_per_second=draw(st.sampled_from([0.0, 0.1, 1.0, 2.0])),
        window=draw(st.floats(1.0, 10.0)),
        retry_backoff=retry_backoff,
        retry_backoff_max=draw(st.floats(retry_backoff, 2.0)),
        deadline=draw(st.floats(0.5, 10.0)),
        seed=draw(st.integers(0, 2**16)),
    )


#: Backend behaviours: answer, fail (retried), raise (not retried); at once, slowly, or so
#: slowly that callers' timeouts fire first.
outcomes = st.builds(
    Outcome,
    kind=st.sampled_from(["ok", "ok", "fail", "raise"]),
    delay=st.sampled_from([0.0, 0.0, 0.05, 0.5, 3.0, 30.0]),
)

layer_faults: st.SearchStrategy[LayerMode | str] = st.sampled_from(
    ["up", "down", "hung", "corrupt", "evicting", "flush"]
)

#: When things happen, in seconds from the start of the schedule.
arrival_times = st.floats(0.0, 60.0).map(lambda t: round(t, 2))


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A generated failure schedule: who calls when, and what breaks when."""

    config: Config
    #: ``(time, key)`` per caller.
    calls: list[tuple[float, Any]]
    #: ``(time, layer index, mode or "flush")``.
    layer_events: list[tuple[float, int, str]]
    #: ``(time, outcome)``: the backend's behaviour from then on.
    backend_events: list[tuple[float, Outcome]]
    first_outcome: Outcome
    #: ``(time, key)``: ``invalidate(key)`` calls (none unless asked for).
    invalidations: list[tuple[float, Any]] = dataclasses.field(default_factory=list)

    @property
    def span(self) -> float:
        """The time of the last scheduled thing."""
        times = [t for t, _ in self.calls] + [t for t, *_ in self.layer_events]
        return max([0.0, *times, *(t for t, _ in self.backend_events)])


@st.composite
def bursts(draw: st.DrawFn, max_callers: int) -> list[tuple[float, Any]]:
    """Callers in bursts: ``(time, key, how many)`` expanded to one caller each."""
    groups = draw(
        st.lists(
            st.tuples(arrival_times, keys, st.integers(1, 12)), min_size=1, max_size=max_callers
        )
    )
    calls: list[tuple[float, Any]] = []
    for at, key, count in groups:
        calls.extend([(at, key)] * count)
    return sorted(calls[: max_callers * 2], key=lambda c: c[0])


@st.composite
def schedules(
    draw: st.DrawFn,
    max_callers: int = 20,
    config: Config | None = None,
    invalidations: bool = False,
) -> Schedule:
    """A whole schedule: a configuration, callers, layer faults and backend faults (and
    ``invalidate`` calls if ``invalidations``)."""
    cfg = config if config is not None else draw(configs())
    layer_events: list[tuple[float, int, str]] = []
    if cfg.remotes:
        layer_events = draw(
            st.lists(
                st.tuples(arrival_times, st.integers(0, cfg.remotes - 1), layer_faults),
                max_size=8,
            )
        )
    return Schedule(
        config=cfg,
        calls=draw(bursts(max_callers)),
        layer_events=sorted(layer_events, key=lambda e: e[0]),
        backend_events=sorted(
            draw(st.lists(st.tuples(arrival_times, outcomes), max_size=8)), key=lambda e: e[0]
        ),
        first_outcome=draw(outcomes),
        invalidations=sorted(
            draw(st.lists(st.tuples(arrival_times, keys), max_size=6)) if invalidations else [],
            key=lambda e: e[0],
        ),
    )
