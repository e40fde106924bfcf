"""Redis refused and Redis hung under load: cacheward next to cashews, aiocache and dogpile.cache.

``python -m benchmarks outage [--quick] [--json PATH]``

For each contender and each fault, on a private ``redis-server`` (stopped by PID):

1. the server is started empty and a first instance of the contender caches the 10 keys in it
   (a warm Redis, as a service would have it);
2. a fresh instance (a new process, as after a deploy: nothing in memory) is built;
3. the fault starts: **refused** = the server is SIGKILLed (connections refused), **hung** = the
   server is SIGSTOPped (connections open, nothing answers);
4. 200 callers per second ask for the 10 keys for 5 s (2 s with ``--quick``); the backend takes
   20 ms. A caller that does not get the right value within 15 s counts as an error.

Counted per run: backend calls (ideal: 10, one per key), callers served and failed, and the
callers' p50 / p99 / max latency. Targets for cacheward: 10 backend calls, every caller served,
p99 <= 100 ms, in both modes. The peers run with the configurations of
``benchmarks/_peerlibs.py`` (their documented defaults plus explicit socket timeouts where they
have them); the load comes from ``benchmarks/_load.py``. ``benchmarks/peers.py`` reports the
refused run (:func:`refused_outage`) in its summary.
"""

from __future__ import annotations

import gc
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

from benchmarks import _harness as h
from benchmarks._load import CALL_TIMEOUT, Backend, async_load, thread_load
from benchmarks._peerlibs import OUTAGE_CONTENDERS

MODES = ("refused", "hung")
P99_TARGET = 0.1
BACKEND_LATENCY = 0.02
KEYS = 10


def _answer(k: int) -> dict[str, int]:
    return {"key": k}


def _backend() -> Backend:
    return Backend(BACKEND_LATENCY, _answer)


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rate": 100, "duration": 0.3}
    if quick:
        return {"rate": 200, "duration": 2.0}
    return {"rate": 200, "duration": 5.0}


def _cacheward(port: int, *, timeout: float | None = None, is_async: bool = False) -> Any:
    import cacheward as cw

    options = {} if timeout is None else {"timeout": timeout}
    layer = cw.RedisLayer.from_url(f"redis://127.0.0.1:{port}/0", **options)
    config = (
        "cw.cached(ttl=3600, layers=[cw.MemoryLayer(), cw.RedisLayer.from_url(url"
        + ("" if timeout is None else f", timeout={timeout}")
        + ")]) "
        + ("(defaults: 0.1 s timeouts, no client retries)" if timeout is None else "")
        + (" on async def" if is_async else " on def, one thread per caller")
    )
    return is_async, cw.cached(ttl=3600, layers=[cw.MemoryLayer(), layer]), config


CONTENDERS: dict[str, Callable[[int], tuple[bool, Any, str]]] = {
    "cacheward": _cacheward,
    "cacheward async": lambda port: _cacheward(port, is_async=True),
    "cacheward timeout=0.05": lambda port: _cacheward(port, timeout=0.05),
    **{name: make for name, make in OUTAGE_CONTENDERS.items() if name != "cacheward"},
}


def _warm(is_async: bool, fn: Any) -> None:
    if is_async:
        loop = h.new_loop()
        try:
            for k in range(KEYS):
                loop.run_until_complete(fn(k))
        finally:
            h.close_loop(loop)
    else:
        for k in range(KEYS):
            fn(k)


def one_run(server: Any, name: str, mode: str, settings: dict[str, Any]) -> dict[str, Any]:
    """One contender under one fault; every raw figure.

    The contenders' asyncio clients are left on event loops that the load closes (none of the
    peers' decorators exposes its client to close); their finalizers' ResourceWarnings are
    silenced here, and collected before this returns, so they cannot fail a later test.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        row = _one_run(server, name, mode, settings)
        gc.collect()
    return row


def _one_run(server: Any, name: str, mode: str, settings: dict[str, Any]) -> dict[str, Any]:
    make = CONTENDERS[name]
    server.restart()
    is_async, decorate, config = make(server.port)
    warm = _backend()
    _warm(is_async, decorate(warm.coro() if is_async else warm.sync()))
    _, decorate, _ = make(server.port)  # a fresh instance: nothing in its memory
    backend = _backend()
    fn = decorate(backend.coro() if is_async else backend.sync())
    if mode == "refused":
        server.kill()
    else:
        server.pause()
    started = time.perf_counter()
    try:
        load = async_load if is_async else thread_load
        calls = load(fn, settings["rate"], settings["duration"], keys=KEYS, expected=_answer)
    finally:
        if mode == "hung":
            server.resume()
    latencies = [lat for lat, _ in calls]
    errors = sum(1 for _, ok in calls if not ok)
    row: dict[str, Any] = {
        "config": config,
        "callers": len(calls),
        "served": len(calls) - errors,
        "backend_calls": backend.calls,
        "amplification": backend.calls / KEYS,
        "errors": errors,
        "error_rate": errors / max(1, len(calls)),
        "p50": h.percentile(latencies, 50),
        "p99": h.percentile(latencies, 99),
        "max": max(latencies, default=float("nan")),
        "run_seconds": time.perf_counter() - started,
    }
    stats = getattr(fn, "stats", None)
    if callable(stats):
        s = stats()
        row["cacheward_stats"] = {
            "fetches": s.fetches,
            "hits": s.hits,
            "coalesced_waits": s.coalesced_waits,
            "layer_errors": s.layer_errors,
            "layer_skips": s.layer_skips,
        }
    return row


def measure(modes: tuple[str, ...], settings: dict[str, Any]) -> dict[str, Any]:
    from tests.servers import RedisServer

    # The peers log a traceback per failed Redis call; the benchmark counts failures instead.
    for name in ("cashews", "aiocache", "dogpile", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    results: dict[str, Any] = {mode: {} for mode in modes}
    skipped: dict[str, str] = {}
    with RedisServer.started() as server:
        for mode in modes:
            for name in CONTENDERS:
                if h.smoke() and (
                    name.startswith("dogpile") or (mode == "hung" and "cacheward" not in name)
                ):
                    skipped[f"{name} ({mode})"] = "left out of smoke runs (its waits take seconds)"
                    continue
                print(f"  {mode}: {name} ...", file=sys.stderr, flush=True)
                try:
                    results[mode][name] = one_run(server, name, mode, settings)
                except ImportError as exc:
                    skipped[name] = f"not installed ({exc.name})"
    return {
        "settings": {
            **settings,
            "keys": KEYS,
            "backend_latency": BACKEND_LATENCY,
            "call_timeout": CALL_TIMEOUT,
        },
        "modes": results,
        "skipped": skipped,
    }


def refused_outage(*, quick: bool) -> dict[str, Any]:
    """The refused-Redis run in the shape ``benchmarks/peers.py`` reports."""
    figures = measure(("refused",), _settings(quick))
    return {
        "settings": figures["settings"],
        "rows": figures["modes"]["refused"],
        "skipped": figures["skipped"],
        "source": "benchmarks.outage.refused_outage (warm Redis, then SIGKILL)",
    }


def report(figures: dict[str, Any]) -> None:
    s = figures["settings"]
    for mode, rows in figures["modes"].items():
        h.print_table(
            f"Redis {mode}: {s['rate']} callers/s for {s['duration']} s over {s['keys']} warm "
            f"keys, backend {s['backend_latency'] * 1e3:.0f} ms (ideal: {s['keys']} backend "
            "calls, every caller served)",
            ["contender", "backend calls", "x ideal", "served", "p50", "p99", "max"],
            [
                [
                    name,
                    row["backend_calls"],
                    h.fmt_ratio(row["amplification"]),
                    f"{row['served']} / {row['callers']}",
                    h.fmt_ns(row["p50"]),
                    h.fmt_ns(row["p99"]),
                    h.fmt_ns(row["max"]),
                ]
                for name, row in sorted(rows.items(), key=lambda kv: kv[1]["backend_calls"])
            ],
        )
    first = next(iter(figures["modes"].values()), {})
    for name, row in first.items():
        print(f"  {name}: {row['config']}")
    for name, why in figures["skipped"].items():
        print(f"  skipped {name}: {why}")
    for label, target in figures["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"  target {label}: {target['value']} {verdict}")


def run(*, quick: bool) -> dict[str, object]:
    """Both faults for every contender; print the tables and return every raw figure."""
    figures = measure(MODES, _settings(quick))
    targets = {}
    for mode in MODES:
        row = figures["modes"][mode].get("cacheward")
        if row is None:
            continue
        targets[f"cacheward {mode}"] = {
            "value": (
                f"{row['backend_calls']} backend calls, {row['served']}/{row['callers']} served, "
                f"p99 {h.fmt_ns(row['p99'])}"
            ),
            "met": row["backend_calls"] <= KEYS and row["errors"] == 0 and row["p99"] <= P99_TARGET,
        }
    figures["targets"] = targets
    figures["machine"] = h.machine()
    figures["versions"] = h.versions("cacheward", "redis", "cashews", "aiocache", "dogpile.cache")
    report(figures)
    return figures
