"""The incident's replay: worker processes serving the request stream while the faults happen.

:func:`run_stack` runs one stack through the scenario: it starts ``processes`` worker processes
(each builds the stack from its :class:`~benchmarks.incident.stacks.StackSpec` and serves its
share of :func:`~benchmarks.incident.scenario.arrivals` with ``threads`` threads), pre-fills
Redis, then drives the timeline -- Redis lost and every in-process cache flushed at the end of
the warm-up, Redis back (empty) at the end of the outage -- and gathers every worker's raw
records: one per request, one per database query.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from benchmarks._db import Database, Meter, Store
from benchmarks._naive import built_at
from benchmarks._redisproc import L2
from benchmarks.incident.scenario import (
    DROPPED,
    LATE,
    RAISED,
    SERVED,
    Scenario,
    arrivals,
    prefill_ages,
)
from benchmarks.incident.stacks import StackSpec

__all__ = ["run_stack"]

#: Called by :func:`run_stack` as the timeline moves: ``(event, seconds since start)``, event
#: being ``"outage"`` just before the fault is injected and ``"recovery"`` just before Redis
#: returns; the report announces what the user is about to see.
Announce = Callable[[str, float], None]


@dataclass(frozen=True)
class _Job:
    spec: StackSpec
    index: int
    sc: Scenario
    db_spec: dict[str, Any]
    redis_url: str | None


def _worker(job: _Job, meter: Meter, go: Any, start_at: Any, results: Any) -> None:
    index, sc = job.index, job.sc
    store = Store(job.db_spec, sc.capacity, meter)
    stack = job.spec.build(store, sc, job.redis_url)
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


def _prefill(sc: Scenario, spec: StackSpec, db: Database, redis_url: str) -> dict[int, float]:
    """Fill Redis as a service that has been running for a while would have it filled.

    Returns when each entry was (notionally) written, as wall-clock times.
    """
    ctx = multiprocessing.get_context("spawn")
    store = Store(db.spec, dataclasses.replace(sc.capacity, row_cost=0.0), Meter(ctx))
    now = time.time()
    written = {k: now - age for k, age in enumerate(prefill_ages(sc))}
    try:
        spec.prefill(sc, store, redis_url, written)
    finally:
        store.close()
    return written


def run_stack(
    sc: Scenario, spec: StackSpec, db: Database, l2: L2, *, progress: Any, announce: Announce
) -> dict[str, Any]:
    """Replay the scenario against one stack; its workers' raw records and the timeline."""
    ctx = multiprocessing.get_context("spawn")
    meter = Meter(ctx)
    go = ctx.Event()
    start_at = ctx.Value("d", 0.0)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=_worker,
            args=(
                _Job(spec, i, sc, db.spec, l2.url),
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
                    f"{spec.name} worker processes failed to start (exit codes {dead})"
                ) from None
            continue
        ready += kind == "ready"
    # Fill Redis just before the start, so that entries have the intended ages at t0.
    written: dict[int, float] | None = None
    if l2.url is not None:
        l2.flush()
        written = _prefill(sc, spec, db, l2.url)
    t0 = time.time() + 0.2
    start_at.value = t0
    go.set()
    load_before = os.getloadavg()[0]
    task = progress.add(spec.label, sc.total)
    timeline: dict[str, float] = {}
    lost = back = False
    while True:
        now = time.time() - t0
        if not lost and now >= sc.warm:
            lost = True
            announce("outage", now)
            timeline["redis_down"] = time.time() - t0
            l2.down()
            timeline["redis_down_done"] = time.time() - t0
        if lost and not back and now >= sc.warm + sc.outage:
            back = True
            announce("recovery", now)
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
