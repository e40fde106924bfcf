"""What observing cacheward costs on its hot path: a fresh hit with and without listeners.

``python -m benchmarks observe [--quick] [--json PATH]``

One cached function (the key already cached) is timed under four configurations, sync and
async:

* **bare**: no listener attached for anything but the default logging listener (the reference);
* **listener**: a no-op listener attached for every kind but ``hit`` (``cw.listen(fn)``);
* **hit-listener**: a no-op listener for ``hit`` itself, what counting hits from events would
  cost (reported, not a target: it is why the adapters read ``.stats()`` instead);
* **prometheus**: the Prometheus adapter attached (its listener) and tracking the function; its
  registry is scraped after each block, so the counters it reads are the live ones.

A listener is global, so the configurations cannot be timed side by side; instead, each round
times the bare function, then attaches the listener (or the adapter), times the same function,
detaches it, and so on in a rotated order, then once more in the mirrored order (the faster of
each configuration's two blocks counts, so drift within a round favours none). The figure is
the median over rounds of the per-call time divided by the same round's bare time.
Target: <= 1.10x.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import cacheward as cw
from benchmarks import _harness as h

TARGET = 1.10
ARG = 1


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 3, "block_seconds": 0.0005, "repeat": 1}
    if quick:
        return {"rounds": 15, "block_seconds": 0.005, "repeat": 3}
    return {"rounds": 31, "block_seconds": 0.02, "repeat": 3}


def _noop(event: cw.Event) -> None:
    return None


@contextlib.contextmanager
def _attached(config: str, fn: Any, scrapes: list[int]) -> Iterator[None]:
    """Attach what ``config`` names for the length of the block."""
    if config == "bare":
        yield
        return
    if config == "listener":
        with cw.listening(_noop):
            yield
        return
    if config == "hit-listener":
        with cw.listening(_noop, kinds=[cw.EventKind.HIT]):
            yield
        return
    from prometheus_client import CollectorRegistry, generate_latest

    from cacheward.contrib.prometheus import PrometheusMetrics

    registry = CollectorRegistry()
    metrics = PrometheusMetrics(fn, registry=registry)
    try:
        yield
    finally:
        scrapes.append(len(generate_latest(registry)))
        metrics.close()


def _make(is_async: bool) -> Any:
    if is_async:

        @cw.cached(ttl=3600, jitter=0)
        async def afetch(k: int) -> int:
            return k * 2

        asyncio.run(afetch(ARG))
        return afetch

    @cw.cached(ttl=3600, jitter=0)
    def fetch(k: int) -> int:
        return k * 2

    fetch(ARG)
    return fetch


def _configs() -> list[str]:
    configs = ["bare", "listener", "hit-listener"]
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        return configs
    return [*configs, "prometheus"]


def measure(*, quick: bool) -> dict[str, Any]:
    """Time every configuration, sync and async, in interleaved rounds; return the figures."""
    settings = _settings(quick)
    configs = _configs()
    loop = h.new_loop()
    seconds: dict[str, list[float]] = {}
    ratios: dict[str, list[float]] = {}
    numbers: dict[str, int] = {}
    scrapes: list[int] = []
    try:
        # One function per colour, timed under every configuration: only the attachment differs.
        functions = {False: _make(False), True: _make(True)}
        for is_async, fn in functions.items():
            number = _calibrate(fn, is_async, loop, settings["block_seconds"])
            for config in configs:
                name = f"{config} {'async' if is_async else 'sync'}"
                seconds[name] = []
                ratios[name] = []
                numbers[name] = number
        for r in range(settings["rounds"]):
            for is_async, fn in functions.items():
                colour = "async" if is_async else "sync"
                # Rotate, and time each configuration twice, mirrored (bare, a, b, b, a, bare),
                # so a drift within the round favours none of them; the faster block counts.
                shift = r % (len(configs) - 1)
                order = [*configs[1:][shift:], *configs[1:][:shift]]
                this_round: dict[str, float] = {}
                for config in ["bare", *order, *reversed(order), "bare"]:
                    name = f"{config} {colour}"
                    with _attached(config, fn, scrapes):
                        best = min(
                            _time(fn, is_async, loop, numbers[name])
                            for _ in range(settings["repeat"])
                        )
                    this_round[name] = min(best, this_round.get(name, best))
                reference = this_round[f"bare {colour}"]
                for name, per_call in this_round.items():
                    seconds[name].append(per_call)
                    ratios[name].append(per_call / reference)
            h.progress("observe: round", r + 1, settings["rounds"])
        hits = {
            colour: functions[a].stats().hits for colour, a in (("sync", False), ("async", True))
        }
    finally:
        h.close_loop(loop)
    rows = {
        name: {
            "median_ns": h.median(seconds[name]) * 1e9,
            "ratio": h.median(ratios[name]),
            "ratio_p90": h.percentile(ratios[name], 90),
        }
        for name in seconds
    }
    return {
        "settings": settings,
        "configs": configs,
        "rows": rows,
        "hits_counted": hits,
        "scrapes": len(scrapes),
        "raw": {"seconds_per_call": seconds, "ratio_per_round": ratios, "calls": numbers},
    }


def _time(fn: Any, is_async: bool, loop: asyncio.AbstractEventLoop, number: int) -> float:
    if is_async:
        return h.time_async(loop, fn, ARG, number)
    return h.time_sync(fn, ARG, number)


def _calibrate(fn: Any, is_async: bool, loop: asyncio.AbstractEventLoop, block: float) -> int:
    number = 1
    while True:
        per_call = _time(fn, is_async, loop, number)
        if per_call * number >= block / 10 or number >= 10_000_000:
            return max(1, min(10_000_000, int(block / max(per_call, 1e-9))))
        number *= 10


def report(figures: dict[str, Any]) -> None:
    """Print the table and the verdict."""
    rows = figures["rows"]
    h.print_table(
        f"Fresh hit with observers attached (median of {figures['settings']['rounds']} "
        "interleaved rounds; ratio to the bare hit of the same round)",
        ["configuration", "per call", "ratio", "p90 of ratio"],
        [
            [
                name,
                h.fmt_ns(row["median_ns"] / 1e9),
                h.fmt_ratio(row["ratio"]),
                h.fmt_ratio(row["ratio_p90"]),
            ]
            for name, row in rows.items()
        ],
    )
    if "prometheus" not in figures["configs"]:
        print(
            "  skipped prometheus: prometheus-client is not installed (pip install -e '.[bench]')"
        )
    for name, target in figures["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"  target {name}: {h.fmt_ratio(target['ratio'])} (<= {TARGET}x) {verdict}")


def run(*, quick: bool) -> dict[str, object]:
    """Measure, print and return the cost of observing a fresh hit."""
    figures = measure(quick=quick)
    figures["targets"] = {
        name: {"ratio": row["ratio"], "target": TARGET, "met": row["ratio"] <= TARGET}
        for name, row in figures["rows"].items()
        if not name.startswith(("bare", "hit-listener"))
    }
    figures["machine"] = h.machine()
    figures["versions"] = h.versions("cacheward", "prometheus-client")
    report(figures)
    return figures
