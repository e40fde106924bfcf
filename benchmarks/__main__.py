"""Command line: ``python -m benchmarks [NAME ...] [--quick] [--json PATH]``.

Each benchmark is a module ``benchmarks/<name>.py`` with a function
``run(*, quick: bool) -> dict[str, object]`` that prints its own report and returns every raw
figure it measured; this entry point runs the chosen ones and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

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
    "faults": "every reproducible fault, sync and async: bound, deadline, exceptions, leaks",
}
#: What ``python -m benchmarks`` runs with no name: the headline set.
HEADLINE = ["incident"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="benchmarks to run: " + ", ".join(BENCHMARKS) + ", or all (default: incident)",
    )
    parser.add_argument("--quick", action="store_true", help="a short run (about a minute)")
    parser.add_argument("--json", metavar="PATH", help="write every raw figure to PATH")
    args = parser.parse_args(argv)
    names = args.names or HEADLINE
    if names == ["all"]:
        names = list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
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
        module = importlib.import_module(f"benchmarks.{name}")
        report["results"][name] = module.run(quick=args.quick)
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, default=str))
        print(f"\nraw figures written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
