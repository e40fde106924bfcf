"""Shared helpers for the benchmark programs.

What every benchmark here needs, in one place:

* **interleaved rounds**: each round times every contender once, in a rotated order, with the
  reference of its group timed in the same round; a contender's figure is the median over rounds
  of its ratio to that same-round reference, so drift on a shared, noisy machine cancels out;
* **per-call timing** in the style of :mod:`timeit` (a tight loop over ``itertools.repeat``, the
  garbage collector off, the number of calls calibrated so one block lasts a fixed time, the best
  of a few blocks per round), for plain callables and for coroutine functions on one event loop;
* **statistics**: :func:`median`, :func:`percentile` (nearest rank), :func:`summary`;
* **reporting**: :func:`print_table` (``rich`` when it is installed, plain text otherwise) and
  :func:`machine` (what the figures were measured on);
* **size knobs**: :func:`smoke` is true under ``CACHEWARD_BENCH_SMOKE=1``, which the smoke tests
  set so each benchmark runs in a tiny mode that checks its shape, not its speed;
* **where files go**: :func:`output_dir` (``benchmarks/results/``, ignored by git; ``--out DIR``)
  and :func:`update_docs` (``--update-docs``: only then may a benchmark refresh a tracked file
  under ``docs/``), so that running the benchmarks leaves the checkout clean.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "Contender",
    "RoundsResult",
    "close_loop",
    "fmt_ns",
    "fmt_ratio",
    "interleaved_rounds",
    "machine",
    "median",
    "new_loop",
    "output_dir",
    "percentile",
    "print_table",
    "progress",
    "smoke",
    "summary",
    "time_async",
    "time_sync",
    "update_docs",
    "versions",
]

SMOKE_ENV = "CACHEWARD_BENCH_SMOKE"
#: Set by ``python -m benchmarks --out DIR`` (environment variables reach worker processes too).
OUT_ENV = "CACHEWARD_BENCH_OUT"
#: Set by ``python -m benchmarks --update-docs``.
UPDATE_DOCS_ENV = "CACHEWARD_BENCH_UPDATE_DOCS"
#: The repository's root (the benchmarks run from it).
ROOT = Path(__file__).resolve().parent.parent


def smoke() -> bool:
    """True when ``CACHEWARD_BENCH_SMOKE=1``: run a tiny version that only checks the shape."""
    return os.environ.get(SMOKE_ENV, "") not in ("", "0")


def output_dir() -> Path:
    """Where benchmarks write their files: ``benchmarks/results/`` (ignored by git) or ``--out``."""
    path = Path(os.environ.get(OUT_ENV) or ROOT / "benchmarks" / "results")
    path.mkdir(parents=True, exist_ok=True)
    return path


def update_docs() -> bool:
    """True under ``--update-docs``: a benchmark may then refresh its picture under ``docs/``."""
    return os.environ.get(UPDATE_DOCS_ENV, "") not in ("", "0")


# --------------------------------------------------------------------------- statistics


def median(values: Iterable[float]) -> float:
    """The median (``nan`` for no values)."""
    data = list(values)
    return statistics.median(data) if data else math.nan


def percentile(values: Iterable[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank: a value that was actually observed."""
    data = sorted(values)
    if not data:
        return math.nan
    rank = max(1, math.ceil(p / 100.0 * len(data)))
    return data[min(rank, len(data)) - 1]


def summary(values: Iterable[float]) -> dict[str, float]:
    """``n``, ``min``, ``p50``, ``p99``, ``max`` and ``mean`` of ``values``."""
    data = list(values)
    if not data:
        return {"n": 0}
    return {
        "n": len(data),
        "min": min(data),
        "p50": percentile(data, 50),
        "p99": percentile(data, 99),
        "max": max(data),
        "mean": statistics.fmean(data),
    }


# --------------------------------------------------------------------------- per-call timing


def time_sync(fn: Callable[[Any], object], arg: object, number: int) -> float:
    """Seconds per call of ``fn(arg)``, over ``number`` calls in one tight loop (GC off)."""
    repeat = itertools.repeat(None, number)
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in repeat:
            fn(arg)
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_on:
            gc.enable()
    return elapsed / number


async def _async_block(fn: Callable[[Any], Awaitable[object]], arg: object, number: int) -> float:
    repeat = itertools.repeat(None, number)
    start = time.perf_counter()
    for _ in repeat:
        await fn(arg)
    return time.perf_counter() - start


def time_async(
    loop: asyncio.AbstractEventLoop,
    fn: Callable[[Any], Awaitable[object]],
    arg: object,
    number: int,
) -> float:
    """Seconds per ``await fn(arg)``, timed inside one coroutine on ``loop`` (GC off).

    The clock starts and stops inside the coroutine, so entering the loop is not counted.
    """
    gc_was_on = gc.isenabled()
    gc.disable()
    try:
        elapsed = loop.run_until_complete(_async_block(fn, arg, number))
    finally:
        if gc_was_on:
            gc.enable()
    return elapsed / number


def new_loop() -> asyncio.AbstractEventLoop:
    """One event loop for a whole benchmark run (peers keep loop-bound state between calls)."""
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    return loop


def close_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Cancel what is left on ``loop`` (peers' background tasks) and close it."""
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for task in pending:
        task.cancel()
    if pending:
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    loop.run_until_complete(loop.shutdown_asyncgens())
    asyncio.set_event_loop(None)
    loop.close()


# --------------------------------------------------------------------------- interleaved rounds


@dataclass
class Contender:
    """One thing to time: ``fn(arg)`` (or ``await fn(arg)``), in a group with one reference.

    Attributes:
        name: the row's label.
        group: contenders are compared to the reference of their own group (e.g. "sync").
        fn: the callable under test, already warmed (the key is cached).
        arg: the argument it is called with.
        is_async: ``fn`` is a coroutine function.
        config: how it is configured, for the report.
        reference: this contender is its group's reference.
        loop: its own event loop (async contenders), so what one library leaves on a loop
            (timers, tasks) cannot slow another; ``None`` uses the loop of the run.
    """

    name: str
    group: str
    fn: Callable[[Any], Any]
    arg: object
    is_async: bool = False
    config: str = ""
    reference: bool = False
    loop: asyncio.AbstractEventLoop | None = None


@dataclass
class RoundsResult:
    """Per-call seconds and same-round ratios, per contender, for every round."""

    references: dict[str, str]
    seconds: dict[str, list[float]] = field(default_factory=dict)
    ratios: dict[str, list[float]] = field(default_factory=dict)
    numbers: dict[str, int] = field(default_factory=dict)

    def median_ns(self, name: str) -> float:
        """Median per-call time in nanoseconds."""
        return median(self.seconds[name]) * 1e9

    def median_ratio(self, name: str) -> float:
        """Median over rounds of the ratio to the same-round reference."""
        return median(self.ratios[name])

    def as_dict(self) -> dict[str, object]:
        """Every raw figure, JSON-ready."""
        return {
            "references": self.references,
            "calls_per_block": self.numbers,
            "seconds_per_call": self.seconds,
            "ratio_per_round": self.ratios,
            "median_ns": {name: self.median_ns(name) for name in self.seconds},
            "median_ratio": {name: self.median_ratio(name) for name in self.ratios},
        }


def _time_one(c: Contender, loop: asyncio.AbstractEventLoop, number: int) -> float:
    if c.is_async:
        own = c.loop if c.loop is not None else loop
        asyncio.set_event_loop(own)
        return time_async(own, c.fn, c.arg, number)
    return time_sync(c.fn, c.arg, number)


def _calibrate(c: Contender, loop: asyncio.AbstractEventLoop, block_seconds: float) -> int:
    number = 1
    while True:
        per_call = _time_one(c, loop, number)
        if per_call * number >= block_seconds / 10 or number >= 10_000_000:
            return max(1, min(10_000_000, int(block_seconds / max(per_call, 1e-9))))
        number *= 10


def interleaved_rounds(
    contenders: Sequence[Contender],
    *,
    rounds: int,
    block_seconds: float,
    repeat: int = 3,
    loop: asyncio.AbstractEventLoop | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RoundsResult:
    """Time every contender once per round, rotating the order, and relate it to its reference.

    Each contender's number of calls per block is calibrated once so that a block lasts about
    ``block_seconds``; in each round it is timed ``repeat`` times and the best block counts (as
    :mod:`timeit` recommends: the slower ones measure other processes, not the code). The ratio
    for a round is that figure over the reference's figure from the same round.

    Args:
        contenders: what to time; each group must contain exactly one reference.
        rounds: how many rounds (the figures are medians over them).
        block_seconds: the target length of one timed block.
        repeat: blocks per contender per round; the fastest counts.
        loop: the event loop for async contenders (one is made and closed if omitted).
        progress: called with ``(round_done, rounds)`` after each round.
    """
    references: dict[str, str] = {}
    for c in contenders:
        if c.reference:
            if c.group in references:
                raise ValueError(f"group {c.group!r} has two references")
            references[c.group] = c.name
    missing = {c.group for c in contenders} - references.keys()
    if missing:
        raise ValueError(f"groups without a reference: {sorted(missing)}")
    own_loop = loop is None
    active = loop if loop is not None else new_loop()
    try:
        result = RoundsResult(references=references)
        for c in contenders:
            result.numbers[c.name] = _calibrate(c, active, block_seconds)
            result.seconds[c.name] = []
            result.ratios[c.name] = []
        order = list(contenders)
        for r in range(rounds):
            shift = r % len(order)
            this_round: dict[str, float] = {}
            for c in order[shift:] + order[:shift]:
                number = result.numbers[c.name]
                this_round[c.name] = min(_time_one(c, active, number) for _ in range(repeat))
            for c in contenders:
                per_call = this_round[c.name]
                result.seconds[c.name].append(per_call)
                result.ratios[c.name].append(per_call / this_round[references[c.group]])
            if progress is not None:
                progress(r + 1, rounds)
        return result
    finally:
        if own_loop:
            close_loop(active)


# --------------------------------------------------------------------------- reporting


#: Seconds between two plain progress lines of one label (stdout not a terminal).
PROGRESS_EVERY = 5.0
_progress_last: dict[str, float] = {}


def progress(label: str, done: int, total: int) -> None:
    """Show ``label done/total``: a live counter on a terminal, else a line every few seconds.

    On a terminal the counter is redrawn in place on stderr; in a pipe or a CI log one line goes
    to stdout at most every :data:`PROGRESS_EVERY` seconds and at the end, so a log shows that a
    long run is alive without filling up.
    """
    if sys.stderr.isatty():
        end = "\n" if done >= total else ""
        print(f"\r  {label} {done}/{total}", end=end, file=sys.stderr, flush=True)
        return
    now = time.monotonic()
    first = label not in _progress_last
    if done >= total or first or now - _progress_last[label] >= PROGRESS_EVERY:
        _progress_last[label] = now
        if done >= total:
            del _progress_last[label]
        if not first or done >= total:
            print(f"  {label} {done}/{total}", flush=True)


def fmt_ns(seconds: float) -> str:
    """A per-call time in the most readable unit."""
    if math.isnan(seconds):
        return "-"
    ns = seconds * 1e9
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1e3:.2f} µs" if ns < 100_000 else f"{ns / 1e3:.0f} µs"
    return f"{ns / 1e6:.2f} ms" if ns < 100_000_000 else f"{ns / 1e6:.0f} ms"


def fmt_ratio(ratio: float) -> str:
    """A ratio such as ``3.2x`` (``-`` when unknown)."""
    if math.isnan(ratio):
        return "-"
    if ratio >= 100:
        return f"{ratio:.0f}x"
    if ratio >= 10:
        return f"{ratio:.1f}x"
    return f"{ratio:.2f}x"


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a table: with ``rich`` when it is installed, as aligned plain text otherwise."""
    cells = [[str(v) for v in row] for row in rows]
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        widths = [len(c) for c in columns]
        for row in cells:
            widths = [max(w, len(v)) for w, v in zip(widths, row, strict=True)]
        print(f"\n{title}")
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
        print("  ".join("-" * w for w in widths))
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
        sys.stdout.flush()
        return
    table = Table(title=title, title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    console = Console()
    if not console.is_terminal:
        console = Console(width=120)  # a log file or a pipe: do not wrap at 80 columns
    console.print(table)


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    return {
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
    }


def versions(*distributions: str) -> dict[str, str]:
    """Installed versions of the named distributions (``"not installed"`` when absent)."""
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"

    return {name: version(name) for name in distributions}
