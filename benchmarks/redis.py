"""The Redis layer (L2): hit cost next to raw redis-py, and a cross-process cold-key stampede.

``python -m benchmarks redis [--quick] [--json PATH]``

1. **L2 hit**: ``cw.cached(layers=[cw.RedisLayer.from_url(url)])`` on a small JSON value, so
   every call misses in-process and hits Redis, timed in interleaved rounds against the floor
   it cannot beat: a raw redis-py ``GET`` plus ``json.loads`` on the same server, through a
   client with the same settings. Sync and asyncio. Targets: <= 1.15x sync, <= 1.10x async.
2. **Cross-process stampede**: 8 processes (10 threads each) call one cold key at the same
   moment; the backend sleeps ``LATENCY``. Counted: backend calls (target 1) and the wall time
   from the common start to the last caller served (target <= backend latency + 15 ms).

Everything runs against a private ``redis-server`` on a free loopback port (stopped by PID).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import sys
import threading
import time
from typing import Any

from benchmarks import _harness as h

HIT_TARGET = 1.15
ASYNC_HIT_TARGET = 1.10
#: The stampede's backend latency and the slack allowed on top of it.
LATENCY = 0.1
SLACK = 0.015
VALUE = {"id": 1, "name": "customer-1", "plan": "pro", "limits": [10, 20, 30], "active": True}


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 3, "block_seconds": 0.002, "repeat": 1, "stampedes": 1, "processes": 2}
    if quick:
        return {"rounds": 11, "block_seconds": 0.05, "repeat": 2, "stampedes": 3, "processes": 8}
    return {"rounds": 21, "block_seconds": 0.1, "repeat": 3, "stampedes": 10, "processes": 8}


def _raw_options(*, asynchronous: bool = False) -> dict[str, Any]:
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_timeout": 0.25,
        "socket_connect_timeout": 0.25,
        "retry": (AsyncRetry if asynchronous else Retry)(NoBackoff(), 0),
        "health_check_interval": 0,
    }


# --------------------------------------------------------------------------- L2 hit


def hit_contenders(url: str) -> tuple[list[h.Contender], list[Any]]:
    """The contenders (warmed, checked) and what to close afterwards."""
    import redis
    import redis.asyncio

    import cacheward as cw

    closers: list[Any] = []
    raw = redis.Redis.from_url(url, **_raw_options())
    raw_key = "bench:raw:{1}"
    raw.set(raw_key, json.dumps(VALUE, separators=(",", ":")))
    closers.append(raw.close)
    get = raw.get
    loads = json.loads

    def raw_get(key: str) -> Any:
        return loads(get(key))

    layer = cw.RedisLayer.from_url(url, namespace="bench")
    closers.append(layer.close)
    calls = [0]

    @cw.cached(ttl=3600, layers=[layer], namespace="l2hit")
    def load(customer: int) -> dict[str, Any]:
        calls[0] += 1
        return dict(VALUE)

    assert raw_get(raw_key) == VALUE
    assert load(1) == VALUE
    assert load(1) == VALUE
    assert calls[0] == 1, "the L2 hit benchmark reached the backend after warm-up"
    key = cw.CacheKey(1, "l2hit:v1", (1,), {}, ("customer",))
    layer_get = layer.get
    for _ in range(200):  # the write runs after the caller was answered: wait for it (≤ 1 s)
        if layer_get(key) is not None:
            break
        time.sleep(0.005)
    assert layer_get(key) is not None

    # Async: each contender on its own loop, its client made on that loop.
    raw_loop, cg_loop = h.new_loop(), h.new_loop()
    araw = redis.asyncio.Redis.from_url(url, **_raw_options(asynchronous=True))

    async def araw_get(key: str) -> Any:
        return loads(await araw.get(key))

    assert raw_loop.run_until_complete(araw_get(raw_key)) == VALUE

    @cw.cached(ttl=3600, layers=[layer], namespace="l2hit-async")
    async def aload(customer: int) -> dict[str, Any]:
        calls[0] += 1
        return dict(VALUE)

    assert cg_loop.run_until_complete(aload(1)) == VALUE
    assert cg_loop.run_until_complete(aload(1)) == VALUE
    assert calls[0] == 2, "the async L2 hit benchmark reached the backend after warm-up"

    async def drain() -> None:
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if others:
            await asyncio.wait(others, timeout=5)

    def close_async() -> None:
        raw_loop.run_until_complete(araw.aclose())
        cg_loop.run_until_complete(drain())
        cg_loop.run_until_complete(layer.aclose())
        for loop in (raw_loop, cg_loop):
            asyncio.set_event_loop(loop)
            h.close_loop(loop)

    closers.insert(0, close_async)
    contenders = [
        h.Contender(
            "redis-py GET + json.loads",
            "sync",
            raw_get,
            raw_key,
            config="redis.Redis(socket_timeout=0.25, retries off) + hiredis",
            reference=True,
        ),
        h.Contender(
            "cacheward L2 hit",
            "sync",
            load,
            1,
            config="cw.cached(ttl=3600, layers=[cw.RedisLayer.from_url(url)])",
        ),
        h.Contender(
            "RedisLayer.get",
            "sync",
            layer_get,
            key,
            config="the layer alone: GET + envelope check + json.loads",
        ),
        h.Contender(
            "redis.asyncio GET + json.loads",
            "async",
            araw_get,
            raw_key,
            is_async=True,
            config="redis.asyncio.Redis(socket_timeout=0.25, retries off)",
            reference=True,
            loop=raw_loop,
        ),
        h.Contender(
            "cacheward L2 hit async",
            "async",
            aload,
            1,
            is_async=True,
            config="same, on an async def function",
            loop=cg_loop,
        ),
    ]
    return contenders, closers


def measure_hits(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    contenders, closers = hit_contenders(url)
    try:
        result = h.interleaved_rounds(
            contenders,
            rounds=settings["rounds"],
            block_seconds=settings["block_seconds"],
            repeat=settings["repeat"],
            progress=lambda done, total: h.progress("L2 hit: round", done, total),
        )
    finally:
        for close in closers:
            close()
    rows = {
        c.name: {
            "group": c.group,
            "config": c.config,
            "median_ns": result.median_ns(c.name),
            "ratio": result.median_ratio(c.name),
            "ratio_p99": h.percentile(result.ratios[c.name], 99),
        }
        for c in contenders
    }
    return {"rows": rows, "raw": result.as_dict()}


# --------------------------------------------------------------------------- stampede


def _stampede_worker(
    url: str, barrier: Any, counter: Any, results: Any, *, rounds: int, threads: int
) -> None:
    import cacheward as cw

    layer = cw.RedisLayer.from_url(url, namespace="bench-stampede")

    @cw.cached(ttl=3600, layers=[cw.MemoryLayer(maxsize=1000), layer], namespace="storm")
    def load(key: str) -> dict[str, Any]:
        with counter.get_lock():
            counter.value += 1
        time.sleep(LATENCY)
        return {"key": key, "pid": os.getpid()}

    load(f"warm-up-{os.getpid()}")  # connections and scripts ready, as in a running service
    for r in range(rounds):
        key = f"cold-{r}"  # a fresh private server: every round's key is cold
        served: list[float] = []
        gate = threading.Barrier(threads)

        def call(
            key: str = key, gate: threading.Barrier = gate, served: list[float] = served
        ) -> None:
            gate.wait()
            load(key)
            served.append(time.time())

        barrier.wait()
        started = time.time()
        pool = [threading.Thread(target=call) for _ in range(threads)]
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=30)
        results.put((r, started, max(served, default=float("nan")), len(served)))
    stats = load.stats()
    results.put(("stats", stats.lease_waits, stats.fetches, layer.events()))
    layer.close()


def measure_stampede(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    processes = settings["processes"]
    rounds = settings["stampedes"]
    threads = 10
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["cacheward", "redis", "benchmarks.redis"])
    barrier = ctx.Barrier(processes)
    counter = ctx.Value("i", 0)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_stampede_worker,
            args=(url, barrier, counter, results),
            kwargs={"rounds": rounds, "threads": threads},
        )
        for _ in range(processes)
    ]
    for proc in procs:
        proc.start()
    per_round: dict[int, list[tuple[float, float, int]]] = {r: [] for r in range(rounds)}
    stats: list[Any] = []
    for _ in range(processes * (rounds + 1)):
        item = results.get(timeout=120)
        if item[0] == "stats":
            stats.append(item[1:])
        else:
            per_round[item[0]].append(item[1:])
    for proc in procs:
        proc.join(timeout=30)
    total_calls = counter.value - processes  # minus each process's warm-up fetch
    walls = []
    served = 0
    for r in range(rounds):
        starts = [s for s, _, _ in per_round[r]]
        ends = [e for _, e, _ in per_round[r]]
        served += sum(n for _, _, n in per_round[r])
        walls.append(max(ends) - min(starts))
    return {
        "processes": processes,
        "threads_per_process": threads,
        "rounds": rounds,
        "backend_latency": LATENCY,
        "backend_calls": total_calls,
        "backend_calls_per_round": total_calls / rounds,
        "callers_served": served,
        "callers": processes * threads * rounds,
        "wall_seconds": walls,
        "wall_median": h.median(walls),
        "wall_max": max(walls),
        "lease_waits": sum(s[0] for s in stats),
        "layer_events": [s[2] for s in stats],
    }


# --------------------------------------------------------------------------- report


def report(figures: dict[str, Any]) -> None:
    rows = figures["hits"]["rows"]
    for group in ("sync", "async"):
        members = [name for name, row in rows.items() if row["group"] == group]
        h.print_table(
            f"L2 hit, {group} (median of {figures['settings']['rounds']} interleaved rounds; "
            "ratio to the raw client in the same round)",
            ["contender", "per call", "ratio", "p99 of ratio"],
            [
                [
                    name,
                    h.fmt_ns(rows[name]["median_ns"] / 1e9),
                    h.fmt_ratio(rows[name]["ratio"]),
                    h.fmt_ratio(rows[name]["ratio_p99"]),
                ]
                for name in members
            ],
        )
    s = figures["stampede"]
    h.print_table(
        f"Cross-process cold-key stampede: {s['processes']} processes x "
        f"{s['threads_per_process']} threads, backend {s['backend_latency'] * 1e3:.0f} ms, "
        f"{s['rounds']} rounds",
        ["backend calls / round", "callers served", "wall median", "wall max"],
        [
            [
                f"{s['backend_calls_per_round']:.2f}",
                f"{s['callers_served']} / {s['callers']}",
                h.fmt_ns(s["wall_median"]),
                h.fmt_ns(s["wall_max"]),
            ]
        ],
    )
    for label, target in figures["targets"].items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"  target {label}: {target['value']} (target {target['target']}) {verdict}")


def run(*, quick: bool) -> dict[str, object]:
    """Measure L2 hits and the cross-process stampede on a private redis-server."""
    from tests.servers import RedisServer

    settings = _settings(quick)
    with RedisServer.started() as server:
        print("L2 hits ...", file=sys.stderr, flush=True)
        hits = measure_hits(server.url, settings)
        print("cross-process stampede ...", file=sys.stderr, flush=True)
        storm = measure_stampede(server.url, settings)
    sync_ratio = hits["rows"]["cacheward L2 hit"]["ratio"]
    async_ratio = hits["rows"]["cacheward L2 hit async"]["ratio"]
    figures: dict[str, Any] = {
        "settings": settings,
        "hits": hits,
        "stampede": storm,
        "targets": {
            "L2 hit sync (x raw GET + json.loads)": {
                "value": h.fmt_ratio(sync_ratio),
                "target": f"<= {HIT_TARGET}x",
                "met": sync_ratio <= HIT_TARGET,
            },
            "L2 hit async (x raw GET + json.loads)": {
                "value": h.fmt_ratio(async_ratio),
                "target": f"<= {ASYNC_HIT_TARGET}x",
                "met": async_ratio <= ASYNC_HIT_TARGET,
            },
            "stampede backend calls per round": {
                "value": f"{storm['backend_calls_per_round']:.2f}",
                "target": "1",
                "met": storm["backend_calls_per_round"] == 1,
            },
            "stampede wall (median)": {
                "value": h.fmt_ns(storm["wall_median"]),
                "target": f"<= {h.fmt_ns(LATENCY + SLACK)}",
                "met": storm["wall_median"] <= LATENCY + SLACK,
            },
        },
        "machine": h.machine(),
        "versions": h.versions("cacheward", "redis", "hiredis"),
    }
    report(figures)
    return figures
