"""Backend protection: what guard() costs on a hit, what a token costs, and the retry storm.

``python -m benchmarks protect [--quick] [--json PATH]``

1. **Fresh-hit overhead** of ``cw.guard(...)`` against ``cw.cached(...)`` alone, the same
   function shape, sync and async, in interleaved rounds (median of same-round ratios).
   Target: <= 1.10x.
2. **A token take**: ``TokenBucket.reserve(0)`` (and a ``rate_limit``-decorated no-op against the
   bare no-op), per call, interleaved with a plain Python call as the reference.
   Target: <= 1 us per take.
3. **A Redis take**: ``RedisTokenBucket.reserve(0)`` against a raw redis-py ``GET`` on the same
   client (one round trip), interleaved. Expected: about one round trip. Skipped without Redis.
4. **The retry storm**: a backend that fails 50 % of calls (seeded, the same sequence for
   everyone) for 10 s under a steady 200 requests/s, behind plain tenacity
   (``stop_after_attempt(5)``), stamina's defaults (10 attempts; its test mode switches off the
   back-off sleeps) and ``cw.retry(attempts=5)`` with ``cw.RetryBudget(ratio=0.2,
   min_per_second=10)``. Time is simulated (the real retry code runs; sleeps take no time and
   requests arrive every 5 ms of simulated time), so the run is exact and takes well under a
   second. Target for cacheward: attempts per request <= 1 + ratio + floor / request rate
   = 1.25. A second scenario has the backend fail every call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any

import cacheward as cw
from benchmarks import _harness as h

HIT_TARGET = 1.10
TAKE_TARGET_NS = 1000.0
RATIO, FLOOR, WINDOW = 0.2, 10.0, 10.0
ARG = 1


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 3, "block_seconds": 0.0005, "repeat": 1, "storm_seconds": 10.0}
    if quick:
        return {"rounds": 11, "block_seconds": 0.01, "repeat": 3, "storm_seconds": 10.0}
    return {"rounds": 31, "block_seconds": 0.03, "repeat": 3, "storm_seconds": 10.0}


# --------------------------------------------------------------------------- 1. hit overhead


def _hit_contenders() -> list[h.Contender]:
    @cw.cached(ttl=3600, jitter=0)
    def cached_fn(k: int) -> int:
        return k * 2

    @cw.guard(ttl=3600, jitter=0)
    def guard_fn(k: int) -> int:
        return k * 2

    @cw.cached(ttl=3600, jitter=0)
    async def acached_fn(k: int) -> int:
        return k * 2

    @cw.guard(ttl=3600, jitter=0)
    async def aguard_fn(k: int) -> int:
        return k * 2

    cached_fn(ARG)
    guard_fn(ARG)

    async def warm() -> None:
        await acached_fn(ARG)
        await aguard_fn(ARG)

    asyncio.run(warm())
    return [
        h.Contender("cached", "sync", cached_fn, ARG, config="cw.cached(ttl=3600)", reference=True),
        h.Contender("guard", "sync", guard_fn, ARG, config="cw.guard(ttl=3600)"),
        h.Contender(
            "cached async",
            "async",
            acached_fn,
            ARG,
            is_async=True,
            reference=True,
            config="cw.cached(ttl=3600)",
        ),
        h.Contender(
            "guard async", "async", aguard_fn, ARG, is_async=True, config="cw.guard(ttl=3600)"
        ),
    ]


# --------------------------------------------------------------------------- 2. local takes


def _noop(arg: object) -> object:
    return arg


def _take_contenders() -> list[h.Contender]:
    bucket = cw.TokenBucket(rate=1e15, burst=1e15)  # never empty: we time the take itself
    limited_bucket = cw.TokenBucket(rate=1e15, burst=1e15)
    limited = cw.rate_limit(limited_bucket, max_wait=0)(_noop)
    return [
        h.Contender("python call", "take", _noop, 0.0, config="def f(x): return x", reference=True),
        h.Contender("TokenBucket.reserve(0)", "take", bucket.reserve, 0.0, config="rate=1e15"),
        h.Contender("rate_limit(f)(x)", "take", limited, 0.0, config="max_wait=0"),
    ]


#: The miss rows time the path, not token waits: with the default bucket (rate 100, burst 100)
#: a block of more than 100 calls waited for tokens (one quick run showed 6.25 ms a miss).
FULL_CONFIG = "cw.guard(ttl=0, limiter=TokenBucket(rate=1e15, burst=1e15))"


def _full() -> Any:
    return cw.TokenBucket(rate=1e15, burst=1e15)


def _miss_contenders() -> list[h.Contender]:
    """The miss path without I/O: ``ttl=0`` (nothing is kept), a backend that returns at once,
    a bucket that never runs dry; every call leads a fetch through the whole stack."""

    async def _anoop(arg: object) -> object:
        return arg

    return [
        h.Contender("python call (miss)", "miss", _noop, 0, config="def f(x)", reference=True),
        h.Contender("cached miss", "miss", cw.cached(ttl=0)(_noop), 0, config="ttl=0"),
        h.Contender(
            "guard miss", "miss", cw.guard(ttl=0, limiter=_full())(_noop), 0, config=FULL_CONFIG
        ),
        h.Contender("await coroutine (miss)", "amiss", _anoop, 0, is_async=True, reference=True),
        h.Contender(
            "guard miss async",
            "amiss",
            cw.guard(ttl=0, limiter=_full())(_anoop),
            0,
            is_async=True,
            config=FULL_CONFIG,
        ),
    ]


# --------------------------------------------------------------------------- 3. Redis takes


def _redis_contenders() -> tuple[list[h.Contender], Any, str | None]:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry
    except ImportError:
        return [], None, "redis-py is not installed"
    client = redis.Redis.from_url(
        url, socket_timeout=1, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0)
    )
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        return [], None, f"no Redis at {url}: {exc}"
    client.set("cacheward-bench:protect:get", b"x")
    bucket = cw.RedisTokenBucket(client, name="bench-protect", rate=1e12, burst=1e12)
    bucket.reserve(0)  # loads the script
    return (
        [
            h.Contender(
                "redis GET",
                "redis",
                client.get,
                "cacheward-bench:protect:get",
                config="raw redis-py, one round trip",
                reference=True,
            ),
            h.Contender("RedisTokenBucket.reserve(0)", "redis", bucket.reserve, 0.0),
        ],
        client,
        None,
    )


# --------------------------------------------------------------------------- 4. retry storm


class _SimClock:
    """Simulated time: requests set it; sleeps take none (the load must stay steady)."""

    def __init__(self) -> None:
        self.now = 0.0

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        return None

    async def asleep(self, seconds: float) -> None:
        return None


class _Backend:
    def __init__(self, failure: float, seed: int) -> None:
        self.failure = failure
        self.rng = random.Random(seed)
        self.attempts = 0

    def __call__(self, key: int) -> int:
        self.attempts += 1
        if self.rng.random() < self.failure:
            raise ConnectionError("backend overloaded")
        return key


def _storm(name: str, failure: float, *, seconds: float, rps: float, seed: int) -> dict[str, float]:
    import tenacity

    clock = _SimClock()
    backend = _Backend(failure, seed)
    restore: Callable[[], None] = lambda: None  # noqa: E731 - a no-op default
    if name == "tenacity stop_after_attempt(5)":
        call: Callable[[int], int] = tenacity.retry(
            stop=tenacity.stop_after_attempt(5), reraise=True, sleep=clock.sleep
        )(backend)
    elif name == "stamina defaults":
        import stamina
        import stamina.instrumentation

        hooks = stamina.instrumentation.get_on_retry_hooks()
        stamina.instrumentation.set_on_retry_hooks([])  # no log line per retry
        testing = stamina.set_testing(True, attempts=10, cap=True)  # no sleeps, attempts kept
        call = stamina.retry(on=ConnectionError)(backend)

        def restore() -> None:
            testing.__exit__(None, None, None)
            stamina.instrumentation.set_on_retry_hooks(hooks)

    else:
        budget = cw.RetryBudget(ratio=RATIO, min_per_second=FLOOR, window=WINDOW, clock=clock)
        call = cw.retry(attempts=5, budget=budget, clock=clock, rng=random.Random(seed))(backend)
    requests = int(seconds * rps)
    failed = 0
    try:
        for i in range(requests):
            clock.now = i / rps
            try:
                call(i)
            except (ConnectionError, cw.RetryBudgetExhausted):
                failed += 1
    finally:
        restore()
    return {
        "requests": requests,
        "attempts": backend.attempts,
        "attempts_per_request": backend.attempts / requests,
        "failed_requests": failed,
    }


STORM_CONTENDERS = ("tenacity stop_after_attempt(5)", "stamina defaults", "cw.retry + budget")


# --------------------------------------------------------------------------- run


def run(*, quick: bool) -> dict[str, object]:
    settings = _settings(quick)
    timing = {k: settings[k] for k in ("rounds", "block_seconds", "repeat")}
    figures: dict[str, Any] = {"settings": settings, "machine": h.machine()}
    figures["versions"] = h.versions("tenacity", "stamina", "redis")

    contenders = _hit_contenders() + _take_contenders() + _miss_contenders()
    redis_rows, client, redis_skip = _redis_contenders()
    contenders += redis_rows
    started = time.perf_counter()
    result = h.interleaved_rounds(
        contenders, **timing, progress=lambda d, t: h.progress("protect", d, t)
    )
    if client is not None:
        client.close()
    figures["raw"] = result.as_dict()
    figures["timing_seconds"] = time.perf_counter() - started
    rows: dict[str, dict[str, Any]] = {
        c.name: {
            "group": c.group,
            "config": c.config,
            "median_ns": result.median_ns(c.name),
            "ratio": result.median_ratio(c.name),
        }
        for c in contenders
    }
    figures["rows"] = rows
    figures["redis_skipped"] = redis_skip
    h.print_table(
        "Per call (median of interleaved rounds; ratio to the same round's reference)",
        ["contender", "group", "median", "ratio"],
        [
            [name, row["group"], h.fmt_ns(row["median_ns"] / 1e9), h.fmt_ratio(row["ratio"])]
            for name, row in rows.items()
        ],
    )
    if redis_skip:
        print(f"Redis take skipped: {redis_skip}")

    storms: dict[str, dict[str, dict[str, float]]] = {}
    rps = 200.0
    logger = logging.getLogger("cacheward")
    level = logger.level
    logger.setLevel(logging.ERROR)  # a warning per spent budget would drown the report
    try:
        for failure in (0.5, 1.0):
            label = f"fail {int(failure * 100)}%"
            storms[label] = {
                name: _storm(name, failure, seconds=settings["storm_seconds"], rps=rps, seed=7)
                for name in STORM_CONTENDERS
            }
    finally:
        logger.setLevel(level)
    storm_target = 1 + RATIO + FLOOR / rps
    figures["storm"] = {"rps": rps, "target_attempts_per_request": storm_target, "runs": storms}
    h.print_table(
        f"Retry storm: {rps:g} requests/s for {settings['storm_seconds']:g} s (simulated time)",
        ["backend", "retrying with", "attempts/request", "failed requests"],
        [
            [label, name, f"{r['attempts_per_request']:.3f}", f"{int(r['failed_requests'])}"]
            for label, runs in storms.items()
            for name, r in runs.items()
        ],
    )

    targets: dict[str, dict[str, Any]] = {
        "guard_hit_sync": {"ratio": rows["guard"]["ratio"], "target": HIT_TARGET},
        "guard_hit_async": {"ratio": rows["guard async"]["ratio"], "target": HIT_TARGET},
        "local_take_ns": {
            "ratio": rows["TokenBucket.reserve(0)"]["median_ns"],
            "target": TAKE_TARGET_NS,
        },
        "storm_attempts_per_request": {
            "ratio": storms["fail 50%"]["cw.retry + budget"]["attempts_per_request"],
            "target": storm_target,
        },
    }
    for target in targets.values():
        target["met"] = target["ratio"] <= target["target"] + 1e-9
    figures["targets"] = targets
    for name, target in targets.items():
        verdict = "met" if target["met"] else "MISSED"
        print(f"target {name}: {target['ratio']:.3f} <= {target['target']:.3f}: {verdict}")
    return figures
