"""The incident's analysis: every figure of one stack's run, from its workers' raw records.

Per-second series, per-phase figures (database work, the amplification over a perfect cache,
caller latency, errors and stale values), when each stack was back to normal, the ratios between
the baseline and each other stack, and cacheward's targets. Pure functions: no I/O.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from benchmarks._db import OK as Q_OK
from benchmarks._db import TIMEOUT as Q_TIMEOUT
from benchmarks.incident.scenario import OUTCOME_NAMES, SERVED, Scenario

__all__ = ["analyse", "ratios", "targets"]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def _window(sc: Scenario, name: str) -> tuple[float, float]:
    return {
        "healthy": (1.0, sc.warm),  # the first second is the processes' L1 filling from Redis
        "outage": (sc.warm, sc.warm + sc.outage),
        "recovery": (sc.warm + sc.outage, sc.total),
        "total": (0.0, sc.total),
    }[name]


def analyse(
    sc: Scenario, raw: dict[str, Any], reference: list[float], lossless: list[float]
) -> dict[str, Any]:
    """Every figure of one stack's run, from its workers' raw records."""
    requests: list[tuple[float, float, int, str, bool]] = []
    queries: list[tuple[float, float, int, str, int]] = []
    stats: list[dict[str, Any]] = []
    censored = 0
    for payload in raw["payloads"].values():
        requests.extend(tuple(r) for r in payload["requests"])
        queries.extend(tuple(q) for q in payload["queries"])
        stats.append(payload["stats"])
        censored += payload["censored"]
    rows_needed = sc.rows_per_customer
    n_sec = math.ceil(sc.total + sc.grace)
    series: dict[str, list[Any]] = {
        "queries": [0] * n_sec,
        "rows": [0] * n_sec,
        "timeouts": [0] * n_sec,
        "requests": [0] * n_sec,
        "errors": [0] * n_sec,
        "p50_ms": [None] * n_sec,
        "p99_ms": [None] * n_sec,
    }
    lat_by_sec: list[list[float]] = [[] for _ in range(n_sec)]
    for start, _dur, rows, _kind, outcome in queries:
        i = min(n_sec - 1, max(0, int(start)))
        series["queries"][i] += 1
        series["rows"][i] += rows
        series["timeouts"][i] += outcome == Q_TIMEOUT
    for arrival, latency, outcome, _err, _stale in requests:
        i = min(n_sec - 1, max(0, int(arrival)))
        series["requests"][i] += 1
        series["errors"][i] += outcome != SERVED
        lat_by_sec[i].append(latency)
    for i, lats in enumerate(lat_by_sec):
        p50, p99 = _pct(lats, 0.5), _pct(lats, 0.99)
        series["p50_ms"][i] = None if p50 is None else round(p50 * 1000, 3)
        series["p99_ms"][i] = None if p99 is None else round(p99 * 1000, 3)

    phases: dict[str, dict[str, Any]] = {}
    for name in ("healthy", "outage", "recovery", "total"):
        lo, hi = _window(sc, name)
        hi_q = hi if name != "total" else float("inf")
        qs = [q for q in queries if lo <= q[0] < hi_q]
        rs = [r for r in requests if lo <= r[0] < hi]
        ref = sum(1 for t in reference if lo <= t < hi)
        ref_lossless = sum(1 for t in lossless if lo <= t < hi)
        rows = sum(q[2] for q in qs)
        lats = [r[1] for r in rs]
        stale_lats = [r[1] for r in rs if r[4]]
        errs = [r for r in rs if r[2] != SERVED]
        secs = list(range(int(lo), min(n_sec, math.ceil(hi) if name != "total" else n_sec)))
        phases[name] = {
            "window_s": [lo, hi],
            "queries": len(qs),
            "queries_peak_per_s": max((series["queries"][i] for i in secs), default=0),
            "rows_read": rows,
            "rows_peak_per_s": max((series["rows"][i] for i in secs), default=0),
            "statement_timeouts": sum(1 for q in qs if q[4] == Q_TIMEOUT),
            "query_errors": sum(1 for q in qs if q[4] not in (Q_OK, Q_TIMEOUT)),
            "perfect_rebuilds": ref,
            "perfect_rows": ref * rows_needed,
            "amplification": round(rows / (ref * rows_needed), 3) if ref else None,
            "lossless_rebuilds": ref_lossless,
            "amplification_vs_lossless": (
                round(rows / (ref_lossless * rows_needed), 3) if ref_lossless else None
            ),
            "requests": len(rs),
            "errors": len(errs),
            "error_rate": round(len(errs) / len(rs), 5) if rs else None,
            "errors_by_kind": dict(Counter(r[3] or OUTCOME_NAMES[r[2]] for r in errs)),
            "stale_served": len(stale_lats),
            "p50_ms": _ms(_pct(lats, 0.5)),
            "p99_ms": _ms(_pct(lats, 0.99)),
            "stale_p99_ms": _ms(_pct(stale_lats, 0.99)),
        }
    healthy_p99 = phases["healthy"]["p99_ms"] or 0.0
    # "Normal", judged over 5-second windows: <= 1 % errors, and a p99 within 2x the worst
    # 5-second p99 of the stack's own healthy phase (so a stack is held to what it does when
    # nothing is wrong), with a 20 ms floor (a 2-core machine's scheduler alone moves a
    # millisecond p99 by that much).
    span = 5

    def window_p99_ms(first: int) -> float | None:
        p99 = _pct([x for i in range(first, first + span) for x in lat_by_sec[i]], 0.99)
        return None if p99 is None else p99 * 1000

    lo_h, hi_h = _window(sc, "healthy")
    healthy_windows = [window_p99_ms(i) for i in range(int(lo_h), int(hi_h) - span + 1)]
    worst_healthy = max((w for w in healthy_windows if w is not None), default=healthy_p99)
    p99_limit = max(2 * worst_healthy, 20.0)
    errs_by_sec = series["errors"]

    def normal(first: int, latency: bool) -> bool:
        lats = [x for i in range(first, first + span) for x in lat_by_sec[i]]
        if not lats:
            return True
        if sum(errs_by_sec[first : first + span]) > 0.01 * len(lats):
            return False
        p99 = _pct(lats, 0.99)
        return not latency or (p99 is not None and p99 * 1000 <= p99_limit)

    last = int(sc.total) - span

    def settled_from(first: int, latency: bool = True) -> int | None:
        ok = [normal(i, latency) for i in range(first, last + 1)]
        for s in range(len(ok)):
            if all(ok[s:]):
                return first + s
        return None

    back = int(sc.warm + sc.outage)
    s_back = settled_from(back)
    s_loss = settled_from(int(sc.warm))
    s_errors = settled_from(int(sc.warm), latency=False)
    phases["outage"]["stale_p99_vs_healthy_p99"] = (
        round(phases["outage"]["stale_p99_ms"] / healthy_p99, 2)
        if phases["outage"]["stale_p99_ms"] and healthy_p99
        else None
    )
    return {
        "phases": phases,
        "normal_p99_limit_ms": round(p99_limit, 3),
        "healthy_worst_window_p99_ms": round(worst_healthy, 3),
        "normal_window_s": span,
        "recovered_after_caches_back_s": None if s_back is None else s_back - back,
        "recovered_after_loss_s": None if s_loss is None else s_loss - int(sc.warm),
        "errors_settled_after_loss_s": None if s_errors is None else s_errors - int(sc.warm),
        "censored_requests": censored,
        "series": series,
        "timeline": raw["timeline"],
        "worker_stats": stats,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def ratios(baseline: dict[str, Any], other: dict[str, Any]) -> dict[str, float | None]:
    """``baseline / other`` for the figures the report quotes.

    ``None`` when a ratio has no finite value (the other stack had none of it: no errors, say);
    the report says so in words rather than printing an infinity.
    """

    def r(a: float | None, b: float | None) -> float | None:
        if a is None or b is None or b == 0:
            return None
        return round(a / b, 2)

    n, g = baseline["phases"], other["phases"]
    return {
        "queries_total": r(n["total"]["queries"], g["total"]["queries"]),
        "queries_outage": r(n["outage"]["queries"], g["outage"]["queries"]),
        "rows_read_total": r(n["total"]["rows_read"], g["total"]["rows_read"]),
        "rows_read_outage": r(n["outage"]["rows_read"], g["outage"]["rows_read"]),
        "errors_total": r(n["total"]["errors"], g["total"]["errors"]),
        "errors_outage": r(n["outage"]["errors"], g["outage"]["errors"]),
    }


def targets(sc: Scenario, g: dict[str, Any]) -> dict[str, Any]:
    """cacheward's targets during the outage: what it is (in words), value, limit, met."""
    o = g["phases"]["outage"]
    amp = o["amplification"]
    stale_ratio = o["stale_p99_vs_healthy_p99"]
    back = g["recovered_after_caches_back_s"]
    return {
        "amplification_outage": {
            "what": "database rows read during the outage, as a multiple of what a perfect "
            "cache with the same TTL reads",
            "value": amp,
            "limit": 1.5,
            "unit": "x",
            "met": amp is not None and amp <= 1.5,
        },
        "error_rate_outage": {
            "what": "share of callers who got an error during the outage",
            "value": o["error_rate"],
            "limit": 0.01,
            "unit": "%",
            "met": o["error_rate"] is not None and o["error_rate"] <= 0.01,
        },
        "stale_p99_vs_healthy_p99": {
            "what": "p99 latency of callers served a stale value, as a multiple of the healthy p99",
            "value": stale_ratio,
            "limit": 2.0,
            "unit": "x",
            "met": None if stale_ratio is None else stale_ratio <= 2.0,
            "note": None if o["stale_served"] else "no stale values were served in the outage",
        },
        "recovered_within_ttl_s": {
            "what": "seconds until callers were back to normal after Redis returned",
            "value": back,
            "limit": sc.ttl,
            "unit": "s",
            "met": back is not None and back <= sc.ttl,
        },
    }
