"""Cold-key stampede: backend calls and wall time, cacheward vs the peers.

``python -m benchmarks stampede [--quick] [--json PATH]``

Many callers ask for the same key at the same moment while it is not cached, and the backend
takes 50 ms to answer:

* async: 1000 asyncio tasks started together (``asyncio.gather``) on one event loop;
* threads: 50 threads released together by a barrier.

Each round uses a key no contender has seen, so every round is a cold stampede. We count backend
calls, caller errors and the wall time from release until the last caller has its value, as a
ratio to the backend latency. Target for cacheward: 1 backend call, wall <= 1.2x the latency.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from benchmarks import _harness as h
from benchmarks._load import STORM_TIMEOUT, Backend, async_storm, thread_storm
from benchmarks._peerlibs import ASYNC_LIBS, SYNC_LIBS, SYNC_REFERENCE, Lib, available

LATENCY = 0.05
WALL_TARGET = 1.2


def _settings(quick: bool) -> dict[str, Any]:
    if h.smoke():
        return {"rounds": 2, "tasks": 100, "threads": 10, "latency": LATENCY}
    if quick:
        return {"rounds": 5, "tasks": 1000, "threads": 50, "latency": LATENCY}
    return {"rounds": 9, "tasks": 1000, "threads": 50, "latency": LATENCY}


def _floor_async() -> Callable[[Callable[[int], Any]], Callable[[int], Any]]:
    """The least a single-flight can cost here: every caller awaits one shared task."""

    def decorate(fn: Callable[[int], Any]) -> Callable[[int], Any]:
        flights: dict[int, asyncio.Future[Any]] = {}

        async def wrapper(k: int) -> Any:
            flight = flights.get(k)
            if flight is None:
                flight = flights[k] = asyncio.ensure_future(fn(k))
            return await flight

        return wrapper

    return decorate


def _floor_threads() -> Callable[[Callable[[int], Any]], Callable[[int], Any]]:
    """The least a single-flight can cost with threads: the first caller fetches, others wait."""

    def decorate(fn: Callable[[int], Any]) -> Callable[[int], Any]:
        lock = threading.Lock()
        flights: dict[int, tuple[threading.Event, list[Any]]] = {}

        def wrapper(k: int) -> Any:
            with lock:
                flight = flights.get(k)
                leader = flight is None
                if flight is None:
                    flight = flights[k] = (threading.Event(), [])
            event, box = flight
            if leader:
                box.append(fn(k))
                event.set()
            else:
                event.wait(STORM_TIMEOUT)
            return box[0]

        return wrapper

    return decorate


#: Floors, not peers: a bare single-flight (no cache, no stats, no timeouts, no error
#: handling), to show the least wall time this harness can measure.
FLOORS = [
    Lib(
        "floor: bare single-flight (async)",
        "python",
        True,
        "every caller awaits one shared asyncio task; nothing else",
        _floor_async,
        hits=False,
    ),
    Lib(
        "floor: bare single-flight (threads)",
        "python",
        False,
        "the first caller fetches, the others wait on a threading.Event; nothing else",
        _floor_threads,
        hits=False,
    ),
]


def contenders(libs: list[Lib] | None = None) -> tuple[list[tuple[str, Lib]], dict[str, str]]:
    """``(mode, lib)`` pairs to run ("threads" or "async") and the skipped ones with reasons."""
    chosen = (
        libs
        if libs is not None
        else [
            *FLOORS,
            SYNC_REFERENCE,
            *(lib for lib in [*SYNC_LIBS, *ASYNC_LIBS] if lib.stampede),
        ]
    )
    runnable: list[tuple[str, Lib]] = []
    skipped: dict[str, str] = {}
    for lib in chosen:
        why = available(lib)
        if why is None:
            runnable.append(("async" if lib.is_async else "threads", lib))
        else:
            skipped[lib.name] = why
    return runnable, skipped


def measure(*, quick: bool, libs: list[Lib] | None = None, title: str = "") -> dict[str, Any]:
    """Run the interleaved stampede rounds and return every figure."""
    settings = _settings(quick)
    runnable, skipped = contenders(libs)
    latency = settings["latency"]
    rows: dict[str, dict[str, Any]] = {}
    # Each async contender gets its own event loop for all its rounds, so timers and tasks a
    # peer leaves behind (aiocache schedules one expiry timer per entry) slow only that peer.
    loops: dict[str, asyncio.AbstractEventLoop] = {}
    try:
        prepared = []
        for mode, lib in runnable:
            backend = Backend(latency)
            if lib.is_async:
                loops[lib.name] = h.new_loop()
            fn = lib.make()(backend.coro() if lib.is_async else backend.sync())
            prepared.append((mode, lib, backend, fn))
            rows[lib.name] = {"mode": mode, "config": lib.config, "rounds": []}
        for r in range(settings["rounds"]):
            key = 1_000 + r  # a key nobody has cached yet: every round is cold
            shift = r % max(1, len(prepared))
            for mode, lib, backend, fn in prepared[shift:] + prepared[:shift]:
                before = backend.calls
                if mode == "async":
                    loop = loops[lib.name]
                    asyncio.set_event_loop(loop)
                    outcome = async_storm(loop, fn, key, settings["tasks"])
                else:
                    outcome = thread_storm(fn, key, settings["threads"])
                outcome["calls"] = backend.calls - before
                rows[lib.name]["rounds"].append(outcome)
            h.progress(f"{title}stampede: round", r + 1, settings["rounds"])
    finally:
        for loop in loops.values():
            asyncio.set_event_loop(loop)
            h.close_loop(loop)
    for row in rows.values():
        rounds = row["rounds"]
        row["calls"] = h.median(o["calls"] for o in rounds)
        row["calls_max"] = max(o["calls"] for o in rounds)
        row["wall"] = h.median(o["wall"] for o in rounds)
        row["wall_ratio"] = row["wall"] / latency
        row["errors"] = max(o["errors"] for o in rounds)
        row["wrong"] = max(o["wrong"] for o in rounds)
        row["callers"] = settings["tasks"] if row["mode"] == "async" else settings["threads"]
        row["error_types"] = sorted({t for o in rounds for t in o.get("error_types", [])})
    # Wall time over the floor's wall time in the same round: the cost of the code itself,
    # with most of the machine's load cancelled out.
    floors = {lib.is_async: lib.name for lib in FLOORS}
    for row in rows.values():
        floor = rows.get(floors[row["mode"] == "async"])
        if floor is None:
            row["wall_vs_floor"] = float("nan")
            continue
        row["wall_vs_floor"] = h.median(
            mine["wall"] / theirs["wall"]
            for mine, theirs in zip(row["rounds"], floor["rounds"], strict=True)
        )
    return {"settings": settings, "rows": rows, "skipped": skipped}


def targets(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """cacheward's verdicts: 1 backend call and wall <= 1.2x latency, per mode."""
    found: dict[str, Any] = {}
    for name in ("cacheward", "cacheward async"):
        row = rows.get(name)
        if row is None:
            found[name] = {"met": None}
            continue
        found[name] = {
            "calls_max": row["calls_max"],
            "wall_ratio": row["wall_ratio"],
            "errors": row["errors"],
            "met": row["calls_max"] == 1 and row["wall_ratio"] <= WALL_TARGET and not row["errors"],
        }
    return found


def report(figures: dict[str, Any]) -> None:
    """Print one table per mode and the verdict on the targets."""
    settings = figures["settings"]
    rows = figures["rows"]
    for mode, callers in (("async", settings["tasks"]), ("threads", settings["threads"])):
        members = sorted(
            (n for n, row in rows.items() if row["mode"] == mode),
            key=lambda n: (rows[n]["calls"], rows[n]["wall"]),
        )
        h.print_table(
            f"Cold-key stampede, {callers} {'asyncio tasks' if mode == 'async' else 'threads'}, "
            f"backend {settings['latency'] * 1e3:.0f} ms "
            f"(median of {settings['rounds']} interleaved rounds)",
            [
                "contender",
                "backend calls",
                "max calls",
                "wall",
                "wall / latency",
                "x floor",
                "errors",
            ],
            [
                [
                    n,
                    f"{rows[n]['calls']:.0f}",
                    rows[n]["calls_max"],
                    f"{rows[n]['wall'] * 1e3:.0f} ms",
                    h.fmt_ratio(rows[n]["wall_ratio"]),
                    h.fmt_ratio(rows[n]["wall_vs_floor"]),
                    (
                        f"{rows[n]['errors']} ({', '.join(rows[n]['error_types'])})"
                        if rows[n]["errors"]
                        else "0"
                    ),
                ]
                for n in members
            ],
        )
    for name, why in figures["skipped"].items():
        print(f"  skipped {name}: {why}")
    for name, verdict in figures["targets"].items():
        if verdict["met"] is None:
            print(f"  target {name}: not measured (cacheward unavailable)")
        else:
            print(
                f"  target {name}: {verdict['calls_max']} backend call(s), wall "
                f"{h.fmt_ratio(verdict['wall_ratio'])} latency (<= 1 call, <= {WALL_TARGET}x) "
                f"{'met' if verdict['met'] else 'MISSED'}"
            )


def run(*, quick: bool) -> dict[str, object]:
    """Stampede cacheward and every installed peer; print and return the figures."""
    figures = measure(quick=quick)
    figures["targets"] = targets(figures["rows"])
    figures["machine"] = h.machine()
    figures["versions"] = h.versions(
        "cacheward", "cachetools", "cachebox", "async-lru", "cashews", "aiocache", "dogpile.cache"
    )
    report(figures)
    return figures
