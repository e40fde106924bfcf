"""cacheward vs every peer, in one run: hit latency, cold-key stampede and a Redis-down outage.

``python -m benchmarks peers [--quick] [--json PATH]``

Three sections, each interleaved across the contenders, then one summary table of ratios:

1. **hits**: :mod:`benchmarks.hits` (same contenders, same method);
2. **stampede**: :mod:`benchmarks.stampede` (1000 tasks / 50 threads on a cold key, 50 ms backend);
3. **outage**: :func:`benchmarks.outage.refused_outage` -- a warm Redis is SIGKILLed (connections
   refused) while 200 callers per second ask for 10 keys for 5 s, backend 20 ms. A perfect cache
   needs 10 backend calls (one per key). For each Redis-backed contender we count backend
   calls, caller errors and caller latency.
"""

from __future__ import annotations

import sys
from typing import Any

from benchmarks import _harness as h
from benchmarks import hits, stampede
from benchmarks.outage import KEYS, refused_outage

#: The summary: one row per (library, configuration), and which rows of each section it uses.
SUMMARY: list[tuple[str, dict[str, str | None]]] = [
    ("cacheward", {"sync": "cacheward", "async": "cacheward async", "outage": "cacheward"}),
    (
        "cachetools (lock=)",
        {"sync": "cachetools TTLCache lock=", "async": None, "outage": None},
    ),
    (
        "cachetools (condition=)",
        {"sync": "cachetools TTLCache condition=", "async": None, "outage": None},
    ),
    (
        "cachebox",
        {"sync": "cachebox TTLCache", "async": "cachebox TTLCache async", "outage": None},
    ),
    ("async-lru", {"sync": None, "async": "async-lru", "outage": None}),
    ("cashews", {"sync": None, "async": "cashews mem", "outage": "cashews redis"}),
    ("aiocache", {"sync": None, "async": "aiocache memory", "outage": "aiocache redis"}),
    ("dogpile.cache", {"sync": "dogpile.cache memory", "async": None, "outage": "dogpile redis"}),
]


def outage(quick: bool) -> dict[str, Any]:
    """The Redis-down section: :func:`benchmarks.outage.refused_outage` (a ``redis-server``)."""
    try:
        return refused_outage(quick=quick)
    except Exception as exc:  # no redis-server binary to start: say so, do not guess
        print(f"  outage: not run ({exc!r})", flush=True)
        return {
            "settings": {"rate": 0, "duration": 0, "keys": KEYS, "backend_latency": 0.0},
            "rows": {},
            "skipped": {"outage": f"could not start a redis-server: {exc!r}"},
            "source": "benchmarks.outage.refused_outage",
        }


def report_outage(figures: dict[str, Any]) -> None:
    """Print the outage table."""
    s = figures["settings"]
    rows = figures["rows"]
    h.print_table(
        f"Redis refused: {s['rate']} callers/s for {s['duration']} s over {s['keys']} keys, "
        f"backend {s['backend_latency'] * 1e3:.0f} ms (ideal: {s['keys']} backend calls)",
        ["contender", "backend calls", "x ideal", "errors", "p50", "p99"],
        [
            [
                name,
                row["backend_calls"],
                h.fmt_ratio(row["amplification"]),
                f"{row['errors']} / {row['callers']}",
                h.fmt_ns(row["p50"]),
                h.fmt_ns(row["p99"]),
            ]
            for name, row in sorted(rows.items(), key=lambda kv: kv[1]["backend_calls"])
        ],
    )
    for name, row in rows.items():
        print(f"  {name}: {row['config']}")
    for name, why in figures.get("skipped", {}).items():
        print(f"  skipped {name}: {why}")


def summary(hit: dict[str, Any], storm: dict[str, Any], down: dict[str, Any]) -> list[list[str]]:
    """One row per library: hit ratios, stampede calls and wall ratios, outage figures."""
    out = []
    for label, names in SUMMARY:
        row = [label]
        for group in ("sync", "async"):
            name = names[group]
            found = hit["rows"].get(name) if name else None
            row.append(h.fmt_ratio(found["ratio"]) if found else "-")
        for group in ("async", "sync"):
            name = names[group]
            found = storm["rows"].get(name) if name else None
            row.append(
                f"{found['calls']:.0f} call{'s' if found['calls'] != 1 else ''}, "
                f"{h.fmt_ratio(found['wall_ratio'])}"
                if found
                else "-"
            )
        name = names["outage"]
        found = down["rows"].get(name) if name else None
        if found:
            row.append(
                f"{h.fmt_ratio(found['amplification'])} ideal, p99 {h.fmt_ns(found['p99'])}, "
                f"{100 * found['error_rate']:.0f}% errors"
            )
        else:
            row.append("no Redis layer" if name is None else "-")
        out.append(row)
    return out


def run(*, quick: bool) -> dict[str, object]:
    """All three sections, then the summary; print and return every figure."""
    print("hits ...", file=sys.stderr, flush=True)
    hit = hits.measure(quick=quick)
    hit["targets"] = {}
    print("stampede ...", file=sys.stderr, flush=True)
    storm = stampede.measure(quick=quick)
    storm["targets"] = stampede.targets(storm["rows"])
    print("outage ...", file=sys.stderr, flush=True)
    down = outage(quick)
    hits.report(hit)
    stampede.report(storm)
    report_outage(down)
    table = summary(hit, storm, down)
    h.print_table(
        "cacheward vs the peers",
        [
            "library",
            "hit sync (x lru_cache)",
            "hit async (x await)",
            "stampede tasks (calls, wall)",
            "stampede threads (calls, wall)",
            "Redis refused (calls x ideal)",
        ],
        table,
    )
    return {
        "hits": hit,
        "stampede": storm,
        "outage": down,
        "summary": table,
        "machine": h.machine(),
        "versions": h.versions(
            "cacheward",
            "cachetools",
            "cachebox",
            "async-lru",
            "cashews",
            "aiocache",
            "dogpile.cache",
            "redis",
        ),
    }
