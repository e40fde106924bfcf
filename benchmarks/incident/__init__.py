"""The incident replay: both cache layers lost at once, naive stack vs ``cacheward.guard``.

``python -m benchmarks incident [--quick] [--stacks NAMES] [--json PATH]`` (also what
``python -m benchmarks`` runs). Several worker processes serve requests for many customers'
large, paginated configurations from a real database (:mod:`benchmarks._db`: SQLite, or
PostgreSQL with ``DATABASE_URL``, behind a documented capacity model). The same request stream --
seeded Poisson arrivals, Zipf-distributed customers -- is replayed against each stack, one after
the other:

* **naive** (:mod:`benchmarks._naive`): cachetools ``TTLCache`` + Redis via redis-py with its
  defaults + tenacity retries + OFFSET pagination restarted on failure;
* **guarded**: ``cw.guard(...)`` over ``[cw.MemoryLayer, cw.RedisLayer]`` with a token bucket
  and a retry budget, rebuilding with keyset pagination through ``cw.collect_pages``;
* any variant registered in :mod:`benchmarks.incident.stacks` (``--stacks naive,guarded,...``).

Timeline of each run: *warm-up* (Redis pre-filled, as for a service that has been up a while)
-> *outage* (Redis killed and every process's in-process cache flushed at the same instant) ->
*recovery* (Redis restarted, empty). The report compares what the database had to do with what
a perfect cache with the same TTL would have had to read (the amplification), and what callers
saw (latency, errors, stale values).

The package is laid out as the run is: :mod:`~benchmarks.incident.scenario` (what happens, the
request stream, the perfect-cache reference; pure), :mod:`~benchmarks.incident.stacks` (the
registry of stacks), :mod:`~benchmarks.incident.replay` (worker processes and the fault
timeline), :mod:`~benchmarks.incident.analysis` (figures from raw records; pure) and
:mod:`~benchmarks.incident.report` (progress, table, summary, picture).

Files go to ``benchmarks/results/`` (``incident.png`` or ``incident-quick.png``; ignored by git);
``--update-docs`` also refreshes ``docs/incident.png`` from a full run.

``CACHEWARD_BENCH_SMOKE=1`` runs a tiny version in a few seconds (the test suite uses it);
``CACHEWARD_BENCH_NO_REDIS=1`` runs without L2; ``CACHEWARD_BENCH_REDIS_FAULT=hung`` makes the
outage a hung Redis (SIGSTOP) instead of a dead one; ``CACHEWARD_BENCH_NAIVE_REDIS=timeouts``
gives the naive stack's redis-py client 0.25 s timeouts and no retries (a sensitivity check).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import shutil
from typing import Any

from benchmarks import _harness as h
from benchmarks._db import Database, capacity_dict
from benchmarks._redisproc import L2
from benchmarks.incident import adaptive, report  # adaptive: registers the variant's stacks
from benchmarks.incident.analysis import analyse, ratios, targets
from benchmarks.incident.replay import run_stack
from benchmarks.incident.scenario import (
    FULL,
    QUICK,
    SMOKE,
    Scenario,
    arrivals,
    perfect_rebuilds,
    scenario_for,
)
from benchmarks.incident.stacks import DEFAULT, REGISTRY, StackSpec, register, selected

__all__ = [
    "DEFAULT",
    "FULL",
    "QUICK",
    "REGISTRY",
    "SMOKE",
    "STACKS",
    "Scenario",
    "StackSpec",
    "add_arguments",
    "arrivals",
    "perfect_rebuilds",
    "register",
    "run",
]

#: The stacks a run replays by default, baseline first.
STACKS = DEFAULT


def add_arguments(parser: argparse._ArgumentGroup) -> None:
    """This benchmark's options on ``python -m benchmarks``'s command line."""
    parser.add_argument(
        "--stacks",
        metavar="NAMES",
        type=_stack_names,
        default=None,
        help="incident: the stacks to replay, comma-separated, baseline first "
        f"(default {','.join(DEFAULT)}, or with --limiter adaptive every stack of the variant; "
        f"known: {', '.join(REGISTRY)})",
    )
    parser.add_argument(
        "--limiter",
        choices=("bucket", "adaptive"),
        default="bucket",
        help="incident: 'adaptive' runs the variant where nobody sized the rate and the "
        "database loses half its capacity for 30 s mid-outage (benchmarks/incident/adaptive.py)",
    )


def _stack_names(value: str) -> str:
    try:
        selected(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return value


def run(
    *,
    quick: bool,
    stacks: str | list[str] | tuple[str, ...] | None = None,
    limiter: str = "bucket",
) -> dict[str, Any]:
    """Run the incident replay for every stack; print the report; return every figure.

    ``stacks`` (``None``: the default set, :data:`DEFAULT`, or the variant's own) selects the
    stacks for the default replay and for ``limiter="adaptive"`` alike.
    """
    if limiter == "adaptive":
        chosen = adaptive.STACKS if stacks is None else tuple(s.name for s in selected(stacks))
        return adaptive.run(quick=quick, replay=replay, stacks_=chosen)
    specs = selected(stacks)
    sc = scenario_for(quick)
    result, _ = replay(sc, specs, quiet=sc is SMOKE)
    if sc is not SMOKE:
        _pictures(sc, specs, result)
        report.print_report(sc, result, specs)
    return result


def replay(
    sc: Scenario, specs: list[StackSpec], *, quiet: bool, notes: tuple[str, ...] = ()
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Replay ``sc`` against every stack of ``specs``, one after the other.

    Returns every figure, and the workers' raw records per stack (for a variant's own
    figures). ``notes`` are printed after the scenario's description (a variant says what it
    changes).
    """
    fault = os.environ.get("CACHEWARD_BENCH_REDIS_FAULT", "down")
    l2 = L2(fault=fault)
    if os.environ.get("CACHEWARD_BENCH_NO_REDIS", "") not in ("", "0"):
        l2.mode, l2.reason = "absent", "CACHEWARD_BENCH_NO_REDIS is set: L2 is absent"
    db = Database(sc.dataset)
    progress = report.Progress(quiet=quiet)
    for line in report.intro(
        sc, specs, database=db.describe(), l2=l2.describe(), l2_mode=l2.mode, fault=fault
    ):
        progress.note(line)
    for line in notes:
        progress.note(line)
    db.create()
    raw: dict[str, dict[str, Any]] = {}
    try:
        l2.start()
        with progress:
            for spec in specs:
                say = functools.partial(
                    report.announce, progress, spec.label, fault=fault, warns=not spec.baseline
                )
                raw[spec.name] = run_stack(sc, spec, db, l2, progress=progress, announce=say)
    finally:
        l2.stop()
        db.drop()
    return _figures(sc, specs, raw, database=db.describe(), l2=l2.describe()), raw


def _figures(
    sc: Scenario,
    specs: list[StackSpec],
    raw: dict[str, dict[str, Any]],
    *,
    database: str,
    l2: str,
) -> dict[str, Any]:
    names = [s.name for s in specs]
    references = {n: perfect_rebuilds(sc, raw[n]["prefilled"]) for n in names}
    lossless = {n: perfect_rebuilds(sc, raw[n]["prefilled"], lossless=True) for n in names}
    figures = {n: analyse(sc, raw[n], references[n], lossless[n]) for n in names}
    components: dict[str, list[str]] = {}
    for n in names:
        for st in figures[n]["worker_stats"]:
            if st.get("components"):
                components[n] = st["components"]
    base, others = specs[0], specs[1:]
    ds = sc.dataset
    by_stack_ratio = {s.name: ratios(figures[base.name], figures[s.name]) for s in others}
    by_stack_targets = {s.name: targets(sc, figures[s.name]) for s in others}
    first = others[0].name
    return {
        "scenario": {
            **{k: v for k, v in dataclasses.asdict(sc).items() if k != "capacity"},
            "pages_per_config": ds.pages,
            "offset_rows_per_rebuild": ds.offset_rows_per_rebuild,
        },
        "capacity": capacity_dict(sc.capacity),
        "baseline": base.name,
        "configs": {s.name: s.config(sc) for s in specs},
        # The first two stacks' settings and figures under the names earlier runs used.
        "naive_config": base.config(sc),
        "guarded_config": others[0].config(sc),
        "guarded_components": components.get(first, []),
        "components": components,
        "database": database,
        "l2": l2,
        "naive_healthy_utilisation_estimate": round(
            sc.customers / sc.ttl * ds.offset_rows_per_rebuild / sc.capacity.rows_per_second, 3
        ),
        "perfect_rebuilds_total": {k: len(v) for k, v in references.items()},
        "stacks": figures,
        "ratios": by_stack_ratio[first],
        "ratios_by_stack": by_stack_ratio,
        "targets": by_stack_targets[first],
        "targets_by_stack": by_stack_targets,
    }


def _pictures(sc: Scenario, specs: list[StackSpec], result: dict[str, Any]) -> None:
    """The run's picture under the output folder; ``docs/incident.png`` only on request."""
    path = h.output_dir() / ("incident.png" if sc is FULL else "incident-quick.png")
    try:
        report.plot(sc, result["stacks"], specs, path)
    except ImportError as exc:
        result["plot"] = None
        print(f"no picture: {exc} (pip install -e '.[bench]')")
        return
    result["plot"] = _shown(path)
    result["plot_copies"] = []
    if h.update_docs():
        if sc is FULL and [s.name for s in specs] == list(DEFAULT):
            docs = h.ROOT / "docs" / "incident.png"
            shutil.copyfile(path, docs)
            result["plot_copies"].append(_shown(docs))
        else:
            print(
                "--update-docs: docs/incident.png shows a full run of the default stacks; "
                "not refreshed from this run"
            )


def _shown(path: Any) -> str:
    try:
        return str(path.relative_to(h.ROOT))
    except ValueError:
        return str(path)
