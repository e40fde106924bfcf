"""The incident's report: what the user reads while it runs and after it, and the picture.

* :class:`Progress`: rich progress bars on a terminal; otherwise (a pipe, a CI log) one plain
  line per phase and every few seconds, so a log shows that the run is alive;
* :func:`intro` and :func:`announce`: the scenario told before it happens, including the
  warnings cacheward is expected to log when Redis goes away (they are the scenario, not a fault);
* :func:`print_report`: the table (one column per stack), then a summary in sentences;
* :func:`plot`: database load, caller latency and errors over time (a PNG).
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._db import Meter
from benchmarks.incident.scenario import Scenario
from benchmarks.incident.stacks import StackSpec

__all__ = ["Progress", "announce", "intro", "plot", "print_report", "summary", "table_rows"]

#: Line colours of the plot, by stack name (others cycle through the palette below).
COLOURS = {"naive": "#d62728", "guarded": "#1f77b4"}
PALETTE = ("#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


# ---------------------------------------------------------------------------------------------
# While it runs.
# ---------------------------------------------------------------------------------------------


def _expected_warnings(fault: str) -> str:
    error = "Timeout reading from ..." if fault == "hung" else "Connection refused"
    return f"breaker_opened ... layer=redis error=... {error}"


def intro(
    sc: Scenario, specs: list[StackSpec], *, database: str, l2: str, l2_mode: str, fault: str
) -> list[str]:
    """The scenario in a few lines, printed before the first stack starts."""
    ds = sc.dataset
    out = [
        f"{sc.processes} worker processes x {sc.threads} threads serve {sc.rate:g} requests/s for "
        f"{sc.customers} customers' configurations ({sc.rows_per_customer:,} rows each, "
        f"{ds.pages} pages of {sc.page_size}; an OFFSET rebuild reads "
        f"{ds.offset_rows_per_rebuild:,} rows); cached for {sc.ttl:g} s.",
        f"database: {database}; Redis: {l2}.",
        f"The scenario, {sc.total:g} s per stack: healthy for {sc.warm:g} s; then Redis is lost "
        f"and every process's in-process cache is flushed at the same instant (the incident); "
        f"{sc.outage:g} s later Redis comes back, empty; {sc.recovery:g} s of recovery.",
        "Stacks, one after the other: "
        + "; ".join(f"{s.label} ({s.summary})" for s in specs)
        + ".",
    ]
    if l2_mode != "absent":
        out.append(
            "Expected: when Redis goes away, cacheward logs warnings such as "
            f"'{_expected_warnings(fault)}' (one per process as each circuit breaker opens). "
            "They are the scenario, not a fault of the benchmark."
        )
    return out


def announce(
    progress: Progress, label: str, event: str, at: float, *, fault: str, warns: bool
) -> None:
    """Say what the scenario does now, before its effects (and its warnings) appear."""
    if event == "outage":
        what = "hung" if fault == "hung" else "down"
        expected = "; the warnings that follow are expected" if warns else ""
        progress.note(
            f"  {label}: t={at:.0f} s, Redis {what} and in-process caches flushed now "
            f"(the incident{expected})"
        )
    elif event == "recovery":
        progress.note(f"  {label}: t={at:.0f} s, Redis back (empty)")


class Progress:
    """rich progress bars on a terminal; plain lines per phase and every few seconds otherwise."""

    #: Seconds between two plain progress lines within one phase.
    EVERY = 5.0

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.rich: Any = None
        self._last: dict[str, tuple[str, float]] = {}
        if not quiet and sys.stdout.isatty():
            try:
                from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
                from rich.progress import Progress as RichProgress
            except ImportError:
                pass
            else:
                self.rich = RichProgress(
                    TextColumn("[bold]{task.fields[stack]:10}"),
                    BarColumn(bar_width=20),
                    TextColumn("{task.fields[phase]:8}"),
                    TextColumn("{task.fields[live]}"),
                    TimeElapsedColumn(),
                )

    def __enter__(self) -> Progress:
        if self.rich is not None:
            self.rich.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.rich is not None:
            self.rich.stop()

    @staticmethod
    def _live(meter: Meter) -> str:
        return (
            f"database {meter.queries.value:,} queries, {meter.rows.value / 1e6:.1f} M rows, "
            f"{meter.timeouts.value:,} timeouts | callers {meter.errors.value:,} errors "
            f"in {meter.requests.value:,}"
        )

    def note(self, line: str) -> None:
        """A line of its own (above the bars on a terminal)."""
        if self.quiet:
            return
        if self.rich is not None:
            self.rich.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)

    def add(self, label: str, total: float) -> Any:
        if self.rich is not None:
            return self.rich.add_task("", total=total, stack=label, phase="", live="")
        self.note(f"  {label}: running {total:g} s ...")
        return label

    def update(self, task: Any, done: float, phase: str, meter: Meter) -> None:
        if self.rich is not None:
            self.rich.update(task, completed=done, phase=phase, live=self._live(meter))
            return
        if self.quiet:
            return
        now = time.monotonic()
        last_phase, last_at = self._last.get(task, ("", -math.inf))
        if phase != last_phase or now - last_at >= self.EVERY:
            self._last[task] = (phase, now)
            print(f"  {task}: t={max(0.0, done):3.0f} s {phase:8} {self._live(meter)}", flush=True)

    def finish(self, task: Any, meter: Meter) -> None:
        if self.rich is not None:
            self.rich.update(task, phase="done", live=self._live(meter))
        else:
            self.note(f"  {task}: done; {self._live(meter)}")


# ---------------------------------------------------------------------------------------------
# After it: the table.
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


def _scaled(value: float | None, factor: float) -> float | None:
    return None if value is None else value * factor


def table_rows(
    figures: dict[str, dict[str, Any]], sc: Scenario, names: list[str]
) -> list[tuple[str, ...]]:
    """The headline table: one row per measure, one column per stack in ``names``."""
    rows: list[tuple[str, ...]] = []

    def add(label: str, get: Any, unit: str = "") -> None:
        rows.append((label, *(_fmt(get(figures[s]), unit) for s in names)))

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


# ---------------------------------------------------------------------------------------------
# After it: the summary, in sentences.
# ---------------------------------------------------------------------------------------------


def _rows(n: int) -> str:
    return f"{n / 1e6:.2f} million rows" if n >= 1e6 else f"{n:,} rows"


def _latency(ms: float | None) -> str:
    if ms is None:
        return "no caller"
    return f"{ms / 1000:.1f} s" if ms >= 1000 else f"{ms:.0f} ms" if ms >= 10 else f"{ms:.1f} ms"


def _times(a: float, b: float) -> str:
    """``a`` compared with ``b``, in words (``a`` being the baseline's figure)."""
    if b == 0:
        return "none at all" if a else "the same"
    ratio = a / b
    if ratio >= 1.05:
        return f"{ratio:.1f} times fewer"
    if ratio <= 1 / 1.05:
        return f"{1 / ratio:.1f} times more"
    return "about as many"


def _errors(n: int, rate: float | None) -> str:
    if n == 0:
        return "no errors"
    return f"{n:,} errors ({100 * (rate or 0):.1f} % of callers)"


def _settled(seconds: int | None) -> str:
    if seconds is None:
        return "not back to normal by the end of the run"
    if seconds == 0:
        return "back to normal at once"
    return f"back to normal after {seconds} s"


def _target_value(value: float | None, unit: str) -> str:
    if value is None:
        return "not measured"
    if unit == "%":
        return f"{100 * value:.2f} %"
    if unit == "s":
        return f"{value:g} s"
    return f"{value:.2f}x"


def _target_limit(limit: float, unit: str) -> str:
    if unit == "%":
        return f"{100 * limit:g} %"
    if unit == "s":
        return f"{limit:g} s"
    return f"{limit:g}x"


def summary(sc: Scenario, result: dict[str, Any], specs: list[StackSpec]) -> list[str]:
    """What the run showed, in sentences: baseline against each other stack, then the targets."""
    figures = result["stacks"]
    base, others = specs[0], specs[1:]
    b = figures[base.name]
    bo = b["phases"]["outage"]
    lines = [f"During the {sc.outage:g} s outage (Redis lost, in-process caches flushed):"]
    perfect = bo["perfect_rows"]
    for spec in others:
        g = figures[spec.name]
        go = g["phases"]["outage"]
        lines.append(
            f"- the database read {_rows(bo['rows_read'])} for the {base.label} stack and "
            f"{_rows(go['rows_read'])} for {spec.label} "
            f"({_times(bo['rows_read'], go['rows_read'])}); a perfect cache with the same TTL "
            f"would have read {_rows(perfect)}."
        )
        lines.append(
            f"- callers got {_errors(bo['errors'], bo['error_rate'])} from the {base.label} "
            f"stack and {_errors(go['errors'], go['error_rate'])} from {spec.label}; the slowest "
            f"1 % waited {_latency(bo['p99_ms'])} with the {base.label} stack and "
            f"{_latency(go['p99_ms'])} with {spec.label}."
        )
        lines.append(
            f"- after Redis came back, callers were "
            f"{_settled(b['recovered_after_caches_back_s'])} with the {base.label} stack and "
            f"{_settled(g['recovered_after_caches_back_s'])} with {spec.label}."
        )
    for spec in others:
        lines.append(f"{spec.label}'s targets for the outage:")
        for t in result["targets_by_stack"][spec.name].values():
            mark = {True: "met    ", False: "NOT met", None: "n/a    "}[t["met"]]
            note = f" ({t['note']})" if t.get("note") else ""
            lines.append(
                f"  {mark} {t['what']}: {_target_value(t['value'], t['unit'])} "
                f"(target: at most {_target_limit(t['limit'], t['unit'])}){note}"
            )
    return lines


def print_report(sc: Scenario, result: dict[str, Any], specs: list[StackSpec]) -> None:
    """The table, then the summary, then where the files are."""
    names = [s.name for s in specs]
    rows = table_rows(result["stacks"], sc, names)
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:
        width = max(len(r[0]) for r in rows)
        print(f"{'':{width}}" + "".join(f"  {s.label:>14}" for s in specs))
        for label, *cells in rows:
            print(f"{label:{width}}" + "".join(f"  {c:>14}" for c in cells))
    else:
        table = Table(title=f"incident replay ({sc.name})")
        table.add_column("")
        for spec in specs:
            table.add_column(spec.label, justify="right")
        for row in rows:
            table.add_row(*row)
        console = Console()
        if not console.is_terminal:
            console = Console(width=120)
        console.print(table)
    print()
    for line in summary(sc, result, specs):
        print(line)
    for spec in specs[1:]:
        comps = result["components"].get(spec.name)
        if comps:
            print(f"{spec.label} ran as: {', '.join(comps)}.")
    print(f"Redis: {result['l2']}; database: {result['database']}.")
    if result.get("plot"):
        print(f"Picture of the run: {result['plot']}")
    for extra in result.get("plot_copies", []):
        print(f"Docs picture refreshed: {extra}")


# ---------------------------------------------------------------------------------------------
# The picture.
# ---------------------------------------------------------------------------------------------


def plot(
    sc: Scenario, figures: dict[str, dict[str, Any]], specs: list[StackSpec], path: Path
) -> None:
    """Database load and caller latency over time, every stack (a PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 9), sharex=True)
    cap = sc.capacity.rows_per_second
    for i, spec in enumerate(specs):
        colour = COLOURS.get(spec.name, PALETTE[i % len(PALETTE)])
        s = figures[spec.name]["series"]
        xs = list(range(len(s["rows"])))
        axes[0].plot(xs, [100 * r / cap for r in s["rows"]], label=spec.label, color=colour)
        axes[1].plot(
            xs,
            [math.nan if v is None else v for v in s["p99_ms"]],
            label=f"{spec.label} p99",
            color=colour,
        )
        axes[1].plot(
            xs,
            [math.nan if v is None else v for v in s["p50_ms"]],
            label=f"{spec.label} p50",
            color=colour,
            linestyle=":",
        )
        pairs = zip(s["errors"], s["requests"], strict=True)
        rate = [100 * e / n if n else math.nan for e, n in pairs]
        axes[2].plot(xs, rate, label=spec.label, color=colour)
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
