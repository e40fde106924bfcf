"""Command line: ``python -m benchmarks [NAME ...] [--quick] [--json PATH] [--check]``.

Each benchmark is a module (or package) ``benchmarks.<name>`` with a function
``run(*, quick: bool, **options) -> dict[str, object]`` that prints its own report and returns
every raw figure it measured; it may define ``add_arguments(group)`` for its own options, which
are passed to ``run`` by name. This entry point runs the chosen ones and writes the figures as
JSON under the output folder (``benchmarks/results/``, ignored by git), so a run leaves the
checkout clean; ``--update-docs`` is the only way a benchmark refreshes a file under ``docs/``.

Exit status: 0, also when a target is missed (these machines are shared and noisy); with
``--check``, 1 when any reported target was missed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import platform
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks import _harness as h

#: name -> what it measures. Order is the order ``all`` runs them in.
BENCHMARKS: dict[str, str] = {
    "incident": "the incident replay: naive stack vs guard() on a real database",
    "hits": "fresh-hit cost, sync and async, vs the peers",
    "stampede": "cold-key stampede: backend calls and wall time, vs the peers",
    "redis": "L2 (Redis) hit cost vs raw redis-py, cross-process stampede",
    "outage": "Redis refused and Redis hung under load, vs the peers",
    "protect": "guard() overhead, token takes, the retry storm",
    "pages": "OFFSET restarted on failure vs keyset with resume",
    "peers": "hit latency, stampede and Redis outage vs every peer",
    "observe": "fresh-hit cost with a listener / the Prometheus adapter attached",
    "django": "a Django view with Redis killed: cacheward's cache backend vs django-redis",
    "sentinel": "Redis Sentinel failover: seconds to the first good read, callers' latency",
    "payloads": "large payloads: L2 hit/write and Redis bytes vs raw redis-py, eviction, memory",
    "coherence": "invalidation across processes: cost, while Redis hangs, racing rebuilds",
    "faults": "every reproducible fault, sync and async: bound, deadline, exceptions, leaks",
    "failures": "a failing backend over many keys: memory and CPU of the failure state",
}
#: What ``python -m benchmarks`` runs with no name: the headline set.
HEADLINE = ["incident"]


def _parser(add_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        add_help=add_help,
    )
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="benchmarks to run: " + ", ".join(BENCHMARKS) + ", or all (default: incident)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="write every raw figure to PATH (default: OUT/<names>[-quick].json)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the benchmarks' files (default: benchmarks/results/, ignored by git)",
    )
    parser.add_argument(
        "--update-docs",
        action="store_true",
        help="also refresh the pictures under docs/ (a full run; the only way a run writes "
        "into tracked files)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit with status 1 when a target is missed (default: always 0)",
    )
    return parser


def _chosen(names: list[str]) -> list[str]:
    names = names or HEADLINE
    return list(BENCHMARKS) if names == ["all"] else names


def missed_targets(figures: object, path: str = "") -> Iterator[str]:
    """Every target in ``figures`` (any ``"targets"`` mapping) whose ``met`` is ``False``."""
    if isinstance(figures, dict):
        for key, value in figures.items():
            where = f"{path}.{key}" if path else str(key)
            if key == "targets" and isinstance(value, dict):
                for name, target in value.items():
                    if isinstance(target, dict) and target.get("met") is False:
                        yield f"{where}.{name}"
            else:
                yield from missed_targets(value, where)


def main(argv: list[str] | None = None) -> int:
    early, _ = _parser(add_help=False).parse_known_args(argv)
    parser = _parser(add_help=True)
    names = _chosen(early.names)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    modules: dict[str, ModuleType] = {}
    options: dict[str, list[str]] = {}
    for name in names:
        modules[name] = importlib.import_module(f"benchmarks.{name}")
        add = getattr(modules[name], "add_arguments", None)
        if add is not None:
            before = {a.dest for a in parser._actions}
            add(parser.add_argument_group(name))
            options[name] = [a.dest for a in parser._actions if a.dest not in before]
    args = parser.parse_args(argv)
    if args.out:
        os.environ[h.OUT_ENV] = str(Path(args.out).resolve())
    if args.update_docs:
        os.environ[h.UPDATE_DOCS_ENV] = "1"
    report: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "processor": platform.processor(),
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "quick": args.quick,
        "results": {},
    }
    for name in names:
        print(f"\n=== {name}: {BENCHMARKS[name]} ===", flush=True)
        extra = {dest: getattr(args, dest) for dest in options.get(name, [])}
        report["results"][name] = modules[name].run(quick=args.quick, **extra)
    stem = "-".join(names) + ("-quick" if args.quick else "")
    path = Path(args.json) if args.json else h.output_dir() / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(finite(report), indent=2, default=str, allow_nan=False))
    print(f"\nRaw figures: {_shown(path)}")
    missed = list(missed_targets(report["results"]))
    if missed:
        where = sorted({m.split(".", 1)[0] for m in missed})
        verdict = "--check: exit status 1" if args.check else "add --check to fail the run on it"
        print(
            f"{len(missed)} target{'s' if len(missed) > 1 else ''} missed in "
            f"{', '.join(where)} (see the report above); {verdict}."
        )
    return 1 if missed and args.check else 0


def finite(value: object) -> object:
    """``value`` with every NaN or infinity replaced by ``None`` (strict JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
