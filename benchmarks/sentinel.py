"""Redis Sentinel failover: how long until reads come back, and what callers wait meanwhile.

``python -m benchmarks sentinel [--quick] [--json PATH]``

Each round starts a master, a replica and ``redis-server --sentinel`` on loopback (quorum 1,
``down-after-milliseconds 400``; tests/sentinel_servers.py), builds
``cw.RedisLayer.from_url("redis+sentinel://...", timeout=0.1)`` under a ``cw.cached`` function
(``breaker_reset=0.5``) and a ``cw.RedisTokenBucket`` on ``cw.redis_client(...)``, and keeps
four threads calling over 10 keys. Then the master is SIGKILLed. Measured from the kill:

* the Sentinel's switch: seconds until it names the replica as the master;
* the first good read: seconds until the layer serves a hit again (from the promoted replica);
* the bucket back on Redis: seconds until the shared bucket leaves its local fallback;
* the callers' latency from the kill to the first good read (p50, p99, max) and their errors
  (a value not returned; expected: none — every call during the switch is a fast miss).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import threading
import time
from typing import Any

from benchmarks import _harness as h

KEYS = 10
THREADS = 4


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 1, "after": 0.5}
    if quick:
        return {"rounds": 2, "after": 1.0}
    return {"rounds": 5, "after": 2.0}


def _round(after: float) -> dict[str, Any]:
    from tests.sentinel_servers import SentinelSetup

    import cacheward as cw

    with SentinelSetup.started() as setup:
        layer = cw.RedisLayer.from_url(setup.url, timeout=0.1, namespace="bench-sentinel")
        bucket = cw.RedisTokenBucket(
            cw.redis_client(setup.url, timeout=0.1),
            name="bench-sentinel",
            rate=10_000,
            burst=10_000,
            probe_interval=0.2,
        )

        @cw.cached(ttl=0.5, layers=[layer], breaker_reset=0.5, backoff=0)
        def fetch(key: str) -> str:
            return key.upper()

        samples: list[tuple[float, float]] = []  # (start, duration) of every call
        errors = [0]
        lock = threading.Lock()
        done = threading.Event()

        def caller(index: int) -> None:
            n = index
            while not done.is_set():
                key = f"k{n % KEYS}"
                n += 1
                started = time.monotonic()
                try:
                    ok = fetch(key) == key.upper()
                except Exception:
                    ok = False
                took = time.monotonic() - started
                with contextlib.suppress(cw.RateLimited):
                    bucket.reserve(0.0)
                with lock:
                    samples.append((started, took))
                    if not ok:
                        errors[0] += 1
                time.sleep(0.002)

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(THREADS)]
        for thread in threads:
            thread.start()
        time.sleep(0.3)  # warm: every key in Redis
        _, switch = setup.fail_over()
        killed_at = time.monotonic() - switch
        hits_at_kill: int | None = None
        first_read: float | None = None
        bucket_back: float | None = None
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:  # bounded: until reads and the bucket are back
            now = time.monotonic()
            hits = layer.events()["hits"]
            if hits_at_kill is None:
                hits_at_kill = hits
            if first_read is None and hits > hits_at_kill:
                first_read = now - killed_at
            if bucket_back is None and bucket.mode == "shared" and bucket.errors > 0:
                bucket_back = now - killed_at
            if first_read is not None and bucket_back is not None:
                break
            time.sleep(0.005)
        time.sleep(after)
        done.set()
        for thread in threads:
            thread.join(30)
        layer.close()
        bucket.client.close()
    window_end = killed_at + (first_read if first_read is not None else 30.0)
    during = [took for started, took in samples if killed_at <= started <= window_end]
    stats = h.summary(during)
    return {
        "switch": switch,
        "first_good_read": first_read,
        "bucket_back": bucket_back,
        "calls_during": len(during),
        "p50": stats.get("p50", float("nan")),
        "p99": stats.get("p99", float("nan")),
        "max_latency": max((took for _, took in samples), default=float("nan")),
        "errors": errors[0],
    }


def _seconds(value: float | None) -> str:
    return "not within 30 s" if value is None else f"{value:.2f} s"


def run(*, quick: bool) -> dict[str, object]:
    """Measure, print the table, return every raw figure."""
    if importlib.util.find_spec("redis") is None or shutil.which("redis-server") is None:
        print("skipped: needs redis-py and redis-server on PATH")
        return {"skipped": "redis-py or redis-server missing"}
    settings = _settings(quick)
    rounds = []
    for index in range(settings["rounds"]):
        h.progress("failovers", index, settings["rounds"])
        print(f"round {index + 1}/{settings['rounds']}: killing the master", flush=True)
        rounds.append(_round(settings["after"]))
    rows = [
        [
            str(i + 1),
            _seconds(r["switch"]),
            _seconds(r["first_good_read"]),
            _seconds(r["bucket_back"]),
            str(r["calls_during"]),
            h.fmt_ns(r["p50"]),
            h.fmt_ns(r["p99"]),
            h.fmt_ns(r["max_latency"]),
            str(r["errors"]),
        ]
        for i, r in enumerate(rounds)
    ]
    h.print_table(
        "Sentinel failover (master SIGKILLed; seconds from the kill; latencies of calls "
        "between the kill and the first good read, max over the whole round)",
        [
            "round",
            "switch",
            "first good read",
            "bucket on Redis",
            "calls",
            "p50",
            "p99",
            "max",
            "errors",
        ],
        rows,
    )
    reads = [r["first_good_read"] for r in rounds if r["first_good_read"] is not None]
    worst = max((r["max_latency"] for r in rounds), default=float("nan"))
    if reads:
        print(
            f"Reads came back {h.median(reads):.2f} s (median) after the master died; no caller "
            f"waited more than {h.fmt_ns(worst)}, and "
            f"{sum(r['errors'] for r in rounds)} calls failed."
        )
    failed = sum(r["errors"] for r in rounds)
    back = all(r["first_good_read"] is not None for r in rounds)
    return {
        "targets": {
            "failover": {
                "value": f"{failed} calls failed; reads back in every round: {back}",
                "target": "no call fails, reads come back within 30 s",
                "met": failed == 0 and back,
            }
        },
        "settings": settings,
        "rounds": rounds,
        "median_first_good_read": h.median(reads),
        "max_latency": worst,
        "machine": h.machine(),
        "versions": h.versions("cacheward", "redis"),
    }
