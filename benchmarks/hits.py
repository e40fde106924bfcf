"""Fresh-hit cost of ``cw.cached``, sync and async, side by side with the peers.

``python -m benchmarks hits [--quick] [--json PATH]``

Every contender caches ``f(1)`` once, then each round times a tight loop of hits on it, in a
rotated order, with its group's reference timed in the same round:

* sync: ``functools.lru_cache(128)``;
* async: awaiting a coroutine function that does one ``dict`` lookup.

The figure for a contender is the median over rounds of its per-call time divided by the
reference's from the same round. cacheward's row is its whole hot path: building the typed key,
looking the entry up, checking freshness against the clock and counting the hit in its stats.
Targets: sync <= 2.5x ``lru_cache``, async <= 2x the async reference.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from benchmarks import _harness as h
from benchmarks._peerlibs import ASYNC_LIBS, SYNC_LIBS, SYNC_REFERENCE, Lib, available

#: The key every contender is called with.
ARG = 1
SYNC_TARGET = 2.5
ASYNC_TARGET = 2.0
ASYNC_REFERENCE = "await coroutine (dict lookup)"


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 3, "block_seconds": 0.0005, "repeat": 1}
    # Short blocks, best of several: on a shared 2-core machine a block of a few milliseconds
    # often runs without being preempted, a block of 20 ms almost never does.
    if quick:
        return {"rounds": 15, "block_seconds": 0.002, "repeat": 5}
    return {"rounds": 21, "block_seconds": 0.003, "repeat": 9}


class _Counted:
    """A trivial backend that counts its calls (a hit benchmark must not reach it)."""

    def __init__(self) -> None:
        self.calls = 0

    def sync(self) -> Callable[[int], int]:
        def value(k: int) -> int:
            self.calls += 1
            return k * 2

        return value

    def coro(self) -> Callable[[int], Any]:
        async def value(k: int) -> int:
            self.calls += 1
            return k * 2

        return value


def build(
    libs: list[Lib] | None = None,
) -> tuple[list[h.Contender], dict[str, _Counted], dict[str, str]]:
    """Decorate, warm and check every contender; return them, their counters and what was skipped.

    Args:
        libs: the libraries to include (default: every one marked for hits).
    """
    chosen = libs if libs is not None else [lib for lib in [*SYNC_LIBS, *ASYNC_LIBS] if lib.hits]
    contenders: list[h.Contender] = []
    counters: dict[str, _Counted] = {}
    skipped: dict[str, str] = {}

    ref_counter = _Counted()
    reference = SYNC_REFERENCE.make()(ref_counter.sync())
    reference(ARG)
    contenders.append(
        h.Contender(
            SYNC_REFERENCE.name,
            "sync",
            reference,
            ARG,
            config=SYNC_REFERENCE.config,
            reference=True,
        )
    )
    counters[SYNC_REFERENCE.name] = ref_counter

    table = {ARG: ARG * 2}

    async def dict_lookup(k: int) -> int:
        return table[k]

    contenders.append(
        h.Contender(
            ASYNC_REFERENCE,
            "async",
            dict_lookup,
            ARG,
            is_async=True,
            config="async def f(k): return table[k]; timed as await f(1)",
            reference=True,
        )
    )

    for lib in chosen:
        why = available(lib)
        if why is not None:
            skipped[lib.name] = why
            continue
        counter = _Counted()
        own_loop = None
        if lib.is_async:
            own_loop = h.new_loop()
            fn = lib.make()(counter.coro())
            value = own_loop.run_until_complete(fn(ARG))
            again = own_loop.run_until_complete(fn(ARG))
        else:
            fn = lib.make()(counter.sync())
            value = fn(ARG)
            again = fn(ARG)
        if value != ARG * 2 or again != ARG * 2 or counter.calls != 1:
            skipped[lib.name] = f"misbehaved on warm-up (value {again!r}, calls {counter.calls})"
            continue
        contenders.append(
            h.Contender(
                lib.name,
                "async" if lib.is_async else "sync",
                fn,
                ARG,
                is_async=lib.is_async,
                config=lib.config,
                loop=own_loop,
            )
        )
        counters[lib.name] = counter
    return contenders, counters, skipped


def measure(*, quick: bool, libs: list[Lib] | None = None, title: str = "") -> dict[str, Any]:
    """Run the interleaved rounds and return every figure (the report is printed by callers)."""
    settings = _settings(quick)
    loop = h.new_loop()
    contenders: list[h.Contender] = []
    try:
        contenders, counters, skipped = build(libs)

        def progress(done: int, total: int) -> None:
            h.progress(f"{title}hits: round", done, total)

        result = h.interleaved_rounds(contenders, loop=loop, progress=progress, **settings)
    finally:
        for c in contenders:
            if c.loop is not None:
                asyncio.set_event_loop(c.loop)
                h.close_loop(c.loop)
        asyncio.set_event_loop(loop)
        h.close_loop(loop)
    backend_calls = {name: c.calls for name, c in counters.items()}
    rows: dict[str, dict[str, Any]] = {}
    for c in contenders:
        rows[c.name] = {
            "group": c.group,
            "config": c.config,
            "median_ns": result.median_ns(c.name),
            "ratio": result.median_ratio(c.name),
            "ratio_p99": h.percentile(result.ratios[c.name], 99),
            "ratio_max": max(result.ratios[c.name]),
            "backend_calls": backend_calls.get(c.name, 0),
        }
    return {"settings": settings, "rows": rows, "skipped": skipped, "raw": result.as_dict()}


def _target(rows: dict[str, dict[str, Any]], name: str, limit: float) -> dict[str, Any]:
    if name not in rows:
        return {"ratio": None, "target": limit, "met": None}
    ratio = rows[name]["ratio"]
    return {"ratio": ratio, "target": limit, "met": ratio <= limit}


def report(figures: dict[str, Any]) -> None:
    """Print the two tables (sync, async) and the verdict on the targets."""
    rows = figures["rows"]
    for group, ref in (("sync", SYNC_REFERENCE.name), ("async", ASYNC_REFERENCE)):
        members = sorted(
            (name for name, row in rows.items() if row["group"] == group),
            key=lambda name: rows[name]["ratio"],
        )
        h.print_table(
            f"Fresh hit, {group} (median of {figures['settings']['rounds']} interleaved rounds; "
            f"ratio to {ref} in the same round)",
            ["contender", "per call", "ratio", "worst round"],
            [
                [
                    name,
                    h.fmt_ns(rows[name]["median_ns"] / 1e9),
                    h.fmt_ratio(rows[name]["ratio"]),
                    h.fmt_ratio(rows[name]["ratio_max"]),
                ]
                for name in members
            ],
        )
    for name, why in figures["skipped"].items():
        print(f"  skipped {name}: {why}")
    for label, target in figures["targets"].items():
        if target["ratio"] is None:
            print(f"  target {label}: not measured (cacheward unavailable)")
        else:
            verdict = "met" if target["met"] else "MISSED"
            print(
                f"  target {label}: {h.fmt_ratio(target['ratio'])} "
                f"(<= {target['target']}x) {verdict}"
            )


def run(*, quick: bool) -> dict[str, object]:
    """Measure fresh hits for cacheward and every installed peer; print and return the figures."""
    figures = measure(quick=quick)
    figures["targets"] = {
        "sync (x lru_cache)": _target(figures["rows"], "cacheward", SYNC_TARGET),
        "async (x await dict lookup)": _target(figures["rows"], "cacheward async", ASYNC_TARGET),
    }
    figures["machine"] = h.machine()
    figures["versions"] = h.versions(
        "cacheward", "cachetools", "cachebox", "async-lru", "cashews", "aiocache", "dogpile.cache"
    )
    report(figures)
    return figures
