"""A failing backend over many distinct keys: what the per-key failure state costs.

``python -m benchmarks failures [--quick] [--json PATH]``

A cached function whose backend always fails (a few frames deep, with ~10 KB of rows in a
frame's locals, as a database driver's error would be) is called once for each of N distinct
keys, N = 10,000, 30,000 and 60,000, sync and async. Every call is a miss, a fetch and a
failure, so each key gets a failure state (its back-off and the error that callers during the
back-off are told about). ``backoff=600`` (:data:`BACKOFF`): every key is still backing off at
the end of the run, the worst case for the table (with the default 1 s, the first keys'
back-offs end during the run). Each (N, colour) run is a fresh process, so memory figures start
from the same place; the runs are interleaved (the order rotates every round) and each figure
is the median over rounds.

Per run: the process's CPU seconds for the last 10,000 calls (the marginal cost at that table
size) and per 10,000 calls on average, the resident memory growth over the run, the failure
table's size at the end, and the traceback objects still alive after a collection. Targets:
the table stays at its cap (``FAILURE_STATES``), no traceback is kept, the last 10,000 calls
at 60,000 keys cost at most 1.5x those at 10,000 keys (constant work per failure), and the
memory growth at 60,000 keys is at most 2x that at 10,000 (the table is capped; the
allocator keeps some of what the forgotten states used).
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import subprocess
import sys
import time
import types
from typing import Any

from benchmarks import _harness as h
from cacheward._core.readthrough import FAILURE_STATES

CHUNK = 10_000
#: ``cached(backoff=...)`` in seconds: longer than any run, so no key's back-off ends in it.
BACKOFF = 600.0
#: Ratio limits of the targets (60,000 keys against 10,000).
CPU_RATIO = 1.5
MEMORY_RATIO = 2.0


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        # The table's cap lowered to 100, so that the tiny run goes past it too.
        return {"sizes": [300, 900], "rounds": 1, "chunk": 100, "backoff": BACKOFF, "cap": 100}
    sizes = [10_000, 30_000, 60_000]
    rounds = 3 if quick else 7
    return {"sizes": sizes, "rounds": rounds, "chunk": CHUNK, "backoff": BACKOFF, "cap": None}


class BackendDown(Exception):
    """What the failing backend raises."""


def _decode(key: int, rows: list[dict[str, object]]) -> None:
    raise BackendDown(f"reading customer {key}: connection reset after {len(rows)} rows")


def _query(key: int) -> int:
    # A frame's locals the traceback would keep alive: ~10 KB of rows read before the failure.
    rows = [{"id": i, "customer": key, "payload": "x" * 64} for i in range(60)]
    _decode(key, rows)
    return len(rows)


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: the peak, which only grows here
        import resource

        scale = 1 if sys.platform == "darwin" else 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _tracebacks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, types.TracebackType))


def child(
    size: int, is_async: bool, chunk: int, backoff: float = BACKOFF, cap: int | None = None
) -> dict[str, Any]:
    """One run in this process: ``size`` failing calls, one per key; returns its figures.

    ``cap``: the failure table's size instead of :data:`FAILURE_STATES` (the smoke run's).
    """
    import cacheward as cw

    settings: dict[str, Any] = {
        "ttl": 60,
        "stale_ttl": 0,
        "jitter": 0,
        "backoff": backoff,
        "backoff_max": max(60.0, backoff),
    }
    if is_async:

        @cw.cached(**settings)
        async def afetch(key: int) -> int:
            return _query(key)

        fn: Any = afetch
    else:

        @cw.cached(**settings)
        def fetch(key: int) -> int:
            return _query(key)

        fn = fetch
    driver = fn.stats.__self__
    if cap is not None:
        driver.core.max_states = cap
    outcomes = {"backend": 0, "other": 0}
    cpu: list[float] = []

    def call(key: int) -> None:
        try:
            fn(key)
        except Exception as error:  # counted: the backend's error, or another one
            outcomes["backend" if isinstance(error, BackendDown) else "other"] += 1

    async def acall(key: int) -> None:
        try:
            await fn(key)
        except Exception as error:  # counted, as above
            outcomes["backend" if isinstance(error, BackendDown) else "other"] += 1

    def sync_calls(start: int) -> None:
        for key in range(start, start + chunk):
            call(key)

    async def async_calls(start: int) -> None:
        for key in range(start, start + chunk):
            await acall(key)

    loop = asyncio.new_event_loop()
    try:
        gc.collect()
        rss_start = _rss_bytes()
        for start in range(0, size, chunk):
            began = time.process_time()
            if is_async:
                loop.run_until_complete(async_calls(start))
            else:
                sync_calls(start)
            cpu.append(time.process_time() - began)
        gc.collect()
        rss_end = _rss_bytes()
    finally:
        loop.close()
    return {
        "size": size,
        "colour": "async" if is_async else "sync",
        "cpu_per_chunk_s": cpu,
        "rss_start_mb": rss_start / 1e6,
        "rss_end_mb": rss_end / 1e6,
        "rss_growth_mb": (rss_end - rss_start) / 1e6,
        "states": len(driver.core.states),
        "tracebacks": _tracebacks(),
        "fetch_errors": driver.stats().fetch_errors,
        **outcomes,
    }


def _run_child(
    size: int, is_async: bool, chunk: int, backoff: float, cap: int | None
) -> dict[str, Any]:
    code = (
        "import json, sys; from benchmarks.failures import child; "
        f"print(json.dumps(child({size}, {is_async}, {chunk}, {backoff}, {cap})))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=h.ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    if done.returncode != 0:
        raise RuntimeError(f"failures child ({size}, async={is_async}) failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure(*, quick: bool) -> dict[str, Any]:
    """Run every (size, colour) in fresh processes, interleaved over rounds; return figures."""
    settings = _settings(quick)
    chunk = settings["chunk"]
    configs = [(size, is_async) for size in settings["sizes"] for is_async in (False, True)]
    raw: dict[str, list[dict[str, Any]]] = {_name(*c): [] for c in configs}
    total = settings["rounds"] * len(configs)
    for r in range(settings["rounds"]):
        shift = r % len(configs)
        for size, is_async in [*configs[shift:], *configs[:shift]]:
            run = _run_child(size, is_async, chunk, settings["backoff"], settings["cap"])
            raw[_name(size, is_async)].append(run)
            h.progress("failures: run", sum(len(v) for v in raw.values()), total)
    rows = {}
    for (size, is_async), name in zip(configs, raw, strict=True):
        runs = raw[name]
        rows[name] = {
            "size": size,
            "colour": "async" if is_async else "sync",
            "cpu_last_chunk_s": h.median(run["cpu_per_chunk_s"][-1] for run in runs),
            "cpu_per_chunk_mean_s": h.median(
                sum(run["cpu_per_chunk_s"]) / len(run["cpu_per_chunk_s"]) for run in runs
            ),
            "rss_growth_mb": h.median(run["rss_growth_mb"] for run in runs),
            "rss_end_mb": h.median(run["rss_end_mb"] for run in runs),
            "states_max": max(run["states"] for run in runs),
            "tracebacks_max": max(run["tracebacks"] for run in runs),
            "wrong_errors": sum(run["other"] for run in runs),
            "backend_errors": min(run["backend"] for run in runs),
        }
    return {"settings": settings, "rows": rows, "raw": raw}


def _name(size: int, is_async: bool) -> str:
    return f"{size:,} keys {'async' if is_async else 'sync'}"


def targets(figures: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The verdicts: capped table, no traceback kept, constant CPU and memory past the cap."""
    rows = figures["rows"]
    sizes = figures["settings"]["sizes"]
    cap = figures["settings"]["cap"] or FAILURE_STATES
    result: dict[str, dict[str, Any]] = {}
    for colour in ("sync", "async"):
        mine = [rows[_name(size, colour == "async")] for size in sizes]
        small, large = mine[0], mine[-1]
        states = max(row["states_max"] for row in mine)
        kept = max(row["tracebacks_max"] for row in mine)
        cpu = large["cpu_last_chunk_s"] / max(small["cpu_last_chunk_s"], 1e-9)
        memory = large["rss_growth_mb"] / max(small["rss_growth_mb"], 1.0)
        result[f"table size {colour}"] = {"measured": states, "target": cap, "met": states <= cap}
        result[f"tracebacks kept {colour}"] = {"measured": kept, "target": 0, "met": kept == 0}
        result[f"cpu ratio {colour}"] = {"ratio": cpu, "target": CPU_RATIO, "met": cpu <= CPU_RATIO}
        result[f"memory ratio {colour}"] = {
            "ratio": memory,
            "target": MEMORY_RATIO,
            "met": memory <= MEMORY_RATIO,
        }
    return result


def report(figures: dict[str, Any]) -> None:
    """Print the table and the verdicts."""
    settings = figures["settings"]
    per = f"{settings['chunk']:,}"
    h.print_table(
        f"A failing backend, one call per key (median of {settings['rounds']} interleaved "
        "rounds, each run a fresh process)",
        [
            "run",
            f"CPU, last {per} calls",
            f"CPU per {per} calls",
            "memory growth",
            "failure states",
            "tracebacks kept",
        ],
        [
            [
                name,
                f"{row['cpu_last_chunk_s']:.3f} s",
                f"{row['cpu_per_chunk_mean_s']:.3f} s",
                f"{row['rss_growth_mb']:.1f} MB",
                f"{row['states_max']:,}",
                f"{row['tracebacks_max']:,}",
            ]
            for name, row in figures["rows"].items()
        ],
    )
    wrong = sum(row["wrong_errors"] for row in figures["rows"].values())
    if wrong:
        print(f"  {wrong} calls raised something other than the backend's error")
    for name, target in figures["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        shown = h.fmt_ratio(target["ratio"]) if "ratio" in target else f"{target['measured']:,}"
        print(f"  target {name}: {shown} (<= {target['target']}) {verdict}")


def run(*, quick: bool) -> dict[str, object]:
    """Measure, print and return the failure state's cost."""
    figures = measure(quick=quick)
    figures["targets"] = targets(figures)
    figures["machine"] = h.machine()
    figures["versions"] = h.versions("cacheward")
    report(figures)
    return figures
