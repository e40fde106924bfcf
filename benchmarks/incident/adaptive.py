"""``python -m benchmarks incident --limiter adaptive``: nobody sized the rate, and the database
slows down in the middle of the outage.

A variant of the incident replay. The request stream keeps the database at about two thirds
of its healthy capacity while the caches are gone (more customers, a shorter TTL), and in the
middle of the outage the database loses half its slots for 30 s (a vacuum, a noisy neighbour,
a failover: a slow-down nobody planned for). Side by side, one after the other, in one run:

* **naive**: the incident's stack (:mod:`benchmarks._naive`);
* **guarded (bucket 0.5)** and **guarded (bucket 0.8)**: ``cw.guard`` with today's token bucket
  sized as docs/protection.md recommends, ``rate = 0.5-0.8 x`` the *healthy* capacity (shared
  ``RedisTokenBucket``; while Redis is down, each process falls back to ``1/N`` of it);
* **guarded (adaptive)**: ``cw.guard`` with ``cw.AdaptiveLimit()`` in each process and no rate
  at all.

Reported per stack: the amplification, caller errors, statement timeouts, the seconds the
database spent above its capacity (more than 1.1 statements running per slot, on average over
the second), the p99 of served callers, and each process's adaptive limit over time (summed)
in the picture (``benchmarks/results/incident-adaptive[-quick].png``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import threading
import time
from typing import Any

from benchmarks import _harness as h
from benchmarks._db import Store
from benchmarks.incident import report
from benchmarks.incident.scenario import FULL, QUICK, SERVED, SMOKE, Scenario
from benchmarks.incident.stacks import (
    REGISTRY,
    GuardedStack,
    Stack,
    StackSpec,
    guarded_config,
    register,
    selected,
)

__all__ = ["ADAPTIVE_FULL", "ADAPTIVE_QUICK", "ADAPTIVE_SMOKE", "STACKS", "run"]

#: The slow-down: half the slots, for 30 s, starting this long into the outage.
DIP_FACTOR = 0.5
DIP_FOR = 30.0


def _variant(
    base: Scenario,
    name: str,
    *,
    warm: float,
    outage: float,
    recovery: float,
    dip_after: float,
    dip_for: float = DIP_FOR,
) -> Scenario:
    return dataclasses.replace(
        base,
        name=name,
        customers=240 if base is not SMOKE else base.customers,
        ttl=4.0 if base is not SMOKE else base.ttl,
        stale_ttl=40.0 if base is not SMOKE else base.stale_ttl,
        rate=300.0 if base is not SMOKE else base.rate,
        warm=warm,
        outage=outage,
        recovery=recovery,
        capacity=dataclasses.replace(
            base.capacity, dip_at=warm + dip_after, dip_for=dip_for, dip_factor=DIP_FACTOR
        ),
    )


ADAPTIVE_FULL = _variant(FULL, "adaptive-full", warm=20, outage=60, recovery=30, dip_after=15)
ADAPTIVE_QUICK = _variant(QUICK, "adaptive-quick", warm=8, outage=40, recovery=10, dip_after=5)
ADAPTIVE_SMOKE = _variant(
    SMOKE, "adaptive-smoke", warm=0.6, outage=2.0, recovery=0.6, dip_after=0.5, dip_for=1.0
)

STACKS = ("naive", "guarded", "guarded-bucket-0.8", "guarded-adaptive")


# ---------------------------------------------------------------------------------------------
# The stacks this variant adds.
# ---------------------------------------------------------------------------------------------


def _high_share(sc: Scenario) -> Scenario:
    return dataclasses.replace(sc, limiter_share=0.8)


def _build_bucket_high(store: Store, sc: Scenario, redis_url: str | None) -> Stack:
    return GuardedStack(store, _high_share(sc), redis_url=redis_url)


def _bucket_high_config(sc: Scenario) -> dict[str, Any]:
    return guarded_config(_high_share(sc))


class AdaptiveStack(GuardedStack):
    """``cw.guard`` with a per-process ``cw.AdaptiveLimit`` and no rate; samples the limit."""

    def __init__(self, store: Store, sc: Scenario, *, redis_url: str | None) -> None:
        self.store = store
        self.history: list[tuple[float, int, int, float | None]] = []
        super().__init__(store, sc, redis_url=redis_url, limiter=self._limiter)

    def _limiter(self, stack: GuardedStack, sc: Scenario, redis_url: str | None) -> Any:
        import cacheward as cw

        self.limit = cw.AdaptiveLimit(name="db")
        self.components.append("AdaptiveLimit (per process, no rate)")
        threading.Thread(target=self._sample, daemon=True).start()
        return self.limit

    def _sample(self) -> None:
        while True:  # a daemon thread: the worker process ends with os._exit
            baseline = getattr(self.limit._core, "baseline", None)
            self.history.append((time.time(), self.limit.limit, self.limit.inflight, baseline))
            time.sleep(0.25)

    def stats(self) -> dict[str, Any]:
        out = super().stats()
        origin = self.store.origin
        out["limit_history"] = [
            (round(t - origin, 3), lim, n, None if b is None else round(b * 1000, 2))
            for t, lim, n, b in list(self.history)
            if t >= origin
        ]
        out["adaptive"] = dataclasses.asdict(self.limit.stats())
        return out


def _build_adaptive(store: Store, sc: Scenario, redis_url: str | None) -> Stack:
    return AdaptiveStack(store, sc, redis_url=redis_url)


def _adaptive_config(sc: Scenario) -> dict[str, Any]:
    cfg = {k: v for k, v in guarded_config(sc).items() if not k.startswith(("limiter", "why"))}
    return {**cfg, "limiter": "cw.AdaptiveLimit(name='db') per process: the defaults, no rate"}


def _register() -> None:
    if "guarded-adaptive" in REGISTRY:
        return
    base = REGISTRY["guarded"]
    register(
        dataclasses.replace(
            base,
            name="guarded-bucket-0.8",
            label="cacheward (bucket 0.8)",
            summary="guard() with a token bucket at 0.8 x the healthy capacity",
            build=_build_bucket_high,
            config=_bucket_high_config,
        )
    )
    register(
        dataclasses.replace(
            base,
            name="guarded-adaptive",
            label="cacheward (adaptive)",
            summary="guard() with cw.AdaptiveLimit() in each process, no rate configured",
            build=_build_adaptive,
            config=_adaptive_config,
        )
    )


_register()


# ---------------------------------------------------------------------------------------------
# The figures this variant adds.
# ---------------------------------------------------------------------------------------------


def _capacity_series(sc: Scenario, n_sec: int) -> list[float]:
    return [sc.capacity.slots_at(i + 0.5) for i in range(n_sec)]


def extras(sc: Scenario, raw: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """Database saturation per second, the dip's figures, and the adaptive limit over time."""
    n_sec = len(figures["series"]["rows"])
    busy = [0.0] * n_sec  # statement-seconds per second: the mean number running
    requests: list[tuple[float, float, int, str, bool]] = []
    history: dict[int, list[tuple[Any, ...]]] = {}
    for index, payload in raw["payloads"].items():
        requests.extend(tuple(r) for r in payload["requests"])
        history[index] = [tuple(x) for x in payload["stats"].get("limit_history", [])]
        for start, duration, _rows, _kind, _outcome in payload["queries"]:
            lo, hi = start, start + duration
            for i in range(max(0, int(lo)), min(n_sec, math.ceil(hi))):
                busy[i] += max(0.0, min(hi, i + 1) - max(lo, i))
    slots = _capacity_series(sc, n_sec)
    # Above capacity: more than 10 % more statements running than slots, the bound the
    # convergence guarantee uses (at the knee a statement or two queue by design).
    above = [b > 1.1 * s for b, s in zip(busy, slots, strict=True)]
    cap = sc.capacity
    dip = range(int(cap.dip_at), min(n_sec, math.ceil(cap.dip_at + cap.dip_for)))
    outage = range(int(sc.warm), min(n_sec, math.ceil(sc.warm + sc.outage)))
    in_dip = [r for r in requests if cap.dip_at <= r[0] < cap.dip_at + cap.dip_for]
    served_dip = sorted(r[1] for r in in_dip if r[2] == SERVED)
    outage_reqs = [r for r in requests if sc.warm <= r[0] < sc.warm + sc.outage]
    served_outage = sorted(r[1] for r in outage_reqs if r[2] == SERVED)
    limit_sum: list[int | None] = [None] * n_sec
    inflight_sum: list[int | None] = [None] * n_sec
    if any(history.values()):
        for i in range(n_sec):
            lims, ins = [], []
            for points in history.values():
                second = [p for p in points if i <= p[0] < i + 1]
                if second:
                    lims.append(max(p[1] for p in second))
                    ins.append(max(p[2] for p in second))
            if lims:
                limit_sum[i], inflight_sum[i] = sum(lims), sum(ins)
    qs = [q for p in raw["payloads"].values() for q in p["queries"]]
    return {
        "mean_statements_running": [round(b, 2) for b in busy],
        "slots": slots,
        "seconds_above_capacity": sum(above),
        "seconds_above_capacity_in_dip": sum(above[i] for i in dip),
        "statements_per_slot_in_dip": (
            round(sum(busy[i] / slots[i] for i in dip) / len(dip), 2) if dip else None
        ),
        "seconds_above_capacity_in_outage": sum(above[i] for i in outage),
        "statement_timeouts_in_dip": sum(
            1 for q in qs if cap.dip_at <= q[0] < cap.dip_at + cap.dip_for and q[4] == 1
        ),
        "caller_errors_in_dip": sum(1 for r in in_dip if r[2] != SERVED),
        "caller_error_rate_in_dip": (
            round(sum(1 for r in in_dip if r[2] != SERVED) / len(in_dip), 5) if in_dip else None
        ),
        "served_p99_ms_in_dip": _p99_ms(served_dip),
        "served_p99_ms_in_outage": _p99_ms(served_outage),
        "limit_sum_per_s": limit_sum,
        "inflight_sum_per_s": inflight_sum,
    }


def _p99_ms(values: list[float]) -> float | None:
    if not values:
        return None
    return round(values[min(len(values) - 1, math.ceil(0.99 * len(values)) - 1)] * 1000, 3)


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """The issue's goals for the adaptive stack, against the bucket stacks of the same run."""
    stats = result["stacks"]
    ex = result["adaptive_figures"]
    a, a_ex = stats["guarded-adaptive"]["phases"]["total"], ex["guarded-adaptive"]
    out: dict[str, Any] = {}
    for bucket in ("guarded", "guarded-bucket-0.8"):
        if bucket not in stats:
            continue
        b = stats[bucket]["phases"]["total"]
        limit = 0.01 * b["statement_timeouts"]
        out[f"timeouts_vs_{bucket}"] = {
            "what": f"statement timeouts, adaptive <= 1 % of {bucket}'s",
            "value": a["statement_timeouts"],
            "limit": limit,
            "met": a["statement_timeouts"] <= limit if b["statement_timeouts"] else None,
            "note": None if b["statement_timeouts"] else f"{bucket} had no statement timeouts",
        }
        b_p99 = ex[bucket]["served_p99_ms_in_outage"]
        a_p99 = a_ex["served_p99_ms_in_outage"]
        out[f"p99_vs_{bucket}"] = {
            "what": f"p99 of served callers in the outage, adaptive <= {bucket}'s",
            "value": a_p99,
            "limit": b_p99,
            "met": None if a_p99 is None or b_p99 is None else a_p99 <= b_p99,
        }
    rate = stats["guarded-adaptive"]["phases"]["outage"]["error_rate"]
    out["caller_errors"] = {
        "what": "share of callers with an error in the outage, adaptive <= 1 %",
        "value": rate,
        "limit": 0.01,
        "met": rate is not None and rate <= 0.01,
    }
    secs = a_ex["seconds_above_capacity_in_dip"]
    out["seconds_above_capacity"] = {
        "what": "seconds above capacity during the slow-down, adaptive <= 2",
        "value": secs,
        "limit": 2,
        "met": secs <= 2,
    }
    return out


# ---------------------------------------------------------------------------------------------
# The run.
# ---------------------------------------------------------------------------------------------


def scenario_for(quick: bool) -> Scenario:
    """The scenario a run uses (the smoke one under ``CACHEWARD_BENCH_SMOKE=1``)."""
    if os.environ.get("CACHEWARD_BENCH_SMOKE", "") not in ("", "0"):
        return ADAPTIVE_SMOKE
    return ADAPTIVE_QUICK if quick else ADAPTIVE_FULL


def run(*, quick: bool, replay: Any, stacks_: tuple[str, ...] = STACKS) -> dict[str, Any]:
    """Run the variant for every stack; print the report; return every figure.

    ``replay`` is the incident package's (it runs the stacks and computes the default figures,
    which this variant adds to); passed in, so that this module does not import the package.
    """
    specs = selected(list(stacks_))
    sc = scenario_for(quick)
    smoke = sc is ADAPTIVE_SMOKE
    cap = sc.capacity
    note = (
        f"The slow-down: from t={cap.dip_at:g} s, for {cap.dip_for:g} s, the database has "
        f"{cap.dip_factor:.0%} of its {cap.slots} slots; nobody reconfigures anything."
    )
    result, raw = replay(sc, specs, quiet=smoke, notes=(note,))
    result["variant"] = "adaptive"
    result["slowdown"] = {"at_s": cap.dip_at, "for_s": cap.dip_for, "factor": cap.dip_factor}
    result["adaptive_figures"] = {
        s.name: extras(sc, raw[s.name], result["stacks"][s.name]) for s in specs
    }
    if "guarded-adaptive" in result["stacks"]:
        result["goals"] = goals(result)
    if not smoke:
        path = h.output_dir() / (
            "incident-adaptive.png" if not quick else "incident-adaptive-quick.png"
        )
        try:
            plot(sc, result, specs, path)
            result["plot"] = str(path)
        except ImportError as exc:
            result["plot"] = None
            print(f"no picture: {exc} (pip install -e '.[bench]')")
        print_report(sc, result, specs)
    return result


def table(result: dict[str, Any], specs: list[StackSpec]) -> list[tuple[str, ...]]:
    """The report's rows: one per figure, one column per stack."""
    rows: list[tuple[str, ...]] = [("", *(s.label for s in specs))]

    def add(label: str, get: Any) -> None:
        cells = []
        for s in specs:
            try:
                value = get(result["stacks"][s.name], result["adaptive_figures"][s.name])
            except (KeyError, TypeError):
                value = None
            cells.append("-" if value is None else str(value))
        rows.append((label, *cells))

    add(
        "amplification in the outage (x perfect cache)",
        lambda f, e: f["phases"]["outage"]["amplification"],
    )
    add(
        "caller errors, outage (%)",
        lambda f, e: round(100 * f["phases"]["outage"]["error_rate"], 2),
    )
    add(
        "caller errors, slow-down (%)",
        lambda f, e: (
            None
            if e["caller_error_rate_in_dip"] is None
            else round(100 * e["caller_error_rate_in_dip"], 2)
        ),
    )
    add("statement timeouts, whole run", lambda f, e: f["phases"]["total"]["statement_timeouts"])
    add("statement timeouts, slow-down", lambda f, e: e["statement_timeouts_in_dip"])
    add("seconds above capacity, slow-down", lambda f, e: e["seconds_above_capacity_in_dip"])
    add("statements running per slot, slow-down", lambda f, e: e["statements_per_slot_in_dip"])
    add("seconds above capacity, outage", lambda f, e: e["seconds_above_capacity_in_outage"])
    add("p99 of served callers, outage (ms)", lambda f, e: e["served_p99_ms_in_outage"])
    add("p99 of served callers, slow-down (ms)", lambda f, e: e["served_p99_ms_in_dip"])
    add("stale values served, outage", lambda f, e: f["phases"]["outage"]["stale_served"])
    add("DB rows read, outage", lambda f, e: f"{f['phases']['outage']['rows_read']:,}")
    return rows


def print_report(sc: Scenario, result: dict[str, Any], specs: list[StackSpec]) -> None:
    rows = table(result, specs)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print()
    print(f"incident --limiter adaptive ({sc.name}; {result['database']})")
    for r in rows:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    for name, goal in result.get("goals", {}).items():
        met = {True: "met", False: "NOT met", None: "n/a"}[goal["met"]]
        note = f" ({goal['note']})" if goal.get("note") else ""
        print(f"  goal {name}: {goal['what']}: {goal['value']} vs {goal['limit']}: {met}{note}")
    if result.get("plot"):
        print(f"  picture: {result['plot']}")


def plot(sc: Scenario, result: dict[str, Any], specs: list[StackSpec], path: Any) -> None:
    """Database saturation, caller p99 and errors, and the adaptive limit, over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    first = result["adaptive_figures"][specs[0].name]
    xs = list(range(len(first["slots"])))
    axes[0].step(
        xs,
        first["slots"],
        where="post",
        color="grey",
        linestyle="--",
        label="database slots (capacity)",
    )
    for i, spec in enumerate(specs):
        colour = report.COLOURS.get(spec.name, report.PALETTE[i % len(report.PALETTE)])
        ex = result["adaptive_figures"][spec.name]
        s = result["stacks"][spec.name]["series"]
        axes[0].plot(xs, ex["mean_statements_running"], label=spec.label, color=colour)
        axes[1].plot(
            xs, [math.nan if v is None else v for v in s["p99_ms"]], color=colour, label=spec.label
        )
        pairs = zip(s["errors"], s["requests"], strict=True)
        axes[2].plot(
            xs, [100 * e / n if n else math.nan for e, n in pairs], color=colour, label=spec.label
        )
        if any(v is not None for v in ex["limit_sum_per_s"]):
            axes[3].plot(
                xs,
                [math.nan if v is None else v for v in ex["limit_sum_per_s"]],
                color=colour,
                label=f"{spec.label}: limit (sum of processes)",
            )
            axes[3].plot(
                xs,
                [math.nan if v is None else v for v in ex["inflight_sum_per_s"]],
                color=colour,
                linestyle=":",
                label=f"{spec.label}: in flight",
            )
    axes[3].step(
        xs, first["slots"], where="post", color="grey", linestyle="--", label="database slots"
    )
    axes[0].set_ylabel("statements running\n(mean per second)")
    axes[0].set_yscale("symlog", linthresh=10)
    axes[1].set_yscale("log")
    axes[1].set_ylabel("caller p99 (ms)")
    axes[2].set_ylabel("caller errors (%)")
    axes[3].set_ylabel("concurrent rebuilds")
    axes[3].set_xlabel("seconds")
    cap = sc.capacity
    for ax in axes:
        ax.axvspan(sc.warm, sc.warm + sc.outage, color="#ffbb78", alpha=0.3, linewidth=0)
        ax.axvspan(cap.dip_at, cap.dip_at + cap.dip_for, color="#c7c7c7", alpha=0.4, linewidth=0)
        ax.grid(True, alpha=0.3)
    for ax in axes:
        ax.legend(loc="upper right", fontsize="small")
    axes[0].set_title(
        f"incident --limiter adaptive ({sc.name}): caches lost at t={sc.warm:g}s; the database "
        f"has half its slots from t={cap.dip_at:g}s to {cap.dip_at + cap.dip_for:g}s"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
