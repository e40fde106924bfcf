"""The incident replay: both cache layers lost at once, naive stack vs ``cacheward.guard``.

``python -m benchmarks incident [--quick] [--json PATH]`` (also what ``python -m benchmarks``
runs). Several worker processes serve requests for many customers' large, paginated
configurations from a real database (:mod:`benchmarks._db`: SQLite, or PostgreSQL with
``DATABASE_URL``, behind a documented capacity model). The same request stream -- seeded Poisson
arrivals, Zipf-distributed customers -- is replayed against two stacks, one after the other:

* **naive** (:mod:`benchmarks._naive`): cachetools ``TTLCache`` + Redis via redis-py with its
  defaults + tenacity retries + OFFSET pagination restarted on failure;
* **guarded**: ``cw.guard(...)`` over ``[cw.MemoryLayer, cw.RedisLayer]`` with a token bucket
  and a retry budget, rebuilding with keyset pagination through ``cw.collect_pages``.

Timeline of each run: *warm-up* (Redis pre-filled, as for a service that has been up a while)
-> *outage* (Redis killed and every process's in-process cache flushed at the same instant) ->
*recovery* (Redis restarted, empty). The report compares what the database had to do with what
a perfect cache with the same TTL would have had to read (the amplification), and what callers
saw (latency, errors, stale values).

``CACHEWARD_BENCH_SMOKE=1`` runs a tiny version in a few seconds (the test suite uses it);
``CACHEWARD_BENCH_NO_REDIS=1`` runs without L2; ``CACHEWARD_BENCH_REDIS_FAULT=hung`` makes the
outage a hung Redis (SIGSTOP) instead of a dead one; ``CACHEWARD_BENCH_NAIVE_REDIS=timeouts``
gives the naive stack's redis-py client 0.25 s timeouts and no retries (a sensitivity check).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import multiprocessing
import os
import queue
import random
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks._db import OK as Q_OK
from benchmarks._db import TIMEOUT as Q_TIMEOUT
from benchmarks._db import (
    Capacity,
    Database,
    Dataset,
    Meter,
    StatementTimeout,
    Store,
    capacity_dict,
)
from benchmarks._naive import NAIVE_CONFIG, NaiveStack, assemble, built_at
from benchmarks._redisproc import KEY_PREFIX, L2

STACKS = ("naive", "guarded")
ROOT = Path(__file__).resolve().parent.parent

# Request outcomes.
SERVED = 0
RAISED = 1  # the stack raised
LATE = 2  # served, but after the caller's deadline (the caller had given up)
DROPPED = 3  # still queued when the caller's deadline passed; never started
OUTCOME_NAMES = {SERVED: "served", RAISED: "raised", LATE: "late", DROPPED: "dropped"}


@dataclass(frozen=True)
class Scenario:
    """Everything that defines one run; printed in the report and returned in the JSON."""

    name: str
    customers: int
    rows_per_customer: int
    page_size: int
    processes: int
    threads: int
    rate: float  # requests per second, all processes together
    zipf: float  # customer popularity: P(customer k) ~ 1 / (k + 1) ** zipf
    ttl: float
    stale_ttl: float
    warm: float
    outage: float
    recovery: float
    deadline: float  # the caller's deadline (a load balancer's timeout)
    capacity: Capacity = field(default_factory=Capacity)
    seed: int = 20261127
    #: share of the database's keyset-rebuild capacity the guarded stack's limiter allows
    limiter_share: float = 0.5
    grace: float = 1.0  # after the last arrival, how long to let in-flight requests finish

    @property
    def dataset(self) -> Dataset:
        return Dataset(self.customers, self.rows_per_customer, self.page_size)

    @property
    def total(self) -> float:
        return self.warm + self.outage + self.recovery


FULL = Scenario(
    name="full",
    customers=120,
    rows_per_customer=3000,
    page_size=250,
    processes=4,
    threads=20,
    rate=240.0,
    zipf=1.0,
    ttl=40.0,
    stale_ttl=400.0,
    warm=20.0,
    outage=45.0,
    recovery=50.0,
    deadline=5.0,
)
QUICK = dataclasses.replace(
    FULL,
    name="quick",
    customers=40,
    rate=200.0,
    ttl=10.0,
    stale_ttl=100.0,
    warm=8.0,
    outage=12.0,
    recovery=14.0,
)
SMOKE = dataclasses.replace(
    FULL,
    name="smoke",
    customers=8,
    rows_per_customer=400,
    page_size=100,
    processes=2,
    threads=6,
    rate=80.0,
    ttl=2.0,
    stale_ttl=20.0,
    warm=0.6,
    outage=1.4,
    recovery=0.6,
    deadline=2.0,
    grace=0.3,
)


# ---------------------------------------------------------------------------------------------
# The request stream (the same for both stacks).
# ---------------------------------------------------------------------------------------------


def arrivals(sc: Scenario, process: int) -> list[tuple[float, int]]:
    """This process's requests: ``(seconds after start, customer)``, Poisson and Zipf, seeded."""
    rng = random.Random(sc.seed * 1000 + process)
    weights = [1.0 / (k + 1) ** sc.zipf for k in range(sc.customers)]
    cum: list[float] = []
    acc = 0.0
    for w in weights:
        acc += w
        cum.append(acc)
    keys = list(range(sc.customers))
    rng.shuffle(keys)  # popularity unrelated to customer id
    rate = sc.rate / sc.processes
    out: list[tuple[float, int]] = []
    t = rng.expovariate(rate)
    while t < sc.total:
        out.append((t, keys[rng.choices(range(sc.customers), cum_weights=cum)[0]]))
        t += rng.expovariate(rate)
    return out


def prefill_ages(sc: Scenario) -> list[float]:
    """How old each customer's cached entry is when the run starts (uniform in ``[0, ttl)``).

    A service that has been up for a while has entries of every age, so they expire one by one
    during the warm-up, not all together. Both stacks get the same ages.
    """
    rng = random.Random(sc.seed + 1)
    return [rng.uniform(0.0, sc.ttl) for _ in range(sc.customers)]


def perfect_rebuilds(
    sc: Scenario, stamps: dict[int, float] | None, *, lossless: bool = False
) -> list[float]:
    """When a perfect cache with the same TTL and the same layers would have to rebuild.

    One shared layer (while Redis is up; ``stamps`` gives when each pre-filled entry was
    written, in seconds relative to the start, or ``None`` without L2) plus one in-process
    layer per process; both lost at the outage, the shared one back (empty) at recovery. A
    request needs a rebuild when neither holds the key younger than ``ttl``. Each rebuild reads
    ``rows_per_customer`` rows.

    With ``lossless=True``: a cache that loses nothing at all (one shared layer that stays up),
    i.e. only the rebuilds the TTL itself requires -- a stricter reference than any stack that
    loses its layers can reach.
    """
    t_out, t_back = sc.warm, sc.warm + sc.outage
    if lossless:
        t_out = t_back = float("inf")
    l2 = stamps is not None
    events = sorted((t, p, k) for p in range(sc.processes) for t, k in arrivals(sc, p))
    shared: dict[int, float] = dict(stamps) if stamps is not None else {}
    local: list[dict[int, float]] = [{} for _ in range(sc.processes)]
    out: list[float] = []
    lost = back = False
    for t, p, k in events:
        if not lost and t >= t_out:
            lost = True
            shared.clear()
            for d in local:
                d.clear()
        if lost and not back and t >= t_back:
            back = True
            shared.clear()
        l2_up = l2 and (not lost or back)
        seen = local[p].get(k)
        if seen is not None and t < seen + sc.ttl:
            continue
        if l2_up:
            seen = shared.get(k)
            if seen is not None and t < seen + sc.ttl:
                local[p][k] = seen
                continue
        out.append(t)
        local[p][k] = t
        if l2_up:
            shared[k] = t
    return out


# ---------------------------------------------------------------------------------------------
# The guarded stack.
# ---------------------------------------------------------------------------------------------

_STORE: Store | None = None


def keyset_page(customer: int, cursor: str | None, limit: int) -> Any:
    """One keyset page of a customer's configuration, as a ``cw.Page``."""
    import cacheward as cw

    assert _STORE is not None
    rows = _STORE.keyset_page(customer, int(cursor) if cursor else 0, limit)
    return cw.Page(items=rows, next_cursor=str(rows[-1][0]) if len(rows) == limit else None)


def retryable(error: BaseException) -> bool:
    """What the guarded stack retries: statement timeouts, plus cacheward's default rule."""
    import cacheward as cw

    return isinstance(error, StatementTimeout) or cw.is_retryable(error)


def guarded_config(sc: Scenario, *, processes: int) -> dict[str, Any]:
    """The guarded stack's settings, as the report prints them."""
    rebuild_rows = sc.rows_per_customer
    rate = sc.limiter_share * sc.capacity.rows_per_second / rebuild_rows
    return {
        "ttl": sc.ttl,
        "stale_ttl": sc.stale_ttl,
        "limiter_rate_per_s": round(rate, 2),
        "limiter_burst": max(1.0, round(rate, 2)),
        "limiter_local_share": round(1.0 / processes, 3),
        "attempts": 3,
        "retry_on": "StatementTimeout, and cacheward's default (connection errors, timeouts)",
        "budget": "RetryBudget(ratio=0.2, min_per_second=10)",
        "max_wait": "the library default",
        "timeout": sc.deadline,
        "pagination": f"keyset via cw.collect_pages(page_size={sc.page_size}), resume on failure",
        "why_rate": f"{sc.limiter_share:.0%} of the database's capacity in keyset rebuilds "
        f"({sc.capacity.rows_per_second:,.0f} rows/s / {rebuild_rows} rows)",
    }


class GuardedStack:
    """``cw.guard`` over ``[MemoryLayer, RedisLayer]``, rebuilding with keyset pagination."""

    def __init__(self, store: Store, sc: Scenario, *, redis_url: str | None) -> None:
        import cacheward as cw

        global _STORE
        _STORE = store
        self.sc = sc
        self.components: list[str] = ["guard", "collect_pages"]
        self.memory = cw.MemoryLayer(maxsize=4096)
        layers: list[Any] = [self.memory]
        self.client: Any = None
        if redis_url is not None:
            layers.append(cw.RedisLayer.from_url(redis_url, prefix=KEY_PREFIX + "cacheward"))
            self.components.append("RedisLayer")
        cfg = guarded_config(sc, processes=sc.processes)
        namespace = KEY_PREFIX + "guarded"
        page_size = sc.page_size

        def rebuild(customer: int) -> str:
            items = cw.collect_pages(functools.partial(keyset_page, customer), page_size=page_size)
            return assemble(customer, items)

        rebuild.__qualname__ = "incident.config"
        self.fn = cw.guard(
            ttl=sc.ttl,
            stale_ttl=sc.stale_ttl,
            layers=layers,
            limiter=self._limiter(cw, cfg, redis_url),
            attempts=3,
            budget=cw.RetryBudget(ratio=0.2, min_per_second=10),
            retry_on=retryable,
            namespace=namespace,
            timeout=sc.deadline,
        )(rebuild)
        self.get = self.fn

    def _limiter(self, cw: Any, cfg: dict[str, Any], redis_url: str | None) -> Any:
        if redis_url is not None:
            import redis

            self.client = redis.Redis.from_url(
                redis_url, socket_timeout=0.25, socket_connect_timeout=0.25
            )
            self.components.append("RedisTokenBucket")
            # fallback_share: the documented advice, 1 / number of processes.
            return cw.RedisTokenBucket(
                self.client,
                name="db",
                rate=cfg["limiter_rate_per_s"],
                burst=cfg["limiter_burst"],
                fallback_share=cfg["limiter_local_share"],
                prefix=KEY_PREFIX + "bucket",
            )
        self.components.append("TokenBucket (per process)")
        return cw.TokenBucket(
            rate=cfg["limiter_rate_per_s"] / self.sc.processes,
            burst=max(1.0, cfg["limiter_burst"] / self.sc.processes),
        )

    def flush(self) -> None:
        self.memory.clear()

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {"components": self.components}
        with contextlib.suppress(Exception):
            out.update(dataclasses.asdict(self.fn.stats()))
        return out


# ---------------------------------------------------------------------------------------------
# A worker process.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    stack_name: str
    index: int
    sc: Scenario
    db_spec: dict[str, Any]
    redis_url: str | None
    naive_redis_timeouts: bool = False


def _worker(job: _Job, meter: Meter, go: Any, start_at: Any, results: Any) -> None:
    stack_name, index, sc, redis_url = job.stack_name, job.index, job.sc, job.redis_url
    db_spec = job.db_spec
    store = Store(db_spec, sc.capacity, meter)
    stack: Any
    if stack_name == "naive":
        stack = NaiveStack(
            store,
            ttl=sc.ttl,
            page_size=sc.page_size,
            redis_url=redis_url,
            key_prefix=KEY_PREFIX,
            redis_timeouts=job.naive_redis_timeouts,
        )
    else:
        stack = GuardedStack(store, sc, redis_url=redis_url)
    plan = arrivals(sc, index)
    results.put(("ready", index, None))
    go.wait()
    t0 = start_at.value
    inbox: queue.SimpleQueue[tuple[int, float, int] | None] = queue.SimpleQueue()
    records: list[tuple[float, float, int, str, bool]] = []
    finished: set[int] = set()
    lock = threading.Lock()
    pending = [0]

    def serve() -> None:
        while True:
            item = inbox.get()
            if item is None:
                return
            n, arrival, customer = item
            started = time.time()
            if started - arrival > sc.deadline:
                rec = (arrival - t0, started - arrival, DROPPED, "deadline (queued)", False)
            else:
                error = ""
                payload = None
                try:
                    payload = stack.get(customer)
                except Exception as exc:
                    error = type(exc).__name__
                end = time.time()
                latency = end - arrival
                if payload is None:
                    rec = (arrival - t0, latency, RAISED, error, False)
                elif latency > sc.deadline:
                    rec = (arrival - t0, latency, LATE, "deadline", False)
                else:
                    stale = end - built_at(payload) > sc.ttl
                    rec = (arrival - t0, latency, SERVED, "", stale)
            with lock:
                records.append(rec)
                finished.add(n)
                pending[0] -= 1
            Meter.add(meter.requests)
            if rec[2] != SERVED:
                Meter.add(meter.errors)

    workers = [threading.Thread(target=serve, daemon=True) for _ in range(sc.threads)]
    for w in workers:
        w.start()

    flushed = threading.Event()

    def flush_at_outage() -> None:
        delay = t0 + sc.warm - time.time()
        if delay > 0:
            time.sleep(delay)
        stack.flush()
        flushed.set()

    threading.Thread(target=flush_at_outage, daemon=True).start()
    for n, (offset, customer) in enumerate(plan):
        delay = t0 + offset - time.time()
        if delay > 0:
            time.sleep(delay)
        with lock:
            pending[0] += 1
        inbox.put((n, t0 + offset, customer))
    end = t0 + sc.total + sc.grace
    while time.time() < end:
        with lock:
            if pending[0] == 0:
                break
        time.sleep(0.05)
    cut = time.time()
    for _ in workers:
        inbox.put(None)
    with lock:
        done = list(records)
        unfinished = pending[0]
        answered = set(finished)
    # Requests still in flight or queued: an error if their caller has given up by now.
    censored = 0
    for n, (offset, _customer) in enumerate(plan):
        if n in answered:
            continue
        if cut - (t0 + offset) > sc.deadline:
            done.append((offset, cut - (t0 + offset), DROPPED, "unfinished at end", False))
        else:
            censored += 1
    payload = {
        "requests": done,
        "queries": [(s - t0, d, r, k, o) for s, d, r, k, o in list(store.log)],
        "stats": stack.stats(),
        "unfinished": unfinished,
        "censored": censored,
    }
    results.put(("done", index, payload))
    results.close()
    results.join_thread()
    os._exit(0)  # threads stuck in Redis retries or database waits must not hold the process


# ---------------------------------------------------------------------------------------------
# The main process: run one stack, then the other.
# ---------------------------------------------------------------------------------------------


def _prefill(sc: Scenario, stack_name: str, db: Database, redis_url: str) -> dict[int, float]:
    """Fill Redis as a service that has been running for a while would have it filled.

    Returns when each entry was (notionally) written, as wall-clock times.
    """
    import redis

    ctx = multiprocessing.get_context("spawn")
    store = Store(db.spec, dataclasses.replace(sc.capacity, row_cost=0.0), Meter(ctx))
    now = time.time()
    written = {k: now - age for k, age in enumerate(prefill_ages(sc))}
    if stack_name == "naive":
        client = redis.Redis.from_url(redis_url)
        try:
            for customer, stamp in written.items():
                items: list[Any] = []
                after = 0
                while True:
                    rows = store.keyset_page(customer, after, sc.page_size)
                    items.extend(rows)
                    if len(rows) < sc.page_size:
                        break
                    after = rows[-1][0]
                payload = f"{stamp:.3f}|" + assemble(customer, items).split("|", 1)[1]
                ex = max(1, math.ceil(stamp + sc.ttl - time.time()))
                client.set(f"{KEY_PREFIX}naive:config:{customer}", payload, ex=ex)
        finally:
            client.close()
        return written
    # The guarded stack: cacheward's own code writes the entries (so the format is its own),
    # on a fake clock set to when each entry was written.
    import cacheward as cw
    from cacheward.testing import FakeClock

    global _STORE
    _STORE = store
    layer = cw.RedisLayer.from_url(redis_url, prefix=KEY_PREFIX + "cacheward")
    for customer, stamp in written.items():
        clock = FakeClock(start=stamp)

        def rebuild(customer: int, stamp: float = stamp) -> str:
            items = [tuple(r) for r in _all_rows(customer, sc.page_size)]
            return f"{stamp:.3f}|" + assemble(customer, items).split("|", 1)[1]

        fn = cw.cached(
            ttl=sc.ttl,
            stale_ttl=sc.stale_ttl,
            layers=[layer],
            namespace=KEY_PREFIX + "guarded",
            clock=clock,
            cross_process=False,
        )(rebuild)
        fn(customer)
    store.close()
    return written


def _all_rows(customer: int, page_size: int) -> list[Any]:
    assert _STORE is not None
    out: list[Any] = []
    after = 0
    while True:
        rows = _STORE.keyset_page(customer, after, page_size)
        out.extend(rows)
        if len(rows) < page_size:
            return out
        after = rows[-1][0]


def _naive_redis_timeouts() -> bool:
    return os.environ.get("CACHEWARD_BENCH_NAIVE_REDIS", "") == "timeouts"


def _run_stack(
    sc: Scenario, stack_name: str, db: Database, l2: L2, progress: Any
) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    meter = Meter(ctx)
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                _Job(stack_name, i, sc, db.spec, l2.url, _naive_redis_timeouts()),
                meter,
                go,
                start_at,
                results,
            ),
            daemon=True,
        )
        for i in range(sc.processes)
    ]
    for p in procs:
        p.start()
    ready = 0
    give_up = time.time() + 120
    while ready < sc.processes:
        try:
            kind, _index, _ = results.get(timeout=0.5)
        except queue.Empty:
            dead = [p.exitcode for p in procs if p.exitcode is not None]
            if dead or time.time() > give_up:
                for p in procs:
                    p.kill()
                raise RuntimeError(
                    f"{stack_name} worker processes failed to start (exit codes {dead})"
                ) from None
            continue
        ready += kind == "ready"
    # Fill Redis just before the start, so that entries have the intended ages at t0.
    written: dict[int, float] | None = None
    if l2.url is not None:
        l2.flush()
        written = _prefill(sc, stack_name, db, l2.url)
    t0 = time.time() + 0.2
    start_at.value = t0
    go.set()
    load_before = os.getloadavg()[0]
    task = progress.add(stack_name, sc.total)
    timeline: dict[str, float] = {}
    lost = back = False
    while True:
        now = time.time() - t0
        if not lost and now >= sc.warm:
            lost = True
            timeline["redis_down"] = time.time() - t0
            l2.down()
            timeline["redis_down_done"] = time.time() - t0
        if lost and not back and now >= sc.warm + sc.outage:
            back = True
            timeline["redis_up"] = time.time() - t0
            l2.up()
            timeline["redis_up_done"] = time.time() - t0
        phase = "warm-up" if now < sc.warm else "outage" if not back else "recovery"
        progress.update(task, min(now, sc.total), phase, meter)
        if now >= sc.total:
            break
        time.sleep(0.1)
    payloads: dict[int, dict[str, Any]] = {}
    deadline = time.time() + sc.grace + 60
    while len(payloads) < sc.processes:
        try:
            kind, index, payload = results.get(timeout=max(0.1, deadline - time.time()))
        except queue.Empty:
            break
        if kind == "done":
            payloads[index] = payload
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.kill()
            p.join(timeout=5)
    progress.finish(task, meter)
    stamps = None if written is None else {k: w - t0 for k, w in written.items()}
    timeline["load_average_1m_before"] = load_before
    timeline["load_average_1m_after"] = os.getloadavg()[0]
    return {"payloads": payloads, "timeline": timeline, "prefilled": stamps}


# ---------------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Report: the table, the ratios, the plot.
# ---------------------------------------------------------------------------------------------


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 100:
            return f"{value:,.0f}{unit}"
        return f"{value:.3g}{unit}"
    if isinstance(value, int):
        return f"{value:,}{unit}"
    return str(value)


def table_rows(figures: dict[str, dict[str, Any]], sc: Scenario) -> list[tuple[str, str, str]]:
    """The headline table: (measure, naive, guarded)."""
    rows: list[tuple[str, str, str]] = []

    def add(label: str, get: Any, unit: str = "") -> None:
        rows.append((label, *(_fmt(get(figures[s]), unit) for s in STACKS)))  # type: ignore[arg-type]

    o = "outage"
    add("DB queries, total", lambda f: f["phases"]["total"]["queries"])
    add("DB queries, peak per second", lambda f: f["phases"]["total"]["queries_peak_per_s"])
    add("DB rows read, total", lambda f: f["phases"]["total"]["rows_read"])
    add(
        "DB rows read, peak second (% of capacity)",
        lambda f: 100 * f["phases"]["total"]["rows_peak_per_s"] / sc.capacity.rows_per_second,
        " %",
    )
    add("DB rows read, outage", lambda f: f["phases"][o]["rows_read"])
    add("amplification, outage (x perfect cache)", lambda f: f["phases"][o]["amplification"])
    add("amplification, whole run", lambda f: f["phases"]["total"]["amplification"])
    add(
        "amplification, outage (x a cache that loses nothing)",
        lambda f: f["phases"][o]["amplification_vs_lossless"],
    )
    add("statement timeouts", lambda f: f["phases"]["total"]["statement_timeouts"])
    add("caller p50, healthy", lambda f: f["phases"]["healthy"]["p50_ms"], " ms")
    add("caller p99, healthy", lambda f: f["phases"]["healthy"]["p99_ms"], " ms")
    add("caller p50, outage", lambda f: f["phases"][o]["p50_ms"], " ms")
    add("caller p99, outage", lambda f: f["phases"][o]["p99_ms"], " ms")
    add("caller errors, outage", lambda f: f["phases"][o]["errors"])
    add(
        "caller error rate, outage",
        lambda f: _scaled(f["phases"][o]["error_rate"], 100),
        " %",
    )
    add("caller errors, whole run", lambda f: f["phases"]["total"]["errors"])
    add("stale served, outage", lambda f: f["phases"][o]["stale_served"])
    add("stale callers' p99, outage", lambda f: f["phases"][o]["stale_p99_ms"], " ms")
    add("errors back under 1 % after the loss", lambda f: f["errors_settled_after_loss_s"], " s")
    add("normal p99 limit (2x worst healthy 5 s)", lambda f: f["normal_p99_limit_ms"], " ms")
    add("back to normal after the loss", lambda f: f["recovered_after_loss_s"], " s")
    add("back to normal after caches return", lambda f: f["recovered_after_caches_back_s"], " s")
    return rows


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def ratios(figures: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """naive / guarded for the figures the issue names."""

    def r(a: float | None, b: float | None) -> float | None:
        if a is None or b is None:
            return None
        if b == 0:
            return None if a == 0 else float("inf")
        return round(a / b, 2)

    n, g = figures["naive"]["phases"], figures["guarded"]["phases"]
    return {
        "queries_total": r(n["total"]["queries"], g["total"]["queries"]),
        "queries_outage": r(n["outage"]["queries"], g["outage"]["queries"]),
        "rows_read_total": r(n["total"]["rows_read"], g["total"]["rows_read"]),
        "rows_read_outage": r(n["outage"]["rows_read"], g["outage"]["rows_read"]),
        "errors_total": r(n["total"]["errors"], g["total"]["errors"]),
        "errors_outage": r(n["outage"]["errors"], g["outage"]["errors"]),
    }


def targets(sc: Scenario, g: dict[str, Any]) -> dict[str, Any]:
    """cacheward's targets during the outage: value, limit, met."""
    o = g["phases"]["outage"]
    amp = o["amplification"]
    stale_ratio = o["stale_p99_vs_healthy_p99"]
    back = g["recovered_after_caches_back_s"]
    return {
        "amplification_outage": {"value": amp, "limit": 1.5, "met": amp is not None and amp <= 1.5},
        "error_rate_outage": {
            "value": o["error_rate"],
            "limit": 0.01,
            "met": o["error_rate"] is not None and o["error_rate"] <= 0.01,
        },
        "stale_p99_vs_healthy_p99": {
            "value": stale_ratio,
            "limit": 2.0,
            "met": None if stale_ratio is None else stale_ratio <= 2.0,
            "note": None if o["stale_served"] else "no stale values were served in the outage",
        },
        "recovered_within_ttl_s": {
            "value": back,
            "limit": sc.ttl,
            "met": back is not None and back <= sc.ttl,
        },
    }


def plot(sc: Scenario, figures: dict[str, dict[str, Any]], path: Path) -> None:
    """Database load and caller latency over time, both stacks (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"naive": "#d62728", "guarded": "#1f77b4"}
    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    cap = sc.capacity.rows_per_second
    for stack in STACKS:
        s = figures[stack]["series"]
        xs = list(range(len(s["rows"])))
        axes[0].plot(xs, [100 * r / cap for r in s["rows"]], label=stack, color=colours[stack])
        axes[1].plot(
            xs,
            [math.nan if v is None else v for v in s["p99_ms"]],
            label=f"{stack} p99",
            color=colours[stack],
        )
        axes[1].plot(
            xs,
            [math.nan if v is None else v for v in s["p50_ms"]],
            label=f"{stack} p50",
            color=colours[stack],
            linestyle=":",
        )
        pairs = zip(s["errors"], s["requests"], strict=True)
        rate = [100 * e / n if n else math.nan for e, n in pairs]
        axes[2].plot(xs, rate, label=stack, color=colours[stack])
    axes[0].axhline(100, color="grey", linewidth=0.8, linestyle="--")
    axes[0].set_ylabel("DB rows read\n(% of capacity)")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("caller latency (ms)")
    axes[2].set_ylabel("caller errors (%)")
    axes[2].set_xlabel("seconds")
    for ax in axes:
        ax.axvspan(sc.warm, sc.warm + sc.outage, color="#ffbb78", alpha=0.3, linewidth=0)
        ax.grid(True, alpha=0.3)
    axes[0].legend(loc="upper right")
    axes[1].legend(loc="upper right", ncol=2, fontsize="small")
    axes[0].set_title(
        f"Incident replay ({sc.name}): Redis lost and in-process caches flushed "
        f"at t={sc.warm:g}s, Redis back (empty) at t={sc.warm + sc.outage:g}s"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------
# Progress display.
# ---------------------------------------------------------------------------------------------


class _Progress:
    """rich progress bars (plain lines without rich or without a terminal)."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.rich: Any = None
        if not quiet:
            try:
                from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
            except ImportError:
                pass
            else:
                self.rich = Progress(
                    TextColumn("[bold]{task.fields[stack]:8}"),
                    BarColumn(bar_width=20),
                    TextColumn("{task.fields[phase]:8}"),
                    TextColumn("{task.fields[live]}"),
                    TimeElapsedColumn(),
                )

    def __enter__(self) -> _Progress:
        if self.rich is not None:
            self.rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.rich is not None:
            self.rich.stop()

    @staticmethod
    def _live(meter: Meter) -> str:
        return (
            f"db {meter.queries.value:,} q, {meter.rows.value / 1e6:.1f}M rows, "
            f"{meter.timeouts.value:,} timeouts | callers {meter.errors.value:,}"
            f"/{meter.requests.value:,} errors"
        )

    def add(self, stack: str, total: float) -> Any:
        if self.rich is not None:
            return self.rich.add_task("", total=total, stack=stack, phase="", live="")
        if not self.quiet:
            print(f"  {stack}: running {total:g} s ...", flush=True)
        return stack

    def update(self, task: Any, done: float, phase: str, meter: Meter) -> None:
        if self.rich is not None:
            self.rich.update(task, completed=done, phase=phase, live=self._live(meter))

    def finish(self, task: Any, meter: Meter) -> None:
        if self.rich is not None:
            self.rich.update(task, phase="done", live=self._live(meter))
        elif not self.quiet:
            print(f"  {task}: {self._live(meter)}", flush=True)


# ---------------------------------------------------------------------------------------------
# Entry point.
# ---------------------------------------------------------------------------------------------


def _print_report(sc: Scenario, result: dict[str, Any]) -> None:
    figures = result["stacks"]
    rows = table_rows(figures, sc)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(r[0]) for r in rows)
        print(f"{'':{width}}  {'naive':>14}  {'guarded':>14}")
        for label, a, b in rows:
            print(f"{label:{width}}  {a:>14}  {b:>14}")
    else:
        table = Table(title=f"incident replay ({sc.name})")
        table.add_column("")
        table.add_column("naive", justify="right")
        table.add_column("cacheward", justify="right")
        for row in rows:
            table.add_row(*row)
        Console().print(table)
    print("naive / guarded:", ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    print("cacheward targets (outage):")
    for name, t in result["targets"].items():
        mark = {True: "met", False: "NOT met", None: "n/a"}[t["met"]]
        note = f" ({t['note']})" if t.get("note") else ""
        print(f"  {name}: {t['value']} (limit {t['limit']}): {mark}{note}")
    print(f"guarded components: {', '.join(result['guarded_components'])}")
    print(f"L2: {result['l2']}; database: {result['database']}")
    if result.get("plot"):
        print(f"plot: {result['plot']}")


def scenario_for(quick: bool) -> Scenario:
    """The scenario ``run`` uses (the smoke one under ``CACHEWARD_BENCH_SMOKE=1``)."""
    if os.environ.get("CACHEWARD_BENCH_SMOKE", "") not in ("", "0"):
        return SMOKE
    return QUICK if quick else FULL


def run(*, quick: bool) -> dict[str, object]:
    """Run the incident replay for both stacks; print the report; return every figure."""
    sc = scenario_for(quick)
    smoke = sc is SMOKE
    l2 = L2(fault=os.environ.get("CACHEWARD_BENCH_REDIS_FAULT", "down"))
    if os.environ.get("CACHEWARD_BENCH_NO_REDIS", "") not in ("", "0"):
        l2.mode, l2.reason = "absent", "CACHEWARD_BENCH_NO_REDIS is set: L2 is absent"
    db = Database(sc.dataset)
    quiet = smoke or not sys.stdout.isatty()
    if not smoke:
        ds = sc.dataset
        print(
            f"{sc.processes} worker processes x {sc.threads} threads, {sc.rate:g} requests/s, "
            f"{sc.customers} customers x {sc.rows_per_customer:,} rows "
            f"({ds.pages} pages of {sc.page_size}; an OFFSET rebuild reads "
            f"{ds.offset_rows_per_rebuild:,} rows), ttl {sc.ttl:g} s; "
            f"phases {sc.warm:g} s / {sc.outage:g} s / {sc.recovery:g} s",
            flush=True,
        )
        print(f"database: {db.describe()}; L2: {l2.describe()}", flush=True)
    db.create()
    try:
        l2.start()
        raw: dict[str, dict[str, Any]] = {}
        with _Progress(quiet) as progress:
            for stack in STACKS:
                raw[stack] = _run_stack(sc, stack, db, l2, progress)
    finally:
        l2.stop()
        db.drop()
    references = {stack: perfect_rebuilds(sc, raw[stack]["prefilled"]) for stack in STACKS}
    lossless = {
        stack: perfect_rebuilds(sc, raw[stack]["prefilled"], lossless=True) for stack in STACKS
    }
    figures = {
        stack: analyse(sc, raw[stack], references[stack], lossless[stack]) for stack in STACKS
    }
    comps: list[str] = []
    for st in figures["guarded"]["worker_stats"]:
        comps = st.get("components", comps)
    ds = sc.dataset
    result: dict[str, Any] = {
        "scenario": {
            **{k: v for k, v in dataclasses.asdict(sc).items() if k != "capacity"},
            "pages_per_config": ds.pages,
            "offset_rows_per_rebuild": ds.offset_rows_per_rebuild,
        },
        "capacity": capacity_dict(sc.capacity),
        "naive_config": {
            **NAIVE_CONFIG,
            **(
                {
                    "l2": "redis.Redis.from_url(url, socket_timeout=0.25, "
                    "socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 0))"
                }
                if _naive_redis_timeouts()
                else {}
            ),
        },
        "guarded_config": guarded_config(sc, processes=sc.processes),
        "guarded_components": comps,
        "database": db.describe(),
        "l2": l2.describe(),
        "naive_healthy_utilisation_estimate": round(
            sc.customers / sc.ttl * ds.offset_rows_per_rebuild / sc.capacity.rows_per_second, 3
        ),
        "perfect_rebuilds_total": {k: len(v) for k, v in references.items()},
        "stacks": figures,
    }
    result["ratios"] = ratios(figures)
    result["targets"] = targets(sc, figures["guarded"])
    if not smoke:
        path = ROOT / "docs" / ("incident.png" if sc is FULL else "incident-quick.png")
        try:
            plot(sc, figures, path)
            result["plot"] = str(path.relative_to(ROOT))
        except ImportError as exc:
            result["plot"] = None
            print(f"no plot: {exc}")
    if not smoke:
        _print_report(sc, result)
    return result
