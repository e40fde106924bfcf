"""cacheward vs every peer, in one run: hit latency, cold-key stampede and a Redis-down outage.

``python -m benchmarks peers [--quick] [--json PATH]``

Three sections, each interleaved across the contenders, then one summary table of ratios:

1. **hits**: :mod:`benchmarks.hits` (same contenders, same method);
2. **stampede**: :mod:`benchmarks.stampede` (1000 tasks / 50 threads on a cold key, 50 ms backend);
3. **outage**: Redis refuses connections (the clients point at a closed loopback port) while
   200 callers per second ask for 10 keys for 5 s, backend 20 ms. A perfect cache needs 10
   backend calls (one per key). For each Redis-backed contender we count backend calls, caller
   errors and caller latency. If ``benchmarks/outage.py`` provides ``refused_outage`` it is used;
   otherwise the simple run below.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks import _harness as h
from benchmarks import hits, stampede
from benchmarks._peerlibs import TTL, cacheward_missing

#: The summary: one row per (library, configuration), and which rows of each section it uses.
SUMMARY: list[tuple[str, dict[str, str | None]]] = [
    ("cacheward", {"sync": "cacheward", "async": "cacheward async", "outage": "cacheward"}),
    (
        "cachetools (lock=)",
        {"sync": "cachetools TTLCache lock=", "async": None, "outage": None},
    ),
    (
        "cachetools (condition=)",
        {"sync": "cachetools TTLCache condition=", "async": None, "outage": None},
    ),
    (
        "cachebox",
        {"sync": "cachebox TTLCache", "async": "cachebox TTLCache async", "outage": None},
    ),
    ("async-lru", {"sync": None, "async": "async-lru", "outage": None}),
    ("cashews", {"sync": None, "async": "cashews mem", "outage": "cashews redis"}),
    ("aiocache", {"sync": None, "async": "aiocache memory", "outage": "aiocache redis"}),
    ("dogpile.cache", {"sync": "dogpile.cache memory", "async": None, "outage": "dogpile redis"}),
]

BACKEND_LATENCY = 0.02
KEYS = 10
#: No caller is waited for longer than this; a caller still waiting is counted as an error.
CALL_TIMEOUT = 15.0


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rate": 100, "duration": 0.3}
    if quick:
        return {"rate": 200, "duration": 2.0}
    return {"rate": 200, "duration": 5.0}


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed): connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


class _Backend:
    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def _count(self) -> None:
        with self._lock:
            self.calls += 1

    def sync(self) -> Callable[[int], dict[str, int]]:
        def fetch(k: int) -> dict[str, int]:
            self._count()
            time.sleep(BACKEND_LATENCY)
            return {"key": k}

        return fetch

    def coro(self) -> Callable[[int], Any]:
        async def fetch(k: int) -> dict[str, int]:
            self._count()
            await asyncio.sleep(BACKEND_LATENCY)
            return {"key": k}

        return fetch


# ------------------------------------------------------------------ Redis-backed contenders


def _cacheward_outage(port: int) -> tuple[bool, Any, str]:
    import cacheward as cw

    layers: list[Any] = [cw.MemoryLayer()]
    config = f"cw.cached(ttl={TTL}, layers=[MemoryLayer()"
    redis_layer = getattr(cw, "RedisLayer", None)
    if redis_layer is None:  # before the Redis layer was exported
        from cacheward import _redis

        redis_layer = getattr(_redis, "RedisLayer", None)
    if redis_layer is not None:
        layers.append(redis_layer.from_url(f"redis://127.0.0.1:{port}/0"))
        config += ', RedisLayer.from_url("redis://...")]) (defaults: 0.25 s timeouts, no retries)'
    else:
        config += "]) - no RedisLayer in this version, so no L2"
    return True, cw.cached(ttl=TTL, layers=layers), config


def _cashews_outage(port: int) -> tuple[bool, Any, str]:
    from cashews import Cache

    cache = Cache()
    cache.setup(f"redis://127.0.0.1:{port}/0")
    return (
        True,
        cache(ttl=TTL),
        f'Cache().setup("redis://...") (defaults: suppress=True, socket_timeout=1); '
        f"@cache(ttl={TTL})",
    )


def _aiocache_outage(port: int) -> tuple[bool, Any, str]:
    import aiocache

    # aiocache logs a traceback per failed get/set; the benchmark counts them instead.
    logging.getLogger("aiocache").setLevel(logging.CRITICAL)
    return (
        True,
        aiocache.cached(ttl=TTL, cache=aiocache.Cache.REDIS, endpoint="127.0.0.1", port=port),
        f"aiocache.cached(ttl={TTL}, cache=Cache.REDIS, endpoint=..., port=...) "
        "(default timeout=5)",
    )


def _dogpile_outage(port: int) -> tuple[bool, Any, str]:
    from dogpile.cache import make_region

    region = make_region().configure(
        "dogpile.cache.redis",
        expiration_time=TTL,
        arguments={
            "host": "127.0.0.1",
            "port": port,
            "db": 0,
            "redis_expiration_time": TTL * 2,
            "distributed_lock": True,
            "thread_local_lock": False,
            "socket_timeout": 1,
        },
    )
    return (
        False,
        region.cache_on_arguments(),
        "dogpile.cache.redis as in its docs: redis_expiration_time, distributed_lock=True, "
        "thread_local_lock=False, plus socket_timeout=1",
    )


OUTAGE_CONTENDERS: dict[str, Callable[[int], tuple[bool, Any, str]]] = {
    "cacheward": _cacheward_outage,
    "cashews redis": _cashews_outage,
    "aiocache redis": _aiocache_outage,
    "dogpile redis": _dogpile_outage,
}


def _async_load(fn: Callable[[int], Any], rate: int, duration: float) -> list[tuple[float, bool]]:
    async def one(k: int) -> tuple[float, bool]:
        start = time.perf_counter()
        try:
            value = await asyncio.wait_for(fn(k), CALL_TIMEOUT)
            ok = value == {"key": k}
        except Exception:
            ok = False
        return time.perf_counter() - start, ok

    async def load() -> list[tuple[float, bool]]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        tasks = []
        for i in range(int(rate * duration)):
            delay = start + i / rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i % KEYS)))
        return list(await asyncio.gather(*tasks))

    loop = h.new_loop()
    try:
        return loop.run_until_complete(load())
    finally:
        h.close_loop(loop)


def _thread_load(fn: Callable[[int], Any], rate: int, duration: float) -> list[tuple[float, bool]]:
    results: list[tuple[float, bool]] = []
    lock = threading.Lock()

    def one(k: int) -> None:
        start = time.perf_counter()
        try:
            ok = fn(k) == {"key": k}
        except Exception:
            ok = False
        with lock:
            results.append((time.perf_counter() - start, ok))

    threads = []
    start = time.perf_counter()
    for i in range(int(rate * duration)):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(i % KEYS,), daemon=True)
        t.start()
        threads.append(t)
    deadline = time.perf_counter() + CALL_TIMEOUT
    for t in threads:
        t.join(max(0.0, deadline - time.perf_counter()))
    with lock:
        finished = list(results)
    # A caller still blocked at the deadline is an error that took at least CALL_TIMEOUT.
    finished.extend((CALL_TIMEOUT, False) for _ in range(len(threads) - len(finished)))
    return finished


def own_refused_outage(quick: bool) -> dict[str, Any]:
    """Redis refused: every Redis-backed contender under the same load; every raw figure."""
    settings = _settings(quick)
    port = closed_port()
    rows: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, make in OUTAGE_CONTENDERS.items():
        if name == "cacheward" and (why := cacheward_missing()) is not None:
            skipped[name] = why
            continue
        if name == "dogpile redis" and h.smoke():
            skipped[name] = "left out of smoke runs (its redis-py retries take ~5 s per caller)"
            continue
        try:
            is_async, decorate, config = make(port)
        except ImportError as exc:
            skipped[name] = f"not installed ({exc.name})"
            continue
        backend = _Backend()
        fn = decorate(backend.coro() if is_async else backend.sync())
        print(f"  outage: {name} ...", file=sys.stderr, flush=True)
        started = time.perf_counter()
        load = _async_load if is_async else _thread_load
        calls = load(fn, settings["rate"], settings["duration"])
        latencies = [lat for lat, _ in calls]
        errors = sum(1 for _, ok in calls if not ok)
        rows[name] = {
            "config": config,
            "callers": len(calls),
            "backend_calls": backend.calls,
            "amplification": backend.calls / KEYS,
            "errors": errors,
            "error_rate": errors / max(1, len(calls)),
            "p50": h.percentile(latencies, 50),
            "p99": h.percentile(latencies, 99),
            "max": max(latencies, default=float("nan")),
            "run_seconds": time.perf_counter() - started,
        }
    return {
        "settings": {**settings, "keys": KEYS, "backend_latency": BACKEND_LATENCY, "port": port},
        "rows": rows,
        "skipped": skipped,
        "source": "benchmarks.peers (own refused-Redis run)",
    }


def outage(quick: bool) -> dict[str, Any]:
    """The Redis-down section: ``benchmarks.outage.refused_outage`` if it exists, else our own."""
    try:
        shared = importlib.import_module("benchmarks.outage")
    except ImportError:
        shared = None
    shared_run = getattr(shared, "refused_outage", None)
    if not callable(shared_run):
        return own_refused_outage(quick)
    try:
        result: dict[str, Any] = shared_run(quick=quick)
    except Exception as exc:  # e.g. no redis-server binary to start: run the simple version
        print(f"  outage.refused_outage failed ({exc!r}); running the simple version", flush=True)
        result = own_refused_outage(quick)
        result["source"] += f" after benchmarks.outage failed: {exc!r}"
        return result
    result.setdefault("source", "benchmarks.outage.refused_outage")
    return result


def report_outage(figures: dict[str, Any]) -> None:
    """Print the outage table."""
    s = figures["settings"]
    rows = figures["rows"]
    h.print_table(
        f"Redis refused: {s['rate']} callers/s for {s['duration']} s over {s['keys']} keys, "
        f"backend {s['backend_latency'] * 1e3:.0f} ms (ideal: {s['keys']} backend calls)",
        ["contender", "backend calls", "x ideal", "errors", "p50", "p99"],
        [
            [
                name,
                row["backend_calls"],
                h.fmt_ratio(row["amplification"]),
                f"{row['errors']} / {row['callers']}",
                h.fmt_ns(row["p50"]),
                h.fmt_ns(row["p99"]),
            ]
            for name, row in sorted(rows.items(), key=lambda kv: kv[1]["backend_calls"])
        ],
    )
    for name, row in rows.items():
        print(f"  {name}: {row['config']}")
    for name, why in figures.get("skipped", {}).items():
        print(f"  skipped {name}: {why}")


def summary(hit: dict[str, Any], storm: dict[str, Any], down: dict[str, Any]) -> list[list[str]]:
    """One row per library: hit ratios, stampede calls and wall ratios, outage figures."""
    out = []
    for label, names in SUMMARY:
        row = [label]
        for group in ("sync", "async"):
            name = names[group]
            found = hit["rows"].get(name) if name else None
            row.append(h.fmt_ratio(found["ratio"]) if found else "-")
        for group in ("async", "sync"):
            name = names[group]
            found = storm["rows"].get(name) if name else None
            row.append(
                f"{found['calls']:.0f} call{'s' if found['calls'] != 1 else ''}, "
                f"{h.fmt_ratio(found['wall_ratio'])}"
                if found
                else "-"
            )
        name = names["outage"]
        found = down["rows"].get(name) if name else None
        if found:
            row.append(
                f"{h.fmt_ratio(found['amplification'])} ideal, p99 {h.fmt_ns(found['p99'])}, "
                f"{100 * found['error_rate']:.0f}% errors"
            )
        else:
            row.append("no Redis layer" if name is None else "-")
        out.append(row)
    return out


def run(*, quick: bool) -> dict[str, object]:
    """All three sections, then the summary; print and return every figure."""
    print("hits ...", file=sys.stderr, flush=True)
    hit = hits.measure(quick=quick)
    hit["targets"] = {}
    print("stampede ...", file=sys.stderr, flush=True)
    storm = stampede.measure(quick=quick)
    storm["targets"] = stampede.targets(storm["rows"])
    print("outage ...", file=sys.stderr, flush=True)
    down = outage(quick)
    hits.report(hit)
    stampede.report(storm)
    report_outage(down)
    table = summary(hit, storm, down)
    h.print_table(
        "cacheward vs the peers",
        [
            "library",
            "hit sync (x lru_cache)",
            "hit async (x await)",
            "stampede tasks (calls, wall)",
            "stampede threads (calls, wall)",
            "Redis refused (calls x ideal)",
        ],
        table,
    )
    return {
        "hits": hit,
        "stampede": storm,
        "outage": down,
        "summary": table,
        "machine": h.machine(),
        "versions": h.versions(
            "cacheward",
            "cachetools",
            "cachebox",
            "async-lru",
            "cashews",
            "aiocache",
            "dogpile.cache",
            "redis",
        ),
    }
